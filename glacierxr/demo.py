"""The whole pipeline on the embedded sample, with figures, a forecast, metrics and a report.

:func:`run_demo` writes the synthetic sample (or reuses it), then runs search → load → mask →
NDSI → snow mask → fill → align → 3-monthly composites → surface velocity → training (small) →
forecast → evaluation, and writes into one folder what a glaciologist looks at::

    sample/              the embedded sample (COGs, STAC catalog, truth.nc)
    scenes.csv           the search result: every scene found, its cloud cover, kept or not
    composites.zarr      snow-mask composites (+ per-scene alignment diagnostics)
    alignment.png        recovered vs true misregistration of every scene
    composites.png       the input composites
    flow.png             measured vs true surface velocity (arrows over a scene)
    velocity.png         the velocity composite: arrows, speed, spread of the pairs
    velocity.zarr        the velocity cube of the late-summer pairs (ITS_LIVE-like)
    run/model.pt         the trained model (+ checkpoints, metrics.jsonl, config.toml)
    learning_curve.png   training / validation loss per epoch, persistence for reference
    forecast.zarr        forecast of the last periods from the ones before
    forecast.png         forecast / observed / error per lead time
    metrics.md, .csv     model and baselines per lead time on the test split
    skill.png            MSE and IoU per lead time per forecaster
    config.toml          the run configuration
    report.md            all of the above in pipeline order, with numbers and timings

Run it with ``glacierxr demo --out demo-out`` (about 3.5 minutes of CPU time; 7 minutes of wall
time measured on 2 cores shared with other work; no GPU, no network) or ``glacierxr demo --quick``
(a small sample and a few training batches, for tests).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from glacierxr.config import RunConfig
from glacierxr.errors import NoScenesError

__all__ = ["run_demo", "DemoSize", "QUICK", "FULL"]


@dataclass(frozen=True)
class DemoSize:
    """Sizes of a demo run: the sample, the patches, the model and the training."""

    width: int
    height: int
    start: str  # first date of the sample
    end: str  # last date of the sample
    search_end: str  # last date searched (whole composite periods only)
    patch: int
    stride: int
    hidden_channels: tuple[int, ...]
    max_epochs: int
    batch_size: int
    lr: float
    max_batches_per_epoch: int | None
    val_fraction: float
    patience: int | None
    arrow_step: int
    flow_winsize: int


#: A small run for tests: 96 x 96 px, 4 years (16 composites: 8 to train, 8 to test), 2 short epochs.
QUICK = DemoSize(
    width=96, height=96, start="2013-04-01", end="2017-04-01", search_end="2017-03-31",
    patch=32, stride=32, hidden_channels=(8,), max_epochs=2, batch_size=8, lr=3e-3,
    max_batches_per_epoch=2, val_fraction=0.0, patience=None, arrow_step=6, flow_winsize=9,
)

#: The default sample (256 x 256 px, 8 years, 32 composites) and a model trained for about 3 min
#: of CPU time (14 epochs of 32 batches of 16 sequences); the whole demo takes about 3.5 min of CPU.
FULL = DemoSize(
    width=256, height=256, start="2013-04-01", end="2021-04-01", search_end="2021-03-31",
    patch=32, stride=16, hidden_channels=(12, 12), max_epochs=14, batch_size=16, lr=3e-3,
    max_batches_per_epoch=32, val_fraction=0.15, patience=4, arrow_step=10, flow_winsize=15,
)

_SEED = 0
_FLOW_MONTHS = (7, 8, 9, 10)  # late summer: the snow line is high and the ice texture shows
_FLOW_MAX_GAP_DAYS = 33
_FLOW_MAX_MISSING = 0.05
_FLOW_MIN_DAYS = 5
#: flow's method in the demo, chosen by measurement on its slow valley glacier (about 1 px per 16
#: days): Farnebäck's composite is off by 47 m/yr on bare ice, NCC's by 72 (true speed 854 m/yr;
#: `python examples/velocity_methods.py`). `glacierxr velocity` keeps flow's default, NCC.
_FLOW_METHOD = "farneback"
_BARE_ICE_MARGIN_M = 150.0  # evaluate flow this far below the snow line of both scenes
# PyTorch intra-op threads while training, predicting and evaluating. The demo's models are small
# (32 x 32 px patches, a dozen channels): on a shared 2-core machine one epoch took 13 s of CPU
# and 24 s wall with one thread but 71 s of CPU and 161 s wall with two (threads spinning at
# barriers while the other core is busy). Dask still runs two prediction blocks side by side.
_TORCH_THREADS = 1


class _Stages:
    """Times the stages of the run and prints one line per stage."""

    def __init__(self, total: int, progress: bool) -> None:
        self.total = total
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()
        self._index = 0

    def run(self, name: str):
        stages = self

        class _Stage:
            def __enter__(self):
                stages._index += 1
                self.t0 = time.perf_counter()
                self.cpu0 = time.process_time()
                if stages.progress:
                    print(f"[{stages._index:2d}/{stages.total}] {name} …", flush=True)
                return self

            def __exit__(self, kind, value, traceback):
                elapsed = time.perf_counter() - self.t0
                stages.seconds[name] = elapsed
                stages.cpu_seconds[name] = time.process_time() - self.cpu0
                if stages.progress and kind is None:
                    total = time.perf_counter() - stages.started
                    print(f"        {name}: {elapsed:6.1f} s  (total {total:6.1f} s)", flush=True)
                return False

        return _Stage()

    @property
    def total_seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def total_cpu_seconds(self) -> float:
        return time.process_time() - self.cpu_started


def _portable(config: RunConfig, out: Path) -> RunConfig:
    """A copy whose catalog path is relative to ``out`` (where config.toml goes), so the file
    works from any directory (:mod:`glacierxr.config` resolves it beside the file)."""
    import copy

    catalog = Path(config.data.catalog)
    try:
        relative = catalog.resolve().relative_to(Path(out).resolve())
    except ValueError:
        return config
    portable = copy.deepcopy(config)
    portable.data.catalog = relative.as_posix()
    return portable


def demo_config(catalog: str | Path, size: DemoSize) -> RunConfig:
    """The run configuration of a demo of ``size`` on the sample at ``catalog``."""
    return RunConfig.from_dict(
        {
            "data": {
                "catalog": str(catalog),
                "datetime": f"{size.start}/{size.search_end}",
                "max_cloud": 20.0,
            },
            "preprocess": {"months": 3},
            "patches": {
                "input_steps": 4,
                "target_steps": 4,
                "patch": size.patch,
                "stride": size.stride,
                "split": "temporal",
                "val_fraction": size.val_fraction,
                "test_fraction": 0.15,
            },
            "model": {"name": "convlstm", "hidden_channels": list(size.hidden_channels)},
            "train": {
                "max_epochs": size.max_epochs,
                "batch_size": size.batch_size,
                "lr": size.lr,
                "max_batches_per_epoch": size.max_batches_per_epoch,
                **({"patience": size.patience} if size.patience else {}),
            },
            "predict": {"steps": 4, "overlap": size.patch // 2},
            "velocity": {  # what the demo's velocity stage uses, so `glacierxr velocity` repeats it
                "min_days": float(_FLOW_MIN_DAYS), "max_days": float(_FLOW_MAX_GAP_DAYS),
                "min_clear": 1.0 - _FLOW_MAX_MISSING, "months": list(_FLOW_MONTHS), "method": _FLOW_METHOD,
                **({"winsize": size.flow_winsize} if _FLOW_METHOD == "farneback" else {}),
            },
        },
        source="demo",
    )


def run_demo(out: str | os.PathLike, *, quick: bool = False, progress: bool = True) -> Path:
    """Run the whole pipeline on the embedded sample and write figures, outputs and a report.

    Parameters
    ----------
    out
        Output folder (created if needed). A sample already written in ``out/sample`` with the
        same size is reused; every other output is replaced.
    quick
        A 96 x 96 px, 4-year sample and two training epochs of two batches (about a minute);
        otherwise the default 256 x 256 px, 8-year sample and a model trained for a few minutes
        (well under 10 minutes in all on 2 CPU cores).
    progress
        Print one line per stage with its time (and progress bars where long).

    Returns
    -------
    pathlib.Path
        Path of ``report.md``.

    Raises
    ------
    NoScenesError
        The search found no scene (a damaged sample).
    """
    import glacierxr as gx
    from glacierxr import pipeline, plot, report
    from glacierxr.io import read, write

    size = QUICK if quick else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(total=10, progress=progress)
    facts: dict = {"quick": quick, "size": size}

    with stages.run("sample"):
        catalog, facts["sample_reused"] = _sample(out / "sample", size, progress=progress)
        truth = gx.sample.open_truth(catalog)
    config = demo_config(catalog, size)
    (out / "config.toml").write_text(_portable(config, out).to_toml())

    with stages.run("search"):
        everything = gx.search(datetime=config.data.datetime, max_cloud=None, catalog=config.data.catalog)
        items = pipeline.find_scenes(config.data)
        _scene_table(everything, {item.id for item in items}).to_csv(out / "scenes.csv", index=False)
        facts.update(found=len(everything), kept=len(items))

    with stages.run("preprocess + composites"):
        # one lazy graph: load → mask → NDSI → snow mask → fill → align → composites, computed
        # once by the Zarr write (with the per-scene alignment shifts beside the composites)
        cube = pipeline.load_scenes(items, config.data, config.load)
        masked = pipeline.masked_scenes(cube, config.preprocess)
        scenes = pipeline.snow_scenes(cube, config.preprocess, masked=masked)
        composites = pipeline.snow_composites(cube, config.preprocess, scenes=scenes)
        composites.attrs.update(pipeline.provenance(config))
        write(pipeline.composites_dataset(composites, scenes), out / "composites.zarr", overwrite=True)
        composites = pipeline.open_composites(out / "composites.zarr")  # lazy from here on
        facts.update(
            loaded=cube.sizes["time"],
            used=masked.sizes["time"],
            periods=composites.sizes["time"],
            interpolated=int(np.asarray(composites["interpolated"].values).sum()),
            filled=_filled(composites),
            first_period=_month(composites["time"].values[0]),
            last_period=_month(composites["time"].values[-1]),
        )

    with stages.run("alignment check"):
        facts["alignment"] = _alignment(read(out / "composites.zarr"), truth)
        plot.save(report.alignment_figure(*facts["alignment"].pop("arrays")), out / "alignment.png")

    with stages.run("composites figure"):
        figure = plot.frames(
            composites.assign_attrs(long_name="snow mask", units="NDSI"),
            col_wrap=8, cmap="Blues_r", vmin=0.0, vmax=1.0, panel_size=1.6,
            captions=[f"filled {share:.0%}" for share in facts["filled"]["per_period"]],
            title=f"{config.preprocess.months}-monthly snow-mask composites (NDSI where ≥ "
            f"{config.preprocess.threshold}, else 0)",
        )
        plot.save(figure, out / "composites.png")

    with stages.run("flow"):
        facts["flow"] = _velocity(masked, truth, config, size, out)
        (out / "config.toml").write_text(_portable(config, out).to_toml())  # with the pairs' clear share used

    with _torch_threads(_TORCH_THREADS):
        with stages.run("train"):
            model, facts["train"] = _train(composites, config, size, out, progress=progress)
        with stages.run("predict"):
            facts["forecast"] = _forecast(composites, model, config, out)
        with stages.run("evaluate"):
            facts["metrics"] = _evaluate(composites, model, config, out)

    with stages.run("report"):
        text = _report(config, facts, out)
    path = out / "report.md"
    path.write_text(_with_timings(text, stages))
    if progress:
        print(f"demo finished in {stages.total_seconds:.1f} s; report: {path}", flush=True)
    return path


_METRIC_COLUMNS = (
    "model", "lead", "mse", "mae", "iou", "f1", "skill_vs_persistence",
    "skill_vs_seasonal_naive", "skill_vs_climatology", "skill_vs_anomaly_persistence",
    "skill_vs_best_baseline", "n_samples",
)


# --------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _torch_threads(count: int):
    """Use ``count`` PyTorch intra-op threads inside the block, restoring the setting after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sample(directory: Path, size: DemoSize, *, progress: bool) -> tuple[Path, bool]:
    """Write the sample, or reuse one of the same size and period already there."""
    import glacierxr as gx

    catalog = directory / "catalog.json"
    if catalog.exists() and (directory / gx.sample.COMPLETE_MARKER).exists():  # not an interrupted one
        try:
            attrs = gx.sample.open_truth(catalog).attrs
        except Exception:  # noqa: BLE001 - a damaged sample is rewritten below
            attrs = {}
        wanted = {"seed": _SEED, "width": size.width, "height": size.height,
                  "start": size.start, "end": size.end}
        if all(str(attrs.get(k)) == str(v) for k, v in wanted.items()):
            return catalog, True
        if progress:
            print(f"        {directory} holds another sample; writing the demo's", flush=True)
    path = gx.sample.write_catalog(
        directory, seed=_SEED, width=size.width, height=size.height, start=size.start, end=size.end,
        overwrite=True, progress=progress,
    )
    return path, False


