"""A small registry of named glaciers, so that ``search(glacier="parvati", ...)`` just works.

Every region is a :class:`Region` whose ``bbox`` is ``(west, south, east, north)`` in
degrees of longitude and latitude (EPSG:4326), the order STAC and :func:`glacierxr.search`
use. The boxes are meant to enclose the glacier with a margin of surrounding terrain (stable
ground helps alignment); they are approximate and are not glacier outlines.

Examples
--------
>>> from glacierxr.regions import get_region, list_regions
>>> get_region("Parvati").bbox
(77.488, 31.993, 77.821, 32.225)
>>> "aletsch" in list_regions()
True
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from glacierxr.errors import CatalogError

__all__ = ["Region", "REGIONS", "get_region", "list_regions"]


@dataclass(frozen=True)
class Region:
    """A named glacier or glacierised area.

    Parameters
    ----------
    name
        Registry key: lower case, no spaces (``"parvati"``).
    bbox
        ``(west, south, east, north)`` in degrees (EPSG:4326).
    display_name
        Name for people and figure titles.
    country
        Country (or territory) the box lies in.
    notes
        Where the box comes from and what it holds.
    """

    name: str
    bbox: tuple[float, float, float, float]
    display_name: str
    country: str
    notes: str = ""

    def __post_init__(self) -> None:
        west, south, east, north = self.bbox
        if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
            raise CatalogError(
                f"Region {self.name!r} has an invalid bbox {self.bbox}: expected "
                "(west, south, east, north) in degrees with west < east and south < north."
            )

    @property
    def center(self) -> tuple[float, float]:
        """``(lon, lat)`` of the box centre.

        Examples
        --------
        >>> get_region("parvati").center
        (77.6545, 32.109)
        """
        west, south, east, north = self.bbox
        return (round((west + east) / 2, 6), round((south + north) / 2, 6))


def _registry(*regions: Region) -> MappingProxyType:
    return MappingProxyType({region.name: region for region in regions})


#: name -> :class:`Region`; read-only.
REGIONS = _registry(
    Region(
        name="parvati",
        bbox=(77.488, 31.993, 77.821, 32.225),
        display_name="Parvati Glacier",
        country="India",
        notes=(
            "Parvati valley, Kullu district, Himachal Pradesh (western Himalaya); the study "
            "area of the glacier-movement paper glacierxr follows."
        ),
    ),
    Region(
        name="aletsch",
        bbox=(7.90, 46.37, 8.15, 46.58),
        display_name="Great Aletsch Glacier",
        country="Switzerland",
        notes=(
            "Bernese Alps, from the Jungfraujoch firn basins down past Konkordiaplatz to the "
            "tongue above the Massa gorge; the largest glacier of the Alps."
        ),
    ),
    Region(
        name="khumbu",
        bbox=(86.78, 27.92, 86.95, 28.03),
        display_name="Khumbu Glacier",
        country="Nepal",
        notes=(
            "Everest region, Sagarmatha National Park: the Khumbu Icefall and the debris-"
            "covered tongue down to about Lobuche."
        ),
    ),
    Region(
        name="yahtse",
        bbox=(-141.64, 60.12, -141.17, 60.28),
        display_name="Yahtse Glacier",
        country="United States (Alaska)",
        notes=(
            "Fast tidewater glacier at the head of Icy Bay; the box is the footprint of the "
            "real Landsat-8 image pair in ../shared/data/yahtse_l8_pan."
        ),
    ),
    Region(
        name="jakobshavn",
        bbox=(-50.25, 69.05, -49.30, 69.25),
        display_name="Jakobshavn Isbrae (Sermeq Kujalleq)",
        country="Greenland",
        notes=(
            "The fastest outlet glacier of the Greenland ice sheet, from its calving front "
            "in the Ilulissat Icefjord some 40 km inland."
        ),
    ),
)


def list_regions() -> list[str]:
    """Names of the registered regions, sorted.

    Examples
    --------
    >>> list_regions()
    ['aletsch', 'jakobshavn', 'khumbu', 'parvati', 'yahtse']
    """
    return sorted(REGIONS)


def get_region(name: str) -> Region:
    """Look up a region by name (case-insensitive; spaces, ``-`` and ``_`` ignored).

    Parameters
    ----------
    name
        ``"parvati"``, ``"Aletsch"``, ``"Khumbu"`` ... (see :func:`list_regions`); a
        :class:`Region` is returned as it is.

    Returns
    -------
    Region

    Raises
    ------
    CatalogError
        ``name`` is not registered; the message lists the known names.

    Examples
    --------
    >>> get_region("ALETSCH").display_name
    'Great Aletsch Glacier'
    """
    if isinstance(name, Region):
        return name
    if not isinstance(name, str):
        raise CatalogError(
            f"A region name must be a string, got {type(name).__name__}: {name!r}. "
            f"Known regions: {list_regions()}."
        )
    key = "".join(ch for ch in name.strip().lower() if ch not in " -_")
    for region_name, region in REGIONS.items():
        if region_name.replace("_", "") == key:
            return region
    raise CatalogError(
        f"Unknown region {name!r}. Known regions: {list_regions()}. "
        "Pass one of those, or pass bbox=(west, south, east, north) in degrees instead."
    )
