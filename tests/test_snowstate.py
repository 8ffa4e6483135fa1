"""SnowStateModel: the regional snow-state forecaster, checked against an oracle written here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtr

pytest.importorskip("torch")

from glacierxr import evaluate as ev  # noqa: E402
from glacierxr.errors import ConfigError, DimensionError  # noqa: E402
from glacierxr.ml import PatchSequences  # noqa: E402
from glacierxr.ml.models import get_model  # noqa: E402
from glacierxr.ml.models.residual import ResidualForecaster, residual_dataset  # noqa: E402
from glacierxr.ml.snowstate import SnowStateModel, fit_for  # noqa: E402
from glacierxr.testing import make_series  # noqa: E402

PHI, STD, NOISE = 0.8, 150.0, 30.0  # monthly AR(1) of the snow-line anomaly (m), per-month weather (m)
MONTHS, SIZE = 240, 24


def _snow_world(seed: int = 0, retreat_at: int | None = None, after: str = "rock"):
    """Snow where a pixel's threshold (m) is above the snow line: seasonal cycle + AR(1) + noise.

    Returns the cube, the thresholds, the seasonal snow line and the AR state of each month.
    With ``retreat_at``, a block of "glacier" (always 1) changes from that month on: a permanent
    local change, to bare rock (``after="rock"``: always 0) or to ground that is snow-covered
    when the snow line is below it, like the rest of the scene (``after="seasonal"``).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    threshold = 1500.0 + 40.0 * yy + 8.0 * xx + 30.0 * rng.standard_normal((SIZE, SIZE))
    month = np.arange(MONTHS) % 12
    seasonal = 2000.0 + 400.0 * np.cos(2 * np.pi * (month - 7) / 12)
    state = np.empty(MONTHS)
    state[0] = STD * rng.standard_normal()
    for t in range(1, MONTHS):
        state[t] = PHI * state[t - 1] + STD * np.sqrt(1 - PHI**2) * rng.standard_normal()
    line = seasonal + state + NOISE * rng.standard_normal(MONTHS)
    values = (threshold[None] > line[:, None, None]).astype(np.float32)
    if retreat_at is not None:
        values[:retreat_at, :6, :6] = 1.0
        if after == "rock":
            values[retreat_at:, :6, :6] = 0.0
    return make_series(values, freq="MS"), threshold, seasonal, state


def _sequences(cube):
    return PatchSequences(cube, patch=12, stride=6, val_fraction=0.15, test_fraction=0.25)


def _oracle(threshold, seasonal, state, issue: int, steps: int) -> np.ndarray:
    """E[snow | true state at issue]: the line k months on is Gaussian around seasonal + PHI**k state."""
    out = []
    for k in range(1, steps + 1):
        mean = seasonal[issue + k] + PHI**k * state[issue]
        std = np.sqrt(STD**2 * (1 - PHI ** (2 * k)) + NOISE**2)
        out.append(ndtr((threshold - mean) / std))
    return np.stack(out)


def _mse(forecast, arrays) -> float:
    valid = arrays["valid"]
    return float(np.mean((forecast[valid] - arrays["targets"][valid]) ** 2))


def test_snow_state__captures_most_of_the_skill_the_oracle_shows_is_achievable():
    cube, threshold, seasonal, state = _snow_world()
    ds = _sequences(cube)
    model = SnowStateModel().fit(ds)
    arrays = ev.window_arrays(ds, split="test")
    test = ds.split("test", shuffle=False)
    t0, y0, x0 = test._layout.decompose(test.window_ids)
    oracle = np.stack([_oracle(threshold, seasonal, state, t + 3, 4)[:, y : y + 12, x : x + 12]
                       for t, y, x in zip(t0, y0, x0)])
    ours = _mse(model.window_forecasts(ds, "test"), arrays)
    persistence = _mse(arrays["anomaly_persistence"], arrays)
    best = _mse(oracle, arrays)
    assert best < persistence  # the world is forecastable beyond the pixel's own anomaly
    assert (persistence - ours) / (persistence - best) > 0.5
    assert model.coefficients_[0, 0] == pytest.approx(PHI, abs=0.2)  # lead 1 ≈ the AR(1) factor


