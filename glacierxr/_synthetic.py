"""The one synthetic scene writer: how glacierxr's synthetic data encodes Landsat C2 L2 outputs.

Three generators share it: :mod:`glacierxr.sample` (COGs and a STAC catalog on disk),
:mod:`glacierxr.testing` (small in-memory cubes) and ``benchmarks/large_region.py`` (lazy blocks
made on Dask workers). Each renders reflectance and surface / sky masks its own way; turning those
into Landsat Collection-2 Level-2 outputs happens here, once:

* QA_PIXEL words painted from snow / water / shadow / cirrus / dilated-cloud / cloud / fill masks
  (:class:`QAWords`, one set of words per generator: :data:`SAMPLE_QA`, :data:`PLAIN_QA`,
  :data:`BLOCK_QA`);
* reflectance -> uint16 DN (:func:`to_dn`), or NaN at fill for float cubes (:func:`blank`);
* one band of a scene as a Cloud-Optimized GeoTIFF with the band's nodata, plus its STAC asset
  fields as Planetary Computer writes them (:func:`write_band_asset`, :func:`asset_fields`).

The Landsat facts themselves (bit positions, scale / offset, nodata, asset keys) live in
:mod:`glacierxr.landsat`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glacierxr.landsat import (
    EO_BANDS,
    QA_BITS,
    QA_CONFIDENCE_BITS,
    QA_FILL,
    SR_NODATA,
    SR_OFFSET,
    SR_SCALE,
    asset_file_suffix,
    qa_word,
)

__all__ = ["QAWords", "SAMPLE_QA", "PLAIN_QA", "BLOCK_QA", "to_dn", "blank", "write_cog",
           "asset_fields", "write_band_asset", "COG_MEDIA_TYPE"]

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
_DN_MAX = 65535


@dataclass(frozen=True)
class QAWords:
    """The QA_PIXEL value written for each surface and sky state.

    :meth:`encode` paints them in this order, a later state winning where masks overlap:
    ``clear`` everywhere, then ``water``, ``snow`` (snow or ice), ``cloud_shadow``, ``cirrus``,
    ``dilated_cloud`` (``dilated_shadow`` where it lies over a shadow), ``cloud``, ``fill``.
    """

    clear: int
    snow: int
    water: int
    cloud_shadow: int
    cirrus: int
    dilated_cloud: int
    dilated_shadow: int
    cloud: int
    fill: int = QA_FILL

    def encode(
        self,
        shape: tuple[int, ...],
        *,
        snow: np.ndarray | None = None,
        water: np.ndarray | None = None,
        cloud_shadow: np.ndarray | None = None,
        cirrus: np.ndarray | None = None,
        dilated_cloud: np.ndarray | None = None,
        cloud: np.ndarray | None = None,
        fill: np.ndarray | None = None,
    ) -> np.ndarray:
        """A uint16 QA_PIXEL array of ``shape`` from boolean masks (None: nowhere).

        Examples
        --------
        >>> PLAIN_QA.encode((3,), cloud=np.array([True, False, False]),
        ...                 fill=np.array([False, False, True])).tolist()
        [10, 64, 1]
        """
        qa = np.full(shape, self.clear, np.uint16)
        if dilated_cloud is not None and cloud_shadow is not None:
            dilated_shadow = dilated_cloud & cloud_shadow
        else:
            dilated_shadow = None
        for mask, word in ((water, self.water), (snow, self.snow),
                           (cloud_shadow, self.cloud_shadow), (cirrus, self.cirrus),
                           (dilated_cloud, self.dilated_cloud),
                           (dilated_shadow, self.dilated_shadow), (cloud, self.cloud),
                           (fill, self.fill)):
            if mask is not None:
                qa[mask] = word
        return qa


_LOW = {field: "low" for field in QA_CONFIDENCE_BITS}

#: The sample's words (:mod:`glacierxr.sample`), as USGS writes them: every confidence field is
#: set, low unless its flag is set (then high); snow and water pixels stay clear.
SAMPLE_QA = QAWords(
    clear=qa_word("clear", confidence=_LOW),
    snow=qa_word("clear", "snow", confidence={**_LOW, "snow": "high"}),
    water=qa_word("clear", "water", confidence=_LOW),
    cloud_shadow=qa_word("clear", "cloud_shadow", confidence={**_LOW, "cloud_shadow": "high"}),
    cirrus=qa_word("clear", "cirrus", confidence={**_LOW, "cirrus": "high"}),
    dilated_cloud=qa_word("dilated_cloud", confidence=_LOW),
    dilated_shadow=qa_word("dilated_cloud", "cloud_shadow",
                           confidence={**_LOW, "cloud_shadow": "high"}),
    cloud=qa_word("cloud", confidence={**_LOW, "cloud": "high"}),
)

#: Single bits only, no confidence fields (:func:`glacierxr.testing.make_scene_cube`); a shadow
#: pixel is not clear and a cloud is dilated cloud too.
PLAIN_QA = QAWords(
    clear=qa_word("clear"),
    snow=qa_word("snow", "clear"),
    water=qa_word("water", "clear"),
    cloud_shadow=qa_word("cloud_shadow"),
    cirrus=qa_word("cirrus"),
    dilated_cloud=qa_word("dilated_cloud"),
    dilated_shadow=qa_word("dilated_cloud", "cloud_shadow"),
    cloud=qa_word("cloud", "dilated_cloud"),
)

#: The large-region benchmark's words (``benchmarks/large_region.py``): the cloud confidence
#: field everywhere but in shadows, whose own confidence is high.
BLOCK_QA = QAWords(
    clear=qa_word("clear", confidence={"cloud": "low"}),
    snow=qa_word("clear", "snow", confidence={"cloud": "low"}),
    water=qa_word("clear", "water", confidence={"cloud": "low"}),
    cloud_shadow=qa_word("clear", "cloud_shadow", confidence={"cloud_shadow": "high"}),
    cirrus=qa_word("clear", "cirrus", confidence={"cloud": "low", "cirrus": "high"}),
    dilated_cloud=qa_word("dilated_cloud", confidence={"cloud": "low"}),
    dilated_shadow=qa_word("dilated_cloud", "cloud_shadow",
                           confidence={"cloud": "low", "cloud_shadow": "high"}),
    cloud=qa_word("cloud", "dilated_cloud", confidence={"cloud": "high"}),
)


def to_dn(reflectance: np.ndarray, fill: np.ndarray | None = None) -> np.ndarray:
    """Collection-2 surface-reflectance DNs: rounded, clipped to [1, 65535], nodata at ``fill``.

    Examples
    --------
    >>> to_dn(np.array([-0.2, 0.0, 0.5, 9.0]), np.array([False, False, False, True])).tolist()
    [1, 7273, 25455, 0]
    """
    dn = np.clip(np.rint((reflectance - SR_OFFSET) / SR_SCALE), 1, _DN_MAX).astype(np.uint16)
    if fill is not None:
        dn[fill] = SR_NODATA
    return dn


def blank(fill: np.ndarray, *bands: np.ndarray) -> tuple[np.ndarray, ...]:
    """Float reflectance bands with NaN at ``fill`` (how :func:`glacierxr.load` shows nodata).

    Examples
    --------
    >>> blank(np.array([True, False]), np.array([0.5, 0.5], np.float32))[0].tolist()
    [nan, 0.5]
    """
    return tuple(np.where(fill, np.nan, band) for band in bands)


def write_cog(path: Path, data: np.ndarray, transform, crs, nodata: int | None) -> None:
    """Write one integer band as a DEFLATE-compressed COG (256 px tiles, nearest overviews).

    The file has ``data``'s dtype (uint16 for Landsat DNs); ``nodata=None`` declares none.
    """
    import rasterio

    h, w = data.shape
    blocksize = 256  # images up to 256 px are one tile (no overviews, fast to write)
    with rasterio.open(
        path, "w", driver="COG", width=w, height=h, count=1, dtype=data.dtype.name, crs=crs,
        transform=transform, nodata=nodata, compress="DEFLATE", predictor=2,
        blocksize=blocksize, overview_resampling="nearest", num_threads=1,
    ) as dst:
        dst.write(data, 1)


def _bitfields() -> list[dict]:
    """``classification:bitfields`` of the QA_PIXEL asset (Collection-2 layout)."""
    # flag: (class name when set, description, meaning of 0, meaning of 1)
    single = {
        "fill": ("fill", "Image or fill data", "Image data", "Fill data"),
        "dilated_cloud": ("dilated", "Dilated cloud", "Cloud is not dilated or no cloud", "Cloud dilation"),
        "cirrus": ("cirrus", "Cirrus mask", "Cirrus confidence is not high", "High confidence cirrus"),
        "cloud": ("cloud", "Cloud mask", "Cloud confidence is not high", "High confidence cloud"),
        "cloud_shadow": ("shadow", "Cloud shadow mask", "Cloud shadow confidence is not high",
                         "High confidence cloud shadow"),
        "snow": ("snow", "Snow/Ice mask", "Snow/Ice confidence is not high", "High confidence snow cover"),
        "clear": ("clear", "Clear mask", "Cloud or dilated cloud bits are set",
                  "Cloud and dilated cloud bits are not set"),
        "water": ("water", "Water mask", "Land or cloud", "Water"),
    }
    fields = []
    for name, (short, description, zero, one) in single.items():
        fields.append({
            "name": name, "length": 1, "offset": QA_BITS[name], "description": description,
            "classes": [{"name": f"not_{short}", "value": 0, "description": zero},
                        {"name": short, "value": 1, "description": one}],
        })
    pairs = [("cloud_confidence", "cloud", "cloud", "medium"),
             ("cloud_shadow_confidence", "cloud_shadow", "cloud shadow", "reserved"),
             ("snow_confidence", "snow", "snow/ice", "reserved"),
             ("cirrus_confidence", "cirrus", "cirrus", "reserved")]
    for name, field, what, two in pairs:
        two_desc = f"Medium confidence {what}" if two == "medium" else "Reserved - value not used"
        fields.append({
            "name": name, "length": 2, "offset": QA_CONFIDENCE_BITS[field],
            "description": f"{what.capitalize()} confidence levels",
            "classes": [{"name": "not_set", "value": 0, "description": "No confidence level set"},
                        {"name": "low", "value": 1, "description": f"Low confidence {what}"},
                        {"name": two, "value": 2, "description": two_desc},
                        {"name": "high", "value": 3, "description": f"High confidence {what}"}],
        })
    return fields


#: Titles of the surface-reflectance assets (Planetary Computer's wording).
_SR_TITLES = {"green": "Green Band", "swir16": "Short-wave Infrared Band 1.6"}


def asset_fields(key: str, resolution: float) -> dict:
    """STAC asset fields of band ``key`` (``green``, ``swir16`` or ``qa_pixel``), as on PC.

    Examples
    --------
    >>> fields = asset_fields("green", 30.0)
    >>> fields["raster:bands"][0]["scale"], fields["raster:bands"][0]["nodata"]
    (2.75e-05, 0)
    >>> asset_fields("qa_pixel", 30.0)["raster:bands"][0]["nodata"]
    1
    """
    if key == "qa_pixel":
        return {
            "type": COG_MEDIA_TYPE,
            "roles": ["cloud", "cloud-shadow", "snow-ice", "water-mask"],
            "title": "Pixel Quality Assessment Band",
            "description": "Collection 2 Level-1 Pixel Quality Assessment Band (QA_PIXEL)",
            "classification:bitfields": _bitfields(),
            "raster:bands": [{"unit": "bit index", "nodata": QA_FILL, "data_type": "uint16",
                              "spatial_resolution": resolution}],
        }
    title = _SR_TITLES[key]
    return {
        "type": COG_MEDIA_TYPE,
        "roles": ["data", "reflectance"],
        "title": title,
        "description": (f"Collection 2 Level-2 {title} ({asset_file_suffix(key)}) "
                        "Surface Reflectance"),
        "eo:bands": [dict(EO_BANDS[key])],
        "raster:bands": [{"scale": SR_SCALE, "nodata": SR_NODATA, "offset": SR_OFFSET,
                          "data_type": "uint16", "spatial_resolution": resolution}],
    }


def write_band_asset(item, key: str, data: np.ndarray, item_dir: Path, transform, crs,
                     resolution: float) -> Path:
    """Write band ``key`` of a scene as ``<item id>_<suffix>.TIF`` and add it to the STAC item.

    The COG's nodata is the band's (DN 0 for reflectance, the fill bit for QA_PIXEL); the asset
    carries :func:`asset_fields` and an absolute href (made relative when the catalog is saved).
    """
    import pystac

    path = item_dir / f"{item.id}_{asset_file_suffix(key)}.TIF"
    write_cog(path, data, transform, crs, QA_FILL if key == "qa_pixel" else SR_NODATA)
    fields = asset_fields(key, resolution)
    item.add_asset(key, pystac.Asset(
        href=str(path.resolve()), title=fields.pop("title"),
        description=fields.pop("description"), media_type=fields.pop("type"),
        roles=fields.pop("roles"), extra_fields=fields,
    ))
    return path
