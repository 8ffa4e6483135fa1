"""Full-scene forecasts stitched from overlapping patches, lazily and block by block.

The scene is covered by a *global* grid of windows (``patch`` pixels, ``stride = patch − overlap``,
the last window of each row/column shifted to end on the scene edge so no pixel is left out).
Each window's forecast is weighted by a smooth 2-D Hann taper and the weighted forecasts are
averaged where windows overlap, so no seam shows at window borders.

Work is split by output block: a block gathers every global window that touches it (from a slab of
the input that extends ``patch`` pixels beyond the block), so a block's pixels are exactly what a
single whole-scene computation would give.  Blocks are independent Dask tasks: a region larger
than memory predicts on a cluster, and the threaded scheduler and ``dask.distributed`` give the same
numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import dask
import dask.array as dsa
import numpy as np
import pandas as pd
import xarray as xr

from glacierxr import _cf
from glacierxr._range import clip_to_range, range_attrs, valid_range
from glacierxr._validate import require_choice, require_positive, require_series
from glacierxr.errors import DataTypeError, DimensionError, ModelError
from glacierxr.ml.checkpoint import weights_sha256
from glacierxr.ml.patches import window_starts  # one window grid for training and prediction

__all__ = ["predict", "predict_array", "window_starts", "blend_weights", "future_times"]


def blend_weights(patch: int, kind: Literal["hann", "linear", "uniform"] = "hann") -> np.ndarray:
    """2-D blending weights of one window: a smooth taper that is highest in the centre.

    A small floor keeps pixels covered by a single window (scene corners) finite.

    Examples
    --------
    >>> w = blend_weights(8)
    >>> w.shape, float(w.max()) <= 1.0, float(w.min()) > 0
    ((8, 8), True, True)
    """
    if kind == "uniform":
        ramp = np.ones(patch)
    elif kind == "linear":
        ramp = 1.0 - np.abs(np.linspace(-1.0, 1.0, patch + 2)[1:-1])
    elif kind == "hann":
        ramp = np.hanning(patch + 2)[1:-1]
    else:
        require_choice(kind, ("hann", "linear", "uniform"), name="blend")
    ramp = np.maximum(ramp, 1e-3)
    return np.outer(ramp, ramp).astype(np.float32)


def future_times(time: pd.DatetimeIndex, steps: int, *, months: int | None = None) -> pd.DatetimeIndex:
    """Dates of the next ``steps`` periods after ``time[-1]``.

    With ``months`` (as recorded by :func:`glacierxr.composite.monthly`) periods are calendar
    months apart; so they are when ``time`` holds first days of months a constant number of
    months apart; otherwise the median spacing of ``time`` is used.

    Examples
    --------
    >>> t = pd.date_range("2020-01-01", periods=4, freq="3MS")
    >>> future_times(t, 2, months=3).strftime("%Y-%m-%d").tolist()
    ['2021-01-01', '2021-04-01']
    """
    last = pd.Timestamp(time[-1])
    months = months or calendar_months(pd.DatetimeIndex(time))
    if months:
        return pd.DatetimeIndex([last + pd.DateOffset(months=months * k) for k in range(1, steps + 1)])
    if len(time) < 2:
        raise DimensionError("Cannot infer the period length from a single time step; pass months=.")
    step = pd.Series(time).diff().median()
    return pd.DatetimeIndex([last + step * k for k in range(1, steps + 1)])


def calendar_months(time: pd.DatetimeIndex) -> int | None:
    """``k`` when ``time`` holds first days of months ``k`` apart (composites), else ``None``.

    >>> calendar_months(pd.date_range("2020-01-01", periods=3, freq="QS"))
    3
    """
    steps = np.diff(np.asarray(time.year) * 12 + np.asarray(time.month))
    if steps.size and (np.asarray(time.day) == 1).all() and (steps == steps[0]).all() and steps[0] > 0:
        return int(steps[0])
    return None


def forecast_coords(da: xr.DataArray, steps: int, dims, *, months: int | None = None) -> dict:
    """Coordinates of a forecast of ``da``: the next ``steps`` period dates, ``lead`` 1…steps,
    and the input's ``y``/``x`` and ``spatial_ref`` (shared by :func:`predict` and
    :func:`glacierxr.ml.fullscene.predict_fullscene`)."""
    time_dim, y_dim, x_dim = dims
    times = pd.DatetimeIndex(da[time_dim].values)
    coords = {
        time_dim: future_times(times, int(steps), months=int(months) if months else None),
        "lead": (time_dim, np.arange(1, int(steps) + 1)),
        y_dim: da[y_dim],
        x_dim: da[x_dim],
    }
    if "spatial_ref" in da.coords:
        coords["spatial_ref"] = da.coords["spatial_ref"]
    return coords


def _model_name(model) -> str:
    config = getattr(model, "get_config", None)
    if callable(config):
        return str(config().get("name", type(model).__name__))
    return type(model).__name__


def _run_windows(model, slab: np.ndarray, starts_y, starts_x, *, patch, steps, batch_size, weights, device):
    """Forecast every window of ``slab`` (T_in, H, W) and blend them. Returns (steps, H, W)."""
    import torch

    t_in, height, width = slab.shape
    accumulated = np.zeros((steps, height, width), dtype=np.float64)
    weight_sum = np.zeros((height, width), dtype=np.float64)
    grid_y, grid_x = np.meshgrid(np.asarray(starts_y), np.asarray(starts_x), indexing="ij")
    ys, xs = grid_y.ravel(), grid_x.ravel()
    # every window of the slab as a view; a batch is one fancy-indexing copy (no per-window Python)
    windows = np.lib.stride_tricks.sliding_window_view(slab.astype(np.float32, copy=False), (t_in, patch, patch))[0]
    with torch.inference_mode():
        for first in range(0, ys.size, batch_size):
            y, x = ys[first : first + batch_size], xs[first : first + batch_size]
            inputs = torch.from_numpy(windows[y, x][:, :, None]).to(device)
            output = model(inputs, steps=steps).detach().float().cpu().numpy()[:, :, 0]
            _accumulate(accumulated, weight_sum, output, list(zip(y.tolist(), x.tolist())), weights)
    return (accumulated / weight_sum).astype(np.float32)


def _accumulate(accumulated, weight_sum, windows, corners, weights) -> None:
    """Add weighted windows ``(N, T, P, P)`` at ``corners`` into running sums, in place."""
    patch = weights.shape[0]
    for (y, x), window in zip(corners, windows):
        accumulated[:, y : y + patch, x : x + patch] += window * weights
        weight_sum[y : y + patch, x : x + patch] += weights


def _predict_block(
    slab: np.ndarray,
    model,
    *,
    slab_y0: int,
    slab_x0: int,
    core: tuple[int, int, int, int],
    starts_y: np.ndarray,
    starts_x: np.ndarray,
    patch: int,
    steps: int,
    batch_size: int,
    weights: np.ndarray,
    mean: float,
    std: float,
    device: str,
) -> np.ndarray:
    y0, y1, x0, x1 = core
    slab = (np.asarray(slab, dtype=np.float32) - mean) / std
    slab = np.where(np.isfinite(slab), slab, 0.0).astype(np.float32)
    local_y = starts_y - slab_y0
    local_x = starts_x - slab_x0
    model.eval()
    blended = _run_windows(
        model, slab, local_y, local_x, patch=patch, steps=steps, batch_size=batch_size,
        weights=weights, device=device,
    )
    blended = blended * std + mean
    return blended[:, y0 - slab_y0 : y1 - slab_y0, x0 - slab_x0 : x1 - slab_x0]


def predict_array(
    inputs: dsa.Array,
    model,
    *,
    steps: int,
    patch: int,
    stride: int,
    batch_size: int = 64,
    blend: Literal["hann", "linear", "uniform"] = "hann",
    normalization: tuple[float, float] = (0.0, 1.0),
    device: str = "cpu",
) -> dsa.Array:
    """Blockwise, lazy forecast of a ``(T_in, Y, X)`` Dask array; returns ``(steps, Y, X)``.

    Output blocks follow the spatial chunks of ``inputs``.
    """
    _, height, width = inputs.shape
    starts_y_all = window_starts(height, patch, stride, dim="y")
    starts_x_all = window_starts(width, patch, stride, dim="x")
    weights = blend_weights(patch, blend)
    mean, std = (float(v) for v in normalization)
    model_key = dask.delayed(model, pure=True, traverse=False)
    y_edges = np.cumsum((0,) + inputs.chunks[1])
    x_edges = np.cumsum((0,) + inputs.chunks[2])
    rows = []
    for y0, y1 in zip(y_edges[:-1], y_edges[1:]):
        sy = starts_y_all[(starts_y_all < y1) & (starts_y_all + patch > y0)]
        row = []
        for x0, x1 in zip(x_edges[:-1], x_edges[1:]):
            sx = starts_x_all[(starts_x_all < x1) & (starts_x_all + patch > x0)]
            slab_y0, slab_y1 = int(sy.min()), int(sy.max()) + patch
            slab_x0, slab_x1 = int(sx.min()), int(sx.max()) + patch
            slab = inputs[:, slab_y0:slab_y1, slab_x0:slab_x1]
            block = dask.delayed(_predict_block, pure=True)(
                slab,
                model_key,
                slab_y0=slab_y0,
                slab_x0=slab_x0,
                core=(int(y0), int(y1), int(x0), int(x1)),
                starts_y=sy,
                starts_x=sx,
                patch=patch,
                steps=steps,
                batch_size=batch_size,
                weights=weights,
                mean=mean,
                std=std,
                device=device,
            )
            row.append(dsa.from_delayed(block, shape=(steps, int(y1 - y0), int(x1 - x0)), dtype=np.float32))
        rows.append(row)
    return dsa.block(rows)


def predict(
    da: xr.DataArray,
    model,
    *,
    steps: int = 4,
    input_steps: int | None = None,
    patch: int = 50,
    overlap: int | None = None,
    batch_size: int = 64,
    blend: Literal["hann", "linear", "uniform"] = "hann",
    normalization: tuple[float, float] | None = None,
    chunks: int | dict | None = None,
    device: str = "cpu",
    time_dim: str = "time",
    y_dim: str = "y",
    x_dim: str = "x",
) -> xr.DataArray:
    """Forecast the next ``steps`` periods of a whole scene, lazily, as a labelled DataArray.

    Parameters
    ----------
    da : xarray.DataArray
        ``(time, y, x)`` series, typically snow-mask composites from
        :func:`glacierxr.composite.monthly`. The last ``input_steps`` steps are the model input.
    model : torch.nn.Module
        A glacierxr model (``model(inputs, steps=...)`` maps ``(B, T_in, 1, H, W)`` to
        ``(B, steps, 1, H, W)``), e.g. from :func:`glacierxr.ml.get_model` or
        :func:`glacierxr.ml.checkpoint.load_model`.
    steps : int
        Number of future periods to forecast (lead times 1 … steps).
    input_steps : int, optional
        Input length; default: the model's ``input_steps`` attribute/config, else 4.
    patch : int
        Window size in pixels (the size the model was trained on).
    overlap : int, optional
        Overlap of neighbouring windows in pixels; default ``patch // 2``.
    batch_size : int
        Windows per forward pass.
    blend : {"hann", "linear", "uniform"}
        Weights of each window when overlapping forecasts are averaged; ``"uniform"`` shows seams.
    normalization : (mean, std), optional
        Applied to the inputs and undone on the outputs; default: the model's
        ``normalization`` attribute (set by :func:`glacierxr.ml.checkpoint.load_model`), else none.
        A :class:`~glacierxr.ml.models.residual.ResidualForecaster` reads its own packed inputs
        instead (anomalies from the series' climatology, its baseline: see
        :func:`~glacierxr.ml.models.residual.scene_inputs`), in data units.
    chunks : int or dict, optional
        Spatial block size of the output (``{"y": 512, "x": 512}``); default: the input's spatial
        chunks (or one block for numpy input).
    device : str
        Torch device of the forward passes.

    Returns
    -------
    xarray.DataArray
        ``(time, y, x)`` named ``<name>_forecast``: ``time`` holds the next period dates, a
        ``lead`` coordinate 1…steps, the input's ``x``/``y``/``spatial_ref``, attrs naming the
        model, the SHA-256 of its weights and the input period. Lazy: nothing runs until it is
        computed or written. Values are clipped to the variable's valid range (``[0, 1]`` for
        a snow mask, ``[-1, 1]`` for the NDSI, or the input's ``valid_min``/``valid_max``; see
        :mod:`glacierxr._range`), recorded as ``valid_min``/``valid_max`` attrs.

    Raises
    ------
    DimensionError
        Missing dims, too few time steps or a patch larger than the scene.
    ConfigError
        ``steps`` is not a positive integer (the same error :class:`glacierxr.ml.Trainer` gives).
    DataTypeError
        ``model`` is not a torch module, or ``da`` is not numeric.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from glacierxr.testing import make_series
    >>> class Persistence(torch.nn.Module):
    ...     def forward(self, inputs, steps, targets=None):
    ...         return inputs[:, -1:].repeat(1, steps, 1, 1, 1)
    >>> series = make_series(np.random.default_rng(0).random((5, 30, 30)), freq="MS")
    >>> forecast = predict(series, Persistence(), steps=2, patch=10)
    >>> forecast.dims, forecast.lead.values.tolist()
    (('time', 'y', 'x'), [1, 2])
    >>> bool(np.allclose(forecast.isel(time=0), series.isel(time=-1)))
    True
    """
    input_steps, overlap = _check_predict(
        da, model, steps=steps, input_steps=input_steps, patch=patch, overlap=overlap,
        dims=(time_dim, y_dim, x_dim),
    )
    history, normalization = _model_inputs(da, model, int(steps), input_steps, normalization, (time_dim, y_dim, x_dim))
    forecast = predict_array(
        _blocks(history.data, chunks, y_dim, x_dim), model, steps=int(steps), patch=patch,
        stride=patch - overlap, batch_size=batch_size, blend=blend, normalization=normalization,
        device=device,
    )
    parameters = {
        "input_steps": int(input_steps), "steps": int(steps), "patch": int(patch),
        "overlap": int(overlap), "blend": blend, "normalization": list(normalization),
    }
    return _describe(forecast, da, model, parameters, dims=(time_dim, y_dim, x_dim))


def _model_inputs(da, model, steps: int, input_steps: int, normalization, dims):
    """The frames the model reads, and their ``(mean, std)``.

    The last ``input_steps`` periods, normalised like the model was trained; for a
    :class:`~glacierxr.ml.models.residual.ResidualForecaster`, its packed inputs built from the
    series' own history (:func:`~glacierxr.ml.models.residual.scene_inputs`; data units).
    """
    from glacierxr.ml.models.residual import ResidualForecaster, scene_inputs

    time_dim, y_dim, x_dim = dims
    if isinstance(model, ResidualForecaster):
        return scene_inputs(da, model, steps, dims=dims, months=da.attrs.get("months")), (0.0, 1.0)
    history = da.transpose(time_dim, y_dim, x_dim).isel({time_dim: slice(-input_steps, None)})
    return history, _normalization(model, normalization)


def _check_predict(da, model, *, steps, input_steps, patch, overlap, dims) -> tuple[int, int]:
    """Validate :func:`predict`'s inputs (metadata only); return ``input_steps`` and ``overlap``."""
    try:
        import torch
    except ImportError as error:  # pragma: no cover
        raise ModelError("predict needs PyTorch: pip install 'glacierxr[ml]'") from error
    if not isinstance(model, torch.nn.Module):
        raise DataTypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}. "
            "Load one with glacierxr.ml.checkpoint.load_model(path) or gx.ml.get_model(name)."
        )
    time_dim, y_dim, x_dim = dims
    require_series(da, dims, what="predict")  # the forecast dates follow the last input: order matters
    require_positive(steps, name="steps", integer=True, example=4)
    if input_steps is None:
        config = model.get_config() if callable(getattr(model, "get_config", None)) else {}
        input_steps = int(getattr(model, "input_steps", config.get("input_steps", 4)))
    if da.sizes[time_dim] < input_steps:
        raise DimensionError(
            f"The model needs {input_steps} input steps but the series has {da.sizes[time_dim]}. "
            "Pass a longer series or input_steps=."
        )
    overlap = patch // 2 if overlap is None else overlap
    if not 0 <= overlap < patch:
        raise DimensionError(f"overlap must be in [0, patch); got overlap={overlap}, patch={patch}.")
    for dim in (y_dim, x_dim):
        if patch > da.sizes[dim]:
            raise DimensionError(
                f"The patch ({patch} px) is larger than the scene ({da.sizes[dim]} px along {dim!r}). "
                f"Pass patch=<= {min(da.sizes[y_dim], da.sizes[x_dim])} (and a model trained on it)."
            )
    return int(input_steps), int(overlap)


