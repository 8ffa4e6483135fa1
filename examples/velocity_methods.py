"""Which tracker suits the demo's glacier? NCC and Farnebäck through a velocity cube, against the truth.

Run:  python examples/velocity_methods.py [--quick] [--out velocity-methods]

The demo's sample glacier is a slow valley glacier (about 1 px per 16 days at 30 m). This writes
the demo's sample (or reuses it), chooses the demo's late-summer pairs with
:func:`glacierxr.velocity.select_pairs`, builds one velocity cube per method with
:func:`glacierxr.velocity.velocity_cube` (stable ground from the truth) and prints, on bare ice
(glacier below the lowest snow line of the scenes used, minus 150 m):

* the median end-point error of the composite (median of ``vx`` and ``vy`` over the pairs);
* the median end-point error of single pairs, and the median of their own error estimate
  ``hypot(vx_error, vy_error)``;
* the share of points whose true error is within that estimate (63 % for calibrated Gaussian
  errors).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import glacierxr as gx
from glacierxr import demo, pipeline
from glacierxr.velocity import composite, velocity_cube

METHODS = {"ncc": {}, "farneback": {"method": "farneback"}}


def scenes_and_truth(out: Path, quick: bool):
    """The demo's masked scenes, its late-summer pairs and the sample's truth."""
    size = demo.QUICK if quick else demo.FULL
    catalog, _ = demo._sample(out / "sample", size, progress=False)
    config = demo.demo_config(catalog, size)
    cube = pipeline.load_scenes(pipeline.find_scenes(config.data), config.data, config.load)
    masked = pipeline.masked_scenes(cube, config.preprocess)
    return masked, demo._flow_pairs(masked), gx.sample.open_truth(catalog), size


def scores(cube, truth) -> dict[str, float]:
    """Errors of the composite and of the pairs against the truth, on bare ice."""
    summary = composite(cube)
    on_grid = truth.sel(x=cube.x, y=cube.y, method="nearest")
    ids = {str(i): k for k, i in enumerate(truth["id"].values.tolist())}
    used = {str(i).split("+")[0] for i in np.concatenate([cube.scene_id_img1.values, cube.scene_id_img2.values])}
    lowest = min(float(truth["snow_line"].values[ids[i]]) for i in used)
    bare = on_grid["glacier"].values.astype(bool) & (on_grid["elevation"].values < lowest - 150.0)
    u, v = on_grid["u"].values, on_grid["v"].values
    error = np.hypot(summary.vx.values - u, summary.vy.values - v)[bare]
    pair_error = np.hypot(cube.vx.values - u, cube.vy.values - v)[:, bare]
    estimate = np.hypot(cube.vx_error.values, cube.vy_error.values)[:, bare]
    measured = np.isfinite(pair_error) & np.isfinite(estimate)
    return {
        "points": int(bare.sum()),
        "true speed": float(np.median(on_grid["speed"].values[bare])),
        "composite error": float(np.nanmedian(error)),
        "pair error": float(np.nanmedian(pair_error)),
        "error estimate": float(np.nanmedian(estimate)),
        "within estimate": float((pair_error[measured] <= estimate[measured]).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick demo's 96 px sample")
    parser.add_argument("--out", default="velocity-methods", help="folder of the sample")
    args = parser.parse_args()
    masked, pairs, truth, size = scenes_and_truth(Path(args.out), args.quick)
    stable = truth["stable"].assign_coords(y=masked["y"].values, x=masked["x"].values)
    print(f"{len(pairs)} late-summer pairs; errors in m/yr on bare ice")
    print("| method | seconds | points | true speed | composite error | pair error | error estimate | within |")
    print("|---|---|---|---|---|---|---|---|")
    for method, options in METHODS.items():
        if method == "farneback":
            options = {**options, "winsize": size.flow_winsize}
        started = time.perf_counter()
        cube = velocity_cube(masked["green"], pairs, stable=stable, **options).compute()
        s = scores(cube, truth)
        print(f"| {method} | {time.perf_counter() - started:.1f} | {s['points']} | {s['true speed']:.0f} | "
              f"{s['composite error']:.0f} | {s['pair error']:.0f} | {s['error estimate']:.0f} | "
              f"{s['within estimate']:.0%} |")


if __name__ == "__main__":
    main()
