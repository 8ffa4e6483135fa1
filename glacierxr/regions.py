"""A small registry of named glaciers, so that ``search(glacier="parvati", ...)`` just works.

Every region is a :class:`Region` whose ``bbox`` is ``(west, south, east, north)`` in
degrees of longitude and latitude (EPSG:4326), the order STAC and :func:`glacierxr.search`
use. The boxes are meant to enclose the glacier with a margin of surrounding terrain (stable
ground helps alignment); they are approximate and are not glacier outlines. The registry's
entries live in one data file, ``glacierxr/data/regions.toml``; adding a glacier is adding a
table there.

Examples
--------
>>> from glacierxr.regions import get_region, list_regions
>>> get_region("Parvati").bbox
(77.488, 31.993, 77.821, 32.225)
>>> "aletsch" in list_regions()
True
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
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


#: The registry's data file, inside the package (shipped as package data).
_DATA = "data/regions.toml"
_REQUIRED = {"bbox", "display_name", "country"}
_FIELDS = _REQUIRED | {"notes"}


def _parse(text: str, source: str) -> MappingProxyType:
    """The regions of a registry file's ``text``: one TOML table a region, keyed by its name."""
    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise CatalogError(f"{source}: not valid TOML ({error}).") from error
    regions = {}
    for name, entry in tables.items():
        if not isinstance(entry, dict) or not _REQUIRED <= set(entry) <= _FIELDS:
            raise CatalogError(
                f"{source}: [{name}] must hold {', '.join(sorted(_REQUIRED))} and optionally "
                f"notes, got {entry!r}."
            )
        bbox = entry["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise CatalogError(f"{source}: [{name}] bbox must be [west, south, east, north], got {bbox!r}.")
        regions[name] = Region(name=name, **{**entry, "bbox": tuple(float(v) for v in bbox)})
    return MappingProxyType(regions)


def _load() -> MappingProxyType:
    text = resources.files("glacierxr").joinpath(_DATA).read_text(encoding="utf-8")
    return _parse(text, source=f"glacierxr/{_DATA}")


#: name -> :class:`Region`, read from the package's ``data/regions.toml``; read-only.
REGIONS = _load()


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
