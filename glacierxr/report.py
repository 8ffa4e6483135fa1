"""Figures of a whole run, as the demo report shows them.

Each function draws one figure a glaciologist looks at after a run (alignment check, velocity
against a reference field, learning curves, forecasts per lead time, skill against baselines)
and returns a :class:`matplotlib.figure.Figure` built on the Agg canvas (no pyplot, no global
state); save it with :func:`glacierxr.plot.save`. Like :mod:`glacierxr.plot`, these functions
compute the (small) data they draw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from glacierxr.errors import DimensionError, MissingBandError

__all__ = [
    "alignment_figure",
    "velocity_comparison_figure",
    "velocity_figure",
    "learning_curve_figure",
    "forecast_figure",
    "skill_figure",
]

#: Colours of the forecasters in every figure (model first, then the baselines).
FORECASTER_COLORS = {
    "persistence": "#7f7f7f",
    "seasonal_naive": "#ff7f0e",
    "climatology": "#2ca02c",
    "anomaly_persistence": "#9467bd",
    "snow_state": "#8c564b",  # the statistical snow-state model (glacierxr.ml.snowstate)
}
_MODEL_COLOR = "#1f77b4"


def _figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _color(name: str) -> str:
    return FORECASTER_COLORS.get(name, _MODEL_COLOR)


def _extent(da: xr.DataArray) -> list[float]:
    x = np.asarray(da["x"].values, dtype=float)
    y = np.asarray(da["y"].values, dtype=float)
    dx = (x[-1] - x[0]) / max(x.size - 1, 1)
    dy = (y[-1] - y[0]) / max(y.size - 1, 1)
    return [x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2]


def alignment_figure(
    true_x: Sequence[float],
    true_y: Sequence[float],
    found_x: Sequence[float],
    found_y: Sequence[float],
    *,
    title: str = "co-registration: recovered vs true scene shifts",
):
    """Scatter of recovered against true per-scene shifts (pixels), after removing the mean offset.

    The recovered shifts are relative to a reference image (the temporal mean), which carries
    the mean misregistration of the scenes; that constant is removed before comparing. The
    panel titles give the RMSE of what remains.

    Parameters
    ----------
    true_x, true_y
        True content displacement of each scene (pixels, +x east, +y down).
    found_x, found_y
        Shifts recovered by :func:`glacierxr.align.align`, same convention and order.
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes (x and y shifts).

    Examples
    --------
    >>> fig = alignment_figure([0.0, 1.0, -1.0], [0.5, 0.0, 1.0], [0.1, 1.1, -0.9], [0.5, 0.1, 1.0])
    >>> len(fig.axes)
    2
    """
    fig = _figure((8.4, 4.3))
    axes = fig.subplots(1, 2)
    labels = ("x (columns, east)", "y (rows, down)")
    for ax, label, truth, found in zip(axes, labels, (true_x, true_y), (found_x, found_y)):
        truth = np.asarray(truth, dtype=float)
        found = np.asarray(found, dtype=float)
        ok = np.isfinite(truth) & np.isfinite(found)
        offset = float(np.mean(found[ok] - truth[ok])) if ok.any() else 0.0
        corrected = found - offset
        rmse = float(np.sqrt(np.mean((corrected[ok] - truth[ok]) ** 2))) if ok.any() else np.nan
        shown = np.abs(np.concatenate([truth[ok], corrected[ok]]))
        limit = max(1.0, 1.1 * float(shown.max())) if shown.size else 1.0
        ax.plot([-limit, limit], [-limit, limit], color="0.6", lw=1, zorder=1, label="1 : 1")
        ax.scatter(truth[ok], corrected[ok], s=14, color=_MODEL_COLOR, alpha=0.75, zorder=2, label="scenes")
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.set_xlabel(f"true shift {label} (px)")
        ax.set_ylabel("recovered shift − mean offset (px)")
        ax.set_title(f"{label}: RMSE {rmse:.2f} px, offset {offset:+.2f} px, n={int(ok.sum())}", fontsize=9)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    return fig


def velocity_comparison_figure(
    measured: xr.Dataset,
    reference: xr.Dataset,
    *,
    background: xr.DataArray | None = None,
    step: int = 12,
    evaluation: xr.DataArray | None = None,
    where: xr.DataArray | None = None,
    titles: tuple[str, str] = ("measured (Farnebäck)", "reference"),
):
    """Measured and reference surface velocity side by side, arrows on the same scale.

    Parameters
    ----------
    measured, reference
        ``(y, x)`` Datasets with ``u``, ``v`` (m/yr, u east, v north) and ``speed``, on the same
        grid (e.g. a velocity field from :func:`glacierxr.flow.flow` and the sample's truth).
    background
        ``(y, x)`` image under the arrows of both panels (e.g. a green-band scene).
    step
        Arrow spacing in pixels.
    evaluation
        Optional boolean ``(y, x)`` mask outlined on both panels (the pixels a score uses).
    where
        Optional boolean ``(y, x)`` mask: arrows are drawn only where it is True (e.g. on a
        glacier outline), on both panels.
    titles
        Panel titles.

    Returns
    -------
    matplotlib.figure.Figure
        Two map axes and a shared speed colour bar.

    Raises
    ------
    MissingBandError
        A Dataset lacks ``u``, ``v`` or ``speed``.
    """
    from glacierxr.plot import _nice_round, flow_arrows

    for which, ds in (("measured", measured), ("reference", reference)):
        missing = [v for v in ("u", "v", "speed") if v not in ds]
        if missing:
            raise MissingBandError(
                f"The {which} velocity lacks {missing}; found {sorted(ds.data_vars)}. "
                "Pass Datasets with u, v (m/yr) and speed."
            )
    measured = measured[["u", "v", "speed"]].compute()
    reference = reference[["u", "v", "speed"]].compute()
    if where is not None:
        keep = xr.DataArray(np.asarray(where.values, dtype=bool), dims=("y", "x"))
        measured = measured.where(keep)
        reference = reference.where(keep)
    drawn = np.asarray(reference["speed"].values, dtype=float)
    drawn = drawn[np.isfinite(drawn) & (drawn > 0)]
    top = float(np.percentile(drawn, 95)) if drawn.size else 1.0
    pixel = abs(float(measured["x"].values[1] - measured["x"].values[0]))
    scale = top / (0.9 * step * pixel) if top > 0 else 1.0
    height, width = measured.sizes["y"], measured.sizes["x"]
    fig = _figure((12.0, 5.0 * height / width + 0.9))
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, ds, title in zip(axes, (measured, reference), titles):
        flow_arrows(ds, background=background, step=step, scale=scale, key=_nice_round(top), ax=ax,
                    speed_units="m/yr")
        arrows = ax.collections[-1]
        arrows.set_clim(0.0, top)
        if evaluation is not None:
            mask = np.asarray(evaluation.values, dtype=float)
            ax.contour(
                mask, levels=[0.5], colors="#d62728", linewidths=1.0, extent=_extent(evaluation),
                origin="upper",
            )
        ax.set_title("")  # flow_arrows' own heading; the arrow key sits on the right
        ax.set_title(title, fontsize=10, loc="left")
        ax.ticklabel_format(useOffset=False, style="plain")
        ax.tick_params(labelsize=8)
    # flow_arrows adds one colour bar per axes; keep only the last one
    for extra in fig.axes[2:-1]:
        extra.remove()
    return fig


def _error_field(velocity: xr.Dataset) -> tuple[xr.DataArray, str]:
    """The map of the third panel: the spread of a composite's pairs (how well they agree; its
    ``v_error`` is that over the square root of the count), else ``v_error`` of a pair."""
    if "vx_spread" in velocity and "vy_spread" in velocity:
        return np.hypot(velocity["vx_spread"], velocity["vy_spread"]), "spread of the pairs (NMAD of vx and vy, combined)"
    if "v_error" in velocity:
        return velocity["v_error"], "speed error v_error"
    raise MissingBandError(
        f"velocity_figure needs v_error (a pair) or vx_spread and vy_spread (a composite); found "
        f"{sorted(velocity.data_vars)}."
    )


def _map_panel(fig, ax, field: xr.DataArray, title: str, cmap: str, units: str) -> None:
    values = np.asarray(field.values, dtype=float)
    finite = values[np.isfinite(values)]
    top = float(np.percentile(finite, 98)) if finite.size else 1.0
    image = ax.imshow(values, cmap=cmap, vmin=0.0, vmax=top if top > 0 else 1.0, extent=_extent(field),
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8).set_label(units)
    ax.set_title(title, fontsize=10)
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.tick_params(labelsize=8)


def velocity_figure(
    velocity: xr.Dataset,
    *,
    background: xr.DataArray | None = None,
    step: int = 2,
    where: xr.DataArray | None = None,
    title: str | None = None,
):
    """Surface velocity in three panels: arrows over the image, speed map, error map.

    Parameters
    ----------
    velocity
        A ``(y, x)`` velocity field with ``vx``, ``vy`` (m/year, east / north) and ``v``: one
        pair of a cube (``cube.isel(mid_date=0)``, with ``v_error``) or a composite of
        :func:`glacierxr.velocity.composite` (its error panel shows the spread of the pairs).
    background
        ``(y, x)`` image under the arrows (e.g. the later scene), on any grid of the same CRS.
    step
        Arrow spacing in points of the velocity grid.
    where
        Optional boolean ``(y, x)`` mask on the velocity grid: arrows only where True (e.g. the
        glacier); the maps show every point.
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Three map axes with their colour bars.

    Raises
    ------
    MissingBandError
        ``vx``, ``vy`` or ``v`` is missing, or neither ``v_error`` nor the spreads are there.
    DimensionError
        ``velocity`` is not ``(y, x)`` (select one pair or one period first).
    """
    from glacierxr.plot import flow_arrows

    missing = [n for n in ("vx", "vy", "v") if n not in velocity]
    if missing:
        raise MissingBandError(f"velocity_figure needs vx, vy and v; missing {missing}. Pass a velocity cube's pair or a composite.")
    if set(velocity["vx"].dims) != {"y", "x"}:
        raise DimensionError(
            f"velocity_figure draws one (y, x) field, got dims {velocity['vx'].dims}. Select one pair "
            "(cube.isel(mid_date=0)) or one period (composite.isel(time=0)) first."
        )
    error, error_title = _error_field(velocity)
    velocity = velocity.compute()
    error = error.compute()
    arrows = velocity[["vx", "vy", "v"]].rename({"v": "speed"}).rename({"vx": "u", "vy": "v"})
    if where is not None:
        arrows = arrows.where(xr.DataArray(np.asarray(where.values, dtype=bool), dims=("y", "x")))
    height, width = velocity.sizes["y"], velocity.sizes["x"]
    fig = _figure((16.0, 4.6 * height / width + 0.9))
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    # arrow length from the 75th percentile of the drawn speeds: a few wild vectors (snow edges,
    # clouds) must not shrink the ice's arrows to dots
    drawn = np.asarray(arrows["speed"].values[::step, ::step], dtype=float)
    drawn = drawn[np.isfinite(drawn) & (drawn > 0)]
    pixel = abs(float(velocity["x"].values[1] - velocity["x"].values[0])) if width > 1 else 1.0
    scale = float(np.percentile(drawn, 75)) / (0.9 * step * pixel) if drawn.size else None
    flow_arrows(arrows, background=background, step=step, scale=scale, ax=axes[0], speed_units="m/year")
    axes[0].set_title("")  # flow_arrows' own heading; the arrow key sits on the right
    axes[0].set_title("velocity over the image", fontsize=10, loc="left")
    axes[0].ticklabel_format(useOffset=False, style="plain")
    axes[0].tick_params(labelsize=8)
    _map_panel(fig, axes[1], velocity["v"], "speed v", "viridis", "m/year")
    _map_panel(fig, axes[2], error, error_title, "magma", "m/year")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def learning_curve_figure(
    history: pd.DataFrame, *, reference: Mapping[str, float] | None = None, title: str | None = None
):
    """Training and validation loss per epoch, with horizontal reference losses.

    Parameters
    ----------
    history
        :attr:`glacierxr.ml.Trainer.history` (index ``epoch``, columns ``train_loss`` and
        ``val_loss``).
    reference
        ``{label: loss}`` drawn as dashed lines, e.g. the persistence MSE on the validation
        split, to show what "better than doing nothing" means.
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        One axes: the losses per epoch, the reference lines and the best epoch (when the
        history's ``attrs`` name one).

    Raises
    ------
    DimensionError
        ``history`` has no epoch.

    Examples
    --------
    >>> h = pd.DataFrame({"train_loss": [0.3, 0.2], "val_loss": [0.25, 0.22]},
    ...                  index=pd.Index([1, 2], name="epoch"))
    >>> fig = learning_curve_figure(h, reference={"persistence (val)": 0.21})
    >>> len(fig.axes[0].lines)
    3
    """
    if len(history) == 0:
        raise DimensionError("The training history has no epoch; train at least one epoch first.")
    fig = _figure((6.4, 4.0))
    ax = fig.add_subplot()
    epochs = np.asarray(history.index, dtype=float)
    ax.plot(epochs, history["train_loss"], "o-", color=_MODEL_COLOR, label="training loss")
    if "val_loss" in history and np.isfinite(history["val_loss"]).any():
        ax.plot(epochs, history["val_loss"], "s-", color="#d62728", label="validation loss")
    for label, value in (reference or {}).items():
        if value is not None and np.isfinite(value):
            name = label.split(" ")[0]
            shown = f"{label.replace('_', '-')}: {value:.4f}"
            ax.axhline(value, ls="--", lw=1.2, color=_color(name), label=shown)
    best = history.attrs.get("best_epoch")
    if best and best in history.index:
        ax.axvline(best, color="0.7", lw=1, ls=":", label=f"best epoch ({best})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("masked MSE (snow-mask units²)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "learning curve", fontsize=10)
    return fig


def forecast_figure(
    forecast: xr.DataArray,
    actual: xr.DataArray,
    *,
    persistence: xr.DataArray | None = None,
    cmap: str = "Blues_r",
    error_cmap: str = "RdBu_r",
):
    """Rows = lead times; columns = forecast, observed composite, forecast error (and persistence error).

    Parameters
    ----------
    forecast
        ``(time, y, x)`` forecast (e.g. from ``.glacier.predict``), with a ``lead`` coordinate.
    actual
        ``(time, y, x)`` observed composites of the same periods and grid.
    persistence
        Optional ``(y, x)`` last input frame; adds a column with the error of repeating it.
    cmap, error_cmap
        Colour maps of the values (0–1) and of the errors (symmetric, shared by all panels).

    Returns
    -------
    matplotlib.figure.Figure
        One row of map axes per lead time, each error panel labelled with its MSE, and two
        colour bars (values, errors).

    Raises
    ------
    DimensionError
        ``forecast`` and ``actual`` differ in shape.
    """
    forecast = forecast.transpose("time", "y", "x").compute()
    actual = actual.transpose("time", "y", "x").compute()
    if forecast.shape != actual.shape:
        raise DimensionError(
            f"forecast {dict(forecast.sizes)} and actual {dict(actual.sizes)} differ in shape. "
            "Select the same periods of the same grid."
        )
    f = np.asarray(forecast.values, dtype=float)
    a = np.asarray(actual.values, dtype=float)
    error = f - a
    columns = ["forecast", "observed composite", "forecast − observed"]
    p_error = None
    if persistence is not None:
        p = np.asarray(persistence.transpose("y", "x").values, dtype=float)
        p_error = p[None] - a
        columns.append("persistence − observed")
    both = [e for e in (error, p_error) if e is not None]
    limit = float(np.nanpercentile(np.abs(np.concatenate([e.ravel() for e in both])), 99)) or 1.0
    rows = f.shape[0]
    height, width = f.shape[1:]
    panel = 2.6
    fig = _figure((panel * len(columns) + 1.6, panel * height / width * rows + 0.9))
    axes = np.atleast_2d(fig.subplots(rows, len(columns), sharex=True, sharey=True))
    leads = forecast["lead"].values if "lead" in forecast.coords else np.arange(1, rows + 1)
    value_image = error_image = None
    for i in range(rows):
        date = pd.Timestamp(forecast["time"].values[i]).strftime("%Y-%m")
        panels = [(f[i], cmap, 0.0, 1.0), (a[i], cmap, 0.0, 1.0), (error[i], error_cmap, -limit, limit)]
        if p_error is not None:
            panels.append((p_error[i], error_cmap, -limit, limit))
        for j, (values, colours, low, high) in enumerate(panels):
            ax = axes[i, j]
            image = ax.imshow(values, cmap=colours, vmin=low, vmax=high, interpolation="nearest")
            if j < 2:
                value_image = image
            else:
                error_image = image
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=10)
        for column, errors in enumerate((error, p_error), start=2):  # each error panel's MSE
            if errors is not None:
                ax = axes[i, column]
                ax.text(0.02, 0.02, f"MSE {float(np.nanmean(errors[i] ** 2)):.4f}", transform=ax.transAxes,
                        fontsize=8, color="k", bbox={"facecolor": "white", "alpha": 0.7, "pad": 1.5, "lw": 0})
        axes[i, 0].set_ylabel(f"lead {int(leads[i])}\n{date}", fontsize=10)
    bar = fig.colorbar(value_image, ax=axes[:, :2].ravel().tolist(), shrink=0.6, location="bottom", aspect=30)
    bar.set_label(actual.attrs.get("long_name", actual.name or "value"))
    bar = fig.colorbar(error_image, ax=axes[:, 2:].ravel().tolist(), shrink=0.6, location="bottom", aspect=30)
    bar.set_label("error (forecast − observed)")
    model = forecast.attrs.get("model", "model")
    period = forecast.attrs.get("input_period", "")
    fig.suptitle(f"{model} forecast from the composites of {period}" if period else f"{model} forecast")
    _grid_note(fig, forecast)
    return fig


def _grid_note(fig, da: xr.DataArray) -> None:
    """Name the grid under panels drawn without map axes (as :func:`glacierxr.plot.frames` does)."""
    from glacierxr.plot import _crs_name

    crs = _crs_name(da)
    if crs:
        fig.supxlabel(f"north up; grid {crs}", fontsize=8)


def skill_figure(table: pd.DataFrame, *, title: str | None = None):
    """MSE and IoU per lead time for the model and the baselines, with bootstrap intervals.

    Parameters
    ----------
    table
        Output of :func:`glacierxr.evaluate.evaluate` (columns ``model``, ``lead``, ``mse``,
        ``iou`` and, when computed, ``mse_low``/``mse_high``, ``iou_low``/``iou_high``).
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: MSE (lower is better) and IoU of the snow area (higher is better).

    Raises
    ------
    MissingBandError
        A needed column is missing.
    """
    needed = {"model", "lead", "mse", "iou"}
    if not needed <= set(table.columns):
        raise MissingBandError(
            f"skill_figure needs columns {sorted(needed)}; found {list(table.columns)}. "
            "Pass the table of glacierxr.evaluate.evaluate()."
        )
    per_lead = table[table["lead"].astype(str) != "all"].copy()
    per_lead["lead"] = per_lead["lead"].astype(int)
    names = list(dict.fromkeys(per_lead["model"]))
    fig = _figure((10.0, 4.2))
    axes = fig.subplots(1, 2)
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        rows = per_lead[per_lead["model"] == name].sort_values("lead")
        x = rows["lead"].to_numpy() + (k - (len(names) - 1) / 2) * width
        for ax, metric in zip(axes, ("mse", "iou")):
            values = rows[metric].to_numpy(dtype=float)
            if f"{metric}_low" in rows:
                low = values - rows[f"{metric}_low"].to_numpy(dtype=float)
                high = rows[f"{metric}_high"].to_numpy(dtype=float) - values
                yerr = np.clip(np.vstack([low, high]), 0, None)
            else:
                yerr = None
            ax.bar(x, values, width=width * 0.95, color=_color(name), label=name.replace("_", "-"),
                   yerr=yerr, capsize=2, error_kw={"lw": 0.8})
    leads = sorted(per_lead["lead"].unique())
    for ax, label in zip(axes, ("MSE (lower is better)", "IoU of snow/ice area (higher is better)")):
        ax.set_xticks(leads)
        ax.set_xticklabels([f"lead {lead}" for lead in leads])
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    split = table.attrs.get("split", "")
    n = table.attrs.get("n_sequences")
    heading = title or "forecast skill per lead time"
    if split:
        heading += f" — {split} split"
    if n:
        heading += f", {n} patch sequences"
    if table.attrs.get("n_resamples"):
        heading += f" ({int(round(100 * table.attrs.get('confidence', 0.95)))} % block-bootstrap intervals)"
    fig.suptitle(heading, fontsize=10)
    return fig
