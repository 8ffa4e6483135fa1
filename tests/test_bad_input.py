"""Bad input, enumerated: every public function and every CLI subcommand, one table each.

Each row is a mistake a user makes (wrong dims, wrong dtype, an empty time axis, all-NaN
scenes, grids that do not match, a bbox outside the data or crossing the antimeridian, NaN in
training data, a patch larger than the scene, steps <= 0, unknown model names, corrupt
checkpoints, a config file with unknown keys ...). Each must end in a
:class:`~glacierxr.errors.GlacierXRError` subclass whose message names what was wrong (the
``what`` fragment) and how to fix it (the ``fix`` fragment); the command line must exit
non-zero with one line on stderr and no traceback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest

import glacierxr as gx
from glacierxr import evaluate, gapfill, indices, qa
from glacierxr.errors import (
    CatalogError,
    CheckpointError,
    ChunkingError,
    ConfigError,
    DataTypeError,
    DimensionError,
    GlacierXRError,
    GridError,
    MissingBandError,
    ModelError,
    NoScenesError,
)
from glacierxr.testing import make_scene_cube, make_series

torch = pytest.importorskip("torch")


# ------------------------------------------------------------------------------------------
# what the rows work on
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory) -> SimpleNamespace:
    """Small valid inputs (cube, snow series, catalog, composites store, checkpoint, configs)
    that each row breaks in one way."""
    from glacierxr.ml.checkpoint import save_model
    from glacierxr.ml.models import get_model

    root = tmp_path_factory.mktemp("bad-input")
    rng = np.random.default_rng(0)
    e = SimpleNamespace(root=root)
    e.cube = make_scene_cube(times=6, height=16, width=16, seed=0)
    e.snow = make_series(rng.random((10, 24, 24)).astype("float32"), freq="MS")
    e.nan_cube = e.cube.assign(green=e.cube.green * np.nan, swir16=e.cube.swir16 * np.nan)
    e.nan_snow = e.snow * np.nan
    e.catalog = gx.sample.write_catalog(
        root / "sample", seed=0, width=32, height=32, start="2020-06-01", end="2020-09-30"
    )
    e.items = gx.search(datetime=None, max_cloud=None, catalog=e.catalog, sign=False)
    e.composites = root / "composites.zarr"
    composites = make_series(rng.random((12, 24, 24)).astype("float32"), freq="3MS")
    gx.io.write(composites.to_dataset(name="snow_mask"), e.composites)
    e.short = root / "short.zarr"
    gx.io.write(composites.isel(time=slice(0, 3)).to_dataset(name="snow_mask"), e.short)
    e.model = get_model("convlstm", hidden_channels=(4,), output_steps=2)
    e.checkpoint = save_model(e.model, root / "model.pt")
    e.corrupt = root / "corrupt.pt"
    e.corrupt.write_bytes(b"\x80\x04 definitely not a checkpoint " * 50)
    e.truncated = root / "truncated.pt"
    e.truncated.write_bytes(e.checkpoint.read_bytes()[:200])
    e.empty_file = root / "empty.pt"
    e.empty_file.write_bytes(b"")
    e.tampered = root / "tampered.pt"
    payload = torch.load(e.checkpoint, weights_only=True)
    payload["normalization"] = {"mean": 0.9, "std": 0.1}  # edited; the weights still match
    torch.save(payload, e.tampered)
    e.run = root / "existing-run"
    (e.run / "checkpoints").mkdir(parents=True)
    (e.run / "model.pt").write_bytes(e.checkpoint.read_bytes())
    e.configs = {}
    for name, text in {
        "unknown_key": "[train]\nmax_epoch = 3\n",
        "unknown_section": "[training]\nmax_epochs = 3\n",
        "wrong_type": '[train]\nmax_epochs = "three"\n',
        "bad_syntax": "[train\nmax_epochs = 3\n",
        "big_patch": "[patches]\npatch = 100\ninput_steps = 2\ntarget_steps = 2\n",
        "bbox_string": '[data]\nbbox = "76,35,77,36"\n',
        "epsg_utm": '[load]\nepsg = "utm"\n',
        "tiny_grid": "[load]\nmax_pixels = 100\n",
        "small": "[patches]\npatch = 8\nstride = 8\ninput_steps = 2\ntarget_steps = 2\n"
        "val_fraction = 0.2\ntest_fraction = 0.2\n[train]\nmax_epochs = 1\nbatch_size = 4\n",
    }.items():
        path = root / f"{name}.toml"
        path.write_text(text)
        e.configs[name] = path
    return e


@dataclass(frozen=True)
class Case:
    """One mistake: ``call(env)`` must raise ``error`` with ``what`` (and ``fix``) in its message."""

    id: str
    call: Callable[[SimpleNamespace], Any]
    error: type[GlacierXRError]
    what: str
    fix: str = ""


def _compute(obj):
    return obj.compute() if hasattr(obj, "compute") else obj


def _load(e, **kwargs):
    return gx.load(e.items, **kwargs)


def _sequences(da, **kwargs):
    from glacierxr.ml.patches import PatchSequences

    options = dict(input_steps=2, target_steps=2, patch=8, stride=4)
    options.update(kwargs)
    return PatchSequences(da, **options)


def _predict(da, model, **kwargs):
    from glacierxr.ml.predict import predict

    options = dict(steps=2, input_steps=4, patch=8)
    options.update(kwargs)
    return predict(da, model, **options)


def _trainer(model, **kwargs):
    from glacierxr.ml.train import Trainer

    return Trainer(model, **kwargs)


def _fit_nan(e):
    from torch.utils.data import TensorDataset

    from glacierxr.ml.train import Trainer

    inputs = torch.rand(4, 4, 1, 8, 8)
    inputs[1, 2, 0, 3, 3] = float("nan")
    targets, valid = torch.rand(4, 2, 1, 8, 8), torch.ones(4, 2, 1, 8, 8)
    return Trainer(e.model, max_epochs=1, batch_size=2, progress=False).fit(TensorDataset(inputs, targets, valid))


def _fit_nan_target(e):
    from torch.utils.data import TensorDataset

    from glacierxr.ml.train import Trainer

    inputs, valid = torch.rand(4, 4, 1, 8, 8), torch.ones(4, 2, 1, 8, 8)
    targets = torch.rand(4, 2, 1, 8, 8)
    targets[0, 1, 0, 2, 2] = float("nan")  # NaN where valid_mask says "observed"
    return Trainer(e.model, max_epochs=1, batch_size=2, progress=False).fit(TensorDataset(inputs, targets, valid))


def _times(da, order):
    """``da`` with its time coordinate rearranged (descending, or with a repeated date)."""
    return da.assign_coords(time=da.time.values[order])


def _lonlat(da):
    """``da`` on lon/lat coordinates (degrees) without any CRS."""
    plain = da.drop_vars("spatial_ref", errors="ignore").rename(y="lat", x="lon")
    return plain.assign_coords(lat=np.linspace(32.01, 32.0, da.sizes["y"]), lon=np.linspace(77.0, 77.01, da.sizes["x"]))


def _shifted(da, pixels=3):
    return da.assign_coords(x=da.x + pixels * 30.0)


def _config(e, name):
    from glacierxr.config import load_config

    return load_config(e.configs[name])


LIBRARY_CASES = [
    # --- search ---------------------------------------------------------------------------
    Case("search/bbox-out-of-range", lambda e: gx.search(bbox=(200, 0, 210, 1), datetime=None, catalog=e.catalog), GridError, "out of range", "longitude"),
    Case("search/bbox-swapped-across-antimeridian", lambda e: gx.search(bbox=(10, 0, -10, 1), datetime=None, catalog=e.catalog), GridError, "antimeridian", "pass (-10.0"),
    Case("search/bbox-across-antimeridian-outside-data", lambda e: gx.search(bbox=(179, -1, -179, 1), datetime=None, max_cloud=None, catalog=e.catalog), NoScenesError, "no scenes", "bbox"),
    Case("search/bbox-outside-data", lambda e: gx.search(bbox=(10, 10, 11, 11), datetime=None, max_cloud=None, catalog=e.catalog), NoScenesError, "cover lon/lat", "overlaps"),
    Case("search/bbox-three-numbers", lambda e: gx.search(bbox=(1, 2, 3), datetime=None, catalog=e.catalog), GridError, "four numbers", "west, south, east, north"),
    Case("search/datetime-garbage", lambda e: gx.search(datetime="yesterday", catalog=e.catalog), CatalogError, "not a period", "yyyy-mm-dd"),
    Case("search/datetime-reversed", lambda e: gx.search(datetime="2021-01-01/2020-01-01", catalog=e.catalog), CatalogError, "after it ends", "start first"),
    Case("search/max-cloud-150", lambda e: gx.search(datetime=None, max_cloud=150, catalog=e.catalog), CatalogError, "outside 0", "max_cloud=20"),
    Case("search/unknown-collection", lambda e: gx.search(datetime=None, collection="sentinel-2-l2a", catalog=e.catalog), CatalogError, "sentinel-2-l2a", "collection="),
    Case("search/missing-catalog", lambda e: gx.search(datetime=None, catalog=e.root / "nowhere.json"), CatalogError, "does not exist", "path"),
    Case("search/unknown-glacier", lambda e: gx.search(glacier="atlantis", datetime=None, catalog=e.catalog), CatalogError, "unknown region", "known regions"),
    Case("search/catalog-of-wrong-type", lambda e: gx.search(datetime=None, catalog=42), DataTypeError, "int", "catalog="),
    # --- load -----------------------------------------------------------------------------
    Case("load/no-items", lambda e: gx.load([]), NoScenesError, "no stac items", "widen"),
    Case("load/single-item-not-list", lambda e: gx.load(e.items[0]), DataTypeError, "single", "load([item])"),
    Case("load/a-path", lambda e: gx.load(str(e.catalog)), DataTypeError, "path", "search(catalog=path)"),
    Case("load/bbox-outside-data", lambda e: _load(e, bbox=(10, 10, 11, 11)), GridError, "does not overlap", "inside that extent"),
    Case("load/bbox-across-antimeridian-outside-data", lambda e: _load(e, bbox=(179, -1, -179, 1)), GridError, "does not overlap", "inside that extent"),
    Case("load/bbox-swapped-across-antimeridian", lambda e: _load(e, bbox=(10, 0, -10, 1)), GridError, "antimeridian", "pass (-10.0"),
    Case("load/bbox-south-above-north", lambda e: _load(e, bbox=(76, 36, 77, 35)), GridError, "south", ""),
    Case("load/unknown-band", lambda e: _load(e, bands=("green", "nir09")), MissingBandError, "nir09", "canonical"),
    Case("load/resolution-zero", lambda e: _load(e, resolution=0), ConfigError, "resolution", "positive"),
    Case("load/resolution-true", lambda e: _load(e, resolution=True), ConfigError, "resolution", "positive number"),
    Case("load/resolution-inf", lambda e: _load(e, resolution=math.inf), ConfigError, "resolution", "e.g. 30"),
    Case("load/resolution-tiny", lambda e: _load(e, resolution=1e-9), GridError, "pixels per scene", "coarser resolution"),
    Case("load/grid-above-max-pixels", lambda e: _load(e, max_pixels=100), GridError, "above max_pixels=100", "raise max_pixels="),
    Case("load/max-pixels-zero", lambda e: _load(e, max_pixels=0), ConfigError, "max_pixels", "positive integer"),
    Case("load/chunks-unknown-dim", lambda e: _load(e, chunks={"band": 1}), ConfigError, "unknown dimensions", "'time', 'y' and 'x'"),
    Case("load/on-error-typo", lambda e: _load(e, on_error="ignore"), ConfigError, "on_error", "'skip'"),
    # --- qa.mask / missing_fraction / decode_qa ---------------------------------------------
    Case("mask/wrong-dims", lambda e: qa.mask(e.cube.rename(y="row")), DimensionError, "lacks dimension", "y_dim="),
    Case("mask/2d-scene", lambda e: qa.mask(e.cube.isel(time=0)), DimensionError, "'time'", "rename"),
    Case("mask/qa-as-strings", lambda e: qa.mask(e.cube.assign(qa_pixel=e.cube.qa_pixel.astype(str))), DataTypeError, "dtype", "integers"),
    Case("mask/empty-time-axis", lambda e: qa.mask(e.cube.isel(time=[])), NoScenesError, "length 0", "widen"),
    Case("mask/all-nan-scenes", lambda e: qa.mask(e.nan_cube), NoScenesError, "missing", "raise max_missing"),
    Case("mask/no-qa-band", lambda e: qa.mask(e.cube.drop_vars("qa_pixel")), MissingBandError, "qa_pixel", "qa="),
    Case("mask/unknown-flag", lambda e: qa.mask(e.cube, flags=("cloud", "clouds")), ConfigError, "clouds", "valid flags"),
    Case("mask/max-missing-2", lambda e: qa.mask(e.cube, max_missing=2), ConfigError, "max_missing", "[0, 1]"),
    Case("mask/dataarray", lambda e: qa.mask(e.cube.green), DataTypeError, "dataarray", "dataset"),
    Case("missing_fraction/wrong-dims", lambda e: qa.missing_fraction(e.snow.rename(x="col")), DimensionError, "lacks dimension", "x_dim="),
    Case("decode_qa/float-qa", lambda e: qa.decode_qa(e.cube.green.astype("complex64")), DataTypeError, "dtype", "uint16"),
    # --- indices --------------------------------------------------------------------------
    Case("ndsi/green-as-strings", lambda e: indices.ndsi(e.cube.assign(green=e.cube.green.astype(str))), DataTypeError, "dtype", "real numbers"),
    Case("ndsi/missing-band", lambda e: indices.ndsi(e.cube.drop_vars("swir16")), MissingBandError, "swir16", "swir="),
    Case("ndsi/dataarray", lambda e: indices.ndsi(e.cube.green), DataTypeError, "dataarray", "to_dataset"),
    Case("ndsi/empty-time-axis", lambda e: indices.ndsi(e.cube.isel(time=[])), NoScenesError, "no scene", ""),
    Case("snow_mask/threshold-nan", lambda e: indices.snow_mask(e.snow, threshold=math.nan), ConfigError, "threshold", "0.3"),
    Case("snow_mask/threshold-outside-ndsi-range", lambda e: indices.snow_mask(e.snow, threshold=5), ConfigError, "threshold", "[-1, 1]"),
    Case("snow_mask/strings", lambda e: indices.snow_mask(e.snow.astype(str)), DataTypeError, "dtype", "ndsi"),
    Case("snow_mask/dataset", lambda e: indices.snow_mask(e.cube), DataTypeError, "dataset", "ndsi"),
    # --- fill_gaps ------------------------------------------------------------------------
    Case("fill_gaps/wrong-dims", lambda e: gapfill.fill_gaps(e.snow.rename(x="col")), DimensionError, "'x'", "x_dim="),
    Case("fill_gaps/size-0", lambda e: gapfill.fill_gaps(e.snow, size=0), ConfigError, "size", "odd integer"),
    Case("fill_gaps/size-even", lambda e: gapfill.fill_gaps(e.snow, size=4), ConfigError, "size", "odd integer"),
    Case("fill_gaps/max-iter-0", lambda e: gapfill.fill_gaps(e.snow, max_iter=0), ConfigError, "max_iter", "positive integer"),
    Case("fill_gaps/strings", lambda e: gapfill.fill_gaps(e.snow.astype(str)), DataTypeError, "dtype", "astype"),
    Case("fill_gaps/empty-time-axis", lambda e: gapfill.fill_gaps(e.snow.isel(time=[])), NoScenesError, "no scene", ""),
    # --- align ----------------------------------------------------------------------------
    Case("align/y-in-chunks", lambda e: e.snow.chunk({"y": 8}).glacier.align(), ChunkingError, "one dask chunk", '.chunk({"y": -1'),
    Case("align/wrong-dims", lambda e: e.snow.rename(time="t").glacier.align(), DimensionError, "['t', 'y', 'x']", "time_dim="),
    Case("align/strings", lambda e: e.snow.astype(str).glacier.align(), DataTypeError, "dtype", "astype"),
    Case("align/empty-time-axis", lambda e: e.snow.isel(time=[]).glacier.align(), NoScenesError, "no scene", ""),
    Case("align/max-shift-0", lambda e: e.snow.glacier.align(max_shift=0), ConfigError, "max_shift", "positive"),
    Case("align/reference-on-another-grid", lambda e: e.snow.glacier.align(reference=_shifted(e.snow.isel(time=0))), GridError, "grid", ""),
    # --- monthly --------------------------------------------------------------------------
    Case("monthly/months-0", lambda e: e.snow.glacier.monthly(months=0), ConfigError, "months", "[1, 2, 3, 4, 6, 12]"),
    Case("monthly/months-negative", lambda e: e.snow.glacier.monthly(months=-3), ConfigError, "months", "one of"),
    Case("monthly/empty-time-axis", lambda e: e.snow.isel(time=[]).glacier.monthly(months=3), NoScenesError, "length 0", "search dates"),
    Case("monthly/integer-time", lambda e: e.snow.assign_coords(time=np.arange(10)).glacier.monthly(), DataTypeError, "datetime64", "pd.to_datetime"),
    Case("monthly/unknown-reduction", lambda e: e.snow.glacier.monthly(how="mode"), ConfigError, "how", "one of"),
    # --- flow -----------------------------------------------------------------------------
    Case("flow/one-time-step", lambda e: e.snow.isel(time=[0]).glacier.flow(), DimensionError, "two time steps", "longer series"),
    Case("flow/empty-time-axis", lambda e: e.snow.isel(time=[]).glacier.flow(), DimensionError, "found 0", "longer series"),
    Case("flow/strings", lambda e: e.snow.astype(str).glacier.flow(), DataTypeError, "dtype", "astype"),
    Case("flow/geographic-crs", lambda e: e.snow.rio.write_crs(4326).glacier.flow(), GridError, "geographic", "rio.reproject"),
    Case("flow/lon-lat-without-crs", lambda e: __import__("glacierxr.flow").flow.flow(_lonlat(e.snow), y_dim="lat", x_dim="lon"), GridError, "degrees", "projected crs in metres"),
    Case("flow/x-in-chunks", lambda e: e.snow.chunk({"x": 8}).glacier.flow(), ChunkingError, "chunk", ".chunk("),
    # --- PatchSequences -------------------------------------------------------------------
    Case("patches/patch-larger-than-scene", lambda e: _sequences(e.snow, patch=50), DimensionError, "larger than the scene", "patch <="),
    Case("patches/input-steps-0", lambda e: _sequences(e.snow, input_steps=0), ConfigError, "input_steps", "positive integer"),
    Case("patches/target-steps-negative", lambda e: _sequences(e.snow, target_steps=-1), ConfigError, "target_steps", "positive integer"),
    Case("patches/stride-0", lambda e: _sequences(e.snow, stride=0), ConfigError, "stride", "positive integer"),
    Case("patches/too-few-periods", lambda e: _sequences(e.snow.isel(time=slice(0, 3))), DimensionError, "needs 4", "longer period"),
    Case("patches/empty-time-axis", lambda e: _sequences(e.snow.isel(time=[])), DimensionError, "0 periods", "longer period"),
    Case("patches/wrong-dims", lambda e: _sequences(e.snow.rename(y="row")), DimensionError, "lacks dimension(s) ['y']", "y_dim="),
    Case("patches/strings", lambda e: _sequences(e.snow.astype(str)), DataTypeError, "dtype", "astype"),
    Case("patches/duplicate-times", lambda e: _sequences(_times(e.snow, [0, 1, 2, 3, 4, 4, 5, 6, 7, 8])), GlacierXRError, "strictly increasing", "drop duplicate"),
    Case("patches/descending-times", lambda e: _sequences(_times(e.snow, slice(None, None, -1))), GlacierXRError, "strictly increasing", ".sortby('time')"),
    Case("patches/unknown-split", lambda e: _sequences(e.snow, split="chronological"), ConfigError, "split", "temporal"),
    Case("patches/all-nan-normalize-auto", lambda e: _sequences(e.nan_snow, split="random", normalize="auto").normalization, DimensionError, "no valid pixel", "normalize=(mean, std)"),
    # --- models, training ------------------------------------------------------------------
    Case("get_model/unknown-name", lambda e: gx.ml.get_model("convlsmt"), ModelError, "unknown model", "did you mean 'convlstm'"),
    Case("get_model/typo-in-argument", lambda e: gx.ml.get_model("convlstm", hidden_chanels=(4,)), ModelError, "hidden_chanels", "hidden_channels"),
    Case("Trainer/max-epochs-0", lambda e: _trainer(e.model, max_epochs=0), ConfigError, "max_epochs", "positive integer"),
    Case("Trainer/batch-size-0", lambda e: _trainer(e.model, batch_size=0), ConfigError, "batch_size", "positive integer"),
    Case("Trainer/num-workers-negative", lambda e: _trainer(e.model, num_workers=-1), ConfigError, "num_workers", "non-negative integer"),
    Case("Trainer/patience-fraction", lambda e: _trainer(e.model, patience=1.5), ConfigError, "patience", "positive integer"),
    Case("Trainer/negative-lr", lambda e: _trainer(e.model, lr=-1), ConfigError, "lr", "positive"),
    Case("Trainer/lr-inf", lambda e: _trainer(e.model, lr=math.inf), ConfigError, "lr", "positive number"),
    Case("Trainer/lr-true", lambda e: _trainer(e.model, lr=True), ConfigError, "lr", "e.g. 0.001"),
    Case("Trainer/model-name-not-model", lambda e: _trainer("convlstm"), ModelError, "torch.nn.module", "get_model"),
    Case("Trainer/nan-in-training-inputs", _fit_nan, GlacierXRError, "nan", ""),
    Case("Trainer/nan-in-observed-target", _fit_nan_target, GlacierXRError, "nan", ""),
    # --- checkpoints ------------------------------------------------------------------------
    Case("load_model/corrupt", lambda e: gx.ml.checkpoint.load_model(e.corrupt), CheckpointError, "corrupt", ""),
    Case("load_model/truncated", lambda e: gx.ml.checkpoint.load_model(e.truncated), CheckpointError, "corrupt", ""),
    Case("load_model/empty-file", lambda e: gx.ml.checkpoint.load_model(e.empty_file), CheckpointError, "corrupt", ""),
    Case("load_model/missing", lambda e: gx.ml.checkpoint.load_model(e.root / "nope.pt"), CheckpointError, "no checkpoint", "check the path"),
    Case("load_model/tampered-normalization", lambda e: gx.ml.checkpoint.load_model(e.tampered), CheckpointError, "normalization", "another copy"),
    Case("load_model/a-directory", lambda e: gx.ml.checkpoint.load_model(e.root), CheckpointError, "checkpoint", ""),
    # --- predict --------------------------------------------------------------------------
    Case("predict/steps-0", lambda e: _predict(e.snow, e.model, steps=0), ConfigError, "steps", "positive integer"),
    Case("predict/steps-negative", lambda e: _predict(e.snow, e.model, steps=-2), ConfigError, "steps", "positive integer"),
    Case("predict/patch-larger-than-scene", lambda e: _predict(e.snow, e.model, patch=64), DimensionError, "patch", ""),
    Case("predict/wrong-dims", lambda e: _predict(e.snow.rename(x="col"), e.model), DimensionError, "'x'", ""),
    Case("predict/empty-time-axis", lambda e: _predict(e.snow.isel(time=[]), e.model), DimensionError, "series has 0", "longer series"),
    Case("predict/descending-times", lambda e: _predict(_times(e.snow, slice(None, None, -1)), e.model), DimensionError, "strictly increasing", ".sortby('time')"),
    Case("predict/duplicate-times", lambda e: _predict(_times(e.snow, [0, 1, 2, 3, 4, 5, 6, 7, 8, 8]), e.model), DimensionError, "step of 0.0 days", "drop duplicate"),
    Case("predict/model-name-not-model", lambda e: _predict(e.snow, "convlstm"), DataTypeError, "str", "get_model"),
    Case("predict/dataset", lambda e: _predict(e.snow.to_dataset(), e.model), DataTypeError, "dataarray", "select a variable"),
    Case("predict/strings", lambda e: _predict(e.snow.astype(str), e.model), DataTypeError, "dtype", ""),
    # --- evaluate ---------------------------------------------------------------------------
    Case("metrics/shapes-differ", lambda e: evaluate.metrics(np.zeros((2, 3, 8, 8)), np.zeros((2, 3, 9, 8))), DimensionError, "same shape", ""),
    Case("metrics/grids-differ", lambda e: evaluate.metrics(e.snow.rename(time="lead"), _shifted(e.snow).rename(time="lead")), GridError, "grid", ""),
    Case("metrics/1d", lambda e: evaluate.metrics(np.zeros(3), np.zeros(3)), DimensionError, "(sample, lead", ""),
    Case("evaluate/not-sequences", lambda e: evaluate.evaluate(None, e.snow), DataTypeError, "patchsequences", ""),
    Case("seasonal_naive/descending-times", lambda e: evaluate.seasonal_naive(_times(e.snow, slice(None, None, -1)), steps=2), DimensionError, "strictly increasing", ".sortby('time')"),
    Case("climatology/duplicate-times", lambda e: evaluate.climatology(_times(e.snow, [0, 1, 2, 3, 4, 5, 6, 7, 8, 8])), DimensionError, "step of 0.0 days", "drop duplicate"),
    Case("persistence/steps-0", lambda e: evaluate.persistence(np.zeros((2, 3, 1, 4, 4)), 0), ConfigError, "steps", "positive integer"),
    # --- config, regions, sample, io ---------------------------------------------------------
    Case("config/unknown-key", lambda e: _config(e, "unknown_key"), ConfigError, "unknown key 'max_epoch'", "did you mean 'max_epochs'"),
    Case("config/unknown-section", lambda e: _config(e, "unknown_section"), ConfigError, "unknown section [training]", "did you mean"),
    Case("config/wrong-type", lambda e: _config(e, "wrong_type"), ConfigError, "wrong type", "int"),
    Case("config/bad-syntax", lambda e: _config(e, "bad_syntax"), ConfigError, "not valid toml", "fix the syntax"),
    Case("config/bbox-as-a-string", lambda e: _config(e, "bbox_string"), ConfigError, "bbox = '76,35,77,36'", "list of numbers"),
    Case("config/epsg-utm", lambda e: _config(e, "epsg_utm"), ConfigError, "epsg = 'utm'", "epsg = 32643"),
    Case("config/missing-file", lambda e: gx.config.load_config(e.root / "none.toml") if hasattr(gx, "config") else __import__("glacierxr.config").config.load_config(e.root / "none.toml"), ConfigError, "does not exist", "check the path"),
    Case("regions/unknown", lambda e: gx.regions.get_region("atlantis"), CatalogError, "unknown region", "known regions"),
    Case("sample/width-5", lambda e: gx.sample.write_catalog(e.root / "s1", width=5), ConfigError, "width", "at least 32"),
    Case("sample/end-before-start", lambda e: gx.sample.write_catalog(e.root / "s2", start="2021-01-01", end="2020-01-01"), ConfigError, "not after", "end after the start"),
    Case("sample/existing-catalog", lambda e: gx.sample.write_catalog(e.catalog.parent, width=32, height=32), CatalogError, "already", "overwrite"),
    Case("write/unknown-suffix", lambda e: gx.io.write(e.cube, e.root / "cube.csv"), ConfigError, "suffix", ".zarr"),
    Case("write/missing-folder", lambda e: gx.io.write(e.cube, e.root / "no" / "cube.zarr"), ConfigError, "does not exist", "create it"),
    Case("write/not-xarray", lambda e: gx.io.write(np.zeros(3), e.root / "x.zarr"), DataTypeError, "ndarray", ""),
    Case("write/existing", lambda e: gx.io.write(e.cube, e.composites), GlacierXRError, "already exists", "overwrite=true"),
    Case("write/cog-many-variables", lambda e: gx.io.write(e.cube, e.root / "cube.tif"), DataTypeError, "one variable", "write(ds["),
    Case("read/missing", lambda e: gx.io.read(e.root / "none.zarr"), GlacierXRError, "does not exist", ""),
]


def _ids(cases):
    return [c.id for c in cases]


@pytest.mark.parametrize("case", LIBRARY_CASES, ids=_ids(LIBRARY_CASES))
def test_bad_input__library_raises_glacierxr_error_saying_what_and_how(env, case):
    with pytest.raises(GlacierXRError) as info:
        _compute(case.call(env))
    error = info.value
    message = str(error)
    assert isinstance(error, case.error), f"{type(error).__name__}: {message}"
    lowered = message.lower()
    assert case.what.lower() in lowered, message
    assert case.fix.lower() in lowered, message
    assert len(message) >= 30 and "\n" not in message.strip(), message


def test_bad_input__table_covers_every_public_function():
    """A new public function must get a row: the table is checked against the API."""
    import glacierxr.ml as ml

    covered = {c.id.split("/")[0] for c in LIBRARY_CASES}
    public = {
        "search", "load", "mask", "missing_fraction", "decode_qa", "ndsi", "snow_mask",
        "fill_gaps", "align", "monthly", "flow", "patches", "get_model", "Trainer", "load_model",
        "predict", "metrics", "evaluate", "persistence", "config", "regions", "sample", "write",
        "read",
    }  # fmt: skip
    assert public <= covered, sorted(public - covered)
    assert {"PatchSequences", "get_model", "Trainer", "predict"} <= set(ml.__all__)


# ------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------
def _argv(e, *parts):
    """Fill ``{catalog}``, ``{composites}`` ... placeholders with the env's paths."""
    fields = {
        "catalog": e.catalog, "composites": e.composites, "short": e.short,
        "checkpoint": e.checkpoint, "corrupt": e.corrupt, "truncated": e.truncated, "run": e.run,
        "root": e.root, **{f"config_{k}": v for k, v in e.configs.items()},
    }  # fmt: skip
    return [str(p).format(**{k: str(v) for k, v in fields.items()}) for p in parts]


