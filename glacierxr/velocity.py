"""Velocity cubes: image pairs chosen like ITS_LIVE, one Dask task per pair, robust composites.

:func:`glacierxr.flow.flow` measures surface velocity between *consecutive* scenes.  Glaciologists
usually want more: every pair of scenes whose time separation lies in a range of days and whose
two scenes are clear enough over the ice, as ITS_LIVE builds its image-pair products, stacked along
the pair's centre date, and then robust composites of that stack over periods.

======================  ==============================================================
function                what it does
======================  ==============================================================
:func:`select_pairs`    the table of usable pairs (days apart, clear fraction, months)
:func:`velocity_cube`   flow of every pair, lazily, one Dask task per pair, along
                        ``mid_date``
:func:`composite`       per-period median of ``vx`` and ``vy`` (never of the speed),
                        speed from those medians, count and spread per pixel
======================  ==============================================================

The metadata of the outputs is in two tables: :data:`PAIR_FIELDS` (per-pair coordinates of the
cube, also the columns of the pair table) and :data:`COMPOSITE_FIELDS` (variables of a
composite).  ``time_start`` / ``time_end`` are ITS_LIVE's ``acquisition_date_img1`` /
``acquisition_date_img2``; every other per-scene field ends in ``_img1`` / ``_img2`` as there.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from collections.abc import Hashable, Sequence
from typing import Any

import dask
import dask.array
import numpy as np
import pandas as pd
import xarray as xr

from glacierxr import _cf
from glacierxr._validate import (
    check_on_grid,
    require_dataarray,
    require_dims,
    require_monotonic_time,
    require_positive,
)
from glacierxr.errors import ConfigError, DataTypeError, DimensionError, MissingBandError, NoPairsError
from glacierxr.flow import flow

__all__ = ["PAIR_FIELDS", "COMPOSITE_FIELDS", "select_pairs", "velocity_cube", "composite"]

#: Normal-consistent scale of the median absolute deviation (NMAD = 1.4826 * MAD).
NMAD_SCALE = 1.4826
#: Standard error of a median of n normal values: sqrt(pi / 2) * sigma / sqrt(n) (large n).
_MEDIAN_EFFICIENCY = float(np.sqrt(np.pi / 2.0))

#: Per-pair fields: columns of :func:`select_pairs`'s table and coordinates of the cube along
#: ``mid_date`` (``index_img1`` / ``index_img2`` are positions in the input, table only).
PAIR_FIELDS: dict[str, dict[str, str]] = {
    "index_img1": {"long_name": "position of the first scene along time in the input"},
    "index_img2": {"long_name": "position of the second scene along time in the input"},
    "time_start": {"long_name": "acquisition time of the first scene (ITS_LIVE acquisition_date_img1)"},
    "time_end": {"long_name": "acquisition time of the second scene (ITS_LIVE acquisition_date_img2)"},
    "mid_date": {"standard_name": "time", "axis": "T", "long_name": "centre date of the image pair"},
    "date_dt": {"units": "day", "long_name": "time separation of the two scenes"},
    "clear_img1": {"units": "1", "long_name": "fraction of valid pixels of the first scene (over the ice when given)"},
    "clear_img2": {"units": "1", "long_name": "fraction of valid pixels of the second scene (over the ice when given)"},
    "satellite_img1": {"long_name": "platform of the first scene"},
    "satellite_img2": {"long_name": "platform of the second scene"},
    "scene_id_img1": {"long_name": "STAC item id(s) of the first scene"},
    "scene_id_img2": {"long_name": "STAC item id(s) of the second scene"},
}

#: Variables of :func:`composite` (``vx``, ``vy``, ``v`` take their CF description from
#: :data:`glacierxr._cf.TABLE`; ``cell_methods`` says they are medians over ``mid_date``).
COMPOSITE_FIELDS: dict[str, dict[str, str]] = {
    "vx": {"long_name": "median of the pairs' velocity along x (east)"},
    "vy": {"long_name": "median of the pairs' velocity along y (north)"},
    "v": {"long_name": "speed of the median velocity, hypot(vx, vy)"},
    "vx_error": {"units": "m/year", "long_name": "standard error of the median vx, 1.2533 x vx_spread / sqrt(count)"},
    "vy_error": {"units": "m/year", "long_name": "standard error of the median vy, 1.2533 x vy_spread / sqrt(count)"},
    "v_error": {"units": "m/year", "long_name": "standard error of the speed v, from vx_error and vy_error"},
    "vx_spread": {"units": "m/year", "long_name": "NMAD (1.4826 x MAD) of the pairs' vx; NaN below 2 pairs"},
    "vy_spread": {"units": "m/year", "long_name": "NMAD (1.4826 x MAD) of the pairs' vy; NaN below 2 pairs"},
    "count": {"units": "1", "long_name": "number of pairs with a valid vx and vy at the pixel"},
    "period_start": {"long_name": "first day of the period"},
    "period_end": {"long_name": "first day after the period"},
    "pairs": {"units": "1", "long_name": "number of pairs whose centre date falls in the period"},
}

#: How the per-pair dates are written: float seconds, as NetCDF-3 has no 64-bit integers and a
#: centre date can fall on a half second.
_TIME_ENCODING = {"units": "seconds since 1970-01-01T00:00:00", "dtype": "float64"}

#: Pair-table columns that become coordinates of the cube.
_CUBE_COORDS = tuple(name for name in PAIR_FIELDS if not name.startswith("index_") and name != "mid_date")
#: Coordinates of flow's output that the cube replaces by its own per-pair ones.
_FLOW_PAIR_COORDS = (*PAIR_FIELDS, "step_days")


# --------------------------------------------------------------------------------------------
# pairs
# --------------------------------------------------------------------------------------------
def _valid(scenes: xr.DataArray | xr.Dataset) -> xr.DataArray:
    """True where the scene has data (every gridded float band finite)."""
    if isinstance(scenes, xr.DataArray):
        return scenes.notnull()
    floats = [v for v in scenes.data_vars.values() if v.dtype.kind == "f"]
    if not floats:
        raise MissingBandError(
            f"select_pairs needs a reflectance band; the Dataset has {list(scenes.data_vars)}. "
            "Pass the masked cube (e.g. cube.glacier.mask()) or one band of it."
        )
    valid = floats[0].notnull()
    for band in floats[1:]:
        valid = valid & band.notnull()
    return valid


def _known_clear(scenes, time_dim: Hashable) -> np.ndarray | None:
    """1 - ``missing_fraction`` when that coordinate is in memory (from qa.mask), else None."""
    if "missing_fraction" not in scenes.coords:
        return None
    coord = scenes["missing_fraction"]
    if coord.dims != (time_dim,) or dask.is_dask_collection(coord.data):
        return None
    return 1.0 - np.asarray(coord.values, dtype=float)


def _clear_fractions(scenes, ice, time_dim, y_dim, x_dim) -> np.ndarray:
    """Fraction of valid pixels per scene, over ``ice`` where given (one small compute)."""
    if ice is None:
        known = _known_clear(scenes, time_dim)
        if known is not None:
            return known
    valid = _valid(scenes)
    if ice is not None:
        total = int(np.asarray(ice.values).sum())
        if total == 0:
            raise ConfigError("select_pairs: the ice mask has no True pixel. Pass a mask that is True on the ice.")
        fraction = valid.where(ice).sum((y_dim, x_dim)) / total
    else:
        fraction = valid.mean((y_dim, x_dim))
    return np.asarray(fraction.compute().values, dtype=float)


def _per_scene(scenes, name: str, time_dim: Hashable) -> list[str] | None:
    """An in-memory per-scene string coordinate (``platform``, ``id``) as a list, else None."""
    if name not in scenes.coords or scenes[name].dims != (time_dim,):
        return None
    if dask.is_dask_collection(scenes[name].data):
        return None
    return [str(value) for value in scenes[name].values.tolist()]


def _scene_info(scenes, time_dim: Hashable, clear: np.ndarray | None = None) -> dict[str, Any]:
    """Per-scene facts the pair table is made of (nothing is computed)."""
    return {
        "times": pd.DatetimeIndex(scenes[time_dim].values),
        "clear": _known_clear(scenes, time_dim) if clear is None else clear,
        "satellite": _per_scene(scenes, "platform", time_dim),
        "scene_id": _per_scene(scenes, "id", time_dim),
    }


def _pair_row(i: int, j: int, info: dict[str, Any]) -> dict[str, Any]:
    """One row of the pair table."""
    times, clear = info["times"], info["clear"]
    row = {
        "index_img1": i, "index_img2": j, "time_start": times[i], "time_end": times[j],
        "mid_date": times[i] + (times[j] - times[i]) / 2,
        "date_dt": (times[j] - times[i]) / pd.Timedelta(days=1),
        "clear_img1": np.nan if clear is None else float(clear[i]),
        "clear_img2": np.nan if clear is None else float(clear[j]),
    }
    for key in ("satellite", "scene_id"):
        if info[key] is not None:
            row[f"{key}_img1"], row[f"{key}_img2"] = info[key][i], info[key][j]
    return row


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The rows as the pair table, sorted by centre date then separation."""
    columns = [c for c in PAIR_FIELDS if any(c in row for row in rows)] or list(PAIR_FIELDS)[:8]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["mid_date", "date_dt"], kind="stable").reset_index(drop=True)


