"""The ``.glacier`` accessor on :class:`xarray.Dataset` and :class:`xarray.DataArray`.

The accessor is deliberately thin (like xbatcher's ``.batch``): each method forwards the wrapped
object and its arguments to a pure function in the module of that stage, and holds no state.
xarray rebuilds an accessor for every new object, so nothing could be kept here anyway. Each
method has the signature and docstring of its function (without the first parameter), built on
first use so that importing glacierxr stays cheap.

=====================  ==========================================  =====================
method                 function                                    works on
=====================  ==========================================  =====================
``mask``               :func:`glacierxr.qa.mask`                   Dataset
``ndsi``               :func:`glacierxr.indices.ndsi`              Dataset
``snow_mask``          :func:`glacierxr.indices.snow_mask`         DataArray
``fill_gaps``          :func:`glacierxr.gapfill.fill_gaps`         DataArray
``align``              :func:`glacierxr.align.align`               DataArray
``monthly``            :func:`glacierxr.composite.monthly`         DataArray
``flow``               :func:`glacierxr.flow.flow`                 DataArray
``select_pairs``       :func:`glacierxr.velocity.select_pairs`     DataArray
``velocity_cube``      :func:`glacierxr.velocity.velocity_cube`    DataArray
``predict``            :func:`glacierxr.ml.predict.predict`        DataArray
=====================  ==========================================  =====================
"""

from __future__ import annotations

import functools
import importlib
import inspect

import xarray as xr

from glacierxr.errors import GlacierXRError

__all__ = ["GlacierDatasetAccessor", "GlacierDataArrayAccessor"]


class _Step:
    """An accessor method that forwards the wrapped object to ``module.function``.

    The method is built on first access (``da.glacier.align``, ``help(...)``), not when glacierxr
    is imported, so the stage's module (and PyTorch for ``predict``) loads only when used. It is
    then a plain function on the accessor class with the stage function's name, docstring and
    signature without its first parameter: ``inspect.signature(da.glacier.align)`` and
    ``help(da.glacier.align)`` show :func:`glacierxr.align.align`'s parameters.

    Adding a stage is one line in the accessor class: ``name = _Step("glacierxr.module:function")``.
    """

    def __init__(self, target: str) -> None:
        self.module, self.function = target.split(":")

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, accessor, owner: type):
        try:
            method = self.build(owner)
        except (ImportError, GlacierXRError):  # an optional dependency (PyTorch) is missing:
            method = self.deferred(owner)  # the error is raised by the call, not by looking
        else:
            setattr(owner, self.name, method)  # from now on a plain method of the class
        return method if accessor is None else method.__get__(accessor, owner)

    def deferred(self, owner: type):
        """A method that builds the real one when called (and raises its import error then)."""

        def method(accessor, *args, **kwargs):
            return self.build(owner)(accessor, *args, **kwargs)

        method.__name__ = self.name
        method.__qualname__ = f"{owner.__qualname__}.{self.name}"
        method.__doc__ = f"See :func:`{self.module}.{self.function}` (not importable here)."
        return method

    def build(self, owner: type):
        """The forwarding method, with the stage function's metadata."""
        function = getattr(importlib.import_module(self.module), self.function)

        @functools.wraps(function)
        def method(accessor, *args, **kwargs):
            return function(accessor._obj, *args, **kwargs)

        signature = inspect.signature(function)
        first = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        rest = list(signature.parameters.values())[1:]
        method.__signature__ = signature.replace(parameters=[first, *rest])
        method.__qualname__ = f"{owner.__qualname__}.{self.name}"
        return method


@xr.register_dataset_accessor("glacier")
class GlacierDatasetAccessor:
    """Glacier processing steps that need several bands (``ds.glacier``).

    Methods: ``mask`` (:func:`glacierxr.qa.mask`) and ``ndsi`` (:func:`glacierxr.indices.ndsi`),
    each with the signature of its function without the Dataset.
    """

    __slots__ = ("_obj",)

    def __init__(self, obj: xr.Dataset) -> None:
        self._obj = obj

    mask = _Step("glacierxr.qa:mask")
    ndsi = _Step("glacierxr.indices:ndsi")


@xr.register_dataarray_accessor("glacier")
class GlacierDataArrayAccessor:
    """Glacier processing steps on one variable (``da.glacier``).

    Methods, each with the signature of its function without the DataArray: ``snow_mask``
    (:func:`glacierxr.indices.snow_mask`), ``fill_gaps`` (:func:`glacierxr.gapfill.fill_gaps`),
    ``align`` (:func:`glacierxr.align.align`), ``monthly`` (:func:`glacierxr.composite.monthly`),
    ``flow`` (:func:`glacierxr.flow.flow`), ``select_pairs``
    (:func:`glacierxr.velocity.select_pairs`), ``velocity_cube``
    (:func:`glacierxr.velocity.velocity_cube`) and ``predict``
    (:func:`glacierxr.ml.predict.predict`).
    """

    __slots__ = ("_obj",)

    def __init__(self, obj: xr.DataArray) -> None:
        self._obj = obj

    snow_mask = _Step("glacierxr.indices:snow_mask")
    fill_gaps = _Step("glacierxr.gapfill:fill_gaps")
    align = _Step("glacierxr.align:align")
    monthly = _Step("glacierxr.composite:monthly")
    flow = _Step("glacierxr.flow:flow")
    select_pairs = _Step("glacierxr.velocity:select_pairs")
    velocity_cube = _Step("glacierxr.velocity:velocity_cube")
    predict = _Step("glacierxr.ml.predict:predict")