def _scene_table(items, kept_ids: set[str]) -> pd.DataFrame:
    rows = [
        {
            "datetime": pd.Timestamp(item.datetime).tz_convert(None),
            "id": item.id,
            "platform": item.properties.get("platform"),
            "cloud_cover": item.properties.get("eo:cloud_cover"),
            "kept": item.id in kept_ids,
        }
        for item in items
    ]
    if not rows:
        raise NoScenesError(
            "The sample catalog holds no scene in the demo period. Delete out/sample and run again."
        )
    return pd.DataFrame(rows)


def _alignment(stored: xr.Dataset, truth: xr.Dataset) -> dict:
    """Recovered scene shifts (written beside the composites) against the sample's truth."""
    ids = [str(i) for i in stored["scene_id"].values.tolist()]
    truth_ids = {str(i): k for k, i in enumerate(truth["id"].values.tolist())}
    index = [truth_ids.get(i.split("+")[0]) for i in ids]
    keep = np.array([k is not None for k in index])
    rows = np.array([k for k in index if k is not None], dtype=int)
    found_x = np.asarray(stored["scene_shift_x"].values, dtype=float)[keep]
    found_y = np.asarray(stored["scene_shift_y"].values, dtype=float)[keep]
    true_x = np.asarray(truth["shift_x"].values, dtype=float)[rows]
    true_y = np.asarray(truth["shift_y"].values, dtype=float)[rows]
    codes = np.asarray(stored["scene_align_method"].values, dtype=int)[keep]
    meanings = str(stored["scene_align_method"].attrs.get("flag_meanings", "none phase ecc")).split()
    method = np.array([meanings[c] for c in codes], dtype=object)
    dx = found_x - true_x
    dy = found_y - true_y
    dx_c, dy_c = dx - dx.mean(), dy - dy.mean()
    return {
        "n": int(keep.sum()),
        "offset_x": float(dx.mean()),
        "offset_y": float(dy.mean()),
        "rmse_x": float(np.sqrt(np.mean(dx_c**2))),
        "rmse_y": float(np.sqrt(np.mean(dy_c**2))),
        "rmse": float(np.sqrt(np.mean(dx_c**2 + dy_c**2))),
        "true_rms": float(np.sqrt(np.var(true_x) + np.var(true_y))),
        "methods": {m: int((method == m).sum()) for m in sorted(set(method))},
        "arrays": (true_x, true_y, found_x, found_y),
    }


