"""Benchmark: gap filling of large holes against the truth, and the run time of the docs' code.

Measured in one run:

* ``gapfill``: mean absolute error against what was there, per distance ring inside a synthetic
  40-px hole, of :func:`glacierxr.gapfill.fill_gaps` unbounded (``max_distance=None``, the old
  behaviour that smeared large holes into stars), bounded (the default, 4 px) and of a
  reference written here (linear interpolation over a Delaunay triangulation, scipy
  ``griddata``), on two fields of the embedded sample: its smooth terrain (``elevation``) and a
  cloud-free scene's NDSI. The bounded fill leaves the deeper rings NaN (no value, no error).
* ``docs``: wall-clock seconds of README.md's Python block and of docs/index.md's, run as
  written in a fresh folder (``tests/test_docs.py`` runs them too); the README block's comment
  promises about a minute on 2 cores.

    python benchmarks/gapfill_docs.py --quick     # gap filling only (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RINGS = ((0, 2), (2, 4), (4, 8), (8, 16), (16, 21))


def emit(benchmark: str, metric: str, value, unit: str, **extra) -> None:
    record = {"benchmark": benchmark, "metric": metric, "value": value, "unit": unit, **extra}
    print(json.dumps(record), flush=True)


def _ring_errors(filled: np.ndarray, truth: np.ndarray, hole: np.ndarray, distance: np.ndarray) -> list[float]:
    error = np.abs(filled - truth)
    out = []
    for low, high in RINGS:
        ring = hole & (distance > low) & (distance <= high) & np.isfinite(error)
        out.append(float(error[ring].mean()) if ring.any() else float("nan"))
    return out


def gapfill(workdir: Path) -> None:
    from scipy import ndimage
    from scipy.interpolate import griddata

    import glacierxr as gx
    from glacierxr.gapfill import fill_gaps
    from glacierxr.testing import make_series

    catalog = gx.sample.write_catalog(workdir / "sample", seed=0, width=128, height=128,
                                      start="2016-06-01", end="2017-10-01")
    truth = gx.sample.open_truth(catalog)
    items = gx.search(catalog=catalog, datetime="2016-06-01/2017-10-01", max_cloud=100)
    ndsi = gx.load(items, resolution=30).glacier.mask(max_missing=1.0).glacier.ndsi().load()
    clear = ndsi.isel(time=int(np.argmin(ndsi.isnull().mean(("y", "x")).values))).values
    fields = {"terrain": truth["elevation"].values.astype(float), "ndsi": clear.astype(float)}
    yy, xx = np.mgrid[:128, :128]
    hole = (yy - 64) ** 2 + (xx - 64) ** 2 < 20**2
    distance = ndimage.distance_transform_edt(hole)
    for name, field in fields.items():
        holed = np.where(hole, np.nan, field)
        known = ~hole & np.isfinite(field)
        methods = {
            "unbounded": fill_gaps(make_series(holed[None]), max_distance=None).values[0],
            "bounded": fill_gaps(make_series(holed[None])).values[0],
            "linear_reference": griddata(np.argwhere(known), field[known], (yy, xx), method="linear"),
        }
        for method, filled in methods.items():
            emit("gapfill", f"{name}: share of the 40-px hole filled, {method}",
                 round(float(np.isfinite(filled[hole]).mean()), 3), "1")
            for (low, high), value in zip(RINGS, _ring_errors(filled, field, hole, distance)):
                if np.isfinite(value):  # a ring left NaN has no error to report
                    emit("gapfill", f"{name}: MAE {low}-{high} px into the hole, {method}",
                         round(value, 4), "m" if name == "terrain" else "NDSI")


def docs(workdir: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from docblocks import blocks  # the same extraction the tests use

    for page in (ROOT / "README.md", ROOT / "docs" / "index.md"):
        folder = workdir / page.stem
        folder.mkdir()
        os.chdir(folder)
        namespace: dict = {"__name__": "__docs__"}
        start = time.perf_counter()
        for block in blocks(page):
            exec(compile(block.code, f"{page.name}:{block.line}", "exec"), namespace)  # noqa: S102
        emit("docs", f"{page.name} Python blocks, wall clock", round(time.perf_counter() - start, 1), "s",
             cpu_count=os.cpu_count(), load_average=round(os.getloadavg()[0], 1))
    os.chdir(ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="gap filling only")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as scratch:
        gapfill(Path(scratch))
        if not args.quick:
            docs(Path(scratch))


if __name__ == "__main__":
    main()
