"""algorithms.statistics against numpy on the same masked pixels: real SCL-masked reflectance and random arrays."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from algorithms import masks, statistics
from tests import reference as ref


def assert_same(got: list[statistics.BandStatistics], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.count == e["count"]
        for name in ("min", "max", "median"):
            np.testing.assert_array_equal(getattr(g, name), e[name], err_msg=name)
        for name in ("mean", "sum", "std"):
            np.testing.assert_allclose(getattr(g, name), e[name], rtol=1e-9, atol=1e-12, err_msg=name)
        assert list(g.percentiles) == list(e["percentiles"])
        np.testing.assert_array_equal(list(g.percentiles.values()), list(e["percentiles"].values()))
        assert g.histogram[0] == e["histogram"][0]
        np.testing.assert_array_equal(g.histogram[1], e["histogram"][1])


@pytest.fixture(scope="module")
def cloudy_scene(shared_data):
    """33TWM on 18 August (42 % cloud): reflectance [4, H, W] (NaN = no data) and SCL-clear pixels."""
    folder = shared_data / "sentinel-2-l2a-timeseries" / "S2A_33TWM_20230818_0_L2A"
    bands = []
    for name in ("B02", "B03", "B04", "B08"):
        with rasterio.open(folder / f"{name}.tif") as src:
            dn = src.read(1)
        bands.append(np.where(dn == 0, np.nan, dn * 1e-4).astype(np.float32))
    with rasterio.open(folder / "SCL.tif") as src:
        clear = masks.scl_valid(src.read(1))
    return np.stack(bands), clear


def test_band_statistics_real_scene_under_the_cloud_mask(cloudy_scene):
    values, clear = cloudy_scene
    got = statistics.band_statistics(values, clear, percentiles=(2, 25, 75, 98), bins=20)
    assert_same(got, ref.band_statistics(values, clear, (2, 25, 75, 98), 20))
    assert 0 < got[0].count < clear.size  # the mask removed the clouds
    assert got[0].valid_percent == pytest.approx(100 * got[0].count / clear.sum())


def test_band_statistics_histogram_range_and_edges(cloudy_scene):
    values, clear = cloudy_scene
    got = statistics.band_statistics(values, clear, bins=8, histogram_range=(0.0, 0.4))
    assert_same(got, ref.band_statistics(values, clear, bins=8, histogram_range=(0.0, 0.4)))
    edges = [0.0, 0.02, 0.05, 0.1, 0.2, 0.5]
    got = statistics.band_statistics(values, clear, bins=edges)
    assert_same(got, ref.band_statistics(values, clear, bins=edges))


def test_band_statistics_empty_and_constant_bands():
    values = np.full((2, 3, 3), np.nan, np.float32)
    values[1] = 0.25
    inside = np.ones((3, 3), bool)
    got = statistics.band_statistics(values, inside)
    assert_same(got, ref.band_statistics(values, inside))
    assert got[0].count == 0 and np.isnan(got[0].mean) and got[0].pixels == 9
    assert got[1].std == 0 and got[1].histogram[0][5] == 9  # numpy widens a constant range by ±0.5


def test_band_statistics_rejects_bad_arguments():
    values = np.zeros((1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="percentiles"):
        statistics.band_statistics(values, percentiles=(101,))
    with pytest.raises(ValueError, match="edges"):
        statistics.band_statistics(values, bins=[1.0, 0.5])
    with pytest.raises(ValueError, match="inside"):
        statistics.band_statistics(values, np.ones((3, 3), bool))


@settings(max_examples=60, deadline=None)
@given(
    values=hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12)),
                      elements=st.floats(-5, 5, width=32) | st.just(np.nan)),
    data=st.data(),
    bins=st.integers(1, 12),
    q=st.lists(st.floats(0, 100), min_size=0, max_size=4),
)
def test_band_statistics_random(values, data, bins, q):
    inside = data.draw(hnp.arrays(np.bool_, values.shape[1:]))
    assert_same(statistics.band_statistics(values, inside, q, bins), ref.band_statistics(values, inside, q, bins))


def test_zonal_summary_real_time_series(shared_data):
    """NDVI of the five 33TWM dates over a window, SCL-masked."""
    folder = shared_data / "sentinel-2-l2a-timeseries"
    window = rasterio.windows.Window(100, 300, 200, 150)
    values, valid, data = [], [], []
    for item in sorted(folder.glob("S2*_L2A")):
        read = {}
        for name in ("B04", "B08", "SCL"):
            with rasterio.open(item / f"{name}.tif") as src:
                read[name] = src.read(1, window=window)
        red, nir = (np.where(read[b] == 0, np.nan, read[b] * 1e-4).astype(np.float32) for b in ("B04", "B08"))
        values.append([(nir - red) / (nir + red)])
        data.append(np.isfinite(red) & np.isfinite(nir))
        valid.append(masks.scl_valid(read["SCL"]) & data[-1])
    values, valid, data = np.array(values, np.float32), np.array(valid), np.array(data)
    inside = np.zeros(values.shape[2:], bool)
    inside[20:120, 30:170] = True
    got = statistics.zonal_summary(values, valid, data, inside)
    expected = ref.zonal_summary(values, valid, data, inside)
    np.testing.assert_allclose(got.mean, expected["mean"], rtol=1e-9)
    for name in ("usable", "masked", "missing"):
        np.testing.assert_array_equal(getattr(got, name), expected[name], err_msg=name)
    assert got.pixels == expected["pixels"] == 100 * 140
    assert (got.usable + got.masked + got.missing == got.pixels).all()
    assert got.masked.max() > 0  # some dates are cloudy there


@settings(max_examples=60, deadline=None)
@given(
    values=hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 8), st.integers(1, 8)),
                      elements=st.floats(-1, 1, width=32) | st.just(np.nan)),
    data=st.data(),
)
def test_zonal_summary_random(values, data):
    t, _, h, w = values.shape
    valid = data.draw(hnp.arrays(np.bool_, (t, h, w)))
    present = data.draw(hnp.arrays(np.bool_, (t, h, w)))
    inside = data.draw(hnp.arrays(np.bool_, (h, w)))
    got = statistics.zonal_summary(values, valid, present, inside)
    expected = ref.zonal_summary(values, valid, present, inside)
    np.testing.assert_allclose(got.mean, expected["mean"], rtol=1e-9, atol=1e-12)
    for name in ("usable", "masked", "missing", "pixels"):
        np.testing.assert_array_equal(getattr(got, name), expected[name], err_msg=name)