def _pairs_table(info: dict[str, Any], *, min_days, max_days, min_clear, months) -> pd.DataFrame:
    """Every pair (i < j) of the scenes that passes the rules, sorted by centre date."""
    times, clear = info["times"], info["clear"]
    in_months = np.ones(len(times), bool) if months is None else np.isin(times.month, list(months))
    days = (times.values[None, :] - times.values[:, None]) / np.timedelta64(1, "D")
    keep = (days >= min_days) & (days <= max_days) & in_months[:, None] & in_months[None, :]
    if clear is not None and min_clear is not None:
        ok = np.asarray(clear) >= min_clear
        keep &= ok[:, None] & ok[None, :]
    return _table([_pair_row(int(i), int(j), info) for i, j in zip(*np.nonzero(np.triu(keep, 1)))])


def _check_rules(min_days, max_days, min_clear, months) -> None:
    require_positive(min_days, name="min_days", allow_zero=True, example=5)
    require_positive(max_days, name="max_days", example=64)
    if max_days < min_days:
        raise ConfigError(f"max_days={max_days} is below min_days={min_days}. Pass max_days >= min_days.")
    if min_clear is not None and not (isinstance(min_clear, (int, float)) and 0 <= min_clear <= 1):
        raise ConfigError(f"min_clear must be a fraction between 0 and 1 (e.g. 0.5), got {min_clear!r}.")
    if months is not None and not all(isinstance(m, (int, np.integer)) and 1 <= m <= 12 for m in months):
        raise ConfigError(f"months must be month numbers 1-12 (e.g. (7, 8, 9)), got {months!r}.")


