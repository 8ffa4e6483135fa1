"""glacierxr.report: the run figures draw the numbers they are given (checked on the artists)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from glacierxr import report
from glacierxr.errors import DimensionError
from glacierxr.testing import make_series


def test_alignment_figure__rmse_after_removing_the_mean_offset():
    truth_x, truth_y = [0.0, 1.0, -1.0, 0.5], [0.0, 0.2, 0.4, -0.6]
    found_x = [0.3, 1.4, -0.6, 0.7]  # truth + 0.3 offset, one scene 0.1 px off
    found_y = [t + 0.1 for t in truth_y]
    fig = report.alignment_figure(truth_x, truth_y, found_x, found_y)
    ax_x, ax_y = fig.axes
    residual = np.array(found_x) - np.array(truth_x)
    residual -= residual.mean()
    rmse = np.sqrt(np.mean(residual**2))
    assert ax_x.get_title() == f"x (columns, east): RMSE {rmse:.2f} px, offset {0.325:+.2f} px, n=4"
    assert ax_y.get_title() == "y (rows, down): RMSE 0.00 px, offset +0.10 px, n=4"
    points = ax_x.collections[0].get_offsets()
    np.testing.assert_allclose(points[:, 1], np.array(found_x) - 0.325)


def test_learning_curve_figure__curves_references_and_best_epoch():
    history = pd.DataFrame({"train_loss": [0.5, 0.3, 0.2], "val_loss": [0.4, 0.25, 0.3]},
                           index=pd.Index([1, 2, 3], name="epoch"))
    history.attrs["best_epoch"] = 2
    fig = report.learning_curve_figure(history, reference={"persistence": 0.35, "seasonal_naive": None})
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["training loss"].get_ydata(), [0.5, 0.3, 0.2])
    np.testing.assert_allclose(lines["validation loss"].get_ydata(), [0.4, 0.25, 0.3])
    assert lines["persistence: 0.3500"].get_ydata()[0] == 0.35
    assert "best epoch (2)" in lines and not any("seasonal" in label for label in lines)
    with pytest.raises(DimensionError, match="no epoch"):
        report.learning_curve_figure(history.iloc[:0])


def test_forecast_figure__one_row_per_lead_with_its_mse():
    rng = np.random.default_rng(0)
    actual = make_series(rng.random((2, 6, 8)), freq="3MS")
    forecast = (actual + 0.1).assign_coords(lead=("time", [1, 2])).assign_attrs(model="convlstm")
    persistence = actual.isel(time=0) * 0 + 0.5
    fig = report.forecast_figure(forecast, actual, persistence=persistence)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    p_mse = [float(np.mean((0.5 - actual.values[i]) ** 2)) for i in range(2)]
    assert texts.count("MSE 0.0100") == 2  # forecast error 0.1 everywhere
    assert {f"MSE {m:.4f}" for m in p_mse} <= set(texts)
    assert fig.axes[0].get_ylabel().startswith("lead 1\n")
    assert "EPSG:32643" in fig._supxlabel.get_text()  # the panels have no map axes: the grid is named
    with pytest.raises(DimensionError, match="differ in shape"):
        report.forecast_figure(forecast, actual.isel(x=slice(0, 4)))


def test_skill_figure__one_bar_per_forecaster_and_lead_per_metric():
    rows = [dict(model="convlstm", lead="all", mse=9.0, iou=0.0)]  # the summary row is not drawn
    for model, mse, iou in (("convlstm", 0.01, 0.9), ("seasonal_naive", 0.04, 0.7)):
        for lead in (1, 2):
            rows.append(dict(model=model, lead=lead, mse=mse * lead, iou=iou / lead))
    fig = report.skill_figure(pd.DataFrame(rows))
    ax_mse, ax_iou = fig.axes[:2]

    def heights(ax):
        return {c.get_label(): [round(p.get_height(), 9) for p in c.patches] for c in ax.containers}

    assert heights(ax_mse) == {"convlstm": [0.01, 0.02], "seasonal-naive": [0.04, 0.08]}
    assert heights(ax_iou) == {"convlstm": [0.9, 0.45], "seasonal-naive": [0.7, 0.35]}
    assert [t.get_text() for t in ax_mse.get_xticklabels()] == ["lead 1", "lead 2"]


def test_velocity_comparison_figure__both_panels_share_the_arrow_key_and_scale():
    import matplotlib
    import xarray as xr

    matplotlib.use("Agg")
    from matplotlib.quiver import QuiverKey

    y, x = np.arange(40)[::-1] * 30.0, np.arange(60) * 30.0
    speed = np.linspace(100, 900, 60)[None, :].repeat(40, 0)  # 95th percentile ~860 m/yr

    def field(factor):
        return xr.Dataset({"u": (("y", "x"), factor * speed), "v": (("y", "x"), 0 * speed),
                           "speed": (("y", "x"), factor * speed)}, coords={"y": y, "x": x})

    fig = report.velocity_comparison_figure(field(0.5), field(1.0), step=8)  # measured at half speed
    keys = [[a for a in ax.get_children() if isinstance(a, QuiverKey)] for ax in fig.axes[:2]]
    assert [len(k) for k in keys] == [1, 1]
    # the largest round speed below the reference's 95th percentile (~860); the measured panel alone would say 200
    assert keys[0][0].U == keys[1][0].U == 500
    scales = [[c for c in ax.collections if hasattr(c, "scale")][-1].scale for ax in fig.axes[:2]]
    assert scales[0] == scales[1]
