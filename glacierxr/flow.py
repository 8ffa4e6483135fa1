"""Surface velocity between consecutive scenes: feature tracking (NCC) or Farnebäck optical flow.

:func:`flow` measures how the content of every scene moved by the next one and returns an
ITS_LIVE-style velocity product: ``vx``, ``vy`` (m/yr, east / north), ``v``, per-point errors
calibrated on stable ground, pixel displacements, match quality, the stable-surface shift
removed and its flag, and the pair's dates.  It is built from three parts:

* **validate** (metadata only: dimensions, projected grid, chunks, options);
* **kernel** per pair, in NumPy / OpenCV: :func:`glacierxr.tracking.track_pair` (normalised
  cross-correlation of chips on a posting grid, coarse to fine) or
  :func:`cv2.calcOpticalFlowFarneback` (every pixel), then :func:`calibrate` (stable-surface
  shift and errors);
* **describe**: units, CF standard names and long names from :data:`VARIABLES`.

Everything is lazy: one Dask task computes one pair.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from glacierxr import _cf
from glacierxr._validate import (
    check_single_chunk,
    require_choice,
    require_cv2,
    require_dataarray,
    require_dims,
    require_monotonic_time,
    require_numeric,
    require_positive,
)
from glacierxr.errors import ConfigError, DimensionError, GridError
from glacierxr.stable import FLAG_AUTO, FLAG_NONE, FLAG_USER, resolve_stable
from glacierxr.tracking import PREFILTERS, SUBPIXEL, TrackingParams, posting, prefilter, track_pair

__all__ = ["flow", "calibrate", "EmptyPairWarning", "METHODS", "VARIABLES", "PAIR_STATISTICS"]

#: Methods of :func:`flow`.
METHODS = ("ncc", "farneback")
#: Days per year used to turn displacements per pair into velocities per year.
DAYS_PER_YEAR = 365.25
#: Normal-consistent scale of the median absolute deviation (NMAD = 1.4826 * MAD).
NMAD_SCALE = 1.4826
#: Share of the slowest points used as stable ground when none is given (ITS_LIVE's flag 2).
SLOWEST_SHARE = 0.25
#: Fewest stable points for a shift and an error estimate.
MIN_STABLE_POINTS = 10
#: Posting (m) of the NCC grid when ``spacing`` is not given: ITS_LIVE's 120 m.
DEFAULT_SPACING_M = 120.0
#: Smallest NCC chip (m) when ``chip`` is not given; it grows where matches fail.
DEFAULT_CHIP_M = 465.0
#: Search radius (m per year of separation) when ``search`` is not given: 8 km/yr (22 m/day).
DEFAULT_SEARCH_M_PER_YEAR = 8000.0
#: Fraction of a chip that must be stable ground for its point to count as stable.
STABLE_CHIP_FRACTION = 0.9
#: Error weight of interpolated points relative to a typical stable-ground match.
INTERPOLATED_WEIGHT = 2.0

#: Fields of the per-pair kernel output, in order (pixels unless said otherwise).
FIELDS = ("dx", "dy", "correlation", "peak_ratio", "chip_size", "interpolated", "has_data",
          "dx_error", "dy_error")  # fmt: skip
#: Per-pair statistics of the kernel output, in order.
PAIR_STATISTICS = ("stable_shift_dx", "stable_shift_dy", "stable_shift_flag", "stable_count",
                   "stable_nmad_dx", "stable_nmad_dy", "stable_rmse_dx", "stable_rmse_dy",
                   "valid_fraction")  # fmt: skip

_PX = {"units": "1"}
#: Output variables: CF table entry (glacierxr._cf.TABLE) or attributes, and a long name.
VARIABLES: dict[str, dict[str, Any]] = {
    "vx": {"entry": "vx"},
    "vy": {"entry": "vy"},
    "v": {"entry": "v"},
    "vx_error": {"entry": "vx_error"},
    "vy_error": {"entry": "vy_error"},
    "v_error": {"entry": "v_error"},
    "dx": {"entry": _PX, "long_name": "displacement along columns per pair in pixels (+ right)"},
    "dy": {"entry": _PX, "long_name": "displacement along rows per pair in pixels (+ down)"},
    "correlation": {"entry": _PX, "long_name": "peak normalised cross-correlation of the match"},
    "peak_ratio": {"entry": _PX, "long_name": "highest correlation over the next peak (> 2 px away)"},
    "chip_size": {"entry": _PX, "long_name": "side of the matched chip in pixels"},
    "interpolated": {"entry": _PX, "long_name": "vector interpolated from its neighbours"},
    "stable_shift_x": {"entry": {"units": "m/year"},
                       "long_name": "stable-surface velocity along x removed from the pair"},
    "stable_shift_y": {"entry": {"units": "m/year"},
                       "long_name": "stable-surface velocity along y removed from the pair"},
    "stable_shift_dx": {"entry": _PX, "long_name": "stable-surface shift along columns removed (px)"},
    "stable_shift_dy": {"entry": _PX, "long_name": "stable-surface shift along rows removed (px)"},
    "stable_shift_flag": {"entry": _PX, "long_name": "stable shift from: 0 none, 1 mask or outlines, "
                          "2 slowest 25 % of points", "flag_values": [0, 1, 2],
                          "flag_meanings": "none stable_mask slowest_points"},
    "stable_count": {"entry": _PX, "long_name": "number of stable-ground points used"},
    "stable_nmad_x": {"entry": {"units": "m/year"}, "long_name": "NMAD of stable-ground vx residuals"},
    "stable_nmad_y": {"entry": {"units": "m/year"}, "long_name": "NMAD of stable-ground vy residuals"},
    "stable_rmse_x": {"entry": {"units": "m/year"}, "long_name": "RMSE of stable-ground vx residuals"},
    "stable_rmse_y": {"entry": {"units": "m/year"}, "long_name": "RMSE of stable-ground vy residuals"},
    "valid_fraction": {"entry": {"units": "1"}, "long_name": "fraction of points with data in both scenes"},
}
#: Per-pair coordinates.
PAIR_COORDS = {
    "time_start": {"long_name": "acquisition time of the earlier scene"},
    "time_end": {"long_name": "acquisition time of the later scene"},
    "mid_date": {"long_name": "middle of the pair's time span"},
    "date_dt": {"units": "days", "long_name": "time between the two scenes"},
}

#: Why ``y`` and ``x`` must each be one Dask chunk (said in ChunkingError).
_WHOLE_SCENE = "surface velocity matches whole scenes"
#: Farnebäck parameters and their defaults (the method paper's pyramid, OpenCV's usual rest).
_FARNEBACK = {"pyr_scale": 0.5, "levels": 6, "winsize": 15, "iterations": 10, "poly_n": 5,
              "poly_sigma": 1.1, "flags": 0}  # fmt: skip
#: Intensity range a pair is scaled to before Farnebäck (8-bit amplitude).
_SCALED_MAX = 255.0


class EmptyPairWarning(UserWarning):
    """A pair had no point with data in both scenes (no overlap, or all cloud): its result is NaN."""


# ------------------------------------------------------------------------------------------
# kernel: stable-surface shift and errors (NumPy, one pair)
# ------------------------------------------------------------------------------------------
def _slowest(dx: np.ndarray, dy: np.ndarray, matched: np.ndarray) -> np.ndarray:
    """The slowest :data:`SLOWEST_SHARE` of the matched points by 3 x 3 median speed.

    The median over the neighbourhood keeps a fast point whose own match happened to be slow
    (noise) out of the stable set, so the residual spread is not truncated.
    """
    from scipy import ndimage

    speed = np.where(matched, np.hypot(dx, dy), np.inf)
    smooth = ndimage.median_filter(speed, size=3, mode="nearest")
    candidates = matched & np.isfinite(smooth)
    if not candidates.any():
        return candidates
    return candidates & (smooth <= np.quantile(smooth[candidates], SLOWEST_SHARE))


def calibrate(
    dx: np.ndarray,
    dy: np.ndarray,
    weight: np.ndarray,
    interpolated: np.ndarray,
    stable: np.ndarray | None = None,
    *,
    correct: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Remove the stable-surface shift of one pair and give every point an error (pixels).

    Parameters
    ----------
    dx, dy
        Displacement fields of the pair (pixels, NaN where unknown).
    weight
        Relative error weight of each point from its match quality (larger = worse).
    interpolated
        True where the vector was interpolated (not used as stable ground).
    stable
        Boolean stable-ground points, or None for the slowest 25 % of matched points.
    correct
        Subtract the median stable-ground displacement (False: report it, remove nothing).

    Returns
    -------
    (dx, dy, dx_error, dy_error, statistics)
        Corrected fields, per-point errors and the first eight :data:`PAIR_STATISTICS`. The
        error along each axis is the NMAD of the stable-ground residuals (ITS_LIVE calibrates
        its errors on stable ground the same way) times ``weight`` over its stable-ground median;
        interpolated points get :data:`INTERPOLATED_WEIGHT` times the NMAD.
    """
    matched = np.isfinite(dx) & ~interpolated
    use = matched & (stable if stable is not None else _slowest(dx, dy, matched))
    flag = FLAG_USER if stable is not None else FLAG_AUTO
    statistics = np.full(8, np.nan)
    count = int(use.sum())
    statistics[[0, 1, 2, 3]] = 0.0, 0.0, FLAG_NONE, count
    if count < MIN_STABLE_POINTS:
        nan = np.full(dx.shape, np.nan, np.float32)
        return dx, dy, nan, nan.copy(), statistics
    shift = np.array([np.median(dx[use]), np.median(dy[use])])
    residual = np.stack([dx[use], dy[use]]).astype(np.float64) - shift[:, None]
    spread = NMAD_SCALE * np.median(np.abs(residual - np.median(residual, axis=1)[:, None]), axis=1)
    rmse = np.sqrt(np.mean(residual**2, axis=1))
    if correct:
        statistics[[0, 1, 2]] = shift[0], shift[1], flag
        dx, dy = dx - np.float32(shift[0]), dy - np.float32(shift[1])
    statistics[4:] = spread[0], spread[1], rmse[0], rmse[1]
    scale = np.where(interpolated, INTERPOLATED_WEIGHT, weight / max(np.median(weight[use]), 1e-6))
    scale = np.where(np.isfinite(dx), scale, np.nan)
    floor = 1e-3  # a perfect synthetic pair has no spread; keep errors positive
    errors = [(max(s, floor) * scale).astype(np.float32) for s in spread]
    return dx, dy, errors[0], errors[1], statistics


