"""Validity masks from cloud/quality layers.

Every function returns a bool array of the input's shape (2-D ``[H, W]`` or 3-D ``[T, H, W]``)
where **True = usable pixel** (clear, not nodata) and False = masked. Combine masks with ``&``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numba import njit

__all__ = [
    "DEFAULT_SCL_INVALID",
    "SCL_CLOUD",
    "SCL_SNOW_ICE",
    "bqa_valid",
    "cloud_probability_valid",
    "dilate_invalid",
    "qa_pixel_valid",
    "scl_cloud_cover",
    "scl_valid",
]

# Sentinel-2 L2A scene classification (SCL) classes
SCL_NO_DATA, SCL_SATURATED, SCL_CLOUD_SHADOW, SCL_SNOW_ICE = 0, 1, 3, 11
SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS = 8, 9, 10
DEFAULT_SCL_INVALID = frozenset(
    {SCL_NO_DATA, SCL_SATURATED, SCL_CLOUD_SHADOW, SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS}
)
SCL_CLOUD = frozenset({SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS})


def _integer(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "ui":
        raise TypeError(f"{name} must have an integer dtype, got {a.dtype}")
    return a


def scl_valid(scl: np.ndarray, invalid: Iterable[int] = DEFAULT_SCL_INVALID) -> np.ndarray:
    """Sentinel-2 SCL → usable where the class is not in ``invalid``.

    Default invalid classes: 0 no data, 1 saturated/defective, 3 cloud shadow, 8 cloud medium
    probability, 9 cloud high probability, 10 thin cirrus. Snow/ice (11) counts as usable unless
    added: ``DEFAULT_SCL_INVALID | {SCL_SNOW_ICE}``. Dark area (2), vegetation (4), not vegetated
    (5), water (6) and unclassified (7) are usable. Float SCL (e.g. resampled) is allowed; NaN is
    invalid.
    """
    scl = np.asarray(scl)
    codes = sorted(int(c) for c in invalid)
    if scl.dtype == np.uint8:
        lut = np.ones(256, np.bool_)
        lut[[c for c in codes if 0 <= c < 256]] = False
        return lut[scl]
    valid = ~np.isin(scl, codes)
    return valid & ~np.isnan(scl) if scl.dtype.kind == "f" else valid


def scl_cloud_cover(scl: np.ndarray) -> float:
    """Percentage of data pixels (SCL ≠ 0) whose class is 8, 9 or 10 (the STAC ``eo:cloud_cover``
    definition of the L2A collections); NaN when there is no data pixel."""
    scl = np.asarray(scl)
    data = np.count_nonzero(scl != SCL_NO_DATA)
    cloud = np.count_nonzero(np.isin(scl, sorted(SCL_CLOUD)))
    return 100.0 * cloud / data if data else float("nan")


def cloud_probability_valid(
    prob: np.ndarray, threshold: float, nodata: float | None = 255
) -> np.ndarray:
    """Cloud probability in percent (0–100) → usable where ``prob < threshold`` and
    ``prob != nodata`` (NaN is invalid too). E.g. threshold 20 keeps pixels below 20 %."""
    prob = np.asarray(prob)
    valid = prob < threshold  # False for NaN
    if nodata is not None:
        valid &= prob != nodata
    return valid


def bqa_valid(
    bqa: np.ndarray, *, cloud: int | None = 2, cirrus: int | None = 3, snow: int | None = None
) -> np.ndarray:
    """Landsat 8 pre-collection BQA (uint16) → usable pixel.

    Always invalid: bit 0 designated fill, bit 1 dropped frame, bit 2 terrain occlusion.
    ``cloud`` (bits 14–15), ``cirrus`` (bits 12–13) and ``snow`` (bits 10–11, snow/ice) give
    the lowest confidence (1 low, 2 medium, 3 high) that makes a pixel invalid; None ignores the
    field. Default: medium or high cloud, high cirrus. Water (bits 4–5) never masks.
    """
    bqa = _integer("bqa", bqa)
    valid = (bqa & 0b111) == 0
    for level, shift in ((cloud, 14), (cirrus, 12), (snow, 10)):
        if level is not None:
            if level not in (1, 2, 3):
                raise ValueError(f"confidence level must be 1, 2, 3 or None, got {level}")
            valid &= ((bqa >> shift) & 0b11) < level
    return valid


def qa_pixel_valid(
    qa: np.ndarray,
    *,
    dilated_cloud: bool = True,
    cirrus: bool = True,
    cloud_shadow: bool = True,
    snow: bool = False,
) -> np.ndarray:
    """Landsat Collection 2 ``QA_PIXEL`` (uint16) → usable pixel.

    Always invalid: bit 0 fill and bit 3 cloud. Optionally invalid (flags): bit 1 dilated cloud,
    bit 2 cirrus (high confidence, Landsat 8/9), bit 4 cloud shadow, bit 5 snow. Water (bit 7)
    and the confidence bits 8–15 are not used.
    """
    qa = _integer("qa", qa)
    bits = 1 << 0 | 1 << 3
    bits |= (1 << 1 if dilated_cloud else 0) | (1 << 2 if cirrus else 0)
    bits |= (1 << 4 if cloud_shadow else 0) | (1 << 5 if snow else 0)
    return (qa & bits) == 0


@njit(cache=True, nogil=True)
def _dilate_kernel(valid, n, out):
    """Square (Chebyshev) erosion of the valid areas, separable: along rows, then columns.

    Each pass keeps the index of the nearest invalid pixel before and after the current one.
    """
    K, H, W = valid.shape
    rows = np.empty((H, W), np.bool_)
    near = np.empty(W, np.int64)  # per column: row of the nearest invalid pixel
    for k in range(K):
        for y in range(H):
            src = valid[k, y]
            before = -n - 1
            for x in range(W):
                before = before if src[x] else x
                rows[y, x] = x - before > n
            after = W + n
            for x in range(W - 1, -1, -1):
                after = after if src[x] else x
                rows[y, x] = rows[y, x] and after - x > n
        near[:] = -n - 1
        for y in range(H):
            for x in range(W):
                near[x] = near[x] if rows[y, x] else y
                out[k, y, x] = y - near[x] > n
        near[:] = H + n
        for y in range(H - 1, -1, -1):
            for x in range(W):
                near[x] = near[x] if rows[y, x] else y
                out[k, y, x] = out[k, y, x] and near[x] - y > n


def dilate_invalid(valid: np.ndarray, pixels: int) -> np.ndarray:
    """Grow the invalid (False) areas of ``valid`` by ``pixels`` in every direction.

    A pixel stays valid only if every pixel within Chebyshev distance ``pixels`` (the
    (2·pixels+1)² square around it) is valid. Pixels beyond the array edge count as valid, so
    read a tile with a ``pixels``-wide buffer for seamless results. 2-D or 3-D (each [H, W]
    plane separately); returns a new bool array.
    """
    valid = np.asarray(valid, dtype=np.bool_)
    if valid.ndim not in (2, 3):
        raise ValueError(f"valid must be [H, W] or [T, H, W], got shape {valid.shape}")
    if pixels < 0:
        raise ValueError(f"pixels must be >= 0, got {pixels}")
    planes = np.ascontiguousarray(valid).reshape((-1,) + valid.shape[-2:])
    out = np.empty_like(planes)
    _dilate_kernel(planes, int(pixels), out)
    return out.reshape(valid.shape)
