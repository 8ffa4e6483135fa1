"""Facts about Landsat Collection-2 Level-2 products that several stages share.

Asset keys differ between Planetary Computer's current ``landsat-c2-l2`` collection and the
deprecated ``landsat-8-c2-l2`` one; everything inside glacierxr uses the canonical (current) keys.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "PC_STAC_API",
    "COLLECTIONS",
    "ASSET_ALIASES",
    "SR_SCALE",
    "SR_OFFSET",
    "SR_NODATA",
    "QA_BITS",
    "QA_CONFIDENCE_BITS",
    "QA_CONFIDENCE_LEVELS",
    "QA_FILL",
    "DEFAULT_MASKED_FLAGS",
    "EO_BANDS",
    "resolve_asset_key",
    "asset_file_suffix",
    "qa_word",
]

#: Planetary Computer's STAC API, the default catalog of :func:`glacierxr.search`.
PC_STAC_API = "https://planetarycomputer.microsoft.com/api/stac/v1"

#: Collections glacierxr understands.
COLLECTIONS = ("landsat-c2-l2", "landsat-8-c2-l2")

#: canonical band name -> asset keys it may have, in order of preference.
ASSET_ALIASES: Mapping[str, tuple[str, ...]] = {
    "coastal": ("coastal", "SR_B1"),
    "blue": ("blue", "SR_B2"),
    "green": ("green", "SR_B3"),
    "red": ("red", "SR_B4"),
    "nir08": ("nir08", "SR_B5"),
    "swir16": ("swir16", "SR_B6"),
    "swir22": ("swir22", "SR_B7"),
    "qa_pixel": ("qa_pixel", "QA_PIXEL"),
}

#: Collection-2 surface reflectance: reflectance = DN * SR_SCALE + SR_OFFSET; DN 0 is nodata.
SR_SCALE = 2.75e-05
SR_OFFSET = -0.2
SR_NODATA = 0

#: QA_PIXEL single-bit flags (Collection 2).
QA_BITS: Mapping[str, int] = {
    "fill": 0,
    "dilated_cloud": 1,
    "cirrus": 2,
    "cloud": 3,
    "cloud_shadow": 4,
    "snow": 5,
    "clear": 6,
    "water": 7,
}

#: QA_PIXEL two-bit confidence fields (Collection 2): flag -> offset of the field's low bit.
QA_CONFIDENCE_BITS: Mapping[str, int] = {"cloud": 8, "cloud_shadow": 10, "snow": 12, "cirrus": 14}

#: Values of a confidence field (2 is "medium" for cloud, reserved for the others).
QA_CONFIDENCE_LEVELS: Mapping[str, int] = {"not_set": 0, "low": 1, "medium": 2, "high": 3}

#: QA_PIXEL of a pixel without data (the fill bit alone); the nodata value of the QA asset.
QA_FILL = 1 << QA_BITS["fill"]

#: ``eo:bands`` entries of the surface-reflectance assets (OLI band, wavelengths in micrometres).
EO_BANDS: Mapping[str, Mapping[str, object]] = {
    "green": {"name": "OLI_B3", "common_name": "green", "description": "Visible green",
              "center_wavelength": 0.56, "full_width_half_max": 0.06},
    "swir16": {"name": "OLI_B6", "common_name": "swir16", "description": "Short-wave infrared",
               "center_wavelength": 1.61, "full_width_half_max": 0.09},
}

#: Flags masked by :func:`glacierxr.qa.mask` unless told otherwise (snow and water are kept).
DEFAULT_MASKED_FLAGS = ("fill", "dilated_cloud", "cirrus", "cloud", "cloud_shadow")


def resolve_asset_key(assets: Mapping[str, object], band: str) -> str | None:
    """Return the asset key under which ``band`` is stored in ``assets``, or None.

    Examples
    --------
    >>> resolve_asset_key({"SR_B3": {}, "SR_B6": {}}, "green")
    'SR_B3'
    >>> resolve_asset_key({"green": {}}, "green")
    'green'
    >>> resolve_asset_key({"green": {}}, "swir16") is None
    True
    """
    for key in ASSET_ALIASES.get(band, (band,)):
        if key in assets:
            return key
    return None


def asset_file_suffix(band: str) -> str:
    """The USGS file-name suffix of a band's GeoTIFF (the last, Collection-2 asset key).

    Examples
    --------
    >>> asset_file_suffix("green"), asset_file_suffix("qa_pixel")
    ('SR_B3', 'QA_PIXEL')
    """
    return ASSET_ALIASES[band][-1]


def qa_word(*flags: str, confidence: Mapping[str, str] | None = None) -> int:
    """Compose one QA_PIXEL value from single-bit flag names and confidence levels.

    Parameters
    ----------
    *flags
        Names of :data:`QA_BITS` to set.
    confidence
        Confidence field (a key of :data:`QA_CONFIDENCE_BITS`) -> level (a key of
        :data:`QA_CONFIDENCE_LEVELS`).

    Examples
    --------
    >>> qa_word("fill")
    1
    >>> qa_word("cloud", "dilated_cloud", confidence={"cloud": "high"}) == (1 << 3) | (1 << 1) | (3 << 8)
    True
    """
    word = 0
    for flag in flags:
        word |= 1 << QA_BITS[flag]
    for field, level in (confidence or {}).items():
        word |= QA_CONFIDENCE_LEVELS[level] << QA_CONFIDENCE_BITS[field]
    return word
