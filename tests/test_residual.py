"""Tests of residual forecasting (glacierxr.ml.models.residual) and evaluate.window_arrays."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from glacierxr import evaluate as ev  # noqa: E402
from glacierxr.errors import ConfigError, DimensionError  # noqa: E402
from glacierxr.ml import PatchSequences  # noqa: E402
from glacierxr.ml.models import get_model  # noqa: E402
from glacierxr.ml.models.residual import (  # noqa: E402
    ResidualForecaster,
    ResidualWindows,
    residual_dataset,
    residual_scaling,
    window_inputs,
)
from glacierxr.ml.train import Trainer  # noqa: E402
from glacierxr.testing import make_series  # noqa: E402


def _ar_sequences():
    rng = np.random.default_rng(7)
    cycle = np.array([0.1, 0.4, 0.9, 0.5])
    anomaly = np.zeros(48)
    for i in range(1, 48):
        anomaly[i] = 0.8 * anomaly[i - 1] + 0.1 * rng.standard_normal()
    values = ((cycle[np.arange(48) % 4] + anomaly)[:, None, None] + 0.01 * rng.random((1, 16, 16))).astype(np.float32)
    return PatchSequences(make_series(values, freq="QS"), patch=8, stride=8), values


class _Zero(torch.nn.Module):
    """Outputs zeros and records what it was called with."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, inputs, steps, targets=None, teacher_forcing=0.0):
        self.calls.append((inputs, targets))
        return self.weight * torch.zeros(inputs.shape[0], steps, *inputs.shape[2:])


def test_window_arrays__in_window_order_and_equal_to_the_series():
    sequences, values = _ar_sequences()
    arrays = ev.window_arrays(sequences, split="test")
    windows = sequences.split("test").windows[["t0", "y0", "x0"]].to_numpy()
    for i, (t0, y0, x0) in enumerate(windows):
        np.testing.assert_array_equal(arrays["inputs"][i], values[t0 : t0 + 4, y0 : y0 + 8, x0 : x0 + 8])
        np.testing.assert_array_equal(arrays["targets"][i], values[t0 + 4 : t0 + 8, y0 : y0 + 8, x0 : x0 + 8])
    assert arrays["valid"].all() and 0.5 < float(arrays["damping"]) < 1.0


def test_residual__a_zero_correction_is_the_baseline_and_scores_like_it():
    sequences, _ = _ar_sequences()
    arrays = ev.window_arrays(sequences, split="test")
    data = residual_dataset(arrays, "anomaly_persistence", scale=0.1)
    inner = _Zero()
    model = ResidualForecaster(inner, input_steps=4, baseline="anomaly_persistence", scale=0.1)
    packed, targets, valid = data.tensors
    forecast = model(packed, steps=4, targets=targets, teacher_forcing=1.0)
    np.testing.assert_allclose(forecast[:, :, 0].detach().numpy(), arrays["anomaly_persistence"], rtol=1e-6)
    # the inner model sees the input anomalies / scale and the target residuals / scale
    seen, residual_targets = inner.calls[-1]
    np.testing.assert_allclose(seen[:, :, 0].numpy(), (arrays["inputs"] - arrays["clim_inputs"]) / 0.1, rtol=1e-5)
    np.testing.assert_allclose(residual_targets[:, :, 0].numpy(),
                               (arrays["targets"] - arrays["anomaly_persistence"]) / 0.1, rtol=1e-4, atol=1e-5)
    table = ev.evaluate(forecast[:, :, 0].detach().numpy(), sequences.split("test"), n_resamples=0, name="zero")
    rows = table.set_index(["model", "lead"])["mse"]
    assert rows[("zero", "all")] == pytest.approx(rows[("anomaly_persistence", "all")], rel=1e-5)


