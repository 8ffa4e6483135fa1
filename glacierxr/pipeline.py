"""The whole run, stage by stage, as the command line and the demo use it.

Each function takes the relevant part of a :class:`glacierxr.config.RunConfig` and plain paths, so
the same run is reproduced from Python, from ``glacierxr <command>`` or from a TOML file.
Outputs record the configuration and package versions that made them.
"""

from __future__ import annotations

import copy
import functools
import json
import platform
import warnings
from importlib import metadata
from pathlib import Path

import dask
import numpy as np
import xarray as xr

from glacierxr import _cf
from glacierxr.config import DataConfig, LoadConfig, PreprocessConfig, RunConfig
from glacierxr.errors import ConfigError, DimensionError, GlacierXRError

__all__ = [
    "versions",
    "find_scenes",
    "load_scenes",
    "masked_scenes",
    "snow_scenes",
    "snow_composites",
    "composites_dataset",
    "prepare",
    "open_composites",
    "make_sequences",
    "train",
    "resolve_residual",
    "forecast",
    "evaluate_run",
    "snow_state_others",
    "velocity_scenes",
    "velocity",
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


def load_scenes(items, data: DataConfig, load: LoadConfig, *, bands=None) -> xr.Dataset:
    """Lazy cube of the found scenes on one grid (``bands``: load's default); see :func:`glacierxr.load`."""
    from glacierxr.io import load as load_items
    from glacierxr.regions import get_region

    bbox = tuple(data.bbox) if data.bbox else (get_region(data.glacier).bbox if data.glacier else None)
    chunks = {"time": 1, "y": load.chunk_size, "x": load.chunk_size}
    extra = {} if bands is None else {"bands": tuple(bands)}
    return load_items(items, bbox=bbox, epsg=load.epsg, resolution=load.resolution, chunks=chunks,
                      max_pixels=load.max_pixels, **extra)


def masked_scenes(cube: xr.Dataset, pre: PreprocessConfig) -> xr.Dataset:
    """QA masking and dropping of scenes with too many missing pixels; see :func:`glacierxr.qa.mask`."""
    return cube.glacier.mask(max_missing=pre.max_missing)


def snow_scenes(cube: xr.Dataset, pre: PreprocessConfig, *, masked: xr.Dataset | None = None) -> xr.DataArray:
    """mask → NDSI → snow mask → fill gaps → align, per scene (lazy).

    With ``pre.align`` the result carries the per-scene ``shift_x``/``shift_y`` coordinates of
    :func:`glacierxr.align.align`; ``y`` and ``x`` are one chunk (align needs it). Pass
    ``masked`` (from :func:`masked_scenes`) to reuse a masked cube.
    """
    masked = masked_scenes(cube, pre) if masked is None else masked
    snow = (
        masked.glacier.ndsi()
        .glacier.snow_mask(threshold=pre.threshold, binary=pre.binary)
        .glacier.fill_gaps(size=pre.fill_size, max_iter=pre.fill_max_iter, max_distance=pre.fill_max_distance)
    )
    if pre.align:
        snow = snow.chunk({"y": -1, "x": -1}).glacier.align(max_shift=pre.max_shift)
    # .chunk() also turns the in-memory per-scene metadata (id, platform …) into Dask arrays;
    # put the in-memory ones back so that reading them never touches the graph
    metadata = {
        name: coord for name, coord in masked.coords.items()
        if name in snow.coords and name not in snow.dims and coord.dims == ("time",)
        and not dask.is_dask_collection(coord.data)
    }
    return snow.assign_coords(metadata)


def snow_composites(
    cube: xr.Dataset, pre: PreprocessConfig, *, scenes: xr.DataArray | None = None
) -> xr.DataArray:
    """mask → NDSI → snow mask → fill gaps → align → N-month composites (lazy).

    Pass ``scenes`` (from :func:`snow_scenes`) to composite scenes already built.
    """
    snow = snow_scenes(cube, pre) if scenes is None else scenes
    composites = snow.glacier.monthly(months=pre.months, how=pre.how)
    return _with_months(composites)


def _with_months(composites: xr.DataArray) -> xr.DataArray:
    """Copy ``composite_months`` to ``attrs["months"]``, where predict/evaluate look for it."""
    months = composites.attrs.get("composite_months")
    if months is not None and "months" not in composites.attrs:
        composites = composites.assign_attrs(months=int(months))
    return composites


_SCENE_COORDS = (
    "id", "shift_x", "shift_y", "ecc_correlation", "converged", "align_method", "missing_fraction",
    "stable_fraction", "align_residual", "align_reliable",
)
_ALIGN_METHODS = ("none", "phase", "ecc")


def composites_dataset(composites: xr.DataArray, scenes: xr.DataArray | None = None) -> xr.Dataset:
    """The composites as a Dataset to write, with the per-scene diagnostics beside them.

    The scenes' ``id``, alignment shifts (``shift_x``, ``shift_y``, pixels), ``ecc_correlation``,
    ``converged``, ``align_method`` (as an int8 code: 0 none, 1 phase, 2 ecc), the alignment's
    quality (``stable_fraction``, ``align_residual``, ``align_reliable``) and
    ``missing_fraction`` become variables ``scene_<name>`` along a ``scene`` dimension
    (coordinate ``scene_time``), so that writing the Dataset computes the scenes once for both
    the composites and the diagnostics. Nothing is computed here.
    """
    name = composites.name or "snow_mask"
    dataset = _cf.to_dataset(composites, name=name)  # CF's Conventions/source/history as global attrs
    if not _consistent_chunks(dataset):
        # monthly() gives the composite one time chunk and its counts one chunk per period;
        # a Dataset (and Zarr) wants one chunking per dimension
        dataset = dataset.chunk({"time": -1})
    if scenes is None:
        return dataset
    present = [c for c in _SCENE_COORDS if c in scenes.coords and scenes[c].dims == ("time",)]
    per_scene = {}
    for coord in present:
        value = scenes[coord].reset_coords(drop=True).drop_vars("time").rename({"time": "scene"})
        if coord == "align_method":
            # a lazy string array would be computed on its own to find its Zarr dtype
            code = xr.zeros_like(value, dtype="int8")
            for number, method in enumerate(_ALIGN_METHODS):
                code = xr.where(value == method, np.int8(number), code)
            value = code.assign_attrs(
                long_name="method of the applied shift",
                flag_values=list(range(len(_ALIGN_METHODS))),
                flag_meanings=" ".join(_ALIGN_METHODS),
            )
        if value.chunks is not None:
            value = value.chunk({"scene": -1})
        per_scene[f"scene_{coord}"] = value
    if per_scene:
        dataset = dataset.assign(per_scene).assign_coords(scene_time=("scene", scenes["time"].values))
    return dataset


def _consistent_chunks(dataset: xr.Dataset) -> bool:
    try:
        dataset.chunks  # noqa: B018 - raises when variables disagree
    except ValueError:
        return False
    return True


def prepare(config: RunConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True) -> Path:
    """Catalog → snow-mask composites written to Zarr (atomically). Returns the store path."""
    from glacierxr.io import write

    items = find_scenes(config.data)
    cube = load_scenes(items, config.data, config.load)
    scenes = snow_scenes(cube, config.preprocess)
    composites = snow_composites(cube, config.preprocess, scenes=scenes)
    composites.attrs.update(provenance(config))
    dataset = composites_dataset(composites, scenes)
    if not progress:
        return write(dataset, out, overwrite=overwrite)
    from dask.diagnostics import ProgressBar

    with ProgressBar():
        return write(dataset, out, overwrite=overwrite)


def open_composites(path: str | Path, *, variable: str | None = None) -> xr.DataArray:
    """Open composites written by :func:`prepare` (a Zarr store or NetCDF file)."""
    from glacierxr.io import read

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"No composites at {str(path)!r}. Run `glacierxr prepare` first or fix the path.")
    dataset = read(path, format="zarr" if path.suffix == ".zarr" or path.is_dir() else "netcdf")
    names = [n for n in dataset.data_vars if "scene" not in dataset[n].dims]
    name = variable or ("snow_mask" if "snow_mask" in names else (names[0] if names else None))
    if name not in dataset:
        raise GlacierXRError(f"Variable {name!r} not in {path}. Available: {names}. Pass variable=.")
    return _with_months(dataset[name])


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
    return PatchSequences(composites, **_options(
        p, "input_steps", "target_steps", "patch", "stride", "split", "val_fraction", "test_fraction"
    ))


