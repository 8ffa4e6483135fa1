"""Patch sequences of a ``(time, y, x)`` cube, streamed to PyTorch without leakage between splits.

A *sequence* (a *window*) is ``input_steps + target_steps`` consecutive periods of one
``patch × patch`` square of the scene: the model sees the first ``input_steps`` frames and is
scored on the last ``target_steps``. Windows step by one period in time and by ``stride`` pixels
in space, as in the seed paper (4 → 4 composites, 50 × 50 px patches, stride 10).

How the windows are enumerated
------------------------------
The start offsets along each dimension are those of xbatcher's :class:`xbatcher.BatchSchema`
with ``input_dims={time: L, y: patch, x: patch}`` and
``input_overlap={time: L - 1, y: patch - stride, x: patch - stride}`` (``L = input_steps +
target_steps``). xbatcher drops the last, incomplete window of a dimension; here one more
window is added flush with the scene edge, so every pixel of the scene is in at least one
window. The number of sequences is ``n_time_windows × n_y × n_x`` with
``n_time_windows = n_time − L + 1`` and ``n_y = ceil((height − patch) / stride) + 1``.

How they are streamed
---------------------
Plain xbatcher + ``DataLoader`` slices an xarray object for every sample (and builds all its
selectors up front), which is slow. :class:`PatchSequences` instead reads one *tile* of the cube
at a time — every period the split needs, for a spatial block aligned to the Dask chunks and
kept under ``tile_mb`` MB — into NumPy, and cuts all the windows of that tile from it with
:func:`numpy.lib.stride_tricks.sliding_window_view`. At most ``shuffle_tiles`` tiles are in
memory, so a cube far larger than memory streams in bounded memory, and nothing is read before
iteration starts.

Speed: ``DataLoader(ds.split("train"), batch_size=64)`` works and is about ten times faster than
xbatcher + ``DataLoader``; most of what is left is the ``DataLoader`` collating single samples,
so ``DataLoader(ds.split("train").batched(64), batch_size=None)`` is about twice as fast again
(``benchmarks/patches.py`` measures both). A cube chunked one scene per chunk (as ``stackstac``
returns it) is read once per tile; rechunk it to spatial blocks (``.chunk({"time": -1, "y":
256, "x": 256})``) or write the composites to Zarr first when reading is the bottleneck.

Splits without leakage
----------------------
``split="temporal"`` (default) gives the latest periods to ``test``, the ones before to ``val``
and the rest to ``train``; a window belongs to a split only when **all** its input and target
periods lie in that split's time range (windows straddling a boundary are not used), so no
pixel-time of a test target is ever seen in training, not even as an input. ``buffer`` periods
between the ranges are left out as a gap. ``split="spatial"`` assigns square blocks of the scene
to the splits at random (seeded) and leaves out a band of ``buffer`` pixels (default one patch)
between blocks of different splits; windows touching the band are not used. ``split="random"``
assigns windows to splits at random like the seed paper did; overlapping windows then share
pixel-times between train and test, so it leaks and is only there for comparison.

Normalisation
-------------
Snow masks are already in ``[0, 1]``, so by default (``normalize=None``) values pass unchanged.
``normalize="auto"`` computes the mean and standard deviation of the valid pixels of the pixel-
times covered by the *training* windows, with a streaming Dask reduction, the first time they
are needed (first iteration, first sample, or reading :attr:`PatchSequences.normalization`);
``normalize=(mean, std)`` uses given values. Inputs and targets are ``(value − mean) / std``;
:meth:`PatchSequences.denormalize` maps predictions back. Missing input values become ``0`` after
normalisation (the training mean); missing target values become ``0`` too, and the
``valid_mask`` is ``0`` there, so a masked loss never sees them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

from glacierxr._validate import require_series, require_torch
from glacierxr.errors import ConfigError, DataTypeError, DimensionError, MissingBandError

torch = require_torch("glacierxr.ml.patches")
from torch.utils.data import IterableDataset  # noqa: E402

__all__ = ["PatchSequences", "window_starts", "count_sequences"]

SplitName = Literal["train", "val", "test"]
_SPLITS: tuple[str, ...] = ("train", "val", "test")
_UNUSED = "unused"


# --------------------------------------------------------------------------------------------
# window enumeration
# --------------------------------------------------------------------------------------------
def window_starts(length: int, size: int, stride: int, *, dim: str = "dim") -> np.ndarray:
    """Start offsets of windows of ``size`` along a dimension of ``length``, the last flush with the edge.

    The regular offsets ``0, stride, 2 stride …`` are xbatcher's (a
    :class:`xbatcher.BatchSchema` over a coordinate-only template of that length); when they do
    not reach the edge, ``length − size`` is appended so no position is left uncovered.

    Examples
    --------
    >>> window_starts(23, 5, 3).tolist()
    [0, 3, 6, 9, 12, 15, 18]
    >>> window_starts(24, 5, 3).tolist()
    [0, 3, 6, 9, 12, 15, 18, 19]
    """
    import xbatcher

    if size > length:
        raise DimensionError(f"A window of {size} does not fit in {dim!r} of length {length}.")
    template = xr.Dataset(coords={dim: np.arange(length)})
    schema = xbatcher.BatchSchema(
        template, input_dims={dim: size}, input_overlap={dim: size - stride}, concat_input_bins=False
    )
    starts = [selectors[0][dim].start for selectors in schema.selectors.values()]
    if starts[-1] != length - size:
        starts.append(length - size)
    return np.asarray(starts, dtype=np.int64)


def count_sequences(
    n_time: int, height: int, width: int, *, input_steps: int = 4, target_steps: int = 4, patch: int = 50,
    stride: int = 10,
) -> int:
    """Number of sequences a cube yields before any split: time windows × spatial windows.

    Examples
    --------
    The seed paper's 800 × 800 px scenes, 50 px patches at stride 10 and 96 monthly periods:

    >>> count_sequences(96, 800, 800)
    514064
    """
    steps = input_steps + target_steps
    n_time_windows = max(n_time - steps + 1, 0)
    n_y = math.ceil((height - patch) / stride) + 1
    n_x = math.ceil((width - patch) / stride) + 1
    return n_time_windows * n_y * n_x


# --------------------------------------------------------------------------------------------
# shared state
# --------------------------------------------------------------------------------------------
def _layout_field(name: str, doc: str) -> property:
    """A read-only attribute of :class:`PatchSequences` read from the layout its views share."""
    return property(lambda self: getattr(self._layout, name), doc=doc)


@dataclass
class _Layout:
    """Everything the views of one :class:`PatchSequences` share (cube, windows, splits, statistics)."""

    data: xr.DataArray  # (time, y, x)
    valid: xr.DataArray | None  # observed mask source (bool-like), dims a subset of (time, y, x)
    valid_name: str | None
    input_steps: int
    target_steps: int
    patch: int
    stride: int
    split_mode: str
    fractions: dict[str, float]
    buffer: int
    block_size: int | None
    seed: int
    tile_mb: float
    shuffle_tiles: int
    t_starts: np.ndarray
    y_starts: np.ndarray
    x_starts: np.ndarray
    dims: tuple[str, str, str]
    split_ids: dict[str, np.ndarray] = field(default_factory=dict)
    split_info: dict[str, Any] = field(default_factory=dict)
    normalize: Any = None
    stats: tuple[float, float] | None = None

    @property
    def steps(self) -> int:
        return self.input_steps + self.target_steps

    @property
    def n_spatial(self) -> int:
        return len(self.y_starts) * len(self.x_starts)

    def decompose(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Window ids → ``(t0, y0, x0)`` offsets."""
        t_index, spatial = np.divmod(ids, self.n_spatial)
        y_index, x_index = np.divmod(spatial, len(self.x_starts))
        return self.t_starts[t_index], self.y_starts[y_index], self.x_starts[x_index]


