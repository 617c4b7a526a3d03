"""Radiometric conversions and simple corrections.

Input layouts: ``[H, W]`` or ``[B, H, W]`` (any shape where per-band parameters are not used),
integer DN (uint8, uint16, int16, …) or float. Outputs are float32, NaN where the input is
``nodata`` (in DN) or NaN. Every conversion is computed per pixel in float64 as
``((dn + dn_offset) * scale + offset) / divisor`` and rounded once to float32.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
from numba import njit

__all__ = [
    "clip_to_range",
    "dark_object_values",
    "dos1",
    "landsat_toa_reflectance",
    "parse_mtl",
    "s2_dn_offset",
    "s2_reflectance",
    "scale_offset",
]

Param = float | Sequence[float] | np.ndarray


@njit(cache=True, nogil=True)
def _affine_kernel(src, dn_offset, scale, offset, divisor, nodata, has_nodata, out):
    """``src [K, N]`` with per-row parameters ``[K]`` → ``out [K, N]`` float32."""
    K, N = src.shape
    for k in range(K):
        a, s, o, d = dn_offset[k], scale[k], offset[k], divisor[k]
        for i in range(N):
            v = np.float64(src[k, i])
            r = ((v + a) * s + o) / d
            out[k, i] = np.nan if (v != v) or (has_nodata and v == nodata) else r


def _affine(
    dn: np.ndarray, dn_offset: Param, scale: Param, offset: Param, divisor: Param, nodata: float | None
) -> np.ndarray:
    dn = np.asarray(dn)
    if dn.dtype.kind not in "uif":
        raise TypeError(f"dn must have an integer or float dtype, got {dn.dtype}")
    params = [np.atleast_1d(np.asarray(p, np.float64)) for p in (dn_offset, scale, offset, divisor)]
    per_band = max(p.size for p in params)
    if per_band > 1:
        if dn.ndim != 3 or any(p.size not in (1, dn.shape[0]) for p in params):
            raise ValueError(
                f"per-band parameters need a [B, H, W] array with B = {per_band}, got {dn.shape}"
            )
        k = dn.shape[0]
    else:
        k = 1
    params = [np.broadcast_to(p, (k,)).copy() for p in params]
    src = np.ascontiguousarray(dn).reshape(k, -1)
    out = np.empty(src.shape, np.float32)
    has_nodata = nodata is not None
    _affine_kernel(src, *params, float(nodata) if has_nodata else 0.0, has_nodata, out)
    return out.reshape(dn.shape)


def scale_offset(
    dn: np.ndarray, scale: Param = 1.0, offset: Param = 0.0, nodata: float | None = None
) -> np.ndarray:
    """Physical value ``dn * scale + offset`` (GDAL / STAC ``raster:bands`` convention).

    ``scale``/``offset`` are scalars, or per-band sequences for a ``[B, H, W]`` input. NaN where
    ``dn == nodata`` (None: no nodata value) or dn is NaN.
    """
    return _affine(dn, 0.0, scale, offset, 1.0, nodata)


def _baseline(processing_baseline: str | float) -> float:
    """'05.09', 'N0509', 5.09 → 5.09."""
    if isinstance(processing_baseline, (int, float)):
        return float(processing_baseline)
    match = re.fullmatch(r"N?(\d{2})\.?(\d{2})", processing_baseline.strip())
    if not match:
        raise ValueError(f"unrecognised processing baseline {processing_baseline!r}")
    return int(match.group(1)) + int(match.group(2)) / 100


def s2_dn_offset(
    processing_baseline: str | float, offset_applied: bool, add_offset: float = -1000.0
) -> float:
    """DN offset still to add to a Sentinel-2 L1C/L2A product before quantification.

    From baseline 04.00 (January 2022) ESA stores ``DN = reflectance * 10000 - RADIO_ADD_OFFSET``
    (L1C) / ``- BOA_ADD_OFFSET`` (L2A), both −1000. ``offset_applied`` is what the item's metadata
    says (e.g. Earth Search ``earthsearch:boa_offset_applied``): when True, or before 04.00, the
    offset is 0, so it is never applied twice.
    """
    return 0.0 if offset_applied or _baseline(processing_baseline) < 4.0 else float(add_offset)


def s2_reflectance(
    dn: np.ndarray,
    processing_baseline: str | float,
    *,
    offset_applied: bool,
    add_offset: float = -1000.0,
    quantification: float = 10000.0,
    nodata: float | None = 0,
) -> np.ndarray:
    """Sentinel-2 DN → reflectance ``(dn + offset) / quantification`` (see :func:`s2_dn_offset`).

    A pixel has the same reflectance, bit for bit, whether it comes from a pre-04.00 product or a
    04.00+ product carrying the offset. Values below the offset give negative reflectance (kept;
    see :func:`clip_to_range`). DN 0 is nodata in every baseline.
    """
    dn_offset = s2_dn_offset(processing_baseline, offset_applied, add_offset)
    return _affine(dn, dn_offset, 1.0, 0.0, quantification, nodata)


def parse_mtl(text: str) -> dict[str, float | str]:
    """Landsat ``MTL.txt`` content → flat ``{KEY: value}`` (numbers as float, quotes removed;
    GROUP lines dropped). Keys are unique across groups in Landsat 8 MTL files."""
    values: dict[str, float | str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key in ("GROUP", "END_GROUP"):
            continue
        try:
            values[key] = float(value)
        except ValueError:
            values[key] = value.strip('"')
    return values


def landsat_toa_reflectance(
    dn: np.ndarray,
    mult: Param,
    add: Param,
    sun_elevation: float,
    *,
    nodata: float | None = 0,
) -> np.ndarray:
    """Landsat 8/9 Level-1 DN → TOA reflectance with the sun-angle correction (USGS):
    ``(REFLECTANCE_MULT_BAND_n * dn + REFLECTANCE_ADD_BAND_n) / sin(SUN_ELEVATION)``.

    ``sun_elevation`` in degrees (scene centre, from the MTL). ``mult``/``add`` may be per band
    for a ``[B, H, W]`` input. DN 0 is fill.
    """
    if not 0.0 < sun_elevation <= 90.0:
        raise ValueError(f"sun elevation must be within (0, 90] degrees, got {sun_elevation}")
    return _affine(dn, 0.0, mult, add, math.sin(math.radians(sun_elevation)), nodata)


def dark_object_values(
    image: np.ndarray, valid: np.ndarray | None = None, *, fraction: float = 1e-4
) -> np.ndarray:
    """Dark-object value of each band of one scene, for :func:`dos1`.

    Compute it **once per scene**, from an overview (or the whole scene), and pass the same
    values to every tile: per-tile dark values would make neighbouring tiles disagree.
    ``image``: ``[H, W]`` or ``[B, H, W]`` in the units :func:`dos1` will correct (TOA
    reflectance); ``valid`` an optional ``[H, W]`` bool mask; NaN is invalid. The dark value is
    the valid value of rank ``floor(fraction * (n - 1))`` in ascending order (0 = the minimum;
    the default ignores the darkest 0.01 % as noise). Returns ``float64 [B]`` (``[1]`` for 2-D),
    NaN for a band without valid pixels.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be within [0, 1), got {fraction}")
    image = np.asarray(image)
    bands = image.reshape((-1,) + image.shape[-2:])
    dark = np.full(bands.shape[0], np.nan)
    for b, band in enumerate(bands):
        ok = ~np.isnan(band) if band.dtype.kind == "f" else np.ones(band.shape, np.bool_)
        if valid is not None:
            ok &= np.asarray(valid, np.bool_)
        values = band[ok]
        if values.size:
            k = int(fraction * (values.size - 1))
            dark[b] = np.partition(values, k)[k]
    return dark