def _flow_pairs(masked: xr.Dataset, v) -> pd.DataFrame | None:
    """Pairs as ``[velocity]`` says (late summer, 5 to 33 days apart, nearly cloud-free), the
    clear share relaxed to 0.8 then 0.5 when there are none (``v.min_clear`` records the one used)."""
    from glacierxr.errors import NoPairsError
    from glacierxr.velocity import select_pairs

    for min_clear in dict.fromkeys((v.min_clear, 0.8, 0.5)):
        try:  # masked carries its missing fractions: choosing reads no pixel
            pairs = select_pairs(masked["green"], min_days=v.min_days, max_days=v.max_days, min_clear=min_clear,
                                 months=v.months)
        except NoPairsError:
            continue
        v.min_clear = min_clear
        return pairs
    return None


def _velocity(masked: xr.Dataset, truth: xr.Dataset, config: RunConfig, size: DemoSize, out: Path) -> dict:
    """Velocity cube of the late-summer pairs and its composite, against the sample's true velocity."""
    from glacierxr import plot, report
    from glacierxr.io import read, write
    from glacierxr.velocity import composite, velocity_cube

    v = config.velocity
    pairs = _flow_pairs(masked, v)
    if pairs is None:
        return {"pairs": 0}
    grid = {"y": masked["y"].values, "x": masked["x"].values}
    options = {key: getattr(v, key) for key in ("method", "winsize") if getattr(v, key) is not None}
    cube = velocity_cube(masked["green"], pairs, stable=truth["stable"].assign_coords(grid), **options)
    write(cube, out / "velocity.zarr", overwrite=True)  # computes it: one task per pair
    cube = read(out / "velocity.zarr").compute()
    summary = composite(cube)
    facts, masks = _velocity_scores(cube, summary, truth, pairs)
    reference = truth[["u", "v", "speed"]].sel(x=summary.x, y=summary.y, method="nearest")
    measured = summary[["vx", "vy", "v"]].rename({"v": "speed"}).rename({"vx": "u", "vy": "v"})
    later = masked["green"].isel(time=int(pairs["index_img2"].iloc[-1])).compute()
    step = max(1, round(size.arrow_step * abs(float(grid["x"][1] - grid["x"][0]))
                        / abs(float(summary.x[1] - summary.x[0]))))
    counted = f"{len(pairs)} pair" + ("" if len(pairs) == 1 else "s")
    plot.save(
        report.velocity_comparison_figure(
            measured, reference.assign_coords(x=summary.x, y=summary.y), background=later, step=step,
            evaluation=masks["bare"], where=masks["outline"],
            titles=(f"measured: median of {counted}, {_FLOW_METHOD}",
                    "true velocity of the sample"),
        ),
        out / "flow.png",
    )
    plot.save(report.velocity_figure(summary, background=later, step=2 * step, where=masks["outline"],
                                     title=f"velocity composite of {counted} (late summer)"),
              out / "velocity.png")
    return facts