def test_snow_state__a_permanent_local_change_is_carried_by_the_level():
    cube, *_ = _snow_world(seed=1, retreat_at=150)
    ds = _sequences(cube)
    model = SnowStateModel(level=12).fit(ds)  # the response learnt the block as glacier (always 1)
    issue = ds.split_info["time_ranges"]["test"][0] + 3
    assert issue >= 150 + 12
    forecast = model.forecast(issue, 4)
    assert np.abs(forecast[:, :6, :6]).max() < 0.05  # the block is rock now, and stays rock
    climatology = ev.window_arrays(ds, split="test")["climatology"]
    assert climatology.max() > 0.5  # what a forecaster that keeps the training seasons says there


def test_snow_state__a_change_inside_the_training_years_is_left_out_of_the_scene_state():
    # The block turns from glacier to rock in month 90, inside the training periods: counted in
    # the scene state, it would read as a lasting loss of snow cover (a step in the state).
    cube, _, _, state = _snow_world(seed=2, retreat_at=90)
    ds = _sequences(cube)
    train = ev.train_periods(ds)
    assert train.max() > 90
    kept, counted = SnowStateModel().fit(ds), SnowStateModel(trend_t=None).fit(ds)
    assert not kept.state_pixels_[:6, :6].any()  # the changed block is left out of the state
    assert kept.state_pixels_.mean() > 0.9  # and little else
    assert counted.state_pixels_.all()
    # the state anomaly follows the generator's AR(1) snow-line state more closely without it
    # (the anomaly falls as the snow line rises: a negative correlation)
    follows = [abs(np.corrcoef(m._anomaly_series[train], state[train])[0, 1]) for m in (kept, counted)]
    assert follows[0] > follows[1] + 0.01
    arrays = ev.window_arrays(ds, split="test")
    assert _mse(kept.window_forecasts(ds, "test"), arrays) < _mse(counted.window_forecasts(ds, "test"), arrays)



def test_snow_state__a_pixel_that_changed_regime_responds_like_its_latest_years():
    # Glacier (always snow) until month 60, then ground with seasonal snow like its neighbours:
    # fitted on every training month, its response mixes both regimes and the level can only
    # shift it; fitted on the latest quarter it has the new seasonal swing.
    cube, *_ = _snow_world(seed=4, retreat_at=60, after="seasonal")
    ds = _sequences(cube)
    latest, every = SnowStateModel(recent=0.25).fit(ds), SnowStateModel(recent=None).fit(ds)
    assert not latest.state_pixels_[:6, :6].any()  # the block trends: it is left out of the state
    arrays = ev.window_arrays(ds, split="test")
    test = ds.split("test", shuffle=False)
    _, y0, x0 = test._layout.decompose(test.window_ids)
    block = np.zeros(arrays["valid"].shape, bool)
    for i, (y, x) in enumerate(zip(y0, x0)):
        block[i, :, max(0, -y) : max(0, 6 - y), max(0, -x) : max(0, 6 - x)] = True
    assert block.any()
    on_block = {name: _mse(m.window_forecasts(ds, "test"), {**arrays, "valid": arrays["valid"] & block})
                for name, m in (("latest", latest), ("every", every))}
    assert on_block["latest"] < 0.85 * on_block["every"]  # measured 0.076 vs 0.096
    # the pixels that kept their regime are fitted as before
    same = latest.state_pixels_
    np.testing.assert_array_equal(latest._response[:, same], every._response[:, same])


