"""Full-scene prediction: labels, laziness, seams, blockwise equality, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from glacierxr.errors import ConfigError, DataTypeError, DimensionError, ModelError  # noqa: E402
from glacierxr.ml.predict import predict, window_starts  # noqa: E402
from glacierxr.testing import make_series, raise_if_dask_computes  # noqa: E402


class Persistence(torch.nn.Module):
    """Repeats the last input frame: the forecast must equal the last frame everywhere."""

    input_steps = 3

    def forward(self, inputs, steps, targets=None):
        return inputs[:, -1:].repeat(1, steps, 1, 1, 1)


class WindowMean(torch.nn.Module):
    """Predicts each window's mean: a constant per window, so unblended windows show seams."""

    def forward(self, inputs, steps, targets=None):
        mean = inputs[:, -1:].mean(dim=(-1, -2), keepdim=True)
        return mean.expand(-1, steps, -1, inputs.shape[-2], inputs.shape[-1]).contiguous()


def _series(times=5, height=60, width=70, chunks=None, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.sin(xx / 9.0) * np.cos(yy / 7.0)
    values = np.stack([0.5 + 0.4 * base + 0.02 * rng.standard_normal(base.shape) for _ in range(times)])
    # a snow mask lies in [0, 1], and forecasts of it are clipped there (issue 17)
    series = make_series(np.clip(values, 0.0, 1.0).astype(np.float32), freq="3MS", chunks=chunks)
    series.attrs["months"] = 3
    return series


def test_predict__labels_coords_crs_and_lead_dates():
    series = _series()
    forecast = predict(series, Persistence(), steps=4, patch=20)
    assert forecast.dims == ("time", "y", "x")
    assert forecast.name == "snow_mask_forecast"
    assert forecast.lead.values.tolist() == [1, 2, 3, 4]
    expected = pd.date_range(series.time.values[-1], periods=5, freq="3MS")[1:]
    assert list(forecast.time.values) == list(expected.values)
    np.testing.assert_array_equal(forecast.x, series.x)
    np.testing.assert_array_equal(forecast.y, series.y)
    assert forecast.rio.crs == series.rio.crs
    assert forecast.attrs["input_period"] == "2020-07-01/2021-01-01"
    assert len(forecast.attrs["checkpoint_sha256"]) == 64
    for attr in ("units", "long_name", "model", "steps", "patch"):
        assert attr in forecast.attrs
    np.testing.assert_allclose(forecast.isel(time=2), series.isel(time=-1), atol=1e-6)


def test_predict__is_lazy_until_computed():
    series = _series(chunks={"time": 1, "y": 30, "x": 35})
    with raise_if_dask_computes():
        forecast = predict(series, Persistence(), steps=2, patch=20)
    assert forecast.chunks is not None
    with raise_if_dask_computes(max_computes=1):
        forecast.compute()


def test_predict__blocks_give_the_same_result_as_one_block():
    series = _series(height=64, width=80)
    model = WindowMean()
    whole = predict(series, model, steps=2, patch=16, overlap=8).values
    blocked = predict(series.chunk({"y": 20, "x": 23}), model, steps=2, patch=16, overlap=8).values
    np.testing.assert_allclose(blocked, whole, rtol=1e-6, atol=1e-6)


def _border_vs_inside_gradient(forecast: np.ndarray, starts: np.ndarray, patch: int):
    gradient = np.abs(np.diff(forecast, axis=-1)).mean(axis=(0, 1))  # per column step
    borders = set()
    for start in starts:
        borders.update({start - 1, start + patch - 1})  # steps across a window edge
    borders = sorted(b for b in borders if 0 <= b < gradient.size)
    inside = [i for i in range(gradient.size) if i not in borders]
    return gradient[borders].mean(), gradient[inside].mean()


def test_predict__hann_blending_leaves_no_seam():
    series = _series(height=48, width=96)
    patch, overlap = 16, 8
    starts = window_starts(96, patch, patch - overlap)
    hann = predict(series, WindowMean(), steps=1, patch=patch, overlap=overlap).values
    across, inside = _border_vs_inside_gradient(hann, starts, patch)
    assert across <= inside
    # The same windows averaged without tapering do show seams: the check can fail.
    flat = predict(series, WindowMean(), steps=1, patch=patch, overlap=overlap, blend="uniform").values
    across_flat, inside_flat = _border_vs_inside_gradient(flat, starts, patch)
    assert across_flat > inside_flat


def test_predict__every_pixel_is_covered_including_edges():
    series = _series(height=37, width=41)
    forecast = predict(series, Persistence(), steps=1, patch=16, overlap=5).values
    assert np.isfinite(forecast).all()
    np.testing.assert_allclose(forecast[0], series.values[-1], atol=1e-6)


@pytest.mark.slow
def test_predict__local_cluster_equals_threaded(local_cluster):
    series = _series(chunks={"time": -1, "y": 30, "x": 35})
    forecast = predict(series, WindowMean(), steps=2, patch=20)
    threaded = forecast.compute(scheduler="threads")
    distributed = local_cluster.compute(forecast).result()
    np.testing.assert_allclose(distributed.values, threaded.values, rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"steps": 0}, ConfigError, "steps must be a positive integer"),
        ({"steps": 2, "patch": 500}, DimensionError, "larger than the scene"),
        ({"steps": 2, "overlap": 30, "patch": 20}, DimensionError, "overlap must be in"),
        ({"steps": 2, "input_steps": 50}, DimensionError, "input steps"),
    ],
)
def test_predict__bad_input_says_what_to_fix(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        predict(_series(), Persistence(), **kwargs)


def test_predict__rejects_non_models_and_wrong_dims():
    with pytest.raises(DataTypeError, match="torch.nn.Module"):
        predict(_series(), object())
    with pytest.raises(DimensionError, match=r"predict needs dimensions .* lacks dimension\(s\) \['time'\]"):
        predict(_series().isel(time=0), Persistence())


@pytest.mark.parametrize(("length", "patch", "stride"), [(10, 4, 3), (11, 4, 3), (96, 16, 11), (50, 50, 10), (37, 16, 16)])
def test_window_starts__prediction_uses_the_training_grid(length, patch, stride):
    """One window grid: predict's is patches' (xbatcher), equal to the plain range rule."""
    from glacierxr.ml import patches

    expected = list(range(0, length - patch + 1, stride))
    if expected[-1] + patch < length:
        expected.append(length - patch)
    assert window_starts is patches.window_starts
    assert window_starts(length, patch, stride).tolist() == expected


def test_forecast_hash__is_the_checkpoint_hash_for_bf16_weights_too():
    """A bf16 model is hashed (numpy has no bf16), and the digest is checkpoint's."""
    import hashlib

    from glacierxr.ml.checkpoint import weights_sha256

    model = _Bf16Persistence(torch.nn.Conv2d(1, 1, 3).to(torch.bfloat16))
    digest = hashlib.sha256()  # reference: keys sorted, each tensor's raw little-endian bytes
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.view(torch.int16).numpy().astype("<i2").tobytes())
    forecast = predict(_series(), model, steps=1, patch=16)
    assert forecast.attrs["checkpoint_sha256"] == weights_sha256(model) == digest.hexdigest()


