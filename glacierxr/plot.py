"""Figures people look at: a grid of frames over time, and flow arrows over an image.

The functions build :class:`matplotlib.figure.Figure` objects directly on the Agg canvas, never
through :mod:`matplotlib.pyplot`, so they touch no global state, open no window and work on
headless machines.  They return the figure; save it with :func:`save` (atomic PNG write) or
``fig.savefig``.  Plotting is where results are wanted, so these functions compute the (small)
data they draw.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from glacierxr._validate import require_dims
from glacierxr.errors import DimensionError, MissingBandError

__all__ = ["frames", "flow_arrows", "save"]


def _new_figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _extent(da: xr.DataArray, y_dim: str, x_dim: str) -> list[float] | None:
    """imshow extent (left, right, bottom, top) from pixel-centre coordinates, or None."""
    if x_dim not in da.coords or y_dim not in da.coords or da.sizes[x_dim] < 2 or da.sizes[y_dim] < 2:
        return None
    x = np.asarray(da[x_dim].values, dtype=float)
    y = np.asarray(da[y_dim].values, dtype=float)
    dx = (x[-1] - x[0]) / (x.size - 1)
    dy = (y[-1] - y[0]) / (y.size - 1)
    return [x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2]


def _axis_labels(obj: xr.DataArray | xr.Dataset, y_dim: str, x_dim: str) -> tuple[str, str]:
    """Axis labels in the CRS's units ("x (metre)"), from rioxarray metadata when present."""
    units = None
    try:
        crs = obj.rio.crs
        if crs is not None:
            units = "degree" if crs.is_geographic else (crs.linear_units or None)
    except Exception:  # noqa: BLE001 - no CRS metadata
        units = None
    if units is None:
        units = obj[x_dim].attrs.get("units") if x_dim in obj.coords else None
    suffix = f" ({units})" if units else ""
    return f"{x_dim}{suffix}", f"{y_dim}{suffix}"


def _crs_name(obj: xr.DataArray | xr.Dataset) -> str | None:
    """``"WGS 84 / UTM zone 43N (EPSG:32643)"`` from rioxarray metadata, or None without a CRS."""
    try:
        crs = obj.rio.crs
    except Exception:  # noqa: BLE001 - no CRS metadata
        return None
    if crs is None:
        return None
    epsg = crs.to_epsg()
    name = crs.to_wkt().split('"')[1] if '"' in crs.to_wkt() else str(crs)
    return f"{name} (EPSG:{epsg})" if epsg else name


def _nice_round(value: float) -> float:
    """The largest of 1, 2, 5 × 10^k not above ``value`` (a legible scale-key length)."""
    if not np.isfinite(value) or value <= 0:
        return 0.0
    power = 10.0 ** math.floor(math.log10(value))
    return max(step * power for step in (1, 2, 5) if step * power <= value)


def _scale_key(ax, arrows, speeds: np.ndarray, units: str, length: float | None = None) -> float:
    """A quiver key in the map's upper-right corner, on a white box (legible over any image and
    clear of any title): an arrow of ``length``, default a round speed near the 95th percentile drawn."""
    from matplotlib.patches import Rectangle

    if length is None:
        drawn = speeds[np.isfinite(speeds)]
        length = _nice_round(float(np.percentile(drawn, 95))) if drawn.size else 0.0
    if length <= 0:
        return length
    label = f"{length:g} {units}".strip()
    span = abs(np.diff(ax.get_xlim())[0]) or 1.0
    arrow = min(length / float(arrows.scale) / span, 0.6) if arrows.scale else 0.1  # axes fraction
    width_pt = ax.figure.get_figwidth() * 72 * ax.get_position().width
    text = (len(label) * 6.0 + 14) / max(width_pt, 1.0)  # ~6 pt per character at 10 pt, margins
    left = max(0.0, 0.99 - arrow - text - 0.02)
    ax.add_patch(Rectangle((left, 0.91), 0.99 - left, 0.08, transform=ax.transAxes, facecolor="white",
                           edgecolor="0.4", linewidth=0.5, alpha=0.9, zorder=4))
    # with the label to the east, matplotlib puts the key arrow's tip (not its middle) at X
    ax.quiverkey(arrows, X=left + 0.01 + arrow, Y=0.95, U=length, label=label, labelpos="E",
                 coordinates="axes", color="black", zorder=5, fontproperties={"size": 9})
    return length


