"""Feature-tracking kernel: normalised cross-correlation of image chips, coarse to fine.

This module is the NumPy / OpenCV core of :func:`glacierxr.flow.flow` with ``method="ncc"``; it
knows nothing of xarray, dates or map units.  :func:`track_pair` measures the displacement of
the content of a first image in a second one at the points of a regular posting grid:

1. **Prefilter** (:func:`prefilter`): high-pass or Wallis (high-pass divided by its local RMS),
   so that illumination, haze and seasonal brightness do not drive the match; missing pixels
   become 0 (no texture) and count against a chip's valid fraction.
2. **Coarse to fine**: a sparse pass matches every k-th point of the posting grid (chips side
   by side, not overlapping) over the whole search radius, at full resolution, so that fine ice
   texture (crevasses, lost in a reduced image) still drives the match; its field, with
   outliers removed and holes filled, is interpolated to every point, and the dense pass only
   searches +-4 px around it.  Displacements of tens of pixels are found at the cost of a few
   large searches (autoRIFT runs a sparse search before the dense one in the same way).
3. **Matching** (:func:`match_points`): :func:`cv2.matchTemplate` with ``TM_CCOEFF_NORMED``
   (normalised cross-correlation) of a square chip of the first image in a window of the second;
   integer peak, then a sub-pixel peak (:data:`SUBPIXEL`).  Quality per point: the peak
   correlation and the peak ratio (highest peak over the highest value outside two pixels of
   it, as GIV's peak ratio).
4. **Chip growth**: in the dense pass, points whose match is weak (low correlation, low peak
   ratio, or a peak on the edge of the search) are matched again with chips 2 and 4 times
   larger, as autoRIFT does.
5. **Outlier filter** (:func:`median_test`): the normalised median test of Westerweel &
   Scarano (2005) over the 3 x 3 neighbours rejects vectors that disagree with their
   neighbourhood.
6. **Interpolation** (:func:`fill_holes`): rejected points with enough valid neighbours take
   their neighbours' mean and are flagged ``interpolated``; points whose chip has no data stay
   NaN.

References
----------
Westerweel, J. & Scarano, F. (2005). Universal outlier detection for PIV data. Exp. Fluids 39.
Gardner, A. S. et al. (2018). Increased West Antarctic and unchanged East Antarctic ice discharge
over the last 7 years. The Cryosphere 12 (autoRIFT / ITS_LIVE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from glacierxr._validate import require_cv2

__all__ = [
    "PREFILTERS",
    "SUBPIXEL",
    "TrackingParams",
    "fill_holes",
    "match_points",
    "median_test",
    "posting",
    "prefilter",
    "track_pair",
]

#: Prefilters applied to both images before matching.
PREFILTERS = ("none", "highpass", "wallis")
#: Sub-pixel peak estimators: a parabola through the peak and its two neighbours per axis, the
#: same through the logarithm of the correlation (a Gaussian peak), or the 5 x 5 correlation
#: around the peak oversampled 16 times with bicubic interpolation.
SUBPIXEL = ("parabolic", "gaussian", "oversample")

#: Oversampling factor of the correlation surface for ``subpixel="oversample"``.
_OVERSAMPLE = 16
#: Half-size (pixels) of the neighbourhood excluded around the peak for the peak ratio.
_RATIO_EXCLUSION = 2
#: Floor of the second peak in the peak ratio (the ratio is at most 1 / this).
_RATIO_FLOOR = 0.01
#: Search radius (pixels) of the dense pass around the sparse pass's field.
_REFINE = 4
#: Propagation: a neighbour's displacement is tried at a point when it differs by more than this
#: (pixels), with this search radius, for at most this many rounds.
_PROPAGATE_DIFFERENCE = 1.5
_PROPAGATE_SEARCH = 2
_PROPAGATE_ROUNDS = 8
#: Normalised median test: threshold and noise floor (pixels), Westerweel & Scarano's values.
_MEDIAN_THRESHOLD = 2.0
_MEDIAN_EPSILON = 0.1


@dataclass(frozen=True)
class TrackingParams:
    """Parameters of :func:`track_pair` (pixels unless said otherwise)."""

    chip: int = 31
    max_chip: int = 127
    search: int = 64
    subpixel: str = "parabolic"
    min_correlation: float = 0.2
    min_peak_ratio: float = 1.2
    min_valid: float = 0.9
    prefilter: str = "wallis"
    prefilter_sigma: float = 5.0
    outlier_filter: bool = True
    min_neighbours: int = 3


def prefilter(image: np.ndarray, kind: str, sigma: float) -> np.ndarray:
    """High-pass (image minus its Gaussian blur) or Wallis (high-pass / local RMS) filter."""
    if kind == "none":
        return np.asarray(image, dtype=np.float32)
    cv2 = require_cv2("flow")
    image = np.asarray(image, dtype=np.float32)
    highpass = image - cv2.GaussianBlur(image, (0, 0), sigma)
    if kind == "highpass":
        return highpass
    local_power = cv2.GaussianBlur(highpass * highpass, (0, 0), 3.0 * sigma)
    floor = 1e-6 * float(local_power.mean()) + np.finfo(np.float32).tiny
    return highpass / np.sqrt(local_power + floor)


def _prepare(image: np.ndarray, kind: str, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Prefiltered float32 image with missing pixels 0, and its validity."""
    valid = np.isfinite(image)
    if not valid.any():
        return np.zeros(image.shape, np.float32), valid
    filled = np.where(valid, image, np.float32(np.mean(image[valid]))).astype(np.float32)
    filtered = prefilter(filled, kind, sigma)
    filtered = filtered - np.float32(np.mean(filtered[valid]))
    return np.where(valid, filtered, np.float32(0.0)).astype(np.float32), valid