def test_residual__trains_with_the_trainer_and_rejects_bad_inputs():
    sequences, _ = _ar_sequences()
    train = residual_dataset(ev.window_arrays(sequences, split="train"), "climatology", scale=0.1)
    torch.manual_seed(0)
    model = ResidualForecaster(get_model("convlstm", hidden_channels=(4,)), input_steps=4,
                               baseline="climatology", scale=0.1)
    history = Trainer(model, max_epochs=2, batch_size=8, lr=1e-2, device="cpu", progress=False,
                      patience=None).fit(train)
    assert np.isfinite(history.train_loss).all()
    assert model.get_config()["baseline"] == "climatology" and model.get_config()["model"]["name"] == "convlstm"
    with pytest.raises(DimensionError, match="packed"):
        model(torch.zeros(2, 4, 1, 8, 8))
    with pytest.raises(ConfigError, match="baseline"):
        ResidualForecaster(_Zero(), input_steps=4, baseline="persistence", scale=1.0)


def test_window_arrays__scene_anomaly_is_the_departure_of_the_whole_scene_from_the_training_seasons():
    sequences, values = _ar_sequences()  # values = cycle[season] + anomaly[t] + a fixed pattern per pixel
    arrays = ev.window_arrays(sequences, split="test")
    # by hand: the fixed pattern cancels, so the departure is the anomaly minus its training mean per season
    series = values.mean(axis=(1, 2)).astype(np.float64)
    covered = np.zeros(len(values), bool)
    for t0 in np.unique(sequences.split("train").windows["t0"].to_numpy()):
        covered[t0 : t0 + 8] = True
    season = np.arange(len(values)) % 4
    clim = np.array([series[covered & (season == s)].mean() for s in range(4)])
    expected = series - clim[season]
    t0s = sequences.split("test").windows["t0"].to_numpy()
    np.testing.assert_allclose(arrays["scene_anomaly"], expected[t0s[:, None] + np.arange(4)], atol=1e-5)
    assert np.abs(arrays["scene_anomaly"]).max() > 0.05  # the anomaly is there to be seen


