"""Co-registration of every scene to a reference image (ECC with a phase-correlation fallback).

Landsat scenes of one path/row are not perfectly co-registered: a scene can sit a fraction of a
pixel (sometimes a few pixels) away from the next one.  :func:`align` estimates that offset for
each scene against a reference image with OpenCV's enhanced correlation coefficient (ECC)
maximisation (Evangelidis & Psarakis, 2008), as the method paper does, and resamples the scene
onto the reference with sub-pixel interpolation.  The shifts it found are kept as per-time
coordinates, so nothing is lost and the correction can be audited or undone.

How the estimate is made robust (each step measured on the embedded sample, see
``tests/test_align.py``):

* **Feature image.**  ECC matches a high-passed copy of each image (the image minus a Gaussian
  blur of it, ``feature="highpass"``), not the raw values: edges and texture carry the
  registration, while slow, large-scale changes (a snow line moving down a slope, haze,
  illumination) that are not misregistration weigh much less.
* **Observed pixels only.**  Pixels that ``fill_gaps`` interpolated (``observed`` False) are
  guesses; they neither build the mean reference nor drive the estimate (they are warped like
  the others).
* **Refined reference.**  The mean of scenes that are each misregistered by up to a pixel or two
  is blurred; with ``passes=2`` (default) the scenes are registered to it once, the mean of the
  aligned scenes becomes the new, sharper reference and every scene is registered again.

The work is lazy and per scene: one Dask task estimates the shift of one block of scenes *and*
warps it, and the shift coordinates come from the same tasks as the warped pixels.  The
reference of a pass is a Dask reduction over the previous pass's output.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Literal, NamedTuple

import numpy as np
import xarray as xr

from glacierxr._checks import check_single_chunk, require_cv2
from glacierxr.errors import (
    ConfigError,
    DataTypeError,
    DimensionError,
    GridError,
    NoScenesError,
)

__all__ = ["align"]

#: ``motion`` keyword -> name of the OpenCV motion model constant.
_MOTION_MODELS = {
    "translation": "MOTION_TRANSLATION",
    "euclidean": "MOTION_EUCLIDEAN",
    "affine": "MOTION_AFFINE",
}

#: Pixels of a warped validity mask below this weight are treated as missing.
_VALID_WEIGHT = 1.0 - 1e-3

#: ``feature`` keyword values.
_FEATURES = ("highpass", "gradient", "intensity")

#: Why ``y`` and ``x`` must each be one Dask chunk (said in ChunkingError).
_WHOLE_SCENE = "every scene is registered as a whole"


def _fill_missing(image: np.ndarray, valid: np.ndarray, fallback: np.ndarray | None) -> np.ndarray:
    """Replace missing pixels by ``fallback`` where it is finite, else by the mean of the image."""
    if valid.all():
        return image
    filled = image.copy()
    missing = ~valid
    if fallback is not None:
        use = missing & np.isfinite(fallback)
        filled[use] = fallback[use]
        missing = missing & ~use
    mean = float(image[valid].mean()) if valid.any() else 0.0
    filled[missing] = mean
    return filled


def _feature_image(image: np.ndarray, feature: str, highpass_sigma: float) -> np.ndarray:
    """The image ECC matches: ``image`` itself, its high-pass or its gradient magnitude."""
    if feature == "intensity":
        return image
    cv2 = require_cv2("align")
    if feature == "highpass":
        background = cv2.GaussianBlur(image, (0, 0), highpass_sigma, borderType=cv2.BORDER_REFLECT)
        return image - background
    d_col = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    d_row = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    return cv2.magnitude(d_col, d_row)


def _correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of ``a`` and ``b`` over ``mask`` (NaN when undefined)."""
    if mask.sum() < 2:
        return float("nan")
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


def _centre_displacement(warp: np.ndarray, height: int, width: int) -> tuple[float, float]:
    """Displacement (x, y) in pixels that ``warp`` applies at the image centre."""
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0, 1.0])
    moved = warp[:2] @ centre
    return float(moved[0] - centre[0]), float(moved[1] - centre[1])


def _inside(positions: np.ndarray, size: int) -> tuple[int, int]:
    """Index range of output pixels whose bilinear source ``positions`` lie inside the image.

    A source up to ``1 - _VALID_WEIGHT`` px outside still gets a bilinear weight of at least
    ``_VALID_WEIGHT`` (OpenCV interpolates with the exact sub-pixel position).
    """
    tolerance = 1.0 - _VALID_WEIGHT
    inside = np.flatnonzero((positions >= -tolerance) & (positions <= size - 1 + tolerance))
    return (int(inside[0]), int(inside[-1]) + 1) if inside.size else (0, 0)


