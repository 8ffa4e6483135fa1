"""Tests of glacierxr.plot: figure structure, arrow counts, labels, atomic PNG writes."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import ndimage

from glacierxr import plot
from glacierxr.errors import DimensionError, MissingBandError
from glacierxr.flow import flow
from glacierxr.testing import make_series


def frames_cube(times: int, size: int = 12):
    return make_series(np.random.default_rng(0).random((times, size, size)).astype(np.float32))


def motion(size: int = 80, shift=(1.0, 0.0)):
    texture = ndimage.gaussian_filter(np.random.default_rng(1).standard_normal((size, size)), 2)
    moved = ndimage.shift(texture, (shift[1], shift[0]), mode="nearest")
    cube = make_series(np.stack([texture, moved, texture]).astype(np.float32), name="ndsi")
    return cube, flow(cube, method="farneback", stable_shift=False)


def test_frames__one_panel_per_date_and_a_colour_bar():
    cube = frames_cube(5)
    fig = plot.frames(cube, col_wrap=2, vmin=0, vmax=1)
    assert isinstance(fig, Figure)
    assert isinstance(fig.canvas, FigureCanvasAgg)  # built without pyplot, headless
    assert len(fig.axes) == 6
    titles = [ax.get_title() for ax in fig.axes[:5]]
    assert titles == [str(t)[:10] for t in cube.time.values]
    assert fig.axes[0].images[0].get_clim() == (0, 1)
    assert "snow mask" in fig.axes[-1].get_ylabel()


def test_frames__subsamples_long_series():
    cube = frames_cube(60, size=6)
    fig = plot.frames(cube, max_frames=12, col_wrap=6)
    assert len(fig.axes) == 12 + 1
    assert "12 of 60 frames" in fig._suptitle.get_text()
    # first and last dates are kept
    assert fig.axes[0].get_title() == str(cube.time.values[0])[:10]
    assert fig.axes[11].get_title() == str(cube.time.values[-1])[:10]


def test_frames__needs_the_dimensions():
    with pytest.raises(DimensionError, match="frames needs dimensions"):
        plot.frames(frames_cube(2).isel(time=0))


def test_flow_arrows__one_arrow_every_step_pixels_with_speed_colours():
    cube, result = motion()
    fig = plot.flow_arrows(result, background=cube, step=20)
    ax = fig.axes[0]
    quiver = ax.collections[0]
    assert quiver.N == 4 * 4  # rows/cols 10, 30, 50, 70
    assert len(fig.axes) == 2  # the map and its colour bar
    assert fig.axes[1].get_ylabel() == "speed (m/year)"
    assert ax.get_xlabel() == "x (metre) — WGS 84 / UTM zone 43N (EPSG:32643)"
    assert ax.get_ylabel() == "y (metre)"
    # content moved 1 px east: arrows point east (u > 0, v ~ 0)
    assert np.median(quiver.U) > 0 and abs(np.median(quiver.V)) < 0.2 * np.median(quiver.U)
    assert "→" in ax.get_title()


def test_flow_arrows__draws_into_a_given_axes_and_picks_the_time():
    cube, result = motion()
    fig = Figure()
    ax = fig.add_subplot()
    out = plot.flow_arrows(result, time=result.time.values[1], step=40, ax=ax)
    assert out is fig
    assert ax.collections[0].N == 2 * 2
    late = plot.flow_arrows(result, time=1, step=40)
    assert str(result.time_start.values[1])[:10] in late.axes[0].get_title()


def test_flow_arrows__needs_flow_variables():
    _, result = motion()
    with pytest.raises(MissingBandError, match="needs variables vx, vy, v"):
        plot.flow_arrows(result.drop_vars("v"))


def test_save__writes_a_png_atomically(tmp_path):
    cube, result = motion(size=40)
    path = plot.save(plot.flow_arrows(result, step=10), tmp_path / "figs" / "flow.png", dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["flow.png"]  # no temporary left


def test_flow_arrows__scale_key_is_a_round_speed_drawn_to_the_arrows_scale():
    cube, result = motion()
    fig = plot.flow_arrows(result, background=cube, step=20)
    ax = fig.axes[0]
    quiver = ax.collections[0]
    keys = [artist for artist in ax.get_children() if type(artist).__name__ == "QuiverKey"]
    assert len(keys) == 1 and keys[0].Q is quiver
    speeds = np.hypot(quiver.U, quiver.V)
    p95 = np.percentile(speeds[np.isfinite(speeds)], 95)
    assert keys[0].U <= p95 < 5 * keys[0].U  # 1, 2 or 5 x 10^k just below the 95th percentile
    mantissa = keys[0].U / 10 ** np.floor(np.log10(keys[0].U))
    assert round(mantissa, 6) in (1.0, 2.0, 5.0)
    assert keys[0].text.get_text() == f"{keys[0].U:g} m/year"


def test_flow_arrows__scale_key_arrow_and_label_sit_inside_the_white_box():
    from matplotlib.patches import Rectangle

    cube, result = motion()
    fig = plot.flow_arrows(result, background=cube, step=20)
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (key,) = [artist for artist in ax.get_children() if type(artist).__name__ == "QuiverKey"]
    (box,) = [patch.get_window_extent(renderer) for patch in ax.patches if isinstance(patch, Rectangle)]
    # the key arrow in display pixels: its vertices (scaled) moved to its offset in the axes
    vertices = key.vector.get_transform().transform(key.vector.get_paths()[0].vertices)
    arrow = vertices + key.vector.get_offset_transform().transform(key.vector.get_offsets())
    label = key.text.get_window_extent(renderer)
    assert box.x0 <= arrow[:, 0].min() and arrow[:, 0].max() <= label.x0 <= label.x1 <= box.x1
    assert box.y0 <= arrow[:, 1].min() and arrow[:, 1].max() <= box.y1


def test_frames__captions_and_the_grid_crs():
    cube = frames_cube(3)
    fig = plot.frames(cube, captions=["filled 0 %", "filled 12 %", "filled 3 %"])
    assert fig.axes[1].get_title().endswith("\nfilled 12 %")
    assert "EPSG:32643" in fig._supxlabel.get_text()
    with pytest.raises(DimensionError, match="one per frame"):
        plot.frames(cube, captions=["a"])
