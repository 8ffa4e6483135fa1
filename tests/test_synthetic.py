"""Tests of glacierxr._synthetic: the one writer of synthetic Landsat C2 L2 outputs."""

from __future__ import annotations

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine

from glacierxr._synthetic import BLOCK_QA, PLAIN_QA, SAMPLE_QA, blank, to_dn, write_band_asset
from glacierxr.landsat import QA_BITS, SR_OFFSET, SR_SCALE

STYLES = {"sample": SAMPLE_QA, "plain": PLAIN_QA, "block": BLOCK_QA}


def _flags(word: int) -> set[str]:
    """Single-bit flags set in a QA_PIXEL word, decoded here with the Collection-2 bit table."""
    return {name for name, bit in QA_BITS.items() if (int(word) >> bit) & 1}


def _confidence(word: int, offset: int) -> int:
    return (int(word) >> offset) & 0b11


@pytest.mark.parametrize("style", STYLES)
def test_every_word_carries_the_flags_of_its_state(style):
    words = STYLES[style]
    assert _flags(words.fill) == {"fill"}
    assert "clear" in _flags(words.clear) and not _flags(words.clear) & {"cloud", "dilated_cloud", "fill"}
    assert {"snow", "clear"} <= _flags(words.snow)
    assert {"water", "clear"} <= _flags(words.water)
    assert "cloud_shadow" in _flags(words.cloud_shadow)
    assert "cirrus" in _flags(words.cirrus)
    assert "dilated_cloud" in _flags(words.dilated_cloud) and "clear" not in _flags(words.dilated_cloud)
    assert {"dilated_cloud", "cloud_shadow"} <= _flags(words.dilated_shadow)
    assert "cloud" in _flags(words.cloud) and "clear" not in _flags(words.cloud)
    # the Collection-2 rule: clear means neither cloud nor dilated cloud
    for word in (words.clear, words.snow, words.water, words.cloud_shadow, words.cirrus):
        assert not _flags(word) & {"cloud", "dilated_cloud"}


def test_sample_words_set_high_confidence_only_for_their_flag():
    # cloud 8-9, cloud shadow 10-11, snow 12-13, cirrus 14-15 (Collection 2 QA_PIXEL)
    assert [_confidence(SAMPLE_QA.clear, o) for o in (8, 10, 12, 14)] == [1, 1, 1, 1]
    assert [_confidence(SAMPLE_QA.cloud, o) for o in (8, 10, 12, 14)] == [3, 1, 1, 1]
    assert [_confidence(SAMPLE_QA.cloud_shadow, o) for o in (8, 10, 12, 14)] == [1, 3, 1, 1]
    assert [_confidence(SAMPLE_QA.snow, o) for o in (8, 10, 12, 14)] == [1, 1, 3, 1]
    assert [_confidence(SAMPLE_QA.cirrus, o) for o in (8, 10, 12, 14)] == [1, 1, 1, 3]


def test_encode_paints_later_states_over_earlier_ones():
    # pixels: clear, snow, snow under shadow, shadow under dilated cloud, snow under cloud, fill
    snow = np.array([0, 1, 1, 0, 1, 1], bool)
    shadow = np.array([0, 0, 1, 1, 0, 0], bool)
    dilated = np.array([0, 0, 0, 1, 0, 0], bool)
    cloud = np.array([0, 0, 0, 0, 1, 1], bool)
    fill = np.array([0, 0, 0, 0, 0, 1], bool)
    qa = SAMPLE_QA.encode((6,), snow=snow, cloud_shadow=shadow, dilated_cloud=dilated,
                          cloud=cloud, fill=fill)
    w = SAMPLE_QA
    assert qa.dtype == np.uint16
    assert qa.tolist() == [w.clear, w.snow, w.cloud_shadow, w.dilated_shadow, w.cloud, w.fill]


def test_to_dn_inverts_the_collection2_scaling_within_half_a_step():
    rng = np.random.default_rng(0)
    reflectance = rng.uniform(-0.19, 1.5, 1000)
    fill = rng.random(1000) < 0.1
    dn = to_dn(reflectance, fill)
    assert dn.dtype == np.uint16
    assert (dn[fill] == 0).all() and (dn[~fill] >= 1).all()
    back = dn[~fill] * SR_SCALE + SR_OFFSET
    assert np.abs(back - reflectance[~fill]).max() <= SR_SCALE / 2 + 1e-12
    assert to_dn(np.array([-1.0, 10.0])).tolist() == [1, 65535]  # clipped, 0 stays nodata


def test_blank_sets_nan_at_fill_only():
    fill = np.array([True, False, False])
    green, swir = blank(fill, np.array([0.1, 0.2, 0.3], np.float32), np.array([1.0, 2.0, 3.0]))
    assert green.dtype == np.float32
    assert np.isnan(green[0]) and green[1:].tolist() == pytest.approx([0.2, 0.3])
    assert np.isnan(swir[0]) and swir[1:].tolist() == [2.0, 3.0]


@pytest.mark.parametrize("key, nodata", [("green", 0), ("qa_pixel", 1)])
def test_write_band_asset_writes_a_georeferenced_cog_and_its_asset(tmp_path, key, nodata):
    transform = Affine(30.0, 0.0, 600_000.0, 0.0, -30.0, 3_960_000.0)
    data = np.arange(40 * 50, dtype=np.uint16).reshape(40, 50)
    item = pystac.Item("LC08_TEST", None, None, "2020-01-01T00:00:00Z", {})
    path = write_band_asset(item, key, data, tmp_path, transform, "EPSG:32643", 30.0)
    assert path.name == f"LC08_TEST_{'SR_B3' if key == 'green' else 'QA_PIXEL'}.TIF"
    with rasterio.open(path) as src:
        assert src.nodata == nodata and src.crs.to_epsg() == 32643 and src.transform == transform
        assert src.profile.get("compress", "").lower() == "deflate"
        np.testing.assert_array_equal(src.read(1), data)
    asset = item.assets[key]
    assert asset.href == str(path.resolve())
    assert asset.extra_fields["raster:bands"][0]["nodata"] == nodata
    if key == "green":
        assert asset.extra_fields["raster:bands"][0]["scale"] == SR_SCALE
        assert asset.extra_fields["eo:bands"][0]["common_name"] == "green"
    else:
        offsets = {f["name"]: f["offset"] for f in asset.extra_fields["classification:bitfields"]}
        assert offsets["cloud"] == 3 and offsets["cloud_confidence"] == 8