def test_residual__context_frames_reach_the_model_scaled_and_a_zero_correction_is_still_the_baseline():
    from glacierxr.ml.models.residual import inner_steps

    sequences, _ = _ar_sequences()
    arrays = ev.window_arrays(sequences, split="test")
    context = ("climatology", "scene_anomaly")
    packed, targets, _ = residual_dataset(arrays, "anomaly_persistence", scale=0.1, offset=0.5, context=context).tensors
    inner = _Zero()
    model = ResidualForecaster(inner, input_steps=4, baseline="anomaly_persistence", scale=0.1, context=context,
                               offset=0.5)
    forecast = model(packed, steps=4)
    np.testing.assert_allclose(forecast[:, :, 0].detach().numpy(), arrays["anomaly_persistence"], rtol=1e-6)
    seen = inner.calls[-1][0][:, :, 0].numpy()
    assert seen.shape[1] == inner_steps(4, 4, context=context) == 16
    np.testing.assert_allclose(seen[:, :4], (arrays["inputs"] - arrays["clim_inputs"]) / 0.1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(seen[:, 4:8], (arrays["clim_inputs"] - 0.5) / 0.1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(seen[:, 8:12], np.broadcast_to(arrays["scene_anomaly"][:, :, None, None] / 0.1,
                                                              seen[:, 8:12].shape), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seen[:, 12:], (arrays["anomaly_persistence"] - 0.5) / 0.1, rtol=1e-5, atol=1e-5)
    assert model.get_config()["context"] == list(context)
    with pytest.raises(DimensionError, match="packed"):  # inputs packed without the context
        model(residual_dataset(arrays, "anomaly_persistence", scale=0.1).tensors[0], steps=4)
    with pytest.raises(ConfigError, match="context"):
        ResidualForecaster(_Zero(), input_steps=4, baseline="none", scale=1.0, context=("climatology",))
    with pytest.raises(ConfigError, match="context"):
        residual_dataset(arrays, "climatology", scale=0.1, context=("elevation",))


def test_residual__a_unet_with_context_trains_with_the_trainer():
    from glacierxr.ml.models.residual import inner_steps

    sequences, _ = _ar_sequences()
    context = ("climatology", "scene_anomaly")
    train = residual_dataset(ev.window_arrays(sequences, split="train"), "anomaly_persistence", scale=0.1,
                             context=context)
    torch.manual_seed(0)
    inner = get_model("unet", input_steps=inner_steps(4, 4, context=context), base_channels=4, depth=1)
    model = ResidualForecaster(inner, input_steps=4, baseline="anomaly_persistence", scale=0.1, context=context)
    history = Trainer(model, max_epochs=2, batch_size=8, lr=1e-2, device="cpu", progress=False,
                      patience=None).fit(train)
    assert np.isfinite(history.train_loss).all() and model.model_name == "unet+anomaly_persistence+climatology+scene_anomaly"


def _quarterly(height: int = 24, width: int = 24, years: int = 12):
    rng = np.random.default_rng(4)
    season = np.tile([0.1, 0.4, 0.9, 0.5], years)
    n = 4 * years
    weather = np.zeros(n)
    for t in range(1, n):  # anomalies that persist (AR(1), 0.7 per quarter)
        weather[t] = 0.7 * weather[t - 1] + 0.1 * rng.standard_normal()
    values = season[:, None, None] + weather[:, None, None] + 0.05 * rng.random((n, height, width))
    values[n - 3, :3, :3] = np.nan  # a cloud in an input period
    return make_series(values.astype(np.float32), freq="QS")


def test_scene_inputs__lazy_and_equal_to_a_hand_computation_from_the_history():
    from glacierxr.ml.models.residual import scene_inputs
    from glacierxr.testing import raise_if_dask_computes

    da = _quarterly()
    model = ResidualForecaster(get_model("convlstm", hidden_channels=(2,)), input_steps=4, baseline="anomaly_persistence",
                               scale=0.2, context=("climatology", "scene_anomaly"), offset=0.5)
    with raise_if_dask_computes():
        packed = scene_inputs(da.chunk({"time": 8, "y": 12}), model, 4)
    values = da.values.astype(np.float64)
    phase = np.arange(values.shape[0]) % 4  # quarters from January
    clim = np.stack([np.nanmean(values[phase == p], axis=0) for p in range(4)])
    anomaly = values - clim[phase]
    ok = np.isfinite(anomaly[:-1]) & np.isfinite(anomaly[1:])
    damping = np.clip(np.sum((anomaly[:-1] * anomaly[1:])[ok]) / np.sum((anomaly[:-1] ** 2)[ok]), 0, 1)
    assert damping > 0.3  # the weather persists
    last = np.nan_to_num(anomaly[-4:])
    expected = np.concatenate([
        last / 0.2,
        (clim[phase[-4:]] - 0.5) / 0.2,
        np.broadcast_to(np.nanmean(anomaly[-4:], axis=(1, 2))[:, None, None], last.shape) / 0.2,
        np.clip(clim[np.arange(4)] + damping ** np.arange(1, 5)[:, None, None] * last[-1], 0, 1),  # next year's quarters
    ])
    np.testing.assert_allclose(packed.values, expected, atol=1e-5)


def test_residual__glacierxr_train_evaluate_and_predict_a_residual_model(tmp_path, one_torch_thread):
    from glacierxr import pipeline
    from glacierxr.config import RunConfig
    from glacierxr.ml.checkpoint import load_model

    da = _quarterly()
    config = RunConfig.from_dict({"model": {"name": "unet", "residual": "anomaly_persistence", "context": ["climatology"],
                                            "base_channels": 4, "depth": 1},
                                  "patches": {"patch": 12, "stride": 6}, "train": {"max_epochs": 1, "batch_size": 8}})
    pipeline.train(da, config, tmp_path / "run", progress=False)
    model = load_model(tmp_path / "run" / "model.pt")
    assert isinstance(model, ResidualForecaster) and model.model_name == "unet+anomaly_persistence+climatology"
    assert RunConfig.from_toml(tmp_path / "run" / "config.toml").model.residual == "anomaly_persistence"
    table = pipeline.evaluate_run(da, model, config)
    sequences = pipeline.make_sequences(da, config)
    by_hand = ev.window_arrays(sequences, split="test")
    packed = residual_dataset(by_hand, "anomaly_persistence", model.scale, offset=model.offset, context=("climatology",))
    with torch.no_grad():
        forecast = model(packed.tensors[0], steps=4)[:, :, 0].numpy()
    valid = by_hand["valid"]
    pooled = table[table["lead"].astype(str) == "all"].set_index("model")
    assert pooled.loc[model.model_name, "mse"] == pytest.approx(np.mean((forecast[valid] - by_hand["targets"][valid]) ** 2),
                                                                rel=1e-4)
    scene = pipeline.forecast(da, model, config)
    assert scene.dims == ("time", "y", "x") and np.isfinite(scene.values).all()
    zero = load_model(tmp_path / "run" / "model.pt")
    for parameter in zero.parameters():
        parameter.data.zero_()  # a zero correction: the forecast is damped anomaly persistence of the history
    from glacierxr.ml.models.residual import scene_inputs

    baseline = scene_inputs(da, zero, 4).values[-4:]
    np.testing.assert_allclose(pipeline.forecast(da, zero, config).values, baseline, atol=1e-5)


def test_residual__on_the_snow_state_model_through_train_evaluate_and_a_lazy_predict(tmp_path, one_torch_thread):
    from glacierxr import pipeline
    from glacierxr.config import RunConfig
    from glacierxr.ml import PatchSequences
    from glacierxr.ml.checkpoint import load_model
    from glacierxr.ml.snowstate import SnowStateModel
    from glacierxr.testing import raise_if_dask_computes

    da = _quarterly()
    config = RunConfig.from_dict({"model": {"name": "convlstm", "residual": "snow_state", "hidden_channels": [2]},
                                  "patches": {"patch": 12, "stride": 6}, "train": {"max_epochs": 1, "batch_size": 8}})
    assert config.model.context == ["climatology", "scene_anomaly"]
    pipeline.train(da, config, tmp_path / "run", progress=False)
    zero = load_model(tmp_path / "run" / "model.pt")
    assert zero.model_name == "convlstm+snow_state+climatology+scene_anomaly"
    for parameter in zero.parameters():
        parameter.data.zero_()  # a zero correction: the forecast is the snow-state model's
    pooled = pipeline.evaluate_run(da, zero, config).query("lead == 'all'").set_index("model")
    assert pooled.loc[zero.model_name, "mse"] == pytest.approx(pooled.loc["snow_state", "mse"], rel=1e-5)
    with raise_if_dask_computes():  # the snow-state model is fitted when the forecast is computed
        scene = pipeline.forecast(da.chunk({"time": 8}), zero, config)
    # predict fits it on the whole history, like the climatology of the other baselines
    history = PatchSequences(da, patch=24, stride=24, val_fraction=0.0, test_fraction=0.0)
    by_hand = SnowStateModel(bins=da.sizes["time"] // 4).fit(history).forecast(da.sizes["time"] - 1, 4)
    np.testing.assert_allclose(scene.values, by_hand, atol=1e-5)
    with pytest.raises(DimensionError, match="snow-state model"):
        pipeline.train(da.isel(time=slice(0, 26)), config, tmp_path / "short", progress=False)


def test_residual__auto_is_the_snow_state_model_where_the_series_supports_it(tmp_path, one_torch_thread):
    from glacierxr import pipeline
    from glacierxr.config import RunConfig
    from glacierxr.ml.checkpoint import load_model

    config = RunConfig.from_dict({"model": {"name": "convlstm", "hidden_channels": [2]},
                                  "patches": {"patch": 12, "stride": 6}, "train": {"max_epochs": 1, "batch_size": 8}})
    assert config.model.residual == "auto"
    long, short = _quarterly(), _quarterly().isel(time=slice(0, 26))  # 33 and 10 training periods
    assert pipeline.resolve_residual(config, pipeline.make_sequences(long, config)).model.residual == "snow_state"
    assert pipeline.resolve_residual(config, pipeline.make_sequences(short, config)).model.residual == "anomaly_persistence"
    assert config.model.residual == "auto"  # the caller's config is not changed
    explicit = RunConfig.from_dict({"model": {"residual": "climatology"}, "patches": {"patch": 12, "stride": 6}})
    assert pipeline.resolve_residual(explicit, pipeline.make_sequences(long, explicit)) is explicit
    pipeline.train(short, config, tmp_path / "run", progress=False)  # a short series still trains
    assert load_model(tmp_path / "run" / "model.pt").baseline == "anomaly_persistence"
    assert RunConfig.from_toml(tmp_path / "run" / "config.toml").model.residual == "anomaly_persistence"  # as run


def test_residual__config_refuses_bad_residual_options():
    from glacierxr.config import MODEL_CONTEXTS, MODEL_RESIDUALS, RunConfig
    from glacierxr.ml.models.residual import CONTEXTS, RESIDUAL_BASELINES

    assert set(MODEL_RESIDUALS) - {"auto"} <= set(RESIDUAL_BASELINES) and MODEL_CONTEXTS == CONTEXTS
    with pytest.raises(ConfigError, match="residual"):
        RunConfig.from_dict({"model": {"residual": "persistence"}})
    with pytest.raises(ConfigError, match="needs a residual"):
        RunConfig.from_dict({"model": {"residual": "none", "context": ["climatology"]}})
    default = RunConfig.from_dict({}).model  # measured better than the plain model (docs/benchmarks.md)
    assert (default.residual, default.context) == ("auto", ["climatology", "scene_anomaly"])
    assert RunConfig.from_dict({"model": {"residual": "none"}}).model.context == []
    again = RunConfig.from_dict(RunConfig.from_dict({"model": {"residual": "climatology"}}).to_dict()).model
    assert (again.residual, again.context) == ("climatology", ["climatology", "scene_anomaly"])
    with pytest.raises(ConfigError, match="context"):
        RunConfig.from_dict({"model": {"residual": "climatology", "context": ["weather"]}})


def test_residual__freeze_names_the_inner_models_parameters_like_the_bare_model():
    model = ResidualForecaster(get_model("convlstm", hidden_channels=(2,)), input_steps=4, baseline="climatology",
                               scale=0.2)
    trainer = Trainer(model, freeze=("encoder",), progress=False, device="cpu")
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith("model.encoder.") for name in frozen)
    assert any(p.requires_grad for name, p in model.named_parameters() if name.startswith("model.forecaster."))
    assert trainer.parameter_counts["frozen"] == sum(p.numel() for p in model.model.encoder.parameters())
    with pytest.raises(ConfigError, match="matches no parameter"):
        Trainer(model, freeze=("decoder",), progress=False, device="cpu")


def _cloudy_sequences(stride=3):
    """60 months of 23 x 27 px with 20 % missing values and an `observed` mask that hides 10 % more."""
    rng = np.random.default_rng(0)
    raw = rng.random((60, 23, 27)).astype(np.float32)
    raw[rng.random(raw.shape) < 0.2] = np.nan
    cube = make_series(raw, freq="MS").assign_coords(observed=(("time", "y", "x"), rng.random(raw.shape) > 0.1))
    return PatchSequences(cube, patch=8, stride=stride, normalize="auto")


def test_window_cutter__cuts_what_window_arrays_holds_bit_for_bit():
    ds = _cloudy_sequences()
    cutter = ev.WindowCutter(ds)
    for split in ("train", "test"):
        whole = ev.window_arrays(ds, split=split)
        ids = ds.split(split, shuffle=False).window_ids
        pick = np.random.default_rng(1).permutation(ids.size)[:40]  # any windows, in any order
        part = cutter.cut(ids[pick])
        assert set(part) == set(whole)
        for name, values in whole.items():
            expected = values[pick] if values.ndim else values
            assert part[name].dtype == expected.dtype, name
            np.testing.assert_array_equal(part[name], expected, err_msg=name)


@pytest.mark.parametrize(("baseline", "context"), [
    ("none", ()), ("climatology", ("climatology",)),
    ("anomaly_persistence", ("climatology", "scene_anomaly")), ("snow_state", ("scene_anomaly",))])
def test_residual_windows__are_the_packed_windows_without_holding_them(baseline, context):
    # What the pipeline trains on: cut batch by batch from the cube held once, the same samples
    # (and, through a seeded loader, the same batches) as the whole in-memory TensorDataset.
    ds = _cloudy_sequences()
    cutter = ev.WindowCutter(ds)
    for split in ("train", "val"):
        whole = residual_dataset(window_inputs(ds, split, baseline), baseline, 0.3, offset=0.4, context=context)
        lazy = ResidualWindows(ds, split, baseline=baseline, scale=0.3, offset=0.4, context=context, cutter=cutter)
        assert len(lazy) == len(whole)
        pick = np.random.default_rng(2).permutation(len(lazy))[:40]
        for got, expected in zip(lazy.tensors(pick), whole.tensors):
            assert torch.equal(got, expected[pick])
        loaders = [torch.utils.data.DataLoader(d, batch_size=16, shuffle=True,
                                               generator=torch.Generator().manual_seed(3)) for d in (lazy, whole)]
        for got, expected in zip(*loaders):
            assert all(torch.equal(a, b) for a, b in zip(got, expected))
    with pytest.raises(IndexError):
        lazy[len(lazy)]


def test_residual_scaling__of_the_windows_read_in_batches_is_the_spread_of_all_of_them():
    ds = _cloudy_sequences()
    arrays = ev.window_arrays(ds, split="train")
    expected = (np.nanstd(arrays["inputs"].astype(np.float64) - arrays["clim_inputs"]),
                np.nanmean(arrays["inputs"].astype(np.float64)))
    lazy = ResidualWindows(ds, "train", baseline="climatology", scale=1.0, batch_size=37)
    np.testing.assert_allclose(residual_scaling(lazy), expected, rtol=1e-9)
    np.testing.assert_allclose(residual_scaling(arrays), expected, rtol=1e-9)


def test_evaluate__scores_a_residual_model_batch_by_batch_like_its_forecasts_held_whole():
    from glacierxr.ml.models.residual import forecast_arrays

    ds = _cloudy_sequences(stride=4)
    torch.manual_seed(0)
    model = ResidualForecaster(get_model("convlstm", hidden_channels=(4,)), input_steps=4, baseline="anomaly_persistence",
                               scale=0.3, offset=0.4, context=("climatology",))
    held = forecast_arrays(model, window_inputs(ds, "test", model.baseline))  # the windows held whole
    options = dict(split="test", baselines=("climatology",), n_resamples=0)
    by_batch = ev.evaluate(model, ds, **options)
    whole = ev.evaluate(held, ds, name=model.model_name, **options)
    np.testing.assert_allclose(by_batch["mse"], whole["mse"], rtol=1e-6)
    assert by_batch["model"].tolist() == whole["model"].tolist()


def test_window_cutter_and_residual_windows__refuse_bad_input_clearly():
    from glacierxr.errors import DataTypeError

    ds = _cloudy_sequences()
    for build in (lambda: ev.WindowCutter("cube"), lambda: ResidualWindows("cube", "train", baseline="none", scale=1.0)):
        with pytest.raises(DataTypeError, match="PatchSequences"):
            build()
    with pytest.raises(ConfigError, match="seasonal_naive"):
        ev.WindowCutter(ds, baselines=("seasonal_naive",))
    with pytest.raises(ConfigError, match="baseline"):
        ResidualWindows(ds, "train", baseline="median", scale=1.0)
    with pytest.raises(ConfigError, match="split"):
        ResidualWindows(ds, "holdout", baseline="none", scale=1.0)
