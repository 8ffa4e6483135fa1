"""Exceptions raised by glacierxr.

Every error glacierxr raises on purpose is a :class:`GlacierXRError`.  Each subclass also
inherits the builtin exception a Python user would expect (``KeyError`` for a missing band,
``ValueError`` for a wrong dimension ...), so ``except KeyError`` keeps working.

Messages follow one shape: what is wrong, what was found, how to fix it.
"""

from __future__ import annotations

__all__ = [
    "GlacierXRError",
    "NoScenesError",
    "NoPairsError",
    "MissingBandError",
    "DimensionError",
    "ChunkingError",
    "DataTypeError",
    "CatalogError",
    "AssetReadError",
    "GridError",
    "ModelError",
    "CheckpointError",
    "ConfigError",
    "OutputLockedError",
    "StorageError",
]


class GlacierXRError(Exception):
    """Base class of every error glacierxr raises on purpose."""

    def __str__(self) -> str:  # KeyError quotes its message; keep messages readable
        return str(self.args[0]) if self.args else ""


class NoScenesError(GlacierXRError, LookupError):
    """A search or a filter left no scene to work with."""


class NoPairsError(NoScenesError):
    """No pair of scenes passes the rules of a velocity cube (days apart, clear fraction)."""


class MissingBandError(GlacierXRError, KeyError):
    """A band / asset / variable the step needs is not there."""


class DimensionError(GlacierXRError, ValueError):
    """An array has the wrong dimensions, or a dimension is too short."""


class ChunkingError(DimensionError):
    """A core dimension is split across Dask chunks; the message names the ``.chunk`` fix."""


class DataTypeError(GlacierXRError, TypeError):
    """An input has the wrong type or dtype."""


class CatalogError(GlacierXRError, ValueError):
    """A STAC catalog, collection or API could not be used as asked."""


class AssetReadError(GlacierXRError, OSError):
    """A raster asset could not be read (unreachable, corrupt, refused). Names the href."""


class GridError(GlacierXRError, ValueError):
    """Grids do not match, or a bounding box does not overlap the data."""


class ModelError(GlacierXRError, ValueError):
    """Unknown model name or bad model arguments."""


class CheckpointError(GlacierXRError, ValueError):
    """A checkpoint is missing, corrupt or does not fit the model."""


class ConfigError(GlacierXRError, ValueError):
    """A configuration file or option is invalid."""


class OutputLockedError(GlacierXRError, OSError):
    """Another run is writing the same output right now (its lock is held)."""


class StorageError(GlacierXRError, OSError):
    """A write failed for want of space, on a read-only file system or for lack of permission.

    Names the path, the space needed where known, and the fix; ``errno`` is ``ENOSPC``,
    ``EROFS`` or ``EACCES`` and ``filename`` the path. What was there before is left intact.
    """