CLI_CASES = [
    # (id, argv, fragment of the one stderr line)
    ("sample/width-5", ["sample", "--out", "{root}/cli-s1", "--width", "5"], "at least 32"),
    ("sample/end-before-start", ["sample", "--out", "{root}/cli-s2", "--start", "2021-01-01", "--end", "2020-01-01"], "not after"),
    ("sample/existing-catalog", ["sample", "--out", "{root}/sample", "--width", "32", "--height", "32"], "overwrite"),
    ("sample/width-not-a-number", ["sample", "--width", "wide"], "not a valid integer"),
    ("search/bbox-three-numbers", ["search", "--catalog", "{catalog}", "--bbox", "1,2,3"], "four comma-separated"),
    ("search/bbox-out-of-range", ["search", "--catalog", "{catalog}", "--bbox", "200,0,210,1"], "out of range"),
    ("search/bbox-outside-data", ["search", "--catalog", "{catalog}", "--bbox", "10,10,11,11", "--max-cloud", "100"], "no scenes"),
    ("search/bbox-across-antimeridian", ["search", "--catalog", "{catalog}", "--bbox", "179,-1,-179,1", "--max-cloud", "100"], "no scenes"),
    ("search/missing-catalog", ["search", "--catalog", "{root}/nowhere.json"], "does not exist"),
    ("search/unknown-glacier", ["search", "--catalog", "{catalog}", "--glacier", "atlantis"], "unknown region"),
    ("search/max-cloud-150", ["search", "--catalog", "{catalog}", "--max-cloud", "150"], "0–100"),
    ("search/datetime-garbage", ["search", "--catalog", "{catalog}", "--datetime", "yesterday"], "not a period"),
    ("search/config-unknown-key", ["search", "--config", "{config_unknown_key}", "--catalog", "{catalog}"], "unknown key"),
    ("search/config-missing", ["search", "--config", "{root}/none.toml"], "does not exist"),
    ("search/catalog-is-a-checkpoint", ["search", "--catalog", "{checkpoint}"], "glacierxr sample"),
    ("search/config-bbox-as-a-string", ["search", "--config", "{config_bbox_string}", "--catalog", "{catalog}"], "list of numbers"),
    ("regions/extra-argument", ["regions", "parvati"], "unexpected extra argument"),
    ("prepare/config-unknown-section", ["prepare", "--config", "{config_unknown_section}", "--catalog", "{catalog}", "--out", "{root}/p1.zarr"], "unknown section"),
    ("prepare/config-bad-syntax", ["prepare", "--config", "{config_bad_syntax}", "--out", "{root}/p2.zarr"], "not valid toml"),
    ("prepare/bbox-outside-data", ["prepare", "--catalog", "{catalog}", "--bbox", "10,10,11,11", "--out", "{root}/p3.zarr"], "no scenes"),
    ("prepare/months-5", ["prepare", "--catalog", "{catalog}", "--months", "5", "--datetime", "2020", "--out", "{root}/p4.zarr"], "months"),
    ("prepare/config-epsg-utm", ["prepare", "--config", "{config_epsg_utm}", "--catalog", "{catalog}", "--out", "{root}/p5.zarr"], "an integer"),
    ("prepare/grid-above-max-pixels", ["prepare", "--config", "{config_tiny_grid}", "--catalog", "{catalog}", "--datetime", "2020", "--max-cloud", "100", "--out", "{root}/p6.zarr"], "raise [load] max_pixels (in the --config file)"),
    ("prepare/existing-out", ["prepare", "--catalog", "{catalog}", "--out", "{composites}"], "--overwrite"),
    ("prepare/missing-out", ["prepare", "--catalog", "{catalog}"], "--out"),
    ("train/missing-data", ["train", "--config", "{config_small}", "--data", "{root}/none.zarr", "--out", "{root}/t1"], "no composites"),
    ("train/data-is-a-catalog", ["train", "--config", "{config_small}", "--data", "{catalog}", "--out", "{root}/t8"], "glacierxr prepare"),
    ("train/data-is-a-checkpoint", ["train", "--config", "{config_small}", "--data", "{checkpoint}", "--out", "{root}/t9"], "--checkpoint"),
    ("train/existing-run", ["train", "--config", "{config_small}", "--data", "{composites}", "--out", "{run}"], "--overwrite"),
    ("train/unknown-model", ["train", "--config", "{config_small}", "--data", "{composites}", "--model", "convlsmt", "--out", "{root}/t2"], "unknown model"),
    ("train/epochs-0", ["train", "--config", "{config_small}", "--data", "{composites}", "--epochs", "0", "--out", "{root}/t3"], "max_epochs"),
    ("train/batch-size-0", ["train", "--config", "{config_small}", "--data", "{composites}", "--batch-size", "0", "--out", "{root}/t4"], "batch_size"),
    ("train/too-few-periods", ["train", "--config", "{config_small}", "--data", "{short}", "--out", "{root}/t5"], "periods"),
    ("train/patch-larger-than-scene", ["train", "--config", "{config_big_patch}", "--data", "{composites}", "--out", "{root}/t6"], "larger than the scene"),
    ("train/config-wrong-type", ["train", "--config", "{config_wrong_type}", "--data", "{composites}", "--out", "{root}/t7"], "wrong type"),
    ("finetune/corrupt-checkpoint", ["finetune", "--config", "{config_small}", "--checkpoint", "{corrupt}", "--data", "{composites}", "--out", "{root}/f1"], "corrupt"),
    ("finetune/missing-checkpoint", ["finetune", "--config", "{config_small}", "--checkpoint", "{root}/none.pt", "--data", "{composites}", "--out", "{root}/f2"], "no checkpoint"),
    ("finetune/epochs-0", ["finetune", "--config", "{config_small}", "--checkpoint", "{checkpoint}", "--data", "{composites}", "--epochs", "0", "--out", "{root}/f3"], "max_epochs"),
    ("finetune/negative-lr", ["finetune", "--config", "{config_small}", "--checkpoint", "{checkpoint}", "--data", "{composites}", "--lr", "-1", "--out", "{root}/f4"], "lr"),
    ("predict/data-is-a-plain-folder", ["predict", "--config", "{config_small}", "--data", "{root}/sample", "--checkpoint", "{checkpoint}", "--out", "{root}/o7.zarr"], "glacierxr prepare"),
    ("predict/checkpoint-is-composites", ["predict", "--config", "{config_small}", "--data", "{composites}", "--checkpoint", "{composites}", "--out", "{root}/o8.zarr"], "glacierxr train"),
    ("predict/steps-0", ["predict", "--config", "{config_small}", "--data", "{composites}", "--checkpoint", "{checkpoint}", "--steps", "0", "--out", "{root}/o1.zarr"], "steps"),
    ("predict/steps-negative", ["predict", "--config", "{config_small}", "--data", "{composites}", "--checkpoint", "{checkpoint}", "--steps", "-3", "--out", "{root}/o2.zarr"], "steps"),
    ("predict/corrupt-checkpoint", ["predict", "--config", "{config_small}", "--data", "{composites}", "--checkpoint", "{corrupt}", "--out", "{root}/o3.zarr"], "corrupt"),
    ("predict/truncated-checkpoint", ["predict", "--config", "{config_small}", "--data", "{composites}", "--checkpoint", "{truncated}", "--out", "{root}/o4.zarr"], "corrupt"),
    ("predict/missing-data", ["predict", "--config", "{config_small}", "--data", "{root}/none.zarr", "--checkpoint", "{checkpoint}", "--out", "{root}/o5.zarr"], "no composites"),
    ("predict/patch-larger-than-scene", ["predict", "--config", "{config_big_patch}", "--data", "{composites}", "--checkpoint", "{checkpoint}", "--out", "{root}/o6.zarr"], "patch"),
    ("predict/existing-output", ["predict", "--config", "{config_small}", "--data", "{composites}", "--checkpoint", "{checkpoint}", "--out", "{composites}"], "already exists"),
    ("evaluate/corrupt-checkpoint", ["evaluate", "--config", "{config_small}", "--data", "{composites}", "--checkpoint", "{corrupt}"], "corrupt"),
    ("evaluate/missing-data", ["evaluate", "--config", "{config_small}", "--data", "{root}/none.zarr", "--checkpoint", "{checkpoint}"], "no composites"),
    ("evaluate/existing-out", ["evaluate", "--config", "{config_small}", "--data", "{composites}", "--checkpoint", "{checkpoint}", "--out", "{config_small}"], "--overwrite"),
    ("evaluate/data-is-a-checkpoint", ["evaluate", "--config", "{config_small}", "--data", "{checkpoint}", "--checkpoint", "{checkpoint}"], "glacierxr prepare"),
    ("evaluate/unknown-split", ["evaluate", "--config", "{config_small}", "--data", "{composites}", "--checkpoint", "{checkpoint}", "--split", "holdout"], "holdout"),
    ("evaluate/config-unknown-key", ["evaluate", "--config", "{config_unknown_key}", "--data", "{composites}", "--checkpoint", "{checkpoint}"], "unknown key"),
    ("velocity/existing-out", ["velocity", "--catalog", "{catalog}", "--out", "{composites}"], "--overwrite"),
    ("velocity/data-is-a-checkpoint", ["velocity", "--data", "{checkpoint}", "--out", "{root}/v2.zarr"], "cube of scenes"),
    ("velocity/catalog-is-a-checkpoint", ["velocity", "--catalog", "{checkpoint}", "--out", "{root}/v1.zarr"], "glacierxr sample"),
    ("demo/out-is-a-file", ["demo", "--quick", "--out", "{checkpoint}"], "is a file"),
    ("unknown-subcommand", ["forecast"], "no such command"),
]
SUBCOMMANDS = ("sample", "search", "regions", "prepare", "train", "finetune", "predict", "evaluate", "velocity", "demo")


