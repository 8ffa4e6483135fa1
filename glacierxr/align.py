"""Co-registration of every scene to a reference on stable ground (ECC, phase-correlation fallback).

Landsat scenes of one path/row are not perfectly co-registered: a scene can sit a fraction of a
pixel (sometimes a few pixels) away from the next one.  :func:`align` estimates that offset for
each scene against a reference image with OpenCV's enhanced correlation coefficient (ECC)
maximisation (Evangelidis & Psarakis, 2008), as the method paper does, and resamples the scene
onto the reference with sub-pixel interpolation.  The shifts it found, and how much to trust
them, are kept as per-time coordinates, so nothing is lost and the correction can be audited.

A glacier moves: if its pixels drive the estimate, the flow of the ice is read as a shift of
the whole scene.  So the estimate uses **stable ground only** (see :mod:`glacierxr.stable`):

* **Automatic stable ground** (default).  A first pass registers every scene with every usable
  pixel; the texture (high-pass image) of the roughly aligned scenes is then compared through
  time, and only pixels whose texture does not change -- no moving ice, no moving snow line, no
  water or cloud -- drive the second pass.  Pixels next to missing data (cloud, no-data edges)
  are left out with a margin.
* **User knowledge.**  A boolean ``stable=`` mask and/or glacier ``outlines=`` (GeoJSON, RGI
  polygons; rasterised on the cube's grid and buffered) restrict the stable ground further.
* **Feature image.**  ECC matches a high-passed copy of each image (the image minus a Gaussian
  blur of it, ``feature="highpass"``), so that slow, large-scale changes (haze, illumination)
  weigh little.
* **Observed pixels only.**  Pixels that ``fill_gaps`` interpolated (``observed`` False)
  neither build the mean reference nor drive the estimate (they are warped like the others).
* **Quality per scene.**  The number and share of stable pixels used, the correlation and the
  residual after alignment, and ``align_reliable``: a scene with too little stable ground or
  no convergence is flagged (and, by option, blanked or dropped), never silently shifted.

The work is lazy and per scene: one Dask task estimates the shift of one block of scenes *and*
warps it, and the per-scene coordinates come from the same tasks as the warped pixels.  The
reference and the automatic stable ground of a pass are Dask reductions over the previous
pass's output.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Literal, NamedTuple

import numpy as np
import xarray as xr

from glacierxr._validate import (
    check_on_grid,
    check_single_chunk,
    require_cv2,
    require_choice,
    require_dims,
    require_numeric,
    require_positive,
)
from glacierxr.errors import (
    ConfigError,
    DimensionError,
    NoScenesError,
)
from glacierxr.stable import FLAG_AUTO, FLAG_NONE, highpass, resolve_stable, stable_from_variability

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

#: ``unreliable`` keyword values.
_UNRELIABLE = ("keep", "nan", "drop")

#: Why ``y`` and ``x`` must each be one Dask chunk (said in ChunkingError).
_WHOLE_SCENE = "every scene is registered as a whole"

#: Per-scene outputs of the kernel, in order: name -> (dtype, units, long_name); the one table
#: of the per-time coordinates ``align`` adds.
_PER_SCENE = {
    "shift_x": (np.float64, "pixels", "scene content displacement to the reference, +x right (east)"),
    "shift_y": (np.float64, "pixels", "scene content displacement to the reference, +y down the rows"),
    "ecc_correlation": (np.float64, "1", "correlation of the feature images with the reference "
                        "after alignment, on the pixels used"),
    "converged": (np.bool_, "1", "ECC estimate accepted"),
    "align_method": (np.dtype("<U5"), "", "method of the applied shift (ecc, phase, none)"),
    "stable_pixels": (np.int64, "1", "number of stable pixels that drove the estimate"),
    "align_residual": (np.float64, "1", "RMS of the aligned feature image minus the reference's "
                       "on the pixels used, relative to the reference's RMS"),
    "stable_fraction": (np.float64, "1", "share of the scene's pixels that drove the estimate"),
    "align_reliable": (np.bool_, "1", "estimate converged on enough stable ground (else the scene "
                       "is not shifted, or only by the phase-correlation fallback)"),
}


class _Settings(NamedTuple):
    """What the per-scene kernel needs to know (validated by :func:`_check_options`)."""

    motion: str
    max_shift: float
    iterations: int
    eps: float
    gauss_filter_size: int
    min_correlation: float
    interpolation: str
    feature: str
    highpass_sigma: float
    margin: int
    min_stable_fraction: float
    coarse: bool = False  # estimate at half resolution (a first pass that only needs to be close)


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


def _feature_image(image: np.ndarray, feature: str, highpass_sigma: float) -> np.ndarray:
    """The image ECC matches: ``image`` itself, its high-pass or its gradient magnitude."""
    if feature == "intensity":
        return image
    if feature == "highpass":
        return highpass(image, highpass_sigma)
    cv2 = require_cv2("align")
    d_col = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    d_row = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    return cv2.magnitude(d_col, d_row)


def _erode(mask: np.ndarray, margin: int) -> np.ndarray:
    """``mask`` pulled back by ``margin`` pixels from every False pixel (the frame is kept)."""
    if margin <= 0 or mask.all():
        return mask
    cv2 = require_cv2("align")
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
    return cv2.erode(mask.astype(np.uint8), kernel).astype(bool)


class _Reference(NamedTuple):
    """A reference prepared once for every scene matched against it."""

    filled: np.ndarray  # float32, missing pixels filled with the mean
    feature: np.ndarray  # the feature image ECC matches
    valid: np.ndarray  # finite pixels
    template_mask: np.ndarray  # pixels that may drive the estimate (valid, off edges, stable)


def _prepare_reference(reference: np.ndarray, stable: np.ndarray | None, settings: _Settings) -> _Reference:
    """Fill, feature image and masks of a 2-D reference (done once per block of scenes)."""
    valid = np.isfinite(reference)
    filled = _fill_missing(reference.astype(np.float32), valid, None)
    template_mask = _erode(valid, settings.margin)
    if stable is not None:
        template_mask = template_mask & stable
    feature = _feature_image(filled, settings.feature, settings.highpass_sigma)
    return _Reference(filled, feature, valid, template_mask)


class _Estimate(NamedTuple):
    """One scene's registration: the warp and what is reported about it."""

    warp: np.ndarray
    dx: float
    dy: float
    correlation: float
    converged: bool
    method: str


