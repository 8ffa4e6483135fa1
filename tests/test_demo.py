"""The demo end to end (quick size): every output written, the report showing every figure,
the forecast store labelled and georeferenced, and the command line around it."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import glacierxr as gx
from glacierxr.demo import QUICK, run_demo

pytest.importorskip("torch")

FIGURES = ("alignment.png", "composites.png", "flow.png", "velocity.png", "learning_curve.png", "forecast.png",
           "skill.png")
FILES = ("scenes.csv", "metrics.md", "metrics.csv", "config.toml", "report.md", "run/model.pt")
STORES = ("composites.zarr", "velocity.zarr", "forecast.zarr")


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    report = run_demo(out, quick=True, progress=False)
    return out, report


@pytest.mark.slow
def test_demo__quick_writes_every_output(demo_out):
    out, report = demo_out
    assert report == out / "report.md"
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data[:4] == b"\x89PNG", name
        assert len(data) > 10_000, f"{name} is suspiciously small"
    for name in FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in STORES:
        assert (out / name).is_dir(), name
    assert (out / "sample" / "catalog.json").is_file()
    # no half-written leftovers of the atomic writes
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_demo__report_shows_every_figure_in_pipeline_order(demo_out):
    out, report = demo_out
    text = report.read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert images == list(FIGURES)
    for link in ("scenes.csv", "composites.zarr", "forecast.zarr", "metrics.csv", "config.toml"):
        assert f"({link})" in text, link
    # timings of every stage and the total
    for stage in ("sample", "search", "preprocess + composites", "flow", "train", "predict", "evaluate"):
        assert re.search(rf"\| {re.escape(stage)} \| \d+\.\d \|", text), stage
    assert "**total**" in text
    # the verdict on the baselines is stated plainly, and the configuration is there as TOML
    assert re.search(r"The model (beats|does \*\*not\*\* beat|is \*\*not clearly better\*\*)", text)
    assert "```toml\n[data]" in text
    assert (out / "config.toml").read_text().strip() in text  # the file the report links, as it is
    assert "hypot(" not in text  # words for the reader, not code


@pytest.mark.slow
def test_demo__numbers_in_the_report_match_the_outputs(demo_out):
    out, report = demo_out
    text = report.read_text()
    scenes = pd.read_csv(out / "scenes.csv")
    assert set(scenes.columns) >= {"datetime", "id", "platform", "cloud_cover", "kept"}
    assert (scenes.loc[scenes.kept, "cloud_cover"] <= 20).all()
    assert (scenes.loc[~scenes.kept, "cloud_cover"] > 20).all()
    assert f"found **{len(scenes)} scenes**" in text
    assert f"**{int(scenes.kept.sum())}** have at most 20 % cloud cover" in text

    metrics = pd.read_csv(out / "metrics.csv")
    assert {"persistence", "seasonal_naive", "climatology"} <= set(metrics.model)
    # the model (first row) forecasts a correction to damped anomaly persistence, with context
    assert metrics.model.iloc[0] == "convlstm+anomaly_persistence+climatology+scene_anomaly"
    assert set(metrics.lead.astype(str)) == {"1", "2", "3", "4", "all"}
    assert np.isfinite(metrics.mse).all()
    markdown = (out / "metrics.md").read_text()
    assert markdown.startswith("| model | lead | mse |")
    assert markdown.count("\n") == len(metrics) + 2

    config = gx.config.RunConfig.from_toml(out / "config.toml")
    assert config.patches.patch == QUICK.patch
    assert config.data.max_cloud == 20.0

    # the gap-filled share quoted in the report is the one in composites.zarr, counted here
    composites = gx.pipeline.open_composites(out / "composites.zarr")
    total = composites["observation_count"].sum(("y", "x")).values
    observed = composites["observed_count"].sum(("y", "x")).values
    share = np.where(total > 0, 1 - observed / np.maximum(total, 1), 0.0)
    assert f"Gap filling made up {share.mean():.1%} of the values" in text
    assert f"at most {share.max():.1%}" in text


@pytest.mark.slow
def test_demo__forecast_store_is_labelled_and_georeferenced(demo_out):
    out, _ = demo_out
    composites = gx.io.read(out / "composites.zarr")["snow_mask"]
    store = gx.io.read(out / "forecast.zarr")
    forecast = store["snow_mask_forecast"]
    assert forecast.dims == ("time", "y", "x")
    assert forecast["lead"].values.tolist() == [1, 2, 3, 4]
    # the held-out periods: the last four composites
    np.testing.assert_array_equal(forecast["time"].values, composites["time"].values[-4:])
    np.testing.assert_array_equal(forecast["x"].values, composites["x"].values)
    np.testing.assert_array_equal(forecast["y"].values, composites["y"].values)
    assert forecast.rio.crs is not None and forecast.rio.crs.to_epsg() == 32643
    assert forecast.attrs["model"] == "convlstm+anomaly_persistence+climatology+scene_anomaly"
    assert len(forecast.attrs["checkpoint_sha256"]) == 64
    values = forecast.values
    assert np.isfinite(values).all()
    # the composites store also holds the per-scene alignment diagnostics
    stored = gx.io.read(out / "composites.zarr")
    assert stored["scene_shift_x"].dims == ("scene",)
    assert np.isfinite(stored["scene_shift_x"].values).all()


@pytest.mark.slow
def test_demo__velocity_numbers_are_the_cube_against_the_truth(demo_out):
    """The report's bare-ice error, recomputed with NumPy from the stored cube and the truth."""
    out, report = demo_out
    text = report.read_text()
    cube = gx.io.read(out / "velocity.zarr").compute()
    truth = gx.sample.open_truth(out / "sample" / "catalog.json")
    assert cube.attrs["Conventions"] == "CF-1.8" and {"vx", "vy", "v_error"} <= set(cube.data_vars)
    assert (cube["date_dt"] >= 5).all() and (cube["date_dt"] <= 33).all()
    assert set(pd.DatetimeIndex(cube["time_start"].values).month) <= {7, 8, 9, 10}
    on_grid = truth.sel(x=cube.x, y=cube.y, method="nearest")
    ids = {str(i): k for k, i in enumerate(truth["id"].values.tolist())}
    used = {str(i) for i in np.concatenate([cube["scene_id_img1"].values, cube["scene_id_img2"].values])}
    lowest = min(float(truth["snow_line"].values[ids[i.split("+")[0]]]) for i in used)
    bare = on_grid["glacier"].values.astype(bool) & (on_grid["elevation"].values < lowest - 150.0)
    keep = ~cube["interpolated"].values.astype(bool) if "interpolated" in cube else True  # as composite()
    vx = np.nanmedian(np.where(keep, cube["vx"].values, np.nan), axis=0)
    vy = np.nanmedian(np.where(keep, cube["vy"].values, np.nan), axis=0)
    error = np.hypot(vx - on_grid["u"].values, vy - on_grid["v"].values)[bare]
    stated = re.search(r"median end-point error is \*\*(\d+) m/yr\*\* for a median true speed of (\d+) m/yr", text)
    assert stated, "the report states the error against the truth"
    assert abs(int(stated.group(1)) - np.nanmedian(error)) <= 1
    assert abs(int(stated.group(2)) - np.median(on_grid["speed"].values[bare])) <= 1
    assert f"chose {cube.sizes['mid_date']} pairs" in text


