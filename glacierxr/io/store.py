"""Writing results to disk (Zarr, NetCDF, Cloud-Optimized GeoTIFF) atomically, and reading them.

:func:`write` locks the output, writes a hidden temporary sibling and renames it into place only
when complete (:mod:`glacierxr._safety`); :func:`read` opens what it wrote again, lazily.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from glacierxr import _cf, _safety
from glacierxr.errors import ConfigError, DataTypeError, GlacierXRError, GridError
from glacierxr.io.grid import _AFFINE_WARNING

__all__ = ["write", "read", "OutputExistsError", "OutputNotFoundError"]


class OutputExistsError(GlacierXRError, FileExistsError):
    """:func:`write` refused to replace an existing output (pass ``overwrite=True``)."""


class OutputNotFoundError(GlacierXRError, FileNotFoundError):
    """:func:`read` found nothing at the path (an interrupted :func:`write` leaves nothing)."""


_FORMATS = {".zarr": "zarr", ".nc": "netcdf", ".nc4": "netcdf", ".tif": "cog", ".tiff": "cog"}


def _format_of(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in ("zarr", "netcdf", "cog"):
            raise ConfigError(f"format must be 'zarr', 'netcdf' or 'cog', got {format!r}.")
        return format
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"Cannot tell the format of {str(path)!r} from its suffix; use .zarr, .nc or .tif, "
            "or pass format='zarr' | 'netcdf' | 'cog'."
        )
    return fmt


def _clean_encoding(ds: xr.Dataset) -> xr.Dataset:
    """A copy without chunk encodings inherited from a previous Zarr (they clash on write)."""
    ds = ds.copy()
    for variable in ds.variables.values():
        variable.encoding = {
            k: v
            for k, v in variable.encoding.items()
            if k not in ("chunks", "preferred_chunks", "shards", "compressors", "filters", "source")
        }
    return ds


def _variable_length_strings(ds: xr.Dataset) -> xr.Dataset:
    """Fixed-width unicode has no stable Zarr-3 encoding; variable-length strings do."""
    fixed = [name for name, v in ds.variables.items() if v.dtype.kind == "U" and name not in ds.dims]
    return ds.assign_coords({n: ds[n].astype(object) for n in fixed if n in ds.coords}).assign(
        {n: ds[n].astype(object) for n in fixed if n in ds.data_vars}
    )


def _regular_chunks(ds: xr.Dataset) -> xr.Dataset:
    """Zarr needs equal chunks except the last, per variable; make them so (on this copy only).

    Variables may be chunked differently from each other (each gets its own Zarr chunks).
    """
    fixed = {}
    for name, variable in ds.variables.items():
        if variable.chunks is None or name in ds.indexes:
            continue
        fix = {
            dim: max(sizes)
            for dim, sizes in zip(variable.dims, variable.chunks)
            if len(sizes) > 1 and (len(set(sizes[:-1])) > 1 or sizes[-1] > sizes[0])
        }
        if fix:
            fixed[name] = variable.chunk(fix)
    if not fixed:
        return ds
    ds = ds.copy()
    for name, variable in fixed.items():
        if name in ds.coords:
            ds.coords[name] = variable
        else:
            ds[name] = variable
    return ds


def _netcdf_engine() -> str:
    for engine, module in (("netcdf4", "netCDF4"), ("h5netcdf", "h5netcdf")):
        with contextlib.suppress(ImportError):
            __import__(module)
            return engine
    return "scipy"


def _write_netcdf(ds: xr.Dataset, tmp: Path) -> None:
    engine = _netcdf_engine()
    ds = _clean_encoding(ds)
    if engine == "scipy":  # NetCDF-3: no unsigned integers, no 64-bit integers, no bools
        for name, variable in ds.variables.items():
            if variable.dtype.kind == "u":
                wider = {1: "int16", 2: "int32", 4: "int64"}[variable.dtype.itemsize]
                ds[name] = variable.astype(wider)
                ds[name].encoding["dtype"] = wider
    for name, variable in ds.variables.items():  # NetCDF attributes: no None, no bool
        for key, value in list(variable.attrs.items()):
            if isinstance(value, bool):
                variable.attrs[key] = int(value)
            elif value is None:
                del variable.attrs[key]
    try:
        ds.to_netcdf(tmp, engine=engine)
    except NotImplementedError:
        # xarray's scipy writer cannot stream from a dask.distributed cluster (it raises before
        # writing anything): gather the data here, then write.
        _remove(tmp)
        ds.compute().to_netcdf(tmp, engine=engine)


def _write_cog(obj: xr.Dataset | xr.DataArray, tmp: Path) -> None:
    if isinstance(obj, xr.Dataset):
        names = list(obj.data_vars)
        if len(names) != 1:
            raise DataTypeError(
                f"A COG holds one variable; the Dataset has {names}. Write one at a time, "
                f"e.g. write(ds[{names[0]!r}], 'out.tif'), or use a .zarr / .nc path."
            )
        obj = obj[names[0]]
    da = obj
    extra = [d for d in da.dims if d not in ("time", "y", "x")]
    if extra or not {"y", "x"} <= set(da.dims):
        raise DataTypeError(
            f"A COG needs dims (time, y, x) or (y, x); got {da.dims}. Select or reduce the "
            f"other dims first (e.g. .isel({extra[0] if extra else 'band'}=0))."
        )
    if da.rio.crs is None:
        raise GridError(
            "The array has no CRS (no spatial_ref coordinate); a GeoTIFF needs one. Set it with "
            "da.rio.write_crs(epsg)."
        )
    tags = {
        "name": str(da.name or ""),
        "units": str(da.attrs.get("units", "")),
        "long_name": str(da.attrs.get("long_name", "")),
    }
    if "time" in da.dims:
        da = da.transpose("time", "y", "x")
        times = [pd.Timestamp(t).isoformat() for t in da["time"].values]
        tags["time"] = ",".join(times)
        out = da.rename(time="band").assign_coords(band=np.arange(1, da.sizes["time"] + 1))
        out = out.drop_vars([c for c in out.coords if c not in ("band", "y", "x", "spatial_ref")])
        out.attrs = {"long_name": tuple(times)}
    else:
        out = da.drop_vars([c for c in da.coords if c not in ("y", "x", "spatial_ref")])
        out.attrs = {}
    if out.dtype.kind == "f":
        out = out.rio.write_nodata(np.nan, encoded=False)
    elif "fill_value" in da.attrs:
        out = out.rio.write_nodata(da.attrs["fill_value"], encoded=False)
    with warnings.catch_warnings(), _without_libtiff_disk_lines():
        warnings.filterwarnings("ignore", **_AFFINE_WARNING)  # rioxarray + affine 3
        out.rio.to_raster(tmp, driver="COG", tags=tags, compress="DEFLATE")


_LIBTIFF_DISK_LINE = re.compile(rb"^_tiff\w*Proc: No space left on device\.?\r?$")


@contextlib.contextmanager
def _without_libtiff_disk_lines():
    """Drop libtiff's ``_tiffWriteProc: No space left on device.`` lines from stderr.

    GDAL's bundled libtiff prints them straight to file descriptor 2 (not through GDAL's error
    handler or Python logging), once per failed block, ahead of the one ``StorageError`` that
    already says the disk is full.  Everything else written to stderr meanwhile is passed on.
    """
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True)
                    if not _LIBTIFF_DISK_LINE.match(line.rstrip(b"\n"))]  # fmt: skip
            if kept:
                os.write(2, b"".join(kept))


def write(
    obj: xr.Dataset | xr.DataArray,
    path: str | os.PathLike,
    *,
    format: Literal["zarr", "netcdf", "cog"] | None = None,  # noqa: A002 - xarray's word
    overwrite: bool = False,
) -> Path:
    """Write a Dataset or DataArray to Zarr, NetCDF or a Cloud-Optimized GeoTIFF, atomically.

    The data are written to a hidden temporary sibling (``.<name>.partial-<random>``) and
    renamed to ``path`` only when complete, so an interrupted write never leaves a file that
    reads as complete. Computing the data happens here (writing is asking for results).
    While it runs, ``path`` is locked (:func:`glacierxr._safety.output_lock`): a second writer
    of the same path fails at once instead of silently replacing this one, and the leftovers
    of writes that were killed (``.<name>.partial-*``) are removed. Zarr stores get
    consolidated metadata, so ``xr.open_zarr`` opens them quickly and without a warning.

    Parameters
    ----------
    obj
        What to write. A COG holds one variable with dims ``(time, y, x)`` (one band per time
        step, band descriptions = ISO times) or ``(y, x)``, and needs a CRS.
    path
        Destination: ``*.zarr`` (a folder), ``*.nc``, or ``*.tif``.
    format
        Overrides the format told by the suffix.
    overwrite
        Replace an existing ``path`` (only once the new output is complete).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    OutputLockedError
        Another process (or thread) is writing ``path`` right now.
    StorageError
        The disk is full, read-only, or the folder is not writable (also an ``OSError``); the
        message names the path, the space needed and the fix. An earlier ``path`` is intact.
    ConfigError
        The format cannot be told from the suffix.
    DataTypeError
        ``obj`` is not an xarray object, or a COG is asked for several variables / other dims.

    Examples
    --------
    >>> import tempfile, glacierxr as gx
    >>> cube = gx.testing.make_scene_cube(times=2, height=4, width=4)
    >>> out = write(cube, Path(tempfile.mkdtemp()) / "cube.zarr")
    >>> read(out)["green"].shape
    (2, 4, 4)
    """
    if not isinstance(obj, (xr.Dataset, xr.DataArray)):
        raise DataTypeError(f"write() takes an xarray Dataset or DataArray, got {type(obj).__name__}.")
    path = Path(path)
    fmt = _format_of(path, format)
    if not path.parent.is_dir():
        raise ConfigError(f"The folder {str(path.parent)!r} does not exist; create it first.")
    with _safety.output_lock(path):
        _safety.clean_stale(path)  # partials of killed writes: no live writer holds them now
        if (path.exists() or path.is_symlink()) and not overwrite:
            raise OutputExistsError(
                f"{str(path)!r} already exists; write() does not replace outputs unless asked. "
                "Pass overwrite=True (--overwrite on the command line), or choose another path."
            )
        tmp = _safety.partial_path(path)
        try:
            with _safety.storage_errors(path, needed=int(obj.nbytes)):
                _write_to(obj, tmp, fmt)
                _safety.replace(tmp, path)
        except BaseException:
            _safety.discard(tmp)  # also what Dask tasks still running write after the failure
            raise
    return path


def _write_to(obj: xr.Dataset | xr.DataArray, tmp: Path, fmt: str) -> None:
    """Write ``obj`` to ``tmp`` in ``fmt`` (Zarr with consolidated metadata)."""
    if fmt == "cog":
        _write_cog(obj, tmp)
        return
    ds = _cf.to_dataset(obj)  # a DataArray's Conventions/source/history become global attrs
    if fmt == "netcdf":
        _write_netcdf(ds, tmp)
        return
    ds = _variable_length_strings(_regular_chunks(_clean_encoding(ds)))
    with warnings.catch_warnings():  # zarr 3 notes that consolidation is not in its spec yet
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        ds.to_zarr(tmp, mode="w-", consolidated=True)


_remove = _safety.remove


def read(
    path: str | os.PathLike,
    *,
    format: Literal["zarr", "netcdf", "cog"] | None = None,  # noqa: A002
    chunks: Mapping[str, int] | Literal["auto"] | None = {},  # noqa: B006 - xarray's idiom
) -> xr.Dataset | xr.DataArray:
    """Open what :func:`write` wrote, lazily (Dask-backed).

    Zarr and NetCDF give a Dataset; a COG gives a DataArray ``(time, y, x)`` with the times
    from its band descriptions (or ``(y, x)`` for one band without times). The CRS is in
    ``spatial_ref`` in every case.

    Raises
    ------
    OutputNotFoundError
        Nothing at ``path`` (also a ``FileNotFoundError``).

    Examples
    --------
    >>> import tempfile, glacierxr as gx
    >>> snow = gx.testing.make_series(np.ones((2, 3, 3)), name="snow_mask")
    >>> back = read(write(snow, Path(tempfile.mkdtemp()) / "snow.tif"))
    >>> back.dims, str(back["time"].values[1])[:10]
    (('time', 'y', 'x'), '2020-01-17')
    """
    path = Path(path)
    fmt = _format_of(path, format)
    if not path.exists():
        raise OutputNotFoundError(
            f"{str(path)!r} does not exist. Check the path; an interrupted write() leaves "
            "nothing there (run it again)."
        )
    if fmt in ("zarr", "netcdf"):
        if fmt == "zarr":
            ds = xr.open_zarr(path, chunks=chunks, consolidated=False, decode_coords="all")
        else:
            ds = xr.open_dataset(path, chunks=chunks, engine=_netcdf_engine(), decode_coords="all")
        strings = [n for n, v in ds.variables.items() if v.dtype.kind == "T" and n not in ds.dims]
        return ds.assign_coords({n: ds[n].astype(object) for n in strings if n in ds.coords})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", **_AFFINE_WARNING)  # rioxarray + affine 3
        da = rioxarray.open_rasterio(path, chunks=chunks, mask_and_scale=False)
    tags = da.attrs
    name = tags.get("name") or None
    times = [t for t in str(tags.get("time", "")).split(",") if t]
    if times and len(times) == da.sizes["band"]:
        da = da.rename(band="time").assign_coords(time=pd.DatetimeIndex(times).astype("datetime64[ns]"))
    elif da.sizes["band"] == 1:
        da = da.isel(band=0, drop=True)
    attrs = {k: tags[k] for k in ("units", "long_name") if tags.get(k)}
    da.attrs = attrs
    da.name = name
    return da