class _Bf16Persistence(torch.nn.Module):
    """Persistence holding bf16 weights (the hash must cover them)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, inputs, steps, targets=None):
        return inputs[:, -1:].repeat(1, steps, 1, 1, 1)


# --------------------------------------------------------------------------------------------
# valid range (issue 17): forecasts are values a snow mask can take
# --------------------------------------------------------------------------------------------
def _snow_mask_series(times=12, size=24, seed=0, *, level=0.45, season=0.45, persistence=0.0):
    """An NDSI snow mask as glacierxr.indices.snow_mask writes it: 0, or an NDSI in [0.3, 1].

    A seasonal cycle, a spatial pattern, noise and (``persistence`` > 0) anomalies that persist
    from one period to the next (AR(1)), common to the scene.
    """
    from glacierxr.indices import snow_mask

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    anomaly = np.zeros(times)
    for t in range(1, times):
        anomaly[t] = persistence * anomaly[t - 1] + (0.15 * rng.standard_normal() if persistence else 0.0)
    seasons = (season * np.sin(np.arange(times) * np.pi / 2) + anomaly)[:, None, None]
    noise = 0.05 * rng.standard_normal((times, size, size))
    ndsi = np.clip(level + seasons + 0.3 * np.sin(xx / 5.0) * np.cos(yy / 4.0) + noise, -1, 1)
    series = snow_mask(make_series(ndsi.astype(np.float32), freq="QS", name="ndsi"), threshold=0.3)
    series.attrs["months"] = 3
    return series


class Overshoot(torch.nn.Module):
    """A model whose raw output leaves [0, 1] (like the demo's, 8 % below 0): 3 x - 1."""

    def forward(self, inputs, steps, targets=None, teacher_forcing=0.0):
        return (3 * inputs[:, -1:] - 1).repeat(1, steps, 1, 1, 1)


@pytest.mark.parametrize("name", ["overshoot", "convlstm", "lstm", "unet", "transformer", "vit"])
def test_predict__every_model_forecast_is_within_the_valid_range(name):
    from glacierxr.ml.models import get_model, list_models

    series = _snow_mask_series()
    assert float(series.min()) == 0.0 and float(series.where(series > 0).min()) >= 0.3
    if name == "overshoot":
        model = Overshoot()
    else:
        assert name in list_models()
        torch.manual_seed(0)
        try:  # lstm and vit are built for one patch size
            model = get_model(name, height=12, width=12)
        except (TypeError, ConfigError, ModelError):
            model = get_model(name)
        with torch.no_grad():  # untrained weights, pushed so that raw outputs leave [0, 1]
            for parameter in model.parameters():
                parameter.mul_(3.0)
    forecast = predict(series, model, steps=2, input_steps=4, patch=12, overlap=4)
    values = forecast.values
    assert (forecast.attrs["valid_min"], forecast.attrs["valid_max"]) == (0.0, 1.0)
    assert np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0
    if name == "overshoot":  # clipped, not rescaled: the raw values inside the range are kept
        raw = np.clip(3 * series.values[-1] - 1, 0, 1)
        np.testing.assert_allclose(values[0], raw, atol=1e-6)
        assert (values == 0).mean() > 0.05  # the raw forecast was negative there


def test_valid_range__snow_mask_ndsi_and_attrs():
    from glacierxr._range import valid_range

    series = _snow_mask_series()
    assert valid_range(series) == (0.0, 1.0)
    assert valid_range(series.rename("anything")) == (0.0, 1.0)  # known by its attrs
    assert valid_range(name="ndsi") == (-1.0, 1.0)
    assert valid_range(name="x", attrs={"valid_range": [0, 5]}) == (0.0, 5.0)
    assert valid_range(name="x") is None
    assert predict(make_series(np.random.default_rng(0).normal(size=(4, 10, 10)).astype("float32"), name="x"),
                   Persistence(), steps=1, patch=5).attrs.get("valid_min") is None  # no range, no clip


def test_evaluate__baselines_within_the_valid_range_and_metrics_of_what_is_delivered():
    import glacierxr.evaluate as ev
    from glacierxr.ml.patches import PatchSequences

    series = _snow_mask_series(times=40, level=0.75, season=0.1, persistence=0.9)
    sequences = PatchSequences(series, input_steps=4, target_steps=4, patch=8, stride=8)
    test = sequences.split("test")
    reference = ev._Baselines(test, ev.BASELINES, None)
    overshoot = 0
    for batch in test._stream(batch_size=64, mode="raw", history=reference.history):
        raw, _ = batch.arrays
        seen = np.where(np.isnan(raw[:, reference.history : reference.history + 4]), reference.fill,
                        raw[:, reference.history : reference.history + 4])
        for name, values in reference(raw, seen, batch.ids).items():
            assert np.nanmin(values) >= 0.0 and np.nanmax(values) <= 1.0, name
        bounds, reference.bounds = reference.bounds, None
        overshoot += sum(int((np.nan_to_num(v, nan=0.5) > 1).sum() + (np.nan_to_num(v, nan=0.5) < 0).sum())
                         for v in reference(raw, seen, batch.ids).values())
        reference.bounds = bounds
    assert overshoot > 0  # without the range, damped anomaly persistence leaves [0, 1] here
    rng = np.random.default_rng(1)
    raw_predictions = rng.uniform(-0.5, 1.5, (len(test), 4, 8, 8)).astype(np.float32)
    scored = ev.evaluate(raw_predictions, test, n_resamples=0, name="model")
    delivered = ev.evaluate(np.clip(raw_predictions, 0, 1), test, n_resamples=0, name="model")
    assert (scored.attrs["valid_min"], scored.attrs["valid_max"]) == (0.0, 1.0)
    np.testing.assert_array_equal(scored["mse"].to_numpy(), delivered["mse"].to_numpy())