_IDENTITY = np.eye(2, 3, dtype=np.float32)
_NONE = _Estimate(_IDENTITY, 0.0, 0.0, float("nan"), False, "none")


def _ecc(ref_f, img_f, masks, start: tuple[float, float], settings: _Settings):
    """ECC from the translation ``start``: an accepted :class:`_Estimate`, or None."""
    cv2 = require_cv2("align")
    warp0 = _IDENTITY.copy()
    warp0[:, 2] = start
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, settings.iterations, settings.eps)
    try:
        correlation, warp = cv2.findTransformECCWithMask(
            ref_f, img_f, *masks, warp0, getattr(cv2, _MOTION_MODELS[settings.motion]), criteria,
            settings.gauss_filter_size,
        )
    except cv2.error:
        return None
    dx, dy = _centre_displacement(warp, *img_f.shape)
    accepted = (np.all(np.isfinite(warp)) and np.hypot(dx, dy) <= settings.max_shift
                and np.isfinite(correlation) and correlation >= settings.min_correlation)
    return _Estimate(warp, dx, dy, float(correlation), True, "ecc") if accepted else None


def _phase_fallback(ref_f, img_f, keep, masks, settings: _Settings) -> _Estimate:
    """Phase correlation (Hann window), then ECC again from it; else its shift, flagged.

    A global estimate that does not need a start near the answer (a shift beyond ECC's basin
    of convergence, or a local optimum).  If ECC fails again the phase-correlation shift
    itself is applied, with ``converged=False`` and method ``"phase"``.
    """
    cv2 = require_cv2("align")
    height, width = img_f.shape
    window = cv2.createHanningWindow((width, height), cv2.CV_32F)
    ref_p, img_p = ref_f, img_f
    if not keep.any():
        return _NONE
    if not keep.all():
        # only usable pixels may drive the estimate: flatten everything else to their mean
        ref_p = np.where(keep, ref_f, ref_f[keep].mean()).astype(np.float32)
        img_p = np.where(keep, img_f, img_f[keep].mean()).astype(np.float32)
    # copies: OpenCV 5's phaseCorrelate multiplies its inputs by the window in place
    (dx, dy), _response = cv2.phaseCorrelate(ref_p.copy(), img_p.copy(), window)
    if not (np.isfinite(dx) and np.isfinite(dy) and np.hypot(dx, dy) <= settings.max_shift):
        return _NONE
    refined = _ecc(ref_f, img_f, masks, (dx, dy), settings)
    if refined is not None:
        return refined
    warp = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], dtype=np.float32)
    moved = _warp(img_f, keep, warp, "linear")
    correlation = _correlation(moved, ref_f, np.isfinite(moved) & keep)
    return _Estimate(warp, float(dx), float(dy), correlation, False, "phase")


def _estimate(ref_f, img_f, template_mask, input_mask, initial, settings: _Settings) -> _Estimate:
    """ECC from ``initial``, else the phase-correlation fallback."""
    # complete masks are left out: OpenCV then skips the masking work
    masks = tuple(None if m.all() else m.astype(np.uint8) for m in (template_mask, input_mask))
    estimate = _ecc(ref_f, img_f, masks, initial, settings)
    if estimate is None:
        estimate = _phase_fallback(ref_f, img_f, input_mask, masks, settings)
    return estimate


