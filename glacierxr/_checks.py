"""Validation shared by the per-scene OpenCV stages (align, flow): metadata only, never data."""

from __future__ import annotations

import xarray as xr

from glacierxr.errors import ChunkingError


def require_cv2(stage: str):
    """Import OpenCV, or say which package provides it."""
    try:
        import cv2
    except ImportError as error:  # pragma: no cover - opencv is a core dependency
        raise ImportError(
            f"glacierxr.{stage} needs OpenCV; install it with `pip install opencv-python-headless`."
        ) from error
    return cv2


def check_single_chunk(da: xr.DataArray, dims: tuple[str, ...], what: str, *, why: str) -> None:
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