def _check_scenes(scenes, what: str, time_dim, y_dim, x_dim) -> None:
    if not isinstance(scenes, (xr.DataArray, xr.Dataset)):
        raise DataTypeError(f"{what} expects an xarray DataArray or Dataset of scenes, got {type(scenes).__name__}.")
    require_dims(scenes, (time_dim, y_dim, x_dim), what=what)
    require_monotonic_time(scenes[time_dim], time_dim, what=what)


def select_pairs(
    scenes: xr.DataArray | xr.Dataset,
    *,
    min_days: float = 5.0,
    max_days: float = 64.0,
    min_clear: float | None = 0.5,
    ice: xr.DataArray | None = None,
    months: Sequence[int] | None = None,
    time_dim: Hashable = "time",
    y_dim: Hashable = "y",
    x_dim: Hashable = "x",
) -> pd.DataFrame:
    """Every pair of scenes that is usable for feature tracking, as ITS_LIVE chooses them.

    A pair ``(i, j)``, ``i`` before ``j``, is kept when its scenes are ``min_days`` to
    ``max_days`` days apart (both inclusive), both scenes have at least ``min_clear`` of their
    pixels valid (over ``ice`` when given), and both were acquired in ``months`` when given.

    Parameters
    ----------
    scenes
        Masked scenes ``(time, y, x)``: one band (e.g. ``cube.glacier.mask()["green"]``) or the
        masked Dataset (a pixel is valid where every float band is finite).
    min_days, max_days
        Range of time separations in days.  Short pairs move little (relative error large on
        slow ice); long pairs decorrelate where the surface changes (snow, melt, crevasses).
    min_clear
        Least fraction of valid pixels of each scene (0-1); ``None`` does not filter.  Without
        ``ice`` and with an in-memory ``missing_fraction`` coordinate (left by
        :func:`glacierxr.qa.mask`), nothing is read; otherwise the validity of the pixels is
        computed once (one small Dask compute of a per-scene vector).
    ice
        Optional boolean ``(y, x)`` mask on the grid, True on the ice: only these pixels count
        for ``min_clear`` (a cloud over the valley side does not spoil a pair).
    months
        Optional month numbers (1-12) both scenes must fall in, e.g. ``(7, 8, 9, 10)`` for
        late summer, when the snow line is high and the ice texture shows.
    time_dim, y_dim, x_dim
        Names of the dimensions.

    Returns
    -------
    pandas.DataFrame
        One row per pair, sorted by ``mid_date`` then ``date_dt``; columns described in
        :data:`PAIR_FIELDS`: ``index_img1``, ``index_img2`` (positions along ``time``),
        ``time_start``, ``time_end``, ``mid_date``, ``date_dt`` (days), ``clear_img1``,
        ``clear_img2`` (NaN when ``min_clear`` is None and nothing was known), and
        ``satellite_img1/2``, ``scene_id_img1/2`` where the scenes carry ``platform`` / ``id``.
        Pass it (or rows of it) to :func:`velocity_cube`.

    Raises
    ------
    NoPairsError
        No pair passes the rules; the message gives the separations and clear fractions found.
    ConfigError
        A rule is out of range (negative days, ``max_days < min_days``, ``min_clear`` outside
        0-1, a month outside 1-12) or ``ice`` has no True pixel.
    DimensionError, DataTypeError, GridError
        Missing dimensions, a non-datetime or unsorted time, or ``ice`` on another grid.

    Examples
    --------
    >>> import numpy as np
    >>> from glacierxr.testing import make_series
    >>> scenes = make_series(np.ones((4, 8, 8)), freq="16D")
    >>> table = select_pairs(scenes, max_days=32)
    >>> table[["index_img1", "index_img2"]].values.tolist()
    [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]]
    >>> table["date_dt"].tolist()
    [16.0, 32.0, 16.0, 32.0, 16.0]
    """
    _check_scenes(scenes, "select_pairs", time_dim, y_dim, x_dim)
    _check_rules(min_days, max_days, min_clear, months)
    if ice is not None:
        like = scenes if isinstance(scenes, xr.DataArray) else _valid(scenes)
        ice = check_on_grid(ice, like, name="ice", what="select_pairs", y_dim=y_dim, x_dim=x_dim, boolean=True)
    clear = None if min_clear is None and ice is None else _clear_fractions(scenes, ice, time_dim, y_dim, x_dim)
    info = _scene_info(scenes, time_dim, clear)
    table = _pairs_table(info, min_days=min_days, max_days=max_days, min_clear=min_clear, months=months)
    if table.empty:
        raise NoPairsError(_no_pairs_message(scenes[time_dim].values, clear, min_days, max_days, min_clear, months))
    return table


