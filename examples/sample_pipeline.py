"""The preprocessing chain on the embedded sample, checked against its truth.

Run:  python examples/sample_pipeline.py [--quick] [--out DIR]

Writes the sample (if needed), searches it, loads it lazily, masks clouds, computes the NDSI
snow mask, fills gaps, aligns the scenes, builds 3-monthly composites and measures surface
velocity on the green band, then prints how the recovered misregistration and velocity compare
with the truth, and how much of the composites gap filling made up. (The --quick sample is too
small for the velocity to be accurate: measure on the default 256 px sample.)
Runs offline; CI runs it with --quick.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import glacierxr as gx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="sample-pipeline-out")
    parser.add_argument("--quick", action="store_true", help="small sample (96 px, 2 years)")
    args = parser.parse_args()
    out = Path(args.out)
    size = dict(width=96, height=96, start="2018-01-01", end="2020-01-01") if args.quick else {}

    started = time.perf_counter()
    catalog = out / "sample" / "catalog.json"
    if not catalog.exists():
        catalog = gx.sample.write_catalog(out / "sample", seed=0, **size)
    truth = gx.sample.open_truth(catalog)

    items = gx.search(datetime="2000-01-01/2030-01-01", max_cloud=20, catalog=catalog)
    cube = gx.load(items, resolution=30)
    print(f"{len(items)} scenes with <= 20 % cloud; cube {dict(cube.sizes)} (lazy)")

    masked = cube.glacier.mask(max_missing=0.5)
    snow = masked.glacier.ndsi().glacier.snow_mask(threshold=0.3).glacier.fill_gaps()
    aligned = snow.glacier.align().persist()
    composites = aligned.glacier.monthly(months=3).compute()
    print(f"{composites.sizes['time']} 3-monthly composites, "
          f"{int(composites.interpolated.sum())} filled by interpolation in time")

    true = truth[["shift_x", "shift_y"]].sel(time=aligned.time)
    errors = []
    for axis in ("shift_x", "shift_y"):
        estimate = aligned[axis].values
        difference = estimate - true[axis].values
        errors.append(difference - difference.mean())  # the mean reference's common offset
    rmse = float(np.sqrt(np.mean(np.square(errors))))
    print(f"misregistration recovered: RMSE {rmse:.3f} px over {aligned.sizes['time']} scenes")

    filled = gx.gapfill.filled_fraction(composites)
    print(f"gap filling made up {float(filled.mean()):.1%} of the composites' values "
          f"(at most {float(filled.max()):.1%} in one period)")

    # velocity on a reflectance band (the snow mask has no texture on bare ice)
    green = masked["green"]
    pairs = gx.velocity.select_pairs(green, min_days=16, max_days=48, months=(8, 9, 10))
    motion = gx.velocity.composite(gx.velocity.velocity_cube(green, pairs)).compute()
    on_grid = truth.interp(x=motion["x"], y=motion["y"], method="nearest")
    ice = on_grid["glacier"].astype(bool) & motion["v"].notnull()
    measured, true = float(motion["v"].where(ice).median()), float(on_grid["speed"].where(ice).median())
    print(f"glacier speed from {len(pairs)} late-summer pairs: median {measured:.0f} m/yr "
          f"(truth {true:.0f} m/yr on the same points)")
    print(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
