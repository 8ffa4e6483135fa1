"""CF-1.8 metadata for glacierxr outputs, in one place.

Every stage that hands a product to the user (composites, forecasts, velocities, gridded
metrics) ends with two calls:

``describe(obj, entry)``
    gives a variable the ``standard_name`` (where the CF table has one), ``units`` in UDUNITS form
    and a default ``long_name`` of a :data:`TABLE` entry;
``finalize(obj, call)``
    adds what makes the whole object CF-1.8: ``Conventions``, the axis attributes of ``x``/``y``/
    ``time``, ``grid_mapping = "spatial_ref"`` on every gridded variable (the CRS coordinate written
    by rioxarray carries ``grid_mapping_name`` and ``crs_wkt``), ``source`` with the glacierxr
    version, and one ``history`` line naming the call.

Both only touch attributes: nothing is computed and Dask-backed data stay lazy.

>>> import numpy as np, xarray as xr
>>> da = xr.DataArray(np.zeros((2, 3)), dims=("y", "x"), coords={"y": [1.0, 0.0], "x": [0.0, 1.0, 2.0]})
>>> da = finalize(describe(da, "vx"), "flow()")
>>> da.attrs["standard_name"], da.attrs["units"], da.attrs["Conventions"]
('land_ice_surface_x_velocity', 'm/year', 'CF-1.8')
>>> da["x"].attrs["standard_name"]
'projection_x_coordinate'
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib import resources
from typing import TypeVar

import xarray as xr

from .errors import GlacierXRError

__all__ = ["CONVENTIONS", "TABLE", "describe", "describe_known", "entry_for", "finalize", "to_dataset", "cell_method", "version"]

CONVENTIONS = "CF-1.8"

_TABLE_FILE = "data/cf.toml"
_ATTRIBUTES = {"standard_name", "units", "long_name"}


def _read_table(text: str, source: str) -> dict[str, dict[str, str]]:
    """The entries of a CF table file: one TOML table an entry, each with ``units`` and
    ``long_name`` and, where CF has one, ``standard_name`` (all strings)."""
    table = tomllib.loads(text)
    for key, entry in table.items():
        if not (
            isinstance(entry, dict)
            and {"units", "long_name"} <= set(entry) <= _ATTRIBUTES
            and all(isinstance(value, str) for value in entry.values())
        ):
            raise GlacierXRError(
                f"{source}: [{key}] must hold units and long_name (and optionally "
                f"standard_name) as strings, got {entry!r}."
            )
    return table


#: Variable descriptions, read from the package's ``data/cf.toml`` (where each entry's
#: conventions are written down): ``standard_name`` only where the CF standard-name table has
#: one, ``units`` in UDUNITS form, a default ``long_name``.
TABLE: dict[str, dict[str, str]] = _read_table(
    resources.files("glacierxr").joinpath(_TABLE_FILE).read_text(encoding="utf-8"),
    source=f"glacierxr/{_TABLE_FILE}",
)

_T = TypeVar("_T", xr.DataArray, xr.Dataset)

_GEOGRAPHIC = {"x": ("longitude", "degrees_east"), "y": ("latitude", "degrees_north")}
_PROJECTED = {"x": "projection_x_coordinate", "y": "projection_y_coordinate"}


def version() -> str:
    """The installed glacierxr version (``"unknown"`` when run from a bare source tree)."""
    try:
        from importlib.metadata import version as _version

        return _version("glacierxr")
    except Exception:  # pragma: no cover - only without an installed distribution
        return "unknown"


def cell_method(how: str, dim: str = "time") -> str | None:
    """CF ``cell_methods`` string for a reduction ``how`` along ``dim`` (None if CF has no word)."""
    word = {"mean": "mean", "median": "median", "max": "maximum", "min": "minimum", "sum": "sum"}.get(how)
    return f"{dim}: {word}" if word else None


def describe(obj: _T, entry: str | Mapping[str, str], *, variable: str | None = None, **extra) -> _T:
    """Copy ``obj`` with the CF description of a :data:`TABLE` ``entry`` in its attributes.

    Parameters
    ----------
    obj
        A DataArray, or a Dataset together with ``variable``.
    entry
        A key of :data:`TABLE` or a mapping of attributes (``standard_name``, ``units``,
        ``long_name``).
    variable
        For a Dataset: the data variable to describe.
    **extra
        More attributes to set (``cell_methods=...``, ``valid_min=...``).

    Returns
    -------
    Same type as ``obj``; ``standard_name`` and ``units`` come from the entry, ``long_name``
    only where the variable has none yet (a stage's own wording is kept).
    """
    if isinstance(entry, str):
        if entry not in TABLE:
            raise GlacierXRError(f"unknown CF table entry {entry!r}; known: {', '.join(sorted(TABLE))}")
        entry = TABLE[entry]
    if isinstance(obj, xr.Dataset):
        if variable is None or variable not in obj.data_vars:
            raise GlacierXRError(f"describe() on a Dataset needs variable= one of {list(obj.data_vars)}")
        return obj.assign({variable: describe(obj[variable], entry, **extra)})
    attrs = dict(obj.attrs)
    attrs.pop("standard_name", None)
    for key in ("standard_name", "units"):
        if key in entry:
            attrs[key] = entry[key]
    if "long_name" in entry:
        attrs.setdefault("long_name", entry["long_name"])
    attrs.update(extra)
    return _with_attrs(obj, attrs)


_REFLECTANCE_BANDS = {"coastal", "blue", "green", "red", "nir08", "swir16", "swir22", "SR_B3", "SR_B6"}


def entry_for(da: xr.DataArray) -> str | None:
    """The :data:`TABLE` entry of a glacierxr field from its name (``None`` when unknown).

    ``green``/``swir16`` (and other bands) are reflectance, ``ndsi`` the index, ``snow_mask`` the
    NDSI-valued mask or, with ``binary`` set, CF's ``surface_snow_binary_mask``.
    """
    name = str(da.name or "").removesuffix("_forecast")
    if name in _REFLECTANCE_BANDS:
        return "reflectance"
    if name == "snow_mask":
        return "snow_mask_binary" if int(da.attrs.get("binary", 0) or 0) else "snow_mask"
    if name in TABLE:
        return name
    return None


def describe_known(da: xr.DataArray, **extra) -> xr.DataArray:
    """:func:`describe` with the entry found by :func:`entry_for`; only ``extra`` when none is."""
    entry = entry_for(da)
    return describe(da, entry, **extra) if entry else _with_attrs(da, {**da.attrs, **extra})


def _with_attrs(obj: _T, attrs: dict) -> _T:
    out = obj.copy(deep=False)
    out.attrs = attrs
    return out


def _coordinate_attrs(obj: _T, x_dim: str, y_dim: str, time_dim: str) -> dict[str, dict]:
    """CF attributes of the axis coordinates present in ``obj``."""
    geographic = _is_geographic(obj)
    found: dict[str, dict] = {}
    for axis, dim in (("x", x_dim), ("y", y_dim)):
        if dim not in obj.coords:
            continue
        if geographic:
            name, units = _GEOGRAPHIC[axis]
            found[dim] = {"standard_name": name, "units": units, "axis": axis.upper()}
        else:
            found[dim] = {
                "standard_name": _PROJECTED[axis],
                "units": _linear_units(obj),
                "axis": axis.upper(),
                "long_name": f"{axis} coordinate of projection (pixel centre)",
            }
    if time_dim in obj.coords:
        # No "units" here: xarray encodes datetime64 itself and refuses a units attribute.
        found[time_dim] = {"standard_name": "time", "axis": "T"}
    return found


def _crs(obj):
    try:
        return obj.rio.crs if "spatial_ref" in obj.coords else None
    except Exception:
        return None


def _is_geographic(obj) -> bool:
    crs = _crs(obj)
    return bool(crs is not None and crs.is_geographic)


def _linear_units(obj) -> str:
    crs = _crs(obj)
    if crs is None:
        return "m"
    unit = (crs.linear_units or "metre").lower()
    return "m" if unit in ("metre", "meter", "m") else unit


def _history_line(call: str) -> str:
    # No clock time: the same call on the same data gives identical attributes (the threaded and
    # distributed schedulers, eager and lazy paths are compared with assert_identical).
    return f"glacierxr {version()}: {call}"


def finalize(
    obj: _T,
    call: str,
    *,
    x_dim: str = "x",
    y_dim: str = "y",
    time_dim: str = "time",
    history: bool = True,
) -> _T:
    """Copy ``obj`` with the attributes CF-1.8 asks of a product; nothing is computed.

    Parameters
    ----------
    obj
        The stage's output (DataArray or Dataset).
    call
        The call that made it, as the user would write it, e.g. ``"monthly(months=3, how='mean')"``;
        appended as one line to ``history``.
    x_dim, y_dim, time_dim
        Names of the axis coordinates.
    history
        Append to ``history`` (False only to refresh the other attributes).

    Returns
    -------
    Same type as ``obj``: ``Conventions = "CF-1.8"``, ``source`` naming the glacierxr version (and
    the catalog the scenes came from, when ``source`` held it), ``history``; axis attributes on the
    coordinates; ``grid_mapping = "spatial_ref"`` on every variable with both spatial dimensions.
    """
    out = obj.copy(deep=False)
    coord_attrs = _coordinate_attrs(out, x_dim, y_dim, time_dim)
    if coord_attrs:
        out = out.assign_coords(
            {dim: out[dim].copy(deep=False).assign_attrs({**out[dim].attrs, **attrs})
             for dim, attrs in coord_attrs.items()}
        )
    has_crs = "spatial_ref" in out.coords
    if isinstance(out, xr.Dataset):
        if has_crs:
            out = out.assign({name: _with_grid_mapping(var, x_dim, y_dim) for name, var in out.data_vars.items()})
    elif has_crs:
        out = _with_grid_mapping(out, x_dim, y_dim)
    attrs = dict(out.attrs)
    attrs["Conventions"] = CONVENTIONS
    attrs["source"] = _source(attrs.get("source"))
    if history:
        previous = attrs.get("history")
        attrs["history"] = f"{previous}\n{_history_line(call)}" if previous else _history_line(call)
    out.attrs = attrs
    return out


def _with_grid_mapping(var: xr.DataArray, x_dim: str, y_dim: str) -> xr.DataArray:
    if x_dim not in var.dims or y_dim not in var.dims:
        return var
    var = var.copy(deep=False)
    var.encoding.pop("grid_mapping", None)  # one place only: xarray refuses it in both
    var.attrs = {**var.attrs, "grid_mapping": "spatial_ref"}
    return var


def _source(previous: str | None) -> str:
    mine = f"glacierxr {version()}"
    if not previous or str(previous).startswith("glacierxr"):
        return mine
    return f"{mine}, from Landsat Collection 2 Level-2 scenes of {previous}"


_GLOBAL = ("Conventions", "source", "history")


def to_dataset(obj: xr.DataArray | xr.Dataset, name: str = "data") -> xr.Dataset:
    """A Dataset for writing ``obj``; a DataArray's ``Conventions``/``source``/``history`` become global.

    Files keep CF's file-level attributes where readers look for them (the Dataset's attrs),
    while the variable keeps its own.
    """
    if isinstance(obj, xr.Dataset):
        return obj
    ds = obj.to_dataset(name=obj.name or name)
    ds.attrs = {key: obj.attrs[key] for key in _GLOBAL if key in obj.attrs}
    return ds