@pytest.mark.parametrize("case_id, argv, fragment", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_input__cli_exits_nonzero_with_one_line(env, capsys, case_id, argv, fragment):
    from glacierxr.cli import main

    code = main(_argv(env, *argv))
    captured = capsys.readouterr()
    assert code != 0 and code is not None, captured
    assert "Traceback" not in captured.err + captured.out
    # click prints a usage line above its own "Error:" line; glacierxr errors are one line
    errors = [line for line in captured.err.splitlines() if line.strip()]
    error_lines = [line for line in errors if line.startswith("Error")]
    assert len(error_lines) == 1, captured.err
    if not any(line.startswith("Usage:") for line in errors):
        assert len(errors) == 1, captured.err
    assert fragment.lower() in error_lines[0].lower(), captured.err


def test_bad_input__cli_table_covers_every_subcommand():
    from glacierxr.cli import cli

    assert set(SUBCOMMANDS) == set(cli.commands)
    assert set(SUBCOMMANDS) <= {c[0].split("/")[0] for c in CLI_CASES}


# ------------------------------------------------------------------------------------------
# no error, but no crash and no misleading advice either
# ------------------------------------------------------------------------------------------
def test_bad_input__align_of_a_one_pixel_scene_keeps_it_unshifted():
    snow = make_series(np.random.default_rng(0).random((3, 1, 1)).astype("float32"))
    aligned = snow.glacier.align().compute()  # was a raw cv2.error
    np.testing.assert_array_equal(aligned.values, snow.values)
    assert np.all(aligned["shift_x"].values == 0) and np.all(aligned["shift_y"].values == 0)


def test_bad_input__skipped_asset_warning_does_not_ask_for_what_is_already_on(env, tmp_path):
    import warnings

    documents = [item.to_dict() for item in env.items[:2]]
    documents[0]["assets"]["green"]["href"] = str(tmp_path / "missing_SR_B3.TIF")
    cube = gx.load(documents, on_error="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        green = cube["green"].compute()
    messages = [str(w.message) for w in caught if issubclass(w.category, gx.io.SkippedAssetWarning)]
    assert messages and np.isnan(green.isel(time=0).values).all()
    for message in messages:
        assert "missing_SR_B3.TIF" in message and "because on_error='skip' is set" in message
        assert "pass on_error='skip'" not in message.lower()
