"""algorithms.composite against tests/reference.py: real 33TWM stacks, edge cases, properties."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rasterio.windows import Window

from algorithms import composite, masks
from algorithms.composite import _sorting_network
from tests import reference as ref

BANDS = ("B02", "B03", "B04", "B08")
# rows 128-383, columns 0-383: the R079 no-data wedge, clouds, and ~2,300 pixels never clear
WINDOW = Window(col_off=0, row_off=128, width=384, height=256)
SELECTING = {"first_valid": ref.first_valid, "medoid": ref.medoid}


def _read(path, window=WINDOW):
    with rasterio.open(path) as src:
        return src.read(1, window=window)


@pytest.fixture(scope="module")
def s2(shared_data):
    """uint16 DN stack [5, 4, 256, 384], SCL-based valid [5, 256, 384], in date order."""
    items = sorted((shared_data / "sentinel-2-l2a-timeseries").glob("S2*_L2A"),
                   key=lambda p: p.name.split("_")[2])
    stack = np.stack([np.stack([_read(item / f"{b}.tif") for b in BANDS]) for item in items])
    scl = np.stack([_read(item / "SCL.tif") for item in items])
    return stack, masks.scl_valid(scl)


def assert_same(actual, expected):
    np.testing.assert_array_equal(actual, expected)
    assert actual.dtype == expected.dtype


def assert_close(actual, expected, rtol=1e-5):
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0, equal_nan=True)


# ----------------------------------------------------------------------------- real data


def test_real_stack_covers_the_edge_cases(s2):
    stack, valid = s2
    n = composite.count(valid)
    assert stack.dtype == np.uint16 and stack.shape == (5, 4, 256, 384)
    assert (n == 0).sum() > 1000, "pixels never clear"
    assert (n == 5).sum() > 1000 and (n == 1).sum() > 1000
    assert (~valid[0, :, :50]).all() and valid[1, :, :50].any(), "no-data wedge on 10 August"
    assert_same(n, ref.count(valid))


@pytest.mark.parametrize("name", sorted(SELECTING))
def test_selection_real(s2, name):
    stack, valid = s2
    values, index = getattr(composite, name)(stack, valid, return_index=True)
    expected_values, expected_index = SELECTING[name](stack, valid)
    assert_same(index, expected_index)
    assert_same(values, expected_values)
    assert_same(getattr(composite, name)(stack, valid), expected_values)


def test_max_and_min_score_real(s2):
    stack, valid = s2
    red, nir = stack[:, 2].astype(np.float32), stack[:, 3].astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = (nir - red) / (nir + red)
    values, index = composite.max_score(stack, valid, ndvi, return_index=True)
    expected_values, expected_index = ref.max_score(stack, valid, ndvi)
    assert_same(index, expected_index)
    assert_same(values, expected_values)
    values, index = composite.min_score(stack, valid, stack[:, 0], return_index=True)
    expected_values, expected_index = ref.max_score(stack, valid, -stack[:, 0].astype(np.float64))
    assert_same(index, expected_index)
    assert_same(values, expected_values)


def test_reductions_real(s2):
    stack, valid = s2
    assert_same(composite.median(stack, valid), ref.median(stack, valid))
    assert_close(composite.mean(stack, valid), ref.mean(stack, valid))
    for q in (0, 10, 25, 33.3, 50, 90, 100):
        assert_close(composite.percentile(stack, valid, q), ref.percentile(stack, valid, q))


def test_geomedian_real(s2):
    stack, valid = s2[0][..., 40:88, 40:88], s2[1][..., 40:88, 40:88]  # wedge edge, clouds
    eps = 1e-4
    actual = composite.geomedian(stack, valid, eps=eps)
    expected = ref.geomedian(stack, valid)
    has = composite.count(valid) > 0
    assert np.isnan(actual[:, ~has]).all() and has.sum() > 1000
    norm = np.linalg.norm(expected[:, has].astype(np.float64), axis=0)
    error = np.linalg.norm(actual[:, has].astype(np.float64) - expected[:, has], axis=0)
    assert (error <= eps * norm).all()
    # and it is a minimiser: no worse (to eps) than the exact one or the medoid
    f_actual = ref.sum_of_distances(stack, valid, actual)
    assert (f_actual <= ref.sum_of_distances(stack, valid, expected) * (1 + eps))[has].all()
    assert (f_actual <= ref.sum_of_distances(stack, valid, composite.medoid(stack, valid)) * (1 + eps))[has].all()


def test_nan_is_nodata_in_float_stacks(s2):
    """Reflectance with NaN where SCL is invalid, and no mask, composites like DN + SCL mask."""
    stack, valid = s2[0][..., :96, :96], s2[1][..., :96, :96]
    reflectance = np.where(valid[:, None], stack * np.float32(1e-4), np.float32(np.nan))
    everything = np.ones(valid.shape, bool)
    index = composite.first_valid(reflectance, everything, return_index=True)[1]
    assert_same(index, composite.first_valid(stack, valid, return_index=True)[1])
    values, index = composite.medoid(reflectance, everything, return_index=True)
    assert_same(index, ref.medoid(reflectance, everything)[1])
    assert_close(composite.median(reflectance, everything), ref.median(stack, valid) * np.float32(1e-4))
    assert_close(composite.mean(reflectance, everything), ref.mean(stack, valid) * np.float32(1e-4))


# ----------------------------------------------------------------------------- edge cases


def test_all_masked_gives_nodata_and_minus_one():
    stack = np.ones((3, 2, 4, 5), np.uint16)
    valid = np.zeros((3, 4, 5), bool)
    for name in ("first_valid", "medoid"):
        values, index = getattr(composite, name)(stack, valid, return_index=True)
        assert np.isnan(values).all() and (index == -1).all() and index.dtype == np.int16
    values, index = composite.max_score(stack, valid, np.ones((3, 4, 5)), nodata=-9999, return_index=True)
    assert (values == -9999).all() and (index == -1).all()
    for f in (composite.median, composite.mean, composite.geomedian):
        assert np.isnan(f(stack, valid)).all()
        assert (f(stack, valid, nodata=0) == 0).all()
    assert (composite.percentile(stack, valid, 20, nodata=7) == 7).all()
    assert (composite.count(valid) == 0).all()


def test_single_observation():
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 10_000, (1, 3, 6, 7), dtype=np.uint16)
    valid = rng.random((1, 6, 7)) < 0.7
    expected = np.where(valid[0], stack[0].astype(np.float32), np.float32(np.nan))
    for name in ("first_valid", "medoid"):
        values, index = getattr(composite, name)(stack, valid, return_index=True)
        assert_same(values, expected)
        assert_same(index, np.where(valid[0], 0, -1).astype(np.int16))
    for f in (composite.median, composite.mean, composite.geomedian):
        assert_same(f(stack, valid), expected)
    assert_same(composite.percentile(stack, valid, 73), expected)


def test_nan_in_one_band_invalidates_the_observation():
    stack = np.array([[1.0, 2.0], [10.0, np.nan], [3.0, 4.0]], np.float32).reshape(3, 2, 1, 1)
    valid = np.ones((3, 1, 1), bool)
    values, index = composite.first_valid(stack[1:], valid[1:], return_index=True)
    assert index[0, 0] == 1 and values[:, 0, 0].tolist() == [3.0, 4.0]
    assert composite.median(stack, valid)[:, 0, 0].tolist() == [2.0, 3.0]  # of t = 0, 2 only
    assert composite.mean(stack, valid)[:, 0, 0].tolist() == [2.0, 3.0]
    assert composite.max_score(stack, valid, [[[5.0]], [[9.0]], [[1.0]]], return_index=True)[1][0, 0] == 0
    # a NaN score skips the observation
    assert composite.max_score(stack, valid, [[[np.nan]], [[9.0]], [[1.0]]], return_index=True)[1][0, 0] == 2


def test_ties_go_to_the_lowest_time_index():
    stack = np.array([5, 7, 7, 5, 9], np.uint16).reshape(5, 1, 1, 1)
    valid = np.array([False, True, True, True, True]).reshape(5, 1, 1)
    score = np.array([9, 3, 3, 1, 1], np.float32).reshape(5, 1, 1)
    assert composite.max_score(stack, valid, score, return_index=True)[1][0, 0] == 1
    assert composite.min_score(stack, valid, score, return_index=True)[1][0, 0] == 3
    # medoid of {7, 7, 5, 9}: both 7s have the smallest distance sum (4); the first wins
    assert composite.medoid(stack, valid, return_index=True)[1][0, 0] == 1
    # two observations are always tied
    two = np.array([[1, 1], [3, 3]], np.uint16).reshape(2, 2, 1, 1)
    assert composite.medoid(two, np.ones((2, 1, 1), bool), return_index=True)[1][0, 0] == 0


def test_no_integer_overflow():
    top = np.iinfo(np.uint16).max
    stack = np.full((20, 2, 3, 3), top, np.uint16)
    valid = np.ones((20, 3, 3), bool)
    assert (composite.mean(stack, valid) == top).all()
    assert (composite.median(stack, valid) == top).all()
    assert (composite.percentile(stack, valid, 90) == top).all()
    # distances between 0 and 65535 must not wrap around in uint16
    extreme = np.array([0, top, top], np.uint16).reshape(3, 1, 1, 1)
    valid = np.ones((3, 1, 1), bool)
    assert composite.medoid(extreme, valid, return_index=True)[1][0, 0] == 1
    assert composite.median(extreme, valid)[0, 0, 0] == top
    assert composite.geomedian(extreme, valid)[0, 0, 0] == top  # a point holding half the weight
    signed = np.array([-32768, -32768, 32767], np.int16).reshape(3, 1, 1, 1)
    assert composite.mean(signed, np.ones((3, 1, 1), bool))[0, 0, 0] == np.float32(-32769 / 3)


def test_median_even_count_and_percentile_interpolation():
    stack = np.array([1, 2, 4, 10], np.uint16).reshape(4, 1, 1, 1)
    valid = np.ones((4, 1, 1), bool)
    assert composite.median(stack, valid)[0, 0, 0] == 3.0
    assert composite.percentile(stack, valid, 50)[0, 0, 0] == 3.0
    assert composite.percentile(stack, valid, 100 / 3)[0, 0, 0] == np.float32(2.0)
    assert composite.percentile(stack, valid, 0)[0, 0, 0] == 1.0


def test_geomedian_is_the_median_in_one_dimension():
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 1000, (7, 1, 5, 5), dtype=np.uint16)
    valid = np.ones((7, 5, 5), bool)
    np.testing.assert_allclose(composite.geomedian(stack, valid, eps=1e-7, max_iter=10_000),
                               composite.median(stack, valid), rtol=1e-4, atol=1e-2)


def test_input_checks():
    with pytest.raises(ValueError, match="T, B, H, W"):
        composite.median(np.ones((2, 3, 3)), np.ones((2, 3, 3), bool))
    with pytest.raises(ValueError, match="valid must be"):
        composite.median(np.ones((2, 1, 3, 3)), np.ones((2, 3, 4), bool))
    with pytest.raises(TypeError):
        composite.median(np.ones((2, 1, 3, 3), bool), np.ones((2, 3, 3), bool))
    with pytest.raises(ValueError, match="q must be"):
        composite.percentile(np.ones((2, 1, 3, 3)), np.ones((2, 3, 3), bool), 101)


@pytest.mark.parametrize("n", range(1, 13))
def test_sorting_network_sorts_every_zero_one_input(n):
    net = _sorting_network(n)
    keys = (np.arange(2**n)[:, None] >> np.arange(n)) & 1  # every 0/1 input: enough (0-1 principle)
    for i, j in net:
        lo, hi = np.minimum(keys[:, i], keys[:, j]), np.maximum(keys[:, i], keys[:, j])
        keys[:, i], keys[:, j] = lo, hi
    assert (np.diff(keys, axis=1) >= 0).all()


# ----------------------------------------------------------------------------- properties


@st.composite
def stacks(draw):
    t = draw(st.integers(1, 6))
    b = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dtype = draw(st.sampled_from([np.uint16, np.float32]))
    # a few distinct values: ties are common
    if dtype == np.float32:
        elements = st.sampled_from([0.0, 0.25, 1.0, 3.5, -2.0, 1e4, np.nan])
    else:
        elements = st.sampled_from([0, 1, 2, 7, 300, 65535])
    stack = draw(hnp.arrays(dtype, (t, b, h, w), elements=elements))
    valid = draw(hnp.arrays(np.bool_, (t, h, w)))
    return stack, valid


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(stacks())
def test_property_selections(data):
    stack, valid = data
    for name, reference in SELECTING.items():
        values, index = getattr(composite, name)(stack, valid, return_index=True)
        expected_values, expected_index = reference(stack, valid)
        assert_same(index, expected_index)
        np.testing.assert_array_equal(values, expected_values)
    score = stack[:, 0].astype(np.float64)
    values, index = composite.max_score(stack, valid, score, return_index=True)
    assert_same(index, ref.max_score(stack, valid, score)[1])
    assert ((index >= 0) == (ref.usable(stack, valid) & ~np.isnan(score)).any(axis=0)).all()


@PROPERTY
@given(stacks(), st.floats(0, 100))
def test_property_reductions(data, q):
    stack, valid = data
    assert_same(composite.median(stack, valid), ref.median(stack, valid))
    assert_close(composite.percentile(stack, valid, q), ref.percentile(stack, valid, q))
    assert_close(composite.mean(stack, valid), ref.mean(stack, valid))
    assert_same(composite.count(valid), ref.count(valid))
    # every reduction lies within the usable values' range, per band
    lo = ref.percentile(stack, valid, 0)
    hi = ref.percentile(stack, valid, 100)
    for f in (composite.median, composite.mean):
        out = f(stack, valid)
        assert (np.isnan(out) == np.isnan(lo)).all()
        finite = ~np.isnan(lo)
        assert ((out[finite] >= lo[finite]) & (out[finite] <= hi[finite])).all()


@PROPERTY
@given(stacks())
def test_property_geomedian(data):
    stack, valid = data
    eps = 1e-6
    actual = composite.geomedian(stack, valid, eps=eps, max_iter=10_000)
    expected = ref.geomedian(stack, valid)
    assert (np.isnan(actual) == np.isnan(expected)).all()
    has = ~np.isnan(expected[0])
    f_actual = ref.sum_of_distances(stack, valid, actual)[has]
    f_best = ref.sum_of_distances(stack, valid, expected)[has]
    # float32 rounding of the result moves each of the n distances by up to ~1e-7 |x|
    rounding = stack.shape[0] * stack.shape[1] * 1e-7 * np.nanmax(np.abs(stack), initial=1.0)
    assert (f_actual <= f_best * (1 + 1e-5) + rounding).all()