def _ncc_weight(correlation: np.ndarray) -> np.ndarray:
    """Error weight of an NCC match: sqrt(1 - c^2) / c grows as the peak correlation c falls."""
    c = np.clip(np.nan_to_num(correlation, nan=0.05), 0.05, 0.999)
    return np.sqrt(1.0 - c * c) / c


def _stable_points(mask: np.ndarray, rows: np.ndarray, cols: np.ndarray, chip: int) -> np.ndarray:
    """Points whose chip is at least :data:`STABLE_CHIP_FRACTION` stable ground."""
    if chip <= 1:
        return mask[np.ix_(rows, cols)].astype(bool)
    cv2 = require_cv2("flow")
    share = cv2.boxFilter(mask.astype(np.float32), -1, (chip, chip), borderType=cv2.BORDER_REPLICATE)
    return share[np.ix_(rows, cols)] >= STABLE_CHIP_FRACTION


def _finish(fields: np.ndarray, statistics: np.ndarray) -> None:
    """Set the valid fraction of a pair and warn when it is empty (in place)."""
    statistics[-1] = float(np.isfinite(fields[0]).mean())
    if statistics[-1] == 0:
        warnings.warn(
            "flow: a pair has no point with data in both scenes (no overlap, or all cloud); its "
            "velocities are NaN, stable_shift_flag is 0 and valid_fraction is 0.",
            EmptyPairWarning,
            stacklevel=2,
        )