def _velocity_scores(cube: xr.Dataset, summary: xr.Dataset, truth: xr.Dataset, pairs: pd.DataFrame):
    """Errors of the composite and of the pairs against the truth, on bare ice, glacier, stable ground."""
    from scipy import ndimage

    on_grid = truth[["u", "v", "speed", "glacier", "stable", "elevation"]].sel(
        x=summary.x, y=summary.y, method="nearest").assign_coords(x=summary.x, y=summary.y)
    ids = {str(i): k for k, i in enumerate(truth["id"].values.tolist())}
    used = set(pairs["scene_id_img1"]) | set(pairs["scene_id_img2"]) if "scene_id_img1" in pairs else set()
    lines = [float(truth["snow_line"].values[ids[i.split("+")[0]]]) for i in used if i.split("+")[0] in ids]
    lowest = min(lines) if lines else float("inf")
    glacier = np.asarray(on_grid["glacier"].values, bool)
    # bare ice: glacier below the snow line of every scene used, minus a margin
    bare = glacier & (np.asarray(on_grid["elevation"].values) < lowest - _BARE_ICE_MARGIN_M)
    stable = np.asarray(on_grid["stable"].values, bool)
    error = np.hypot(summary["vx"].values - on_grid["u"].values, summary["vy"].values - on_grid["v"].values)
    pair_error = np.hypot(cube["vx"].values - on_grid["u"].values, cube["vy"].values - on_grid["v"].values)
    within = pair_error <= np.hypot(cube["vx_error"].values, cube["vy_error"].values)
    ok = np.isfinite(pair_error) & bare

    def median(values, where) -> float:
        picked = np.asarray(values, dtype=float)[where]
        picked = picked[np.isfinite(picked)]
        return float(np.median(picked)) if picked.size else float("nan")

    facts = {
        "pairs": len(pairs), "method": _FLOW_METHOD, "posting": abs(float(summary.x[1] - summary.x[0])),
        "dates": [f"{_day(a)} → {_day(b)}" for a, b in zip(pairs["time_start"], pairs["time_end"])],
        "bare_points": int(bare.sum()), "glacier_points": int(glacier.sum()),
        "epe_bare": median(error, bare), "epe_glacier": median(error, glacier),
        "epe_pair_bare": median(pair_error, np.broadcast_to(bare, pair_error.shape)),
        "error_estimate_bare": median(np.hypot(cube["vx_error"].values, cube["vy_error"].values),
                                      np.broadcast_to(bare, pair_error.shape)),
        "within_error": float(within[ok].mean()) if ok.any() else float("nan"),
        "true_speed_bare": median(on_grid["speed"].values, bare),
        "measured_speed_bare": median(summary["v"].values, bare),
        "stable_speed": median(summary["v"].values, stable), "snow_line": lowest,
    }
    outline = summary["v"].copy(data=ndimage.binary_dilation(glacier, iterations=1))
    return facts, {"bare": summary["v"].copy(data=bare), "outline": outline}


