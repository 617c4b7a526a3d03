"""Statistics over areas: per-band summaries with percentiles and histograms, and zonal means per date.

Inputs are float32 values (NaN = nodata) with a bool ``inside`` mask of the area (True = the pixel
belongs to it). A pixel counts for a band when it is inside, usable (``valid``, where given) and
finite in that band. Sums, means and deviations are accumulated in float64. Results follow numpy:
``std`` is the population standard deviation (``ddof=0``), percentiles interpolate linearly
between order statistics (``numpy.percentile``'s default), and histograms bin like
``numpy.histogram`` (equal-width bins over ``histogram_range`` or the data's min–max, or explicit
increasing edges; the last bin includes its right edge).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

__all__ = ["BandStatistics", "ZonalSummary", "band_statistics", "zonal_summary"]


@njit(cache=True, nogil=True)
def _compact(values, inside, out):
    """Copy the finite values of inside pixels to ``out``; their count, sum, min and max."""
    n = 0
    total = 0.0
    low = np.inf
    high = -np.inf
    for i in range(values.size):
        v = values[i]
        if inside[i] and v == v:
            x = np.float64(v)
            out[n] = x
            n += 1
            total += x
            low = min(low, x)
            high = max(high, x)
    return n, total, low, high


@njit(cache=True, nogil=True)
def _squared_deviations(sample, mean):
    total = 0.0
    for x in sample:
        total += (x - mean) * (x - mean)
    return total


@njit(cache=True, nogil=True)
def _histogram_uniform(sample, edges, counts):
    """``numpy.histogram``'s equal-width binning of ``edges`` from ``numpy.linspace`` (the same index
    arithmetic and edge corrections)."""
    bins = edges.size - 1
    first, last = edges[0], edges[bins]
    for x in sample:
        if x < first or x > last:
            continue
        k = int((x - first) / (last - first) * bins)
        if k == bins:
            k -= 1
        if x < edges[k]:
            k -= 1
        elif x >= edges[k + 1] and k != bins - 1:
            k += 1
        counts[k] += 1


@njit(cache=True, nogil=True)
def _histogram_edges(sample, edges, counts):
    """Bins ``[edges[k], edges[k + 1])``, the last one closed."""
    last = edges.size - 1
    for x in sample:
        if x < edges[0] or x > edges[last]:
            continue
        k = np.searchsorted(edges, x, side="right") - 1
        counts[min(k, last - 1)] += 1


@njit(cache=True, nogil=True)
def _zonal_kernel(values, valid, data, inside, sums, counts, usable, masked, missing):
    T, B, N = values.shape
    for t in range(T):
        for i in range(N):
            if not inside[i]:
                continue
            if not data[t, i]:
                missing[t] += 1
            elif not valid[t, i]:
                masked[t] += 1
            else:
                usable[t] += 1
                for b in range(B):
                    v = values[t, b, i]
                    if v == v:
                        sums[t, b] += np.float64(v)
                        counts[t, b] += 1


def _percentiles(sample: np.ndarray, percentiles: Sequence[float]) -> list[float]:
    """``numpy.percentile(sample, percentiles)`` (linear), selecting only the needed order statistics."""
    n = sample.size
    positions = [p / 100 * (n - 1) for p in percentiles]
    ranks = sorted({r for v in positions for r in (math.floor(v), min(math.floor(v) + 1, n - 1))})
    ordered = np.partition(sample, ranks)
    out = []
    for v in positions:
        a, b, t = ordered[math.floor(v)], ordered[min(math.floor(v) + 1, n - 1)], v - math.floor(v)
        out.append(float(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t))
    return out


@dataclass(frozen=True)
class BandStatistics:
    """Summary of one band over an area. `histogram` is ``[counts, edges]``; `pixels` = pixels inside."""

    count: int
    pixels: int
    min: float
    max: float
    mean: float
    sum: float
    std: float
    median: float
    percentiles: dict[float, float]
    histogram: tuple[list[int], list[float]]

    @property
    def valid_percent(self) -> float:
        """Share of the area's pixels that count, in percent."""
        return 100.0 * self.count / self.pixels if self.pixels else 0.0