# ------------------------------------------------------------------------------------------
# kernels per method (apply_ufunc: leading dims are pairs)
# ------------------------------------------------------------------------------------------
def _ncc_block(first, second, stable=None, *, rows, cols, params: TrackingParams, correct: bool):
    """NCC feature tracking + calibration for every pair of a ``(..., y, x)`` block."""
    loop = first.shape[:-2]
    fields = np.full(loop + (len(FIELDS), rows.size, cols.size), np.nan, np.float32)
    statistics = np.full(loop + (len(PAIR_STATISTICS),), np.nan)
    for index in np.ndindex(*loop):
        out = track_pair(first[index], second[index], rows, cols, params)
        points = None
        if stable is not None:
            points = _stable_points(np.broadcast_to(stable, first.shape)[index], rows, cols, params.chip)
        dx, dy, ex, ey, stats = calibrate(
            out[0], out[1], _ncc_weight(out[2]), out[5] > 0, points, correct=correct
        )
        fields[index] = np.stack([dx, dy, *out[2:7], ex, ey])
        statistics[index][:-1] = stats
        _finish(fields[index], statistics[index])
    return fields, statistics


def _scale_pair(first: np.ndarray, second: np.ndarray, kind: str, sigma: float):
    """Fill, optionally prefilter, and scale a pair jointly to 0-255 float32; and its validity.

    A missing pixel takes the other frame's value when that one is valid (a hole then looks
    static rather than like an edge), else the mid-value of the pair's valid range.
    """
    valid_first, valid_second = np.isfinite(first), np.isfinite(second)
    valid = valid_first & valid_second
    if not (valid_first.any() or valid_second.any()):
        return np.zeros(first.shape, np.float32), np.zeros(first.shape, np.float32), valid
    both = np.concatenate([first[valid_first], second[valid_second]])
    middle = float(both.min() + both.max()) / 2.0
    a = np.where(valid_first, first, np.where(valid_second, second, middle))
    b = np.where(valid_second, second, np.where(valid_first, first, middle))
    a, b = prefilter(a, kind, sigma), prefilter(b, kind, sigma)
    both = np.concatenate([a[valid_first], b[valid_second]])
    low, span = float(both.min()), float(both.max() - both.min())
    gain = np.float32(_SCALED_MAX / span if span > 0 else 0.0)
    return (a - np.float32(low)) * gain, (b - np.float32(low)) * gain, valid


def _farneback_block(first, second, stable=None, *, options: dict, kind: str, sigma: float,
                     correct: bool):
    """Farnebäck flow + calibration for every pair of a ``(..., y, x)`` block."""
    cv2 = require_cv2("flow")
    loop = first.shape[:-2]
    fields = np.full(loop + (len(FIELDS),) + first.shape[-2:], np.nan, np.float32)
    statistics = np.full(loop + (len(PAIR_STATISTICS),), np.nan)
    ones = np.ones(first.shape[-2:], np.float32)
    none = np.zeros(first.shape[-2:], bool)
    for index in np.ndindex(*loop):
        a, b, valid = _scale_pair(first[index], second[index], kind, sigma)
        motion = cv2.calcOpticalFlowFarneback(a, b, None, *options.values())
        dx = np.where(valid, motion[..., 0], np.nan).astype(np.float32)
        dy = np.where(valid, motion[..., 1], np.nan).astype(np.float32)
        points = None if stable is None else np.broadcast_to(stable, first.shape)[index].astype(bool)
        dx, dy, ex, ey, stats = calibrate(dx, dy, ones, none, points, correct=correct)
        nan = np.full(dx.shape, np.nan, np.float32)
        fields[index] = np.stack([dx, dy, nan, nan, nan, none, valid, ex, ey])
        statistics[index][:-1] = stats
        _finish(fields[index], statistics[index])
    return fields, statistics