class _Batch(NamedTuple):
    """One batch from :meth:`PatchSequences._stream`.

    ``arrays`` is ``(inputs, targets, valid_mask)`` — normalised, NaN-free float32 arrays
    ``(B, T, 1, P, P)`` — when streaming for training, or ``(raw, valid)`` — data units with NaN
    kept, ``(B, history + steps, P, P)`` float32 and bool — when streaming raw windows.
    """

    arrays: tuple[np.ndarray, ...]
    ids: np.ndarray  # (B,) window ids
    positions: np.ndarray  # (B,) positions in the view's canonical order
    has_history: np.ndarray  # (B,) bool: all ``history`` periods before the window exist


# --------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------
class PatchSequences(IterableDataset):
    """Sequences of patches of a ``(time, y, x)`` cube for forecasting, streamed to PyTorch.

    Each sample is ``(inputs, targets, valid_mask)``, float32 tensors shaped
    ``(input_steps, 1, patch, patch)``, ``(target_steps, 1, patch, patch)`` and
    ``(target_steps, 1, patch, patch)`` (``valid_mask`` is 1 where the target pixel is a real
    observation, 0 where it is missing or was gap-filled). It is a
    :class:`torch.utils.data.IterableDataset` (give it to a ``DataLoader`` without ``shuffle``:
    training views shuffle themselves, seeded, differently each epoch) that also supports
    ``len()`` and random access ``ds[i]``.

    Parameters
    ----------
    da : xarray.DataArray
        ``(time, y, x)`` cube, typically 3-monthly snow-mask composites; NumPy- or Dask-backed
        (nothing is read until iteration). A boolean ``observed`` or integer
        ``observation_count`` coordinate, where present, marks the real observations.
    input_steps, target_steps : int
        Periods the model sees and periods it predicts.
    patch : int
        Side of the square patches, in pixels.
    stride : int
        Step between neighbouring patches, in pixels (``1 ≤ stride ≤ patch``).
    split : {"temporal", "spatial", "random"}
        How windows are assigned to ``train`` / ``val`` / ``test`` (see the module docstring).
        ``"random"`` leaks and is only for comparing with the seed paper.
    val_fraction, test_fraction : float
        Share of periods (temporal), of blocks (spatial) or of windows (random) for each split.
        For ``"temporal"``, a split with a non-zero fraction gets at least ``input_steps +
        target_steps`` periods so it holds at least one sequence.
    buffer : int, optional
        Gap between splits: periods for ``"temporal"`` (default 0), pixels for ``"spatial"``
        (default ``patch``). Not used by ``"random"``.
    block_size : int, optional
        Side of the square blocks of ``"spatial"``, in pixels (default ``4 × patch``).
    normalize : None, "auto" or (mean, std)
        See the module docstring. Default none: snow masks are already in ``[0, 1]``.
    valid_coord : str or None
        Coordinate marking real observations: ``"auto"`` uses ``observed`` (bool) or else
        ``observation_count`` (> 0) where present; ``None`` uses only ``~isnan``.
    time_dim, y_dim, x_dim : str
        Dimension names.
    seed : int
        Seed of the spatial/random assignment and of the shuffling.
    shuffle : bool, optional
        Shuffle while iterating; default ``True`` for the ``train`` view only.
    tile_mb : float
        Memory budget of one tile read at a time (data + mask), in MB.
    shuffle_tiles : int
        Tiles held in memory and shuffled together while shuffling.

    Raises
    ------
    DimensionError
        If the array is not ``(time, y, x)``, the patch is larger than the scene, or there are
        fewer periods than a sequence (or a split) needs.
    ConfigError
        If an option is out of range.
    DataTypeError
        If ``da`` is not a numeric DataArray.

    Examples
    --------
    >>> import numpy as np
    >>> from glacierxr.testing import make_series

    Ten years of 3-monthly composites, 40 × 40 px:

    >>> cube = make_series(np.random.default_rng(0).random((40, 40, 40)), freq="QS")
    >>> ds = PatchSequences(cube, patch=20, stride=10)
    >>> ds.split_info["time_ranges"]
    {'train': (0, 24), 'val': (24, 32), 'test': (32, 40)}
    >>> len(ds), len(ds.split("train")), len(ds.split("val")), len(ds.split("test"))
    (297, 153, 9, 9)
    >>> inputs, targets, valid = ds.split("train")[0]
    >>> tuple(inputs.shape), tuple(targets.shape), tuple(valid.shape)
    ((4, 1, 20, 20), (4, 1, 20, 20), (4, 1, 20, 20))
    """

    def __init__(
        self,
        da: xr.DataArray,
        *,
        input_steps: int = 4,
        target_steps: int = 4,
        patch: int = 50,
        stride: int = 10,
        split: Literal["temporal", "spatial", "random"] = "temporal",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        buffer: int | None = None,
        block_size: int | None = None,
        normalize: None | Literal["auto"] | tuple[float, float] = None,
        valid_coord: str | None = "auto",
        time_dim: str = "time",
        y_dim: str = "y",
        x_dim: str = "x",
        seed: int = 0,
        shuffle: bool | None = None,
        tile_mb: float = 16.0,
        shuffle_tiles: int = 2,
    ) -> None:
        super().__init__()
        data, valid, valid_name = _check_cube(da, time_dim, y_dim, x_dim, valid_coord)
        _check_options(input_steps, target_steps, patch, stride, val_fraction, test_fraction, tile_mb, shuffle_tiles)
        n_time, height, width = (data.sizes[d] for d in (time_dim, y_dim, x_dim))
        steps = input_steps + target_steps
        if patch > height or patch > width:
            raise DimensionError(
                f"The patch ({patch} × {patch} px) is larger than the scene ({y_dim}={height}, "
                f"{x_dim}={width} px). Pass patch <= {min(height, width)} or use a larger scene."
            )
        if n_time < steps:
            raise DimensionError(
                f"The cube has {n_time} periods along {time_dim!r} but a sequence needs {steps} "
                f"({input_steps} input + {target_steps} target). Use a longer period, shorter "
                "composites or fewer steps."
            )
        if split not in ("temporal", "spatial", "random"):
            raise ConfigError(f"split must be 'temporal', 'spatial' or 'random', got {split!r}.")
        if split == "random" and buffer is not None:
            raise ConfigError("buffer has no meaning for split='random'; leave it None.")
        if buffer is None:
            buffer = patch if split == "spatial" else 0
        if buffer < 0:
            raise ConfigError(f"buffer must be >= 0, got {buffer}.")
        self._layout = _Layout(
            data=data,
            valid=valid,
            valid_name=valid_name,
            input_steps=int(input_steps),
            target_steps=int(target_steps),
            patch=int(patch),
            stride=int(stride),
            split_mode=split,
            fractions={"val": float(val_fraction), "test": float(test_fraction)},
            buffer=int(buffer),
            block_size=None if block_size is None else int(block_size),
            seed=int(seed),
            tile_mb=float(tile_mb),
            shuffle_tiles=int(shuffle_tiles),
            t_starts=window_starts(n_time, steps, 1, dim=time_dim),
            y_starts=window_starts(height, patch, stride, dim=y_dim),
            x_starts=window_starts(width, patch, stride, dim=x_dim),
            dims=(time_dim, y_dim, x_dim),
        )
        self._layout.normalize = _check_normalize(normalize)
        if isinstance(self._layout.normalize, tuple):
            self._layout.stats = self._layout.normalize
        _assign_splits(self._layout)
        n_all = len(self._layout.t_starts) * self._layout.n_spatial
        self._init_view("all", np.arange(n_all, dtype=np.int64), shuffle=bool(shuffle))

    # ---------------------------------------------------------------------------------- views
    def _init_view(self, name: str, ids: np.ndarray, *, shuffle: bool) -> None:
        self.name = name
        self.shuffle = shuffle
        self._epoch: int | None = None
        self._auto_epoch = 0
        self._tile_shape = _tile_shape(self._layout, ids)
        keys = _tile_keys(self._layout, ids, self._tile_shape)
        order = np.lexsort((ids, keys))
        self._ids = ids[order]
        self._keys = keys[order]
        self._windows: pd.DataFrame | None = None

    def split(self, name: SplitName, *, shuffle: bool | None = None) -> PatchSequences:
        """The ``"train"``, ``"val"`` or ``"test"`` view (shares the cube and the statistics).

        ``shuffle`` defaults to ``True`` for ``"train"`` and ``False`` otherwise.
        """
        if name not in _SPLITS:
            raise ConfigError(f"Unknown split {name!r}; choose one of {list(_SPLITS)}.")
        view = object.__new__(type(self))
        IterableDataset.__init__(view)
        view._layout = self._layout
        view._init_view(name, self._layout.split_ids[name], shuffle=(name == "train") if shuffle is None else shuffle)
        return view

    # ------------------------------------------------------------------------------ metadata
    data = _layout_field("data", "The ``(time, y, x)`` cube the windows are cut from (lazy, as given).")
    input_steps = _layout_field("input_steps", "Periods of the inputs of a sequence.")
    target_steps = _layout_field("target_steps", "Periods of the targets of a sequence.")
    patch = _layout_field("patch", "Side of the square patches, in pixels.")
    stride = _layout_field("stride", "Pixels between the corners of neighbouring patches.")
    split_mode = _layout_field("split_mode", '``"temporal"``, ``"spatial"`` or ``"random"``.')

    @property
    def split_info(self) -> dict[str, Any]:
        """How the splits were made: time ranges (temporal) or block labels (spatial)."""
        return dict(self._layout.split_info)

    @property
    def window_ids(self) -> np.ndarray:
        """Window ids of this view, in iteration order when not shuffling (a copy)."""
        return self._ids.copy()

    def __len__(self) -> int:
        return int(self._ids.size)

    def __repr__(self) -> str:
        t, y, x = self._layout.dims
        data = self._layout.data
        return (
            f"<PatchSequences {self.name!r}: {len(self)} sequences of {self.input_steps} → "
            f"{self.target_steps} periods, {self.patch}×{self.patch} px, stride {self.stride}; "
            f"cube {t}={data.sizes[t]}, {y}={data.sizes[y]}, {x}={data.sizes[x]}; "
            f"split={self.split_mode!r}>"
        )

    @property
    def windows(self) -> pd.DataFrame:
        """One row per sequence of this view, in order: where and when each one was cut.

        Columns ``window`` (id), ``t0`` (index of the first input period), ``time`` (its label),
        ``target_time`` (label of the first target period), ``y0``, ``x0`` (pixel offsets of the
        patch's upper-left corner), ``y``, ``x`` (coordinates of that pixel) and ``split``.
        """
        if self._windows is None:
            layout = self._layout
            t0, y0, x0 = layout.decompose(self._ids)
            time_dim, y_dim, x_dim = layout.dims
            times = layout.data[time_dim].to_index()
            self._windows = pd.DataFrame(
                {
                    "window": self._ids,
                    "t0": t0,
                    "time": times[t0],
                    "target_time": times[t0 + layout.input_steps],
                    "y0": y0,
                    "x0": x0,
                    y_dim: np.asarray(layout.data[y_dim])[y0],
                    x_dim: np.asarray(layout.data[x_dim])[x0],
                    "split": pd.Categorical(_split_labels(layout, self._ids), categories=[*_SPLITS, _UNUSED]),
                }
            )
        return self._windows

    def sample_coords(self, index: int) -> dict[str, Any]:
        """Where and when sample ``index`` comes from.

        Returns a dict with ``window``, ``t0``, ``y0``, ``x0``, ``split``, ``input_times``,
        ``target_times`` (time labels) and the ``y``/``x`` coordinate labels of the patch.
        """
        window = int(self._ids[self._check_index(index)])
        layout = self._layout
        t0, y0, x0 = (int(v[0]) for v in layout.decompose(np.array([window])))
        time_dim, y_dim, x_dim = layout.dims
        times = layout.data[time_dim].to_index()
        return {
            "window": window,
            "t0": t0,
            "y0": y0,
            "x0": x0,
            "split": str(_split_labels(layout, np.array([window]))[0]),
            "input_times": times[t0 : t0 + layout.input_steps],
            "target_times": times[t0 + layout.input_steps : t0 + layout.steps],
            y_dim: np.asarray(layout.data[y_dim])[y0 : y0 + layout.patch],
            x_dim: np.asarray(layout.data[x_dim])[x0 : x0 + layout.patch],
        }

    # ------------------------------------------------------------------------- normalisation
    @property
    def normalization(self) -> dict[str, float] | None:
        """``{"mean": m, "std": s}`` applied to inputs and targets, or ``None``.

        With ``normalize="auto"`` this computes the training statistics on first access.
        """
        stats = self._stats()
        return None if stats is None else {"mean": stats[0], "std": stats[1]}

    def _stats(self) -> tuple[float, float] | None:
        layout = self._layout
        if layout.stats is None and layout.normalize == "auto":
            layout.stats = _train_statistics(layout)
        return layout.stats

    def denormalize(self, values):
        """Map normalised values (NumPy array, tensor or DataArray) back to data units."""
        stats = self._stats()
        if stats is None:
            return values
        return values * stats[1] + stats[0]

    def normalize_values(self, values):
        """Normalise values in data units the way inputs and targets are (NaN stays NaN)."""
        stats = self._stats()
        if stats is None:
            return values
        return (values - stats[0]) / stats[1]

    # --------------------------------------------------------------------------- random access
    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"Sample {index} out of range for {n} sequences in split {self.name!r}.")
        return index % n

    def __getitem__(self, index: int):
        """Sample ``index`` (read directly from the cube; iteration is much faster for many)."""
        if isinstance(index, (np.integer, torch.Tensor)):
            index = int(index)
        position = self._check_index(index)
        window = self._ids[position : position + 1]
        layout = self._layout
        (t0,), (y0,), (x0,) = layout.decompose(window)
        region = _Region(t0, t0 + layout.steps, y0, y0 + layout.patch, x0, x0 + layout.patch)
        tile = _prepare_tile(layout, region, "train", self._stats())
        arrays = _gather(layout, [tile], window, np.zeros(1, np.int64), "train", 0)
        return tuple(torch.from_numpy(a[0]) for a in arrays)

    # ------------------------------------------------------------------------------ iteration
    def set_epoch(self, epoch: int) -> None:
        """Fix the shuffling epoch (call before each epoch for reproducible multi-worker runs)."""
        self._epoch = int(epoch)

    def _current_epoch(self, worker) -> int:
        if self._epoch is not None:
            return self._epoch
        if worker is not None:
            # The DataLoader draws one base seed per epoch, shared by all its workers.
            return int((worker.seed - worker.id) % (2**32))
        epoch = self._auto_epoch
        self._auto_epoch += 1
        return epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for batch in self._stream_worker(batch_size=64):
            yield from zip(*(torch.from_numpy(a).unbind(0) for a in batch.arrays))

    def batched(self, batch_size: int = 64) -> _BatchedSequences:
        """An iterable dataset of whole batches ``(B, T, 1, P, P)`` (no per-sample collation).

        Use it with ``DataLoader(ds.batched(64), batch_size=None, num_workers=…)``. The last
        batch of each tile group may be smaller.
        """
        return _BatchedSequences(self, int(batch_size))

    def _stream_worker(self, batch_size: int) -> Iterator[_Batch]:
        worker = torch.utils.data.get_worker_info()
        epoch = self._current_epoch(worker) if self.shuffle else 0
        yield from self._stream(
            batch_size=batch_size,
            shuffle=self.shuffle,
            epoch=epoch,
            worker_id=0 if worker is None else worker.id,
            num_workers=1 if worker is None else worker.num_workers,
        )

    def _stream(
        self,
        *,
        batch_size: int,
        shuffle: bool = False,
        epoch: int = 0,
        worker_id: int = 0,
        num_workers: int = 1,
        mode: Literal["train", "raw"] = "train",
        history: int = 0,
    ) -> Iterator[_Batch]:
        """Batches cut tile by tile (see :class:`_Batch`); ``history`` extra periods in raw mode."""
        layout = self._layout
        stats = self._stats() if mode == "train" else None
        history = history if mode == "raw" else 0
        for group, positions, tile_of in self._groups(shuffle, epoch, worker_id, num_workers):
            tiles = [_prepare_tile(layout, _tile_region(layout, self._ids[p], history), mode, stats) for p in group]
            for start in range(0, positions.size, batch_size):
                chunk = positions[start : start + batch_size]
                ids = self._ids[chunk]
                arrays = _gather(layout, tiles, ids, tile_of[start : start + batch_size], mode, history)
                t0 = ids // layout.n_spatial
                yield _Batch(arrays, ids, chunk, layout.t_starts[t0] - history >= 0)

    def _groups(self, shuffle: bool, epoch: int, worker_id: int = 0, num_workers: int = 1):
        """``(group, positions, tile_of)`` per tile group, in streaming order (nothing is read).

        ``group`` lists each tile's positions, ``positions`` is the order the windows are
        yielded in and ``tile_of`` the index in ``group`` of each one's tile.
        """
        layout = self._layout
        for group in _plan(self._keys, shuffle=shuffle, epoch=epoch, seed=layout.seed,
                           worker_id=worker_id, num_workers=num_workers, group_size=layout.shuffle_tiles):
            positions = np.concatenate(group)
            tile_of = np.concatenate([np.full(p.size, k) for k, p in enumerate(group)])
            if shuffle:
                rng = np.random.default_rng([layout.seed, epoch, 1, int(positions[0])])
                order = rng.permutation(positions.size)
                positions, tile_of = positions[order], tile_of[order]
            yield group, positions, tile_of

    def _order(self, epoch: int | None = None) -> np.ndarray:
        """Positions of this view in the order one in-process iteration yields them (no read)."""
        shuffle = self.shuffle
        epoch = (self._epoch or 0) if epoch is None else int(epoch)
        parts = [positions for _, positions, _ in self._groups(shuffle, epoch if shuffle else 0)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _resident_region(self, dtype_bytes: int = 13) -> tuple[_Region, float]:
        """The cube region this view's windows cover and its prepared size in MB (values + mask)."""
        region = _tile_region(self._layout, self._ids, 0) if self._ids.size else _Region(0, 0, 0, 0, 0, 0)
        cells = (region.t_hi - region.t_lo) * (region.y_hi - region.y_lo) * (region.x_hi - region.x_lo)
        return region, cells * dtype_bytes / 1e6

    def _train_batches(self, batch_size: int, *, epoch: int, resident: _Tile | None = None,
                       check_tile=None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Whole training batches ``(inputs, targets, valid_mask)`` as NumPy, exactly ``batch_size`` each.

        The same windows in the same order, and the same bytes, as a ``DataLoader(view,
        batch_size=batch_size)`` over this view (one process) gives after collating single
        samples: batches run on across tile groups (only the last one is smaller). With
        ``resident`` (a prepared tile of :meth:`_resident_region`) windows are cut from it,
        without reading; otherwise tiles are streamed in bounded memory. ``check_tile`` is
        called with every tile prepared.
        """
        layout = self._layout
        if resident is not None:
            order = self._order(epoch)
            for start in range(0, order.size, batch_size):
                ids = self._ids[order[start : start + batch_size]]
                yield _gather(layout, [resident], ids, np.zeros(ids.size, np.int64), "train", 0)
            return
        stats = self._stats()
        pending: list[tuple[np.ndarray, ...]] = []
        waiting = 0
        for group, positions, tile_of in self._groups(self.shuffle, epoch if self.shuffle else 0):
            tiles = [_prepare_tile(layout, _tile_region(layout, self._ids[p], 0), "train", stats) for p in group]
            if check_tile is not None:
                for tile in tiles:
                    check_tile(tile)
            start = 0
            if waiting:  # complete the batch begun in the previous group
                start = min(batch_size - waiting, positions.size)
                pending.append(_gather(layout, tiles, self._ids[positions[:start]], tile_of[:start], "train", 0))
                waiting += start
                if waiting == batch_size:
                    yield tuple(np.concatenate(arrays) for arrays in zip(*pending))
                    pending, waiting = [], 0
            for first in range(start, positions.size, batch_size):
                chunk = slice(first, first + batch_size)
                arrays = _gather(layout, tiles, self._ids[positions[chunk]], tile_of[chunk], "train", 0)
                if arrays[0].shape[0] == batch_size:
                    yield arrays
                else:
                    pending, waiting = [arrays], arrays[0].shape[0]
        if waiting:
            yield tuple(np.concatenate(arrays) for arrays in zip(*pending))

    def _prepare_resident(self) -> _Tile:
        """Read and prepare the whole region of this view (see :meth:`_train_batches`).

        Besides the values and the mask, the tile holds the targets (values × mask, the same
        product :func:`_gather` takes per batch) and the mask as float32, so batches cut from it
        are pure copies.
        """
        region, _ = self._resident_region()
        values, valid = _prepare_tile(self._layout, region, "train", self._stats()).arrays
        with np.errstate(invalid="ignore"):  # inf × 0 (refused later by the trainer)
            targets = values * valid
        return _Tile(region, (values, valid, targets, valid.astype(np.float32)))


class _BatchedSequences(IterableDataset):
    """Whole batches of a :class:`PatchSequences` view (see :meth:`PatchSequences.batched`)."""

    def __init__(self, sequences: PatchSequences, batch_size: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
        self.sequences = sequences
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.sequences) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for batch in self.sequences._stream_worker(batch_size=self.batch_size):
            yield tuple(torch.from_numpy(a) for a in batch.arrays)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _check_cube(da, time_dim, y_dim, x_dim, valid_coord):
    if not isinstance(da, xr.DataArray):
        raise DataTypeError(
            f"PatchSequences needs an xarray.DataArray (time, y, x), got {type(da).__name__}. "
            "Select one variable, e.g. ds['snow_mask']."
        )
    require_series(da, (time_dim, y_dim, x_dim), what="PatchSequences")
    data = da.transpose(time_dim, y_dim, x_dim)
    valid = None
    name = None
    if valid_coord == "auto":
        for candidate in ("observed", "observation_count"):
            if candidate in data.coords and {y_dim, x_dim} <= set(data.coords[candidate].dims):
                name = candidate
                break
    elif valid_coord is not None:
        if valid_coord not in data.coords:
            raise MissingBandError(
                f"Coordinate {valid_coord!r} not found. Available: {sorted(map(str, data.coords))}. "
                "Pass valid_coord='auto' or None."
            )
        name = valid_coord
    if name is not None:
        coord = data.coords[name]
        if not set(coord.dims) <= {time_dim, y_dim, x_dim}:
            raise DimensionError(f"Coordinate {name!r} has dims {coord.dims}; it must use only {(time_dim, y_dim, x_dim)}.")
        valid = coord.variable if coord.dtype == bool else (coord.variable > 0)
        valid = xr.DataArray(valid, dims=coord.dims)
    return data, valid, name


def _check_options(input_steps, target_steps, patch, stride, val_fraction, test_fraction, tile_mb, shuffle_tiles):
    for label, value in (("input_steps", input_steps), ("target_steps", target_steps), ("patch", patch), ("stride", stride)):
        if int(value) != value or value < 1:
            raise ConfigError(f"{label} must be a positive integer, got {value!r}.")
    if stride > patch:
        raise ConfigError(
            f"stride ({stride}) is larger than patch ({patch}): pixels between patches would never be "
            "seen. Use stride <= patch."
        )
    for label, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ConfigError(f"{label} must be in [0, 1), got {value!r}.")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(f"val_fraction + test_fraction must be < 1 to leave training data, got {val_fraction + test_fraction}.")
    if tile_mb <= 0 or shuffle_tiles < 1:
        raise ConfigError(f"tile_mb must be > 0 and shuffle_tiles >= 1, got {tile_mb}, {shuffle_tiles}.")


def _check_normalize(normalize):
    if normalize is None or normalize == "auto":
        return normalize
    try:
        mean, std = (float(v) for v in normalize)
    except (TypeError, ValueError):
        raise ConfigError(f"normalize must be None, 'auto' or (mean, std); got {normalize!r}.") from None
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ConfigError(f"normalize=(mean, std) needs finite values and std > 0, got {normalize!r}.")
    return (mean, std)


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------
def _assign_splits(layout: _Layout) -> None:
    n_t = len(layout.t_starts)
    n_sp = layout.n_spatial
    all_spatial = np.arange(n_sp, dtype=np.int64)
    if layout.split_mode == "temporal":
        ranges = _temporal_ranges(layout)
        layout.split_info = {"time_ranges": ranges}
        for name, (lo, hi) in ranges.items():
            t_index = np.flatnonzero((layout.t_starts >= lo) & (layout.t_starts + layout.steps <= hi))
            layout.split_ids[name] = (t_index[:, None] * n_sp + all_spatial[None, :]).ravel()
    elif layout.split_mode == "spatial":
        labels, usable = _spatial_blocks(layout)
        layout.split_info = {"block_labels": labels, "block_size": layout.block_size}
        for k, name in enumerate(_SPLITS):
            ok = _windows_inside(usable == k, layout)
            spatial = np.flatnonzero(ok.ravel())
            layout.split_ids[name] = (np.arange(n_t, dtype=np.int64)[:, None] * n_sp + spatial[None, :]).ravel()
    else:  # random, like the seed paper
        rng = np.random.default_rng(layout.seed)
        order = rng.permutation(n_t * n_sp)
        n_test = round(order.size * layout.fractions["test"])
        n_val = round(order.size * layout.fractions["val"])
        layout.split_ids["test"] = np.sort(order[:n_test])
        layout.split_ids["val"] = np.sort(order[n_test : n_test + n_val])
        layout.split_ids["train"] = np.sort(order[n_test + n_val :])
        layout.split_info = {}


def _temporal_ranges(layout: _Layout) -> dict[str, tuple[int, int]]:
    n_time = layout.data.sizes[layout.dims[0]]
    steps, gap = layout.steps, layout.buffer

    def periods(fraction: float) -> int:
        return 0 if fraction == 0 else max(round(n_time * fraction), steps)

    n_test, n_val = periods(layout.fractions["test"]), periods(layout.fractions["val"])
    test = (n_time - n_test, n_time)
    val_end = test[0] - (gap if n_test else 0)
    val = (val_end - n_val, val_end)
    train_end = val[0] - (gap if n_val else 0)
    if train_end < steps:
        raise DimensionError(
            f"The cube has {n_time} periods: after {n_test} test and {n_val} validation periods "
            f"(each split needs >= {steps} = input_steps + target_steps) and a gap of {gap}, "
            f"{max(train_end, 0)} remain for training, fewer than one sequence. Use a longer series, "
            "smaller val_fraction/test_fraction (0 disables a split), fewer steps or split='spatial'."
        )
    return {"train": (0, train_end), "val": val, "test": test}


def _spatial_blocks(layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel split labels (0 train, 1 val, 2 test) and the same with the buffer set to -1."""
    from scipy import ndimage

    _, y_dim, x_dim = layout.dims
    height, width = layout.data.sizes[y_dim], layout.data.sizes[x_dim]
    size = layout.block_size or 4 * layout.patch
    layout.block_size = size
    if size < layout.patch:
        raise ConfigError(f"block_size ({size}) must be >= patch ({layout.patch}) so a block can hold a window.")
    n_by, n_bx = math.ceil(height / size), math.ceil(width / size)
    n_blocks = n_by * n_bx
    counts = {name: 0 if layout.fractions[name] == 0 else max(1, round(n_blocks * layout.fractions[name])) for name in ("val", "test")}
    if n_blocks - counts["val"] - counts["test"] < 1:
        raise DimensionError(
            f"The scene ({height} × {width} px) holds only {n_blocks} blocks of {size} px, too few for "
            f"train, val ({counts['val']}) and test ({counts['test']}) blocks. Pass a smaller block_size."
        )
    rng = np.random.default_rng(layout.seed)
    order = rng.permutation(n_blocks)
    block_label = np.zeros(n_blocks, dtype=np.int8)
    block_label[order[: counts["test"]]] = 2
    block_label[order[counts["test"] : counts["test"] + counts["val"]]] = 1
    labels = np.repeat(np.repeat(block_label.reshape(n_by, n_bx), size, axis=0), size, axis=1)[:height, :width]
    half = math.ceil(layout.buffer / 2)
    usable = labels.copy()
    if half > 0:
        for k in range(3):
            near_other = ndimage.maximum_filter((labels != k).astype(np.uint8), size=2 * half + 1, mode="nearest")
            usable[(labels == k) & (near_other > 0)] = -1
    return labels, usable


def _windows_inside(mask: np.ndarray, layout: _Layout) -> np.ndarray:
    """``(n_y, n_x)`` bool: the window at each start lies wholly inside ``mask``."""
    p = layout.patch
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    y, x = np.meshgrid(layout.y_starts, layout.x_starts, indexing="ij")
    inside = integral[y + p, x + p] - integral[y, x + p] - integral[y + p, x] + integral[y, x]
    return inside == p * p


def _split_labels(layout: _Layout, ids: np.ndarray) -> np.ndarray:
    labels = np.full(ids.size, _UNUSED, dtype=object)
    for name in _SPLITS:
        members = layout.split_ids[name]
        if members.size:
            where = np.searchsorted(members, ids).clip(max=members.size - 1)
            labels[members[where] == ids] = name
    return labels


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
def _train_statistics(layout: _Layout) -> tuple[float, float]:
    """Mean and std of the valid pixel-times covered by training windows (one Dask pass)."""
    import dask

    ids = layout.split_ids["train"]
    if ids.size == 0:
        raise DimensionError(
            "The train split has no sequence, so normalize='auto' has nothing to learn from. "
            "Lower val_fraction/test_fraction, or pass normalize=(mean, std)."
        )
    time_dim, y_dim, x_dim = layout.dims
    t0, _, _ = layout.decompose(ids)
    covered_t = np.zeros(layout.data.sizes[time_dim], dtype=bool)
    for start in np.unique(t0):
        covered_t[start : start + layout.steps] = True
    spatial = np.unique(ids % layout.n_spatial)
    y_index, x_index = np.divmod(spatial, len(layout.x_starts))
    height, width = layout.data.sizes[y_dim], layout.data.sizes[x_dim]
    p = layout.patch
    paint = np.zeros((height + 1, width + 1), dtype=np.int64)
    y0, x0 = layout.y_starts[y_index], layout.x_starts[x_index]
    np.add.at(paint, (y0, x0), 1)
    np.add.at(paint, (y0 + p, x0), -1)
    np.add.at(paint, (y0, x0 + p), -1)
    np.add.at(paint, (y0 + p, x0 + p), 1)
    covered_yx = paint.cumsum(0).cumsum(1)[:height, :width] > 0
    values = layout.data.isel({time_dim: np.flatnonzero(covered_t)}).astype(np.float64)
    keep = xr.DataArray(covered_yx, dims=(y_dim, x_dim))
    if layout.valid is not None:
        keep = keep & layout.valid.isel({time_dim: np.flatnonzero(covered_t)} if time_dim in layout.valid.dims else {})
    values = values.where(keep)
    mean, std = dask.compute(values.mean(), values.std())
    mean, std = float(mean), float(std)
    if not math.isfinite(mean):
        raise DimensionError(
            "The training windows contain no valid pixel (the data are all NaN there, or masked "
            "by the valid coordinate); cannot compute normalisation statistics. Check the input "
            "(e.g. da.notnull().sum()), or pass normalize=(mean, std) or normalize=None."
        )
    if not math.isfinite(std) or std == 0:
        std = 1.0
    return mean, std


# --------------------------------------------------------------------------------------------
# streaming
# --------------------------------------------------------------------------------------------
class _Region(NamedTuple):
    t_lo: int
    t_hi: int
    y_lo: int
    y_hi: int
    x_lo: int
    x_hi: int


class _Tile(NamedTuple):
    region: _Region
    arrays: tuple[np.ndarray, np.ndarray]  # (values, valid): normalised NaN-free (train) or raw (raw)


def _tile_shape(layout: _Layout, ids: np.ndarray) -> tuple[int, int]:
    """Spatial extent (in window-start pixels) of a tile: the scene halved until under ``tile_mb``.

    The tiling depends only on the scene size, the windows and the budget (not on the Dask
    chunks), so the order of the windows is the same for NumPy- and Dask-backed cubes.
    """
    _, y_dim, x_dim = layout.dims
    tile_h, tile_w = layout.data.sizes[y_dim], layout.data.sizes[x_dim]
    if ids.size:
        t0, _, _ = layout.decompose(ids[[0, -1]])
        periods = int(t0.max() - t0.min()) + layout.steps
    else:
        periods = layout.steps
    budget = layout.tile_mb * 1e6
    p = layout.patch
    # raw float32 + normalised float32 + bool mask while preparing a tile
    while (tile_h + p) * (tile_w + p) * periods * 9 > budget and max(tile_h, tile_w) > layout.stride:
        if tile_h >= tile_w:
            tile_h = max(-(-tile_h // 2), 1)
        else:
            tile_w = max(-(-tile_w // 2), 1)
    return tile_h, tile_w


def _tile_keys(layout: _Layout, ids: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    _, y0, x0 = layout.decompose(ids)
    n_tx = int(layout.x_starts[-1] // shape[1]) + 1
    return (y0 // shape[0]) * n_tx + x0 // shape[1]


def _plan(keys, *, shuffle, epoch, seed, worker_id, num_workers, group_size) -> Iterator[list[np.ndarray]]:
    """Groups of position arrays (one per tile) this worker streams, in order."""
    if keys.size == 0:
        return
    boundaries = np.flatnonzero(np.diff(keys)) + 1
    starts = np.concatenate([[0], boundaries])
    stops = np.concatenate([boundaries, [keys.size]])
    order = np.arange(starts.size)
    if shuffle:
        order = np.random.default_rng([seed, epoch, 0]).permutation(starts.size)
    if order.size >= num_workers:
        mine = [np.arange(starts[k], stops[k]) for k in order[worker_id::num_workers]]
    else:  # fewer tiles than workers: every worker reads every tile and takes a share of it
        mine = [np.arange(starts[k], stops[k])[worker_id::num_workers] for k in order]
        mine = [m for m in mine if m.size]
    size = group_size if shuffle else 1
    for i in range(0, len(mine), size):
        yield mine[i : i + size]


def _read_region(layout: _Layout, region: _Region) -> tuple[np.ndarray, np.ndarray]:
    """Read one block of the cube: float32 values (NaN missing) and the validity mask."""
    time_dim, y_dim, x_dim = layout.dims
    selection = {
        time_dim: slice(max(region.t_lo, 0), region.t_hi),
        y_dim: slice(region.y_lo, region.y_hi),
        x_dim: slice(region.x_lo, region.x_hi),
    }
    raw = np.asarray(layout.data.isel(selection).to_numpy(), dtype=np.float32)
    valid = np.isfinite(raw)
    if layout.valid is not None:
        source = layout.valid
        observed = np.asarray(source.isel({d: s for d, s in selection.items() if d in source.dims}).to_numpy(), dtype=bool)
        shape = [raw.shape[i] if d in source.dims else 1 for i, d in enumerate(layout.dims)]
        observed = observed.transpose([source.dims.index(d) for d in layout.dims if d in source.dims]).reshape(shape)
        valid &= observed
    pad = -region.t_lo if region.t_lo < 0 else 0
    if pad:
        raw = np.concatenate([np.full((pad, *raw.shape[1:]), np.nan, np.float32), raw])
        valid = np.concatenate([np.zeros((pad, *valid.shape[1:]), bool), valid])
    return raw, valid


def _tile_region(layout: _Layout, ids: np.ndarray, history: int) -> _Region:
    t0, y0, x0 = layout.decompose(ids)
    p = layout.patch
    return _Region(
        int(t0.min()) - history, int(t0.max()) + layout.steps, int(y0.min()), int(y0.max()) + p,
        int(x0.min()), int(x0.max()) + p,
    )


def _prepare_tile(layout: _Layout, region: _Region, mode: str, stats) -> _Tile:
    """Read a tile and prepare it once for cutting (its pixels are shared by many windows)."""
    raw, valid = _read_region(layout, region)
    if mode == "raw":
        return _Tile(region, (raw, valid))
    values = raw - np.float32(stats[0]) if stats is not None else raw.copy()  # never write to the caller's array
    if stats is not None:
        values /= np.float32(stats[1])
    values[np.isnan(values)] = 0.0
    return _Tile(region, (values, valid))


def _gather(layout: _Layout, tiles: Sequence[_Tile], ids: np.ndarray, which: np.ndarray, mode: str, history: int):
    """Copy the windows of ``ids`` out of their tiles into batch arrays (see :class:`_Batch`).

    Vectorised: one fancy-indexing call per tile and array on a
    :func:`~numpy.lib.stride_tricks.sliding_window_view` of the tile (no per-window Python).
    """
    t0, y0, x0 = layout.decompose(ids)
    n, p, t_in, steps = ids.size, layout.patch, layout.input_steps, layout.steps
    dense = mode == "train" and len(tiles[0].arrays) == 4  # targets and float mask prepared (resident)
    if mode == "raw":  # (time offset, length, array index) of each output
        parts = [(0, steps + history, 0), (0, steps + history, 1)]
    else:
        parts = [(0, t_in, 0), (t_in, steps - t_in, 2 if dense else 0), (t_in, steps - t_in, 3 if dense else 1)]

    def cut(tile: _Tile, offset: int, length: int, array: int, rows) -> np.ndarray:
        r = tile.region
        view = np.lib.stride_tricks.sliding_window_view(tile.arrays[array], (length, p, p))
        return view[t0[rows] - history - r.t_lo + offset, y0[rows] - r.y_lo, x0[rows] - r.x_lo]

    if len(tiles) == 1:
        outputs = [cut(tiles[0], *part, slice(None)) for part in parts]
    else:
        outputs = [np.empty((n, length, p, p), tiles[0].arrays[array].dtype) for _, length, array in parts]
        for k, tile in enumerate(tiles):
            rows = np.flatnonzero(which == k)
            for out, part in zip(outputs, parts):
                out[rows] = cut(tile, *part, rows)
    if mode == "raw":
        return tuple(outputs)
    inputs, targets, valid = outputs
    if not dense:
        np.multiply(targets, valid, out=targets)  # missing targets are 0; the mask says so
        valid = valid.astype(np.float32)
    return inputs[:, :, None], targets[:, :, None], valid[:, :, None]