def _no_pairs_message(times, clear, min_days, max_days, min_clear, months) -> str:
    times = pd.DatetimeIndex(times)
    gaps = np.diff(times.values) / np.timedelta64(1, "D") if len(times) > 1 else np.array([])
    found = f"{len(times)} scenes"
    if gaps.size:
        found += f", consecutive separations {gaps.min():g}-{gaps.max():g} days"
    if clear is not None and len(clear):
        found += f", clear fractions {np.nanmin(clear):.2f}-{np.nanmax(clear):.2f}"
    rules = f"{min_days:g}-{max_days:g} days apart"
    if min_clear is not None:
        rules += f", both at least {min_clear:g} clear"
    if months is not None:
        rules += f", both in months {list(months)}"
    return (
        f"No pair of scenes is {rules} ({found}). Widen the range (e.g. max_days={2 * max_days:g}), "
        + (f"lower min_clear (e.g. min_clear={max(min_clear - 0.2, 0.0):.1f}), " if min_clear else "")
        + ("allow more months, " if months is not None else "")
        + "or load a longer period."
    )


# --------------------------------------------------------------------------------------------
# the cube
# --------------------------------------------------------------------------------------------
def _pair_table(scenes: xr.DataArray, pairs: Any, time_dim: Hashable) -> pd.DataFrame:
    """The pairs asked for, as a table like :func:`select_pairs`'s (positions checked).

    Columns of a given table (e.g. clear fractions over the ice) are kept as given.
    """
    info = _scene_info(scenes, time_dim)
    if pairs is None:
        return _pairs_table(info, min_days=5.0, max_days=64.0, min_clear=0.5, months=None)
    index = _positions(pairs, info["times"])
    for a, b in index:
        if not (0 <= a < b < len(info["times"])):
            raise ConfigError(
                f"pair ({a}, {b}) is not two positions 0 <= i < j < {len(info['times'])} along "
                f"{time_dim!r}. Take the pairs from select_pairs() on the same scenes."
            )
    rows = [_pair_row(a, b, info) for a, b in index]
    if isinstance(pairs, pd.DataFrame):
        for row, (_, given) in zip(rows, pairs.iterrows()):
            row.update({c: float(given[c]) for c in ("clear_img1", "clear_img2")
                        if c in given.index and pd.notna(given[c])})
    return _table(rows)


def _positions(pairs: Any, times: pd.DatetimeIndex) -> list[tuple[int, int]]:
    """``(i, j)`` positions from a pair table (positions or times) or a list of pairs."""
    if isinstance(pairs, pd.DataFrame):
        if {"index_img1", "index_img2"} <= set(pairs.columns):
            return [(int(a), int(b)) for a, b in zip(pairs["index_img1"], pairs["index_img2"])]
        if {"time_start", "time_end"} <= set(pairs.columns):
            return [(_position(times, a), _position(times, b)) for a, b in zip(pairs["time_start"], pairs["time_end"])]
        raise ConfigError(
            f"pairs has columns {list(pairs.columns)}; it needs index_img1/index_img2 or "
            "time_start/time_end. Pass the table of select_pairs()."
        )
    try:
        return [(int(a), int(b)) for a, b in pairs]
    except (TypeError, ValueError) as error:
        raise DataTypeError(
            "pairs must be the DataFrame of select_pairs() or a list of (i, j) positions along "
            f"time, got {type(pairs).__name__}."
        ) from error


def _position(times: pd.DatetimeIndex, when) -> int:
    found = np.flatnonzero(times == pd.Timestamp(when))
    if not found.size:
        raise ConfigError(
            f"pairs names a scene at {when}, which is not a time of the scenes. Use select_pairs() on them."
        )
    return int(found[0])


def _pair_dim(motion: xr.Dataset) -> Hashable:
    """The dimension along which flow() put its (single) pair."""
    if "time_start" in motion.coords and motion["time_start"].ndim == 1:
        return motion["time_start"].dims[0]
    raise DimensionError(f"flow() returned no per-pair time_start coordinate: {list(motion.coords)}.")


