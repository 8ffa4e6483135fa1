"""Tests of glacierxr.evaluate: metrics, bootstrap, baselines and evaluate() on patch sequences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import glacierxr as gx
from glacierxr import evaluate as ev
from glacierxr.errors import ConfigError, DimensionError
from glacierxr.testing import make_series, raise_if_dask_computes


# ----------------------------------------------------------------------------------- metrics
def test_metrics__hand_computed_values():
    # one sample, two leads, 2 x 2 pixels; the last pixel of lead 2 is not valid
    prediction = np.array([[[[0.2, 0.6], [0.0, 1.0]], [[0.5, 0.5], [0.1, 9.0]]]])
    target = np.array([[[[0.0, 0.4], [0.5, 1.0]], [[0.5, 0.1], [0.4, 0.0]]]])
    valid = np.ones_like(target, bool)
    valid[0, 1, 1, 1] = False
    table = ev.metrics(prediction, target, valid=valid, threshold=0.3)
    # lead 1: errors 0.2, 0.2, -0.5, 0 ; masks pred [0,1,0,1] vs target [0,1,1,1]
    assert table.loc[1, "mse"] == pytest.approx((0.04 + 0.04 + 0.25) / 4)
    assert table.loc[1, "mae"] == pytest.approx(0.9 / 4)
    assert table.loc[1, "iou"] == pytest.approx(2 / 3)
    assert table.loc[1, "f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    # lead 2 (3 valid pixels): errors 0, 0.4, -0.3 ; masks pred [1,1,0] vs target [1,0,1]
    assert table.loc[2, "mse"] == pytest.approx((0.16 + 0.09) / 3)
    assert table.loc[2, "iou"] == pytest.approx(1 / 3)
    assert table.loc[2, "f1"] == pytest.approx(2 / (2 + 1 + 1))
    assert table.loc[2, "n_valid"] == 3
    assert table.loc["all", "mse"] == pytest.approx((0.33 + 0.25) / 7)


def test_metrics__empty_masks_and_nan_pixels():
    zeros = np.zeros((1, 1, 3, 3))
    both_empty = ev.metrics(zeros, zeros)
    assert both_empty.loc[1, "iou"] == 1.0 and both_empty.loc[1, "f1"] == 1.0
    only_target = ev.metrics(zeros, zeros + 1)
    assert only_target.loc[1, "iou"] == 0.0 and only_target.loc[1, "f1"] == 0.0
    only_prediction = ev.metrics(zeros + 1, zeros)
    assert only_prediction.loc[1, "iou"] == 0.0
    target = zeros.copy()
    target[0, 0, 0, 0] = np.nan  # NaN targets never enter the scores
    assert ev.metrics(zeros + 0.5, target).loc[1, "n_valid"] == 8
    nothing_valid = ev.metrics(zeros, zeros, valid=np.zeros_like(zeros, bool))
    assert np.isnan(nothing_valid.loc[1, "mse"]) and nothing_valid.loc[1, "n_valid"] == 0


def test_metrics__dataarray_with_lead_dim_equals_numpy():
    rng = np.random.default_rng(0)
    prediction, target = rng.random((3, 4, 5)), rng.random((3, 4, 5))
    as_xr = ev.metrics(
        xr.DataArray(prediction, dims=("lead", "y", "x")), xr.DataArray(target, dims=("lead", "y", "x"))
    )
    pd.testing.assert_frame_equal(as_xr, ev.metrics(prediction[None], target[None]))
    with pytest.raises(DimensionError, match="no lead dimension"):
        ev.metrics(xr.DataArray(prediction, dims=("t", "y", "x")), target[None])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_metrics__bounds(seed):
    rng = np.random.default_rng(seed)
    prediction, target = rng.random((2, 3, 4, 4)), rng.random((2, 3, 4, 4))
    table = ev.metrics(prediction, target)
    assert ((table[["iou", "f1"]] >= 0) & (table[["iou", "f1"]] <= 1)).all().all()
    assert (table["mae"] ** 2 <= table["mse"] + 1e-12).all()  # Jensen
    assert (table["iou"] <= table["f1"] + 1e-12).all()


# --------------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci__contains_point_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    target = rng.random((60, 3, 6, 6))
    prediction = target + rng.normal(0, 0.2, target.shape)
    ci = ev.bootstrap_ci(prediction, target, n_resamples=200, seed=7)
    point = ev.metrics(prediction, target)
    for metric in ev.METRICS:
        assert np.allclose(ci[metric], point[metric])
        assert (ci[f"{metric}_low"] <= ci[metric] + 1e-12).all() and (ci[metric] <= ci[f"{metric}_high"] + 1e-12).all()
    assert (ci["mse_high"] > ci["mse_low"]).all()
    pd.testing.assert_frame_equal(ci, ev.bootstrap_ci(prediction, target, n_resamples=200, seed=7))
    assert not ci.equals(ev.bootstrap_ci(prediction, target, n_resamples=200, seed=8))
    # resampling whole groups of correlated samples widens the interval
    groups = np.repeat(np.arange(6), 10)
    clustered = prediction + np.repeat(rng.normal(0, 0.3, (6, 1, 1, 1, 1)), 10, axis=0)[:, 0]
    width = lambda table: (table["mse_high"] - table["mse_low"]).loc["all"]  # noqa: E731
    assert width(ev.bootstrap_ci(clustered, target, groups=groups)) > width(ev.bootstrap_ci(clustered, target))


def test_skill():
    assert ev.skill(0.01, 0.04) == pytest.approx(0.75)
    assert ev.skill(0.04, 0.04) == 0.0
    np.testing.assert_allclose(ev.skill(np.array([0.0, 0.08]), np.array([0.04, 0.04])), [1.0, -1.0])


# --------------------------------------------------------------------------------- baselines
def test_persistence__perfect_on_a_constant_series():
    constant = np.full((5, 4, 3, 3), 0.7)
    forecast = ev.persistence(constant, 4)
    assert forecast.shape == (5, 4, 3, 3)
    assert ev.metrics(forecast, constant).loc["all", "mse"] == 0.0
    torch = pytest.importorskip("torch")
    tensor = ev.persistence(torch.arange(6.0).reshape(1, 3, 2), 2)
    assert tensor.tolist() == [[[4.0, 5.0], [4.0, 5.0]]]
    series = make_series(np.arange(12.0).reshape(3, 2, 2), freq="QS")
    labelled = ev.persistence(series, 2)
    assert labelled.dims == ("lead", "y", "x") and labelled.sel(lead=2).values.tolist() == [[8, 9], [10, 11]]


def test_seasonal_naive__perfect_on_a_periodic_series_and_lazy():
    cycle = np.array([0.1, 0.6, 0.9, 0.3])
    values = np.tile(cycle, 5)[:, None, None] * np.ones((1, 3, 3))
    series = make_series(values, freq="QS").chunk({"time": 5})
    with raise_if_dask_computes():
        forecast = ev.seasonal_naive(series, steps=6)
    assert forecast.dims == ("lead", "time", "y", "x") and forecast.attrs["period"] == 4
    for lead in range(1, 7):
        shift = 4 if lead <= 4 else 8
        f = forecast.sel(lead=lead).to_numpy()
        assert np.isnan(f[:shift]).all()
        np.testing.assert_allclose(f[shift:], values[shift:])


def test_steps_per_year_and_period_of_year():
    assert ev.steps_per_year(pd.date_range("2013-01-01", periods=10, freq="QS")) == 4
    assert ev.steps_per_year(pd.date_range("2013-01-01", periods=30, freq="MS")) == 12
    assert ev.steps_per_year(pd.date_range("2013-01-01", periods=10, freq="6MS")) == 2
    assert ev.steps_per_year(make_series(np.zeros((2, 1, 1))).assign_attrs(months=3)) == 4
    with pytest.raises(ConfigError, match="pass period="):
        ev.steps_per_year(pd.date_range("2013-01-01", periods=10, freq="100D"))
    months = pd.date_range("2013-01-01", periods=12, freq="MS")
    assert ev.period_of_year(months, 4).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert ev.period_of_year(months, 12).tolist() == list(range(12))


def test_climatology__is_the_mean_of_each_period_of_the_year():
    rng = np.random.default_rng(2)
    values = rng.random((12, 2, 3))  # three years of 3-monthly periods
    values[5, 0, 0] = np.nan  # missing values are left out of the mean
    observed = np.ones(values.shape, bool)
    observed[2, 1, 1] = False  # gap-filled values too, with ``valid``
    series = make_series(values, freq="QS")
    clim = ev.climatology(series, valid=xr.DataArray(observed, dims=("time", "y", "x")))
    assert clim.dims == ("period_of_year", "y", "x") and clim.sizes["period_of_year"] == 4
    expected = np.stack([np.nanmean(np.where(observed, values, np.nan)[k::4], axis=0) for k in range(4)])
    np.testing.assert_allclose(clim.to_numpy(), expected)
    assert clim.sel(period_of_year=1).to_numpy()[0, 0] == pytest.approx((values[1, 0, 0] + values[9, 0, 0]) / 2)


# ---------------------------------------------------------------------------------- evaluate
def _periodic_sequences(**kwargs):
    torch = pytest.importorskip("torch")  # noqa: F841
    from glacierxr.ml.patches import PatchSequences

    rng = np.random.default_rng(3)
    cycle = np.array([0.1, 0.4, 0.9, 0.5])
    values = (cycle[np.arange(40) % 4][:, None, None] + 0.05 * rng.random((1, 20, 20))).astype(np.float32)
    values[37, 2:5, 2:5] = np.nan  # a hole in test targets
    return PatchSequences(make_series(values, freq="QS"), patch=8, stride=4, **kwargs), values


def test_evaluate__persistence_module_has_zero_skill_vs_persistence():
    torch = pytest.importorskip("torch")

    class Persistence(torch.nn.Module):
        def forward(self, inputs, steps, targets=None):
            return inputs[:, -1:].repeat(1, steps, 1, 1, 1)

    sequences, _ = _periodic_sequences(normalize="auto")
    table = ev.evaluate(Persistence(), sequences, split="test", n_resamples=50)
    assert table["model"].unique().tolist() == [
        "Persistence", "persistence", "seasonal_naive", "climatology", "anomaly_persistence"]
    model = table[table["model"] == "Persistence"].set_index("lead")
    baseline = table[table["model"] == "persistence"].set_index("lead")
    np.testing.assert_allclose(model["mse"], baseline["mse"], rtol=1e-5, atol=1e-9)
    finite = model["skill_vs_persistence"].replace(-np.inf, np.nan).dropna()
    np.testing.assert_allclose(finite, 0.0, atol=1e-5)
    # a purely periodic signal: seasonal naive and climatology are perfect, persistence is not
    seasonal = table[table["model"] == "seasonal_naive"].set_index("lead")
    assert (seasonal["mse"] == 0).all()
    assert (baseline.loc["all", "mse"] > 0.01) and (baseline.loc["all", "skill_vs_seasonal_naive"] == -np.inf)
    assert table["n_samples"].eq(len(sequences.split("test"))).all()
    assert table.attrs["period"] == 4 and table.attrs["split"] == "test"


def test_evaluate__precomputed_predictions_and_baselines_only():
    sequences, values = _periodic_sequences()
    test = sequences.split("test")
    truth = np.stack(
        [values[t0 + 4 : t0 + 8, y0 : y0 + 8, x0 : x0 + 8] for t0, y0, x0 in test.windows[["t0", "y0", "x0"]].to_numpy()]
    )
    table = ev.evaluate(np.nan_to_num(truth), test, baselines=("persistence",), n_resamples=20)
    perfect = table[table["model"] == "predictions"].set_index("lead")
    assert (perfect["mse"] == 0).all() and (perfect["iou"] == 1).all()
    # persistence is perfect too at lead 4 (the same season as the last input): skill 0 / 0
    assert (perfect["skill_vs_persistence"].drop(index=4) == 1).all()
    assert np.isnan(perfect.loc[4, "skill_vs_persistence"])
    assert perfect.loc["all", "n_valid"] == truth.size - np.isnan(truth).sum()
    baselines_only = ev.evaluate(None, test, n_resamples=0)
    assert set(baselines_only["model"]) == {"persistence", "seasonal_naive", "climatology", "anomaly_persistence"}
    assert "mse_low" not in baselines_only
    with pytest.raises(DimensionError, match="predictions must be"):
        ev.evaluate(truth[:-1], test)
    with pytest.raises(ConfigError, match="Unknown baselines"):
        ev.evaluate(None, test, baselines=("random_walk",))


def test_evaluate__others_are_scored_beside_the_model_on_the_same_pixels():
    sequences, values = _periodic_sequences()
    test = sequences.split("test")
    truth = np.stack(
        [values[t0 + 4 : t0 + 8, y0 : y0 + 8, x0 : x0 + 8] for t0, y0, x0 in test.windows[["t0", "y0", "x0"]].to_numpy()]
    )
    off = np.nan_to_num(truth) - 0.05  # 0.05 too low everywhere (inside [0, 1]): MSE 0.0025 on every scored pixel
    table = ev.evaluate(np.nan_to_num(truth), test, baselines=("climatology",), n_resamples=0, others={"biased": off})
    assert table["model"].unique().tolist() == ["predictions", "biased", "climatology"]
    biased = table[table["model"] == "biased"].set_index("lead")
    np.testing.assert_allclose(biased["mse"], 0.0025, rtol=1e-5)
    assert (biased["n_valid"] == table[table["model"] == "predictions"].set_index("lead")["n_valid"]).all()
    assert "skill_vs_climatology" in table and "skill_vs_biased" not in table  # others are not baselines
    with pytest.raises(ConfigError, match="share a name"):
        ev.evaluate(off, test, n_resamples=0, name="x", others={"x": off})


def test_evaluate__through_the_package_namespace_and_markdown():
    assert gx.evaluate is ev
    sequences, _ = _periodic_sequences()
    table = ev.evaluate(None, sequences, split="test", baselines=("persistence", "climatology"), n_resamples=0)
    text = ev.to_markdown(table, columns=["model", "lead", "mse", "iou"], digits=3)
    lines = text.splitlines()
    assert lines[0] == "| model | lead | mse | iou |" and lines[1] == "|---|---|---:|---:|"
    assert len(lines) == 2 + len(table)
    assert "| persistence | all |" in text


# ------------------------------------------------------------------ damped anomaly persistence
def test_fit_damping_and_anomaly_persistence__hand_computed():
    # pairs (1, 0.5) and (2, 1); the NaN breaks the series: (0.5 + 2) / (1 + 4)
    assert ev.fit_damping(np.array([1.0, 0.5, np.nan, 2.0, 1.0])) == pytest.approx(0.5)
    assert ev.fit_damping(np.array([1.0, -1.0, 1.0])) == 0.0  # clipped to [0, 1]
    assert ev.fit_damping(np.full(3, np.nan)) == 0.0
    # last 0.9, its climatology 0.5 (anomaly 0.4); leads 1, 2 with climatology 0.6, 0.1
    forecast = ev.anomaly_persistence(np.array([0.9]), np.array([0.5]), np.array([[0.6, 0.1]]), 0.5)
    np.testing.assert_allclose(forecast, [[0.6 + 0.5 * 0.4, 0.1 + 0.25 * 0.4]])



def test_damping_sums__pieces_add_up_to_the_whole_series_like_a_plain_lag1_fit():
    rng = np.random.default_rng(2)
    series = rng.standard_normal((12, 5, 4))
    for t in range(1, 12):  # AR(1), phi 0.6
        series[t] += 0.6 * series[t - 1]
    series[3, 1:3] = np.nan
    now, after = series[:-1].ravel(), series[1:].ravel()
    ok = np.isfinite(now) & np.isfinite(after)
    reference = np.clip(np.dot(now[ok], after[ok]) / np.dot(now[ok], now[ok]), 0.0, 1.0)  # plain least squares
    pieces = sum(np.array(ev.damping_sums(series[t], series[t + 1])) for t in range(11))  # frame by frame
    assert float(ev.damping_from_sums(*pieces)) == pytest.approx(reference)
    assert ev.fit_damping(series) == pytest.approx(reference)
    assert float(ev.damping_from_sums(0.0, 0.0)) == 0.0

def test_evaluate__anomaly_persistence_matches_a_hand_computation_and_is_the_best_baseline():
    from glacierxr.ml import PatchSequences

    rng = np.random.default_rng(5)
    cycle = np.array([0.1, 0.4, 0.9, 0.5])
    anomaly = np.zeros(48)
    for i in range(1, 48):  # AR(1), phi 0.8: anomalies persist
        anomaly[i] = 0.8 * anomaly[i - 1] + 0.1 * rng.standard_normal()
    values = (cycle[np.arange(48) % 4] + anomaly)[:, None, None] + 0.01 * rng.random((1, 16, 16))
    values = values.astype(np.float32)
    sequences = PatchSequences(make_series(values, freq="QS"), patch=8, stride=8)
    # by hand: the climatology and damping over the periods the training windows cover
    starts = np.unique(sequences.split("train").windows["t0"].to_numpy())
    covered = np.unique((starts[:, None] + np.arange(8)).ravel())
    clim = np.stack([values[covered[covered % 4 == q]].mean(axis=0) for q in range(4)])
    anomalies = values[covered] - clim[covered % 4]
    consecutive = np.diff(covered) == 1
    now, after = anomalies[:-1][consecutive], anomalies[1:][consecutive]
    phi = float(np.sum(now * after) / np.sum(now * now))
    test = sequences.split("test")
    hand = []
    for t0, y0, x0 in test.windows[["t0", "y0", "x0"]].to_numpy():
        last = values[t0 + 3, y0 : y0 + 8, x0 : x0 + 8]
        window_clim = lambda t: clim[t % 4, y0 : y0 + 8, x0 : x0 + 8]  # noqa: E731
        hand.append([window_clim(t0 + 4 + k) + phi ** (k + 1) * (last - window_clim(t0 + 3)) for k in range(4)])
    table = ev.evaluate(np.array(hand), test, n_resamples=30, name="hand")
    assert table.attrs["damping"] == pytest.approx(phi, rel=1e-5)
    assert 0.5 < phi < 1.0
    rows = table.set_index(["model", "lead"])
    np.testing.assert_allclose(rows.loc[("hand", "all"), "mse"], rows.loc[("anomaly_persistence", "all"), "mse"], rtol=1e-5)
    # with memory in the anomalies, damped anomaly persistence beats the other baselines
    assert table.attrs["best_baseline"] == ev.best_baseline(table) == "anomaly_persistence"
    for other in ("persistence", "seasonal_naive", "climatology"):
        assert rows.loc[("anomaly_persistence", "all"), "mse"] < rows.loc[(other, "all"), "mse"]
    assert rows.loc[("hand", "all"), "skill_vs_best_baseline"] == pytest.approx(0.0, abs=1e-5)
    low, high = rows.loc[("climatology", "all"), ["skill_vs_best_baseline_low", "skill_vs_best_baseline_high"]]
    assert low <= rows.loc[("climatology", "all"), "skill_vs_best_baseline"] <= high < 0
    # bootstrap over issue years: the test windows are all issued in one year, so every draw
    # takes them all together (a degenerate interval), unlike a bootstrap over windows
    issue_years = {t.year for t in sequences.data.time.to_index()[test.windows["t0"].to_numpy() + 3]}
    assert len(issue_years) == 1
    for by, degenerate in (("time", True), ("sample", False)):
        table = ev.evaluate(np.array(hand), test, n_resamples=30, name="hand", bootstrap_by=by).set_index(["model", "lead"])
        low, mse, high = table.loc[("climatology", "all"), ["mse_low", "mse", "mse_high"]]
        assert mse == rows.loc[("climatology", "all"), "mse"]
        assert (low == mse == high) if degenerate else (low < mse < high)


def test_damping_of__lazy_on_dask_and_equal_to_the_least_squares_by_hand():
    import dask.array as dsa

    from glacierxr.testing import raise_if_dask_computes

    rng = np.random.default_rng(2)
    values = np.zeros((120, 3, 3))
    for t in range(1, 120):
        values[t] = 0.6 * values[t - 1] + rng.standard_normal((3, 3))
    values[10, 1, 1] = np.nan
    now, after = values[:-1], values[1:]
    ok = np.isfinite(now) & np.isfinite(after)
    by_hand = np.sum((now * after)[ok]) / np.sum((now * now)[ok])
    with raise_if_dask_computes():
        lazy = ev.damping_of(dsa.from_array(values, chunks=(30, 3, 3)))
    assert float(lazy.compute()) == pytest.approx(by_hand)
    assert ev.fit_damping(values) == pytest.approx(by_hand)
    assert ev.fit_damping(-values[::-1] * 0) == 0.0  # no pair with a nonzero anomaly


@pytest.mark.parametrize("valid_dims", [None, ("time", "y", "x"), ("y", "x")])
def test_observed__reads_periods_in_groups_into_a_new_array_masked_like_numpy(valid_dims):
    """The read behind the baselines and the snow-state model: the values at the asked periods,
    NaN where the valid coordinate says unobserved, in the same order whatever the grouping, and
    an array of its own (the snow-state fit writes its residuals into it)."""
    pytest.importorskip("torch")
    from glacierxr.ml import PatchSequences

    rng = np.random.default_rng(5)
    raw = rng.random((30, 12, 16)).astype(np.float32)
    cube = make_series(raw.copy(), freq="MS")
    expected = raw.copy()
    if valid_dims is not None:
        seen = rng.random([{"time": 30, "y": 12, "x": 16}[d] for d in valid_dims]) > 0.3
        cube = cube.assign_coords(observed=(valid_dims, seen))
        expected = np.where(seen, raw, np.nan)
    periods = np.array([0, 1, 2, 7, 8, 20, 29])
    frame = raw[0].nbytes
    for data in (cube, cube.chunk({"time": 4, "y": 5})):
        layout = PatchSequences(data, patch=6, stride=6)._layout
        for block_bytes in (frame, 3 * frame, 100 * frame):  # a period a group, three, all at once
            values = ev._observed(layout, periods, np.float32, block_bytes=block_bytes)
            np.testing.assert_array_equal(values, expected[periods])
            values[:] = -1.0
    np.testing.assert_array_equal(cube.values, raw)  # the caller's cube is never written into


def test_observed__computes_each_chunk_of_a_lazy_cube_once():
    """A store chunked whole in time (``time=-1``, how composites are written) is read chunk by
    chunk: reading the periods in groups would compute every chunk again for every group."""
    pytest.importorskip("torch")
    from glacierxr.ml import PatchSequences

    calls = []

    def counted(block):
        calls.append(block.shape)
        return block

    raw = np.random.default_rng(6).random((40, 12, 18)).astype(np.float32)
    cube = make_series(raw, freq="MS").chunk({"time": -1, "y": 6, "x": 9})
    cube = cube.copy(data=cube.data.map_blocks(counted, dtype=np.float32))
    layout = PatchSequences(cube, patch=6, stride=6)._layout
    calls.clear()
    values = ev._observed(layout, np.arange(3, 40), np.float32, block_bytes=raw[0].nbytes)
    np.testing.assert_array_equal(values, raw[3:])
    assert len(calls) == 4  # the 2 x 2 chunks, once each