def test_snow_state__fitting_by_blocks_of_pixels_changes_nothing_and_leaves_the_cube_alone(monkeypatch):
    # The fit works on blocks of rows and pixels to bound its memory (benchmarks/snowstate.py) and
    # turns the values it read into its residuals in place: with one-row bands and one-pixel
    # isotonic blocks it must learn exactly what it learns on the whole scene at once, and the
    # caller's cube (NumPy-backed, here with clouds and an `observed` coordinate) must not change.
    from glacierxr.ml import snowstate

    cube, *_ = _snow_world(seed=4, retreat_at=60, after="seasonal")
    rng = np.random.default_rng(1)
    values = np.where(rng.random(cube.shape) < 0.15, np.nan, cube.values).astype(np.float32)
    cube = cube.copy(data=values.copy()).assign_coords(observed=(cube.dims, rng.random(cube.shape) > 0.1))
    ds = _sequences(cube)
    whole = SnowStateModel().fit(ds)
    assert not whole.state_pixels_.all() and whole.monotone  # the trending refit and the isotonic fit run
    monkeypatch.setattr(snowstate, "_BLOCK_VALUES", 1)
    blocks = SnowStateModel().fit(ds)
    for name in ("_response", "centers_", "state_pixels_", "_residual", "_noise"):
        np.testing.assert_array_equal(getattr(blocks, name), getattr(whole, name), err_msg=name)
    assert blocks.damping_ == whole.damping_
    np.testing.assert_array_equal(blocks.forecast(200, 4), whole.forecast(200, 4))
    np.testing.assert_array_equal(cube.values, values)


def test_snow_state__monotone_response_is_scipys_isotonic_regression_for_every_pixel():
    from scipy.optimize import isotonic_regression

    from glacierxr.ml.snowstate import _isotonic

    rng = np.random.default_rng(3)
    values = rng.random((24, 5, 7))
    weights = rng.integers(0, 12, size=values.shape)
    fit = _isotonic(values, weights)
    for y in range(5):
        for x in range(7):
            reference = isotonic_regression(values[:, y, x], weights=np.maximum(weights[:, y, x], 1e-6)).x
            np.testing.assert_allclose(fit[:, y, x], reference, atol=1e-9)
    cube, *_ = _snow_world(seed=3)
    noisy = _sequences(cube.copy(data=np.clip(cube.values + 0.2 * rng.standard_normal(cube.shape), 0, 1)))
    assert (np.diff(SnowStateModel(monotone=False).fit(noisy)._response, axis=0) < -1e-3).any()  # noise dips
    assert (np.diff(SnowStateModel().fit(noisy)._response, axis=0) >= -1e-6).all()  # non-decreasing in the state


def test_snow_state__uses_nothing_after_the_issue_period():
    cube, *_ = _snow_world(seed=2)
    issue = int(0.8 * MONTHS)
    changed = cube.copy(data=cube.values.copy())
    changed.values[issue + 1 :] = np.random.default_rng(5).random(changed.values[issue + 1 :].shape)
    a = SnowStateModel().fit(_sequences(cube)).forecast(issue, 4)
    b = SnowStateModel().fit(_sequences(changed)).forecast(issue, 4)
    np.testing.assert_array_equal(a, b)


def test_snow_state__is_a_residual_baseline_for_any_network():
    cube, *_ = _snow_world(seed=3)
    ds = _sequences(cube)
    arrays = ev.window_arrays(ds, split="val")
    arrays["snow_state"] = SnowStateModel().fit(ds).window_forecasts(ds, "val")
    packed, _, _ = residual_dataset(arrays, "snow_state", 0.2, offset=0.5).tensors
    model = ResidualForecaster(get_model("convlstm", hidden_channels=(4,)), input_steps=4, baseline="snow_state",
                               scale=0.2, offset=0.5)
    for parameter in model.parameters():
        parameter.data.zero_()
    out = model(packed, steps=4)[:, :, 0].detach().numpy()
    np.testing.assert_allclose(out, arrays["snow_state"], atol=1e-6)  # a zero correction is the snow state