def _normalization(model, normalization) -> tuple[float, float]:
    """``(mean, std)`` from the argument, else the model's, else no scaling."""
    if normalization is None:
        normalization = getattr(model, "normalization", None) or (0.0, 1.0)
    if isinstance(normalization, Mapping):  # as stored by PatchSequences / checkpoints
        normalization = (normalization.get("mean", 0.0), normalization.get("std", 1.0))
    return tuple(float(v) for v in normalization)


def _blocks(data, chunks, y_dim, x_dim) -> dsa.Array:
    """The input steps as a Dask array whole in time, chunked in space as asked."""
    if not isinstance(data, dsa.Array):
        data = dsa.from_array(np.asarray(data), chunks=(-1, -1, -1))
    if chunks is None:
        # The last input_steps steps are a derived array; gathering them in time is needed per block.
        return data.rechunk({0: -1})
    if isinstance(chunks, int):
        chunks = {y_dim: chunks, x_dim: chunks}
    return data.rechunk({0: -1, 1: chunks.get(y_dim, -1), 2: chunks.get(x_dim, -1)})


def _describe(forecast: dsa.Array, da: xr.DataArray, model, parameters: dict, *, dims) -> xr.DataArray:
    """Label the forecast: future dates, lead times, the input's grid, CF metadata, parameters."""
    time_dim, y_dim, x_dim = dims
    steps, input_steps = parameters["steps"], parameters["input_steps"]
    times = pd.DatetimeIndex(da[time_dim].values)
    months = da.attrs.get("months")
    coords = forecast_coords(da, steps, dims, months=months)
    attrs = {
        "units": da.attrs.get("units", "1"),
        "long_name": f"forecast of {da.attrs.get('long_name', da.name or 'the input')}",
        "model": _model_name(model),
        "checkpoint_sha256": getattr(model, "checkpoint_sha256", None) or weights_sha256(model),
        "input_period": f"{times[-input_steps].date()}/{times[-1].date()}",
        **parameters,
    }
    if months:
        attrs["months"] = int(months)
    attrs.update({key: da.attrs[key] for key in ("source", "history", "binary") if key in da.attrs})
    bounds = valid_range(da)  # a forecast stays a value the variable can take (glacierxr._range)
    forecast = clip_to_range(forecast, bounds)
    attrs.update(range_attrs(bounds))
    name = f"{da.name or 'snow_mask'}_forecast"
    out = xr.DataArray(forecast, dims=dims, coords=coords, name=name, attrs=attrs)
    call = (
        f"predict(model={attrs['model']!r}, steps={steps}, patch={parameters['patch']}, "
        f"overlap={parameters['overlap']})"
    )
    return _cf.finalize(_cf.describe_known(out), call, x_dim=str(x_dim), y_dim=str(y_dim), time_dim=str(time_dim))