@dataclass(frozen=True)
class _PairSpec:
    """What a pair's task needs besides its two frames: coordinates, flow's keywords, field names."""

    dims: tuple[Hashable, Hashable, Hashable]
    grid: dict[Hashable, xr.Variable]  # y, x and the other in-memory (y, x) / scalar coords
    name: Hashable
    attrs: dict
    times: tuple[tuple[np.datetime64, np.datetime64], ...]  # per pair
    kwargs: dict[str, Any]  # in-memory keywords of flow
    lazy: tuple[tuple[str, tuple[Hashable, ...], dict[Hashable, xr.Variable]], ...]  # Dask-backed DataArrays
    names: tuple[str, ...]  # the per-pair fields to return

    def pair(self, k: int, first: np.ndarray, second: np.ndarray) -> xr.DataArray:
        coords = {**self.grid, self.dims[0]: np.array(self.times[k], dtype="datetime64[ns]")}
        return xr.DataArray(np.stack([first, second]), dims=self.dims, coords=coords, name=self.name,
                            attrs=self.attrs)

    def keywords(self, lazy_blocks) -> dict[str, Any]:
        rebuilt = {name: xr.DataArray(block, dims=dims, coords=coords)
                   for (name, dims, coords), block in zip(self.lazy, lazy_blocks)}
        return {**self.kwargs, **rebuilt}


def _pair_block(first: np.ndarray, second: np.ndarray, *lazy: np.ndarray, spec: _PairSpec,
                block_info=None) -> np.ndarray:
    """The Dask task of one pair: flow of its two frames, every per-pair field as NumPy in a dict."""
    k = block_info[None]["chunk-location"][0]
    out = np.empty((1,), dtype=object)
    out[0] = _run_pair(spec.pair(k, first[0], second[0]), spec.keywords(lazy), spec.names)
    return out