def band_statistics(
    values: np.ndarray,
    inside: np.ndarray | None = None,
    percentiles: Sequence[float] = (2, 98),
    bins: int | Sequence[float] = 10,
    histogram_range: tuple[float, float] | None = None,
) -> list[BandStatistics]:
    """Per-band statistics of ``values[B, H, W]`` over ``inside[H, W]`` (default: every pixel).

    ``bins`` is a count of equal-width bins over ``histogram_range`` (default: the band's min–max) or
    a sequence of increasing edges. NaN min/max/mean/… for a band with no finite value inside.
    """
    values = np.asarray(values)
    if values.ndim != 3:
        raise ValueError(f"values must be [B, H, W], got shape {values.shape}")
    inside = np.ones(values.shape[1:], np.bool_) if inside is None else np.asarray(inside, np.bool_)
    if inside.shape != values.shape[1:]:
        raise ValueError(f"inside {inside.shape} does not match values {values.shape[1:]}")
    if not all(0 <= p <= 100 for p in percentiles):
        raise ValueError(f"percentiles must be within 0–100, got {list(percentiles)}")
    edges = None if isinstance(bins, (int, np.integer)) else np.asarray(bins, np.float64)
    if edges is None and bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if edges is not None and (edges.size < 2 or np.any(np.diff(edges) <= 0)):
        raise ValueError("bin edges must be at least two increasing numbers")
    flat_inside = np.ascontiguousarray(inside).reshape(-1)
    pixels = int(flat_inside.sum())
    buffer = np.empty(flat_inside.size, np.float64)
    out = []
    for band in values:
        n, total, low, high = _compact(np.ascontiguousarray(band, np.float32).reshape(-1), flat_inside, buffer)
        sample = buffer[:n]
        nan = math.nan
        mean = total / n if n else nan
        std = math.sqrt(_squared_deviations(sample, mean) / n) if n else nan
        if edges is None:
            first, last = histogram_range if histogram_range is not None else ((low, high) if n else (0.0, 1.0))
            if first > last:
                raise ValueError(f"histogram range {first} > {last}")
            if first == last:
                first, last = first - 0.5, last + 0.5
            bin_edges = np.linspace(float(first), float(last), int(bins) + 1)
            counts = np.zeros(int(bins), np.int64)
            _histogram_uniform(sample, bin_edges, counts)
        else:
            bin_edges = edges
            counts = np.zeros(edges.size - 1, np.int64)
            _histogram_edges(sample, edges, counts)
        ranks = _percentiles(sample, [50, *percentiles]) if n else [nan] * (len(percentiles) + 1)
        out.append(BandStatistics(
            count=n, pixels=pixels, min=low if n else nan, max=high if n else nan, mean=mean, sum=total, std=std,
            median=ranks[0], percentiles=dict(zip(percentiles, ranks[1:])),
            histogram=(counts.tolist(), bin_edges.tolist()),
        ))  # fmt: skip
    return out


@dataclass(frozen=True)
class ZonalSummary:
    """Per date over an area: band means of usable pixels and how the area's pixels divide up.

    ``mean[T, B]`` (NaN where a band has no usable finite pixel), ``usable[T]`` (data and valid),
    ``masked[T]`` (data but not valid, e.g. cloud), ``missing[T]`` (no data), ``pixels`` inside.
    """

    mean: np.ndarray
    usable: np.ndarray
    masked: np.ndarray
    missing: np.ndarray
    pixels: int


def zonal_summary(values: np.ndarray, valid: np.ndarray, data: np.ndarray, inside: np.ndarray) -> ZonalSummary:
    """Means of ``values[T, B, H, W]`` over the pixels of ``inside[H, W]`` that have ``data[T, H, W]`` and
    are ``valid[T, H, W]``, per date and band; and per date the counts of usable, masked and missing pixels."""
    values = np.asarray(values)
    if values.ndim != 4:
        raise ValueError(f"values must be [T, B, H, W], got shape {values.shape}")
    T, B = values.shape[:2]
    for name, array in (("valid", valid), ("data", data)):
        if np.shape(array) != (T, *values.shape[2:]):
            raise ValueError(f"{name} {np.shape(array)} does not match values {values.shape}")
    if np.shape(inside) != values.shape[2:]:
        raise ValueError(f"inside {np.shape(inside)} does not match values {values.shape[2:]}")
    sums, counts = np.zeros((T, B)), np.zeros((T, B), np.int64)
    usable, masked, missing = (np.zeros(T, np.int64) for _ in range(3))
    _zonal_kernel(
        np.ascontiguousarray(values, np.float32).reshape(T, B, -1),
        np.ascontiguousarray(valid, np.bool_).reshape(T, -1),
        np.ascontiguousarray(data, np.bool_).reshape(T, -1),
        np.ascontiguousarray(inside, np.bool_).reshape(-1),
        sums, counts, usable, masked, missing,
    )  # fmt: skip
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / counts, np.nan)
    return ZonalSummary(mean, usable, masked, missing, int(np.count_nonzero(inside)))