def _options(section, *names: str) -> dict:
    """``{name: section.<name>}``: a config section's fields as a stage's keyword arguments."""
    return {name: getattr(section, name) for name in names}


def train(
    composites: xr.DataArray,
    config: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    init_checkpoint: str | Path | None = None,
    freeze: tuple[str, ...] = (),
    progress: bool = True,
):
    """Train (or fine-tune from ``init_checkpoint``) a model; returns ``(model, history)``.

    Checkpoints go to ``out_dir / "checkpoints"`` every epoch; the final model is
    ``out_dir / "model.pt"``. The run folder is locked while training (a second run into it
    fails with :class:`~glacierxr.errors.OutputLockedError`). A folder that already holds a run
    raises :class:`~glacierxr.io.OutputExistsError` unless ``resume`` (continue it) or
    ``overwrite`` (replace it — only once the new run has written its first checkpoint, so a
    run that fails earlier leaves the old one intact). A run that fails leaves no empty folder.
    """
    from glacierxr._safety import output_lock

    out_dir = Path(out_dir)
    with output_lock(out_dir, create_parent=True):
        earlier = _earlier_run(out_dir)
        if earlier and not (resume or overwrite):
            from glacierxr.io import OutputExistsError

            raise OutputExistsError(
                f"{str(out_dir)!r} already holds a training run ({', '.join(earlier)}). Pass "
                "resume=True to continue it, overwrite=True to replace it (once the new run has "
                "written its first checkpoint), or choose another folder."
            )
        created = not out_dir.exists()
        try:
            return _fit_run(composites, config, out_dir, resume=resume, replace=earlier,
                            init_checkpoint=init_checkpoint, freeze=freeze, progress=progress)
        except BaseException:
            if created:
                _remove_empty_tree(out_dir)
            raise