def _velocity_lines(fl: dict) -> list[str]:
    """The report's surface-velocity section (after its heading)."""
    if not fl.get("pairs"):
        return ["No pair of scenes was suitable for surface velocity in this run."]
    return [
        "![flow](flow.png)",
        "",
        f"`select_pairs` chose {fl['pairs']} pairs of scenes {_FLOW_MIN_DAYS}–{_FLOW_MAX_GAP_DAYS} days "
        f"apart, both acquired in months {_FLOW_MONTHS[0]}–{_FLOW_MONTHS[-1]} (late summer, when "
        "the snow line is high and the ice texture shows) and nearly cloud-free; `velocity_cube` "
        f"tracked each pair on the green band ({fl['method']}, one Dask task per pair, output "
        f"every {fl['posting']:.0f} m, the median stable-ground motion removed) and `composite` "
        "took the per-point median of `vx` and `vy` ([velocity.zarr](velocity.zarr) holds the "
        "cube). Left: the composite; right: the sample's "
        "true velocity, on the same arrow scale. On bare ice (the red outline: glacier below "
        f"the lowest snow line of those scenes minus {_BARE_ICE_MARGIN_M:.0f} m, "
        f"{fl['bare_points']} points) the composite's median end-point error is "
        f"**{fl['epe_bare']:.0f} m/yr** for a median true speed of {fl['true_speed_bare']:.0f} m/yr "
        f"(measured {fl['measured_speed_bare']:.0f} m/yr); one pair alone is off by a median "
        f"{fl['epe_pair_bare']:.0f} m/yr, where its own error estimate (the length of its error "
        f"vector `vx_error`, `vy_error`) says {fl['error_estimate_bare']:.0f} m/yr, and the true "
        f"error is within that estimate at {fl['within_error']:.0%} of the bare-ice points (63 % "
        "if the errors were calibrated Gaussian ones). Over the whole glacier, snow-covered parts "
        f"included, the composite is off by {fl['epe_glacier']:.0f} m/yr: snow has no texture "
        "that moves with the ice. Stable ground moves by a median "
        f"{fl['stable_speed']:.0f} m/yr after the correction.",
        "",
        "![velocity](velocity.png)",
        "",
        "The composite as `report.velocity_figure` draws it: arrows over the later scene (on the "
        "glacier), the speed map, and the spread (NMAD) of the pairs at every point.",
        "",
        "Pairs: " + "; ".join(fl["dates"]) + ".",
    ]


def _filled(composites: xr.DataArray) -> dict:
    """Share of each composite's observations that gap filling made up (shown per panel)."""
    from glacierxr.gapfill import filled_fraction

    share = np.asarray(filled_fraction(composites).values, dtype=float)
    worst = int(np.argmax(share))
    return {
        "per_period": share.tolist(),
        "mean": float(share.mean()),
        "max": float(share[worst]),
        "max_period": _month(composites["time"].values[worst]),
        "max_distance": float(composites.attrs.get("fill_gaps_max_distance", -1)),
    }


def _filled_sentence(filled: dict) -> str:
    bound = f"{filled['max_distance']:g} px" if filled["max_distance"] > 0 else "any distance"
    return (
        f"Gap filling made up {filled['mean']:.1%} of the values averaged into a composite on average "
        f"(at most {filled['max']:.1%}, in {filled['max_period']}; the figure gives it per period): "
        f"holes are filled only up to {bound} from observed pixels, deeper cloud holes are taken "
        "from the period's other scenes or interpolated in time."
    )


def _train(composites: xr.DataArray, config: RunConfig, size: DemoSize, out: Path, *, progress: bool):
    """Train the model, and draw its learning curve against two baselines' losses."""
    from glacierxr import pipeline, plot, report
    from glacierxr.evaluate import evaluate

    model, history = pipeline.train(composites, config, out / "run", progress=progress)
    sequences = pipeline.make_sequences(composites, config)
    split = "val" if len(sequences.split("val")) else "train"
    baselines = evaluate(
        None, sequences, split=split, baselines=("persistence", "seasonal_naive"), n_resamples=0
    )
    pooled = baselines[baselines["lead"].astype(str) == "all"].set_index("model")["mse"]
    facts = {
        "residual": getattr(model, "baseline", "none"),  # what "auto" became for this series
        "epochs": len(history),
        "best_epoch": int(history.attrs.get("best_epoch", len(history))),
        "best_loss": float(history.attrs.get("best_loss", np.nan)),
        "monitor": history.attrs.get("monitor", ""),
        "seconds": float(history["seconds"].sum()),
        "samples_per_s": float(history["samples_per_s"].median()),
        "parameters": int(history.attrs.get("trainable_parameters", 0)),
        "sequences": {name: len(sequences.split(name)) for name in ("train", "val", "test")},
        "time_ranges": sequences.split_info.get("time_ranges"),
        "reference_split": split,
        "persistence_mse": float(pooled["persistence"]),
        "seasonal_naive_mse": float(pooled["seasonal_naive"]),
    }
    figure = report.learning_curve_figure(
        history,
        reference={f"persistence ({split})": facts["persistence_mse"],
                   f"seasonal_naive ({split})": facts["seasonal_naive_mse"]},
        title=f"convlstm on {facts['sequences']['train']} training sequences ({size.patch}×{size.patch} px)",
    )
    plot.save(figure, out / "learning_curve.png")
    return model, facts