def _coarse_estimate(ref_f, img_f, template_mask, input_mask, initial, settings: _Settings) -> _Estimate:
    """:func:`_estimate` on 2 x 2 block means of the images, mapped back to full resolution.

    Full-resolution pixel ``X`` is ``2 x + 0.5`` at half resolution, so a warp ``A x + t`` there
    is ``A X + 2 t + 0.5 (I - A) 1`` here (a translation simply doubles).  A half-resolution
    pixel counts where its four pixels all do; where that leaves too few (small images, stable
    ground in lines thinner than two pixels), the estimate is made at full resolution.
    """
    cv2 = require_cv2("align")
    height, width = (img_f.shape[0] // 2) * 2, (img_f.shape[1] // 2) * 2

    def half(image):
        return cv2.resize(np.ascontiguousarray(image[:height, :width], np.float32),
                          (width // 2, height // 2), interpolation=cv2.INTER_AREA)

    if min(height, width) >= 16:
        masks = half(template_mask) >= 1.0, half(input_mask) >= 1.0
        usable = np.count_nonzero(masks[0] & masks[1])
        if usable >= max(settings.min_stable_fraction * masks[1].size, 2):
            return _upsampled(_estimate(half(ref_f), half(img_f), *masks, (initial[0] / 2, initial[1] / 2),
                                        settings._replace(max_shift=settings.max_shift / 2)), img_f.shape)
    return _estimate(ref_f, img_f, template_mask, input_mask, initial, settings)


def _upsampled(coarse: _Estimate, shape: tuple[int, int]) -> _Estimate:
    """A half-resolution estimate as the warp of the full-resolution image (see :func:`_coarse_estimate`)."""
    warp = coarse.warp.astype(np.float64).copy()
    warp[:, 2] = 2 * warp[:, 2] + 0.5 * (np.eye(2) - warp[:, :2]).sum(axis=1)
    dx, dy = _centre_displacement(warp, *shape)
    return coarse._replace(warp=warp.astype(np.float32), dx=dx, dy=dy)


def _residual(img_f, ref_f, warp, used) -> float:
    """RMS of the warped feature image minus the reference's on ``used``, over the reference's RMS."""
    cv2 = require_cv2("align")
    moved = _warp(img_f, used, warp, "linear")
    ok = np.isfinite(moved) & used
    if np.count_nonzero(ok) < 2:
        return float("nan")
    # population standard deviations over ``ok`` (OpenCV sums in float64 and reads only the
    # masked pixels, so the NaN outside them do not matter)
    mask = ok.view(np.uint8)
    scale = float(cv2.meanStdDev(ref_f, mask=mask)[1][0, 0])
    spread = float(cv2.meanStdDev(moved - ref_f, mask=mask)[1][0, 0])
    return spread / scale if scale > 0 else float("nan")


def _register_scene(
    scene: np.ndarray,
    reference: _Reference,
    observed: np.ndarray | None,
    initial: tuple[float, float],
    settings: _Settings,
) -> tuple[np.ndarray, np.ndarray | None, tuple]:
    """Register one 2-D scene to a prepared ``reference``.

    Returns ``(warped, warped_observed, per_scene)`` with ``per_scene`` in the order of
    ``_PER_SCENE``; ``warped_observed`` is None when ``observed`` is.  ECC starts from the
    translation ``initial`` (a previous pass's estimate; NaN when that pass failed).  With a
    failed previous pass, or less than ``min_stable_fraction`` of the scene usable, the scene
    is not shifted (method ``"none"``).
    """
    scene_valid = np.isfinite(scene)
    # pixels that may drive the estimate: finite, observed (not gap-filled), off the edges
    estimate_valid = scene_valid if observed is None else scene_valid & observed
    input_mask = _erode(estimate_valid, settings.margin) & reference.template_mask
    used = int(input_mask.sum())
    img = _fill_missing(scene.astype(np.float32), scene_valid, reference.filled)
    estimate, residual = _NONE, float("nan")
    estimable = reference.valid.any() and np.isfinite(initial).all()
    if estimable and used >= max(settings.min_stable_fraction * scene.size, 2):
        # gap-filled pixels replaced by the reference before the feature image
        estimate_img = img if observed is None else _fill_missing(img, estimate_valid, reference.filled)
        img_f = _feature_image(estimate_img, settings.feature, settings.highpass_sigma)
        # complete masks are left out: OpenCV then skips the masking work
        if settings.coarse:
            estimate = _coarse_estimate(reference.feature, img_f, reference.template_mask, input_mask,
                                        initial, settings)
        else:
            estimate = _estimate(reference.feature, img_f, reference.template_mask, input_mask,
                                 initial, settings)
        residual = _residual(img_f, reference.feature, estimate.warp, input_mask)
    warped = _warp(img, scene_valid, estimate.warp, settings.interpolation) if scene_valid.any() \
        else np.full(scene.shape, np.nan, np.float32)
    warped_observed = None
    if observed is not None:
        weight = _warp(observed.astype(np.float32), np.ones(scene.shape, bool), estimate.warp, "linear")
        warped_observed = np.isfinite(warped) & (np.nan_to_num(weight) >= _VALID_WEIGHT)
    used = used if estimate.method != "none" else 0
    fraction = used / scene.size
    reliable = estimate.converged and fraction >= settings.min_stable_fraction
    per_scene = (estimate.dx, estimate.dy, estimate.correlation, estimate.converged, estimate.method,
                 used, residual, fraction, reliable)
    return warped, warped_observed, per_scene


def _register_block(
    scenes: np.ndarray,
    reference: np.ndarray,
    *extra: np.ndarray,
    has_stable: bool,
    has_observed: bool,
    has_initial: bool,
    out_dtype: np.dtype,
    settings: _Settings,
) -> tuple[np.ndarray, ...]:
    """Register every scene of a ``(..., y, x)`` block (apply_ufunc kernel).

    ``extra`` holds, in this order and only when flagged: the stable mask ``(y, x)``, the
    observed mask ``(..., y, x)`` and the initial shifts ``(...)`` x and y.  ``reference`` is
    one ``(y, x)`` image shared by every scene of the block, so it is prepared once.
    """
    extra = list(extra)
    stable = np.asarray(extra.pop(0), bool) if has_stable else None
    observed = np.broadcast_to(np.asarray(extra.pop(0), bool), scenes.shape) if has_observed else None
    loop_shape = scenes.shape[:-2]
    initial = [np.broadcast_to(extra.pop(0), loop_shape) for _ in range(2)] if has_initial else None
    prepared = _prepare_reference(reference, stable, settings)
    warped = np.empty(scenes.shape, dtype=out_dtype)
    warped_observed = np.empty(scenes.shape, dtype=bool)
    per_scene = [np.zeros(loop_shape, dtype=dtype) for dtype, _, _ in _PER_SCENE.values()]
    for index in np.ndindex(*loop_shape):
        start = (float(initial[0][index]), float(initial[1][index])) if has_initial else (0.0, 0.0)
        scene_observed = None if observed is None else observed[index]
        warped[index], scene_warped_observed, values = _register_scene(
            scenes[index], prepared, scene_observed, start, settings
        )
        if has_observed:
            warped_observed[index] = scene_warped_observed
        for array, value in zip(per_scene, values):
            array[index] = value
    return (warped, *per_scene) + ((warped_observed,) if has_observed else ())


def _check_options(da: xr.DataArray, options: dict, dims: tuple[str, str, str]) -> _Settings:
    """Validate the array's metadata and the keyword options; return the kernel's settings."""
    require_cv2("align")
    require_dims(da, dims, what="align")
    require_numeric(da, what="align")
    for name, allowed in (("motion", sorted(_MOTION_MODELS)), ("feature", list(_FEATURES)),
                          ("interpolation", ["linear", "cubic"]), ("unreliable", list(_UNRELIABLE))):
        require_choice(options[name], allowed, name=name)
    if not isinstance(options["auto_stable"], (bool, np.bool_)):
        raise ConfigError(f"auto_stable must be True or False, got {options['auto_stable']!r}.")
    size = require_positive(options["gauss_filter_size"], name="gauss_filter_size", integer=True, example=5)
    if size % 2 == 0:
        raise ConfigError(f"gauss_filter_size must be a positive odd number (e.g. 5), got {size}.")
    require_positive(options["highpass_sigma"], name="highpass_sigma", example=4.0)
    require_positive(options["passes"], name="passes", integer=True, example=2)
    require_positive(options["max_shift"], name="max_shift", example=5.0)
    require_positive(options["iterations"], name="iterations", integer=True, example=100)
    require_positive(options["margin"], name="margin", integer=True, allow_zero=True, example=3)
    require_positive(options["stable_threshold"], name="stable_threshold", allow_zero=True, example=0.1)
    fraction = require_positive(options["min_stable_fraction"], name="min_stable_fraction", allow_zero=True)
    if fraction >= 1:
        raise ConfigError(f"min_stable_fraction is a share of the scene (0-1), got {fraction!r}.")
    if da.sizes[dims[0]] == 0:
        raise NoScenesError(
            f"align got no scene: dimension {dims[0]!r} has length 0. Widen the search (dates, "
            "bbox, max_cloud) or raise mask(max_missing=...)."
        )
    check_single_chunk(da, dims[1:], "align", why=_WHOLE_SCENE)
    return _Settings(*(type_(options[name]) for name, type_ in zip(
        _Settings._fields, (str, float, int, float, int, float, str, str, float, int, float))))


def _given_reference(reference: xr.DataArray, da: xr.DataArray, dims: tuple[str, str, str]) -> xr.DataArray:
    """A ``(y, x)`` reference DataArray checked to be on ``da``'s grid, on its labels."""
    ref = check_on_grid(reference, da, name="reference", what="align", y_dim=dims[1], x_dim=dims[2],
                        why=_WHOLE_SCENE)
    if dims[1] in da.coords and dims[2] in da.coords:
        ref = ref.assign_coords({dims[1]: da[dims[1]].values, dims[2]: da[dims[2]].values})
    return ref


def _resolve_reference(reference, data: xr.DataArray, dims) -> tuple[xr.DataArray | None, str]:
    """The reference image (None for the mean, built later) and how to describe it."""
    time_dim = dims[0]
    if isinstance(reference, str):
        if reference != "mean":
            raise ConfigError(f"reference must be 'mean', an int or a DataArray, got {reference!r}.")
        return None, "mean"
    if isinstance(reference, (int, np.integer)) and not isinstance(reference, bool):
        size = data.sizes[time_dim]
        if not -size <= int(reference) < size:
            raise DimensionError(
                f"reference={reference} is outside the {size} time steps. Pass an index in [{-size}, {size})."
            )
        return data.isel({time_dim: int(reference)}, drop=True), f"index {int(reference)}"
    if isinstance(reference, xr.DataArray):
        return _given_reference(reference, data, dims).astype(data.dtype), "given"
    raise ConfigError(f"reference must be 'mean', an int or a DataArray, got {type(reference).__name__}.")


def _register(data, ref, stable, observed, initial, dims, out_dtype, settings) -> tuple[xr.DataArray, ...]:
    """One lazy registration pass over every scene (one task per block of scenes)."""
    core = list(dims[1:])
    inputs, input_core_dims = [data, ref], [core, core]
    for extra in (stable, observed):
        if extra is not None:
            inputs.append(extra)
            input_core_dims.append(core)
    if initial is not None:
        inputs.extend(initial)
        input_core_dims.extend([[], []])
    output_core_dims = [core] + [[] for _ in _PER_SCENE] + ([core] if observed is not None else [])
    output_dtypes = [out_dtype] + [dtype for dtype, _, _ in _PER_SCENE.values()]
    output_dtypes += [np.bool_] if observed is not None else []
    return xr.apply_ufunc(
        _register_block, *inputs, input_core_dims=input_core_dims, output_core_dims=output_core_dims,
        dask="parallelized", vectorize=False, output_dtypes=output_dtypes, keep_attrs=False,
        kwargs=dict(out_dtype=out_dtype, settings=settings, has_stable=stable is not None,
                    has_observed=observed is not None, has_initial=initial is not None),
    )


class _Passes(NamedTuple):
    """What the registration passes produced."""

    warped: xr.DataArray
    per_scene: dict[str, xr.DataArray]
    warped_observed: xr.DataArray | None
    stable: xr.DataArray | None  # the stable ground of the last pass (None: every pixel)
    passes: int


def _run_passes(data, ref, user_stable, observed, n_passes, auto, stable_threshold, dims,
                out_dtype, settings) -> _Passes:
    """Pass 1 on every usable pixel (or the user's stable ground); later passes on stable ground.

    With the mean reference, each later pass matches the mean of the scenes the previous
    pass aligned; with ``auto`` the stable ground of the later passes is the user's (if any)
    where the texture of the first pass's aligned scenes did not change.
    """
    time_dim = dims[0]
    mean_reference = ref is None
    if mean_reference:
        ref = _mean_reference(data if observed is None else data.where(observed), time_dim)
    stable, initial = user_stable, None
    for pass_number in range(n_passes):
        if pass_number:
            aligned = warped if observed is None else warped.where(warped_observed)
            if mean_reference:
                ref = _mean_reference(aligned, time_dim)
            if auto and pass_number == 1:
                found = stable_from_variability(
                    aligned, threshold=stable_threshold, highpass_sigma=settings.highpass_sigma,
                    time_dim=time_dim, y_dim=dims[1], x_dim=dims[2],
                )
                stable = found if user_stable is None else found & user_stable
            # a scene the previous pass could not register at all is not tried on a subset
            failed = per_scene["align_method"] == "none"
            initial = tuple(per_scene[name].where(~failed) for name in ("shift_x", "shift_y"))
        # with the automatic ground the first pass only has to be close: half resolution
        pass_settings = settings._replace(coarse=auto and pass_number == 0)
        outputs = _register(data, ref, stable, observed, initial, dims, out_dtype, pass_settings)
        warped = outputs[0]
        per_scene = dict(zip(_PER_SCENE, outputs[1:1 + len(_PER_SCENE)]))
        warped_observed = outputs[-1] if observed is not None else None
    return _Passes(warped, per_scene, warped_observed, stable, n_passes)


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
    auto_stable: bool = True,
    stable_threshold: float = 0.1,
    stable: xr.DataArray | None = None,
    outlines: Any = None,
    outlines_buffer: float = 100.0,
    outlines_crs: Any = None,
    margin: int = 3,
    min_stable_fraction: float = 0.01,
    unreliable: Literal["keep", "nan", "drop"] = "keep",
    observed: Hashable | None = "observed",
    time_dim: str = "time",
    y_dim: str = "y",
    x_dim: str = "x",
) -> xr.DataArray:
    """Co-register every scene to a reference image with ECC on stable ground, lazily per scene.

    For each time step the displacement of the scene's content relative to the reference is
    estimated with :func:`cv2.findTransformECCWithMask` (enhanced correlation coefficient,
    Evangelidis & Psarakis 2008) on a feature image of both (by default their high-pass),
    with masks so that only stable ground drives it: missing, gap-filled and edge pixels never
    count, and from the second pass on (default ``passes=2``, ``auto_stable=True``) only the
    pixels whose texture did not change through the first pass's aligned scenes
    (:func:`glacierxr.stable.stable_from_variability`: no moving ice, no moving snow line, no
    water or cloud), further restricted by ``stable`` and ``outlines`` when given.  With the
    mean reference each pass matches the mean of the scenes aligned by the previous one.  With
    the automatic ground the first pass only has to be close and works on 2 x 2 block means
    (where the usable ground is too thin for them, at full resolution).

    When ECC raises, returns a non-finite warp, a correlation below ``min_correlation`` or a
    shift longer than ``max_shift``, :func:`cv2.phaseCorrelate` with a Hann window estimates
    the shift globally and ECC is run again from there; if that fails too the
    phase-correlation shift is applied (``converged=False``, ``align_method="phase"``).  When
    that is also longer than ``max_shift``, or less than ``min_stable_fraction`` of the scene
    is usable stable ground, the scene is not shifted (shift 0, ``align_method="none"``).
    Every such scene has ``align_reliable=False``.  The scene is then resampled onto the
    reference with :func:`cv2.warpAffine` (``WARP_INVERSE_MAP``).

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
        default 1 (no blur) measured best: blurring mixes masked pixels into valid ones and
        30 m scenes are already smooth at the pixel scale.  Raise it for noisy imagery.
    min_correlation
        ECC results with a final correlation coefficient below this are treated as failures.
    interpolation
        Resampling kernel of the warp: ``"linear"`` (bilinear) or ``"cubic"`` (bicubic).
    feature
        What ECC (and the phase-correlation fallback) matches: ``"highpass"`` (default) the
        image minus its Gaussian blur of ``highpass_sigma`` pixels, so that edges and texture
        register the scenes while haze or illumination changes weigh little; ``"gradient"``
        the gradient magnitude (3x3 Sobel); ``"intensity"`` the values themselves (the classic
        ECC).  The scenes are always warped as they are.
    highpass_sigma
        Standard deviation (pixels) of the Gaussian background that ``"highpass"`` (and the
        automatic stable ground) removes.
    passes
        Number of estimates: each pass after the first starts ECC from the previous estimate,
        against the mean of the previously aligned scenes (mean reference) and on the
        automatic stable ground.  ``1`` is the plain single estimate on every usable pixel.
        Only the last pass's shifts and pixels are returned.  A fixed reference (an index or a
        DataArray) takes one pass unless ``auto_stable`` needs two.
    auto_stable
        Find stable ground in the data after the first pass (needs ``passes >= 2``).  False:
        every usable pixel (or the given ``stable``/``outlines``) drives every pass.
    stable_threshold
        Largest temporal texture variability of automatic stable ground (0: identical texture
        in every scene, ~1: unrelated); at least the 20 % most stable pixels are kept.
    stable
        Optional boolean ``(y, x)`` DataArray on the same grid, True on ground that does not
        move.  Only those pixels drive the estimate; every pixel is warped.
    outlines
        Optional glacier outlines (GeoJSON path or dict, RGI polygons, shapely geometries, a
        GeoDataFrame), rasterised on the cube's grid (which needs a CRS), buffered by
        ``outlines_buffer`` metres and excluded from the stable ground.  See
        :func:`glacierxr.stable.rasterize_outlines`.
    outlines_buffer
        Outward buffer of the outlines in the grid's units (metres).
    outlines_crs
        CRS of ``outlines`` when they do not declare one (default WGS 84 longitude/latitude).
    margin
        Pixels next to missing data (cloud, no-data edges, holes of the reference) within this
        many pixels do not drive the estimate: their feature image mixes in the fill.
    min_stable_fraction
        Smallest share of the scene's pixels that must drive the estimate; below it the scene
        is not shifted and flagged unreliable.
    unreliable
        What becomes of scenes with ``align_reliable=False``: ``"keep"`` (default, flagged
        only), ``"nan"`` (their pixels become NaN, lazily) or ``"drop"`` (removed from the time
        axis; this computes the registration when ``align`` is called).
    observed
        Name of a boolean coordinate on the scenes' dims (as :func:`glacierxr.fill_gaps` adds),
        True where a pixel was observed and False where it was interpolated.  Interpolated
        pixels neither build the mean reference nor drive the estimate; they are warped with
        the rest, and the coordinate is warped along.  Ignored when the array has no such
        coordinate; ``None`` to use every finite pixel.
    time_dim, y_dim, x_dim
        Names of the dimensions.

    Returns
    -------
    xarray.DataArray
        Same name, attrs, dims and coords as ``da`` (integer input becomes ``float32``), with
        per-time coordinates ``shift_x`` and ``shift_y`` (pixels; the content displacement of
        the scene relative to the reference: +x right/east, +y down the rows),
        ``ecc_correlation``, ``converged`` (ECC accepted), ``align_method`` (``"ecc"``,
        ``"phase"`` or ``"none"``), ``stable_pixels`` and ``stable_fraction`` (the pixels that
        drove the estimate), ``align_residual`` (RMS of the aligned feature image minus the
        reference's on those pixels, relative to the reference's RMS) and ``align_reliable``;
        a ``(y, x)`` coordinate ``align_stable`` with the stable ground of the last pass (when
        there was any restriction).  ``attrs["align_stable_flag"]`` says where the stable
        ground came from, as ITS_LIVE's ``stable_shift_flag``: 0 none, 1 the user's mask or
        outlines (with the automatic ground when ``auto_stable``), 2 automatic only.  The
        other parameters are recorded in ``attrs["align_*"]``.

        Border handling: a pixel of the output is NaN when any source pixel that its
        interpolation kernel touches was missing or lies outside the scene, so a scene shifted
        by ``s`` pixels loses a border about ``ceil(|s|)`` pixels wide.

    Raises
    ------
    DimensionError
        ``da`` lacks one of the dimensions, or a given reference is not on ``da``'s grid.
    ChunkingError
        ``y`` or ``x`` is split across Dask chunks (fix: ``.chunk({"y": -1, "x": -1})``).
    DataTypeError
        ``da`` is not numeric, or ``stable`` is not a boolean DataArray.
    GridError
        A reference or ``stable`` of another size or with other coordinates; ``outlines`` on a
        grid without CRS.
    ConfigError
        A keyword that is not one of its choices (``motion``, ``feature``, ``interpolation``,
        ``unreliable``, ``reference``, ``auto_stable``), a number out of range, an unreadable
        outlines file, or a non-boolean ``observed``.
    NoScenesError
        ``time_dim`` has length 0.

    Notes
    -----
    Why this design (measured with ``benchmarks/coreg.py`` and the truth tests in
    ``tests/test_align.py``; RMSE of recovered minus true shifts after removing the common
    offset):

    * **Real glacier** (Yahtse, Landsat-8 pan, 15 m; the tongue moves ~13 px in 16 days).
      The two scenes (a 850 x 1200 px crop) alternated six times, each frame displaced by a
      known random shift (+-2 px, cubic spline, 40 px border cropped).  The two real scenes
      are themselves offset by (0.07, 0.18) px on the rock (independent Lucas-Kanade tie
      points in the test; ``align`` finds the same), so the truth is the applied shift plus
      that offset.  Default: **0.020 px**; with 20 % of the pixels under cloud blobs 0.019 px.
      Every usable pixel in both passes (``auto_stable=False``, the previous default): 0.059 /
      0.070 px; one pass: 0.162 px.  Against the applied shifts alone every method is off by
      about half the pair's offset (default 0.092 px, previous default 0.153 px).
    * **Sample** (the DESIGN chain to ``align``, 96 x 96 px, 2 years): 0.034 px (0.035 without
      the automatic ground); glacier on half of a 192 x 192 px scene: 0.044 px (0.064).
    * **Cost.**  The first pass runs at half resolution (2 x 2 block means; as accurate here,
      since it only has to find the stable ground and a sharper mean): 1.5-1.6 x the seconds
      per scene of one plain full-resolution pass, 0.7-1.0 x the previous two-pass default
      (two runs on a shared machine).
    * **Alternatives measured** (on the previous full-resolution first pass).  A stable mask
      from the temporal standard deviation of the values removes the static edges that carry
      the registration; the texture variability used here is normalised by the local texture
      energy, so a rock edge that is the same in every scene is stable however strong it is.
      A per-scene mask from the local correlation of each scene with the reference (instead
      of one mask from the whole stack) measured 0.049 / 0.067 px on Yahtse against 0.025 /
      0.035.  Thresholds 0.05 / 0.2 instead of 0.1: 0.025 / 0.037 px; keeping at least 20 %
      (not 5 %) of the pixels costs 0.003 px on Yahtse and saves the samples whose snow
      changes everywhere.  Tie points on a grid with outlier rejection (AROSICS-like) serve
      the tests as the independent reference; as the estimator they need hundreds of small
      estimates per scene where one masked ECC over all stable pixels does.
    * **Limits.**  The automatic ground needs the moving or changing part to be a minority of
      the scene's texture: with half a scene moving, nothing in the data says which half is
      rock -- give ``outlines`` (or ``stable``) there.  Where nothing is clearly stable (under
      0.5 % of the pixels within ``stable_threshold``, e.g. snow changing all over a small
      scene) every usable pixel drives the second pass again: taking the least changing 20 %
      there measured worse (half-glacier sample at 128 x 128 px: 0.18 px; now 0.10 px, every
      pixel 0.097 px).  At 96 x 96 px that sample is out of reach for any mask (0.154 px; the
      truth's own stable ground gives 0.24 px: too little rock texture).

    Examples
    --------
    >>> import numpy as np, scipy.ndimage as ndi
    >>> from glacierxr.testing import make_series, smooth_texture
    >>> texture = smooth_texture(0, 64)   # periodic, so a wrapped shift moves it exactly
    >>> moved = ndi.shift(texture, (0.0, 1.5), mode="grid-wrap")   # content 1.5 px to the right
    >>> cube = make_series(np.stack([texture, moved]), name="ndsi")
    >>> out = align(cube, reference=0)
    >>> [round(float(s), 1) for s in out.shift_x.values]
    [0.0, 1.5]
    >>> out.align_method.values.tolist(), out.align_reliable.values.tolist()
    (['ecc', 'ecc'], [True, True])

    References
    ----------
    Evangelidis, G. D., & Psarakis, E. Z. (2008). Parametric image alignment using enhanced
    correlation coefficient maximization. IEEE TPAMI, 30(10), 1858-1865.
    """
    options = dict(locals())
    dims = (time_dim, y_dim, x_dim)
    settings = _check_options(da, options, dims)
    out_dtype = np.dtype(da.dtype) if np.issubdtype(da.dtype, np.floating) else np.dtype(np.float32)
    data = da if da.dtype == out_dtype else da.astype(out_dtype)
    # the input's own coordinates are put back at the end; keep them out of the kernels' inputs
    data = data.drop_vars([c for c in data.coords if c not in data.dims])
    ref, reference_attr = _resolve_reference(reference, data, dims)
    user_stable, flag = resolve_stable(da, stable=stable, outlines=outlines, buffer=outlines_buffer,
                                       crs=outlines_crs, what="align", y_dim=y_dim, x_dim=x_dim)
    observed_mask = _observed_mask(da, observed, time_dim, y_dim, x_dim)
    auto = bool(auto_stable) and int(passes) >= 2
    n_passes = int(passes) if (ref is None or auto) else 1
    result = _run_passes(data, ref, user_stable, observed_mask, n_passes, auto, float(stable_threshold),
                         dims, out_dtype, settings)
    flag = FLAG_AUTO if auto and flag == FLAG_NONE else flag
    attrs = dict(settings._asdict(), reference=reference_attr, passes=n_passes, stable_flag=flag,
                 first_pass="half resolution" if auto else "full resolution",
                 stable_mask=stable is not None, outlines=outlines is not None,
                 auto_stable=auto, stable_threshold=float(stable_threshold),
                 observed_mask=observed_mask is not None)
    out = _describe(da, result, observed if observed_mask is not None else None, attrs, dims)
    return _apply_unreliable(out, unreliable, time_dim)


def _describe(da: xr.DataArray, result: _Passes, observed: Hashable | None, attrs: dict,
              dims: tuple[str, str, str]) -> xr.DataArray:
    """The warped scenes with ``da``'s coords and attrs, the per-scene table and ``align_*`` attrs."""
    time_dim, y_dim, x_dim = dims
    coords = {}
    for name, (_, units, long_name) in _PER_SCENE.items():
        value = result.per_scene[name]
        value = value.drop_vars([c for c in value.coords if c not in value.dims])
        value.attrs = {"units": units, "long_name": long_name} if units else {"long_name": long_name}
        coords[name] = value
    if result.stable is not None:
        stable = result.stable.drop_vars([c for c in result.stable.coords if c not in (y_dim, x_dim)])
        coords["align_stable"] = stable.assign_attrs(long_name="stable ground that drove the last pass")
    # the input's own coordinates (with their attrs: spatial_ref carries the CRS) come back
    original = {name: c for name, c in da.coords.items() if name not in da.dims and name not in coords}
    if observed is not None:
        coords[observed] = result.warped_observed.transpose(*da[observed].dims).assign_attrs(da[observed].attrs)
    out = result.warped.transpose(*da.dims).assign_coords({**original, **coords})
    out.name = da.name
    out.attrs = dict(da.attrs)
    out.attrs.update({f"align_{key}": value for key, value in attrs.items() if key != "coarse"})
    return out


def _apply_unreliable(out: xr.DataArray, unreliable: str, time_dim: str) -> xr.DataArray:
    """Keep, blank (lazily) or drop (computing the flags) the scenes that are not reliable."""
    if unreliable == "nan":
        return out.where(out.align_reliable)
    if unreliable == "drop":
        return out.isel({time_dim: np.flatnonzero(np.asarray(out.align_reliable.values))})
    return out


def _mean_reference(da: xr.DataArray, time_dim: str) -> xr.DataArray:
    """Temporal mean of the valid pixels; NaN where a pixel is never valid (no warning)."""
    total = da.sum(time_dim, skipna=True)
    count = da.count(time_dim)
    return total / count.where(count > 0)


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
