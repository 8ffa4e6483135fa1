"""glacierxr.pipeline, stage by stage, checked against the sample's COGs read with rasterio."""

from __future__ import annotations

import json
import platform
from importlib import metadata

import numpy as np
import pandas as pd
import pystac
import pytest
import rasterio

from glacierxr import pipeline
from glacierxr.config import DataConfig, LoadConfig, PreprocessConfig, RunConfig
from glacierxr.errors import DimensionError
from glacierxr.testing import make_series

MASKED_BITS = 0b11111  # QA_PIXEL fill, dilated cloud, cirrus, cloud, cloud shadow (Collection 2)


def _raw_scenes(catalog):
    """Every sample scene read straight from its COGs: id, time, reflectance, masked pixels."""
    items = sorted(pystac.read_file(str(catalog)).get_items(recursive=True), key=lambda i: i.datetime)
    scenes = []
    for item in items:
        bands = {}
        for key in ("green", "swir16", "qa_pixel"):
            asset = item.assets[key]
            with rasterio.open(asset.get_absolute_href()) as src:
                bands[key] = src.read(1)
            if key != "qa_pixel":
                info = asset.extra_fields["raster:bands"][0]
                dn = bands[key].astype(np.float64)
                bands[key] = np.where(dn == 0, np.nan, dn * info["scale"] + info["offset"])
        masked = (bands["qa_pixel"] & MASKED_BITS) != 0
        missing = masked | np.isnan(bands["green"]) | np.isnan(bands["swir16"])
        scenes.append(dict(id=item.id, time=pd.Timestamp(item.datetime).tz_localize(None), masked=masked,
                           missing=float(missing.mean()), green=bands["green"], swir16=bands["swir16"]))
    return scenes


def _ndsi(green, swir):
    """NDSI with negative reflectance read as 0 and 0 / 0 as NaN (the documented rules)."""
    green, swir = np.maximum(green, 0.0), np.maximum(swir, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(green + swir > 0, (green - swir) / (green + swir), np.nan)


@pytest.fixture(scope="module")
def config(sample_catalog) -> RunConfig:
    return RunConfig(
        data=DataConfig(catalog=str(sample_catalog), datetime="2018-01-01/2019-12-31", max_cloud=100.0),
        load=LoadConfig(chunk_size=48),
        preprocess=PreprocessConfig(align=False, months=3),
    )


def test_versions__are_the_installed_distributions():
    found = pipeline.versions()
    assert found["python"] == platform.python_version()
    assert found["numpy"] == metadata.version("numpy") == np.__version__
    assert found["glacierxr"] == metadata.version("glacierxr")


def test_provenance__reads_back_to_the_same_config(tmp_path, config):
    attrs = pipeline.provenance(config)
    path = tmp_path / "config.toml"
    path.write_text(attrs["glacierxr_config"])
    assert RunConfig.from_toml(path) == config
    assert json.loads(attrs["glacierxr_versions"]) == pipeline.versions()


def test_masked_scenes__keeps_the_scenes_the_qa_bits_allow(config, sample_catalog):
    raw = _raw_scenes(sample_catalog)
    cube = pipeline.load_scenes(pipeline.find_scenes(config.data), config.data, config.load)
    masked = pipeline.masked_scenes(cube, config.preprocess)
    expected = [s["id"] for s in raw if s["missing"] <= config.preprocess.max_missing]
    assert list(masked["id"].values) == expected
    fractions = {s["id"]: s["missing"] for s in raw}
    np.testing.assert_allclose(masked["missing_fraction"].values, [fractions[i] for i in expected], atol=1e-9)


def test_snow_composites__mean_of_the_snow_mask_where_every_scene_saw_the_pixel(config, sample_catalog):
    """Pixels observed in every scene of a period: the composite is the mean NDSI snow mask."""
    pre = config.preprocess
    raw = [s for s in _raw_scenes(sample_catalog) if s["missing"] <= pre.max_missing]
    cube = pipeline.load_scenes(pipeline.find_scenes(config.data), config.data, config.load)
    composites = pipeline.snow_composites(cube, pre).compute()
    assert composites.attrs["months"] == pre.months  # where predict() and evaluate() look
    checked = 0
    for start in composites.time.values:
        end = pd.Timestamp(start) + pd.DateOffset(months=pre.months)
        members = [s for s in raw if pd.Timestamp(start) <= s["time"] < end]
        if not members:
            continue
        ndsi = [_ndsi(s["green"], s["swir16"]) for s in members]
        snow = np.stack([np.where(n >= pre.threshold, n, 0.0) for n in ndsi])
        seen = ~np.any(np.stack([s["masked"] | np.isnan(n) for s, n in zip(members, ndsi)]), axis=0)
        # the library works in float32: leave out pixels within rounding of the threshold
        seen &= ~np.any(np.abs(np.stack(ndsi) - pre.threshold) < 1e-4, axis=0)
        got = composites.sel(time=start).values
        np.testing.assert_allclose(got[seen], snow.mean(axis=0)[seen], rtol=1e-5, atol=1e-6)
        checked += int(seen.sum())
    assert checked > 10_000


def test_composites_dataset__scene_diagnostics_beside_the_composites():
    scenes = make_series(np.zeros((3, 4, 4), dtype="float32"), freq="MS")
    scenes = scenes.assign_coords(id=("time", ["a", "b", "c"]), shift_x=("time", [0.0, 0.5, -0.5]),
                                  align_method=("time", ["ecc", "phase", "none"]))
    composites = make_series(np.ones((2, 4, 4), dtype="float32"), freq="3MS")
    dataset = pipeline.composites_dataset(composites, scenes)
    assert list(dataset["scene_id"].values) == ["a", "b", "c"]
    assert dataset["scene_shift_x"].values.tolist() == [0.0, 0.5, -0.5]
    assert dataset["scene_align_method"].values.tolist() == [2, 1, 0]  # flag_values of "ecc", "phase", "none"
    assert dataset["scene_align_method"].attrs["flag_meanings"].split()[2] == "ecc"
    assert (dataset["scene_time"].values == scenes.time.values).all()


def test_make_sequences__refuses_too_few_periods(config):
    short = make_series(np.zeros((5, 20, 20), dtype="float32"), freq="3MS")
    with pytest.raises(DimensionError, match="5 periods but a sequence needs 8"):
        pipeline.make_sequences(short, config)