def _forecast(composites: xr.DataArray, model, config: RunConfig, out: Path) -> dict:
    """Forecast the last periods from the ones before; write, reopen and draw the forecast."""
    from glacierxr import pipeline, plot, report
    from glacierxr.io import read, write

    steps = config.predict.steps
    inputs = composites.isel(time=slice(None, -steps))
    actual = composites.isel(time=slice(-steps, None))
    forecast = pipeline.forecast(inputs, model, config)
    write(forecast, out / "forecast.zarr", overwrite=True)
    forecast = read(out / "forecast.zarr")[forecast.name]
    if not np.array_equal(forecast["time"].values, actual["time"].values):
        raise RuntimeError(
            f"The forecast periods {forecast['time'].values} are not the held-out ones "
            f"{actual['time'].values}; glacierxr.ml.predict and the composites disagree on the period."
        )
    last_input = inputs.isel(time=-1)
    label = f"snow mask (NDSI where ≥ {config.preprocess.threshold}, else 0)"
    figure = report.forecast_figure(forecast, actual.assign_attrs(long_name=label), persistence=last_input)
    plot.save(figure, out / "forecast.png")
    f, a, p = (np.asarray(v.values, dtype=float) for v in (forecast, actual, last_input))
    return {
        "input_period": forecast.attrs.get("input_period"),
        "periods": [_month(t) for t in forecast["time"].values],
        "mse": np.nanmean((f - a) ** 2, axis=(1, 2)).tolist(),
        "persistence_mse": np.nanmean((p[None] - a) ** 2, axis=(1, 2)).tolist(),
    }


def _evaluate(composites: xr.DataArray, model, config: RunConfig, out: Path) -> pd.DataFrame:
    """Model and baselines on the test split: metrics.csv (all columns), metrics.md, skill.png."""
    from glacierxr import pipeline, plot, report
    from glacierxr.evaluate import to_markdown

    metrics = pipeline.evaluate_run(composites, model, config, split="test")
    metrics.to_csv(out / "metrics.csv", index=False)
    (out / "metrics.md").write_text(to_markdown(metrics, columns=_shown_columns(metrics)) + "\n")
    plot.save(report.skill_figure(metrics), out / "skill.png")
    return metrics


def _shown_columns(metrics: pd.DataFrame) -> list[str]:
    return [c for c in _METRIC_COLUMNS if c in metrics.columns]


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def _load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover - not on every platform
        return None


def _month(value) -> str:
    return pd.Timestamp(value).strftime("%Y-%m")


def _day(value) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%d")


def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}g}"


def _verdict(metrics: pd.DataFrame) -> str:
    """Plain words on whether the model beats each baseline (pooled over leads and per lead)."""
    model = metrics["model"].iloc[0]
    ours = metrics[metrics["model"] == model]
    pooled = ours[ours["lead"].astype(str) == "all"].iloc[0]
    lines = []
    for baseline in [m for m in dict.fromkeys(metrics["model"]) if m != model]:
        column = f"skill_vs_{baseline}"
        if column not in metrics:  # another model scored beside ours (snow_state)
            lines.append(_other_model_line(metrics, baseline))
            continue
        skill = float(pooled[column])
        low = pooled.get(f"{column}_low", np.nan)
        high = pooled.get(f"{column}_high", np.nan)
        confidence = 100 * float(metrics.attrs.get("confidence", 0.95))
        interval = f" ({confidence:.0f} % interval {low:+.2f} … {high:+.2f})" if np.isfinite(low) else ""
        name = baseline.replace("_", "-")
        per_lead = ours[ours["lead"].astype(str) != "all"]
        better = [str(lead) for lead, s in zip(per_lead["lead"], per_lead[column]) if s > 0]
        if np.isfinite(low) and low > 0:
            claim = f"beats **{name}**"
        elif np.isfinite(high) and high < 0 or not np.isfinite(low) and skill <= 0:
            claim = f"does **not** beat **{name}**"
        else:
            claim = f"is **not clearly better** than **{name}** (the interval includes zero)"
        leads = f"; better at lead(s) {', '.join(better)}" if better else "; worse at every lead"
        lines.append(f"- The model {claim}: MSE skill {skill:+.2f}{interval}{leads}.")
    best = metrics.attrs.get("best_baseline")
    if best:
        lines.insert(0, f"- The strongest naive forecast of these periods is "
                        f"**{best.replace('_', '-')}** (lowest MSE of the baselines): the model is "
                        "worth running only where it beats that one.")
    return "\n".join(lines)


def _other_model_line(metrics: pd.DataFrame, name: str) -> str:
    """One line on a model scored beside the network (the statistical snow-state model)."""
    row = metrics[(metrics["model"] == name) & (metrics["lead"].astype(str) == "all")].iloc[0]
    skill, low, high = (row.get(f"skill_vs_best_baseline{end}", np.nan) for end in ("", "_low", "_high"))
    interval = f" (interval {low:+.2f} … {high:+.2f})" if np.isfinite(low) else ""
    label = f"`{name}`"
    if name == "snow_state":
        label = ("the statistical snow-state model (`snow_state`: one regional snow state forecast by "
                 "regression, each pixel's learnt response to it and its local level)")
    return f"- For comparison, {label} scores MSE skill {skill:+.2f}{interval} against the strongest baseline."