def _date_label(value) -> str:
    try:
        return pd.Timestamp(value).strftime("%Y-%m-%d")
    except (TypeError, ValueError):
        return str(value)


def frames(
    da: xr.DataArray,
    *,
    col_wrap: int = 4,
    cmap: str = "Blues_r",
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    max_frames: int = 48,
    panel_size: float = 2.2,
    captions=None,
    time_dim: str = "time",
    y_dim: str = "y",
    x_dim: str = "x",
):
    """A grid of the frames of a ``(time, y, x)`` array, one panel per date.

    Parameters
    ----------
    da
        ``(time, y, x)`` DataArray (computed here).
    col_wrap
        Panels per row.
    cmap, vmin, vmax
        Colour map and limits shared by all panels (default: the 2nd and 98th percentiles of
        the shown frames).
    title
        Figure title (default: the array's ``long_name`` or name).
    max_frames
        When there are more frames, ``max_frames`` evenly spaced ones are shown (the title
        says so).
    panel_size
        Width of one panel in inches.
    captions
        One short text per frame of ``da`` (e.g. ``"filled 3 %"``), shown under its date.
    time_dim, y_dim, x_dim
        Names of the dimensions.

    Returns
    -------
    matplotlib.figure.Figure
        One image axes per shown frame (titled with its date) and one colour-bar axes; the
        figure's x label names the CRS of the grid when ``da`` has one.

    Raises
    ------
    DimensionError
        ``da`` lacks a dimension, or has no frame.

    Examples
    --------
    >>> import numpy as np
    >>> from glacierxr.testing import make_series
    >>> fig = frames(make_series(np.random.default_rng(0).random((5, 8, 8))), col_wrap=3)
    >>> len(fig.axes)   # 5 frames + a colour bar
    6
    """
    require_dims(da, (time_dim, y_dim, x_dim), what="frames")
    count = da.sizes[time_dim]
    if count == 0:
        raise DimensionError(f"frames needs at least one frame, found 0 along {time_dim!r}.")
    shown = da
    index = np.arange(count)
    subsampled = count > max_frames
    if subsampled:
        index = np.unique(np.linspace(0, count - 1, max_frames).round().astype(int))
        shown = da.isel({time_dim: index})
    if captions is not None and len(captions) != count:
        raise DimensionError(f"captions has {len(captions)} entries for {count} frames; give one per frame.")
    shown = shown.transpose(time_dim, y_dim, x_dim).compute()
    values = np.asarray(shown.values, dtype=float)
    finite = values[np.isfinite(values)]
    if vmin is None:
        vmin = float(np.percentile(finite, 2)) if finite.size else 0.0
    if vmax is None:
        vmax = float(np.percentile(finite, 98)) if finite.size else 1.0

    n = shown.sizes[time_dim]
    cols = max(1, min(col_wrap, n))
    rows = math.ceil(n / cols)
    height, width = shown.sizes[y_dim], shown.sizes[x_dim]
    aspect = height / width if width else 1.0
    fig = _new_figure((panel_size * cols + 1.0, panel_size * aspect * rows + 0.8))
    grid = fig.add_gridspec(rows, cols)
    extent = _extent(shown, y_dim, x_dim)
    image = None
    axes = []
    for i in range(n):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        image = ax.imshow(values[i], cmap=cmap, vmin=vmin, vmax=vmax, extent=extent, interpolation="nearest")
        caption = "" if captions is None else f"\n{captions[index[i]]}"
        ax.set_title(_date_label(shown[time_dim].values[i]) + caption, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        axes.append(ax)
    label = shown.attrs.get("long_name", shown.name or "")
    units = shown.attrs.get("units")
    bar = fig.colorbar(image, ax=axes, shrink=0.8)
    bar.set_label(f"{label} ({units})" if units else str(label))
    heading = title if title is not None else str(label)
    if subsampled:
        heading = f"{heading} — {n} of {count} frames"
    if heading:
        fig.suptitle(heading)
    crs = _crs_name(da)
    if crs:
        fig.supxlabel(f"north up; grid {crs}", fontsize=8)
    return fig


def flow_arrows(
    flow_ds: xr.Dataset,
    *,
    time=None,
    background: xr.DataArray | None = None,
    step: int = 40,
    scale: float | None = None,
    key: float | None = None,
    ax=None,
    cmap: str = "viridis",
    background_cmap: str = "gray",
    speed_units: str | None = None,
    time_dim: str = "time",
    y_dim: str = "y",
    x_dim: str = "x",
):
    """Flow vectors every ``step`` pixels, coloured by speed, over a background image.

    Parameters
    ----------
    flow_ds
        Output of :func:`glacierxr.flow.flow` (``vx``, ``vy``, ``v``), or any Dataset with
        ``u`` (east), ``v`` (north) and ``speed``.
    time
        Which pair to draw: a position (``int``) or a time label (nearest ``time``, i.e. the
        later frame); default the first pair.  Ignored when ``flow_ds`` has no time dimension.
    background
        Image under the arrows, ``(y, x)`` or ``(time, y, x)`` (then the frame nearest to the
        pair's later time is drawn); default the speed itself.
    step
        Arrow spacing in pixels (the method paper draws one every 40 px).
    scale
        Velocity (in the units of ``u``) that an arrow one metre (one CRS unit) long stands
        for, as in :meth:`matplotlib.axes.Axes.quiver` with ``scale_units="xy"``.  Default: the
        95th percentile of the drawn speeds spans 0.9 ``step`` pixels.
    key
        Speed of the key arrow (same units); default a round speed near the 95th percentile of
        the drawn speeds. Give the same ``key`` (and ``scale``) to panels that are compared.
    ax
        Axes to draw into; default a new figure.
    cmap, background_cmap
        Colour maps of the arrows and of the background.
    speed_units
        Colour-bar units (default ``speed.attrs["units"]``).
    time_dim, y_dim, x_dim
        Names of the dimensions.

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding the axes (with one quiver, a scale key — an arrow of a round speed
        near the 95th percentile drawn, labelled with its units — and a speed colour bar); the
        x axis label names the CRS.

    Raises
    ------
    MissingBandError
        ``flow_ds`` lacks ``u``, ``v`` or ``speed``.

    Examples
    --------
    >>> import numpy as np, scipy.ndimage as ndi
    >>> from glacierxr.testing import make_series
    >>> from glacierxr.flow import flow
    >>> texture = ndi.gaussian_filter(np.random.default_rng(0).standard_normal((64, 64)), 2)
    >>> cube = make_series(np.stack([texture, ndi.shift(texture, (1, 0), mode="nearest")]))
    >>> fig = flow_arrows(flow(cube), background=cube, step=4)  # 120 m posting: 16 x 16 points
    >>> fig.axes[0].collections[0].N   # 4 x 4 arrows
    16
    """
    if {"vx", "vy", "v"} <= set(flow_ds.data_vars):  # glacierxr.flow.flow's ITS_LIVE names
        flow_ds = flow_ds[["vx", "vy", "v"]].rename({"v": "speed"}).rename({"vx": "u", "vy": "v"})
    missing = [name for name in ("u", "v", "speed") if name not in flow_ds]
    if missing:
        raise MissingBandError(
            f"flow_arrows needs variables vx, vy, v (or u, v, speed); missing {missing}. "
            f"Available: {sorted(flow_ds.data_vars)}. Pass the output of glacierxr.flow.flow()."
        )
    selected, when = _select_pair(flow_ds, time, time_dim)
    selected = selected[["u", "v", "speed"]].transpose(y_dim, x_dim).compute()
    if ax is None:
        fig = _new_figure((8.0, 8.0 * selected.sizes[y_dim] / max(selected.sizes[x_dim], 1) + 0.6))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    extent = _extent(selected, y_dim, x_dim)
    background_label = _draw_background(
        ax, selected["speed"] if background is None else background, extent, when=when,
        given=background is not None, cmap=background_cmap, dims=(time_dim, y_dim, x_dim),
    )
    xx, yy, arrow_u, arrow_v, speed, pixel = _arrow_grid(selected, extent, step, y_dim, x_dim)
    if scale is None:
        drawn = speed[np.isfinite(speed)]
        reference = float(np.percentile(drawn, 95)) if drawn.size else 0.0
        scale = reference / (0.9 * step * pixel) if reference > 0 else 1.0
    arrows = ax.quiver(
        xx, yy, arrow_u, arrow_v, speed, cmap=cmap, angles="xy", scale_units="xy", scale=scale, width=0.004
    )
    units = speed_units or flow_ds["speed"].attrs.get("units", "")
    bar = fig.colorbar(arrows, ax=ax, shrink=0.8)
    bar.set_label(f"speed ({units})" if units else "speed")
    _scale_key(ax, arrows, speed, units, length=key)
    xlabel, ylabel = _axis_labels(flow_ds, y_dim, x_dim)
    crs = _crs_name(flow_ds)
    if extent is None:
        xlabel, ylabel = f"{x_dim} (pixel)", f"{y_dim} (pixel)"
    elif crs:
        xlabel = f"{xlabel} — {crs}"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    heading = "surface velocity"
    if "time_start" in selected.coords and "time_end" in selected.coords:
        heading += f" {_date_label(selected['time_start'].values)} → {_date_label(selected['time_end'].values)}"
    if background_label:
        heading += f" over {background_label}"
    ax.set_title(heading, fontsize=10)
    return fig


def _select_pair(flow_ds: xr.Dataset, time, time_dim: str):
    """The pair to draw (by position or nearest label; the first by default) and its time."""
    if time_dim not in flow_ds.dims:
        return flow_ds, None
    if time is None:
        selected = flow_ds.isel({time_dim: 0})
    elif isinstance(time, (int, np.integer)):
        selected = flow_ds.isel({time_dim: int(time)})
    else:
        selected = flow_ds.sel({time_dim: time}, method="nearest")
    return selected, selected[time_dim].values


def _draw_background(ax, image: xr.DataArray, extent, *, when, given: bool, cmap: str, dims):
    """Draw the image under the arrows (2-98 % stretch); return its label when one was given."""
    time_dim, y_dim, x_dim = dims
    if time_dim in image.dims:
        image = image.isel({time_dim: 0}) if when is None else image.sel({time_dim: when}, method="nearest")
    label = image.attrs.get("long_name", image.name) if given else None
    pixels = np.asarray(image.transpose(y_dim, x_dim).compute().values, dtype=float)
    finite = pixels[np.isfinite(pixels)]
    low, high = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
    ax.imshow(
        pixels,
        cmap=cmap if given else "Greys",
        vmin=low,
        vmax=high,
        extent=extent,
        interpolation="nearest",
        alpha=1.0 if given else 0.6,
    )
    return label


def _arrow_grid(selected: xr.Dataset, extent, step: int, y_dim: str, x_dim: str):
    """Arrow positions and components every ``step`` pixels, in map or pixel coordinates."""
    rows = np.arange(step // 2, selected.sizes[y_dim], step)
    cols = np.arange(step // 2, selected.sizes[x_dim], step)
    sub = selected.isel({y_dim: rows, x_dim: cols})
    u = np.asarray(sub["u"].values, dtype=float)
    v = np.asarray(sub["v"].values, dtype=float)
    speed = np.asarray(sub["speed"].values, dtype=float)
    if extent is not None:
        # map coordinates: u east / v north point in map directions whatever way y runs
        xx, yy = np.meshgrid(sub[x_dim].values, sub[y_dim].values)
        pixel = abs(float(selected[x_dim].values[1] - selected[x_dim].values[0]))
        return xx, yy, u, v, speed, pixel
    # pixel coordinates, rows growing downwards: north (+v) points to smaller rows
    xx, yy = np.meshgrid(cols, rows)
    return xx, yy, u, -v, speed, 1.0


def save(fig, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG atomically (temporary file in the same folder, then rename).

    Readers never see a half-written file, and a failed write leaves no debris.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from glacierxr.testing import make_series
    >>> fig = frames(make_series(np.zeros((2, 4, 4))))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     save(fig, f"{folder}/frames.png").read_bytes()[:4]
    b'\\x89PNG'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            fig.savefig(stream, format="png", dpi=dpi)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target