def _earlier_run(out_dir: Path) -> list[str]:
    """What of an earlier run ``out_dir`` holds (empty when it is new or empty)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{str(out_dir)!r} is a file; a run needs a folder. Choose another path.")
    names = ("model.pt", "config.toml", "checkpoints")
    checkpoints = out_dir / "checkpoints"
    return [name for name in names if (out_dir / name).exists()
            and not (name == "checkpoints" and not any(checkpoints.iterdir()))]


def _remove_empty_tree(folder: Path) -> None:
    """Remove ``folder`` if it holds nothing but empty folders (what a failed run leaves)."""
    if not folder.is_dir() or any(p.is_file() or p.is_symlink() for p in folder.rglob("*")):
        return
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _fit_run(composites, config: RunConfig, out_dir: Path, *, resume, replace, init_checkpoint,
             freeze, progress):
    """The body of :func:`train`, in a locked run folder."""
    from glacierxr.ml.checkpoint import atomic_write_text, load_model, save_model
    from glacierxr.ml.train import Trainer

    from glacierxr._safety import clean_stale

    for name in ("model.pt", "config.toml", "checkpoints/last.pt", "checkpoints/best.pt",
                 "checkpoints/model.pt", "checkpoints/metrics.jsonl"):
        clean_stale(out_dir / name)  # what killed saves left; the run folder is locked
    sequences = make_sequences(composites, config)
    import torch

    torch.manual_seed(config.train.seed)  # the initial weights, so that a run repeats exactly
    windows = functools.cache(lambda: _window_cutter(sequences))  # the cube read once, for every split
    if init_checkpoint is None:
        config = resolve_residual(config, sequences)  # "auto" -> what the series supports, recorded as such
        model = _new_model(config, windows, sequences)
    else:
        model = load_model(init_checkpoint)
    train_data, validation = _training_data(sequences, model, windows)
    t = config.train
    trainer = Trainer(
        model,
        **_options(t, "max_epochs", "batch_size", "lr", "weight_decay", "patience", "grad_clip", "seed",
                   "max_batches_per_epoch"),
        checkpoint_dir=out_dir / "checkpoints",
        resume=resume,
        freeze=freeze,
        progress=progress,
    )
    if replace and not resume:  # the earlier run's files go after the first new checkpoint
        trainer.replaces_after_first_checkpoint += [out_dir / "model.pt", out_dir / "config.toml"]
    with warnings.catch_warnings():
        if replace and not resume:  # asked for (overwrite=True): no warning that it happens
            warnings.filterwarnings("ignore", message="Starting a new run", category=UserWarning)
        history = trainer.fit(train_data, validation)
    normalization = None if _is_residual(model) else getattr(sequences, "normalization", None)
    save_model(
        model,
        out_dir / "model.pt",
        normalization=normalization,
        extra={"config": config.to_toml(), "versions": json.dumps(versions())},
    )
    atomic_write_text(config.to_toml(), out_dir / "config.toml")
    return model, history


def _window_cutter(sequences):
    from glacierxr.evaluate import WindowCutter

    return WindowCutter(sequences)


def resolve_residual(config: RunConfig, sequences) -> RunConfig:
    """``config`` with ``[model] residual = "auto"`` made concrete for ``sequences``.

    ``"snow_state"`` where its training periods are enough for the snow-state model (at least 12:
    :func:`glacierxr.ml.snowstate.fit_for`) and the cube is small enough to fit it beside the run
    (:func:`snow_state_others`' limit), else ``"anomaly_persistence"``. The snow-state residual
    measured better in ``benchmarks/skill.py`` (every seed and the real series, chosen on val) and
    on the demo (see docs/benchmarks.md). Any other setting is returned unchanged.
    """
    if config.model.residual != "auto":
        return config
    from glacierxr.evaluate import train_periods
    from glacierxr.ml.snowstate import MIN_BINS, PERIODS_PER_BIN

    enough = (train_periods(sequences).size >= MIN_BINS * PERIODS_PER_BIN
              and sequences.data.size <= _SNOW_STATE_MAX_VALUES)
    resolved = copy.deepcopy(config)
    resolved.model.residual = "snow_state" if enough else "anomaly_persistence"
    return resolved


def _new_model(config: RunConfig, windows, sequences):
    """The configured model; wrapped to forecast a residual on ``[model] residual`` unless "none"
    (``windows()``: a :class:`~glacierxr.evaluate.WindowCutter` of ``sequences``, for the residual's
    scaling)."""
    from glacierxr.ml.models import get_model

    name, params, m = config.model.name, config.model.params, config.model
    input_steps = config.patches.input_steps
    if m.residual == "none":
        return get_model(name, input_steps=input_steps, **params) if _accepts(name, "input_steps") else get_model(name, **params)
    from glacierxr.ml.models.residual import ResidualForecaster, ResidualWindows, inner_steps, residual_scaling

    context = tuple(m.context)
    if _accepts(name, "input_steps"):  # a model built for a fixed number of frames sees the packed ones
        params = {"input_steps": inner_steps(input_steps, config.patches.target_steps, context=context), **params}
    scale, offset = residual_scaling(ResidualWindows(sequences, "train", baseline="climatology", scale=1.0,
                                                     cutter=windows()))
    return ResidualForecaster(get_model(name, **params), input_steps=input_steps, baseline=m.residual, scale=scale,
                              context=context, offset=offset)


def _is_residual(model) -> bool:
    from glacierxr.ml.models.residual import ResidualForecaster

    return isinstance(model, ResidualForecaster)


def _training_data(sequences, model, windows):
    """``(train, val or None)``: the sequences, or for a residual model its packed windows, cut
    batch by batch from the cube held once (``windows()``: a :class:`~glacierxr.evaluate.WindowCutter`)."""
    splits = {s: sequences.split(s) for s in ("train", "val")}
    if not _is_residual(model):
        return splits["train"], splits["val"] if len(splits["val"]) else None
    from glacierxr.ml.models.residual import ResidualWindows
    from glacierxr.ml.snowstate import fit_for

    snow_state = None  # one snow-state model, fitted on the training periods, for both splits
    if model.baseline == "snow_state":
        snow_state = fit_for(sequences, required="[model] residual = \"snow_state\"")
    return tuple(ResidualWindows.for_model(sequences, s, model, snow_state=snow_state, cutter=windows())
                 if len(splits[s]) else None for s in ("train", "val"))


def _accepts(model_name: str, argument: str) -> bool:
    import inspect

    from glacierxr.ml.models import _model_class

    return argument in inspect.signature(_model_class(model_name)).parameters


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
    """Metrics of the model, the snow-state model and the baselines on a split.

    See :func:`glacierxr.evaluate.evaluate`; the statistical
    :class:`~glacierxr.ml.snowstate.SnowStateModel` (row ``snow_state``) is fitted on the training
    periods and scored beside the model where the series is long enough (:func:`snow_state_others`).
    """
    from glacierxr.evaluate import evaluate

    sequences = make_sequences(composites, config)
    return evaluate(model, sequences, split=split, others=snow_state_others(sequences, split))


#: Largest cube (values) the snow-state model is fitted on beside a run: fitting peaks at about
#: 1.4 times the cube (float32; benchmarks/snowstate.py), about 2.3 GB here.
_SNOW_STATE_MAX_VALUES = 400_000_000


def snow_state_others(sequences, split: str) -> dict:
    """``{"snow_state": forecasts of split}`` from a SnowStateModel fitted on the training periods.

    Sized by :func:`glacierxr.ml.snowstate.fit_for`; ``{}`` when there are fewer than 12
    training periods (too short a series for a response per pixel) or the cube has more than
    400 million values (the model holds it whole; fit it yourself on a part of the scene).
    """
    import logging

    from glacierxr.ml.snowstate import fit_for

    if sequences.data.size > _SNOW_STATE_MAX_VALUES:
        logging.getLogger(__name__).info("snow_state not scored: the cube has %d values (more than %d)",
                                         sequences.data.size, _SNOW_STATE_MAX_VALUES)
        return {}
    model = fit_for(sequences)
    if model is None:
        return {}
    from glacierxr.evaluate import _ByPosition

    view = sequences.split(split, shuffle=False)  # forecast batch by batch as evaluate scores them
    return {"snow_state": _ByPosition(lambda positions: model.window_forecasts(view, positions=positions), "snow_state")}


def _velocity_band(config: RunConfig, names) -> str:
    """The configured band, else ``pan`` where the scenes have it, else ``green``."""
    return config.velocity.band or ("pan" if "pan" in names else "green")


def velocity_scenes(config: RunConfig, *, data: str | Path | None = None) -> xr.DataArray:
    """The scenes the velocity stage tracks: one band, QA-masked, ``(time, y, x)``, lazy.

    From ``data`` (a Zarr store or NetCDF file of scenes, e.g. a loaded cube written with
    :func:`glacierxr.io.write`; scenes with a ``qa_pixel`` band and no ``missing_fraction`` are
    masked here) or else from the configured catalog (search → load → QA mask, which computes
    the per-scene missing fractions once). The band is ``[velocity] band``, else ``pan`` where
    the scenes have it, else ``green``.
    """
    from glacierxr.errors import MissingBandError
    from glacierxr.io import read
    from glacierxr.landsat import resolve_asset_key

    if data is not None:
        path = Path(data)
        if not path.exists():
            raise ConfigError(f"No scenes at {str(path)!r}. Write a cube with glacierxr.io.write() or fix the path.")
        cube = read(path, format="zarr" if path.suffix == ".zarr" or path.is_dir() else "netcdf")
        band = _velocity_band(config, cube.data_vars)
    else:
        items = find_scenes(config.data)
        assets = [set(item.assets) for item in items]
        has_pan = bool(assets) and all(resolve_asset_key(keys, "pan") for keys in assets)
        band = _velocity_band(config, ["pan"] if has_pan else [])
        cube = load_scenes(items, config.data, config.load, bands=(band, "qa_pixel"))
    if band not in cube.data_vars:
        raise MissingBandError(
            f"The scenes have no band {band!r}; they have {sorted(map(str, cube.data_vars))}. "
            "Set [velocity] band (or --band) to one of them."
        )
    if "qa_pixel" in cube.data_vars and "missing_fraction" not in cube.coords:
        cube = masked_scenes(cube[[band, "qa_pixel"]], config.preprocess)
    return cube[band]


def velocity_composite_path(out: str | Path) -> Path:
    """Where :func:`velocity` writes the composite: ``<name>-composite<suffix>`` beside ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}-composite{out.suffix}")


