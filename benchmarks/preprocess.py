"""Benchmark: the per-scene preprocessing stages against what a user would otherwise write.

Measured in one run, on the same arrays (800 x 800 scenes, the seed paper's scene size):

* ``align``: seconds per scene of :func:`glacierxr.align.align` (NumPy input, the same reference
  image given) against bare ``cv2.findTransformECC`` + ``cv2.warpAffine`` on the same arrays with
  the same criteria; ratio = overhead (target <= 1.2);
* ``flow``: seconds per pair of :func:`glacierxr.flow.flow` against bare
  ``cv2.calcOpticalFlowFarneback`` on the same, already scaled, pair with the same parameters;
* ``fill_gaps`` (if :mod:`glacierxr.gapfill` is there): one 5 x 5 pass of
  :func:`glacierxr.gapfill.fill_gaps` against a per-pixel Python loop like the seed paper's code,
  which is timed on a crop and scaled per missing pixel to the same scene;
* ``mask_ndsi_snow`` (if :mod:`glacierxr.qa` and :mod:`glacierxr.indices` are there): throughput of
  ``mask -> ndsi -> snow_mask`` in MB/s of input against ``numpy.copy`` of the same input arrays
  (the memory-copy bound);
* ``dask_scaling``: speed-up of ``align`` and ``flow`` over time steps on Dask's threaded
  scheduler with 2 workers against 1 worker, once with OpenCV's own thread pool as it is and
  once with ``cv2.setNumThreads(1)`` (Dask the only parallelism; both compete otherwise).

Timings are the best of a few repeats (the machine is shared). ``--quick`` (< 1 min) uses 3
scenes; the default 8. Prints one JSON object per line; ``--results FILE`` also writes them as a
Markdown table between ``<!-- preprocess -->`` markers in FILE (e.g. ``benchmarks/RESULTS.md``).

    python benchmarks/preprocess.py --quick
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from pathlib import Path

import numpy as np

RECORDS: list[dict] = []


def emit(benchmark: str, metric: str, value, unit: str, **extra) -> None:
    record = {"benchmark": benchmark, "metric": metric, "value": value, "unit": unit, **extra}
    RECORDS.append(record)
    print(json.dumps(record), flush=True)


def best_of(function, repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls (seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def texture(size: int, seed: int, wavelength: float = 6.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
    spectrum = np.exp(-((k * wavelength) ** 2)) * (k > 0)
    out = np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) * spectrum).real
    return (out / out.std()).astype(np.float32)


def shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    ky = np.fft.fftfreq(image.shape[0])[:, None]
    kx = np.fft.fftfreq(image.shape[1])[None, :]
    ramp = np.exp(-2j * np.pi * (kx * dx + ky * dy))
    return np.fft.ifft2(np.fft.fft2(image) * ramp).real.astype(np.float32)


def scene_stack(times: int, size: int, seed: int = 0) -> np.ndarray:
    """``times`` copies of one texture, each misregistered by up to 1.5 px (no NaN)."""
    rng = np.random.default_rng(seed)
    base = texture(size, seed)
    return np.stack([shifted(base, *rng.uniform(-1.5, 1.5, 2)) for _ in range(times)])


def bench_align(stack: np.ndarray, repeats: int) -> None:
    import cv2

    from glacierxr.align import align
    from glacierxr.testing import make_series

    cube = make_series(stack, name="ndsi")
    reference = cube.mean("time")
    template = reference.values.astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-5)
    height, width = template.shape

    def bare():
        for scene in stack:
            _, warp = cv2.findTransformECC(
                template, scene, np.eye(2, 3, dtype=np.float32), cv2.MOTION_TRANSLATION, criteria, None, 1
            )
            cv2.warpAffine(scene, warp, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)

    def ours():
        # Same image as the bare calls; the high-pass default is compared in align_features.py.
        align(cube, reference=reference, feature="intensity")

    base = best_of(bare, repeats) / len(stack)
    mine = best_of(ours, repeats) / len(stack)
    emit("align", "seconds_per_scene", round(mine, 4), "s", baseline="cv2.findTransformECC+warpAffine",
         baseline_value=round(base, 4), ratio=round(mine / base, 3), size=f"{height}x{width}")


def bench_flow(stack: np.ndarray, repeats: int) -> None:
    import cv2

    from glacierxr.flow import _scale_pair, flow
    from glacierxr.testing import make_series

    cube = make_series(stack, name="ndsi")
    params = (0.5, 6, 15, 10, 5, 1.1, 0)
    scaled = [_scale_pair(stack[i], stack[i + 1], "none", 5.0) for i in range(len(stack) - 1)]

    def bare():
        for first, second, _ in scaled:
            cv2.calcOpticalFlowFarneback(first, second, None, *params)

    def ours():  # the Farnebäck method of flow() (its default is NCC: benchmarks/velocity.py)
        flow(cube, method="farneback", prefilter="none").compute()

    pairs = len(stack) - 1
    base = best_of(bare, repeats) / pairs
    mine = best_of(ours, repeats) / pairs
    emit("flow", "seconds_per_pair", round(mine, 4), "s", baseline="cv2.calcOpticalFlowFarneback",
         baseline_value=round(base, 4), ratio=round(mine / base, 3), size=f"{stack.shape[1]}x{stack.shape[2]}")


def paper_style_fill(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """One pass of a per-pixel Python loop, as in the seed paper's code (the baseline)."""
    half = kernel.shape[0] // 2
    out = image.copy()
    rows, cols = image.shape
    for i in range(rows):
        for j in range(cols):
            if not np.isnan(image[i, j]):
                continue
            r0, r1 = max(i - half, 0), min(i + half + 1, rows)
            c0, c1 = max(j - half, 0), min(j + half + 1, cols)
            window = image[r0:r1, c0:c1]
            weights = kernel[r0 - i + half : r1 - i + half, c0 - j + half : c1 - j + half]
            valid = ~np.isnan(window)
            total = weights[valid].sum()
            if total > 0:
                out[i, j] = (weights[valid] * window[valid]).sum() / total
    return out


