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
    "DEFAULT_MASKED_FLAGS",
    "resolve_asset_key",
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
