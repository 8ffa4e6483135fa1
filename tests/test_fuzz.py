"""Hypothesis fuzz of the ``.glacier`` accessor chain on random small cubes.

Any NaN pattern (none, scattered, whole scenes, whole rows or columns, everything), any cloud
cover, any chunking (NumPy, Dask with any time/y/x chunks) and random parameters: the chain
``mask → ndsi → snow_mask → fill_gaps → align → monthly → flow`` either returns valid output
(right dims, names, units, values in range) or raises a :class:`~glacierxr.errors.GlacierXRError`
— never another exception.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import glacierxr  # noqa: F401  (registers .glacier)
from glacierxr.errors import GlacierXRError
from glacierxr.testing import make_scene_cube

NAN_PATTERNS = ("none", "scattered", "scenes", "rows", "columns", "blocks", "all")


@st.composite
def cubes(draw):
    """A ``load()``-like cube with a random NaN pattern, cloud cover and chunking."""
    times = draw(st.integers(1, 7))
    height = draw(st.integers(4, 20))
    width = draw(st.integers(4, 20))
    seed = draw(st.integers(0, 2**16))
    cloud = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    days = draw(st.sampled_from([1, 8, 16, 45, 100]))
    cube = make_scene_cube(times=times, height=height, width=width, seed=seed, cloud_fraction=cloud, freq=f"{days}D")
    rng = np.random.default_rng(seed)
    pattern = draw(st.sampled_from(NAN_PATTERNS))
    missing = np.zeros((times, height, width), bool)
    if pattern == "scattered":
        missing = rng.random(missing.shape) < draw(st.sampled_from([0.05, 0.5, 0.95]))
    elif pattern == "scenes":
        missing[rng.random(times) < 0.5] = True
    elif pattern == "rows":
        missing[:, rng.random(height) < 0.4, :] = True
    elif pattern == "columns":
        missing[:, :, rng.random(width) < 0.4] = True
    elif pattern == "blocks":
        missing[:, : height // 2, : width // 2] = True
    elif pattern == "all":
        missing[:] = True
    band = draw(st.sampled_from(["green", "swir16", "both"]))
    for name in ("green", "swir16"):
        if band in (name, "both"):
            cube[name] = cube[name].where(~missing)
    chunking = draw(st.sampled_from(["numpy", "time", "time+space", "one"]))
    if chunking != "numpy":
        chunks = {"time": draw(st.integers(1, times))}
        if chunking == "time+space":
            chunks.update(y=draw(st.integers(2, height)), x=draw(st.integers(2, width)))
        elif chunking == "one":
            chunks = {"time": -1, "y": -1, "x": -1}
        cube = cube.chunk(chunks)
    return cube


@st.composite
def parameters(draw):
    return dict(
        max_missing=draw(st.sampled_from([0.0, 0.5, 0.9, 1.0, 1.0])),
        threshold=draw(st.sampled_from([-1.0, 0.0, 0.3, 0.9, 1.0])),
        binary=draw(st.booleans()),
        size=draw(st.sampled_from([3, 5, 7])),
        max_iter=draw(st.integers(1, 4)),
        max_shift=draw(st.sampled_from([0.5, 2.0, 5.0])),
        months=draw(st.sampled_from([1, 2, 3, 6, 12])),
    )


def _chain(cube: xr.Dataset, p: dict) -> tuple[xr.DataArray, xr.Dataset | None]:
    masked = cube.glacier.mask(max_missing=p["max_missing"])
    snow = masked.glacier.ndsi().glacier.snow_mask(threshold=p["threshold"], binary=p["binary"])
    snow = snow.glacier.fill_gaps(size=p["size"], max_iter=p["max_iter"])
    if snow.chunks is not None:
        snow = snow.chunk({"y": -1, "x": -1})  # align's documented need (the chain asks for it)
    snow = snow.glacier.align(max_shift=p["max_shift"])
    if snow.chunks is not None:
        snow = snow.chunk({"time": -1})  # monthly's documented need
    composites = snow.glacier.monthly(months=p["months"])
    motion = composites.glacier.flow() if composites.sizes["time"] >= 2 else None
    return composites, motion


def _check_valid(cube: xr.Dataset, composites: xr.DataArray, motion: xr.Dataset | None, p: dict) -> None:
    assert composites.dims == ("time", "y", "x")
    assert composites.name == "snow_mask" and composites.attrs["units"] == "1"
    assert composites.sizes["y"] == cube.sizes["y"] and composites.sizes["x"] == cube.sizes["x"]
    np.testing.assert_array_equal(composites["x"].values, cube["x"].values)
    assert composites.rio.crs == cube.rio.crs
    values = composites.values
    finite = values[np.isfinite(values)]
    assert not np.isinf(values).any()
    low = min(0.0, p["threshold"])
    assert ((finite >= low - 1e-5) & (finite <= 1 + 1e-5)).all(), (finite.min(), finite.max())
    starts = pd.DatetimeIndex(composites["time"].values)
    assert starts.is_monotonic_increasing and starts.is_unique
    if motion is not None:
        assert set(motion.data_vars) >= {"vx", "vy", "v"}
        assert motion.sizes["time"] == composites.sizes["time"] - 1
        for name in ("vx", "vy", "v"):
            assert not np.isinf(motion[name].values).any()
        speed = motion["v"].values
        assert (speed[np.isfinite(speed)] >= 0).all()


@pytest.mark.slow
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(cube=cubes(), p=parameters())
def test_fuzz__accessor_chain_gives_valid_output_or_a_glacierxr_error(cube, p):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # e.g. "Mean of empty slice" in NumPy
        try:
            composites, motion = _chain(cube, p)
            composites = composites.compute()
            motion = motion.compute() if motion is not None else None
        except GlacierXRError:
            return  # a clear, documented refusal is a valid outcome
    _check_valid(cube, composites, motion, p)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(cube=cubes(), threshold=st.floats(-1, 1), binary=st.booleans())
def test_fuzz__mask_ndsi_snow_mask_on_any_nan_pattern_and_chunking(cube, threshold, binary):
    """The cheap first half of the chain, on more examples: lazy or not, same answer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            masked = cube.glacier.mask(max_missing=1.0)
        except GlacierXRError:
            return
        index = masked.glacier.ndsi()
        snow = index.glacier.snow_mask(threshold=threshold, binary=binary)
        values, ndsi_values = snow.values, index.values
        eager = cube.compute().glacier.mask(max_missing=1.0).glacier.ndsi()
    finite = ndsi_values[np.isfinite(ndsi_values)]
    assert ((finite >= -1) & (finite <= 1)).all()
    np.testing.assert_array_equal(ndsi_values, eager.values)
    assert np.array_equal(np.isnan(values), np.isnan(ndsi_values))
    kept = values[np.isfinite(values)]
    if binary:
        assert set(np.unique(kept)) <= {0.0, 1.0}
    else:
        assert ((kept == 0) | (kept >= np.float32(threshold))).all()
