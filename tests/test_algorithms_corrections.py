"""algorithms.corrections: scale/offset, S2 harmonisation, Landsat TOA (real MTL), DOS1, clipping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from algorithms import corrections
from tests import reference as ref

LANDSAT = "landsat-8-l1/LC80200392015216LGN00"
S2_ITEM = "sentinel-2-l2a-timeseries/S2B_33TWM_20230813_0_L2A"
OLI_BANDS = (1, 2, 3, 4, 5, 6, 7, 9)


@pytest.fixture(scope="module")
def mtl(shared_data):
    return corrections.parse_mtl((shared_data / LANDSAT / "MTL.txt").read_text())


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
@pytest.mark.parametrize("shape", [(5, 7), (3, 5, 7)])
def test_scale_offset_dtypes(dtype, shape):
    rng = np.random.default_rng(0)
    lo, hi = {np.uint8: (0, 255), np.uint16: (0, 65535), np.int16: (-32768, 32767)}.get(dtype, (-3e4, 3e4))
    dn = rng.integers(lo, hi, shape, endpoint=True).astype(dtype)
    dn.flat[:3] = 0
    for nodata in (0, None):
        out = corrections.scale_offset(dn, 0.0001, -0.1, nodata)
        assert out.dtype == np.float32 and out.shape == shape
        np.testing.assert_array_equal(out, ref.scale_offset(dn, 0.0001, -0.1, nodata))
    assert np.isnan(corrections.scale_offset(dn, 2.0, 0.0, 0).flat[:3]).all()


def test_scale_offset_nan_and_per_band():
    dn = np.array([[[1.0, np.nan]], [[3.0, 4.0]]], np.float32)
    out = corrections.scale_offset(dn, [1.0, 10.0], [0.0, 1.0])
    np.testing.assert_array_equal(out, [[[1.0, np.nan]], [[31.0, 41.0]]])
    with pytest.raises(ValueError, match="per-band"):
        corrections.scale_offset(dn[0], [1.0, 10.0])
    with pytest.raises(TypeError):
        corrections.scale_offset(np.array(["a"]))


def test_parse_mtl(mtl):
    assert mtl["SUN_ELEVATION"] == 64.74360932
    assert mtl["REFLECTANCE_MULT_BAND_4"] == 2.0e-5 and mtl["REFLECTANCE_ADD_BAND_4"] == -0.1
    assert mtl["LANDSAT_SCENE_ID"] == "LC80200392015216LGN00"
    assert mtl["K1_CONSTANT_BAND_10"] == 774.8853


@pytest.mark.parametrize("band", OLI_BANDS)
def test_landsat_toa_matches_the_mtl_formula(shared_data, mtl, band):
    with rasterio.open(shared_data / LANDSAT / f"B{band}.tif") as src:
        dn = src.read(1)
    mult, add = mtl[f"REFLECTANCE_MULT_BAND_{band}"], mtl[f"REFLECTANCE_ADD_BAND_{band}"]
    toa = corrections.landsat_toa_reflectance(dn, mult, add, mtl["SUN_ELEVATION"])
    expected = ref.landsat_toa(dn, mult, add, mtl["SUN_ELEVATION"])
    assert toa.dtype == np.float32
    np.testing.assert_allclose(toa, expected, rtol=0, atol=1e-4, equal_nan=True)
    assert np.nanmax(np.abs(toa - expected)) < 1e-7  # in fact float32 rounding only
    assert np.nanmin(toa) > -0.1 and np.nanmax(toa) < 1.3


def test_landsat_toa_per_band_stack(shared_data, mtl):
    bands = (2, 3, 4)
    dn = np.stack([rasterio.open(shared_data / LANDSAT / f"B{b}.tif").read(1) for b in bands])
    mult = [mtl[f"REFLECTANCE_MULT_BAND_{b}"] for b in bands]
    add = [mtl[f"REFLECTANCE_ADD_BAND_{b}"] for b in bands]
    stacked = corrections.landsat_toa_reflectance(dn, mult, add, mtl["SUN_ELEVATION"])
    for i in range(len(bands)):
        np.testing.assert_array_equal(
            stacked[i], corrections.landsat_toa_reflectance(dn[i], mult[i], add[i], mtl["SUN_ELEVATION"]))
    with pytest.raises(ValueError):
        corrections.landsat_toa_reflectance(dn, mult, add, 0.0)


def test_s2_harmonisation_same_reflectance_before_and_after_baseline_4(shared_data):
    item = shared_data / S2_ITEM
    props = json.loads((item / f"{item.name}.json").read_text())["properties"]
    assert props["earthsearch:boa_offset_applied"] is True and props["s2:processing_baseline"] == "05.09"
    with rasterio.open(item / "B04.tif") as src:
        dn = src.read(1)  # offset already applied: DN = reflectance * 10000, like a pre-04.00 product
    raw = np.where(dn > 0, dn + 1000, 0).astype(np.uint16)  # the same scene as ESA ships it from 04.00 on
    as_old = corrections.s2_reflectance(dn, "02.14", offset_applied=False)
    as_new = corrections.s2_reflectance(raw, "05.09", offset_applied=False)
    as_shipped = corrections.s2_reflectance(dn, props["s2:processing_baseline"],
                                            offset_applied=props["earthsearch:boa_offset_applied"])
    np.testing.assert_array_equal(as_new, as_old)
    np.testing.assert_array_equal(as_shipped, as_old)
    np.testing.assert_allclose(as_old, ref.scale_offset(dn, 1e-4, 0.0, 0), rtol=1e-6)
    # never twice: the shipped data's red over vegetation stays a plausible ~0.03, not negative
    with rasterio.open(item / "SCL.tif") as src:
        vegetation = src.read(1) == 4
    assert 0.015 < np.median(as_shipped[vegetation]) < 0.06


def test_s2_dn_offset_rules():
    assert corrections.s2_dn_offset("05.09", offset_applied=False) == -1000.0
    assert corrections.s2_dn_offset("N0400", offset_applied=False) == -1000.0
    assert corrections.s2_dn_offset(4.0, offset_applied=False) == -1000.0
    assert corrections.s2_dn_offset("03.01", offset_applied=False) == 0.0
    assert corrections.s2_dn_offset("05.09", offset_applied=True) == 0.0
    assert corrections.s2_dn_offset("02.14", offset_applied=True) == 0.0
    with pytest.raises(ValueError):
        corrections.s2_dn_offset("five", offset_applied=False)


def test_dos1_one_dark_value_per_scene(shared_data, mtl):
    """The dark value comes from an overview once; every tile then gets the same correction."""
    with rasterio.open(shared_data / LANDSAT / "B1.tif") as src:
        assert src.overviews(1), "COG without overviews"
        overview = src.read(1, out_shape=(src.height // 2, src.width // 2))
        full = src.read(1)
        tiles = [src.read(1, window=Window(c, r, 256, 256)) for r in (0, 200) for c in (0, 256, 300)]
    toa = lambda dn: corrections.landsat_toa_reflectance(  # noqa: E731
        dn, mtl["REFLECTANCE_MULT_BAND_1"], mtl["REFLECTANCE_ADD_BAND_1"], mtl["SUN_ELEVATION"])
    dark = corrections.dark_object_values(toa(overview))
    assert dark.shape == (1,) and 0.05 < dark[0] < 0.2  # coastal band haze
    # per-tile dark values disagree: that is what computing it once avoids
    assert len({float(corrections.dark_object_values(toa(t))[0]) for t in tiles}) > 1
    # the overview's dark value is close to the full-resolution one
    assert abs(dark[0] - corrections.dark_object_values(toa(full))[0]) < 0.005
    for tile in tiles:  # every tile is shifted by the same haze
        shift = toa(tile).astype(np.float64) - corrections.dos1(toa(tile), dark)
        np.testing.assert_allclose(shift, dark[0] - 0.01, rtol=0, atol=1e-7)
    # overlapping tiles agree exactly where they overlap (columns 300-511 of rows 0-255)
    a = corrections.dos1(toa(tiles[1]), dark)[:, 44:]
    b = corrections.dos1(toa(tiles[2]), dark)[:, :212]
    np.testing.assert_array_equal(a, b)


def test_dark_object_values_rules():
    image = np.arange(1, 10001, dtype=np.float32).reshape(1, 100, 100)
    image[0, 0, :5] = np.nan
    assert corrections.dark_object_values(image, fraction=0.0)[0] == 6.0  # NaN ignored
    valid = np.ones((100, 100), bool)
    valid[0] = False
    assert corrections.dark_object_values(image, valid, fraction=0.0)[0] == 101.0
    assert corrections.dark_object_values(image, valid, fraction=0.01)[0] == 101.0 + 98
    assert np.isnan(corrections.dark_object_values(image, np.zeros((100, 100), bool))[0])
    with pytest.raises(ValueError):
        corrections.dos1(image, [np.nan])
    per_band = corrections.dos1(np.full((2, 1, 1), 0.2, np.float32), [0.05, 0.11])
    np.testing.assert_allclose(per_band.ravel(), [0.16, 0.1], rtol=1e-6)


def test_clip_to_range():
    x = np.array([-0.2, 0.0, 0.5, 1.0, 1.7, np.nan], np.float32)
    np.testing.assert_array_equal(corrections.clip_to_range(x), [0, 0, 0.5, 1, 1, np.nan])
    np.testing.assert_array_equal(corrections.clip_to_range(x, out_of_range="nan"),
                                  [np.nan, 0, 0.5, 1, np.nan, np.nan])
    assert corrections.clip_to_range(x, -1, 2).dtype == np.float32
    with pytest.raises(ValueError):
        corrections.clip_to_range(x, out_of_range="wrap")