def test_snow_state__clear_errors():
    cube, *_ = _snow_world(seed=4)
    ds = _sequences(cube)
    with pytest.raises(ConfigError, match="bins"):
        SnowStateModel(bins=1)
    with pytest.raises(ConfigError, match="lags"):
        SnowStateModel(lags=0)
    with pytest.raises(ConfigError, match="trend_t"):
        SnowStateModel(trend_t=-1.0)
    with pytest.raises(ConfigError, match="monotone"):
        SnowStateModel(monotone="yes")
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="recent"):
            SnowStateModel(recent=bad)
    with pytest.raises(ConfigError, match="fit"):
        SnowStateModel().forecast(10)
    model = SnowStateModel().fit(ds)
    with pytest.raises(ConfigError, match="leads"):
        model.forecast(100, 9)
    with pytest.raises(ConfigError, match="issue"):
        model.forecast(MONTHS + 5)
    with pytest.raises(DimensionError, match="fitted on"):
        model.window_forecasts(PatchSequences(cube.isel(x=slice(0, 12)), patch=12, stride=6), "test")
    with pytest.raises(DimensionError, match="too few"):
        SnowStateModel(bins=200).fit(ds)


def test_snow_state__scored_beside_the_model_in_runs_and_the_demo_report():
    from glacierxr import demo, pipeline

    cube, *_ = _snow_world(seed=6)
    ds = _sequences(cube)
    others = pipeline.snow_state_others(ds, "test")
    network = ev.window_arrays(ds, split="test")["climatology"]  # stands in for a trained network's forecasts
    table = ev.evaluate(network, ds, split="test", baselines=("climatology", "anomaly_persistence"), n_resamples=0,
                        name="network", others=others)
    assert table["model"].unique().tolist()[:2] == ["network", "snow_state"]
    pooled = table[table["lead"].astype(str) == "all"].set_index("model")
    assert pooled.loc["snow_state", "skill_vs_best_baseline"] > 0.1  # this world is forecastable
    words = demo._verdict(table)
    assert "snow-state model" in words and f"{pooled.loc['snow_state', 'skill_vs_best_baseline']:+.2f}" in words
    short = _sequences(cube.isel(time=slice(0, 24)))
    assert pipeline.snow_state_others(short, "test") == {}  # too few training periods for a response
    # scored batch by batch (its scene forecasts kept per issue), the same as its forecasts held whole
    held = fit_for(ds).window_forecasts(ds, "test")
    whole = ev.evaluate(network, ds, split="test", baselines=("climatology",), n_resamples=0, name="network",
                        others={"snow_state": held})
    pd.testing.assert_frame_equal(whole, ev.evaluate(network, ds, split="test", baselines=("climatology",),
                                                     n_resamples=0, name="network", others=others), check_like=True)


def test_snow_state__predict_is_a_labelled_forecast_on_the_scene_grid():
    cube, *_ = _snow_world(seed=7)
    model = SnowStateModel().fit(_sequences(cube))
    issue = 200
    out = model.predict(issue_time=cube["time"].values[issue] + np.timedelta64(3, "D"))  # any day of that month
    assert out.dims == ("time", "y", "x") and out.rio.crs == cube.rio.crs
    np.testing.assert_array_equal(out["time"].values, cube["time"].values[issue + 1 : issue + 5])
    np.testing.assert_array_equal(out["lead"].values, [1, 2, 3, 4])
    np.testing.assert_allclose(out.values, model.forecast(issue, 4), rtol=1e-6)
    assert out.attrs["units"] == "1" and out.attrs["model"] == "snow_state"
    after = model.predict(steps=2)  # from the last period: dates beyond the data
    assert after["time"].values[0] > cube["time"].values[-1] and after.sizes["time"] == 2
    with pytest.raises(ConfigError, match="before the first period"):
        model.predict(issue_time="1990-01-01")