def dos1(toa: np.ndarray, dark: Param, *, dark_reflectance: float = 0.01) -> np.ndarray:
    """Dark-object subtraction, DOS1 (Chavez 1996) in reflectance:
    ``toa - (dark - dark_reflectance)``, i.e. the scene's dark objects are assumed to reflect
    1 %. ``toa`` ``[H, W]`` or ``[B, H, W]`` TOA reflectance (NaN = nodata); ``dark`` from
    :func:`dark_object_values` (one value, or one per band)."""
    haze = np.asarray(dark, np.float64) - dark_reflectance
    if np.isnan(haze).any():
        raise ValueError("dark value is NaN (no valid pixel in the scene overview?)")
    return _affine(toa, 0.0, 1.0, -haze, 1.0, None)


def clip_to_range(
    x: np.ndarray, lo: float = 0.0, hi: float = 1.0, *, out_of_range: str = "clamp"
) -> np.ndarray:
    """Limit values to ``[lo, hi]``: ``out_of_range="clamp"`` clamps them, ``"nan"`` makes them
    nodata. NaN stays NaN. Returns float32 (a new array)."""
    x = np.asarray(x, np.float32)
    if out_of_range == "clamp":
        return np.clip(x, np.float32(lo), np.float32(hi))
    if out_of_range == "nan":
        return np.where((x < lo) | (x > hi), np.float32(np.nan), x)
    raise ValueError(f"out_of_range must be 'clamp' or 'nan', got {out_of_range!r}")