# ------------------------------------------------------------------------------------------
# validate (metadata only)
# ------------------------------------------------------------------------------------------
_DEGREE_NAMES = {"lon", "lat", "longitude", "latitude"}


def _check_projected(da: xr.DataArray, y_dim: str, x_dim: str) -> None:
    """Refuse geographic grids: pixels must be metres for velocities in m/yr."""
    try:
        crs = da.rio.crs
    except Exception:  # noqa: BLE001 - no rioxarray metadata: judge by the coordinates
        crs = None
    units = {str(da[d].attrs.get("units", "")).lower() for d in (y_dim, x_dim) if d in da.coords}
    degrees = (crs is not None and crs.is_geographic) or bool(
        crs is None and (({y_dim, x_dim} & _DEGREE_NAMES) or any(u.startswith("degree") for u in units))
    )
    if degrees:
        found = crs.to_string() if crs is not None else f"coordinates {y_dim!r}/{x_dim!r} in degrees"
        raise GridError(
            f"flow turns pixels into metres, but the grid is geographic ({found}): velocities "
            "would be in degrees per year. Reproject to a projected CRS in metres first, e.g. "
            f"`ll = da.rio.set_spatial_dims(x_dim={x_dim!r}, y_dim={y_dim!r}).rio.write_crs('EPSG:4326')` "
            "then `flow(ll.rio.reproject(ll.rio.estimate_utm_crs()))`."
        )


def _pixel_spacing(da: xr.DataArray, dim: str) -> float:
    """Signed coordinate step along ``dim`` (CRS units per pixel); the grid must be regular."""
    if dim not in da.coords or da.sizes[dim] < 2:
        raise GridError(
            f"flow needs a coordinate {dim!r} with at least two values to know the pixel size, "
            f"found {'none' if dim not in da.coords else da.sizes[dim]}. Assign coordinates "
            "(pixel centres in metres) first."
        )
    steps = np.diff(np.asarray(da[dim].values, dtype=np.float64))
    step = float(steps.mean())
    if step == 0 or not np.allclose(steps, step, rtol=1e-6, atol=1e-9 * abs(step)):
        raise GridError(
            f"flow needs a regular grid, but the {dim!r} spacing varies between {steps.min()} "
            f"and {steps.max()}. Reproject to a regular grid first (e.g. with rioxarray)."
        )
    return step


def _check_cube(da: xr.DataArray, time_dim: str, y_dim: str, x_dim: str) -> tuple[float, float]:
    """Validate the input cube; return the signed pixel spacing along x and y (m)."""
    require_dataarray(da, "flow")
    require_dims(da, (time_dim, y_dim, x_dim), what="flow")
    if da.sizes[time_dim] < 2:
        raise DimensionError(
            f"flow needs at least two time steps, found {da.sizes[time_dim]} along {time_dim!r}. "
            "Pass a longer series (flow is computed between consecutive steps)."
        )
    require_numeric(da, what="flow")
    require_monotonic_time(da, time_dim, what="flow")
    check_single_chunk(da, (y_dim, x_dim), "flow", why=_WHOLE_SCENE)
    _check_projected(da, y_dim, x_dim)
    return _pixel_spacing(da, x_dim), _pixel_spacing(da, y_dim)


