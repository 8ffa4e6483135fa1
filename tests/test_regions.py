"""Tests of glacierxr.regions: the named-glacier registry."""

from __future__ import annotations

import pytest

from glacierxr.errors import CatalogError
from glacierxr.regions import REGIONS, Region, get_region, list_regions


def test_get_region__parvati_is_the_papers_box():
    region = get_region("parvati")
    assert region.bbox == (77.488, 31.993, 77.821, 32.225)
    assert region.country == "India"


@pytest.mark.parametrize("name", ["ALETSCH", " Aletsch ", "aletsch"])
def test_get_region__is_case_insensitive(name):
    assert get_region(name) is REGIONS["aletsch"]


def test_get_region__region_passes_through():
    region = REGIONS["khumbu"]
    assert get_region(region) is region


@pytest.mark.parametrize("name", list(REGIONS))
def test_regions__boxes_are_valid_and_hold_a_glacier_sized_area(name):
    region = REGIONS[name]
    west, south, east, north = region.bbox
    assert -180 <= west < east <= 180 and -90 <= south < north <= 90
    # a glacier with margin: between ~1 km and ~100 km across
    assert 0.01 < east - west < 1.5 and 0.01 < north - south < 1.0
    assert region.name == name and region.display_name and region.country and region.notes
    lon, lat = region.center
    assert west < lon < east and south < lat < north


def test_regions__aletsch_box_holds_konkordiaplatz():
    # Konkordiaplatz, where the firn streams of the Great Aletsch Glacier meet: ~8.05 E 46.50 N
    west, south, east, north = get_region("aletsch").bbox
    assert west < 8.05 < east and south < 46.50 < north


def test_regions__yahtse_box_is_the_footprint_of_the_real_image_pair(shared_data):
    import rasterio
    from rasterio.warp import transform_bounds

    path = next((shared_data / "yahtse_l8_pan").glob("*.TIF"))
    with rasterio.open(path) as src:
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    box = get_region("yahtse").bbox
    assert box == pytest.approx((west, south, east, north), abs=0.015)


def test_list_regions__sorted_names():
    names = list_regions()
    assert names == sorted(REGIONS) and {"parvati", "aletsch"} <= set(names)


def test_get_region__unknown_name_lists_known_ones():
    with pytest.raises(CatalogError) as info:
        get_region("atlantis")
    message = str(info.value)
    assert "'atlantis'" in message and "'parvati'" in message and "bbox=" in message
    with pytest.raises(CatalogError, match="must be a string"):
        get_region(42)


def test_region__rejects_a_bad_box():
    with pytest.raises(CatalogError, match="invalid bbox"):
        Region(name="x", bbox=(10.0, 50.0, 9.0, 51.0), display_name="X", country="Y")


def test_registry__is_read_only():
    with pytest.raises(TypeError):
        REGIONS["new"] = REGIONS["parvati"]  # type: ignore[index]


def _registry_file():
    from importlib import resources

    return resources.files("glacierxr").joinpath("data/regions.toml")


def test_registry__the_data_file_is_the_single_source():
    """Every table of data/regions.toml is a region, read as written, with a valid box."""
    import tomllib

    tables = tomllib.loads(_registry_file().read_text(encoding="utf-8"))
    assert list(tables) == list(REGIONS)
    for name, entry in tables.items():
        west, south, east, north = entry["bbox"]
        assert west < east and south < north, name
        region = REGIONS[name]
        assert region.bbox == tuple(entry["bbox"]) and isinstance(region.bbox, tuple)
        assert (region.display_name, region.country, region.notes) == (
            entry["display_name"], entry["country"], entry.get("notes", "")
        )


def test_package_data__the_data_files_ship_in_the_wheel():
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).parents[1]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["glacierxr"]
    files = [path.relative_to(root / "glacierxr").as_posix() for path in (root / "glacierxr" / "data").iterdir()]
    assert "data/regions.toml" in files and "data/cf.toml" in files
    for name in files:  # every data file the package reads (regions, CF table) is package data
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[x]\nbbox = [10.0, 50.0, 9.0, 51.0]\ndisplay_name = 'X'\ncountry = 'Y'\n", "invalid bbox"),
        ("[x]\nbbox = [1, 2, 3]\ndisplay_name = 'X'\ncountry = 'Y'\n", r"\[x\] bbox must be"),
        ("[x]\nbbox = [1, 2, 3, 4]\ncountry = 'Y'\n", r"\[x\] must hold bbox, country, display_name"),
        ("[x]\nbbox = [1, 2, 3, 4]\ndisplay_name = 'X'\ncountry = 'Y'\nnote = ''\n", "must hold"),
        ("[x\n", "not valid TOML"),
    ],
)
def test_registry__a_bad_data_file_is_refused_by_name(text, match):
    from glacierxr.regions import _parse

    with pytest.raises(CatalogError, match=match):
        _parse(text, source="regions.toml")
