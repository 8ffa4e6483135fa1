"""Former home of the OpenCV-stage checks; they live in :mod:`glacierxr._validate` now."""

from __future__ import annotations

from glacierxr._validate import check_single_chunk, require_cv2

__all__ = ["check_single_chunk", "require_cv2"]