def _ncc_params(da, pixel: float, days: np.ndarray, y_dim: str, x_dim: str, **given) -> tuple:
    """Posting step (px) and :class:`TrackingParams` from the user's options and the grid."""
    spacing = require_positive(given.pop("spacing"), name="spacing", allow_none=True, example=120)
    step = max(1, round((spacing or DEFAULT_SPACING_M) / pixel))
    chip = require_positive(given.pop("chip"), name="chip", integer=True, allow_none=True, example=31)
    chip = (chip if chip is not None else max(int(DEFAULT_CHIP_M / pixel), 7)) | 1
    scene = min(da.sizes[y_dim], da.sizes[x_dim])
    if chip > scene:
        raise DimensionError(
            f"flow: the chip of {chip} px is larger than the scene ({da.sizes[y_dim]} x "
            f"{da.sizes[x_dim]} px). Pass a smaller chip= (e.g. chip={max(scene // 4, 3) | 1}) "
            "or a larger area."
        )
    max_chip = require_positive(given.pop("max_chip"), name="max_chip", integer=True, allow_none=True)
    search = require_positive(given.pop("search"), name="search", integer=True, allow_none=True)
    if search is None:
        reach = DEFAULT_SEARCH_M_PER_YEAR * float(days.max()) / DAYS_PER_YEAR / pixel
        search = int(min(max(48, np.ceil(reach)), max(scene // 2, 1)))
    params = TrackingParams(
        chip=chip, max_chip=min(max_chip or 4 * chip + 3, scene), search=search, **given
    )
    return step, params


def _farneback_options(method: str, given: dict[str, Any]) -> dict[str, Any]:
    """Farnebäck parameters with defaults; refuse them for another method (a typo trap)."""
    passed = {name: value for name, value in given.items() if value is not None}
    if method != "farneback":
        if passed:
            raise ConfigError(
                f"{sorted(passed)} are parameters of method='farneback', not of method={method!r}. "
                "Pass method='farneback' to use them, or drop them."
            )
        return {}
    options = {**_FARNEBACK, **passed}
    casts = {"pyr_scale": float, "poly_sigma": float}
    return {name: casts.get(name, int)(value) for name, value in options.items()}


def _pairs(da: xr.DataArray, time_dim: str, y_dim: str, x_dim: str):
    """The earlier and later frames of every consecutive pair, labelled by the later time."""
    keep = {time_dim, y_dim, x_dim}
    bare = da.drop_vars([name for name, c in da.coords.items() if not set(c.dims) <= keep or name == "spatial_ref"])
    bare = bare.drop_vars([name for name, c in bare.coords.items() if time_dim in c.dims and name != time_dim])
    if not np.issubdtype(bare.dtype, np.floating):
        bare = bare.astype(np.float32)
    later = da[time_dim].values[1:]
    first = bare.isel({time_dim: slice(None, -1)}).assign_coords({time_dim: later})
    second = bare.isel({time_dim: slice(1, None)})
    if first.chunks is not None:  # one Dask task per pair
        first, second = first.chunk({time_dim: 1}), second.chunk({time_dim: 1})
    return first, second


def flow(
    da: xr.DataArray,
    *,
    method: Literal["ncc", "farneback"] = "ncc",
    spacing: float | None = None,
    chip: int | None = None,
    max_chip: int | None = None,
    search: int | None = None,
    subpixel: Literal["parabolic", "gaussian", "oversample"] = "gaussian",
    min_correlation: float = 0.2,
    min_peak_ratio: float = 1.2,
    outlier_filter: bool = True,
    prefilter: Literal["none", "highpass", "wallis"] | None = None,
    prefilter_sigma: float = 5.0,
    stable: xr.DataArray | None = None,
    outlines: Any = None,
    buffer: float = 100.0,
    outlines_crs: Any = None,
    stable_shift: bool = True,
    pyr_scale: float | None = None,
    levels: int | None = None,
    winsize: int | None = None,
    iterations: int | None = None,
    poly_n: int | None = None,
    poly_sigma: float | None = None,
    flags: int | None = None,
    time_dim: str = "time",
    y_dim: str = "y",
    x_dim: str = "x",
) -> xr.Dataset:
    """Surface velocity between consecutive scenes, lazily, one Dask task per pair.

    ``method="ncc"`` (the default) tracks features as autoRIFT / ITS_LIVE do: normalised
    cross-correlation (:func:`cv2.matchTemplate`, ``TM_CCOEFF_NORMED``) of Wallis-filtered chips
    on a regular posting grid, coarse to fine (a sparse pass over the whole search radius, then
    a dense pass searching +-4 px around it, so displacements of tens of pixels are found with
    few large searches), PatchMatch-like propagation of better-correlating
    neighbours' displacements, chips 2 and 4 times larger where a match is weak, a sub-pixel
    peak, the normalised median test against the 3 x 3 neighbours, and interpolation of the
    rejected points from their neighbours (flagged).  See :mod:`glacierxr.tracking`.
    ``method="farneback"`` is OpenCV's dense optical flow on every pixel (Farnebäck, 2003), as
    the method paper uses; it is smooth and fine for motions of a few pixels, but it
    under-estimates fast ice.

    Why NCC is the default, measured (``python benchmarks/velocity.py``): on the real Yahtse
    Glacier pair (Landsat-8 pan, 15 m, 16 days; ``tests/test_flow.py``), on the terminus tongue
    (rows 680-960, columns 880-1060, ~12 px per pair) the default gives 0.98 times the median
    speed of an independent plain matchTemplate reference (48 px chips, +-24 px search) and a
    direction 1 degree from it; Farnebäck with its defaults gives 0.10 times the speed,
    pointing 168 degrees away.  On the sample's fast glacier (12 px per pair) the median
    end-point error is 0.17 px (Farnebäck: 14 px); on its slow valley glacier (1.4 px per pair)
    0.15 px, where Farnebäck, smooth and dense, does better (0.09 px).  The sub-pixel peak was
    measured on textures shifted by known fractional amounts (20 random shifts within +-3 px,
    5 % noise): median end-point error 0.022 px for a parabola through the peak, 0.021 px for
    a Gaussian (parabola of the log) and 0.080 px for a 16x Lanczos oversampling of the 5 x 5
    correlation (it rings), so ``"gaussian"`` is the default.  Prefilters on the Yahtse tongue:
    none 1.11 times the reference speed, high-pass 1.00, Wallis 0.98, and within 0.01 px of
    each other on the sample; Wallis is kept because it also evens out the contrast of a hazy
    and a clear scene.  One pair costs 0.5-0.8 times a bare matchTemplate loop over the same
    chips and search radius.

    Stable surface (ITS_LIVE's ``stable_shift`` and ``stable_shift_flag``): with ``stable`` or
    ``outlines`` the points whose chip is at least 90 % stable ground are used (flag 1);
    otherwise the slowest 25 % of the matched points by 3 x 3 median speed (flag 2).  Their
    median displacement is removed (unless ``stable_shift=False``: flag 0, nothing removed) and
    the NMAD of their residuals along each axis calibrates the errors: ``vx_error`` is that
    NMAD times the point's weight ``sqrt(1 - c^2) / c`` (``c`` its peak correlation) over the
    median weight on stable ground; interpolated points get twice the NMAD; Farnebäck points
    all get the NMAD.  ``v_error = sqrt((vx vx_error)^2 + (vy vy_error)^2) / v`` as in ITS_LIVE.
    The fallback assumes that at least a quarter of the scene does not move: on a scene that is
    all ice, give ``stable`` or ``outlines``, or ``stable_shift=False``.

    Parameters
    ----------
    da
        ``(time, y, x)`` images (reflectance, pan DN, NDSI ...), at least two time steps, on a
        regular **projected** grid (x, y pixel centres in metres).  With Dask, ``y`` and ``x``
        must each be one chunk.
    method
        ``"ncc"`` (feature tracking) or ``"farneback"`` (dense optical flow).
    spacing
        NCC posting in metres (default 120 m like ITS_LIVE, i.e. every 8 px at 15 m and every
        4 px at 30 m); the output's ``x``/``y`` are the chip centres.
    chip
        Smallest NCC chip side in pixels (made odd; default about 465 m: 31 px at 15 m, 15 px
        at 30 m); ``max_chip`` the largest it grows to (default ``4 * chip + 3``).
    search
        NCC search radius in pixels (default enough for 8 km/yr over the longest pair, at
        least 48 px), searched by the sparse pass on non-overlapping chips.
    subpixel
        Sub-pixel peak: ``"gaussian"`` (default), ``"parabolic"`` or ``"oversample"``.
    min_correlation, min_peak_ratio
        A match weaker than this is retried with a larger chip, else rejected.
    outlier_filter
        Apply the normalised median test (Westerweel & Scarano, 2005).
    prefilter, prefilter_sigma
        ``"wallis"`` (NCC default), ``"highpass"`` or ``"none"`` (Farnebäck default); the
        Gaussian scale in pixels.
    stable
        Optional boolean ``(y, x)`` DataArray on the grid of ``da``, True on stable ground.
    outlines, buffer, outlines_crs
        Optional glacier outlines (GeoJSON path or dict, shapely geometries, GeoDataFrame; see
        :func:`glacierxr.stable.rasterize_outlines`): the ice, buffered by ``buffer`` metres,
        is not stable ground.  ``outlines_crs`` when they declare no CRS (default WGS 84).
    stable_shift
        Remove the stable-surface shift (default True).
    pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags
        Farnebäck only (:func:`cv2.calcOpticalFlowFarneback`; defaults: 0.5, 6, 15, 10, 5,
        1.1, 0).  Passing them with ``method="ncc"`` is an error.
    time_dim, y_dim, x_dim
        Names of the dimensions.

    Returns
    -------
    xarray.Dataset
        ``time`` = the later scene of each pair, with coordinates ``time_start``, ``time_end``,
        ``mid_date``, ``date_dt`` (days) and, when ``da`` has ``platform``, ``satellite_img1``
        / ``satellite_img2``; ``y``, ``x`` the posting grid (NCC) or the pixels (Farnebäck);
        ``spatial_ref`` kept, ``grid_mapping`` on every map, ``Conventions = "CF-1.8"``.

        - ``vx``, ``vy`` (m/year; CF ``land_ice_surface_x_velocity`` / ``_y_velocity``; east /
          north positive, from the sign of the coordinate spacing), ``v`` (speed);
        - ``vx_error``, ``vy_error``, ``v_error`` (m/year);
        - ``dx``, ``dy``: displacement in pixels per pair (+ right, + down the rows), the
          stable shift removed;
        - NCC only: ``correlation`` (peak NCC), ``peak_ratio``, ``chip_size`` (px),
          ``interpolated`` (bool);
        - per pair: ``stable_shift_x``/``_y`` (m/year) and ``stable_shift_dx``/``_dy`` (px)
          removed, ``stable_shift_flag`` (0, 1, 2), ``stable_count``, ``stable_nmad_x``/``_y``
          and ``stable_rmse_x``/``_y`` (m/year; the stable-ground residual statistics — they
          are variables, not attributes, because they are only known once computed), and
          ``valid_fraction`` (0 for a pair without overlapping data, which warns
          :class:`EmptyPairWarning` and is NaN).

        Attributes record the method and its parameters (``flow_*``).

    Raises
    ------
    DimensionError
        A dimension is missing, fewer than two time steps, time not increasing, or the chip is
        larger than the scene.
    ChunkingError
        ``y`` or ``x`` is split across Dask chunks (fix: ``.chunk({"y": -1, "x": -1})``).
    GridError
        The grid is irregular or geographic (lon/lat degrees), or ``stable`` is on another grid.
    DataTypeError, ConfigError
        A non-numeric input, a non-boolean mask, an unknown option, or Farnebäck parameters
        with ``method="ncc"``.

    Examples
    --------
    >>> import numpy as np, scipy.ndimage as ndi
    >>> from glacierxr.testing import make_series
    >>> rng = np.random.default_rng(0)
    >>> texture = ndi.gaussian_filter(rng.standard_normal((96, 96)), 2)
    >>> moved = ndi.shift(texture, (0.0, 2.5), mode="nearest")   # 2.5 px to the right (east)
    >>> motion = flow(make_series(np.stack([texture, moved]), freq="16D"), stable_shift=False)
    >>> dict(motion.sizes)   # 30 m pixels, 120 m posting
    {'time': 1, 'y': 24, 'x': 24}
    >>> round(float(motion.dx.median()), 1), int(round(float(motion.vx.median()), -1))  # px, m/yr
    (2.5, 1710)

    References
    ----------
    Farnebäck, G. (2003). Two-frame motion estimation based on polynomial expansion. SCIA 2003.
    Gardner, A. S. et al. (2018). Increased West Antarctic and unchanged East Antarctic ice
    discharge over the last 7 years. The Cryosphere 12, 521-547 (autoRIFT, ITS_LIVE).
    Westerweel, J. & Scarano, F. (2005). Universal outlier detection for PIV data. Exp. Fluids 39.
    """
    require_choice(method, METHODS, name="method")
    pixel_x, pixel_y = _check_cube(da, time_dim, y_dim, x_dim)
    kind = require_choice(prefilter or ("wallis" if method == "ncc" else "none"), PREFILTERS, name="prefilter")
    require_positive(prefilter_sigma, name="prefilter_sigma")
    require_choice(subpixel, SUBPIXEL, name="subpixel")
    options = _farneback_options(method, dict(
        pyr_scale=pyr_scale, levels=levels, winsize=winsize, iterations=iterations, poly_n=poly_n,
        poly_sigma=poly_sigma, flags=flags))  # fmt: skip
    mask, _ = resolve_stable(da, stable=stable, outlines=outlines, buffer=buffer, crs=outlines_crs,
                             what="flow", y_dim=y_dim, x_dim=x_dim)
    times = pd.DatetimeIndex(da[time_dim].values)
    days = np.asarray((times[1:] - times[:-1]) / pd.Timedelta(days=1), dtype=np.float64)
    first, second = _pairs(da, time_dim, y_dim, x_dim)
    inputs = [first, second] + ([mask] if mask is not None else [])
    if method == "ncc":
        step, params = _ncc_params(
            da, abs(pixel_x), days, y_dim, x_dim, spacing=spacing, chip=chip, max_chip=max_chip,
            search=search, subpixel=subpixel, min_correlation=float(min_correlation),
            min_peak_ratio=float(min_peak_ratio), prefilter=kind,
            prefilter_sigma=float(prefilter_sigma), outlier_filter=bool(outlier_filter),
        )
        rows, cols = posting(da.sizes[y_dim], step), posting(da.sizes[x_dim], step)
        kwargs = dict(rows=rows, cols=cols, params=params, correct=bool(stable_shift))
        kernel, recorded = _ncc_block, _ncc_attrs(params, step * abs(pixel_x))
    else:
        rows, cols = np.arange(da.sizes[y_dim]), np.arange(da.sizes[x_dim])
        kwargs = dict(options=options, kind=kind, sigma=float(prefilter_sigma), correct=bool(stable_shift))
        kernel = _farneback_block
        recorded = {f"flow_{k}": v for k, v in {**options, "prefilter": kind,
                                                   "prefilter_sigma": float(prefilter_sigma)}.items()}
    fields, statistics = xr.apply_ufunc(
        kernel, *inputs,
        input_core_dims=[[y_dim, x_dim]] * len(inputs),
        output_core_dims=[["_field", "_row", "_col"], ["_statistic"]],
        dask="parallelized",
        output_dtypes=[np.float32, np.float64],
        dask_gufunc_kwargs={"output_sizes": {"_field": len(FIELDS), "_row": rows.size,
                                             "_col": cols.size, "_statistic": len(PAIR_STATISTICS)}},
        kwargs=kwargs,
    )  # fmt: skip
    grid = {y_dim: da[y_dim].values[rows], x_dim: da[x_dim].values[cols]}
    out = _describe(fields, statistics, grid, days, (pixel_x, pixel_y), method, time_dim, y_dim, x_dim)
    out = _with_pair_coords(out, da, times, days, time_dim)
    out.attrs = {"source_variable": str(da.name) if da.name is not None else "", **recorded,
                 "flow_method": method, "flow_stable_shift": int(bool(stable_shift)),
                 "pixel_size_x": pixel_x, "pixel_size_y": pixel_y}  # fmt: skip
    return _cf.finalize(out, f"flow(method={method!r})", x_dim=x_dim, y_dim=y_dim, time_dim=time_dim)


def _ncc_attrs(params: TrackingParams, spacing: float) -> dict[str, Any]:
    """The NCC parameters recorded in the output's attributes."""
    return {
        "flow_spacing_m": float(spacing),
        "flow_chip_size_px": params.chip,
        "flow_max_chip_size_px": params.max_chip,
        "flow_search_px": params.search,
        "flow_subpixel": params.subpixel,
        "flow_min_correlation": params.min_correlation,
        "flow_min_peak_ratio": params.min_peak_ratio,
        "flow_outlier_filter": int(params.outlier_filter),
        "flow_prefilter": params.prefilter,
        "flow_prefilter_sigma": params.prefilter_sigma,
    }


# ------------------------------------------------------------------------------------------
# describe
# ------------------------------------------------------------------------------------------
def _describe(fields, statistics, grid, days, pixel, method, time_dim, y_dim, x_dim) -> xr.Dataset:
    """Velocities in m/yr, errors and quality from the kernel's fields, with CF attributes."""
    f = {name: fields.isel(_field=i, drop=True).rename({"_row": y_dim, "_col": x_dim})
         .assign_coords(grid) for i, name in enumerate(FIELDS)}  # fmt: skip
    s = {name: statistics.isel(_statistic=i, drop=True) for i, name in enumerate(PAIR_STATISTICS)}
    per_year = xr.DataArray(DAYS_PER_YEAR / days, dims=time_dim, coords={time_dim: fields[time_dim]})
    to_x, to_y = pixel[0] * per_year, pixel[1] * per_year  # + down the rows is south when y falls
    vx, vy = (f["dx"] * to_x).astype(np.float32), (f["dy"] * to_y).astype(np.float32)
    v = np.hypot(vx, vy)
    vx_error = (f["dx_error"] * abs(to_x)).astype(np.float32)
    vy_error = (f["dy_error"] * abs(to_y)).astype(np.float32)
    v_error = xr.where(v > 0, np.hypot(vx * vx_error, vy * vy_error) / v, np.hypot(vx_error, vy_error) / np.sqrt(2))
    values = {
        "vx": vx, "vy": vy, "v": v, "vx_error": vx_error, "vy_error": vy_error,
        "v_error": v_error.astype(np.float32), "dx": f["dx"], "dy": f["dy"],
        "correlation": f["correlation"], "peak_ratio": f["peak_ratio"], "chip_size": f["chip_size"],
        "interpolated": f["interpolated"] > 0,
        "stable_shift_x": s["stable_shift_dx"] * to_x, "stable_shift_y": s["stable_shift_dy"] * to_y,
        "stable_shift_dx": s["stable_shift_dx"], "stable_shift_dy": s["stable_shift_dy"],
        "stable_shift_flag": s["stable_shift_flag"].astype(np.int8),
        "stable_count": s["stable_count"].astype(np.int64),
        "stable_nmad_x": s["stable_nmad_dx"] * abs(to_x), "stable_nmad_y": s["stable_nmad_dy"] * abs(to_y),
        "stable_rmse_x": s["stable_rmse_dx"] * abs(to_x), "stable_rmse_y": s["stable_rmse_dy"] * abs(to_y),
        "valid_fraction": s["valid_fraction"],
    }  # fmt: skip
    if method != "ncc":
        for name in ("correlation", "peak_ratio", "chip_size", "interpolated"):
            values.pop(name)
    out = xr.Dataset()
    for name, value in values.items():
        spec = VARIABLES[name]
        extra = {k: v for k, v in spec.items() if k not in ("entry", "long_name")}
        described = _cf.describe(value.rename(name).drop_attrs(deep=False), spec["entry"], **extra)
        if "long_name" in spec:
            described.attrs["long_name"] = spec["long_name"]
        out[name] = described
    return out


def _with_pair_coords(out: xr.Dataset, da: xr.DataArray, times, days, time_dim: str) -> xr.Dataset:
    """Per-pair dates (ITS_LIVE's acquisition dates, mid date and date_dt), satellites and CRS."""
    start, end = times[:-1], times[1:]
    coords = {
        "time_start": (time_dim, start.values), "time_end": (time_dim, end.values),
        "mid_date": (time_dim, (start + (end - start) / 2).values), "date_dt": (time_dim, days),
    }  # fmt: skip
    out = out.assign_coords({name: xr.Variable(*spec, attrs=PAIR_COORDS[name]) for name, spec in coords.items()})
    if "platform" in da.coords and da["platform"].dims == (time_dim,):
        platform = da["platform"].values
        out = out.assign_coords(satellite_img1=(time_dim, platform[:-1]), satellite_img2=(time_dim, platform[1:]))
    if "spatial_ref" in da.coords:
        crs = da["spatial_ref"].copy()
        crs.attrs = {k: v for k, v in crs.attrs.items() if k != "GeoTransform"}  # the grid is new
        out = out.assign_coords(spatial_ref=crs)
    return out