def _warp(
    image: np.ndarray, valid: np.ndarray, warp: np.ndarray, interpolation: str
) -> np.ndarray:
    """Resample ``image`` so that ``out(p) = image(warp @ p)``; NaN where the source was missing."""
    cv2 = require_cv2("align")
    height, width = image.shape
    flag = cv2.INTER_CUBIC if interpolation == "cubic" else cv2.INTER_LINEAR
    flags = flag | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(
        image, warp, (width, height), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0
    )
    # the cubic kernel reaches one pixel further than the bilinear weight: one pixel less
    margin = 1 if interpolation == "cubic" else 0
    if valid.all() and np.array_equal(warp[:, :2], np.eye(2, dtype=warp.dtype)):
        # a translation of a complete scene: only a border loses its sources (no second warp)
        row0, row1 = _inside(np.arange(height) + float(warp[1, 2]), height)
        col0, col1 = _inside(np.arange(width) + float(warp[0, 2]), width)
        keep = np.zeros((height, width), bool)
        keep[row0:row1, col0:col1] = True
        if margin:
            keep = cv2.erode(keep.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        warped[~keep] = np.nan
        return warped
    weight = cv2.warpAffine(
        valid.astype(np.float32),
        warp,
        (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
    keep = weight >= _VALID_WEIGHT
    if margin:
        keep = cv2.erode(keep.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return np.where(keep, warped, np.nan)


class _Reference(NamedTuple):
    """A reference prepared once for every scene matched against it."""

    filled: np.ndarray  # float32, missing pixels filled with the mean
    feature: np.ndarray  # the feature image ECC matches
    valid: np.ndarray  # finite pixels
    template_mask: np.ndarray  # pixels that may drive the estimate (valid, stable ground)


def _prepare_reference(
    reference: np.ndarray, stable: np.ndarray | None, feature: str, highpass_sigma: float
) -> _Reference:
    """Fill, feature image and masks of a 2-D reference (done once per block of scenes)."""
    valid = np.isfinite(reference)
    filled = _fill_missing(reference.astype(np.float32), valid, None)
    template_mask = valid if stable is None else valid & stable
    return _Reference(filled, _feature_image(filled, feature, highpass_sigma), valid, template_mask)


def _register_scene(
    scene: np.ndarray,
    reference: np.ndarray | _Reference,
    stable: np.ndarray | None = None,
    observed: np.ndarray | None = None,
    initial: tuple[float, float] = (0.0, 0.0),
    *,
    motion: str,
    max_shift: float,
    iterations: int,
    eps: float,
    gauss_filter_size: int,
    min_correlation: float,
    interpolation: str,
    feature: str,
    highpass_sigma: float,
) -> tuple[np.ndarray, np.ndarray | None, float, float, float, bool, str]:
    """Register one 2-D scene to ``reference`` (an array, or one prepared with ``stable``).

    Returns ``(warped, warped_observed, dx, dy, correlation, converged, method)``;
    ``warped_observed`` is None when ``observed`` is.  ECC starts from the translation
    ``initial`` (a previous pass's estimate).
    """
    cv2 = require_cv2("align")
    work_dtype = np.float32
    if not isinstance(reference, _Reference):
        reference = _prepare_reference(reference, stable, feature, highpass_sigma)
    ref, ref_f, reference_valid, template_mask = reference
    scene_valid = np.isfinite(scene)
    # pixels that may drive the estimate: finite, observed (not gap-filled), stable ground
    estimate_valid = scene_valid if observed is None else scene_valid & observed
    height, width = scene.shape

    def result(warped, warp, dx, dy, correlation, converged, method):
        warped_observed = None
        if observed is not None:
            weight = cv2.warpAffine(
                observed.astype(work_dtype), warp, (width, height),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                borderValue=0.0,
            )
            warped_observed = np.isfinite(warped) & (weight >= _VALID_WEIGHT)
        return warped, warped_observed, float(dx), float(dy), float(correlation), bool(converged), method

    identity = np.eye(2, 3, dtype=np.float32)
    if not scene_valid.any() or not reference_valid.any():
        return result(np.full(scene.shape, np.nan, work_dtype), identity, 0.0, 0.0, float("nan"),
                      False, "none")

    img = _fill_missing(scene.astype(work_dtype), scene_valid, ref)
    input_mask = estimate_valid if stable is None else estimate_valid & stable
    if not (template_mask.any() and input_mask.any()):
        return result(_warp(img, scene_valid, identity, interpolation), identity, 0.0, 0.0,
                      float("nan"), False, "none")
    # the images that are matched: gap-filled pixels replaced by the reference, then the feature
    estimate_img = img if observed is None else _fill_missing(img, estimate_valid, ref)
    img_f = _feature_image(estimate_img, feature, highpass_sigma)

    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, int(iterations), float(eps))
    # complete masks are left out: OpenCV then skips the masking work
    masks = tuple(None if mask.all() else mask.astype(np.uint8) for mask in (template_mask, input_mask))

    def ecc(dx0: float, dy0: float):
        """ECC from the translation (dx0, dy0): (accepted, correlation, warp, dx, dy)."""
        start = identity.copy()
        start[:, 2] = (dx0, dy0)
        try:
            correlation, warp = cv2.findTransformECCWithMask(
                ref_f, img_f, *masks, start, getattr(cv2, _MOTION_MODELS[motion]), criteria,
                gauss_filter_size,
            )
        except cv2.error:
            return False, float("nan"), identity, 0.0, 0.0
        dx, dy = _centre_displacement(warp, height, width)
        accepted = bool(
            np.all(np.isfinite(warp))
            and np.hypot(dx, dy) <= max_shift
            and np.isfinite(correlation)
            and correlation >= min_correlation
        )
        return accepted, float(correlation), warp, dx, dy

    method, converged = "ecc", True
    ok, correlation, warp, dx, dy = ecc(*initial)
    if not ok:
        # Phase correlation (translation only, Hann window against edge effects): a global
        # estimate that does not need a start near the answer.  ECC is retried from it (a
        # shift beyond ECC's basin of convergence, or a local optimum); if ECC fails again the
        # phase-correlation shift itself is applied.
        window = cv2.createHanningWindow((width, height), cv2.CV_32F)
        keep = template_mask & input_mask
        if not keep.all() and keep.any():
            # only usable pixels may drive the estimate: flatten everything else to their mean
            ref_p = np.where(keep, ref_f, ref_f[keep].mean()).astype(work_dtype)
            img_p = np.where(keep, img_f, img_f[keep].mean()).astype(work_dtype)
        else:
            ref_p, img_p = ref_f, img_f
        # copies: OpenCV 5's phaseCorrelate multiplies its inputs by the window in place
        (dx, dy), _response = cv2.phaseCorrelate(ref_p.copy(), img_p.copy(), window)
        if np.isfinite(dx) and np.isfinite(dy) and np.hypot(dx, dy) <= max_shift:
            ok, correlation, warp, ecc_dx, ecc_dy = ecc(dx, dy)
            if ok:
                dx, dy = ecc_dx, ecc_dy
            else:
                method, converged = "phase", False
        else:
            method, converged, dx, dy = "none", False, 0.0, 0.0
        if not ok:
            warp = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], dtype=np.float32)
            # correlation of the matched (feature) images once the shift is applied
            moved = _warp(img_f, input_mask, warp, "linear")
            correlation = _correlation(moved, ref_f, np.isfinite(moved) & template_mask)

    warped = _warp(img, scene_valid, warp, interpolation)
    return result(warped, warp, dx, dy, correlation, converged, method)


def _register_block(
    scenes: np.ndarray,
    reference: np.ndarray,
    *extra: np.ndarray,
    has_stable: bool,
    has_observed: bool,
    has_initial: bool,
    out_dtype: np.dtype,
    **kwargs,
) -> tuple[np.ndarray, ...]:
    """Register every scene of a ``(..., y, x)`` block (apply_ufunc kernel).

    ``extra`` holds, in this order and only when flagged: the stable mask ``(..., y, x)``, the
    observed mask ``(..., y, x)`` and the initial shifts ``(...)`` x and y.
    """
    extra = list(extra)
    stable = np.asarray(extra.pop(0), bool) if has_stable else None
    observed = np.broadcast_to(np.asarray(extra.pop(0), bool), scenes.shape) if has_observed else None
    loop_shape = scenes.shape[:-2]
    if has_initial:
        initial_x = np.broadcast_to(extra.pop(0), loop_shape)
        initial_y = np.broadcast_to(extra.pop(0), loop_shape)
    # one reference (and stable mask) for every scene of the block, the usual case: prepare once
    shared = reference.ndim == 2 and (stable is None or stable.ndim == 2)
    if shared:
        prepared = _prepare_reference(
            reference, stable, feature=kwargs["feature"], highpass_sigma=kwargs["highpass_sigma"]
        )
    reference = np.broadcast_to(reference, scenes.shape)
    if stable is not None:
        stable = np.broadcast_to(stable, scenes.shape)
    warped = np.empty(scenes.shape, dtype=out_dtype)
    warped_observed = np.empty(scenes.shape, dtype=bool)
    shift_x = np.zeros(loop_shape, dtype=np.float64)
    shift_y = np.zeros(loop_shape, dtype=np.float64)
    correlation = np.zeros(loop_shape, dtype=np.float64)
    converged = np.zeros(loop_shape, dtype=bool)
    method = np.empty(loop_shape, dtype="<U5")
    for index in np.ndindex(*loop_shape):
        initial = (float(initial_x[index]), float(initial_y[index])) if has_initial else (0.0, 0.0)
        result = _register_scene(
            scenes[index],
            prepared if shared else reference[index],
            None if stable is None else stable[index],
            None if observed is None else observed[index],
            initial,
            **kwargs,
        )
        warped[index] = result[0]
        if has_observed:
            warped_observed[index] = result[1]
        shift_x[index], shift_y[index], correlation[index] = result[2:5]
        converged[index], method[index] = result[5], result[6]
    outputs = (warped, shift_x, shift_y, correlation, converged, method)
    return outputs + ((warped_observed,) if has_observed else ())


def _mean_reference(da: xr.DataArray, time_dim: str) -> xr.DataArray:
    """Temporal mean of the valid pixels; NaN where a pixel is never valid (no warning)."""
    total = da.sum(time_dim, skipna=True)
    count = da.count(time_dim)
    return total / count.where(count > 0)


def align(
    da: xr.DataArray,
    *,
    reference: Literal["mean"] | int | xr.DataArray = "mean",
    motion: Literal["translation", "euclidean", "affine"] = "translation",
    max_shift: float = 5.0,
    iterations: int = 100,
    eps: float = 1e-5,
    gauss_filter_size: int = 1,
    min_correlation: float = 0.2,
    interpolation: Literal["linear", "cubic"] = "linear",
    feature: Literal["highpass", "gradient", "intensity"] = "highpass",
    highpass_sigma: float = 4.0,
    passes: int = 2,
    stable: xr.DataArray | None = None,
    observed: Hashable | None = "observed",
    time_dim: str = "time",
    y_dim: str = "y",
    x_dim: str = "x",
) -> xr.DataArray:
    """Co-register every scene to a reference image with ECC, lazily and per scene.

    For each time step the displacement of the scene's content relative to the reference is
    estimated with :func:`cv2.findTransformECCWithMask` (enhanced correlation coefficient,
    Evangelidis & Psarakis 2008) on a feature image of both (by default their high-pass),
    using validity masks for both images so that missing (NaN) and gap-filled pixels never
    count.  With the mean reference the estimate is made ``passes`` times, each pass against the
    mean of the scenes aligned by the previous one.  When ECC raises, returns a non-finite warp,
    a correlation below ``min_correlation`` or a shift longer than ``max_shift`` (for instance a
    shift outside its basin of convergence), :func:`cv2.phaseCorrelate` with a Hann window
    estimates the shift globally and ECC is run again from there; if that is accepted the scene
    counts as registered by ECC, otherwise the phase-correlation shift is applied
    (``converged=False``, ``align_method="phase"``).  When that is also longer than
    ``max_shift`` (or the scene is empty) the scene is left where it is (shift 0,
    ``align_method="none"``).  The scene is then resampled onto the reference with
    :func:`cv2.warpAffine` (``WARP_INVERSE_MAP``).

    Parameters
    ----------
    da
        ``(time, y, x)`` images (NDSI, snow mask, reflectance ...); NaN marks missing pixels.
        May be NumPy- or Dask-backed; with Dask, ``y`` and ``x`` must each be one chunk.
    reference
        ``"mean"`` (default): the temporal mean of the valid pixels (a lazy Dask reduction when
        ``da`` is Dask-backed); an ``int``: the scene at that position along ``time_dim``; a
        ``(y, x)`` DataArray on the same grid.
    motion
        ECC motion model.  ``"euclidean"`` and ``"affine"`` are estimated and applied in full,
        but the reported shifts are the displacement of the image centre.
    max_shift
        Longest plausible shift in pixels (Euclidean length); longer estimates are rejected.
    iterations, eps
        ECC termination criteria: at most ``iterations`` iterations, or stop when the
        correlation improves by less than ``eps``.
    gauss_filter_size
        Size of the Gaussian blur ECC applies to images and masks before matching (odd).  The
        default 1 (no blur) measured best on the synthetic sample and on textures in the tests:
        blurring mixes masked pixels into valid ones and 30 m scenes are already smooth at the
        pixel scale.  Raise it (OpenCV's default is 5) for noisy imagery.
    min_correlation
        ECC results with a final correlation coefficient below this are treated as failures.
    interpolation
        Resampling kernel of the warp: ``"linear"`` (bilinear) or ``"cubic"`` (bicubic).
    feature
        What ECC (and the phase-correlation fallback) matches: ``"highpass"`` (default) the
        image minus its Gaussian blur of ``highpass_sigma`` pixels, so that edges and texture
        register the scenes while a snow line that moved, haze or illumination changes weigh
        little; ``"gradient"`` the gradient magnitude (3x3 Sobel); ``"intensity"`` the values
        themselves (the classic ECC).  The scenes are always warped as they are.
    highpass_sigma
        Standard deviation (pixels) of the Gaussian background that ``"highpass"`` removes.
    passes
        Number of estimates with ``reference="mean"``: pass 1 registers every scene to the mean
        of the (misregistered, so blurred) scenes; each further pass to the mean of the scenes
        aligned by the previous pass, starting ECC from the previous estimate.  Only the last
        pass's shifts and pixels are returned.  ``1`` is the plain, single estimate; fixed
        references (an index or a DataArray) always take one pass.
    stable
        Optional boolean ``(y, x)`` DataArray on the same grid, True on ground that does not
        move (e.g. everything outside glacier outlines).  Only those pixels drive the estimate,
        so that glacier motion is not mistaken for misregistration; every pixel is warped.
    observed
        Name of a boolean coordinate on the scenes' dims (as :func:`glacierxr.fill_gaps` adds),
        True where a pixel was observed and False where it was interpolated.  Interpolated
        pixels neither build the mean reference nor drive the estimate; they are warped with
        the rest, and the coordinate is warped along (a pixel stays observed when every source
        pixel of its interpolation was).  Ignored when the array has no such coordinate;
        ``None`` to use every finite pixel.
    time_dim, y_dim, x_dim
        Names of the dimensions.

    Returns
    -------
    xarray.DataArray
        Same name, attrs, dims and coords as ``da`` (integer input becomes ``float32``), with
        new per-time coordinates ``shift_x`` and ``shift_y`` (pixels; the content displacement
        of the scene relative to the reference: +x right/east, +y down the rows),
        ``ecc_correlation`` (correlation of the feature images with the reference after
        alignment), ``converged``
        (bool, True when ECC was accepted) and ``align_method`` (``"ecc"``, ``"phase"`` or
        ``"none"``).  The parameters are recorded in ``attrs["align_*"]``.

        Border handling: a pixel of the output is NaN when any source pixel that its
        interpolation kernel touches was missing or lies outside the scene, so a scene shifted
        by ``s`` pixels loses a border about ``ceil(|s|)`` pixels wide.  Missing pixels are
        filled with the reference's values (else the scene mean) before matching and warping,
        which only matters inside the masked areas.

    Raises
    ------
    DimensionError
        ``da`` lacks one of the dimensions, or a given reference is not on ``da``'s grid.
    ChunkingError
        ``y`` or ``x`` is split across Dask chunks (fix: ``.chunk({"y": -1, "x": -1})``).
    DataTypeError
        ``da`` is not numeric, or ``reference`` is of an unknown kind.
    GridError
        A reference DataArray of another size or with other ``y``/``x`` coordinates.
    ConfigError
        ``max_shift`` or ``highpass_sigma`` is not a positive number, ``iterations`` or
        ``passes`` < 1, or the named ``observed`` coordinate is not a boolean one on the
        scenes' dims.
    NoScenesError
        ``time_dim`` has length 0.

    Notes
    -----
    Accuracy on the embedded sample (``glacierxr.sample``), through search (``max_cloud=20``)
    -> load -> mask -> ndsi -> snow_mask -> fill_gaps -> align, RMSE of the recovered against
    the true misregistration over every scene, after removing the common offset (the mean
    reference sits at the scenes' mean shift): 0.026 px over 97 scenes on the default
    256 x 256 px, 8-year sample; 0.029-0.044 px on the 96 x 96 px, 2-year samples of seeds 0-3.
    The single-pass ECC on the raw values with every finite pixel (``feature="intensity",
    passes=1, observed=None``) gets 0.039 and 0.07-0.12 px there; each of the high-pass
    feature, the observed-only estimate and the second pass accounts for part of the gain.
    Removing pixels with a large temporal standard deviation from the estimate was tried and
    not kept: it also removes the static edges that carry the registration, and measured worse.

    Examples
    --------
    >>> import numpy as np, scipy.ndimage as ndi
    >>> from glacierxr.testing import make_series
    >>> rng = np.random.default_rng(0)
    >>> texture = ndi.gaussian_filter(rng.standard_normal((64, 64)), 2)
    >>> moved = ndi.shift(texture, (0.0, 1.5), mode="nearest")   # content 1.5 px to the right
    >>> cube = make_series(np.stack([texture, moved]), name="ndsi")
    >>> out = align(cube, reference=0)
    >>> [round(float(s), 1) for s in out.shift_x.values]
    [0.0, 1.5]
    >>> out.align_method.values.tolist()
    ['ecc', 'ecc']

    References
    ----------
    Evangelidis, G. D., & Psarakis, E. Z. (2008). Parametric image alignment using enhanced
    correlation coefficient maximization. IEEE TPAMI, 30(10), 1858-1865.
    """
    require_cv2("align")
    for dim in (time_dim, y_dim, x_dim):
        if dim not in da.dims:
            raise DimensionError(
                f"align needs dimensions {(time_dim, y_dim, x_dim)}, but the array has {da.dims}. "
                f"Name the dimensions with time_dim=, y_dim=, x_dim=, or rename them."
            )
    if not (np.issubdtype(da.dtype, np.number) or np.issubdtype(da.dtype, np.bool_)):
        raise DataTypeError(
            f"align needs a numeric array, but found dtype {da.dtype}. Convert it, e.g. .astype('float32')."
        )
    if motion not in _MOTION_MODELS:
        raise DataTypeError(f"motion must be one of {sorted(_MOTION_MODELS)}, got {motion!r}.")
    if feature not in _FEATURES:
        raise DataTypeError(f"feature must be one of {list(_FEATURES)}, got {feature!r}.")
    if not (isinstance(highpass_sigma, (int, float, np.number)) and np.isfinite(highpass_sigma)
            and highpass_sigma > 0):
        raise ConfigError(
            f"highpass_sigma must be a positive number of pixels (e.g. 4.0), got {highpass_sigma!r}."
        )
    if isinstance(passes, bool) or not isinstance(passes, (int, np.integer)) or passes < 1:
        raise ConfigError(f"passes must be an integer >= 1 (e.g. 2), got {passes!r}.")
    if interpolation not in ("linear", "cubic"):
        raise DataTypeError(f"interpolation must be 'linear' or 'cubic', got {interpolation!r}.")
    if gauss_filter_size < 1 or gauss_filter_size % 2 == 0:
        raise DataTypeError(f"gauss_filter_size must be a positive odd number, got {gauss_filter_size}.")
    if not (isinstance(max_shift, (int, float, np.number)) and np.isfinite(max_shift) and max_shift > 0):
        raise ConfigError(
            f"max_shift must be a positive number of pixels (e.g. 5.0), got {max_shift!r}. "
            "To keep the scenes where they are, skip align()."
        )
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ConfigError(f"iterations must be an integer >= 1 (e.g. 100), got {iterations!r}.")
    if da.sizes[time_dim] == 0:
        raise NoScenesError(
            f"align got no scene: dimension {time_dim!r} has length 0. Widen the search (dates, "
            "bbox, max_cloud) or raise mask(max_missing=...)."
        )
    check_single_chunk(da, (y_dim, x_dim), "align", why=_WHOLE_SCENE)

    out_dtype = np.dtype(da.dtype) if np.issubdtype(da.dtype, np.floating) else np.dtype(np.float32)
    data = da if da.dtype == out_dtype else da.astype(out_dtype)

    if isinstance(reference, str):
        if reference != "mean":
            raise DataTypeError(f"reference must be 'mean', an int or a DataArray, got {reference!r}.")
        ref = _mean_reference(data, time_dim)
        reference_attr = "mean"
    elif isinstance(reference, (int, np.integer)) and not isinstance(reference, bool):
        size = da.sizes[time_dim]
        if not -size <= int(reference) < size:
            raise DimensionError(
                f"reference={reference} is outside the {size} time steps. Pass an index in [{-size}, {size})."
            )
        ref = data.isel({time_dim: int(reference)}, drop=True)
        reference_attr = f"index {int(reference)}"
    elif isinstance(reference, xr.DataArray):
        if set(reference.dims) != {y_dim, x_dim}:
            raise DimensionError(
                f"a reference DataArray must have dims ({y_dim!r}, {x_dim!r}), found {reference.dims}. "
                "Select one scene, e.g. da.isel(time=0)."
            )
        if reference.sizes[y_dim] != da.sizes[y_dim] or reference.sizes[x_dim] != da.sizes[x_dim]:
            raise GridError(
                f"the reference is {dict(reference.sizes)} but the scenes are "
                f"{ {y_dim: da.sizes[y_dim], x_dim: da.sizes[x_dim]} }. Pass a reference on the same grid."
            )
        for dim in (y_dim, x_dim):
            if dim in reference.coords and dim in da.coords and not np.allclose(
                reference[dim].values, da[dim].values, rtol=1e-9, atol=0
            ):
                raise GridError(
                    f"the reference's {dim!r} coordinates differ from the scenes' (reference "
                    f"{float(reference[dim][0])} … {float(reference[dim][-1])}, scenes "
                    f"{float(da[dim][0])} … {float(da[dim][-1])}). Pass a reference on the same "
                    f"grid, e.g. reference.interp_like(da) or da.isel({time_dim}=0)."
                )
        check_single_chunk(reference, (y_dim, x_dim), "align (reference)", why=_WHOLE_SCENE)
        ref = reference.astype(out_dtype).drop_vars(
            [c for c in reference.coords if c not in (y_dim, x_dim)]
        )
        if y_dim in da.coords and x_dim in da.coords:
            ref = ref.assign_coords({y_dim: da[y_dim].values, x_dim: da[x_dim].values})
        reference_attr = "given"
    else:
        raise DataTypeError(
            f"reference must be 'mean', an int or a DataArray, got {type(reference).__name__}."
        )

    stable_mask = None if stable is None else _check_stable(stable, da, y_dim, x_dim)
    observed_mask = _observed_mask(da, observed, time_dim, y_dim, x_dim)
    if reference_attr == "mean" and observed_mask is not None:
        ref = _mean_reference(data.where(observed_mask), time_dim)
    n_passes = int(passes) if reference_attr == "mean" else 1

    kwargs = dict(
        out_dtype=out_dtype,
        motion=motion,
        max_shift=float(max_shift),
        iterations=int(iterations),
        eps=float(eps),
        gauss_filter_size=int(gauss_filter_size),
        min_correlation=float(min_correlation),
        interpolation=interpolation,
        feature=feature,
        highpass_sigma=float(highpass_sigma),
    )
    # the input's own coordinates are put back at the end; keep them out of the kernels' inputs
    bare = data.drop_vars([c for c in data.coords if c not in data.dims])
    initial = None
    for pass_number in range(n_passes):
        if pass_number:
            # the mean of the scenes aligned by the previous pass: sharper than the first mean
            aligned = warped if observed_mask is None else warped.where(warped_observed)
            ref = _mean_reference(aligned, time_dim)
            initial = (shift_x, shift_y)
        outputs = _register(bare, ref, stable_mask, observed_mask, initial, y_dim, x_dim, kwargs)
        warped, shift_x, shift_y, correlation, converged, method = outputs[:6]
        warped_observed = outputs[6] if observed_mask is not None else None

    per_time = {
        "shift_x": (shift_x, "pixels", "scene content displacement to the reference, +x right (east)"),
        "shift_y": (shift_y, "pixels", "scene content displacement to the reference, +y down the rows"),
        "ecc_correlation": (correlation, "1", "correlation of the feature images with the reference "
                            "after alignment"),
        "converged": (converged, "1", "ECC estimate accepted"),
        "align_method": (method, "", "method of the applied shift (ecc, phase, none)"),
    }
    coords = {}
    for name, (value, units, long_name) in per_time.items():
        value = value.drop_vars([c for c in value.coords if c not in value.dims])
        value.attrs = {"units": units, "long_name": long_name} if units else {"long_name": long_name}
        coords[name] = value

    # the input's own coordinates (with their attrs: spatial_ref carries the CRS) come back
    original = {
        name: coord for name, coord in da.coords.items() if name not in da.dims and name not in coords
    }
    if warped_observed is not None:
        coords[observed] = warped_observed.transpose(*da[observed].dims).assign_attrs(da[observed].attrs)
    out = warped.transpose(*da.dims).assign_coords({**original, **coords})
    out.name = da.name
    out.attrs = dict(da.attrs)
    out.attrs.update(
        align_reference=reference_attr,
        align_motion=motion,
        align_max_shift=float(max_shift),
        align_iterations=int(iterations),
        align_eps=float(eps),
        align_gauss_filter_size=int(gauss_filter_size),
        align_min_correlation=float(min_correlation),
        align_interpolation=interpolation,
        align_stable_mask=stable is not None,
        align_feature=feature,
        align_highpass_sigma=float(highpass_sigma),
        align_passes=n_passes,
        align_observed_mask=observed_mask is not None,
    )
    return out


def _register(data, ref, stable, observed, initial, y_dim, x_dim, kwargs) -> tuple[xr.DataArray, ...]:
    """One lazy registration pass over every scene (one task per block of scenes)."""
    inputs = [data, ref]
    core = [y_dim, x_dim]
    input_core_dims = [core, core]
    for extra in (stable, observed):
        if extra is not None:
            inputs.append(extra)
            input_core_dims.append(core)
    if initial is not None:
        inputs.extend(initial)
        input_core_dims.extend([[], []])
    output_core_dims = [core, [], [], [], [], []]
    output_dtypes = [kwargs["out_dtype"], np.float64, np.float64, np.float64, np.bool_, np.dtype("<U5")]
    if observed is not None:
        output_core_dims.append(core)
        output_dtypes.append(np.bool_)
    return xr.apply_ufunc(
        _register_block,
        *inputs,
        input_core_dims=input_core_dims,
        output_core_dims=output_core_dims,
        dask="parallelized",
        vectorize=False,
        output_dtypes=output_dtypes,
        kwargs=dict(kwargs, has_stable=stable is not None, has_observed=observed is not None,
                    has_initial=initial is not None),
        keep_attrs=False,
    )


def _observed_mask(da: xr.DataArray, name: Hashable | None, time_dim: str, y_dim: str,
                   x_dim: str) -> xr.DataArray | None:
    """The boolean ``observed`` coordinate named ``name`` (None when absent or not asked for)."""
    if name is None or name not in da.coords or name in da.dims:
        return None
    mask = da.coords[name]
    flags = np.issubdtype(mask.dtype, np.bool_) or np.issubdtype(mask.dtype, np.integer)
    if not flags or not {y_dim, x_dim} <= set(mask.dims) or not set(mask.dims) <= set(da.dims):
        raise ConfigError(
            f"the coordinate {name!r} must be boolean (or 0/1 integers, as NetCDF stores it) on "
            f"the scenes' dims, True where observed, to mark gap-filled pixels; found dtype "
            f"{mask.dtype} with dims {mask.dims}. Pass observed=None to use every finite pixel, "
            "or name another coordinate."
        )
    check_single_chunk(mask, (y_dim, x_dim), f"align (coordinate {name!r})", why=_WHOLE_SCENE)
    mask = mask.drop_vars([c for c in mask.coords if c not in mask.dims])
    return mask if mask.dtype == bool else mask != 0


def _check_stable(stable: xr.DataArray, da: xr.DataArray, y_dim: str, x_dim: str) -> xr.DataArray:
    """Validate a stable-ground mask from its metadata and return it on ``da``'s grid labels."""
    if not isinstance(stable, xr.DataArray):
        raise DataTypeError(
            f"stable must be a boolean (y, x) DataArray, got {type(stable).__name__}. "
            "Wrap it with xr.DataArray(mask, dims=('y', 'x'))."
        )
    if set(stable.dims) != {y_dim, x_dim}:
        raise DimensionError(f"stable must have dims ({y_dim!r}, {x_dim!r}), found {stable.dims}.")
    if stable.dtype != bool:
        raise DataTypeError(
            f"stable must be boolean (True on stable ground), found dtype {stable.dtype}. "
            "Build it with a comparison, e.g. `~glacier_outline`."
        )
    for dim in (y_dim, x_dim):
        if stable.sizes[dim] != da.sizes[dim] or (
            dim in stable.coords and dim in da.coords and not np.allclose(stable[dim].values, da[dim].values)
        ):
            raise GridError(
                f"stable is not on the grid of the scenes along {dim!r} ({stable.sizes[dim]} vs "
                f"{da.sizes[dim]} values or other coordinates). Build it on the same grid, e.g. "
                "with `.rio.reproject_match(da)`."
            )
    check_single_chunk(stable, (y_dim, x_dim), "align (stable)", why=_WHOLE_SCENE)
    stable = stable.transpose(y_dim, x_dim)
    return stable.drop_vars([c for c in stable.coords if c not in (y_dim, x_dim)])