def _report(config: RunConfig, facts: dict, out: Path) -> str:
    """The demo's README: one section per stage, each written by its own function below."""
    lines = _intro_lines(config, facts, out)
    lines += _alignment_lines(facts["alignment"])
    lines += _composite_lines(config, facts)
    lines += ["## 4. Surface velocity", ""] + _velocity_lines(facts["flow"])
    lines += _training_lines(config, facts)
    lines += _forecast_lines(facts["forecast"])
    lines += _skill_lines(_portable(config, out), facts)  # the configuration as config.toml holds it
    return "\n".join(lines)


def _intro_lines(config: RunConfig, facts: dict, out: Path) -> list[str]:
    size: DemoSize = facts["size"]
    command = f"glacierxr demo --out {out}" + (" --quick" if facts["quick"] else "")
    return [
        "# glacierxr demo: a synthetic glacier from search to forecast",
        "",
        f"Run on {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} with `{command}` "
        f"({'quick' if facts['quick'] else 'full'} size) on {platform.platform(terse=True)}, "
        f"{os.cpu_count()} CPU cores.",
        "",
        "The embedded sample is a synthetic Landsat-8/9 Collection-2 Level-2 valley glacier "
        f"({size.width} × {size.height} px at 30 m, {size.start} to {size.end}, seed {_SEED}) "
        "written as Cloud-Optimized GeoTIFFs with a static STAC catalog and an exact ground truth "
        "(misregistration, velocity, snow line). Everything below ran on it from the catalog on, "
        "through the same functions as `glacierxr prepare | train | predict | evaluate`. "
        + ("The sample in [sample/](sample/catalog.json) was reused from an earlier run."
           if facts["sample_reused"]
           else "The sample was written to [sample/](sample/catalog.json) by this run."),
        "",
        "__TIMINGS__",
        "",
        "## 1. Scenes",
        "",
        f"The search of the catalog for {config.data.datetime} found **{facts['found']} scenes**; "
        f"**{facts['kept']}** have at most {config.data.max_cloud:g} % cloud cover and were kept "
        f"([scenes.csv](scenes.csv)). After QA masking, {facts['used']} of the {facts['loaded']} loaded "
        f"time steps have at most {config.preprocess.max_missing:.0%} missing pixels and were used.",
        "",
    ]


def _section(title: str, alt: str, figure: str) -> list[str]:
    """The first lines of a report section: its heading and its figure."""
    return [f"## {title}", "", f"![{alt}]({figure})", ""]


def _alignment_lines(a: dict) -> list[str]:
    return [
        *_section("2. Co-registration", "alignment", "alignment.png"),
        "ECC aligned every scene's snow mask to the mean image, on the stable ground `align` finds "
        "itself (pixels whose texture changes over time — moving ice, the snow line, cloud and "
        f"no-data edges — are left out) ({_methods(a['methods'])}). Against "
        f"the true misregistration of the {a['n']} scenes (RMS {a['true_rms']:.2f} px), the recovered "
        f"shifts are off by a constant ({a['offset_x']:+.2f}, {a['offset_y']:+.2f}) px — the mean "
        f"misregistration, which the mean reference carries — and by an RMSE of **{a['rmse']:.2f} px** "
        f"after removing it (x {a['rmse_x']:.2f} px, y {a['rmse_y']:.2f} px)"
        + (" — no better than leaving the scenes unaligned on this small sample."
           if a["rmse"] >= a["true_rms"] else "."),
        "",
    ]


def _composite_lines(config: RunConfig, facts: dict) -> list[str]:
    return [
        *_section("3. Snow-mask composites", "composites", "composites.png"),
        f"{facts['periods']} composites of {config.preprocess.months} months ({facts['first_period']} to "
        f"{facts['last_period']}): the mean snow mask (NDSI where ≥ {config.preprocess.threshold}, "
        f"else 0) of the gap-filled, aligned scenes of each period; {facts['interpolated']} periods "
        "without a usable scene were interpolated in time. "
        f"{_filled_sentence(facts['filled'])} In the sample, winter composites are "
        "snow-covered down the valley and summer ones show the bare glacier tongue (ice has an NDSI "
        "near 0.8) in a snow-free valley. Written to [composites.zarr](composites.zarr) and read "
        "back lazily for the steps below.",
        "",
    ]


def _training_lines(config: RunConfig, facts: dict) -> list[str]:
    size: DemoSize = facts["size"]
    tr = facts["train"]
    sequences = tr["sequences"]
    ranges = tr.get("time_ranges") or {}
    return [
        "",
        *_section("5. Training", "learning curve", "learning_curve.png"),
        f"A ConvLSTM ({tr['parameters']:,} parameters, hidden channels "
        f"{list(size.hidden_channels)}) learned to map 4 composites to the next 4"
        f"{_residual_words(config, tr.get('residual', config.model.residual))} on "
        f"{config.patches.patch} × {config.patches.patch} px patches (stride {config.patches.stride}) "
        f"with a temporal split: periods {_range(ranges.get('train'))} for training "
        f"({sequences['train']} sequences), {_range(ranges.get('val'))} for validation "
        f"({sequences['val']}) and {_range(ranges.get('test'))} for testing ({sequences['test']}); no "
        "sequence crosses a split boundary. "
        f"It trained {tr['epochs']} epochs"
        + (f" of at most {config.train.max_batches_per_epoch} batches of {config.train.batch_size}"
           if config.train.max_batches_per_epoch else f" in batches of {config.train.batch_size}")
        + f" in {tr['seconds']:.0f} s ({tr['samples_per_s']:.1f} sequences/s); the best "
        f"{tr['monitor'].replace('_', ' ')} was {_fmt(tr['best_loss'])} at epoch {tr['best_epoch']}. "
        f"For reference, on the {tr['reference_split']} split persistence (repeat the last input) "
        f"scores an MSE of {_fmt(tr['persistence_mse'])} and seasonal-naive (the same season a "
        f"year before) {_fmt(tr['seasonal_naive_mse'])} (dashed lines). "
        + ("The training loss is measured with dropout and teacher forcing on, so it can lie above "
           "the validation loss. " if sequences["val"] else "")
        + "The model is in [run/model.pt](run/model.pt).",
        "",
    ]


