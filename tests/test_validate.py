"""glacierxr._validate: one rule per check, the same error class from every stage."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from glacierxr import _validate as v
from glacierxr.errors import (
    ChunkingError,
    ConfigError,
    DataTypeError,
    DimensionError,
    GlacierXRError,
    GridError,
)
from glacierxr.testing import make_series


def _cube(n=3, size=4, **kwargs):
    return make_series(np.zeros((n, size, size), dtype="float32"), **kwargs)


def test_require_dims__names_the_missing_and_present_dims():
    v.require_dims(_cube(), ("time", "y", "x"), what="align")
    with pytest.raises(DimensionError, match=r"lacks dimension\(s\) \['band'\]; it has \['time', 'y', 'x'\]"):
        v.require_dims(_cube(), ("band", "y"), what="align")


@pytest.mark.parametrize("dtype", ["float32", "int16", "uint8", "bool"])
def test_require_numeric__accepts_real_numbers_and_booleans(dtype):
    v.require_numeric(xr.DataArray(np.zeros(2, dtype=dtype)), what="x")


@pytest.mark.parametrize("values", [np.array(["a"]), np.zeros(1, complex), np.array([np.datetime64("2020-01-01")])])
def test_require_numeric__refuses_strings_complex_and_dates(values):
    with pytest.raises(DataTypeError, match="needs numeric data"):
        v.require_numeric(xr.DataArray(values), what="x")


def test_require_choice_and_positive__always_config_error():
    assert v.require_choice("a", ("a", "b"), name="opt") == "a"
    bad = [
        lambda: v.require_choice("c", ("a", "b"), name="opt"),
        lambda: v.require_choice([1], {"a": 1}, name="opt"),
        lambda: v.require_positive(0, name="n", integer=True),
        lambda: v.require_positive(-1.0, name="n"),
        lambda: v.require_positive(2.0, name="n", integer=True),
        lambda: v.require_positive(True, name="n", integer=True),
        lambda: v.require_positive(float("nan"), name="n"),
        lambda: v.require_positive(float("inf"), name="n"),
        lambda: v.require_positive("3", name="n"),
        lambda: v.require_positive(-1, name="n", integer=True, allow_zero=True),
    ]
    for call in bad:
        with pytest.raises(ConfigError) as info:
            call()
        assert isinstance(info.value, ValueError)
    assert v.require_positive(np.int64(3), name="n", integer=True) == 3
    assert v.require_positive(0, name="n", integer=True, allow_zero=True) == 0
    assert v.require_positive(None, name="n", allow_none=True) is None
    assert v.require_positive(0.5, name="n") == 0.5


def test_require_monotonic_time():
    cube = _cube()
    v.require_monotonic_time(cube, "time", what="flow")
    with pytest.raises(DimensionError, match="strictly increasing"):
        v.require_monotonic_time(cube.isel(time=[0, 0, 1]), "time", what="flow")
    with pytest.raises(DimensionError, match="sortby"):
        v.require_monotonic_time(cube.isel(time=[1, 0]), "time", what="flow")
    with pytest.raises(DataTypeError, match="datetime64"):
        v.require_monotonic_time(cube.assign_coords(time=[1, 2, 3]), "time", what="flow")


def test_check_on_grid__returns_mask_on_the_cube_grid():
    cube = _cube()
    stable = (cube.isel(time=0) == 0).transpose("x", "y").assign_coords(extra=1)
    out = v.check_on_grid(stable, cube, name="stable", what="flow", boolean=True)
    assert out.dims == ("y", "x") and "extra" not in out.coords and bool(out.all())
    with pytest.raises(DataTypeError, match="boolean"):
        v.check_on_grid(cube.isel(time=0), cube, name="stable", what="flow", boolean=True)
    with pytest.raises(DataTypeError, match="DataArray"):
        v.check_on_grid(np.ones((4, 4), bool), cube, name="stable", what="flow")
    with pytest.raises(DimensionError, match="dims"):
        v.check_on_grid(cube, cube, name="reference", what="align")
    shifted = stable.assign_coords(x=stable.x + 30.0)
    with pytest.raises(GridError, match="along 'x'"):
        v.check_on_grid(shifted, cube, name="stable", what="flow")
    with pytest.raises(ChunkingError):
        v.check_on_grid(stable.chunk({"y": 2}), cube, name="stable", what="flow")


@pytest.mark.parametrize(
    "bbox, message",
    [
        ((1, 2, 3), "four numbers"),
        (("a", 2, 3, 4), "four numbers"),
        ((0, 0, float("nan"), 1), "non-finite"),
        ((200, 0, 210, 1), "out of range"),
        ((600000, 3500000, 610000, 3510000), "projected"),
        ((76, 36, 77, 35), "south"),
        ((10, 0, -10, 1), "probably swapped"),
    ],
)
def test_check_bbox__refuses_with_grid_error(bbox, message):
    with pytest.raises(GridError, match=message):
        v.check_bbox(bbox)


def test_check_bbox__antimeridian_is_opt_out():
    assert v.check_bbox([179, -1, -179, 1]) == (179.0, -1.0, -179.0, 1.0)
    with pytest.raises(GridError, match="crosses the antimeridian"):
        v.check_bbox((179, -1, -179, 1), allow_antimeridian=False)


def test_every_error_is_a_glacierxr_error():
    with pytest.raises(GlacierXRError):
        v.require_dataarray(np.zeros(2), "ndsi")


# --------------------------------------------------------------------------- search and load agree
L9_ITEMS = "stac/pc_landsat-c2-l2_items_20250722_L9_path084.geojson"


def _outcome(call):
    """``("ok", value)`` or ``(error class, message)``: what one bbox does to one entry point."""
    try:
        return "ok", call()
    except GridError as error:
        return type(error), str(error)


@pytest.mark.parametrize(
    "bbox",
    [(166.5, -12.0, -170.0, 7.0), (10, 0, -10, 1), (76, 36, 77, 35), (200, 0, 210, 1), (1, 2, 3)],
)
def test_search_and_load_agree_on_bboxes(shared_data, bbox):
    """The same bbox is refused by both with the same message, or taken by both."""
    import glacierxr as gx

    catalog = shared_data / L9_ITEMS
    every = gx.search(datetime=None, max_cloud=None, catalog=catalog, sign=False)
    searched = _outcome(lambda: gx.search(bbox=bbox, datetime=None, max_cloud=None, catalog=catalog, sign=False))
    loaded = _outcome(lambda: gx.load(every, bbox=bbox, resolution=3000))
    assert searched[0] == loaded[0]
    if searched[0] != "ok":
        assert searched[1] == loaded[1]


def test_load__antimeridian_box_spans_180_degrees_east(shared_data):
    """A crossing box is one cube from 166.5 E over 180 to 170 W (not -170 .. 166.5)."""
    import glacierxr as gx
    from pyproj import Transformer

    box = (166.5, -12.0, -170.0, 7.0)
    items = gx.search(bbox=box, datetime=None, max_cloud=None, catalog=shared_data / L9_ITEMS, sign=False)
    cube = gx.load(items, bbox=box, resolution=3000)
    assert cube.green.chunks is not None  # lazy: nothing read
    to_lonlat = Transformer.from_crs(cube.attrs["epsg"], 4326, always_xy=True)
    west, _ = to_lonlat.transform(float(cube.x.min()), 0.0)
    east, _ = to_lonlat.transform(float(cube.x.max()), 0.0)
    assert 166.0 < west < 167.0 and -170.5 < east < -169.5
    # one degree of longitude is ~111 km at the equator: 23.5 degrees at 3 km per pixel
    assert 23.5 * 111.3 / 3 * 0.95 < cube.sizes["x"] < 23.5 * 111.3 / 3 * 1.1


def test_require_series__exact_dims_numeric_and_increasing_time():
    cube = _cube()
    assert v.require_series(cube, ("time", "y", "x"), what="predict") is cube
    with pytest.raises(DimensionError, match=r"extra dims \['band'\]"):
        v.require_series(cube.expand_dims(band=2), ("time", "y", "x"), what="predict")
    with pytest.raises(DataTypeError, match="numeric"):
        v.require_series(cube.astype(str), ("time", "y", "x"), what="predict")
    with pytest.raises(DimensionError, match="strictly increasing"):  # integer steps, repeated
        v.require_series(cube.assign_coords(time=[0, 1, 1]), ("time", "y", "x"), what="predict")
    v.require_series(cube.assign_coords(time=[0, 1, 2]), ("time", "y", "x"), what="predict")
