"""The .glacier accessor: every method is its stage function, with that function's signature."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

import glacierxr  # noqa: F401  (registers .glacier)
from glacierxr.accessor import GlacierDataArrayAccessor, GlacierDatasetAccessor
from glacierxr.testing import make_scene_cube, make_series

# method -> stage function, as the accessor's docstring table lists them
DATASET_METHODS = {"mask": "glacierxr.qa:mask", "ndsi": "glacierxr.indices:ndsi"}
DATAARRAY_METHODS = {
    "snow_mask": "glacierxr.indices:snow_mask",
    "fill_gaps": "glacierxr.gapfill:fill_gaps",
    "align": "glacierxr.align:align",
    "monthly": "glacierxr.composite:monthly",
    "flow": "glacierxr.flow:flow",
    "select_pairs": "glacierxr.velocity:select_pairs",
    "velocity_cube": "glacierxr.velocity:velocity_cube",
    "predict": "glacierxr.ml.predict:predict",
}


def _function(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _every_method():
    ds = make_scene_cube(times=2, height=4, width=4)
    da = make_series(np.zeros((2, 4, 4), dtype="float32"))
    for name, target in DATASET_METHODS.items():
        yield ds, name, target
    for name, target in DATAARRAY_METHODS.items():
        yield da, name, target


def test_accessor__lists_every_public_method():
    def public(cls):
        return {name for name in vars(cls) if not name.startswith("_")}

    assert public(GlacierDatasetAccessor) == set(DATASET_METHODS)
    assert public(GlacierDataArrayAccessor) == set(DATAARRAY_METHODS)


@pytest.mark.parametrize(("obj", "name", "target"), list(_every_method()), ids=lambda v: v if isinstance(v, str) else "")
def test_accessor__method_has_the_stage_signature_without_its_first_parameter(obj, name, target):
    function = _function(target)
    method = getattr(obj.glacier, name)
    expected = list(inspect.signature(function).parameters.values())[1:]
    assert list(inspect.signature(method).parameters.values()) == expected
    assert expected, "a stage takes options"
    assert method.__doc__ == function.__doc__ and method.__name__ == function.__name__
    assert inspect.signature(method).return_annotation == inspect.signature(function).return_annotation


def test_accessor__help_shows_the_parameters():
    import pydoc

    da = make_series(np.zeros((2, 4, 4), dtype="float32"))
    text = pydoc.render_doc(da.glacier.align, renderer=pydoc.plaintext)
    assert "max_shift" in text and "reference" in text and "**kwargs" not in text


def test_accessor__forwards_the_object_and_every_argument():
    cube = make_scene_cube(times=3, height=8, width=8, cloud_fraction=0.1)
    xr.testing.assert_identical(cube.glacier.mask(max_missing=0.9, drop=False),
                                glacierxr.qa.mask(cube, max_missing=0.9, drop=False))
    ndsi = cube.glacier.ndsi()
    xr.testing.assert_identical(ndsi.glacier.snow_mask(threshold=0.4, binary=True),
                                glacierxr.indices.snow_mask(ndsi, threshold=0.4, binary=True))
    with pytest.raises(TypeError, match="unexpected keyword"):
        ndsi.glacier.snow_mask(treshold=0.4)  # a typo is caught, not swallowed by **kwargs


def test_accessor__import_stays_cheap():
    """Importing glacierxr loads no stage module behind the accessor (nor torch or OpenCV)."""
    code = (
        "import sys, glacierxr, numpy as np\n"
        "from glacierxr.testing import make_series\n"
        "da = make_series(np.zeros((2, 4, 4)))\n"
        "before = {m for m in ('torch', 'cv2', 'glacierxr.ml.predict', 'glacierxr.align', 'glacierxr.flow') if m in sys.modules}\n"
        "da.glacier.align\n"
        "after = 'glacierxr.align' in sys.modules and 'torch' not in sys.modules\n"
        "print(sorted(before), after)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "True"]


def test_accessor__a_stage_that_cannot_be_imported_fails_when_called_not_when_looked_at():
    from glacierxr.accessor import _Step

    class Accessor:
        __slots__ = ("_obj",)

        def __init__(self, obj):
            self._obj = obj

        missing = _Step("glacierxr.not_a_module:stage")

    accessor = Accessor(1)
    method = accessor.missing  # looking (tab completion, help) does not raise
    assert method.__name__ == "missing" and "not importable" in method.__doc__
    with pytest.raises(ModuleNotFoundError, match="glacierxr.not_a_module"):
        method()