def posting(size: int, step: int) -> np.ndarray:
    """Pixel indices of the posting points along an axis of ``size`` pixels, every ``step``."""
    return np.arange(step // 2, size, step)


def _subpixel(score: np.ndarray, i: int, j: int, how: str) -> tuple[float, float]:
    """Sub-pixel offset (columns, rows) of the correlation peak at row ``i``, column ``j``."""
    rows, cols = score.shape
    if how == "oversample" and 2 <= i < rows - 2 and 2 <= j < cols - 2:
        cv2 = require_cv2("flow")
        patch = score[i - 2 : i + 3, j - 2 : j + 3]
        fine = cv2.resize(patch, None, fx=_OVERSAMPLE, fy=_OVERSAMPLE, interpolation=cv2.INTER_LANCZOS4)
        _, _, _, (fj, fi) = cv2.minMaxLoc(fine)
        return (fj + 0.5) / _OVERSAMPLE - 2.5, (fi + 0.5) / _OVERSAMPLE - 2.5

    def vertex(minus: float, centre: float, plus: float) -> float:
        if how == "gaussian" and min(minus, centre, plus) > 0:
            minus, centre, plus = math.log(minus), math.log(centre), math.log(plus)
        denominator = minus - 2.0 * centre + plus
        return 0.0 if denominator >= 0 else 0.5 * (minus - plus) / denominator

    sx = vertex(score[i, j - 1], score[i, j], score[i, j + 1]) if 0 < j < cols - 1 else 0.0
    sy = vertex(score[i - 1, j], score[i, j], score[i + 1, j]) if 0 < i < rows - 1 else 0.0
    return min(max(float(sx), -0.5), 0.5), min(max(float(sy), -0.5), 0.5)


def _peak_ratio(score: np.ndarray, i: int, j: int, best: float) -> float:
    """Highest correlation over the highest one outside ``_RATIO_EXCLUSION`` px of the peak."""
    cv2 = require_cv2("flow")
    masked = score.copy()
    e = _RATIO_EXCLUSION
    masked[max(i - e, 0) : i + e + 1, max(j - e, 0) : j + e + 1] = -1.0
    second = cv2.minMaxLoc(masked)[1] if masked.size > (2 * e + 1) ** 2 else 0.0
    return best / max(second, _RATIO_FLOOR)


def match_points(
    first: np.ndarray,
    second: np.ndarray,
    valid_fraction: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    guess: np.ndarray,
    *,
    half: int,
    search: int,
    subpixel: str,
    min_valid: float,
) -> np.ndarray:
    """NCC displacement of chips of ``first`` centred on (``rows``, ``cols``) in ``second``.

    Parameters
    ----------
    first, second
        Prefiltered float32 images (0 where missing).
    valid_fraction
        Fraction of pixels valid in both images in the chip centred on each pixel.
    rows, cols
        1-D pixel indices of the points (same length).
    guess
        ``(2, n)`` predicted displacement (columns, rows); the search window is centred on
        its rounded value.
    half, search
        Chip half-size (the chip is ``2 * half + 1`` pixels) and search radius (pixels).
    subpixel
        One of :data:`SUBPIXEL`.
    min_valid
        Points whose chip has a smaller valid fraction are not matched (NaN).

    Returns
    -------
    numpy.ndarray
        ``(5, n)`` float32: displacement along columns and rows (pixels), peak correlation,
        peak ratio, and 1 where the peak lies on the edge of the search (else 0).
    """
    cv2 = require_cv2("flow")
    offset = np.rint(np.nan_to_num(guess)).astype(np.int64)
    reach = half + search + int(np.abs(offset).max(initial=0))
    padded_first = np.pad(first, half)
    padded_second = np.pad(second, reach)
    out = np.full((5, rows.size), np.nan, np.float32)
    size, last = 2 * half + 1, 2 * search
    for k in np.flatnonzero(valid_fraction[rows, cols] >= min_valid):
        row, col = rows[k], cols[k]
        template = padded_first[row : row + size, col : col + size]
        ox, oy = offset[0, k], offset[1, k]
        top, left = row + oy + reach - half - search, col + ox + reach - half - search
        window = padded_second[top : top + size + last, left : left + size + last]
        score = cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (j, i) = cv2.minMaxLoc(score)
        if not math.isfinite(best) or best <= 0:
            continue
        sx, sy = _subpixel(score, i, j, subpixel)
        out[:, k] = (
            ox + j - search + sx,
            oy + i - search + sy,
            best,
            _peak_ratio(score, i, j, best),
            float(i in (0, last) or j in (0, last)),
        )
    return out


def _neighbours(field: np.ndarray) -> np.ndarray:
    """The 8 neighbours of every point of a 2-D field, stacked on a first axis (NaN outside)."""
    padded = np.pad(field, 1, constant_values=np.nan)
    rows, cols = field.shape
    return np.stack(
        [padded[1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + cols]
         for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
    )


def median_test(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """True where a vector fails the normalised median test against its 3 x 3 neighbours.

    The residual of each component is its distance to the neighbours' median, divided by the
    median distance of the neighbours to that median plus 0.1 px; a vector fails when the
    residual of either component exceeds 2 (Westerweel & Scarano, 2005).  Points with fewer
    than two valid neighbours are kept.
    """
    fails = np.zeros(dx.shape, bool)
    for field in (dx, dy):
        around = _neighbours(field)
        count = np.isfinite(around).sum(axis=0)
        with np.errstate(all="ignore"):
            median = _nan_reduce(np.nanmedian, around)
            spread = _nan_reduce(np.nanmedian, np.abs(around - median))
            residual = np.abs(field - median) / (spread + _MEDIAN_EPSILON)
        fails |= (residual > _MEDIAN_THRESHOLD) & (count >= 2)
    return fails


def _nan_reduce(reduce, stack: np.ndarray) -> np.ndarray:
    """``reduce(stack, axis=0)`` (``np.nanmedian`` / ``np.nanmean``), NaN where every value is NaN.

    Reducing only the columns with a value avoids NumPy's all-NaN-slice warning at holes, which
    ``warnings.catch_warnings`` cannot silence reliably: it is not thread-safe, and Dask runs
    pairs on several threads.
    """
    out = np.full(stack.shape[1:], np.nan, dtype=np.result_type(stack.dtype, np.float32))
    some = ~np.isnan(stack).all(axis=0)
    if some.any():
        out[some] = reduce(stack[:, some], axis=0)
    return out


def fill_holes(fields: np.ndarray, fillable: np.ndarray, *, min_neighbours: int, passes: int) -> np.ndarray:
    """Fill NaN points of ``(k, rows, cols)`` fields with the mean of their valid neighbours.

    Only points where ``fillable`` is True are filled, and only when at least
    ``min_neighbours`` of their 8 neighbours are valid; ``passes`` rounds grow the filled area
    by one point each.  Returns the boolean mask of the points that were filled.
    """
    filled = np.zeros(fields.shape[1:], bool)
    for _ in range(passes):
        holes = ~np.isfinite(fields[0]) & fillable
        if not holes.any():
            break
        around = [_neighbours(field) for field in fields]
        count = np.isfinite(around[0]).sum(axis=0)
        take = holes & (count >= min_neighbours)
        if not take.any():
            break
        for field, near in zip(fields, around):
            field[take] = _nan_reduce(np.nanmean, near[:, take])
        filled |= take
    return filled


def _valid_fraction(valid: np.ndarray, half: int) -> np.ndarray:
    """Fraction of valid pixels in the ``2 * half + 1`` chip centred on every pixel."""
    cv2 = require_cv2("flow")
    size = 2 * half + 1
    return cv2.boxFilter(
        valid.astype(np.float32), -1, (size, size), normalize=True, borderType=cv2.BORDER_CONSTANT
    )


def _interpolate_field(previous, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The sparse pass's complete field, bilinearly interpolated to the grid ``rows x cols``."""
    from scipy import ndimage

    prev_rows, prev_cols, field = previous
    row_step = prev_rows[1] - prev_rows[0] if prev_rows.size > 1 else 1
    col_step = prev_cols[1] - prev_cols[0] if prev_cols.size > 1 else 1
    grid = np.meshgrid((rows - prev_rows[0]) / row_step, (cols - prev_cols[0]) / col_step, indexing="ij")
    return np.stack([ndimage.map_coordinates(f, grid, order=1, mode="nearest") for f in field])


def _complete(field: np.ndarray) -> np.ndarray:
    """Fill every NaN of a ``(2, rows, cols)`` guess field (neighbours, then the median, then 0)."""
    field = field.copy()
    everywhere = np.ones(field.shape[1:], bool)
    fill_holes(field, everywhere, min_neighbours=1, passes=max(field.shape[1:]))
    for component in field:
        finite = np.isfinite(component)
        component[~finite] = np.median(component[finite]) if finite.any() else 0.0
    return field


def _shifted(field: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """``field[..., r + dr, c + dc]`` at every (r, c) of a ``(k, rows, cols)`` field (NaN outside)."""
    padded = np.pad(field, ((0, 0), (1, 1), (1, 1)), constant_values=np.nan)
    rows, cols = field.shape[1:]
    return padded[:, 1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + cols]


def propagate(first, second, valid_fraction, rows, cols, match, *, half: int, subpixel: str,
              params: TrackingParams) -> int:
    """Try the displacements of good neighbours at suspect points; keep what correlates better.

    A coarse guess can be wrong over a patch (a coarse chip that straddles rock and fast ice
    follows the rock), and a small refinement search cannot leave it.  Like PatchMatch, each
    round matches the suspect points (weak, or failing the median test against their
    neighbours) again around the displacement of each good 4-neighbour that correlates better
    and differs by more than 1.5 px (search +-2 px), and keeps the displacement with the highest
    peak correlation, so the right field grows into the wrong patch by one point per round.
    Later rounds only look next to the points that changed.

    ``match`` is the ``(5, len(rows), len(cols))`` output of :func:`match_points` reshaped to the
    grid; it is updated in place.  Returns the number of points that changed.
    """
    from scipy import ndimage

    grid_rows, grid_cols = np.meshgrid(rows, cols, indexing="ij")
    active = np.ones(match.shape[1:], bool)
    changed = 0
    for _ in range(_PROPAGATE_ROUNDS):
        weak = _weak(match, params)
        suspect = active & (weak | median_test(match[0], match[1]))
        good = np.vstack([match[:3], (~weak)[None].astype(match.dtype)])
        changed_now = np.zeros(match.shape[1:], bool)
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            neighbour = _shifted(good, dr, dc)
            with np.errstate(invalid="ignore"):
                differs = np.abs(neighbour[:2] - match[:2]).max(axis=0) > _PROPAGATE_DIFFERENCE
                stronger = ~(neighbour[2] <= match[2])
            todo = suspect & (neighbour[3] == 1) & differs & stronger
            if not todo.any():
                continue
            trial = match_points(
                first, second, valid_fraction, grid_rows[todo], grid_cols[todo], neighbour[:2, todo],
                half=half, search=_PROPAGATE_SEARCH, subpixel=subpixel, min_valid=params.min_valid,
            )
            with np.errstate(invalid="ignore"):
                better = np.isfinite(trial[2]) & (trial[4] == 0) & ~(trial[2] <= match[2][todo])
            where = tuple(index[better] for index in np.nonzero(todo))
            match[(slice(None),) + where] = trial[:, better]
            changed_now[where] = True
        changed += int(changed_now.sum())
        if not changed_now.any():
            break
        active = ndimage.binary_dilation(changed_now)
    return changed


def _weak(match: np.ndarray, params: TrackingParams) -> np.ndarray:
    """True where a match is missing, weakly correlated, ambiguous or on the search edge."""
    with np.errstate(invalid="ignore"):
        return ~(
            (match[2] >= params.min_correlation) & (match[3] >= params.min_peak_ratio) & (match[4] == 0)
        )


def _match_grid(first, second, valid, rows, cols, guess, *, half, search, subpixel, params):
    """Match every point of the grid ``rows x cols``, then propagate; ``(5, rows, cols)``."""
    valid_fraction = _valid_fraction(valid, half)
    grid_rows, grid_cols = (g.ravel() for g in np.meshgrid(rows, cols, indexing="ij"))
    match = match_points(
        first, second, valid_fraction, grid_rows, grid_cols, guess.reshape(2, -1),
        half=half, search=search, subpixel=subpixel, min_valid=params.min_valid,
    ).reshape(5, rows.size, cols.size)
    propagate(first, second, valid_fraction, rows, cols, match, half=half, subpixel=subpixel,
              params=params)
    return match


def _sparse_field(first, second, valid, rows, cols, params: TrackingParams):
    """Coarse pass: the whole search radius at every k-th point, chips not overlapping.

    Returns ``(rows, cols, field)`` of the sparse grid with every hole filled, or None when the
    dense grid is already sparse (the dense pass then searches the whole radius itself).
    """
    step = rows[1] - rows[0] if rows.size > 1 else params.chip
    every = max(1, math.ceil(params.chip / step))
    if every == 1 or params.search <= _REFINE:
        return None
    sparse_rows, sparse_cols = rows[::every], cols[::every]
    match = _match_grid(
        first, second, valid, sparse_rows, sparse_cols,
        np.zeros((2, sparse_rows.size, sparse_cols.size)), half=params.chip // 2,
        search=params.search, subpixel="parabolic", params=params,
    )
    field = np.where(_weak(match, params), np.nan, match[:2])
    field[:, median_test(field[0], field[1])] = np.nan
    return sparse_rows, sparse_cols, _complete(field)


def _grow_chips(first, second, valid, rows, cols, match, guess, search, params: TrackingParams):
    """Match weak points again with chips 2 and 4 times larger (at most ``params.max_chip``).

    ``match`` is the ``(5, n)`` result of the smallest chip (updated in place); returns the chip
    size used at each point (pixels).
    """
    half = params.chip // 2
    chip = np.full(rows.size, 2 * half + 1, np.float32)
    todo = np.flatnonzero(_weak(match, params))
    while todo.size and 2 * (2 * half + 1) + 1 <= params.max_chip:
        half = 2 * half + 1
        trial = match_points(
            first, second, _valid_fraction(valid, half), rows[todo], cols[todo],
            guess[:, todo], half=half, search=search, subpixel=params.subpixel,
            min_valid=params.min_valid,
        )
        better = ~_weak(trial, params)
        match[:, todo[better]] = trial[:, better]
        chip[todo[better]] = 2 * half + 1
        todo = todo[~better]
    return chip


def track_pair(first: np.ndarray, second: np.ndarray, rows: np.ndarray, cols: np.ndarray,
               params: TrackingParams) -> np.ndarray:
    """Displacement of ``first``'s content in ``second`` on the posting grid ``rows x cols``.

    Parameters
    ----------
    first, second
        2-D images of the same shape (NaN where missing).
    rows, cols
        1-D pixel indices of the posting grid (see :func:`posting`).
    params
        Tracking parameters.

    Returns
    -------
    numpy.ndarray
        ``(7, len(rows), len(cols))`` float32: displacement along columns (+ right) and rows
        (+ down) in pixels, peak correlation, peak ratio, chip size (pixels), 1 where the
        vector was interpolated from its neighbours, and 1 where the chip had enough data in
        both images.
    """
    a, valid_a = _prepare(first, params.prefilter, params.prefilter_sigma)
    b, valid_b = _prepare(second, params.prefilter, params.prefilter_sigma)
    valid = valid_a & valid_b  # a point needs data in both scenes
    sparse = _sparse_field(a, b, valid, rows, cols, params)
    if sparse is None:
        guess, search = np.zeros((2, rows.size, cols.size)), params.search
    else:
        guess, search = _interpolate_field(sparse, rows, cols), _REFINE
    half = params.chip // 2
    match = _match_grid(a, b, valid, rows, cols, guess, half=half, search=search,
                        subpixel=params.subpixel, params=params)
    shape = (rows.size, cols.size)
    grid_rows, grid_cols = (g.ravel() for g in np.meshgrid(rows, cols, indexing="ij"))
    match = match.reshape(5, -1)
    chip = _grow_chips(a, b, valid, grid_rows, grid_cols, match, guess.reshape(2, -1), search, params)
    has_data = (_valid_fraction(valid, half)[grid_rows, grid_cols] >= params.min_valid).reshape(shape)
    field = np.where(_weak(match, params), np.nan, match[:2]).reshape(2, *shape)
    if params.outlier_filter:
        field[:, median_test(field[0], field[1])] = np.nan
    interpolated = fill_holes(field, has_data, min_neighbours=params.min_neighbours, passes=2)
    quality = match[2:4].reshape(2, *shape)
    return np.stack(
        [field[0], field[1], quality[0], quality[1], chip.reshape(shape), interpolated, has_data]
    ).astype(np.float32)