@pytest.mark.slow
def test_demo__config_file_repeats_the_velocity_pairs(demo_out):
    """`glacierxr velocity --config demo-out/config.toml` chooses the demo's pairs (one file reproduces a run)."""
    out, _ = demo_out
    config = gx.config.RunConfig.from_toml(out / "config.toml")
    v = config.velocity
    assert (v.months, v.max_days, v.method) == ([7, 8, 9, 10], 33.0, "farneback") and v.winsize
    pairs = gx.velocity.select_pairs(gx.pipeline.velocity_scenes(config), min_days=v.min_days, max_days=v.max_days,
                                     min_clear=v.min_clear, months=v.months)
    cube = gx.io.read(out / "velocity.zarr")
    assert len(pairs) == cube.sizes["mid_date"]
    np.testing.assert_array_equal(np.sort(pd.DatetimeIndex(pairs["time_start"]).values),
                                  np.sort(pd.DatetimeIndex(cube["time_start"].values).values))


@pytest.mark.slow
def test_demo__cli_exits_zero_and_reuses_a_sample(demo_out, tmp_path, capsys):
    import shutil

    from glacierxr.cli import main

    out, _ = demo_out
    fresh = tmp_path / "cli"
    shutil.copytree(out / "sample", fresh / "sample")  # a sample of the right size is reused
    catalog = fresh / "sample" / "catalog.json"
    written = catalog.stat().st_mtime_ns
    assert main(["demo", "--quick", "--out", str(fresh)]) == 0
    assert catalog.stat().st_mtime_ns == written
    printed = capsys.readouterr().out
    assert f"report: {fresh / 'report.md'}" in printed
    assert re.search(r"\[ 1/10\] sample", printed)  # one progress line per stage
    assert "reused" in (fresh / "report.md").read_text()
    for name in FIGURES + FILES:
        assert (fresh / name).is_file(), name
