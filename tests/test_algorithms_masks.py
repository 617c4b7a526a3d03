"""algorithms.masks: real SCL / cloud probability / BQA layers, Collection 2 bits, dilation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from algorithms import masks
from tests import reference as ref


def _read(path):
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.fixture(scope="module")
def timeseries(shared_data):
    """[(item json, SCL, cloud probability)] for the five 33TWM dates."""
    out = []
    for item in sorted((shared_data / "sentinel-2-l2a-timeseries").glob("S2*_L2A")):
        stac = json.loads((item / f"{item.name}.json").read_text())
        out.append((stac, _read(item / "SCL.tif"), _read(item / "CLDPRB.tif")))
    return out


def test_scl_cloud_cover_reproduces_eo_cloud_cover(timeseries):
    for stac, scl, _ in timeseries:
        expected = stac["properties"]["eo:cloud_cover"]
        assert round(masks.scl_cloud_cover(scl), 2) == expected, stac["id"]
        # the same figure from scl_valid with the cloud classes and no data as invalid
        data = scl != 0
        cloud = data & ~masks.scl_valid(scl, masks.SCL_CLOUD | {0})
        assert round(100 * cloud.sum() / data.sum(), 2) == expected


def test_scl_valid_real(timeseries):
    scl = np.stack([s for _, s, _ in timeseries])  # 3-D [T, H, W]
    valid = masks.scl_valid(scl)
    assert valid.dtype == bool and valid.shape == scl.shape
    np.testing.assert_array_equal(valid, ref.scl_valid(scl))
    np.testing.assert_array_equal(masks.scl_valid(scl[2]), valid[2])  # 2-D
    with_snow = masks.scl_valid(scl, masks.DEFAULT_SCL_INVALID | {masks.SCL_SNOW_ICE})
    np.testing.assert_array_equal(with_snow, ref.scl_valid(scl, (0, 1, 3, 8, 9, 10, 11)))
    assert not valid[scl == 0].any()
    assert valid[np.isin(scl, [2, 4, 5, 6, 7, 11])].all()
    # other integer dtypes and float SCL (NaN = invalid) give the same answer
    np.testing.assert_array_equal(masks.scl_valid(scl.astype(np.int16)), valid)
    as_float = scl[0].astype(np.float32)
    as_float[:10] = np.nan
    expected = valid[0].copy()
    expected[:10] = False
    np.testing.assert_array_equal(masks.scl_valid(as_float), expected)


def test_cloud_probability_real(timeseries):
    for _, scl, prob in timeseries:
        for threshold in (10, 50):
            valid = masks.cloud_probability_valid(prob, threshold)
            np.testing.assert_array_equal(valid, (prob < threshold) & (prob != 255))
            # 255 outside the footprint (except the 0-2 pixels per item whose SCL 12 became 0)
            assert valid[scl == 0].sum() <= 2
        assert masks.cloud_probability_valid(prob, 256, nodata=None).all()
    probabilities = np.array([[0, 19, 20, 100], [255, 5, np.nan, 50]], np.float32)
    np.testing.assert_array_equal(masks.cloud_probability_valid(probabilities, 20),
                                  [[True, True, False, False], [False, True, False, False]])


def test_bqa_real(shared_data):
    bqa = _read(shared_data / "landsat-8-l1" / "LC80200392015216LGN00" / "BQA.tif")
    np.testing.assert_array_equal(masks.bqa_valid(bqa), ref.bqa_valid(bqa))
    # README: high cloud 6.02 %, medium or high 14.86 %, high cirrus 31.17 % of the crop
    masked = lambda **kw: round(100 * (~masks.bqa_valid(bqa, **kw)).mean(), 2)  # noqa: E731
    assert masked(cloud=3, cirrus=None) == 6.02
    assert masked(cloud=2, cirrus=None) == 14.86
    assert masked(cloud=None, cirrus=3) == 31.17
    assert masked(cloud=None, cirrus=None) == 0.0  # no fill in the crop
    for kw in ({"cloud": 1, "cirrus": None, "snow": 2}, {"cloud": None, "cirrus": 2, "snow": 1}):
        np.testing.assert_array_equal(masks.bqa_valid(bqa, **kw), ref.bqa_valid(bqa, **kw))
    # README examples: 20480 clear, 53248 cloud high, 61440 cloud and cirrus high
    assert masks.bqa_valid(np.array([20480, 53248, 61440, 1, 2, 4], np.uint16)).tolist() == [
        True, False, False, False, False, False]
    with pytest.raises(ValueError):
        masks.bqa_valid(bqa, cloud=4)
    with pytest.raises(TypeError):
        masks.bqa_valid(bqa.astype(np.float32))


# Landsat 8-9 Collection 2 QA_PIXEL: value built from its bits, and expected validity (defaults)
QA_PIXEL = {
    "clear land (21824)": (1 << 6 | 0b0101010100000000, True),
    "clear water (21952)": (1 << 6 | 1 << 7 | 0b0101010100000000, True),
    "fill": (1, False),
    "dilated cloud": (1 << 1 | 0b0101010100000000, False),
    "cirrus": (1 << 2 | 0b1101010100000000, False),
    "cloud (22280)": (1 << 3 | 0b0101011100000000, False),
    "cloud shadow": (1 << 4 | 0b0101110100000000, False),
    "snow": (1 << 5 | 0b0111010100000000, True),
}


def test_qa_pixel_bits():
    assert QA_PIXEL["clear land (21824)"][0] == 21824 and QA_PIXEL["cloud (22280)"][0] == 22280
    values = np.array([v for v, _ in QA_PIXEL.values()], np.uint16)
    assert masks.qa_pixel_valid(values).tolist() == [ok for _, ok in QA_PIXEL.values()]
    relaxed = masks.qa_pixel_valid(values, dilated_cloud=False, cirrus=False, cloud_shadow=False, snow=True)
    assert relaxed.tolist() == [True, True, False, True, True, False, True, False]


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.uint16, hnp.array_shapes(min_dims=2, max_dims=3, max_side=6)),
       st.booleans(), st.booleans(), st.booleans(), st.booleans())
def test_property_qa_pixel(qa, dilated, cirrus, shadow, snow):
    flags = {"dilated_cloud": dilated, "cirrus": cirrus, "cloud_shadow": shadow, "snow": snow}
    np.testing.assert_array_equal(masks.qa_pixel_valid(qa, **flags), ref.qa_pixel_valid(qa, **flags))


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.uint16, hnp.array_shapes(min_dims=2, max_dims=3, max_side=6)),
       st.sampled_from([None, 1, 2, 3]), st.sampled_from([None, 1, 2, 3]), st.sampled_from([None, 1, 2, 3]))
def test_property_bqa(bqa, cloud, cirrus, snow):
    np.testing.assert_array_equal(masks.bqa_valid(bqa, cloud=cloud, cirrus=cirrus, snow=snow),
                                  ref.bqa_valid(bqa, cloud, cirrus, snow))


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=3, max_side=6), elements=st.integers(0, 12)),
       st.sets(st.integers(0, 12)))
def test_property_scl(scl, invalid):
    np.testing.assert_array_equal(masks.scl_valid(scl, invalid), ref.scl_valid(scl, invalid))


def test_dilate_example():
    valid = np.ones((7, 9), bool)
    valid[3, 4] = False
    grown = masks.dilate_invalid(valid, 2)
    expected = np.ones((7, 9), bool)
    expected[1:6, 2:7] = False  # a 5 x 5 square: Chebyshev distance <= 2
    np.testing.assert_array_equal(grown, expected)
    np.testing.assert_array_equal(masks.dilate_invalid(valid, 0), valid)
    assert masks.dilate_invalid(np.ones((3, 3), bool), 5).all()  # beyond the edge counts as valid
    with pytest.raises(ValueError):
        masks.dilate_invalid(valid, -1)


def test_dilate_real_scl(timeseries):
    valid = masks.scl_valid(np.stack([s[200:328, 200:328] for _, s, _ in timeseries]))
    for pixels in (1, 3):
        grown = masks.dilate_invalid(valid, pixels)
        np.testing.assert_array_equal(grown, ref.dilate_invalid(valid, pixels))
        assert (grown <= valid).all() and grown.sum() < valid.sum()


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=3, max_side=9)), st.integers(0, 4))
def test_property_dilate(valid, pixels):
    grown = masks.dilate_invalid(valid, pixels)
    assert grown.shape == valid.shape and grown.dtype == bool
    np.testing.assert_array_equal(grown, ref.dilate_invalid(valid, pixels))
    assert (grown <= valid).all()  # only shrinks valid areas
    assert (masks.dilate_invalid(valid, pixels + 1) <= grown).all()  # monotone in the distance
