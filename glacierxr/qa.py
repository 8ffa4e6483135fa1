"""Landsat Collection-2 ``QA_PIXEL`` decoding, per-scene missing fraction and scene dropping.

The ``QA_PIXEL`` band packs one flag per bit (see :data:`glacierxr.landsat.QA_BITS`).  Everything
here is elementwise bit arithmetic on the (possibly Dask-backed) array, so it stays lazy.  The only
place that computes anything is :func:`mask` with ``drop=True``: to know *which* scenes to drop it
computes the per-scene ``missing_fraction`` vector (one number per scene) and nothing else.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import dask
import numpy as np
import xarray as xr

from glacierxr._validate import require_dims
from glacierxr.errors import (
    ConfigError,
    DataTypeError,
    DimensionError,
    MissingBandError,
    NoScenesError,
)
from glacierxr.landsat import ASSET_ALIASES, DEFAULT_MASKED_FLAGS, QA_BITS, QA_FILL

__all__ = ["decode_qa", "qa_flags", "missing_fraction", "mask"]


def _check_flags(flags: str | Iterable[str]) -> tuple[str, ...]:
    """Validate flag names; return them as a tuple (a single string is one flag)."""
    if isinstance(flags, str):
        flags = (flags,)
    flags = tuple(flags)
    unknown = [f for f in flags if f not in QA_BITS]
    if unknown:
        raise ConfigError(
            f"Unknown QA_PIXEL flag(s) {unknown}. Valid flags: {list(QA_BITS)}. "
            f"Pass flags= with names from that list, e.g. flags={list(DEFAULT_MASKED_FLAGS)!r}."
        )
    return flags


def _as_integer_qa(qa: xr.DataArray) -> xr.DataArray:
    """QA as an unsigned integer array; NaN in a floating QA band is read as *fill* (bit 0)."""
    if np.issubdtype(qa.dtype, np.integer):
        return qa
    if np.issubdtype(qa.dtype, np.floating):
        # A QA band loaded with a NaN fill value: NaN means "no data", i.e. the fill bit.
        return qa.fillna(QA_FILL).astype(np.uint16)
    raise DataTypeError(
        f"QA band {qa.name!r} has dtype {qa.dtype}; QA_PIXEL must hold integers (uint16). "
        "Load it without scaling (no scale/offset applied to the QA band)."
    )


def decode_qa(qa: xr.DataArray, *, flags: str | Sequence[str] = DEFAULT_MASKED_FLAGS) -> xr.DataArray:
    """True where any of ``flags`` is set in a Landsat Collection-2 ``QA_PIXEL`` array.

    Parameters
    ----------
    qa
        ``QA_PIXEL`` values (any shape, integer dtype; a floating array is accepted and its NaN
        values are read as *fill*).
    flags
        Flag names from :data:`glacierxr.landsat.QA_BITS` (``fill``, ``dilated_cloud``,
        ``cirrus``, ``cloud``, ``cloud_shadow``, ``snow``, ``clear``, ``water``). Default: the
        flags :func:`mask` removes (everything cloud-like plus fill; snow and water are kept).

    Returns
    -------
    xarray.DataArray
        Boolean array ``qa_flagged`` with the coordinates of ``qa``; lazy if ``qa`` is.

    Raises
    ------
    ConfigError
        An unknown flag name (the message lists the valid ones).
    DataTypeError
        ``qa`` is neither integer nor floating.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> qa = xr.DataArray(np.array([1 << 6, 1 << 3, (1 << 5) | (1 << 6), 1], dtype="uint16"))
    >>> decode_qa(qa).values.tolist()
    [False, True, False, True]
    >>> decode_qa(qa, flags="snow").values.tolist()
    [False, False, True, False]
    """
    if not isinstance(qa, xr.DataArray):
        raise DataTypeError(f"decode_qa expects an xarray.DataArray, got {type(qa).__name__}.")
    flags = _check_flags(flags)
    bitmask = 0
    for flag in flags:
        bitmask |= 1 << QA_BITS[flag]
    values = _as_integer_qa(qa)
    flagged = (values & bitmask) != 0
    flagged.name = "qa_flagged"
    flagged.attrs = {
        "units": "1",
        "long_name": "QA_PIXEL flag set (" + ", ".join(flags) + ")",
        "flags": " ".join(flags),
    }
    return flagged


def qa_flags(qa: xr.DataArray) -> xr.Dataset:
    """Every single-bit ``QA_PIXEL`` flag as its own boolean variable.

    Parameters
    ----------
    qa
        ``QA_PIXEL`` values (integer dtype; NaN in a floating array is read as *fill*).

    Returns
    -------
    xarray.Dataset
        One boolean variable per name in :data:`glacierxr.landsat.QA_BITS`, lazy if ``qa`` is.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> qa = xr.DataArray(np.array([(1 << 5) | (1 << 6)], dtype="uint16"), dims="x")
    >>> flags = qa_flags(qa)
    >>> [name for name in flags.data_vars if bool(flags[name][0])]
    ['snow', 'clear']
    """
    if not isinstance(qa, xr.DataArray):
        raise DataTypeError(f"qa_flags expects an xarray.DataArray, got {type(qa).__name__}.")
    values = _as_integer_qa(qa)
    out = {}
    for flag, bit in QA_BITS.items():
        var = ((values & (1 << bit)) != 0).reset_coords(drop=True)
        var.attrs = {"units": "1", "long_name": f"QA_PIXEL bit {bit}: {flag.replace('_', ' ')}"}
        out[flag] = var
    return xr.Dataset(out, coords=qa.coords)


def missing_fraction(
    data: xr.DataArray | xr.Dataset,
    *,
    bands: Sequence[Hashable] | None = None,
    y_dim: Hashable = "y",
    x_dim: Hashable = "x",
) -> xr.DataArray:
    """Fraction (0–1) of NaN pixels in each ``(y, x)`` slice; lazy.

    For a Dataset a pixel counts as missing where *any* of ``bands`` (default: every variable
    with both spatial dimensions) is NaN.

    Parameters
    ----------
    data
        A DataArray or Dataset with dimensions ``y_dim`` and ``x_dim``.
    bands
        Variables of a Dataset to look at (ignored for a DataArray).
    y_dim, x_dim
        Names of the spatial dimensions.

    Returns
    -------
    xarray.DataArray
        ``missing_fraction`` over the remaining dimensions (usually ``time``).

    Raises
    ------
    DimensionError
        A spatial dimension is missing.
    MissingBandError
        A name in ``bands`` is not in the Dataset.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray([[[1.0, np.nan], [np.nan, np.nan]]], dims=("time", "y", "x"))
    >>> missing_fraction(da).values.tolist()
    [0.75]
    """
    if isinstance(data, xr.Dataset):
        if bands is None:
            bands = [n for n, v in data.data_vars.items() if y_dim in v.dims and x_dim in v.dims]
        _check_bands_exist(data, bands, parameter="bands")
        if not bands:
            raise MissingBandError(
                f"No variable with dimensions ({y_dim!r}, {x_dim!r}) found. "
                f"Available: {_describe_vars(data)}. Pass bands= or y_dim=/x_dim=."
            )
        missing = None
        for band in bands:
            require_dims(data[band], (y_dim, x_dim), what=f"Band {band!r}")
            isnull = data[band].isnull()
            missing = isnull if missing is None else missing | isnull
    elif isinstance(data, xr.DataArray):
        require_dims(data, (y_dim, x_dim), what=f"Array {data.name!r}")
        missing = data.isnull()
    else:
        raise DataTypeError(
            f"missing_fraction expects an xarray DataArray or Dataset, got {type(data).__name__}."
        )
    fraction = missing.mean((y_dim, x_dim))
    fraction.name = "missing_fraction"
    fraction.attrs = {"units": "1", "long_name": "fraction of missing (masked or NaN) pixels"}
    return fraction


def _describe_vars(ds: xr.Dataset) -> list[str]:
    return [str(n) for n in ds.data_vars]


def _check_bands_exist(ds: xr.Dataset, bands: Iterable[Hashable], *, parameter: str) -> None:
    for band in bands:
        if band not in ds.data_vars:
            raise MissingBandError(
                f"Band {band!r} not found. Available: {_describe_vars(ds)}. "
                f"Pass {parameter}= with names from that list."
            )


def _passthrough(da: xr.DataArray) -> xr.DataArray:
    """``da`` behind one cheap copy task per chunk, when Dask-backed.

    :func:`mask` returns the QA variable and bands computed from it. If the returned QA
    variable were the very array the bands are computed from, one output variable would be an
    intermediate of another, a pattern that makes ``dask.compute(ds)`` fail
    (pydata/xarray#11329). A copy layer on top keeps the two apart; nothing is computed.
    """
    if not dask.is_dask_collection(da.data):
        return da
    return da.copy(data=da.data.map_blocks(np.copy, dtype=da.dtype, name=f"passthrough-{da.data.name}"))


def _missing_fraction(ds, flagged, *, bands, y_dim, x_dim) -> xr.DataArray:
    """Per-scene fraction of pixels flagged in QA or NaN in any band, from the inputs; lazy."""
    missing = flagged
    for band in bands:
        missing = missing | ds[band].isnull().reset_coords(drop=True)
    return missing.mean((y_dim, x_dim))


def mask(
    ds: xr.Dataset,
    *,
    max_missing: float = 0.5,
    drop: bool = True,
    flags: str | Sequence[str] = DEFAULT_MASKED_FLAGS,
    qa: Hashable = "qa_pixel",
    bands: Sequence[Hashable] | None = None,
    time_dim: Hashable = "time",
    y_dim: Hashable = "y",
    x_dim: Hashable = "x",
) -> xr.Dataset:
    """Set QA-flagged pixels to NaN and drop scenes with too many missing pixels.

    Pixels where any of ``flags`` is set in the QA band become NaN in every reflectance band.
    A pixel counts as *missing* where it is flagged or where any band is already NaN; the
    per-scene ``missing_fraction`` (0–1) is attached as a coordinate along ``time_dim``.

    Laziness: with ``drop=False`` nothing is computed. With ``drop=True`` the function must
    know which scenes to keep, so it computes exactly one thing: the per-scene
    ``missing_fraction`` vector (one Dask compute; it reads the QA band and the bands' NaN
    pattern once). The masked bands themselves stay lazy.

    Parameters
    ----------
    ds
        Cube ``(time, y, x)`` like :func:`glacierxr.load` output.
    max_missing
        Scenes with ``missing_fraction > max_missing`` are dropped (when ``drop``).
    drop
        Drop scenes over ``max_missing``. ``False`` keeps every scene and computes nothing.
    flags
        QA_PIXEL flags to mask (names of :data:`glacierxr.landsat.QA_BITS`). Default: fill,
        dilated cloud, cirrus, cloud, cloud shadow — snow and water are never masked by default.
    qa
        Name of the QA_PIXEL variable; it is kept unchanged in the output.
    bands
        Variables to mask. Default: every other variable with dimensions
        ``(time_dim, y_dim, x_dim)``; other variables pass through untouched.
    time_dim, y_dim, x_dim
        Dimension names.

    Returns
    -------
    xarray.Dataset
        Same variables, masked pixels NaN, coordinate ``missing_fraction`` along ``time_dim``;
        attrs ``masked_flags`` (blank-separated, like CF ``flag_meanings``), ``max_missing``
        and ``dropped_scenes`` (0 when ``drop=False``). When scenes were dropped and ``ds``
        has an ``id`` coordinate, ``dropped_scene_ids`` lists their ids (blank-separated).
        When assets loaded with ``glacierxr.load(..., on_error="skip")`` could not be read
        while the missing fractions were computed (local schedulers), ``unreadable_assets``
        lists their hrefs (blank-separated, without tokens): such a scene reads as missing
        and is dropped like a cloudy one.

    Raises
    ------
    MissingBandError
        The QA band (or a name in ``bands``) is not in ``ds``.
    DimensionError
        The QA band or a band lacks ``time_dim``, ``y_dim`` or ``x_dim``.
    ConfigError
        Unknown flag name, or ``max_missing`` outside [0, 1].
    NoScenesError
        ``ds`` has no scene, or every scene is over ``max_missing``.

    Examples
    --------
    >>> from glacierxr.testing import make_scene_cube
    >>> cube = make_scene_cube(times=3, height=8, width=8, cloud_fraction=0.1)
    >>> masked = mask(cube, max_missing=0.9)
    >>> masked.sizes["time"], masked.attrs["masked_flags"].split()[0]
    (3, 'fill')
    >>> float(masked.missing_fraction.min()) >= 1 / 8  # the nodata edge is one column of 8
    True
    """
    dims = (time_dim, y_dim, x_dim)
    flags, bands = _check_mask(ds, flags=flags, max_missing=max_missing, qa=qa, bands=bands, dims=dims)
    kept, fraction, dropped = ds, None, {}
    if drop:
        kept, fraction, dropped = _drop_scenes(ds, flags=flags, max_missing=max_missing, qa=qa,
                                               bands=bands, dims=dims)
    flagged = decode_qa(kept[qa].reset_coords(drop=True), flags=flags)
    out = kept.copy()
    out[qa] = _passthrough(kept[qa])
    for band in bands:
        out[band] = kept[band].where(~flagged)
    if fraction is None:
        # Built from the inputs and the same decoded flags, not from the masked bands: no output
        # variable may be an intermediate of another (see _passthrough).
        fraction = _missing_fraction(kept, flagged, bands=bands, y_dim=y_dim, x_dim=x_dim)
    out = out.assign_coords(missing_fraction=fraction.assign_attrs(_MASK_ATTRS["missing_fraction"]))
    out.attrs = {**ds.attrs, "masked_flags": " ".join(flags), "max_missing": float(max_missing),
                 "dropped_scenes": 0, **dropped}
    return out


# Output metadata of mask(), in one place.
_MASK_ATTRS = {
    "missing_fraction": {"units": "1", "long_name": "fraction of masked or missing pixels in the scene"},
}


def _check_mask(ds, *, flags, max_missing, qa, bands, dims) -> tuple[tuple[str, ...], list]:
    """Validate :func:`mask`'s inputs (metadata only); return the flags and the bands to mask."""
    if not isinstance(ds, xr.Dataset):
        raise DataTypeError(
            f"mask expects an xarray.Dataset with reflectance bands and a QA band, got "
            f"{type(ds).__name__}."
        )
    flags = _check_flags(flags)
    if not (0.0 <= float(max_missing) <= 1.0):
        raise ConfigError(
            f"max_missing must be a fraction in [0, 1]; got {max_missing!r}. "
            "Use e.g. max_missing=0.5 to drop scenes with more than half their pixels missing."
        )
    if qa not in ds.data_vars:
        hint = next((k for k in ASSET_ALIASES["qa_pixel"] if k in ds.data_vars), None)
        fix = f"Pass qa={hint!r}." if hint else "Pass qa= with the name of the QA_PIXEL band."
        raise MissingBandError(f"QA band {qa!r} not found. Available: {_describe_vars(ds)}. {fix}")
    require_dims(ds[qa], dims, what=f"QA band {qa!r}")
    bands = _bands_to_mask(ds, bands, qa=qa, dims=dims)
    time_dim = dims[0]
    if ds.sizes[time_dim] == 0:
        raise NoScenesError(
            f"The cube has no scene (dimension {time_dim!r} has length 0). "
            "Widen the search (dates, bbox, max_cloud) before masking."
        )
    if ds[bands[0]].isel({dims[1]: 0, dims[2]: 0}, drop=True).dims != (time_dim,):
        raise DimensionError(
            f"missing_fraction must be one number per scene, but the bands have dimensions "
            f"{list(ds[bands[0]].dims)}. Select or stack the extra dimensions first."
        )
    return flags, bands


def _bands_to_mask(ds: xr.Dataset, bands, *, qa, dims) -> list:
    if bands is None:
        bands = [n for n, v in ds.data_vars.items() if n != qa and all(d in v.dims for d in dims)]
        if not bands:
            raise MissingBandError(
                f"No band to mask: no variable other than {qa!r} has dimensions {list(dims)}. "
                f"Available: {_describe_vars(ds)}. Pass bands= with the reflectance bands."
            )
    else:
        bands = list(bands)
        _check_bands_exist(ds, bands, parameter="bands")
    for band in bands:
        require_dims(ds[band], dims, what=f"Band {band!r}")
    return bands


def _drop_scenes(ds, *, flags, max_missing, qa, bands, dims) -> tuple[xr.Dataset, xr.DataArray, dict]:
    """Keep the scenes with ``missing_fraction <= max_missing``: the one, small, per-scene compute.

    The scenes are selected on the *inputs*, so the returned graph is as simple as without
    dropping. Returns the kept cube, its fractions and the attrs that record what was dropped.
    """
    time_dim, y_dim, x_dim = dims
    flagged = decode_qa(ds[qa].reset_coords(drop=True), flags=flags)
    fraction = _missing_fraction(ds, flagged, bands=bands, y_dim=y_dim, x_dim=x_dim)
    unreadable: list[str] = []
    if dask.is_dask_collection(fraction.data):
        with _SkippedAssets() as skipped:
            (values,) = dask.compute(fraction.data)
        unreadable = skipped.hrefs
    else:
        values = np.asarray(fraction.data)
    keep = values <= max_missing
    if not keep.any():
        raise NoScenesError(
            f"All {values.size} scenes have more than max_missing={max_missing} of their "
            f"pixels missing (lowest missing_fraction: {np.nanmin(values):.3f}). "
            "Raise max_missing (e.g. max_missing=0.8), mask fewer flags, or widen the search."
        )
    dropped = int((~keep).sum())
    attrs: dict = {"dropped_scenes": dropped}
    if dropped and "id" in ds.coords and ds["id"].dims == (time_dim,):
        attrs["dropped_scene_ids"] = " ".join(str(v) for v in np.asarray(ds["id"].values)[~keep])
    if unreadable:
        attrs["unreadable_assets"] = " ".join(unreadable)
    if dropped:
        ds = ds.isel({time_dim: np.flatnonzero(keep)})
    return ds, xr.DataArray(values[keep], dims=time_dim), attrs


class _SkippedAssets:
    """Collect the hrefs of :class:`glacierxr.io.SkippedAssetWarning` raised while computing.

    ``load(..., on_error="skip")`` reads an asset that cannot be read as nodata and warns once
    per asset (at compute time, in the threads of the local scheduler). Every warning caught
    here is emitted again on exit, so the user still sees it; the hrefs (already without
    tokens) are kept in ``hrefs``. Warnings raised inside ``dask.distributed`` workers do not
    reach this process; there the scene still reads as missing and is dropped.
    """

    def __enter__(self) -> _SkippedAssets:
        import warnings

        self.hrefs: list[str] = []
        self._context = warnings.catch_warnings(record=True)
        self._caught = self._context.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc) -> None:
        import warnings

        self._context.__exit__(*exc)
        for record in self._caught:
            href = getattr(record.message, "href", None)
            if type(record.message).__name__ == "SkippedAssetWarning" and href:
                if href not in self.hrefs:
                    self.hrefs.append(str(href))
            warnings.warn_explicit(record.message, record.category, record.filename, record.lineno)