def bench_fill_gaps(size: int, repeats: int) -> None:
    if importlib.util.find_spec("glacierxr.gapfill") is None:
        return
    from glacierxr.gapfill import fill_gaps, make_kernel
    from glacierxr.testing import make_series

    rng = np.random.default_rng(3)
    image = texture(size, 3)
    image[rng.random(image.shape) < 0.1] = np.nan  # 10 % missing pixels
    cube = make_series(image[None], name="ndsi")
    kernel = make_kernel("triangular", size=5)
    crop = image[:160, :160]
    loop = best_of(lambda: paper_style_fill(crop, kernel), 1)
    per_missing = loop / np.isnan(crop).sum()
    scaled = per_missing * np.isnan(image).sum()
    mine = best_of(lambda: fill_gaps(cube, max_iter=1, weights="triangular", size=5).values, repeats)
    check = fill_gaps(make_series(crop[None]), max_iter=1, weights="triangular", size=5).values[0]
    agree = bool(np.allclose(check, paper_style_fill(crop, kernel), equal_nan=True, atol=1e-5))
    emit("fill_gaps", "seconds_per_scene", round(mine, 4), "s", baseline="per-pixel Python loop (scaled from a 160x160 crop)",
         baseline_value=round(scaled, 3), ratio=round(mine / scaled, 5), size=f"{size}x{size}",
         same_result=agree)


def bench_mask_ndsi(size: int, times: int, repeats: int) -> None:
    if importlib.util.find_spec("glacierxr.qa") is None or importlib.util.find_spec("glacierxr.indices") is None:
        return
    from glacierxr.indices import ndsi, snow_mask
    from glacierxr.qa import mask
    from glacierxr.testing import make_scene_cube

    cube = make_scene_cube(times=times, height=size, width=size, cloud_fraction=0.1)
    arrays = [cube[name].values for name in ("green", "swir16", "qa_pixel")]
    megabytes = sum(a.nbytes for a in arrays) / 1e6

    def ours():
        snow_mask(ndsi(mask(cube, drop=False)), threshold=0.3).values

    def copy():
        for array in arrays:
            np.copy(array)

    mine = best_of(ours, repeats)
    base = best_of(copy, repeats)
    emit("mask_ndsi_snow", "throughput", round(megabytes / mine, 1), "MB/s", baseline="numpy.copy of the inputs",
         baseline_value=round(megabytes / base, 1), ratio=round((megabytes / mine) / (megabytes / base), 4),
         size=f"{times}x{size}x{size}")


def bench_dask_scaling(stack: np.ndarray, repeats: int, *, cv2_threads: int | None = None) -> None:
    import cv2
    import dask

    from glacierxr.align import align
    from glacierxr.flow import flow
    from glacierxr.testing import make_series

    cube = make_series(stack, name="ndsi", chunks={"time": 1})
    previous = cv2.getNumThreads()
    if cv2_threads is not None:
        cv2.setNumThreads(cv2_threads)
    threads = cv2.getNumThreads()
    for name, build in (("align", lambda: align(cube)), ("flow", lambda: flow(cube))):
        timings = {}
        for workers in (1, 2):
            with dask.config.set(scheduler="threads", num_workers=workers):
                timings[workers] = best_of(lambda: build().compute(), repeats)
        emit("dask_scaling", f"{name}_speedup_2_threads", round(timings[1] / timings[2], 3), "x",
             baseline="1 thread", baseline_value=round(timings[1], 3), ratio=round(timings[1] / timings[2], 3),
             two_threads_s=round(timings[2], 3), scenes=len(stack), cv2_threads=threads)
    cv2.setNumThreads(previous)


def write_results(path: Path) -> None:
    """Replace the ``<!-- preprocess -->`` section of ``path`` with this run's records."""
    lines = ["<!-- preprocess:start -->", f"### preprocess ({platform.node()}, {time.strftime('%Y-%m-%d')})", "",
             "| benchmark | metric | value | unit | baseline | baseline value | ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in RECORDS:
        lines.append(f"| {r['benchmark']} | {r['metric']} | {r['value']} | {r['unit']} | "
                     f"{r.get('baseline', '')} | {r.get('baseline_value', '')} | {r.get('ratio', '')} |")
    lines.append("<!-- preprocess:end -->")
    section = "\n".join(lines)
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if "<!-- preprocess:start -->" in text:
        head, rest = text.split("<!-- preprocess:start -->", 1)
        tail = rest.split("<!-- preprocess:end -->", 1)[1] if "<!-- preprocess:end -->" in rest else ""
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 scenes, fewer repeats (< 1 min)")
    parser.add_argument("--size", type=int, default=800, help="scene size in pixels (square)")
    parser.add_argument("--results", type=Path, default=None, help="also write a Markdown table here")
    args = parser.parse_args(argv)
    times = 3 if args.quick else 8
    repeats = 2 if args.quick else 3
    stack = scene_stack(times, args.size)
    bench_align(stack, repeats)
    bench_flow(stack, repeats)
    bench_fill_gaps(args.size, repeats)
    bench_mask_ndsi(args.size, times, repeats)
    subset = stack if args.quick else stack[:4]
    bench_dask_scaling(subset, 1 if args.quick else 2)  # OpenCV's own thread pool as it is
    bench_dask_scaling(subset, 1 if args.quick else 2, cv2_threads=1)  # Dask is the only parallelism
    if args.results is not None:
        write_results(args.results)


if __name__ == "__main__":
    main()
