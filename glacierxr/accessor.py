"""The ``.glacier`` accessor on :class:`xarray.Dataset` and :class:`xarray.DataArray`.

The accessor is deliberately thin (like xbatcher's ``.batch``): each method forwards the wrapped
object and its keywords to a pure function in the module of that stage, and holds no state.
xarray rebuilds an accessor for every new object, so nothing could be kept here anyway.

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

import xarray as xr

__all__ = ["GlacierDatasetAccessor", "GlacierDataArrayAccessor"]


@xr.register_dataset_accessor("glacier")
class GlacierDatasetAccessor:
    """Glacier processing steps that need several bands (``ds.glacier``)."""

    __slots__ = ("_obj",)

    def __init__(self, obj: xr.Dataset) -> None:
        self._obj = obj

    def mask(self, **kwargs) -> xr.Dataset:
        """QA_PIXEL masking and scene dropping; see :func:`glacierxr.qa.mask`."""
        from glacierxr.qa import mask

        return mask(self._obj, **kwargs)

    def ndsi(self, **kwargs) -> xr.DataArray:
        """Normalised Difference Snow Index; see :func:`glacierxr.indices.ndsi`."""
        from glacierxr.indices import ndsi

        return ndsi(self._obj, **kwargs)


@xr.register_dataarray_accessor("glacier")
class GlacierDataArrayAccessor:
    """Glacier processing steps on one variable (``da.glacier``)."""

    __slots__ = ("_obj",)

    def __init__(self, obj: xr.DataArray) -> None:
        self._obj = obj

    def snow_mask(self, **kwargs) -> xr.DataArray:
        """NDSI snow mask; see :func:`glacierxr.indices.snow_mask`."""
        from glacierxr.indices import snow_mask

        return snow_mask(self._obj, **kwargs)

    def fill_gaps(self, **kwargs) -> xr.DataArray:
        """Normalised-convolution gap filling; see :func:`glacierxr.gapfill.fill_gaps`."""
        from glacierxr.gapfill import fill_gaps

        return fill_gaps(self._obj, **kwargs)

    def align(self, **kwargs) -> xr.DataArray:
        """ECC co-registration to the mean image; see :func:`glacierxr.align.align`."""
        from glacierxr.align import align

        return align(self._obj, **kwargs)

    def monthly(self, months: int = 1, **kwargs) -> xr.DataArray:
        """N-month composites; see :func:`glacierxr.composite.monthly`."""
        from glacierxr.composite import monthly

        return monthly(self._obj, months=months, **kwargs)

    def flow(self, **kwargs) -> xr.Dataset:
        """Farnebäck dense optical flow; see :func:`glacierxr.flow.flow`."""
        from glacierxr.flow import flow

        return flow(self._obj, **kwargs)

    def select_pairs(
        self,
        *,
        min_days: float = 5.0,
        max_days: float = 64.0,
        min_clear: float | None = 0.5,
        ice: xr.DataArray | None = None,
        months=None,
        time_dim="time",
        y_dim="y",
        x_dim="x",
    ):
        """Image pairs usable for velocity (a DataFrame); see :func:`glacierxr.velocity.select_pairs`."""
        from glacierxr.velocity import select_pairs

        return select_pairs(self._obj, min_days=min_days, max_days=max_days, min_clear=min_clear, ice=ice,
                            months=months, time_dim=time_dim, y_dim=y_dim, x_dim=x_dim)

    def velocity_cube(self, pairs=None, *, time_dim="time", y_dim="y", x_dim="x", **flow_kwargs) -> xr.Dataset:
        """Velocity of many pairs along ``mid_date``, lazily; see :func:`glacierxr.velocity.velocity_cube`.

        ``flow_kwargs`` go to :func:`glacierxr.flow.flow` for every pair.
        """
        from glacierxr.velocity import velocity_cube

        return velocity_cube(self._obj, pairs, time_dim=time_dim, y_dim=y_dim, x_dim=x_dim, **flow_kwargs)

    def predict(self, model, **kwargs) -> xr.DataArray:
        """Full-scene forecast; see :func:`glacierxr.ml.predict.predict`."""
        from glacierxr.ml.predict import predict

        return predict(self._obj, model, **kwargs)