def _residual_words(config: RunConfig, residual: str) -> str:
    """How the model forecasts (``residual``: the baseline it was trained on, from ``[model] residual``), in words."""
    m = config.model
    if residual == "none":
        return ""
    base = {"anomaly_persistence": "damped anomaly persistence", "climatology": "the climatology",
            "snow_state": "the snow-state model of section 7"}[residual]
    setting = f"`[model] residual = \"{m.residual}\"`" + (f", here `{residual}`" if m.residual != residual else "")
    shown = {"climatology": "the climatology of the input and target seasons",
             "scene_anomaly": "the scene-wide anomaly of each input period"}
    context = f", shown {' and '.join(shown[c] for c in m.context)} besides its patch" if m.context else ""
    return (f" as a correction to {base} ({setting}: it starts from that "
            f"forecast and learns what it misses{context})")


def _forecast_lines(fc: dict) -> list[str]:
    return [
        *_section("6. Forecast of the last periods", "forecast", "forecast.png"),
        f"The last {len(fc['periods'])} composites ({fc['periods'][0]} to {fc['periods'][-1]}) were "
        f"held out and forecast from the 4 before ({fc['input_period']}) with "
        "`composites.glacier.predict(model, steps=4)`: the whole scene, stitched from overlapping "
        f"patches ([forecast.zarr](forecast.zarr)). Scene MSE per lead: model "
        + ", ".join(_fmt(v, 3) for v in fc["mse"])
        + "; persistence "
        + ", ".join(_fmt(v, 3) for v in fc["persistence_mse"])
        + ".",
        "",
    ]


def _skill_lines(config: RunConfig, facts: dict) -> list[str]:
    from glacierxr.evaluate import to_markdown
    from glacierxr.pipeline import versions

    metrics = facts["metrics"]
    sequences = facts["train"]["sequences"]
    lines = [
        *_section("7. Skill against baselines", "skill", "skill.png"),
        f"Scores on the {sequences['test']} test sequences (the held-out periods, all patches), "
        "for the model and the baselines: persistence (last input repeated), seasonal-naive "
        "(the same season one year before), climatology (mean of each season over the training "
        "periods) and damped anomaly persistence (climatology plus the last departure from it, "
        "shrinking each period by a factor fitted on the training periods). MSE and MAE are on "
        "the snow-mask values, IoU and F1 on the snow/ice area "
        f"(value ≥ {metrics.attrs.get('threshold', 0.3)}); skill is 1 − MSE / MSE of the baseline "
        "([metrics.csv](metrics.csv) has the bootstrap intervals).",
        "",
        _verdict(metrics),
        "",
    ]
    if facts["quick"]:
        lines += [
            "This was the quick run: a few training batches only, so the model is barely trained "
            "and the baselines are expected to win; run `glacierxr demo` without `--quick` for a "
            "trained model.",
            "",
        ]
    lines += [
        to_markdown(metrics, columns=_shown_columns(metrics), digits=3),
        "",
        "## Configuration",
        "",
        "The run's configuration ([config.toml](config.toml); `glacierxr prepare/train/predict "
        "--config config.toml` repeats any stage):",
        "",
        "```toml",
        config.to_toml().strip(),
        "```",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        "",
    ]
    return lines


def _methods(methods: dict[str, int]) -> str:
    words = {"ecc": "ECC converged", "phase": "phase-correlation fallback", "none": "left in place"}
    return ", ".join(f"{words.get(k, k)}: {n}" for k, n in methods.items())


def _range(bounds) -> str:
    if not bounds or bounds[1] <= bounds[0]:
        return "none"
    return f"{bounds[0] + 1}–{bounds[1]}"


def _with_timings(text: str, stages: _Stages) -> str:
    rows = ["| stage | wall (s) | CPU (s) |", "|---|---:|---:|"]
    rows += [
        f"| {name} | {seconds:.1f} | {stages.cpu_seconds.get(name, float('nan')):.1f} |"
        for name, seconds in stages.seconds.items()
    ]
    rows.append(f"| **total** | **{stages.total_seconds:.1f}** | **{stages.total_cpu_seconds:.1f}** |")
    load = _load_average()
    note = (
        "Time per stage: wall clock, and CPU time of this process (all its threads; on a machine "
        "shared with other work the wall time grows, the CPU time much less). Load average at "
        f"the end: {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} over 1, 5 and 15 minutes, on "
        f"{os.cpu_count()} cores. PyTorch used {_TORCH_THREADS} intra-op thread(s)."
    ) if load else "Time per stage (wall clock and CPU time of this process):"
    return text.replace("__TIMINGS__", note + "\n\n" + "\n".join(rows))
