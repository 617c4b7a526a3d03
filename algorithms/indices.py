"""Spectral indices.

Every function takes physical reflectance (unitless, typically 0–1) as float32 arrays of one
common shape, NaN = nodata (other dtypes are converted to float32 first), and returns float32 of
that shape. Arithmetic is done per pixel in float64 and rounded once. The result is NaN where an
input is NaN or a denominator is exactly 0. Arguments follow the order of ``IndexSpec.bands``
(STAC ``eo:bands`` common names).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit

__all__ = [
    "INDICES",
    "IndexSpec",
    "evi",
    "msavi",
    "nbr",
    "ndbi",
    "ndvi",
    "ndwi",
    "normalized_difference",
    "savi",
]


@njit(cache=True, nogil=True)
def _nd_kernel(a, b, out):
    for i in range(out.size):
        x = np.float64(a[i])
        y = np.float64(b[i])
        den = x + y
        out[i] = (x - y) / den if den != 0.0 else np.nan


@njit(cache=True, nogil=True)
def _ratio_kernel(nir, red, blue, g, c1, c2, soil, out):
    """``g * (nir - red) / (nir + c1 * red - c2 * blue + soil)`` (EVI and, with c2 = 0, SAVI)."""
    for i in range(out.size):
        n = np.float64(nir[i])
        r = np.float64(red[i])
        den = n + c1 * r - c2 * np.float64(blue[i]) + soil
        out[i] = g * (n - r) / den if den != 0.0 else np.nan


@njit(cache=True, nogil=True)
def _msavi_kernel(nir, red, out):
    for i in range(out.size):
        n = np.float64(nir[i])
        r = np.float64(red[i])
        disc = (2.0 * n + 1.0) ** 2 - 8.0 * (n - r)
        out[i] = (2.0 * n + 1.0 - math.sqrt(disc)) / 2.0 if disc >= 0.0 else np.nan


def _flat(*arrays: np.ndarray) -> tuple[tuple[int, ...], list[np.ndarray], np.ndarray]:
    """Same-shape float32 inputs as contiguous 1-D views, plus an empty float32 output."""
    arrays = [np.asarray(a) for a in arrays]
    shape = arrays[0].shape
    for a in arrays[1:]:
        if a.shape != shape:
            raise ValueError(f"all bands must have the same shape, got {shape} and {a.shape}")
    flat = [np.ascontiguousarray(a, dtype=np.float32).reshape(-1) for a in arrays]
    return shape, flat, np.empty(flat[0].size, np.float32)


def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a - b) / (a + b)``, in [-1, 1] for non-negative inputs."""
    shape, (a, b), out = _flat(a, b)
    _nd_kernel(a, b, out)
    return out.reshape(shape)


def ndvi(nir: np.ndarray, red: np.ndarray) -> np.ndarray:
    """Normalized Difference Vegetation Index (Rouse et al. 1974): ``(nir - red) / (nir + red)``."""
    return normalized_difference(nir, red)


def ndwi(green: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """Normalized Difference Water Index (McFeeters 1996): ``(green - nir) / (green + nir)``."""
    return normalized_difference(green, nir)


def ndbi(swir16: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """Normalized Difference Built-up Index (Zha et al. 2003):
    ``(swir16 - nir) / (swir16 + nir)``."""
    return normalized_difference(swir16, nir)


def nbr(nir: np.ndarray, swir22: np.ndarray) -> np.ndarray:
    """Normalized Burn Ratio (Key & Benson 2006): ``(nir - swir22) / (nir + swir22)``."""
    return normalized_difference(nir, swir22)


def evi(
    nir: np.ndarray,
    red: np.ndarray,
    blue: np.ndarray,
    *,
    G: float = 2.5,
    C1: float = 6.0,
    C2: float = 7.5,
    L: float = 1.0,
) -> np.ndarray:
    """Enhanced Vegetation Index (Huete et al. 2002), MODIS constants:
    ``G * (nir - red) / (nir + C1 * red - C2 * blue + L)``."""
    shape, (n, r, b), out = _flat(nir, red, blue)
    _ratio_kernel(n, r, b, float(G), float(C1), float(C2), float(L), out)
    return out.reshape(shape)


def savi(nir: np.ndarray, red: np.ndarray, *, L: float = 0.5) -> np.ndarray:
    """Soil-Adjusted Vegetation Index (Huete 1988): ``(1 + L) * (nir - red) / (nir + red + L)``."""
    shape, (n, r), out = _flat(nir, red)
    _ratio_kernel(n, r, r, 1.0 + float(L), 1.0, 0.0, float(L), out)
    return out.reshape(shape)


def msavi(nir: np.ndarray, red: np.ndarray) -> np.ndarray:
    """Modified SAVI, closed form (Qi et al. 1994, MSAVI2):
    ``(2 nir + 1 - sqrt((2 nir + 1)² - 8 (nir - red))) / 2``; NaN where the root is imaginary
    (only possible with negative reflectance)."""
    shape, (n, r), out = _flat(nir, red)
    _msavi_kernel(n, r, out)
    return out.reshape(shape)


@dataclass(frozen=True)
class IndexSpec:
    """A named index: its input bands (STAC common names, in argument order) and formula."""

    name: str
    bands: tuple[str, ...]
    formula: str
    description: str
    function: Callable[..., np.ndarray]


INDICES: dict[str, IndexSpec] = {
    spec.name: spec
    for spec in (
        IndexSpec("ndvi", ("nir", "red"), "(nir - red) / (nir + red)",
                  "Normalized Difference Vegetation Index", ndvi),
        IndexSpec("ndwi", ("green", "nir"), "(green - nir) / (green + nir)",
                  "Normalized Difference Water Index (McFeeters)", ndwi),
        IndexSpec("ndbi", ("swir16", "nir"), "(swir16 - nir) / (swir16 + nir)",
                  "Normalized Difference Built-up Index", ndbi),
        IndexSpec("nbr", ("nir", "swir22"), "(nir - swir22) / (nir + swir22)",
                  "Normalized Burn Ratio", nbr),
        IndexSpec("evi", ("nir", "red", "blue"),
                  "2.5 * (nir - red) / (nir + 6 * red - 7.5 * blue + 1)",
                  "Enhanced Vegetation Index", evi),
        IndexSpec("savi", ("nir", "red"), "1.5 * (nir - red) / (nir + red + 0.5)",
                  "Soil-Adjusted Vegetation Index (L = 0.5)", savi),
        IndexSpec("msavi", ("nir", "red"),
                  "(2 * nir + 1 - sqrt((2 * nir + 1) ** 2 - 8 * (nir - red))) / 2",
                  "Modified Soil-Adjusted Vegetation Index (closed form)", msavi),
    )
}
