"""Benchmark: what align's robust estimate costs and what it buys.

Measured in one run:

* ``align_highpass``: seconds per scene of :func:`glacierxr.align.align` with its default
  high-pass feature image, a given reference and one pass (``passes=1``: the same work as the
  bare calls), against the bare OpenCV calls on the same feature image: ``cv2.GaussianBlur``
  high-pass of scene and reference + ``cv2.findTransformECC`` on them + ``cv2.warpAffine`` of
  the scene (same criteria); ratio = wrapper overhead (target <= 1.2; align also computes each
  scene's residual and its quality flags).
* ``align_highpass_default``: the same given reference with align's default two passes (a half-
  resolution pass, stable ground found from it, a full-resolution pass on that ground) against
  the same single bare pass: the cost of the robust default, not of the wrapper
  (``benchmarks/coreg.py`` weighs it against the accuracy it buys).
* ``align_intensity``: ``feature="intensity"``, one pass, against bare ECC + warp on the raw
  images (what ``benchmarks/preprocess.py`` times).
* ``align_mean_2pass``: the default call, ``align(cube)``: mean reference, a second pass against
  the mean of the aligned scenes; against the same two passes written with bare OpenCV + NumPy
  (mean, high-pass, ECC, warp with NaN borders, ``nanmean`` of the warped scenes, ECC again from
  the first estimate).
* ``align_sample_rmse``: accuracy on the embedded sample (seed 0, 96 x 96 px, 2018-2019, the
  test-suite sample) through search -> load -> mask -> ndsi -> snow_mask -> fill_gaps ->
  align: RMSE of the recovered misregistration against the truth, over every scene, after
  removing the common offset; baseline = the classic single-pass ECC on the raw values with
  every finite pixel (``feature="intensity", passes=1, observed=None``).

Scenes are ``--size`` px squares (default 800, the seed paper's scene size) of a smooth random
texture, each misregistered by up to 1.5 px. Timings are the best of a few repeats, the bare calls and
align taking turns (the machine is shared); ``--quick`` (< 1 min) uses 3 scenes of 400 px. Prints one JSON object per line.

    python benchmarks/align_features.py --quick
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np


def emit(benchmark: str, metric: str, value, unit: str, **extra) -> None:
    record = {"benchmark": benchmark, "metric": metric, "value": value, "unit": unit, **extra}
    print(json.dumps(record), flush=True)


def paired_best(bare, ours, repeats: int) -> tuple[float, float]:
    """Smallest wall times (seconds) of ``bare`` and ``ours``, run in turns.

    Alternating the two keeps a shared machine's changing load from favouring either.
    """
    times = {bare: [], ours: []}
    for _ in range(repeats):
        for function in (bare, ours):
            start = time.perf_counter()
            function()
            times[function].append(time.perf_counter() - start)
    return min(times[bare]), min(times[ours])


def scene_stack(times: int, size: int, seed: int = 0) -> np.ndarray:
    """``times`` copies of one smooth texture, each misregistered by up to 1.5 px."""
    rng = np.random.default_rng(seed)
    k = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
    base = np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) * np.exp(-((k * 6.0) ** 2))).real
    base /= base.std()
    ky, kx = np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :]
    scenes = []
    for dx, dy in rng.uniform(-1.5, 1.5, (times, 2)):
        ramp = np.exp(-2j * np.pi * (kx * dx + ky * dy))
        scenes.append(np.fft.ifft2(np.fft.fft2(base) * ramp).real)
    return np.stack(scenes).astype(np.float32)


def bench_given_reference(stack: np.ndarray, repeats: int, feature: str, *, default: bool = False) -> None:
    import cv2

    from glacierxr.align import align
    from glacierxr.testing import make_series

    sigma = 4.0
    cube = make_series(stack, name="ndsi")
    reference = cube.mean("time")
    template = reference.values.astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-5)
    height, width = template.shape

    def highpass(image):
        return image - cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)

    def bare():
        template_f = highpass(template) if feature == "highpass" else template
        for scene in stack:
            scene_f = highpass(scene) if feature == "highpass" else scene
            _, warp = cv2.findTransformECC(
                template_f, scene_f, np.eye(2, 3, dtype=np.float32), cv2.MOTION_TRANSLATION, criteria, None, 1
            )
            cv2.warpAffine(scene, warp, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)

    passes = {} if default else {"passes": 1}

    def ours():
        align(cube, reference=reference, feature=feature, highpass_sigma=sigma, **passes)

    base, mine = (t / len(stack) for t in paired_best(bare, ours, repeats))
    baseline = ("cv2.GaussianBlur high-pass + findTransformECC + warpAffine (same feature image)"
                if feature == "highpass" else "cv2.findTransformECC + warpAffine (raw images)")
    emit(f"align_{feature}" + ("_default" if default else ""), "seconds_per_scene", round(mine, 4), "s",
         baseline=baseline, baseline_value=round(base, 4), ratio=round(mine / base, 3), size=f"{height}x{width}",
         align_call="default (two passes)" if default else "passes=1")


def bench_mean_two_passes(stack: np.ndarray, repeats: int) -> None:
    import cv2

    from glacierxr.align import align
    from glacierxr.testing import make_series

    sigma = 4.0
    cube = make_series(stack, name="ndsi")
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-5)
    height, width = stack.shape[1:]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP

    def highpass(image):
        return image - cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)

    def bare():
        features = [highpass(scene) for scene in stack]
        reference = stack.mean(axis=0)
        warps = [np.eye(2, 3, dtype=np.float32) for _ in stack]
        for _ in range(2):
            # borders shifted in are NaN after the first pass: fill them with the mean for ECC
            template = highpass(np.nan_to_num(reference, nan=float(np.nanmean(reference))).astype(np.float32))
            warps = [cv2.findTransformECC(template, f, w, cv2.MOTION_TRANSLATION, criteria, None, 1)[1]
                     for f, w in zip(features, warps)]
            # pixels shifted in from outside the scene are unknown (NaN), not 0
            warped = [cv2.warpAffine(s, w, (width, height), flags=flags, borderMode=cv2.BORDER_CONSTANT,
                                     borderValue=np.nan) for s, w in zip(stack, warps)]
            reference = np.nanmean(warped, axis=0)

    def ours():
        align(cube)

    base, mine = (t / len(stack) for t in paired_best(bare, ours, repeats))
    emit("align_mean_2pass", "seconds_per_scene", round(mine, 4), "s",
         baseline="bare OpenCV + NumPy: mean, high-pass, ECC, warp, nanmean, ECC, warp",
         baseline_value=round(base, 4), ratio=round(mine / base, 3), size=f"{height}x{width}")


def bench_sample_accuracy() -> None:
    import glacierxr as gx
    from glacierxr.align import align

    with tempfile.TemporaryDirectory() as directory:
        catalog = gx.sample.write_catalog(directory, seed=0, width=96, height=96,
                                          start="2018-01-01", end="2020-01-01")
        items = gx.search(datetime=None, max_cloud=20, catalog=catalog)
        snow = (gx.load(items, resolution=30).glacier.mask(max_missing=0.5).glacier.ndsi()
                .glacier.snow_mask().glacier.fill_gaps().chunk({"y": -1, "x": -1}).compute())
        truth = gx.sample.open_truth(catalog)
    order = {scene: i for i, scene in enumerate(truth.id.values)}
    rows = [order[scene] for scene in snow.id.values]
    true = np.stack([truth.shift_x.values[rows], truth.shift_y.values[rows]], axis=1)

    def rmse(**kwargs) -> float:
        out = align(snow, **kwargs)
        error = np.stack([out.shift_x.values, out.shift_y.values], axis=1) - true
        error -= error.mean(axis=0)
        return float(np.sqrt(np.mean(np.sum(error**2, axis=1))))

    ours = rmse()
    classic = rmse(feature="intensity", passes=1, observed=None)
    emit("align_sample_rmse", "rmse_vs_truth", round(ours, 4), "px",
         baseline="single-pass ECC on raw values, every finite pixel", baseline_value=round(classic, 4),
         ratio=round(ours / classic, 3), scenes=len(rows), sample="seed 0, 96x96, 2018-2019")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 scenes of 400 px, fewer repeats (< 1 min)")
    parser.add_argument("--size", type=int, default=None, help="scene size in pixels (square)")
    args = parser.parse_args(argv)
    size = args.size or (400 if args.quick else 800)
    times = 3 if args.quick else 8
    repeats = 3 if args.quick else 5
    stack = scene_stack(times, size)
    bench_given_reference(stack, repeats, "highpass")
    bench_given_reference(stack, repeats, "highpass", default=True)
    bench_given_reference(stack, repeats, "intensity")
    bench_mean_two_passes(stack, repeats)
    bench_sample_accuracy()


if __name__ == "__main__":
    main()