def _run_pair(pair: xr.DataArray, kwargs: dict, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """flow() of one in-memory pair; its per-pair fields without the pair dimension."""
    motion = flow(pair, **kwargs)
    if any(dask.is_dask_collection(motion[name].data) for name in names):
        motion = motion.compute()
    motion = motion.isel({_pair_dim(motion): 0})
    return {name: np.asarray(motion[name].values) for name in names}


def _field(packed: np.ndarray, name: str, ndim: int) -> np.ndarray:
    """One field of a pair's dict, with the leading pair axis."""
    return np.asarray(packed[0][name])[(None,) + (slice(None),) * ndim]


def _layout(template: xr.Dataset) -> tuple[Hashable, dict[str, tuple]]:
    """Per-pair fields of flow's output: name -> (dims without the pair, shape, dtype, attrs, is_coord)."""
    pair = _pair_dim(template)
    fields = {}
    for name, var in template.variables.items():
        if name in template.dims or name in _FLOW_PAIR_COORDS:
            continue
        is_coord = name in template.coords
        if is_coord and pair not in var.dims:
            continue
        dims = tuple(d for d in var.dims if d != pair)
        shape = tuple(template.sizes[d] for d in dims)
        fields[name] = (dims, shape, var.dtype, dict(var.attrs), is_coord)
    return pair, fields


def _bare(scenes: xr.DataArray, time_dim: Hashable, y_dim: Hashable, x_dim: Hashable) -> xr.DataArray:
    """The scenes without lazy auxiliary coordinates (a task would read them for nothing)."""
    lazy = [name for name, c in scenes.coords.items() if name not in scenes.dims and dask.is_dask_collection(c.data)]
    return scenes.drop_vars(lazy).transpose(time_dim, y_dim, x_dim)


def _pair_coords(table: pd.DataFrame) -> dict[str, xr.Variable]:
    """Per-pair coordinates of the cube from the pair table (attrs from :data:`PAIR_FIELDS`)."""
    coords = {"mid_date": xr.Variable("mid_date", pd.DatetimeIndex(table["mid_date"]).values,
                                      PAIR_FIELDS["mid_date"], encoding=dict(_TIME_ENCODING))}
    for name in _CUBE_COORDS:
        if name not in table.columns:
            continue
        values = table[name].to_numpy()
        encoding = {}
        if name in ("time_start", "time_end"):
            values, encoding = pd.DatetimeIndex(table[name]).values, dict(_TIME_ENCODING)
        elif values.dtype == object:
            values = values.astype(str).astype(object)
        else:
            values = values.astype(float)
        coords[name] = xr.Variable("mid_date", values, PAIR_FIELDS[name], encoding=encoding)
    return coords


def _spec(scenes: xr.DataArray, table: pd.DataFrame, names: tuple[str, ...], flow_kwargs: dict) -> tuple:
    """The :class:`_PairSpec` of the pairs and the Dask arrays of flow's lazy keywords."""
    time_dim, y_dim, x_dim = scenes.dims
    grid = {name: c.variable for name, c in scenes.coords.items()
            if time_dim not in c.dims and not dask.is_dask_collection(c.data)}
    in_memory, lazy, lazy_arrays = {}, [], []
    for key, value in flow_kwargs.items():
        if not (isinstance(value, xr.DataArray) and dask.is_dask_collection(value.data)):
            in_memory[key] = value
            continue
        if value.dims != (y_dim, x_dim):
            raise DimensionError(
                f"velocity_cube: a Dask-backed {key}= must have dims ({y_dim!r}, {x_dim!r}), found "
                f"{value.dims}. Transpose it, or load it with .compute() first."
            )
        coords = {n: c.variable for n, c in value.coords.items() if not dask.is_dask_collection(c.data)}
        lazy.append((key, value.dims, coords))
        lazy_arrays.append(value.data.rechunk(-1))
    times = tuple(zip(pd.DatetimeIndex(table["time_start"]).values, pd.DatetimeIndex(table["time_end"]).values))
    spec = _PairSpec(dims=scenes.dims, grid=grid, name=scenes.name, attrs=dict(scenes.attrs), times=times,
                     kwargs=in_memory, lazy=tuple(lazy), names=names)
    return spec, lazy_arrays


def _pair_tasks(scenes: xr.DataArray, table: pd.DataFrame, spec: _PairSpec, lazy_arrays: list) -> dask.array.Array:
    """One task per pair (an object array of dicts), reading each scene's frame once."""
    data = scenes.data
    if not dask.is_dask_collection(data):
        data = dask.array.from_array(np.asarray(data), chunks=(1, -1, -1))
    data = data.rechunk((1, -1, -1))
    first = dask.array.stack([data[i] for i in table["index_img1"]])
    second = dask.array.stack([data[j] for j in table["index_img2"]])
    token = dask.base.tokenize(first, second, spec.times, spec.kwargs, spec.names, *lazy_arrays)
    return dask.array.map_blocks(
        _pair_block, first, second, *lazy_arrays, spec=spec, name=f"velocity-pair-{token}",
        dtype=object, drop_axis=[1, 2], chunks=((1,) * len(table),), meta=np.empty((0,), dtype=object),
    )


def _stack(template: xr.Dataset, packed: dask.array.Array, table: pd.DataFrame) -> xr.Dataset:
    """One Dataset along ``mid_date`` from the per-pair task results."""
    pair_dim, fields = _layout(template)
    data_vars, extra_coords = {}, {}
    for name, (dims, shape, dtype, attrs, is_coord) in fields.items():
        data = packed.map_blocks(
            _field, name, len(shape), dtype=dtype, chunks=(packed.chunks[0], *((n,) for n in shape)),
            new_axis=list(range(1, len(shape) + 1)), meta=np.empty((0,) * (len(shape) + 1), dtype=dtype),
        )
        (extra_coords if is_coord else data_vars)[name] = xr.Variable(("mid_date", *dims), data, attrs)
    static = {
        name: c for name, c in template.coords.items()
        if name not in fields and name not in _FLOW_PAIR_COORDS and pair_dim not in c.dims
        and not dask.is_dask_collection(c.data)
    }
    coords = {**static, **_pair_coords(table), **extra_coords}
    return xr.Dataset(data_vars, coords=coords, attrs=dict(template.attrs))


def velocity_cube(
    scenes: xr.DataArray,
    pairs: pd.DataFrame | Sequence[tuple[int, int]] | None = None,
    *,
    time_dim: Hashable = "time",
    y_dim: Hashable = "y",
    x_dim: Hashable = "x",
    **flow_kwargs: Any,
) -> xr.Dataset:
    """Surface velocity of many image pairs, lazily, one Dask task per pair, along ``mid_date``.

    Each pair's two scenes go through :func:`glacierxr.flow.flow` (with ``flow_kwargs``) inside
    one Dask task, which returns every field of that pair at once: computing the whole cube
    runs flow once per pair, and reads each scene once however many pairs share it.  Building
    the cube reads no pixel (only coordinates and the in-memory per-scene metadata).

    Parameters
    ----------
    scenes
        ``(time, y, x)`` scenes on a regular projected grid, e.g. the green band of
        ``cube.glacier.mask()`` (Landsat's panchromatic band where you have it: finer pixels,
        smaller errors), optionally co-registered.
    pairs
        The table of :func:`select_pairs` (or some of its rows), or a list of ``(i, j)``
        positions along ``time``.  Default: every pair 5 to 64 days apart whose scenes are both
        at least half clear according to an in-memory ``missing_fraction`` coordinate (left by
        :func:`glacierxr.qa.mask`); without it, every pair 5 to 64 days apart (nothing is
        read to find out).
    time_dim, y_dim, x_dim
        Names of the dimensions of ``scenes``.
    **flow_kwargs
        Passed to :func:`glacierxr.flow.flow` for every pair (``method=``, ``spacing=``,
        ``stable=``, ``outlines=`` ...); DataArrays among them may be Dask-backed.

    Returns
    -------
    xarray.Dataset
        Every per-pair field of flow's output (``vx``, ``vy``, ``v``, their errors, pixel
        displacements, match quality, stable-shift fields ...) with a leading ``mid_date``
        dimension (one chunk per pair), on flow's output grid; per-pair coordinates of
        :data:`PAIR_FIELDS` (``time_start``, ``time_end``, ``date_dt``, ``clear_img1/2``,
        ``satellite_img1/2``, ``scene_id_img1/2`` where known).  Pairs are sorted by
        ``mid_date`` (two pairs may share one).  CF-1.8 attributes; flow's parameters in attrs.

    Raises
    ------
    NoPairsError
        No pair to compute.
    ConfigError, DataTypeError
        ``pairs`` names positions or times that are not in ``scenes``, or is of another type.
    DimensionError, DataTypeError, GridError, ChunkingError
        From the checks of ``scenes`` and of :func:`glacierxr.flow.flow` (run on the first pair
        while the cube is built, without computing it).

    Examples
    --------
    >>> import numpy as np, scipy.ndimage as ndi
    >>> from glacierxr.testing import make_series
    >>> texture = ndi.gaussian_filter(np.random.default_rng(0).standard_normal((96, 96)), 2)
    >>> frames = np.stack([ndi.shift(texture, (0, k), mode="nearest") for k in range(3)])
    >>> cube = velocity_cube(make_series(frames, freq="16D"), [(0, 1), (0, 2), (1, 2)])
    >>> cube["date_dt"].values.tolist()
    [16.0, 32.0, 16.0]
    """
    require_dataarray(scenes, "velocity_cube")
    _check_scenes(scenes, "velocity_cube", time_dim, y_dim, x_dim)
    table = _pair_table(scenes, pairs, time_dim)
    if table.empty:
        raise NoPairsError(_no_pairs_message(scenes[time_dim].values, _known_clear(scenes, time_dim),
                                             5.0, 64.0, 0.5, None))
    scenes = _bare(scenes, time_dim, y_dim, x_dim)
    first = table.iloc[0]
    sample_pair = scenes.isel({time_dim: [first.index_img1, first.index_img2]})
    data = sample_pair.data  # lazy for flow, coordinates left in memory (.chunk() would chunk them)
    data = data.rechunk((1, -1, -1)) if dask.is_dask_collection(data) else dask.array.from_array(data, (1, -1, -1))
    template = flow(sample_pair.copy(data=data), **flow_kwargs)
    spec, lazy_arrays = _spec(scenes, table, tuple(_layout(template)[1]), flow_kwargs)
    cube = _stack(template, _pair_tasks(scenes, table, spec, lazy_arrays), table)
    cube.attrs.update(pairs=len(table), source_variable=str(scenes.name or ""))
    shown = [f"{k}={v!r}" for k, v in flow_kwargs.items() if not isinstance(v, xr.DataArray)]
    call = f"velocity_cube({', '.join([f'{len(table)} pairs', *shown])})"
    return _cf.finalize(cube, call, x_dim=str(x_dim), y_dim=str(y_dim), time_dim="mid_date")


# --------------------------------------------------------------------------------------------
# composites
# --------------------------------------------------------------------------------------------
def _robust_kernel(vx: np.ndarray, vy: np.ndarray, min_count: int) -> tuple[np.ndarray, ...]:
    """Median, NMAD and count of the pairs along the last axis (a pixel counts where vx and vy are finite)."""
    ok = np.isfinite(vx) & np.isfinite(vy)
    vx = np.where(ok, vx, np.nan).astype(np.float64)
    vy = np.where(ok, vy, np.nan).astype(np.float64)
    count = ok.sum(axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
        median_x = np.nanmedian(vx, axis=-1)
        median_y = np.nanmedian(vy, axis=-1)
        spread_x = NMAD_SCALE * np.nanmedian(np.abs(vx - median_x[..., None]), axis=-1)
        spread_y = NMAD_SCALE * np.nanmedian(np.abs(vy - median_y[..., None]), axis=-1)
    few = count < min_count
    medians = [np.where(few, np.nan, a).astype(np.float32) for a in (median_x, median_y)]
    spreads = [np.where(few | (count < 2), np.nan, a).astype(np.float32) for a in (spread_x, spread_y)]
    return (*medians, *spreads, count.astype(np.int32))


def _reduce(cube: xr.Dataset, min_count: int) -> xr.Dataset:
    """The robust statistics of one group of pairs (lazy where the cube is)."""
    vx, vy = cube["vx"], cube["vy"]
    if vx.chunks is not None:
        vx, vy = vx.chunk({"mid_date": -1}), vy.chunk({"mid_date": -1})
    med_x, med_y, spread_x, spread_y, count = xr.apply_ufunc(
        _robust_kernel, vx, vy, kwargs={"min_count": min_count},
        input_core_dims=[["mid_date"], ["mid_date"]], output_core_dims=[[]] * 5,
        dask="parallelized", output_dtypes=[np.float32] * 4 + [np.int32],
    )
    speed = np.hypot(med_x, med_y).astype(np.float32)
    error_x, error_y = (_MEDIAN_EFFICIENCY * spread / np.sqrt(count) for spread in (spread_x, spread_y))
    # the speed's error from its components' (first order; their root-mean-square where the speed is 0)
    error = xr.where(speed > 0, np.hypot(med_x * error_x, med_y * error_y) / speed,
                     np.hypot(error_x, error_y) / np.sqrt(2.0))
    out = xr.Dataset({"vx": med_x, "vy": med_y, "v": speed, "vx_error": error_x.astype(np.float32),
                      "vy_error": error_y.astype(np.float32), "v_error": error.astype(np.float32),
                      "vx_spread": spread_x, "vy_spread": spread_y, "count": count})
    return out.drop_vars([c for c in out.coords if c not in out.dims and c != "spatial_ref"])


def _describe_composite(out: xr.Dataset) -> xr.Dataset:
    """Attributes of :data:`COMPOSITE_FIELDS` (and the CF entries of vx, vy, v)."""
    for name in out.variables:
        if name not in COMPOSITE_FIELDS:
            continue
        if name in ("vx", "vy", "v") and name in out.data_vars:
            out = _cf.describe(out, name, variable=name)
            out[name].attrs.update(COMPOSITE_FIELDS[name], cell_methods="mid_date: median")
        else:
            out[name].attrs.update(COMPOSITE_FIELDS[name])
    return out


def composite(
    cube: xr.Dataset,
    period: str | None = None,
    *,
    min_count: int = 1,
    exclude_interpolated: bool = True,
) -> xr.Dataset:
    """Robust composite of a velocity cube over periods: median of ``vx`` and ``vy``, never of speed.

    The speed of a noisy velocity is biased high (noise adds to ``|v|`` in every direction), so
    the median of speeds overestimates slow ice; the median of each component does not.  ``v``
    is then ``hypot(vx, vy)`` of the medians.

    Parameters
    ----------
    cube
        A velocity cube of :func:`velocity_cube` (``vx``, ``vy`` along ``mid_date``).
    period
        A pandas offset alias grouping the pairs by centre date: ``"YS"`` (calendar years),
        ``"QS-DEC"`` (seasons), ``"MS"``, ``"6MS"`` ... ; ``None`` composites all pairs at once
        (no ``time`` dimension).  Periods without a pair are left out.
    min_count
        Least number of valid pairs for a pixel to get a value (NaN below).
    exclude_interpolated
        Leave out vectors that flow marked ``interpolated`` (filled from neighbours).

    Returns
    -------
    xarray.Dataset
        ``vx``, ``vy`` (median, m/year), ``v`` (speed of the medians), ``vx_error``,
        ``vy_error``, ``v_error`` (standard errors of those: ``sqrt(pi / 2) * NMAD / sqrt(count)``
        per component, propagated to the speed), ``vx_spread``,
        ``vy_spread`` (NMAD of the pairs, m/year; NaN where fewer than 2 pairs), ``count``
        (valid pairs per pixel) on the cube's grid; with ``period``, a ``time`` dimension (the
        period's start) and
        ``period_start``, ``period_end`` and ``pairs`` per period (see :data:`COMPOSITE_FIELDS`).
        Lazy where the cube is.

    Raises
    ------
    MissingBandError
        ``cube`` lacks ``vx``, ``vy`` or the ``mid_date`` dimension.
    ConfigError
        ``period`` is not a pandas offset alias, or ``min_count`` is not a positive integer.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr
    >>> mid = pd.to_datetime(["2020-01-10", "2020-02-10", "2020-03-10"])
    >>> cube = xr.Dataset({"vx": ("mid_date", [1.0, 2.0, 9.0]), "vy": ("mid_date", [0.0, 0.0, 0.0])},
    ...                   coords={"mid_date": mid})
    >>> float(composite(cube)["vx"]), int(composite(cube)["count"])
    (2.0, 3)
    """
    missing = [n for n in ("vx", "vy") if n not in cube] + ([] if "mid_date" in cube.dims else ["mid_date"])
    if missing:
        raise MissingBandError(
            f"composite needs vx, vy along mid_date; missing {missing}. Pass the output of velocity_cube()."
        )
    require_positive(min_count, name="min_count", integer=True, example=3)
    if exclude_interpolated and "interpolated" in cube:
        keep = ~cube["interpolated"].astype(bool)
        cube = cube.assign(vx=cube["vx"].where(keep), vy=cube["vy"].where(keep))
    if period is None:
        out = _reduce(cube, min_count).assign_attrs(pairs=int(cube.sizes["mid_date"]))
    else:
        out = _by_period(cube, period, min_count)
    out.attrs.update({k: v for k, v in cube.attrs.items() if k not in ("history", "pairs")})
    out.attrs.update(composite_period=str(period or "all"), composite_min_count=int(min_count))
    call = f"composite(period={period!r}, min_count={min_count})"
    return _cf.finalize(_describe_composite(out), call)


def _by_period(cube: xr.Dataset, period: str, min_count: int) -> xr.Dataset:
    """One composite per period holding at least one pair, along ``time`` (the period start)."""
    mid = pd.DatetimeIndex(cube["mid_date"].values)
    try:
        groups = pd.Series(np.arange(mid.size), index=mid).sort_index().resample(period)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"period={period!r} is not a pandas offset alias; use e.g. 'YS', 'QS-DEC', '6MS'.") from error
    offset = pd.tseries.frequencies.to_offset(period)
    parts, starts, counts = [], [], []
    for start, members in groups:
        if members.empty:
            continue
        parts.append(_reduce(cube.isel(mid_date=np.sort(members.to_numpy())), min_count))
        starts.append(pd.Timestamp(start))
        counts.append(len(members))
    starts = pd.DatetimeIndex(starts)
    out = xr.concat(parts, dim="time", join="override").assign_coords(time=starts.values)
    return out.assign_coords(
        period_start=("time", starts.values),
        period_end=("time", (starts + offset).values),
        pairs=("time", np.array(counts, dtype=np.int32)),
    )
