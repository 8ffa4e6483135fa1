"""The whole run, stage by stage, as the command line and the demo use it.

Each function takes the relevant part of a :class:`glacierxr.config.RunConfig` and plain paths, so
the same run is reproduced from Python, from ``glacierxr <command>`` or from a TOML file.
Outputs record the configuration and package versions that made them.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

import xarray as xr

from glacierxr.config import DataConfig, LoadConfig, PreprocessConfig, RunConfig
from glacierxr.errors import ConfigError, DimensionError, GlacierXRError

__all__ = [
    "versions",
    "find_scenes",
    "load_scenes",
    "snow_composites",
    "prepare",
    "open_composites",
    "make_sequences",
    "train",
    "forecast",
    "evaluate_run",
]

_PACKAGES = ("glacierxr", "xarray", "dask", "stackstac", "pystac-client", "opencv-python-headless", "torch", "numpy")


def versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def provenance(config: RunConfig) -> dict[str, str]:
    """Attributes recording how an output was made (config as TOML, versions as JSON)."""
    return {"glacierxr_config": config.to_toml(), "glacierxr_versions": json.dumps(versions())}


def find_scenes(data: DataConfig):
    """Search the configured catalog; see :func:`glacierxr.search`."""
    from glacierxr.stac import search

    return search(
        bbox=tuple(data.bbox) if data.bbox else None,
        glacier=data.glacier,
        datetime=data.datetime,
        max_cloud=data.max_cloud,
        collection=data.collection,
        platforms=tuple(data.platforms),
        catalog=data.catalog,
        limit=data.limit,
    )


def load_scenes(items, data: DataConfig, load: LoadConfig) -> xr.Dataset:
    """Lazy cube of the found scenes on one grid; see :func:`glacierxr.load`."""
    from glacierxr.io import load as load_items
    from glacierxr.regions import get_region

    bbox = tuple(data.bbox) if data.bbox else (get_region(data.glacier).bbox if data.glacier else None)
    chunks = {"time": 1, "y": load.chunk_size, "x": load.chunk_size}
    return load_items(items, bbox=bbox, epsg=load.epsg, resolution=load.resolution, chunks=chunks)


def snow_composites(cube: xr.Dataset, pre: PreprocessConfig) -> xr.DataArray:
    """mask → NDSI → snow mask → fill gaps → align → N-month composites (lazy)."""
    snow = (
        cube.glacier.mask(max_missing=pre.max_missing)
        .glacier.ndsi()
        .glacier.snow_mask(threshold=pre.threshold, binary=pre.binary)
        .glacier.fill_gaps(size=pre.fill_size, max_iter=pre.fill_max_iter)
    )
    if pre.align:
        snow = snow.chunk({"y": -1, "x": -1}).glacier.align(max_shift=pre.max_shift)
    return snow.glacier.monthly(months=pre.months, how=pre.how)


def prepare(config: RunConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True) -> Path:
    """Catalog → snow-mask composites written to Zarr (atomically). Returns the store path."""
    from glacierxr.io import write

    items = find_scenes(config.data)
    cube = load_scenes(items, config.data, config.load)
    composites = snow_composites(cube, config.preprocess)
    composites.attrs.update(provenance(config))
    dataset = composites.to_dataset(name=composites.name or "snow_mask")
    return write(dataset, out, overwrite=overwrite, progress=progress)


def open_composites(path: str | Path, *, variable: str | None = None) -> xr.DataArray:
    """Open composites written by :func:`prepare` (a Zarr store or NetCDF file)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"No composites at {str(path)!r}. Run `glacierxr prepare` first or fix the path.")
    dataset = xr.open_zarr(path) if path.suffix == ".zarr" or path.is_dir() else xr.open_dataset(path, chunks={})
    names = list(dataset.data_vars)
    name = variable or ("snow_mask" if "snow_mask" in names else (names[0] if names else None))
    if name not in dataset:
        raise GlacierXRError(f"Variable {name!r} not in {path}. Available: {names}. Pass variable=.")
    return dataset[name]


def make_sequences(composites: xr.DataArray, config: RunConfig):
    """Patch sequences of the composites, as configured."""
    from glacierxr.ml.patches import PatchSequences

    p = config.patches
    needed = p.input_steps + p.target_steps
    if composites.sizes.get("time", 0) < needed:
        raise DimensionError(
            f"The composites have {composites.sizes.get('time', 0)} periods but a sequence needs "
            f"{needed} ({p.input_steps} in + {p.target_steps} out). Use a longer period or fewer steps."
        )
    return PatchSequences(
        composites,
        input_steps=p.input_steps,
        target_steps=p.target_steps,
        patch=p.patch,
        stride=p.stride,
        split=p.split,
        val_fraction=p.val_fraction,
        test_fraction=p.test_fraction,
    )


def train(
    composites: xr.DataArray,
    config: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    init_checkpoint: str | Path | None = None,
    freeze: tuple[str, ...] = (),
    progress: bool = True,
):
    """Train (or fine-tune from ``init_checkpoint``) a model; returns ``(model, history)``.

    Checkpoints go to ``out_dir`` every epoch; the final model is ``out_dir / "model.pt"``.
    """
    from glacierxr.ml.checkpoint import load_model, save_model
    from glacierxr.ml.models import get_model
    from glacierxr.ml.train import Trainer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sequences = make_sequences(composites, config)
    if init_checkpoint is not None:
        model = load_model(init_checkpoint)
    else:
        model = get_model(
            config.model.name,
            input_steps=config.patches.input_steps,
            **config.model.params,
        ) if _accepts(config.model.name, "input_steps") else get_model(config.model.name, **config.model.params)
    t = config.train
    trainer = Trainer(
        model,
        max_epochs=t.max_epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        weight_decay=t.weight_decay,
        patience=t.patience,
        grad_clip=t.grad_clip,
        seed=t.seed,
        checkpoint_dir=out_dir / "checkpoints",
        resume=resume,
        freeze=freeze,
        progress=progress,
        max_batches_per_epoch=t.max_batches_per_epoch,
    )
    history = trainer.fit(sequences.split("train"), sequences.split("val"))
    normalization = getattr(sequences, "normalization", None)
    save_model(
        model,
        out_dir / "model.pt",
        extra={"config": config.to_toml(), "versions": json.dumps(versions()), "normalization": normalization},
    )
    (out_dir / "config.toml").write_text(config.to_toml())
    return model, history


def _accepts(model_name: str, argument: str) -> bool:
    import inspect

    from glacierxr.ml.models import model_class

    return argument in inspect.signature(model_class(model_name)).parameters


def forecast(composites: xr.DataArray, model, config: RunConfig) -> xr.DataArray:
    """Full-scene forecast of the next ``config.predict.steps`` periods (lazy)."""
    from glacierxr.ml.predict import predict

    p = config.predict
    result = predict(
        composites,
        model,
        steps=p.steps,
        input_steps=config.patches.input_steps,
        patch=config.patches.patch,
        overlap=p.overlap,
        batch_size=p.batch_size,
        blend=p.blend,
    )
    result.attrs.update(provenance(config))
    return result


def evaluate_run(composites: xr.DataArray, model, config: RunConfig, *, split: str = "test"):
    """Metrics of the model and the baselines on a split; see :func:`glacierxr.evaluate.evaluate`."""
    from glacierxr.evaluate import evaluate

    sequences = make_sequences(composites, config)
    return evaluate(model, sequences, split=split)
