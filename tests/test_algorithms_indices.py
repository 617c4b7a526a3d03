"""algorithms.indices against plain-numpy formulas, on real Sentinel-2 reflectance."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from algorithms import indices, masks
from algorithms.expression import compile_expression
from tests import reference as ref


def _reflectance(path, shape=None):
    with rasterio.open(path) as src:
        dn = src.read(1, out_shape=shape)
    return np.where(dn == 0, np.nan, dn * 1e-4).astype(np.float32)


@pytest.fixture(scope="module")
def timeseries(shared_data):
    """33TWM, 18 August (42 % cloud): common name → float32 reflectance, and the SCL mask."""
    item = shared_data / "sentinel-2-l2a-timeseries" / "S2A_33TWM_20230818_0_L2A"
    bands = {name: _reflectance(item / f"{b}.tif")
             for name, b in (("blue", "B02"), ("green", "B03"), ("red", "B04"), ("nir", "B08"))}
    with rasterio.open(item / "SCL.tif") as src:
        clear = masks.scl_valid(src.read(1))
    return bands, clear


@pytest.fixture(scope="module")
def allbands(shared_data):
    """29RKH desert scene on the 200 m grid: nir (B08, decimated), swir16 (B11), swir22 (B12)."""
    item = shared_data / "sentinel-2-l2a-allbands" / "S2A_29RKH_20200219_0_L2A"
    with rasterio.open(item / "B11.tif") as src:
        shape = src.shape
    return {name: _reflectance(item / f"{b}.tif", shape)
            for name, b in (("nir", "B08"), ("swir16", "B11"), ("swir22", "B12"))}


def test_normalized_differences_real(timeseries, allbands):
    b, _ = timeseries
    np.testing.assert_array_equal(indices.ndvi(b["nir"], b["red"]), ref.normalized_difference(b["nir"], b["red"]))
    np.testing.assert_array_equal(indices.ndwi(b["green"], b["nir"]), ref.normalized_difference(b["green"], b["nir"]))
    np.testing.assert_array_equal(indices.ndbi(allbands["swir16"], allbands["nir"]),
                                  ref.normalized_difference(allbands["swir16"], allbands["nir"]))
    np.testing.assert_array_equal(indices.nbr(allbands["nir"], allbands["swir22"]),
                                  ref.normalized_difference(allbands["nir"], allbands["swir22"]))


def test_soil_and_enhanced_indices_real(timeseries):
    b, _ = timeseries
    np.testing.assert_array_equal(indices.evi(b["nir"], b["red"], b["blue"]), ref.evi(b["nir"], b["red"], b["blue"]))
    np.testing.assert_array_equal(indices.savi(b["nir"], b["red"]), ref.savi(b["nir"], b["red"]))
    np.testing.assert_allclose(indices.msavi(b["nir"], b["red"]), ref.msavi(b["nir"], b["red"]), rtol=1e-6)
    np.testing.assert_array_equal(indices.evi(b["nir"], b["red"], b["blue"], G=2.0, C1=1.0, C2=2.0, L=0.5),
                                  ref.evi(b["nir"], b["red"], b["blue"], 2.0, 1.0, 2.0, 0.5))
    np.testing.assert_array_equal(indices.savi(b["nir"], b["red"], L=0.25), ref.savi(b["nir"], b["red"], 0.25))


def test_values_are_plausible(timeseries):
    b, clear = timeseries
    ndvi = indices.ndvi(b["nir"], b["red"])
    assert ndvi.dtype == np.float32 and ndvi.shape == b["red"].shape
    assert 0.6 < np.nanmedian(ndvi[clear]) < 0.95  # mostly forest and crops in August
    assert np.isnan(ndvi[np.isnan(b["red"])]).all()


def test_registry_specs_match_functions_and_formulas(timeseries, allbands):
    b, clear = timeseries
    available = {k: v[clear] for k, v in b.items()}
    assert set(indices.INDICES) == {"ndvi", "ndwi", "ndbi", "nbr", "evi", "savi", "msavi"}
    assert indices.INDICES["ndbi"].bands == ("swir16", "nir")
    assert indices.INDICES["nbr"].bands == ("nir", "swir22")
    assert indices.INDICES["ndwi"].bands == ("green", "nir")
    for name, spec in indices.INDICES.items():
        source = available if set(spec.bands) <= set(available) else allbands
        args = [source[band] for band in spec.bands]
        # the human-readable formula, as a band-math expression over common names, agrees
        formula = compile_expression(spec.formula)
        assert set(formula.names) == set(spec.bands), name
        np.testing.assert_allclose(formula(dict(zip(spec.bands, args, strict=True)))[0], spec.function(*args),
                                   rtol=1e-3, atol=1e-6, err_msg=name)  # expressions run in float32
        assert spec.name == name and spec.description


@pytest.mark.parametrize("spec", indices.INDICES.values(), ids=lambda s: s.name)
def test_nan_input_is_nan_output(spec):
    for position in range(len(spec.bands)):
        args = [np.array([0.3, 0.3], np.float32) for _ in spec.bands]
        args[position] = np.array([0.1, np.nan], np.float32)
        out = spec.function(*args)
        assert out.dtype == np.float32 and not np.isnan(out[0]) and np.isnan(out[1])


def test_zero_denominators_explicitly():
    z = np.zeros(3, np.float32)
    assert np.isnan(indices.normalized_difference(z, z)).all()
    # EVI: nir + 6 red - 7.5 blue + 1 = 0 for nir = 0.875, red = 0, blue = 0.25
    assert np.isnan(indices.evi(np.float32([0.875]), np.float32([0.0]), np.float32([0.25])))[0]
    # SAVI: nir + red + 0.5 = 0
    assert np.isnan(indices.savi(np.float32([-0.25]), np.float32([-0.25])))[0]
    # MSAVI: imaginary root only with negative reflectance
    assert np.isnan(indices.msavi(np.float32([0.5]), np.float32([-0.1])))[0]


def test_shapes_and_dtypes():
    a = np.full((2, 3, 4), 0.5)  # float64 in, float32 out, shape kept
    b = np.full((2, 3, 4), 0.25, np.float32)
    out = indices.ndvi(a, b)
    assert out.dtype == np.float32 and out.shape == (2, 3, 4)
    assert np.allclose(out, 1 / 3)
    with pytest.raises(ValueError, match="same shape"):
        indices.ndvi(np.zeros((2, 2), np.float32), np.zeros((2, 3), np.float32))
