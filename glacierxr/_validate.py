"""Argument and cube validation shared by every stage: metadata only, never pixel data.

One home for each rule, so that every stage refuses the same bad input with the same error
class and the same advice:

========================  ========================  ==============================================
function                  raises                    checks
========================  ========================  ==============================================
require_dataarray         DataTypeError             the input is an ``xarray.DataArray``
require_dims              DimensionError            the array has the named dimensions
require_numeric           DataTypeError             real numeric or boolean dtype
require_choice            ConfigError               an option is one of a fixed set
require_positive          ConfigError               a positive (or non-negative) number / integer
require_monotonic_time    DataTypeError, Dimension  datetime64 time, strictly increasing
require_series            DataTypeError, Dimension  a DataArray with exactly (time, y, x), in order
check_on_grid             DataTypeError, Dimension  a (y, x) mask/reference on the cube's grid
                          Error, GridError
check_bbox                GridError                 (west, south, east, north) in degrees
check_single_chunk        ChunkingError             core dimensions in one Dask chunk
require_cv2               ImportError               OpenCV importable
require_torch             GlacierXRError            PyTorch importable (the ``ml`` extra)
========================  ========================  ==============================================

Every error is a :class:`glacierxr.errors.GlacierXRError` subclass (``require_cv2`` excepted: a
missing dependency is an ``ImportError``) whose message says what was wrong, what was found and
how to fix it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from glacierxr.errors import ChunkingError, ConfigError, DataTypeError, DimensionError, GlacierXRError, GridError

__all__ = [
    "require_dataarray",
    "require_dims",
    "is_numeric",
    "require_numeric",
    "require_choice",
    "require_positive",
    "require_monotonic_time",
    "require_series",
    "check_on_grid",
    "check_bbox",
    "check_single_chunk",
    "require_cv2",
    "require_torch",
]


def require_dataarray(obj: Any, what: str) -> xr.DataArray:
    """Return ``obj`` when it is a DataArray, else raise :class:`DataTypeError`.

    Examples
    --------
    >>> require_dataarray([1, 2], "ndsi")
    Traceback (most recent call last):
    ...
    glacierxr.errors.DataTypeError: ndsi expects an xarray.DataArray, got list. Select a variable first, e.g. ds["ndsi"].
    """
    if not isinstance(obj, xr.DataArray):
        raise DataTypeError(
            f"{what} expects an xarray.DataArray, got {type(obj).__name__}. Select a variable "
            'first, e.g. ds["ndsi"].'
        )
    return obj


def require_dims(da: xr.DataArray, dims: Iterable[Hashable], *, what: str) -> None:
    """Raise :class:`DimensionError` when ``da`` lacks any of ``dims``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> require_dims(xr.DataArray(np.zeros((2, 3)), dims=("y", "x")), ("time", "y", "x"), what="align")
    Traceback (most recent call last):
    ...
    glacierxr.errors.DimensionError: align needs dimensions ['time', 'y', 'x'] but lacks dimension(s) ['time']; it has ['y', 'x']. Pass the right names with time_dim=/y_dim=/x_dim=, or rename the dimensions.
    """
    dims = list(dims)
    absent = [d for d in dims if d not in da.dims]
    if absent:
        raise DimensionError(
            f"{what} needs dimensions {dims} but lacks dimension(s) {absent}; it has "
            f"{list(da.dims)}. Pass the right names with time_dim=/y_dim=/x_dim=, or rename the "
            "dimensions."
        )


def is_numeric(dtype: Any) -> bool:
    """True for real numbers and booleans (complex, strings, objects and dates are not)."""
    dtype = np.dtype(dtype)
    return dtype == bool or (np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating))


def require_numeric(da: xr.DataArray, *, what: str) -> None:
    """Raise :class:`DataTypeError` unless ``da`` holds real numbers or booleans.

    Examples
    --------
    >>> import xarray as xr
    >>> require_numeric(xr.DataArray(["a", "b"], name="names"), what="flow")
    Traceback (most recent call last):
    ...
    glacierxr.errors.DataTypeError: flow needs numeric data (real numbers or booleans), but 'names' has dtype <U1. Convert it, e.g. .astype('float32').
    """
    if not is_numeric(da.dtype):
        raise DataTypeError(
            f"{what} needs numeric data (real numbers or booleans), but {da.name!r} has dtype "
            f"{da.dtype}. Convert it, e.g. .astype('float32')."
        )


def require_choice(value: Any, choices: Iterable[Any], *, name: str) -> Any:
    """Return ``value`` when it is one of ``choices``, else raise :class:`ConfigError`.

    Examples
    --------
    >>> require_choice("cubic", ("linear", "cubic"), name="interpolation")
    'cubic'
    >>> require_choice("nearest", ("linear", "cubic"), name="interpolation")
    Traceback (most recent call last):
    ...
    glacierxr.errors.ConfigError: interpolation must be one of ['linear', 'cubic'], got 'nearest'.
    """
    choices = list(choices)
    try:
        ok = value in choices
    except TypeError:  # unhashable value against a mapping
        ok = False
    if not ok:
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}.")
    return value


def require_positive(
    value: Any,
    *,
    name: str,
    integer: bool = False,
    allow_zero: bool = False,
    allow_none: bool = False,
    example: Any = None,
) -> Any:
    """Return ``value`` when it is a finite number > 0 (>= 0 with ``allow_zero``), else raise.

    Parameters
    ----------
    value
        The option's value. Booleans are refused (``True`` is not a count).
    name
        The option's name, as the user passes it.
    integer
        Require an integer (a Python or NumPy integer; ``2.0`` is refused).
    allow_zero
        Accept 0.
    allow_none
        Accept ``None`` (returned unchanged).
    example
        A value to suggest in the message.

    Raises
    ------
    ConfigError
        Always this class, whatever the stage.

    Examples
    --------
    >>> require_positive(3, name="steps", integer=True)
    3
    >>> require_positive(0, name="steps", integer=True, example=4)
    Traceback (most recent call last):
    ...
    glacierxr.errors.ConfigError: steps must be a positive integer (e.g. 4), got 0.
    """
    if value is None and allow_none:
        return None
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, (bool, np.bool_))
    ok = ok and math.isfinite(float(value)) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        what = ("non-negative" if allow_zero else "positive") + (" integer" if integer else " number")
        hint = f" (e.g. {example!r})" if example is not None else ""
        raise ConfigError(f"{name} must be a {what}{hint}, got {value!r}.")
    return value


def require_monotonic_time(da: xr.DataArray, time_dim: Hashable, *, what: str) -> None:
    """Raise unless ``da[time_dim]`` is datetime64 and strictly increasing.

    Raises
    ------
    DataTypeError
        No ``time_dim`` coordinate, or not datetime64.
    DimensionError
        A step that is zero (duplicate date) or negative (unsorted).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> times = np.array(["2020-02-01", "2020-01-01"], dtype="datetime64[ns]")
    >>> require_monotonic_time(xr.DataArray([1, 2], dims="time", coords={"time": times}), "time", what="flow")
    Traceback (most recent call last):
    ...
    glacierxr.errors.DimensionError: flow needs strictly increasing 'time', but found a step of -31.0 days. Sort with .sortby('time') and drop duplicate dates first.
    """
    if time_dim not in da.coords or not np.issubdtype(da[time_dim].dtype, np.datetime64):
        found = da[time_dim].dtype if time_dim in da.coords else "no coordinate"
        raise DataTypeError(
            f"{what} needs a datetime64 coordinate {time_dim!r}; found {found}. Convert it with "
            f"da.assign_coords({time_dim}=pd.to_datetime(da.{time_dim}.values)) (cftime calendars "
            "are not supported)."
        )
    steps = np.diff(da[time_dim].values) / np.timedelta64(1, "D")
    if steps.size and np.nanmin(steps) <= 0:
        raise DimensionError(
            f"{what} needs strictly increasing {time_dim!r}, but found a step of "
            f"{float(np.nanmin(steps))} days. Sort with .sortby({time_dim!r}) and drop duplicate "
            "dates first."
        )


def require_series(da: Any, dims: Sequence[Hashable], *, what: str, numeric: bool = True) -> xr.DataArray:
    """A DataArray with exactly ``dims`` (time first), numeric, its time strictly increasing.

    The input check of the forecasting stages (patches, predict, full-scene predict): extra
    dimensions are refused (select or reduce them first); a datetime64 time axis is checked by
    :func:`require_monotonic_time`, any other one must strictly increase too.

    Examples
    --------
    >>> import numpy as np
    >>> from glacierxr.testing import make_series
    >>> series = make_series(np.zeros((3, 4, 4)))
    >>> require_series(series.expand_dims(band=2), ("time", "y", "x"), what="predict")
    Traceback (most recent call last):
    ...
    glacierxr.errors.DimensionError: predict needs dims ('time', 'y', 'x'); found ('band', 'time', 'y', 'x'). Select or reduce the extra dims ['band'] (e.g. .isel(band=0)).
    """
    require_dataarray(da, what)
    require_dims(da, dims, what=what)
    extra = [d for d in da.dims if d not in dims]
    if extra:
        raise DimensionError(
            f"{what} needs dims {tuple(dims)}; found {da.dims}. Select or reduce the extra dims "
            f"{extra} (e.g. .isel({extra[0]}=0))."
        )
    if numeric:
        require_numeric(da, what=what)
    time_dim = dims[0]
    index = da.indexes.get(time_dim)
    if index is not None and len(index) > 1 and np.issubdtype(index.dtype, np.datetime64):
        require_monotonic_time(da, time_dim, what=what)  # also refuses duplicates
    elif index is not None and len(index) > 1 and not (index.is_monotonic_increasing and index.is_unique):
        raise DimensionError(
            f"{what} needs strictly increasing {time_dim!r} (no duplicates); sort first with "
            f".sortby({time_dim!r}) and drop repeated steps."
        )
    return da


def check_on_grid(
    other: Any,
    da: xr.DataArray,
    *,
    name: str,
    what: str,
    y_dim: Hashable = "y",
    x_dim: Hashable = "x",
    boolean: bool = False,
    why: str = "it is used whole, scene by scene",
    rtol: float = 1e-9,
) -> xr.DataArray:
    """Validate a ``(y, x)`` array that must sit on ``da``'s grid; return it ready to use.

    Used for stable-ground masks (align, flow) and a given reference scene (align). Only
    metadata is read.

    Parameters
    ----------
    other
        The ``(y, x)`` DataArray to check.
    da
        The cube whose grid ``other`` must match (same sizes and, where both have them, the
        same ``y``/``x`` coordinates).
    name
        The parameter's name (``"stable"``, ``"reference"``).
    what
        The stage, for messages (``"align"``).
    y_dim, x_dim
        The spatial dimensions.
    boolean
        Require a boolean dtype (True on stable ground).
    why
        Why ``other`` must be in one Dask chunk along ``y``/``x``.
    rtol
        Relative tolerance when comparing coordinates.

    Returns
    -------
    xarray.DataArray
        ``other`` transposed to ``(y_dim, x_dim)`` without non-grid coordinates.

    Raises
    ------
    DataTypeError
        Not a DataArray, or not boolean when ``boolean``.
    DimensionError
        Other dimensions than ``(y_dim, x_dim)``.
    GridError
        Other sizes or coordinates than ``da``.
    ChunkingError
        Split across Dask chunks along ``y_dim``/``x_dim``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from glacierxr.testing import make_series
    >>> da = make_series(np.zeros((2, 4, 4)))
    >>> check_on_grid(da.isel(time=0) > 0, da, name="stable", what="flow", boolean=True).dims
    ('y', 'x')
    >>> check_on_grid(da.isel(time=0, x=slice(0, 3)) > 0, da, name="stable", what="flow")
    Traceback (most recent call last):
    ...
    glacierxr.errors.GridError: flow: stable is not on the grid of the scenes along 'x' (3 vs 4 values, or other coordinates). Build it on the same grid, e.g. with `.rio.reproject_match(da)`, or select one scene with da.isel(time=0).
    """
    if not isinstance(other, xr.DataArray):
        raise DataTypeError(
            f"{what}: {name} must be a ({y_dim!r}, {x_dim!r}) DataArray, got {type(other).__name__}. "
            f"Wrap it with xr.DataArray(values, dims=({y_dim!r}, {x_dim!r}), coords=...)."
        )
    if set(other.dims) != {y_dim, x_dim}:
        raise DimensionError(
            f"{what}: {name} must have dims ({y_dim!r}, {x_dim!r}), found {other.dims}. Select "
            "one scene, e.g. da.isel(time=0)."
        )
    if boolean and other.dtype != bool:
        raise DataTypeError(
            f"{what}: {name} must be boolean (True on stable ground), found dtype {other.dtype}. "
            "Build it with a comparison, e.g. `~glacier_outline` or `(landcover == ROCK)`."
        )
    for dim in (y_dim, x_dim):
        if other.sizes[dim] != da.sizes[dim] or (
            dim in other.coords
            and dim in da.coords
            and not np.allclose(other[dim].values, da[dim].values, rtol=rtol, atol=0)
        ):
            raise GridError(
                f"{what}: {name} is not on the grid of the scenes along {dim!r} "
                f"({other.sizes[dim]} vs {da.sizes[dim]} values, or other coordinates). Build it "
                "on the same grid, e.g. with `.rio.reproject_match(da)`, or select one scene with "
                "da.isel(time=0)."
            )
    check_single_chunk(other, (y_dim, x_dim), f"{what} ({name})", why=why)
    other = other.transpose(y_dim, x_dim)
    return other.drop_vars([c for c in other.coords if c not in (y_dim, x_dim)])


def check_bbox(bbox: Any, *, allow_antimeridian: bool = True) -> tuple[float, float, float, float]:
    """``bbox`` as four floats (west, south, east, north) in degrees, or :class:`GridError`.

    ``search`` and ``load`` both call this, so they accept and refuse the same boxes. A box
    with ``west > east`` crosses the antimeridian (180°); it is accepted when
    ``allow_antimeridian`` and at most 180° wide (a wider one has west and east swapped).

    Examples
    --------
    >>> check_bbox((179, -1, -179, 1))
    (179.0, -1.0, -179.0, 1.0)
    >>> check_bbox((179, -1, -179, 1), allow_antimeridian=False)
    Traceback (most recent call last):
    ...
    glacierxr.errors.GridError: bbox=(179.0, -1.0, -179.0, 1.0) has west (179.0) > east (-179.0): it crosses the antimeridian, which this step does not take. Split it at 180° and pass each side separately.
    """
    values = _four_numbers(bbox)
    west, south, east, north = values
    if any(abs(v) > 180 for v in (west, east)) or any(abs(v) > 90 for v in (south, north)):
        hint = (
            " These look like projected coordinates (metres); pass longitude/latitude degrees."
            if any(abs(v) > 360 for v in values)
            else " Is the order (south, west, north, east)? glacierxr uses (west, south, east, north)."
        )
        raise GridError(
            f"bbox={values} is out of range: longitudes (west, east) must lie in [-180, 180] "
            f"and latitudes (south, north) in [-90, 90].{hint}"
        )
    if south > north:
        raise GridError(
            f"bbox={values} has south ({south}) > north ({north}). Pass (west, south, east, north) "
            f"in lon/lat degrees, e.g. ({west}, {north}, {east}, {south})."
        )
    if west > east:
        _check_crossing(values, allow_antimeridian)
    return values


def _four_numbers(bbox: Any) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        raise GridError(
            f"bbox must be four numbers (west, south, east, north) in degrees; got {bbox!r}."
        ) from None
    if len(values) != 4:
        raise GridError(
            f"bbox must have four numbers (west, south, east, north); got {len(values)}: "
            f"{bbox!r}. Pass a 2-D box in lon/lat degrees."
        )
    if not all(math.isfinite(v) for v in values):
        raise GridError(f"bbox has a non-finite value: {values}. Pass finite degrees.")
    return values  # type: ignore[return-value]


def _check_crossing(box: Sequence[float], allow: bool) -> None:
    west, south, east, north = box
    if not allow:
        raise GridError(
            f"bbox={tuple(box)} has west ({west}) > east ({east}): it crosses the antimeridian, "
            "which this step does not take. Split it at 180° and pass each side separately."
        )
    width = (180.0 - west) + (east + 180.0)
    if width > 180.0:
        raise GridError(
            f"bbox={tuple(box)} has west ({west}) > east ({east}). Read as a box crossing the "
            f"antimeridian it would be {width:.1f}° wide, so west and east are probably swapped: "
            f"pass ({east}, {south}, {west}, {north}). Boxes that really cross 180° may be at "
            "most 180° wide."
        )


def check_single_chunk(da: xr.DataArray, dims: tuple[Hashable, ...], what: str, *, why: str) -> None:
    """Raise :class:`ChunkingError` when any of ``dims`` is split across Dask chunks.

    Examples
    --------
    >>> from glacierxr.testing import make_series
    >>> import numpy as np
    >>> da = make_series(np.zeros((2, 4, 4)), chunks={"y": 2})
    >>> check_single_chunk(da, ("y", "x"), "flow", why="it sees whole scenes")
    Traceback (most recent call last):
    ...
    glacierxr.errors.ChunkingError: flow needs each of ['y', 'x'] in one Dask chunk (it sees whole scenes), but found 'y' in 2 chunks. Rechunk first: `.chunk({"y": -1, "x": -1})`.
    """
    if da.chunks is None:
        return
    split = {dim: len(chunks) for dim, chunks in zip(da.dims, da.chunks) if dim in dims and len(chunks) > 1}
    if split:
        found = ", ".join(f"{dim!r} in {n} chunks" for dim, n in split.items())
        fix = ", ".join(f'"{dim}": -1' for dim in dims)
        raise ChunkingError(
            f"{what} needs each of {list(dims)} in one Dask chunk ({why}), but found {found}. "
            f"Rechunk first: `.chunk({{{fix}}})`."
        )


def require_cv2(stage: str):
    """Import OpenCV, or say which package provides it."""
    try:
        import cv2
    except ImportError as error:  # pragma: no cover - opencv is a core dependency
        raise ImportError(
            f"glacierxr.{stage} needs OpenCV; install it with `pip install opencv-python-headless`."
        ) from error
    return cv2


def require_torch(what: str):
    """Import PyTorch, or raise :class:`GlacierXRError` naming the extra that provides it."""
    try:
        import torch
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise GlacierXRError(
            f"{what} needs PyTorch, which is not installed. Install the extra: "
            "pip install 'glacierxr[ml]'"
        ) from error
    return torch