def velocity(
    config: RunConfig, out: str | Path, *, data: str | Path | None = None, overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Scenes → pairs → velocity cube written to Zarr or NetCDF (atomically); returns its path.

    Pairs follow ``[velocity]`` (see :func:`glacierxr.velocity.select_pairs`); every pair is
    tracked by :func:`glacierxr.flow.flow` with ``[velocity] method``/``spacing``/``winsize``/``outlines``.
    With ``[velocity] composite`` (a period alias) the robust composite of the written cube is
    written beside it (:func:`velocity_composite_path`).
    """
    import contextlib

    from glacierxr.io import read, write
    from glacierxr.velocity import composite, select_pairs, velocity_cube

    v = config.velocity
    scenes = velocity_scenes(config, data=data)
    pairs = select_pairs(scenes, min_days=v.min_days, max_days=v.max_days, min_clear=v.min_clear, months=v.months)
    kwargs = {key: getattr(v, key) for key in ("method", "spacing", "winsize", "outlines") if getattr(v, key) is not None}
    cube = velocity_cube(scenes, pairs, **kwargs)
    cube.attrs.update(provenance(config))
    if progress:
        from dask.diagnostics import ProgressBar

        bar = ProgressBar()
    else:
        bar = contextlib.nullcontext()
    with bar:
        path = write(cube, out, overwrite=overwrite)
    if v.composite:
        write(composite(read(path), v.composite), velocity_composite_path(path), overwrite=overwrite)
    return path
