"""Benchmark: surface velocity, flow(method="ncc") (the default) against what a user would write.

Measured in one run, on the same pairs:

* ``seconds_per_pair_yahtse`` / ``seconds_per_pair_sample``: seconds of the default
  :func:`glacierxr.flow.flow` on one pair (the real Yahtse Glacier pair, Landsat-8 pan, 15 m,
  1087 x 1698 px; a sample pair of 800 x 800 px at 30 m), against (a) a bare OpenCV loop over
  the same chips (every posting point, the default's smallest chip, ``cv2.matchTemplate`` with
  ``TM_CCOEFF_NORMED`` over the default's whole search radius, ``minMaxLoc``, parabolic peak;
  no prefilter, filter, errors or xarray) and (b) ``method="farneback"`` (every pixel).
  Target: ratio to the bare loop <= 1.2.
* ``yahtse_speed_ratio`` / ``yahtse_direction_deg``: median speed of flow over that of a plain
  NCC reference (48 px chips, +-24 px, parabolic peak, correlation >= 0.5, neighbour-consistent;
  the reference of ``tests/references.py``) on the terminus tongue (rows 680-960, columns
  880-1060), and the angle between the median vectors; baseline = Farnebäck's.
* ``yahtse_speed_ratio_prefilter_*`` (full mode): the same speed ratio without prefilter and
  with a plain high-pass, against the default Wallis filter.
* ``yahtse_stable_px``: median displacement magnitude on the reference's slowest 30 % of points.
* ``sample_epe_valley`` / ``sample_epe_fast``: median end-point error (px) on bare, clear ice of
  the sample's slow valley glacier (~1.4 px per 16 days) and fast tongue (12 px per 16 days)
  against the exact truth, all consecutive pairs of a summer (256 x 256 px);
  ``sample_stable_bias_*``: length of the median residual vector on stable ground (px), and
  ``sample_stable_median_*``: median residual length there.
* ``subpixel_epe_*``: median end-point error of the three sub-pixel estimators on textures
  shifted by known fractions (the measurement behind the default ``subpixel="gaussian"``).

``--quick`` uses a 400 x 400 px sample pair and fewer sub-pixel trials.  Prints one JSON object
per line.

    python benchmarks/velocity.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "tests"))

#: The fast tongue of the Yahtse scene (rows, cols).
TONGUE = ((680, 960), (880, 1060))


def emit(benchmark: str, metric: str, value, unit: str, **extra) -> None:
    record = {"benchmark": benchmark, "metric": metric, "value": value, "unit": unit, **extra}
    print(json.dumps(record), flush=True)


def bare_loop(first: np.ndarray, second: np.ndarray, rows, cols, chip: int, search: int) -> np.ndarray:
    """What a user writes without glacierxr: matchTemplate at every posting point."""
    import cv2

    half = chip // 2
    a = np.nan_to_num(first).astype(np.float32)
    b = np.pad(np.nan_to_num(second).astype(np.float32), search)
    a = np.pad(a, half)
    b = np.pad(b, half)
    out = np.full((2, len(rows), len(cols)), np.nan, np.float32)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            template = a[row : row + chip, col : col + chip]
            window = b[row : row + chip + 2 * search, col : col + chip + 2 * search]
            score = cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED)
            _, _, _, (x, y) = cv2.minMaxLoc(score)
            sx = sy = 0.0
            if 0 < x < score.shape[1] - 1:
                m, c, p = score[y, x - 1 : x + 2]
                sx = 0.5 * (m - p) / (m - 2 * c + p) if m - 2 * c + p < 0 else 0.0
            if 0 < y < score.shape[0] - 1:
                m, c, p = score[y - 1 : y + 2, x]
                sy = 0.5 * (m - p) / (m - 2 * c + p) if m - 2 * c + p < 0 else 0.0
            out[:, i, j] = x - search + sx, y - search + sy
    return out


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def speed_rows(name: str, cube) -> object:
    """Seconds per pair: flow (ncc), the bare loop over the same chips, Farnebäck."""
    from glacierxr.flow import flow
    from glacierxr.tracking import posting

    ours, seconds = timed(lambda: flow(cube).compute())
    step = round(ours.attrs["flow_spacing_m"] / abs(ours.attrs["pixel_size_x"]))
    rows, cols = posting(cube.sizes["y"], step), posting(cube.sizes["x"], step)
    _, bare = timed(bare_loop, *cube.values, rows, cols, ours.attrs["flow_chip_size_px"], ours.attrs["flow_search_px"])
    farneback, seconds_farneback = timed(lambda: flow(cube, method="farneback").compute())
    emit("velocity", f"seconds_per_pair_{name}", round(seconds, 3), "s", baseline="bare matchTemplate loop",
         baseline_value=round(bare, 3), ratio=round(seconds / bare, 3),
         points=int(rows.size * cols.size), chip_px=ours.attrs["flow_chip_size_px"],
         search_px=ours.attrs["flow_search_px"])
    emit("velocity", f"seconds_per_pair_{name}_vs_farneback", round(seconds, 3), "s",
         baseline="flow(method='farneback')", baseline_value=round(seconds_farneback, 3),
         ratio=round(seconds / seconds_farneback, 3))
    return ours, farneback


def yahtse_rows(*, prefilters: bool) -> None:
    from glacierxr.flow import flow
    from yahtse_data import read_yahtse
    from references import neighbour_consistent, reference_ncc

    cube = read_yahtse(SHARED)
    ours, farneback = speed_rows("yahtse", cube)
    first, second = cube.values
    rows = np.searchsorted(-cube.y.values, -ours.y.values)
    cols = np.searchsorted(cube.x.values, ours.x.values)
    (r0, r1), (c0, c1) = TONGUE
    pick_r = np.flatnonzero((rows >= r0) & (rows <= r1))
    pick_c = np.flatnonzero((cols >= c0) & (cols <= c1))
    reference = reference_ncc(first, second, rows[pick_r], cols[pick_c])
    good = (reference[..., 2] >= 0.5) & neighbour_consistent(reference)
    ref_dx, ref_dy = reference[..., 0][good], reference[..., 1][good]

    def agreement(dx, dy):
        ratio = np.nanmedian(np.hypot(dx, dy)) / np.median(np.hypot(ref_dx, ref_dy))
        angle = np.degrees(np.arctan2(np.nanmedian(dy), np.nanmedian(dx)) - np.arctan2(np.median(ref_dy), np.median(ref_dx)))
        return round(float(ratio), 3), round(float(abs((angle + 180) % 360 - 180)), 1)

    tongue = ours.isel(time=0, y=pick_r, x=pick_c)
    ratio, angle = agreement(tongue.dx.values[good], tongue.dy.values[good])
    fb = farneback.isel(time=0).sel(y=tongue.y, x=tongue.x)
    fb_ratio, fb_angle = agreement(fb.dx.values[good], fb.dy.values[good])
    emit("velocity", "yahtse_speed_ratio", ratio, "1", baseline="farneback", baseline_value=fb_ratio,
         reference_points=int(good.sum()), reference_median_px=round(float(np.median(np.hypot(ref_dx, ref_dy))), 2))
    emit("velocity", "yahtse_direction_deg", angle, "deg", baseline="farneback", baseline_value=fb_angle)
    for kind in ("none", "highpass") if prefilters else ():  # the default is "wallis"
        other = flow(cube, prefilter=kind).isel(time=0, y=pick_r, x=pick_c).compute()
        kind_ratio, kind_angle = agreement(other.dx.values[good], other.dy.values[good])
        emit("velocity", f"yahtse_speed_ratio_prefilter_{kind}", kind_ratio, "1", baseline="wallis (default)",
             baseline_value=ratio, direction_deg=kind_angle)
    sparse = reference_ncc(first, second, rows[::4], cols[::4])
    ok = sparse[..., 2] >= 0.5
    speed = np.hypot(sparse[..., 0], sparse[..., 1])
    slowest = ok & (speed <= np.quantile(speed[ok], 0.3))
    sub = ours.isel(time=0, y=slice(None, None, 4), x=slice(None, None, 4))
    emit("velocity", "yahtse_stable_px", round(float(np.nanmedian(np.hypot(sub.dx.values, sub.dy.values)[slowest])), 3),
         "px", reference_stable_px=round(float(np.median(speed[slowest])), 3),
         stable_nmad_x_m_per_yr=round(float(ours.stable_nmad_x[0]), 1),
         stable_nmad_y_m_per_yr=round(float(ours.stable_nmad_y[0]), 1))


def sample_pair(directory: Path, size: int):
    """The clearest consecutive pair of a summer of the sample, green band, size x size px."""
    import glacierxr as gx
    from references import load_sample

    catalog = gx.sample.write_catalog(directory, seed=0, width=size, height=size,
                                      start="2018-07-10", end="2018-09-25")
    cube = load_sample(catalog).rio.write_crs(32643)
    clear = ((cube.qa_pixel.values.astype(np.int64) & 0b11111) == 0).mean(axis=(1, 2))
    best = int(np.argmax(clear[:-1] * clear[1:]))
    return cube.green.isel(time=[best, best + 1]).compute()


def sample_truth_rows(directory: Path) -> None:
    import glacierxr as gx
    from references import sample_errors
    from references import stack_sample_cogs as stack  # a sample's COGs read without glacierxr.load

    for kind in ("valley", "fast"):
        catalog = gx.sample.write_catalog(directory / kind, seed=0, width=256, height=256,
                                          start="2018-07-10", end="2018-09-25", flow=kind)
        errors, still, fastest = sample_errors(catalog, stack)
        fb_errors, fb_still, _ = sample_errors(catalog, stack, method="farneback")
        emit("velocity", f"sample_epe_{kind}", round(float(np.nanmedian(errors)), 3), "px",
             baseline="farneback", baseline_value=round(float(np.nanmedian(fb_errors)), 3),
             fastest_px=round(fastest, 1), points=int(errors.size))
        emit("velocity", f"sample_stable_bias_{kind}", round(float(np.hypot(*np.nanmedian(still, axis=0))), 3), "px",
             baseline="farneback", baseline_value=round(float(np.hypot(*np.nanmedian(fb_still, axis=0))), 3))
        emit("velocity", f"sample_stable_median_{kind}", round(float(np.nanmedian(np.hypot(*still.T))), 3), "px")


def subpixel_rows(trials: int) -> None:
    from scipy import ndimage

    from glacierxr.tracking import SUBPIXEL, TrackingParams, posting, track_pair

    rng = np.random.default_rng(1)
    errors = {how: [] for how in SUBPIXEL}
    points = posting(200, 10)[2:-2]
    for trial in range(trials):
        image = ndimage.gaussian_filter(rng.standard_normal((200, 200)), 1.5)
        dx, dy = rng.uniform(-3, 3, 2)
        moved = ndimage.shift(image, (dy, dx), mode="wrap", order=5) + rng.normal(0, 0.05 * image.std(), image.shape)
        for how in SUBPIXEL:
            out = track_pair(image.astype(np.float32), moved.astype(np.float32), points, points,
                             TrackingParams(subpixel=how, search=8))
            errors[how].append(np.hypot(out[0] - dx, out[1] - dy).ravel())
    for how in SUBPIXEL:
        emit("velocity", f"subpixel_epe_{how}", round(float(np.nanmedian(np.concatenate(errors[how]))), 4), "px",
             trials=trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sample pair, fewer trials")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import cv2

    cv2.setNumThreads(1)
    subpixel_rows(6 if args.quick else 20)
    with tempfile.TemporaryDirectory() as tmp:
        sample_truth_rows(Path(tmp))
        speed_rows("sample", sample_pair(Path(tmp) / "speed", 400 if args.quick else 800))
    if SHARED.joinpath("yahtse_l8_pan").is_dir():
        yahtse_rows(prefilters=not args.quick)
    else:
        print(f"skipping the Yahtse rows: {SHARED / 'yahtse_l8_pan'} not found", file=sys.stderr)


if __name__ == "__main__":
    main()
