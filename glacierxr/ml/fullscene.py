"""Full-scene forecasting: training on whole scenes cut into tiles, and a U-Net denoising pass.

The forecasting models of :mod:`glacierxr.ml.models` see one ``patch × patch`` square at a time.
A whole scene predicted patch by patch shows *seams* where neighbouring patches disagree.
The seed paper (Experiment 3, § 5.1–5.2) tries two remedies, both implemented here.

Full-scene training (§ 5.1)
---------------------------
:class:`FullSceneSequences` yields whole-scene sequences (``input_steps`` past composites of the
full scene → ``target_steps`` future ones), with the same leakage-free temporal split as
:class:`glacierxr.ml.PatchSequences`. :class:`FullSceneModel` wraps any patch model: it cuts
each scene into **non-overlapping** tiles (:func:`tile_scene`; the scene is padded by edge
replication up to a whole number of tiles), runs the patch model on every tile and puts the tiles
back together (:func:`untile_scene`). Tiling and stitching are pure reshapes and crops, so
gradients flow through them and the (masked) MSE is taken on the stitched full scene, as the
paper describes. :class:`glacierxr.ml.Trainer` trains a :class:`FullSceneModel` on
:class:`FullSceneSequences` unchanged.

What couples the tiles. With independent tiles and no context, the full-scene MSE is *exactly*
the pixel-weighted mean of the per-tile MSEs: the gradient is the same as training on
non-overlapping patches, and nothing in the loss sees a seam. Two options make the border
matter, and both are off by default (the paper's plain setting):

* ``halo`` (context): each tile is cut with ``halo`` extra pixels of its neighbours on every
  side, and only its centre is kept. The model then sees across the border it has to continue.
* ``seam_weight`` (:class:`FullSceneTrainer`, :func:`seam_loss`): adds the MSE between the
  predicted and the observed *jump across each tile border* (the finite difference between the
  two pixels on either side of the border) to the loss, so a discontinuity that the target does
  not have is penalised directly.

U-Net denoising pass (§ 5.2)
----------------------------
:class:`DenoisingUNet` is a small U-Net (the :class:`glacierxr.ml.models.unet.UNet` building
block) that maps a stitched forecast frame to a cleaned one, as a residual correction
(``output = input + U-Net(input)``). :func:`train_denoiser` fits it on pairs of stitched forecasts
and the composites they forecast (e.g. forecasts of the *training* periods); :func:`denoise`
applies it to a forecast DataArray lazily, block by block with an overlap as wide as the U-Net's
receptive field, keeping coordinates, CRS and attributes.

Checkpoints. A :class:`FullSceneModel` is not in the model registry (it wraps one), so
:func:`glacierxr.ml.checkpoint.load_model` cannot rebuild it by name: reload a checkpoint the
Trainer wrote with :func:`load_fullscene`, or save the inner patch model
(``save_model(wrapper.model, path)``, the weights are the same) and use it with
:func:`glacierxr.ml.predict.predict` or a new :class:`FullSceneModel`. The same holds for
:class:`DenoisingUNet` (:func:`load_denoiser`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from glacierxr._range import clip_to_range, range_attrs, valid_range
from glacierxr._validate import require_dims, require_positive, require_series, require_torch
from glacierxr.errors import CheckpointError, ConfigError, DataTypeError, DimensionError, ModelError

torch = require_torch("glacierxr.ml.fullscene")
from torch import nn  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from glacierxr.ml.models.base import ForecastModel  # noqa: E402
from glacierxr.ml.train import Trainer, _masked_sse

__all__ = [
    "tile_scene",
    "untile_scene",
    "tile_grid",
    "seam_loss",
    "FullSceneSequences",
    "FullSceneModel",
    "FullSceneTrainer",
    "load_fullscene",
    "predict_fullscene",
    "DenoisingUNet",
    "train_denoiser",
    "denoise",
    "load_denoiser",
]

SplitName = Literal["train", "val", "test"]
_SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------
# tiling and stitching (differentiable)
# --------------------------------------------------------------------------------------------
def tile_grid(height: int, width: int, patch: int) -> tuple[int, int]:
    """Number of tile rows and columns that cover a ``height × width`` scene with ``patch`` tiles.

    Examples
    --------
    >>> tile_grid(100, 120, 50)
    (2, 3)
    """
    if int(patch) != patch or patch < 1:
        raise ConfigError(f"patch must be a positive integer, got {patch!r}.")
    return math.ceil(height / patch), math.ceil(width / patch)


def _check_frames(frames, name: str) -> None:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 5:
        found = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise DimensionError(
            f"{name} must be a tensor (batch, time, channels, height, width); found {found}. "
            "Add the channel axis with .unsqueeze(2)."
        )


def tile_scene(frames: torch.Tensor, patch: int, *, halo: int = 0) -> torch.Tensor:
    """Cut scenes ``(B, T, C, H, W)`` into non-overlapping ``patch × patch`` tiles.

    The scene is padded by edge replication on the bottom and right up to a whole number of
    tiles, and by ``halo`` pixels on every side; each tile then carries ``halo`` pixels of its
    neighbours (or of the replicated edge) around its ``patch × patch`` core.

    Parameters
    ----------
    frames : torch.Tensor
        ``(batch, time, channels, height, width)``.
    patch : int
        Side of the tile cores, in pixels.
    halo : int
        Context pixels on each side of every tile.

    Returns
    -------
    torch.Tensor
        ``(batch × n_y × n_x, time, channels, patch + 2 halo, patch + 2 halo)``, tiles in
        row-major order within each scene (see :func:`tile_grid`). Differentiable.

    Examples
    --------
    >>> scene = torch.arange(2 * 5 * 7.0).reshape(1, 2, 1, 5, 7)
    >>> tiles = tile_scene(scene, 3)
    >>> tuple(tiles.shape)
    (6, 2, 1, 3, 3)
    >>> bool(torch.equal(untile_scene(tiles, (5, 7), 3), scene))
    True
    """
    _check_frames(frames, "frames")
    if int(halo) != halo or halo < 0:
        raise ConfigError(f"halo must be an integer >= 0, got {halo!r}.")
    batch, time, channels, height, width = frames.shape
    n_y, n_x = tile_grid(height, width, patch)
    pad_h, pad_w = n_y * patch - height, n_x * patch - width
    flat = frames.reshape(batch * time * channels, 1, height, width)
    if pad_h or pad_w or halo:
        flat = nn.functional.pad(flat, (halo, pad_w + halo, halo, pad_h + halo), mode="replicate")
    size = patch + 2 * halo
    tiles = flat.unfold(2, size, patch).unfold(3, size, patch)  # (BTC, 1, n_y, n_x, size, size)
    tiles = tiles.reshape(batch, time, channels, n_y, n_x, size, size)
    tiles = tiles.permute(0, 3, 4, 1, 2, 5, 6)
    return tiles.reshape(batch * n_y * n_x, time, channels, size, size)


def untile_scene(tiles: torch.Tensor, shape: tuple[int, int], patch: int, *, halo: int = 0) -> torch.Tensor:
    """Put tiles from :func:`tile_scene` back together into scenes ``(B, T, C, H, W)``.

    The ``halo`` border of every tile is dropped, the cores are laid side by side and the
    padding is cropped. A pure reshape: exact, and gradients flow back to every tile.

    Parameters
    ----------
    tiles : torch.Tensor
        ``(batch × n_y × n_x, time, channels, patch + 2 halo, patch + 2 halo)``.
    shape : (int, int)
        ``(height, width)`` of the scene.
    patch, halo : int
        As given to :func:`tile_scene`.
    """
    _check_frames(tiles, "tiles")
    height, width = (int(v) for v in shape)
    n_y, n_x = tile_grid(height, width, patch)
    size = patch + 2 * halo
    count, time, channels = tiles.shape[:3]
    if tiles.shape[-2:] != (size, size) or count % (n_y * n_x):
        raise DimensionError(
            f"tiles of shape {tuple(tiles.shape)} do not fit a {height} × {width} scene cut into "
            f"{n_y} × {n_x} tiles of {patch} px with halo {halo} (expected (batch × {n_y * n_x}, "
            f"time, channels, {size}, {size}))."
        )
    batch = count // (n_y * n_x)
    core = tiles[..., halo : halo + patch, halo : halo + patch] if halo else tiles
    core = core.reshape(batch, n_y, n_x, time, channels, patch, patch)
    scene = core.permute(0, 3, 4, 1, 5, 2, 6).reshape(batch, time, channels, n_y * patch, n_x * patch)
    return scene[..., :height, :width]


def seam_loss(prediction, target, valid_mask, patch: int):
    """Squared error of the jumps across tile borders: predicted versus observed.

    For every pair of neighbouring pixels that lie on either side of a tile border (rows
    ``k·patch − 1`` and ``k·patch``, and the same for columns), the predicted difference
    ``prediction[b] − prediction[a]`` is compared with the observed one; only pairs with both
    target pixels valid count.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        Sum of squared differences and the number of pairs (``sse / count`` is the mean).

    Examples
    --------
    >>> target = torch.zeros(1, 1, 1, 4, 4)
    >>> prediction = torch.zeros(1, 1, 1, 4, 4)
    >>> prediction[..., :, 2:] = 1.0  # a step exactly at the border of 2-px tiles
    >>> sse, count = seam_loss(prediction, target, torch.ones_like(target), 2)
    >>> float(sse), int(count)
    (4.0, 8)
    """
    valid = valid_mask if valid_mask.dtype == torch.bool else valid_mask > 0.5
    valid = valid.expand_as(target)
    zero = torch.zeros((), dtype=prediction.dtype, device=prediction.device)
    target = torch.where(valid, target.to(prediction.dtype), zero)
    sse = zero.clone()
    count = torch.zeros((), dtype=torch.int64, device=prediction.device)
    height, width = prediction.shape[-2:]
    for axis, length in ((-2, height), (-1, width)):
        after = torch.arange(patch, length, patch, device=prediction.device)
        if after.numel() == 0:
            continue
        before = after - 1

        def jump(values, after=after, before=before, axis=axis):
            return values.index_select(axis, after) - values.index_select(axis, before)

        both = valid.index_select(axis, after) & valid.index_select(axis, before)
        difference = torch.where(both, jump(prediction) - jump(target), zero)
        sse = sse + (difference * difference).sum()
        count = count + both.sum()
    return sse, count


# --------------------------------------------------------------------------------------------
# whole-scene sequences
# --------------------------------------------------------------------------------------------
class FullSceneSequences(Dataset):
    """Whole-scene sequences of a ``(time, y, x)`` cube, for full-scene training.

    Sample ``i`` is the ``i``-th time window of the view: ``(inputs, targets, valid_mask)``,
    float32 tensors ``(input_steps, 1, H, W)``, ``(target_steps, 1, H, W)`` and
    ``(target_steps, 1, H, W)`` over the **whole** scene (``H × W`` = the cube's ``y × x``).
    ``valid_mask`` is 1 where the target pixel is a real observation. Values are normalised and
    missing ones set to 0 exactly as in :class:`glacierxr.ml.PatchSequences`, so a model trained
    here and one trained on patches see the same numbers.

    The split is the temporal one of :class:`~glacierxr.ml.PatchSequences` (latest periods to
    ``test``, the ones before to ``val``, the rest to ``train``; a window belongs to a split only
    if all its periods do), so no target period of a later split is ever seen in training.
    A spatial or random split has no meaning for whole scenes and is refused.

    ``patch`` is not used to cut the data (the model wrapper cuts the tiles, see
    :class:`FullSceneModel`); it is only checked against the scene and recorded.

    Parameters
    ----------
    da : xarray.DataArray
        ``(time, y, x)`` cube (NumPy- or Dask-backed; nothing is read before a sample is asked
        for, then the view's periods are read once and kept: ``n_periods × H × W`` float32).
    input_steps, target_steps : int
        Periods the model sees and predicts.
    patch : int
        Tile size of the model that will be trained on these scenes.
    split : {"temporal"}
        How periods are assigned to ``train``/``val``/``test``.
    val_fraction, test_fraction, buffer
        As in :class:`~glacierxr.ml.PatchSequences` (``buffer`` in periods).
    normalize : None, "auto" or (mean, std)
        As in :class:`~glacierxr.ml.PatchSequences`; ``"auto"`` uses the valid pixels of the
        training periods.
    valid_coord : str or None
        Coordinate marking real observations (``"auto"``: ``observed`` or
        ``observation_count``).
    time_dim, y_dim, x_dim : str
        Dimension names.

    Raises
    ------
    DimensionError, ConfigError, DataTypeError
        Like :class:`~glacierxr.ml.PatchSequences` (wrong dims, too few periods, bad options).

    Examples
    --------
    >>> import numpy as np
    >>> from glacierxr.testing import make_series
    >>> cube = make_series(np.random.default_rng(0).random((40, 30, 45)), freq="QS")
    >>> scenes = FullSceneSequences(cube, patch=15)
    >>> scenes.split_info["time_ranges"]
    {'train': (0, 24), 'val': (24, 32), 'test': (32, 40)}
    >>> len(scenes.split("train")), len(scenes.split("test"))
    (17, 1)
    >>> inputs, targets, valid = scenes.split("test")[0]
    >>> tuple(inputs.shape), tuple(targets.shape), tuple(valid.shape)
    ((4, 1, 30, 45), (4, 1, 30, 45), (4, 1, 30, 45))
    """

    def __init__(
        self,
        da: xr.DataArray,
        *,
        input_steps: int = 4,
        target_steps: int = 4,
        patch: int = 50,
        split: Literal["temporal"] = "temporal",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        buffer: int | None = None,
        normalize: None | Literal["auto"] | tuple[float, float] = None,
        valid_coord: str | None = "auto",
        time_dim: str = "time",
        y_dim: str = "y",
        x_dim: str = "x",
    ) -> None:
        from glacierxr.ml.patches import PatchSequences, _check_cube

        if split != "temporal":
            raise ConfigError(
                f"FullSceneSequences supports split='temporal' only, got {split!r}: a whole scene "
                "cannot be divided between splits in space, and a random split of overlapping time "
                "windows leaks targets into training. Use PatchSequences for other splits."
            )
        data, valid, _ = _check_cube(da, time_dim, y_dim, x_dim, valid_coord)
        height, width = data.sizes[y_dim], data.sizes[x_dim]
        if int(patch) != patch or patch < 1:
            raise ConfigError(f"patch must be a positive integer, got {patch!r}.")
        side = min(height, width)
        if patch > side:
            raise DimensionError(
                f"The patch ({patch} px) is larger than the scene ({y_dim}={height}, {x_dim}={width} "
                f"px). Pass patch <= {side}."
            )
        # The temporal split, its checks and the normalisation statistics are PatchSequences'
        # own: one window per period covering the scene, so the statistics use every pixel.
        self._periods = PatchSequences(
            da,
            input_steps=input_steps,
            target_steps=target_steps,
            patch=side,
            stride=side,
            split="temporal",
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            buffer=buffer,
            normalize=normalize,
            valid_coord=valid_coord,
            time_dim=time_dim,
            y_dim=y_dim,
            x_dim=x_dim,
        )
        self._data = data
        self._valid = valid
        self._dims = (time_dim, y_dim, x_dim)
        self.input_steps = int(input_steps)
        self.target_steps = int(target_steps)
        self.patch = int(patch)
        n_windows = data.sizes[time_dim] - self.steps + 1
        self._all_starts = np.arange(n_windows, dtype=np.int64)
        self._ranges = self._periods.split_info["time_ranges"]
        self._init_view("all", self._all_starts)

    def _init_view(self, name: str, starts: np.ndarray) -> None:
        self.name = name
        self._starts = np.asarray(starts, dtype=np.int64)
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None

    @property
    def steps(self) -> int:
        return self.input_steps + self.target_steps

    def split(self, name: SplitName) -> FullSceneSequences:
        """The ``"train"``, ``"val"`` or ``"test"`` view (shares the cube and the statistics)."""
        if name not in _SPLITS:
            raise ConfigError(f"Unknown split {name!r}; choose one of {list(_SPLITS)}.")
        lo, hi = self._ranges[name]
        starts = self._all_starts[(self._all_starts >= lo) & (self._all_starts + self.steps <= hi)]
        view = object.__new__(type(self))
        view.__dict__.update({k: v for k, v in self.__dict__.items() if k != "_cache"})
        view._init_view(name, starts)
        return view

    # ------------------------------------------------------------------------------ metadata
    @property
    def data(self) -> xr.DataArray:
        """The ``(time, y, x)`` cube (lazy, as given)."""
        return self._data

    @property
    def split_info(self) -> dict[str, Any]:
        """``{"time_ranges": {split: (first, end)}}``, period indices, end exclusive."""
        return {"time_ranges": dict(self._ranges)}

    @property
    def normalization(self) -> dict[str, float] | None:
        """``{"mean": m, "std": s}`` applied to inputs and targets, or ``None``."""
        return self._periods.normalization

    def denormalize(self, values):
        """Map normalised values back to data units."""
        return self._periods.denormalize(values)

    def normalize_values(self, values):
        """Normalise values in data units like the inputs (NaN stays NaN)."""
        return self._periods.normalize_values(values)

    @property
    def windows(self) -> pd.DataFrame:
        """One row per sample: ``t0`` (first input period), ``time`` and ``target_time`` labels."""
        times = self._data[self._dims[0]].to_index()
        return pd.DataFrame(
            {
                "t0": self._starts,
                "time": times[self._starts],
                "target_time": times[self._starts + self.input_steps],
                "split": self.name,
            }
        )

    def __len__(self) -> int:
        return int(self._starts.size)

    def __repr__(self) -> str:
        t, y, x = self._dims
        return (
            f"<FullSceneSequences {self.name!r}: {len(self)} scenes of {self.input_steps} → "
            f"{self.target_steps} periods, {y}={self._data.sizes[y]}, {x}={self._data.sizes[x]} px>"
        )

    # --------------------------------------------------------------------------- reading
    def _read(self) -> tuple[int, np.ndarray, np.ndarray]:
        """The view's periods: normalised NaN-free values and the validity mask (read once)."""
        if self._cache is None:
            if not len(self):
                raise IndexError(f"The {self.name!r} view holds no scene sequence.")
            time_dim, y_dim, x_dim = self._dims
            first, end = int(self._starts.min()), int(self._starts.max()) + self.steps
            selection = {time_dim: slice(first, end)}
            raw = np.asarray(self._data.isel(selection).to_numpy(), dtype=np.float32)
            valid = np.isfinite(raw)
            if self._valid is not None:
                source = self._valid
                observed = source.isel({k: v for k, v in selection.items() if k in source.dims})
                observed = observed.transpose(*[d for d in self._dims if d in source.dims])
                observed = observed.expand_dims([d for d in self._dims if d not in source.dims])
                valid &= np.broadcast_to(observed.transpose(*self._dims).to_numpy().astype(bool), raw.shape)
            stats = self._periods._stats()
            values = raw if stats is None else (raw - np.float32(stats[0])) / np.float32(stats[1])
            values = np.where(np.isnan(values), np.float32(0.0), values).astype(np.float32)
            self._cache = (first, values, valid)
        return self._cache

    def __getitem__(self, index: int):
        if isinstance(index, (np.integer, torch.Tensor)):
            index = int(index)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"Sample {index} out of range for {n} scene sequences in split {self.name!r}.")
        first, values, valid = self._read()
        t0 = int(self._starts[index % n]) - first
        inputs = values[t0 : t0 + self.input_steps, None]
        targets = values[t0 + self.input_steps : t0 + self.steps, None]
        target_valid = valid[t0 + self.input_steps : t0 + self.steps, None]
        targets = np.where(target_valid, targets, np.float32(0.0))
        return (
            torch.from_numpy(np.ascontiguousarray(inputs)),
            torch.from_numpy(np.ascontiguousarray(targets)),
            torch.from_numpy(target_valid.astype(np.float32)),
        )


# --------------------------------------------------------------------------------------------
# the wrapper model
# --------------------------------------------------------------------------------------------
class FullSceneModel(ForecastModel):
    """Run a patch model over whole scenes: tile, forecast every tile, stitch back.

    A :class:`~glacierxr.ml.models.ForecastModel`: the call convention and input checks of every
    glacierxr model (``forward(inputs, steps, targets=None, teacher_forcing=0.0)``,
    ``(B, T_in, 1, H, W)`` → ``(B, steps, 1, H, W)``) for scenes of any size, so :class:`glacierxr.ml.Trainer` trains it on :class:`FullSceneSequences` as it is:
    the masked MSE is then taken on the stitched full scenes (seed paper § 5.1).

    Parameters
    ----------
    model : torch.nn.Module
        A patch model (e.g. ``get_model("convlstm")``) taking tiles of ``patch + 2 halo`` px.
    patch : int
        Side of the non-overlapping tiles the scene is cut into.
    halo : int
        Context pixels around every tile given to the model and dropped from its output (see
        the module docstring); 0 is the paper's setting.
    tile_batch : int, optional
        Run the patch model on at most this many tiles at once (bounds memory on large scenes);
        default all tiles of the batch at once.

    Examples
    --------
    >>> from glacierxr.ml import get_model
    >>> wrapper = FullSceneModel(get_model("convlstm", hidden_channels=(4,)), patch=16)
    >>> wrapper(torch.zeros(2, 4, 1, 40, 35), steps=3).shape
    torch.Size([2, 3, 1, 40, 35])
    >>> wrapper.get_config()["name"], wrapper.get_config()["model"]["name"]
    ('fullscene', 'convlstm')
    """

    model_name = "fullscene"

    def __init__(self, model: nn.Module, patch: int, *, halo: int = 0, tile_batch: int | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ModelError(
                f"FullSceneModel wraps a torch.nn.Module patch model, got {type(model).__name__}. "
                "Build one with glacierxr.ml.get_model(name)."
            )
        for label, value, minimum in (("patch", patch, 1), ("halo", halo, 0)):
            if isinstance(value, bool) or int(value) != value or value < minimum:
                raise ModelError(f"FullSceneModel: {label} must be an integer >= {minimum}; found {value!r}.")
        if tile_batch is not None and (int(tile_batch) != tile_batch or tile_batch < 1):
            raise ModelError(f"FullSceneModel: tile_batch must be a positive integer or None; found {tile_batch!r}.")
        self.model = model
        self.patch = int(patch)
        self.halo = int(halo)
        self.tile_batch = None if tile_batch is None else int(tile_batch)

    def _inner_config(self) -> dict[str, Any]:
        return self.model.get_config() if callable(getattr(self.model, "get_config", None)) else {}

    @property
    def input_steps(self) -> int:
        """The inner model's ``input_steps`` (4 where it does not say)."""
        return int(getattr(self.model, "input_steps", self._inner_config().get("input_steps", 4)))

    def _default_steps(self) -> int:
        """The inner model's ``output_steps`` (1 where it does not say)."""
        return int(self._inner_config().get("output_steps", 1))

    def get_config(self) -> dict[str, Any]:
        """``{"name": "fullscene", "patch", "halo", "model": <inner model's config>}``."""
        inner = getattr(self.model, "get_config", None)
        if not callable(inner):
            raise ModelError(
                f"The wrapped {type(self.model).__name__} has no get_config(), so a checkpoint could "
                "not rebuild it. Wrap a model from glacierxr.ml.get_model(...)."
            )
        return {"name": self.model_name, "patch": self.patch, "halo": self.halo, "model": dict(inner())}

    def extra_repr(self) -> str:
        return f"patch={self.patch}, halo={self.halo}"

    def _forecast(self, inputs, steps, targets, teacher_forcing):
        """Whole scenes ``(B, T_in, 1, H, W)`` → ``(B, steps, 1, H, W)``, checked by ``forward``."""
        height, width = inputs.shape[-2:]
        tiles = tile_scene(inputs, self.patch, halo=self.halo)
        tile_targets = None if targets is None else tile_scene(targets, self.patch, halo=self.halo)
        chunk = self.tile_batch or tiles.shape[0]
        outputs = []
        for first in range(0, tiles.shape[0], chunk):
            part_targets = None if tile_targets is None else tile_targets[first : first + chunk]
            outputs.append(
                self.model(tiles[first : first + chunk], steps, targets=part_targets, teacher_forcing=teacher_forcing)
                if part_targets is not None
                else self.model(tiles[first : first + chunk], steps)
            )
        predicted = torch.cat(outputs, dim=0) if len(outputs) > 1 else outputs[0]
        return untile_scene(predicted, (height, width), self.patch, halo=self.halo)


class FullSceneTrainer(Trainer):
    """:class:`glacierxr.ml.Trainer` whose loss adds a seam term to the full-scene masked MSE.

    ``loss = MSE(valid pixels) + seam_weight × MSE(jumps across tile borders)``
    (:func:`seam_loss`), the tile size taken from the :class:`FullSceneModel`. With
    ``seam_weight=0`` it is the plain :class:`~glacierxr.ml.Trainer`. The reported training and
    validation losses include the seam term.

    Parameters
    ----------
    model : FullSceneModel
        The wrapped model.
    seam_weight : float
        Weight of the seam term (>= 0).
    **kwargs
        Arguments of :class:`~glacierxr.ml.Trainer`.

    Notes
    -----
    It overrides the Trainer's per-batch ``_forward`` (the only place the loss is formed), so it
    follows that method's contract: return ``(sum, count)`` with ``sum / count`` the batch loss.
    ``seam_weight`` is stored with the other settings in every checkpoint.
    """

    def __init__(self, model: FullSceneModel, *, seam_weight: float = 1.0, **kwargs: Any) -> None:
        if not isinstance(model, FullSceneModel):
            raise ModelError(
                f"FullSceneTrainer trains a FullSceneModel (it needs the tile size), got "
                f"{type(model).__name__}. Wrap it: FullSceneModel(model, patch=...)."
            )
        from glacierxr.ml.models.residual import ResidualForecaster

        if isinstance(model.model, ResidualForecaster):
            raise ModelError(
                "FullSceneTrainer trains on FullSceneSequences, whose inputs are the raw periods; a "
                "ResidualForecaster reads packed inputs (anomalies, context and its baseline). Train it on "
                "patches (glacierxr train, or Trainer on residual_dataset windows), then forecast whole "
                "scenes with predict_fullscene(da, FullSceneModel(model, patch=...)) or predict(da, model)."
            )
        if isinstance(seam_weight, bool) or not isinstance(seam_weight, (int, float)) or not seam_weight >= 0:
            raise ConfigError(f"seam_weight must be a number >= 0, got {seam_weight!r}.")
        super().__init__(model, **kwargs)
        self.seam_weight = float(seam_weight)

    def _settings(self) -> dict:
        return {**super()._settings(), "seam_weight": self.seam_weight}

    def _forward(self, inputs, targets, valid, *, teacher_forcing: float, train: bool):
        steps = self.steps or targets.shape[1]
        with self._autocast():
            if train:
                fed_targets = torch.where(valid.expand_as(targets), targets, torch.zeros_like(targets))
                prediction = self.model(inputs, steps, targets=fed_targets, teacher_forcing=teacher_forcing)
            else:
                prediction = self.model(inputs, steps)
        prediction = prediction.float()
        sse, count = _masked_sse(prediction, targets, valid)
        if self.seam_weight:
            seam_sse, seam_count = seam_loss(prediction, targets, valid, self.model.patch)
            # returned as (sse, count) so that sse / count = MSE + w × seam MSE, as the Trainer divides
            sse = sse + self.seam_weight * seam_sse / seam_count.clamp_min(1) * count.clamp_min(1)
        return sse, count


def load_fullscene(path: str | os.PathLike, *, map_location: Any = "cpu") -> FullSceneModel:
    """Rebuild a :class:`FullSceneModel` from a checkpoint written while training it.

    The inner model is rebuilt through the registry from the stored config, wrapped, and the
    weights are loaded with :func:`glacierxr.ml.checkpoint.load_model`.
    """
    from glacierxr.ml import checkpoint as ckpt
    from glacierxr.ml.models import model_from_config

    payload = ckpt.load_checkpoint(path, map_location=map_location)
    config = dict(payload["config"])
    if config.get("name") != FullSceneModel.model_name or not isinstance(config.get("model"), Mapping):
        raise CheckpointError(
            f"{str(path)!r} holds a {config.get('name')!r} model, not a FullSceneModel. Load it with "
            "glacierxr.ml.checkpoint.load_model(path)."
        )
    wrapper = FullSceneModel(model_from_config(config["model"]), config["patch"], halo=config.get("halo", 0))
    return ckpt.load_model(path, map_location=map_location, model=wrapper)


def predict_fullscene(
    da: xr.DataArray,
    model: FullSceneModel,
    *,
    steps: int = 4,
    normalization: tuple[float, float] | Mapping[str, float] | None = None,
    device: str = "cpu",
    time_dim: str = "time",
    y_dim: str = "y",
    x_dim: str = "x",
) -> xr.DataArray:
    """Forecast the periods after ``da`` with a :class:`FullSceneModel` over the whole scene (lazy).

    The last ``model.input_steps`` periods of ``da`` are the input; the scene is one task (a
    full-scene model sees it whole). A wrapped
    :class:`~glacierxr.ml.models.residual.ResidualForecaster` (a residual model trained on patches)
    reads its packed inputs built from the series' own history instead, in data units, as in
    :func:`glacierxr.ml.predict.predict`. Output like :func:`glacierxr.ml.predict.predict`: named
    ``<name>_forecast``, future ``time`` and a ``lead`` coordinate, the input's ``x``/``y`` and
    ``spatial_ref``, attrs ``model``, ``checkpoint_sha256``, ``input_period`` …

    Parameters
    ----------
    da : xarray.DataArray
        ``(time, y, x)`` composites.
    model : FullSceneModel
        The wrapped model.
    steps : int
        Periods to forecast.
    normalization : (mean, std) or {"mean", "std"}, optional
        Default ``model.normalization`` when set, else none (not used by a residual model).
    device : str
        Torch device.
    """
    import dask
    import dask.array as dsa

    from glacierxr.ml.checkpoint import weights_sha256
    from glacierxr.ml.models.residual import ResidualForecaster
    from glacierxr.ml.predict import _model_inputs, forecast_coords

    if not isinstance(model, FullSceneModel):
        raise DataTypeError(f"model must be a FullSceneModel, got {type(model).__name__}. Wrap it first.")
    require_series(da, (time_dim, y_dim, x_dim), what="predict_fullscene")
    require_positive(steps, name="steps", integer=True, example=4)
    input_steps = model.input_steps
    if da.sizes[time_dim] < input_steps:
        raise DimensionError(
            f"The model needs {input_steps} input periods but the series has {da.sizes[time_dim]}."
        )
    # the frames the model reads, as predict() builds them: the last periods normalised like the
    # model was trained, or a residual model's packed inputs from the series' history (data units)
    residual = isinstance(model.model, ResidualForecaster)
    history, (mean, std) = _model_inputs(da, model.model if residual else model, int(steps), input_steps,
                                         normalization, (time_dim, y_dim, x_dim))
    data = history.data
    if not isinstance(data, dsa.Array):
        data = dsa.from_array(np.asarray(data), chunks=-1)
    data = data.rechunk(-1)

    def run(block: np.ndarray, model) -> np.ndarray:
        values = (np.asarray(block, dtype=np.float32) - mean) / std
        values = np.where(np.isfinite(values), values, 0.0).astype(np.float32)
        model.eval()
        with torch.inference_mode():
            output = model(torch.from_numpy(values[None, :, None]).to(device), int(steps))
        return (output[0, :, 0].float().cpu().numpy() * std + mean).astype(np.float32)

    height, width = da.sizes[y_dim], da.sizes[x_dim]
    task = dask.delayed(run, pure=True)(data, dask.delayed(model, pure=True, traverse=False))
    forecast = dsa.from_delayed(task, shape=(int(steps), height, width), dtype=np.float32)
    times = pd.DatetimeIndex(da[time_dim].values)
    months = da.attrs.get("months") or da.attrs.get("composite_months")
    coords = forecast_coords(da, int(steps), (time_dim, y_dim, x_dim), months=months)
    attrs = {
        "units": da.attrs.get("units", "1"),
        "long_name": f"full-scene forecast of {da.attrs.get('long_name', da.name or 'the input')}",
        "model": f"fullscene({model.get_config()['model'].get('name', type(model.model).__name__)})",
        "checkpoint_sha256": getattr(model, "checkpoint_sha256", None) or weights_sha256(model),
        "input_period": f"{times[-input_steps].date()}/{times[-1].date()}",
        "input_steps": int(input_steps),
        "steps": int(steps),
        "patch": model.patch,
        "halo": model.halo,
        "normalization": [mean, std],
    }
    if months:
        attrs["months"] = int(months)
    bounds = valid_range(da)  # within what the variable can be, like predict() (glacierxr._range)
    forecast = clip_to_range(forecast, bounds)
    attrs.update(range_attrs(bounds))
    name = f"{da.name or 'snow_mask'}_forecast"
    return xr.DataArray(forecast, dims=(time_dim, y_dim, x_dim), coords=coords, name=name, attrs=attrs)


# --------------------------------------------------------------------------------------------
# U-Net denoising pass
# --------------------------------------------------------------------------------------------
class DenoisingUNet(nn.Module):
    """U-Net that removes seams and noise from stitched forecast frames (seed paper § 5.2).

    ``(N, 1, H, W)`` → ``(N, 1, H, W)``, any ``H × W`` (padded by edge replication to a multiple
    of ``2 ** depth`` and cropped back). The U-Net (:class:`glacierxr.ml.models.unet.UNet`:
    3 × 3 convolutions, 2 × 2 max-pooling, up-convolutions and skip connections) predicts a
    correction that is added to the input, so an untrained or unsure denoiser starts close to
    the identity.

    Parameters
    ----------
    base_channels : int
        Channels of the first level (doubled at each level).
    depth : int
        Number of poolings.
    dropout : float
        Dropout at the bottom of the U-Net.

    Examples
    --------
    >>> denoiser = DenoisingUNet(base_channels=4, depth=2)
    >>> denoiser(torch.zeros(3, 1, 30, 41)).shape
    torch.Size([3, 1, 30, 41])
    """

    model_name = "denoising_unet"

    def __init__(self, *, base_channels: int = 16, depth: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        from glacierxr.ml.models.base import check_int, check_probability
        from glacierxr.ml.models.unet import UNet

        name = self.model_name
        self.base_channels = check_int(name, "base_channels", base_channels)
        self.depth = check_int(name, "depth", depth, minimum=0)
        self.dropout = check_probability(name, "dropout", dropout)
        self.unet = UNet(1, 1, self.base_channels, self.depth, self.dropout)
        with torch.no_grad():  # start as the identity: the correction begins at zero
            self.unet.out.weight.zero_()
            self.unet.out.bias.zero_()

    def get_config(self) -> dict[str, Any]:
        """``{"name": "denoising_unet", "base_channels", "depth", "dropout"}``."""
        return {
            "name": self.model_name,
            "base_channels": self.base_channels,
            "depth": self.depth,
            "dropout": self.dropout,
        }

    @property
    def receptive_radius(self) -> int:
        """Pixels on each side that can change an output pixel (an upper bound)."""
        return 8 * 2**self.depth

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        from glacierxr.ml.models.base import pad_to_multiple

        if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 1:
            found = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise DimensionError(f"DenoisingUNet takes frames (N, 1, H, W); found {found}.")
        padded, height, width = pad_to_multiple(frames, 2**self.depth)
        return frames + self.unet(padded)[..., :height, :width]


def _frames(values, name: str) -> np.ndarray:
    """``(..., H, W)`` array-like / tensor / DataArray → float32 ``(N, H, W)``."""
    if isinstance(values, xr.DataArray):
        values = values.to_numpy()
    elif isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float32)
    if array.ndim < 2:
        raise DimensionError(f"{name} must have at least 2 dims (..., height, width); got shape {array.shape}.")
    return array.reshape(-1, *array.shape[-2:])


def train_denoiser(
    forecasts,
    targets,
    valid=None,
    *,
    base_channels: int = 16,
    depth: int = 2,
    dropout: float = 0.0,
    epochs: int = 30,
    batch_size: int = 8,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    crop: int | None = 64,
    flips: bool = True,
    seed: int = 0,
    device: str = "cpu",
) -> DenoisingUNet:
    """Fit a :class:`DenoisingUNet` that maps stitched forecasts to the composites they forecast.

    Parameters
    ----------
    forecasts, targets : array-like, torch.Tensor or xarray.DataArray
        Same shape ``(..., H, W)`` (e.g. ``(samples, leads, H, W)``); every leading index is one
        frame. In data units. Use forecasts of periods outside the evaluation period (e.g.
        the training periods) so the denoiser never sees test targets.
    valid : same shape, optional
        True where the target is a real observation; NaN targets are always left out.
    base_channels, depth, dropout
        Size of the U-Net (see :class:`DenoisingUNet`).
    epochs, batch_size, lr, weight_decay
        AdamW training on the masked MSE.
    crop : int or None
        Train on random ``crop × crop`` windows of the frames (augmentation and speed); None
        uses whole frames.
    flips : bool
        Random horizontal/vertical flips (seams look the same mirrored).
    seed : int
        Seed of the initialisation, the crops and the order.
    device : str
        Torch device.

    Returns
    -------
    DenoisingUNet
        In eval mode, with ``history`` (mean training loss per epoch) and ``normalization``
        ``None`` (it works in data units).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> clean = rng.random((4, 16, 16)).astype("float32")
    >>> denoiser = train_denoiser(clean + 0.1, clean, base_channels=4, depth=1, epochs=3, crop=None)
    >>> len(denoiser.history)
    3
    """
    from glacierxr.ml.train import masked_mse

    x = _frames(forecasts, "forecasts")
    y = _frames(targets, "targets")
    if x.shape != y.shape:
        raise DimensionError(f"forecasts {x.shape} and targets {y.shape} must have the same shape (as frames).")
    ok = np.isfinite(y)
    if valid is not None:
        mask = _frames(valid, "valid")
        if mask.shape != y.shape:
            raise DimensionError(f"valid {mask.shape} must have the targets' shape {y.shape}.")
        ok &= mask.astype(bool)
    x = np.where(np.isfinite(x), x, 0.0).astype(np.float32)
    y = np.where(ok, y, 0.0).astype(np.float32)
    for label, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ConfigError(f"{label} must be a positive integer, got {value!r}.")
    height, width = x.shape[-2:]
    if crop is not None:
        crop = int(min(crop, height, width))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    denoiser = DenoisingUNet(base_channels=base_channels, depth=depth, dropout=dropout).to(device)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=lr, weight_decay=weight_decay)
    inputs, wanted, weights = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(ok.astype(np.float32))
    history = []
    denoiser.train()
    for _ in range(int(epochs)):
        order = rng.permutation(x.shape[0])
        total, batches = 0.0, 0
        for first in range(0, order.size, int(batch_size)):
            index = torch.from_numpy(order[first : first + int(batch_size)])
            a, b, m = inputs[index], wanted[index], weights[index]
            if crop is not None and (crop < height or crop < width):
                top = int(rng.integers(0, height - crop + 1))
                left = int(rng.integers(0, width - crop + 1))
                a, b, m = (t[..., top : top + crop, left : left + crop] for t in (a, b, m))
            if flips:
                dims = [d for d, flip in ((-1, rng.random() < 0.5), (-2, rng.random() < 0.5)) if flip]
                if dims:
                    a, b, m = (t.flip(dims) for t in (a, b, m))
            a, b, m = (t[:, None].to(device) for t in (a, b, m))
            loss = masked_mse(denoiser(a), b, m)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            batches += 1
        history.append(total / max(batches, 1))
    denoiser.eval()
    denoiser.history = history
    denoiser.normalization = None
    return denoiser


def load_denoiser(path: str | os.PathLike, *, map_location: Any = "cpu") -> DenoisingUNet:
    """Reload a :class:`DenoisingUNet` saved with :func:`glacierxr.ml.checkpoint.save_model`."""
    from glacierxr.ml import checkpoint as ckpt

    payload = ckpt.load_checkpoint(path, map_location=map_location)
    config = dict(payload["config"])
    if config.pop("name", None) != DenoisingUNet.model_name:
        raise CheckpointError(f"{str(path)!r} does not hold a DenoisingUNet; load it with load_model(path).")
    return ckpt.load_model(path, map_location=map_location, model=DenoisingUNet(**config))


def _denoise_block(block: np.ndarray, denoiser: DenoisingUNet, device: str) -> np.ndarray:
    frames = np.asarray(block, dtype=np.float32)
    lead, (height, width) = frames.shape[:-2], frames.shape[-2:]
    flat = frames.reshape(-1, height, width)
    missing = ~np.isfinite(flat)
    with torch.inference_mode():
        tensor = torch.from_numpy(np.where(missing, 0.0, flat).astype(np.float32))[:, None].to(device)
        out = denoiser(tensor)[:, 0].float().cpu().numpy()
    out[missing] = np.nan
    return out.reshape(*lead, height, width)


def denoise(
    forecast: xr.DataArray,
    denoiser: DenoisingUNet,
    *,
    overlap: int | None = None,
    device: str = "cpu",
    y_dim: str = "y",
    x_dim: str = "x",
) -> xr.DataArray:
    """Apply a :class:`DenoisingUNet` to every frame of a forecast DataArray, lazily.

    Every 2-D ``(y, x)`` frame (any other dims, e.g. ``time``, are frames) is denoised
    independently. Dask-backed input is processed block by block with
    :func:`dask.array.map_overlap`: each block is extended by ``overlap`` pixels of its
    neighbours (no padding at the scene edges) and trimmed back, so the result matches a
    whole-scene pass when ``overlap`` covers the U-Net's receptive field and block edges fall on
    multiples of ``2 ** depth``. NumPy-backed input is wrapped as a single Dask block; nothing is
    computed until asked for.

    Parameters
    ----------
    forecast : xarray.DataArray
        Frames with ``y_dim`` and ``x_dim`` (e.g. :func:`glacierxr.ml.predict.predict` output).
    denoiser : DenoisingUNet
        A trained denoiser (:func:`train_denoiser`).
    overlap : int, optional
        Pixels of context per block side; default ``denoiser.receptive_radius``.
    device : str
        Torch device.

    Returns
    -------
    xarray.DataArray
        Same dims, coords (``spatial_ref`` included), name and attrs as ``forecast``, with
        ``attrs["denoised"] = "DenoisingUNet(...)"`` and ``attrs["denoise_overlap"]``.

    Examples
    --------
    >>> from glacierxr.testing import make_series
    >>> frames = make_series(np.zeros((2, 20, 20), dtype="float32"))
    >>> out = denoise(frames, DenoisingUNet(base_channels=4, depth=1))
    >>> out.dims, float(out.sum())
    (('time', 'y', 'x'), 0.0)
    """
    import dask.array as dsa

    if not isinstance(forecast, xr.DataArray):
        raise DataTypeError(f"denoise works on a DataArray, got {type(forecast).__name__}.")
    if not isinstance(denoiser, DenoisingUNet):
        raise DataTypeError(
            f"denoiser must be a DenoisingUNet (from train_denoiser), got {type(denoiser).__name__}."
        )
    require_dims(forecast, (y_dim, x_dim), what="denoise")
    overlap = denoiser.receptive_radius if overlap is None else int(overlap)
    if overlap < 0:
        raise ConfigError(f"overlap must be >= 0, got {overlap}.")
    order = [d for d in forecast.dims if d not in (y_dim, x_dim)] + [y_dim, x_dim]
    frames = forecast.transpose(*order)
    data = frames.data
    if not isinstance(data, dsa.Array):
        data = dsa.from_array(np.asarray(data), chunks=-1)
    lead_axes = data.ndim - 2
    depth = {axis: 0 for axis in range(lead_axes)}
    depth.update({lead_axes: min(overlap, data.shape[-2] - 1), lead_axes + 1: min(overlap, data.shape[-1] - 1)})
    from dask.base import tokenize

    from glacierxr.ml.checkpoint import weights_sha256

    denoised = dsa.map_overlap(
        _denoise_block,
        data,
        depth=depth,
        boundary="none",
        trim=True,
        dtype=np.float32,
        meta=np.empty((0,) * data.ndim, dtype=np.float32),
        denoiser=denoiser,
        device=device,
        # the module is not tokenised by Dask: name the result by the data, the weights and the overlap
        name="denoise-" + tokenize(data.name, weights_sha256(denoiser), overlap, device),
    )
    out = frames.copy(data=denoised).transpose(*forecast.dims)
    out.attrs = {
        **forecast.attrs,
        "denoised": f"DenoisingUNet(base_channels={denoiser.base_channels}, depth={denoiser.depth})",
        "denoise_overlap": overlap,
    }
    return out
