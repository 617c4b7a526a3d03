"""Per-pixel temporal composites of a time stack.

Layouts and rules shared by every function here:

* ``stack``: ``[T, B, H, W]``, any integer or float dtype, values in the caller's units (DN or
  physical). It is read in place (a non-contiguous stack is first made contiguous in its own
  dtype), never converted to float64 as a whole.
* ``valid``: ``[T, H, W]`` bool, True = the caller considers the observation usable (e.g. from
  :mod:`algorithms.masks`). An observation (t, y, x) is *usable* when ``valid[t, y, x]`` is True
  and, for float stacks, none of its B values is NaN (NaN = nodata whatever ``valid`` says).
* Outputs: ``float32 [B, H, W]``, ``nodata`` (default NaN) where a pixel has no usable
  observation. The selecting methods :func:`first_valid`, :func:`max_score`, :func:`min_score`
  and :func:`medoid` return one whole observation (all B bands of one date) and, with
  ``return_index=True``, also its time index as ``int16 [H, W]`` (provenance), -1 where there is
  none. Ties go to the lowest time index.
* :func:`median`, :func:`percentile`, :func:`mean` and :func:`geomedian` are reductions, not
  selections: median/percentile/mean reduce each band on its own, the geomedian all bands
  jointly, so the result need not be any one date and there is no index.

Kernels run in parallel over chunks of pixels (``numba.set_num_threads`` sets the thread count)
and release the GIL. Extra memory beyond the output: per thread, a few arrays of T × chunk values
(chunk ≤ 1024 pixels and T × chunk ≤ 65,536), independent of the image size.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import njit, prange

__all__ = [
    "count",
    "first_valid",
    "geomedian",
    "max_score",
    "mean",
    "median",
    "medoid",
    "min_score",
    "percentile",
]

_MAX_T = int(np.iinfo(np.int16).max)
_CHUNK_VALUES = 1 << 16  # T × chunk pixels held per thread
_MAX_CHUNK = 1024


# --------------------------------------------------------------------------- kernel helpers
# Pixels are flattened: stack [T, B, N], valid [T, N], out [B, N]; a chunk is pixels p0 .. p0+m.


@njit(cache=True, nogil=True)
def _usable(stack, valid, p0, ok, cnt):
    """``ok[t, x]``: observation t of pixel p0 + x is usable; ``cnt[x]``: how many are."""
    T, B, _ = stack.shape
    m = cnt.shape[0]
    cnt[:] = 0
    for t in range(T):
        o = ok[t]
        o[:] = valid[t, p0 : p0 + m]
        for b in range(B):
            s = stack[t, b, p0 : p0 + m]
            for x in range(m):
                o[x] = o[x] & (s[x] == s[x])  # False for NaN; constant True for integers
        for x in range(m):
            cnt[x] += o[x]


@njit(cache=True, nogil=True)
def _masked_copy(dst, src, ok, big):
    for x in range(dst.shape[0]):
        v = src[x]  # load before selecting: keeps the loop branch-free (vectorised)
        dst[x] = v if ok[x] else big


@njit(cache=True, nogil=True)
def _compare_exchange(lo, hi):
    for x in range(lo.shape[0]):
        a = lo[x]
        c = hi[x]
        lo[x] = a if a <= c else c
        hi[x] = c if a <= c else a


@njit(cache=True, nogil=True)
def _put(stack, p0, best, fill, out, index):
    """Copy observation ``best[x]`` of each chunk pixel to ``out`` (``fill`` where it is -1)."""
    for x in range(best.shape[0]):
        index[p0 + x] = best[x]
    for b in range(out.shape[0]):
        for x in range(best.shape[0]):
            t = best[x]
            out[b, p0 + x] = np.float32(fill) if t < 0 else np.float32(stack[t, b, p0 + x])


def _chunk(t: int) -> int:
    return max(16, min(_MAX_CHUNK, _CHUNK_VALUES // max(t, 1)))


def _largest(dtype: np.dtype):
    """The dtype's largest value (+inf for floats), as a scalar of that dtype: sorts last."""
    return dtype.type(np.inf if dtype.kind == "f" else np.iinfo(dtype).max)


@lru_cache(maxsize=64)
def _sorting_network(n: int) -> np.ndarray:
    """Batcher's odd-even merge sort for ``n`` keys as comparator pairs ``int64 [K, 2]`` (i < j).

    Built for the next power of two; comparators touching the padding (conceptually +inf keys
    at the end) never move anything and are dropped.
    """
    p = 1
    while p < n:
        p *= 2
    pairs = []
    size = 1
    while size < p:
        k = size
        while k >= 1:
            for j in range(k % size, p - k, 2 * k):
                for i in range(min(k, p - j - k)):
                    if (i + j) // (size * 2) == (i + j + k) // (size * 2) and i + j + k < n:
                        pairs.append((i + j, i + j + k))
            k //= 2
        size *= 2
    return np.array(pairs, np.int64).reshape(-1, 2)


# --------------------------------------------------------------------------- kernels


@njit(cache=True, nogil=True, parallel=True)
def _select_kernel(stack, valid, score, use_score, sign, fill, chunk, out, index):
    """First usable observation, or the one with the highest ``sign * score`` (NaN scores skip)."""
    T, _, N = stack.shape
    for c in prange((N + chunk - 1) // chunk):
        p0 = c * chunk
        m = min(chunk, N - p0)
        ok = np.empty((T, m), np.bool_)
        cnt = np.empty(m, np.int64)
        _usable(stack, valid, p0, ok, cnt)
        best = np.full(m, -1, np.int64)
        best_s = np.zeros(m, np.float64)
        for t in range(T):
            o = ok[t]
            if use_score:
                sc = score[t, p0 : p0 + m]
                for x in range(m):
                    s = sign * np.float64(sc[x])
                    bt = best[x]
                    bs = best_s[x]
                    take = o[x] & (s == s) & ((bt < 0) | (s > bs))
                    best[x] = t if take else bt
                    best_s[x] = s if take else bs
            else:
                for x in range(m):
                    bt = best[x]
                    best[x] = t if o[x] & (bt < 0) else bt
        _put(stack, p0, best, fill, out, index)


@njit(cache=True, nogil=True)
def _band_quantile(stack, b, p0, ok, cnt, net, big, q, is_median, fill, blk, dst):
    """Band b of a chunk: sort with the network (unusable values become ``big``), then write the
    median (mean of the middle two for even counts) or numpy's 'linear' percentile ``q`` in
    [0, 1] of each pixel to ``dst [m]``."""
    T, m = blk.shape
    for t in range(T):
        _masked_copy(blk[t], stack[t, b, p0 : p0 + m], ok[t], big)
    for k in range(net.shape[0]):
        _compare_exchange(blk[net[k, 0]], blk[net[k, 1]])
    for x in range(m):
        n = cnt[x]
        if n == 0:
            dst[x] = fill
        elif is_median:
            h = n // 2
            if n % 2 == 1:
                dst[x] = blk[h, x]
            else:
                dst[x] = (np.float64(blk[h - 1, x]) + np.float64(blk[h, x])) / 2.0
        else:
            virtual = (n - 1) * q
            lo = int(math.floor(virtual))
            g = virtual - lo
            a = np.float64(blk[lo, x])
            z = np.float64(blk[min(lo + 1, n - 1), x])
            # numpy's two-sided lerp
            dst[x] = z - (z - a) * (1.0 - g) if g >= 0.5 else a + (z - a) * g


@njit(cache=True, nogil=True, parallel=True)
def _quantile_kernel(stack, valid, net, big, q, is_median, fill, chunk, out):
    T, B, N = stack.shape
    for c in prange((N + chunk - 1) // chunk):
        p0 = c * chunk
        m = min(chunk, N - p0)
        ok = np.empty((T, m), np.bool_)
        cnt = np.empty(m, np.int64)
        _usable(stack, valid, p0, ok, cnt)
        blk = np.empty((T, m), stack.dtype)
        for b in range(B):
            dst = out[b, p0 : p0 + m]
            _band_quantile(stack, b, p0, ok, cnt, net, big, q, is_median, fill, blk, dst)


@njit(cache=True, nogil=True, parallel=True)
def _mean_kernel(stack, valid, fill, chunk, out):
    T, B, N = stack.shape
    for c in prange((N + chunk - 1) // chunk):
        p0 = c * chunk
        m = min(chunk, N - p0)
        ok = np.empty((T, m), np.bool_)
        cnt = np.empty(m, np.int64)
        _usable(stack, valid, p0, ok, cnt)
        acc = np.empty(m, np.float64)
        for b in range(B):
            acc[:] = 0.0
            for t in range(T):
                o = ok[t]
                s = stack[t, b, p0 : p0 + m]
                for x in range(m):
                    v = np.float64(s[x])
                    acc[x] += v if o[x] else 0.0
            for x in range(m):
                out[b, p0 + x] = fill if cnt[x] == 0 else acc[x] / cnt[x]


@njit(cache=True, nogil=True, parallel=True)
def _medoid_kernel(stack, valid, fill, chunk, out, index):
    """Sum of distances to all usable partners, accumulated in increasing partner order."""
    T, B, N = stack.shape
    for c in prange((N + chunk - 1) // chunk):
        p0 = c * chunk
        m = min(chunk, N - p0)
        ok = np.empty((T, m), np.bool_)
        cnt = np.empty(m, np.int64)
        _usable(stack, valid, p0, ok, cnt)
        dsum = np.zeros((T, m), np.float64)
        d2 = np.empty(m, np.float64)
        for i in range(T):
            for j in range(i + 1, T):
                d2[:] = 0.0
                for b in range(B):
                    si = stack[i, b, p0 : p0 + m]
                    sj = stack[j, b, p0 : p0 + m]
                    for x in range(m):
                        d = np.float64(si[x]) - np.float64(sj[x])
                        d2[x] += d * d
                for x in range(m):
                    d = math.sqrt(d2[x])
                    d = d if ok[i, x] & ok[j, x] else 0.0
                    dsum[i, x] += d
                    dsum[j, x] += d
        best = np.full(m, -1, np.int64)
        best_d = np.zeros(m, np.float64)
        for t in range(T):
            for x in range(m):
                bt = best[x]
                bd = best_d[x]
                d = dsum[t, x]
                take = ok[t, x] & ((bt < 0) | (d < bd))
                best[x] = t if take else bt
                best_d[x] = d if take else bd
        _put(stack, p0, best, fill, out, index)


@njit(cache=True, nogil=True)
def _snap_to_observation(obs, n, cur, grad):
    """Move ``cur`` onto the observation nearest to it if that observation is the unique geometric
    median: the sum of unit vectors from it to the n - m other observations is shorter than its
    multiplicity m. (Weiszfeld only creeps towards such optima.)"""
    B = cur.shape[0]
    k = 0
    nearest = math.inf
    for i in range(n):
        dd = 0.0
        for b in range(B):
            d = obs[i, b] - cur[b]
            dd += d * d
        if dd < nearest:
            nearest = dd
            k = i
    grad[:] = 0.0
    multiplicity = 0
    for i in range(n):
        dd = 0.0
        for b in range(B):
            d = obs[i, b] - obs[k, b]
            dd += d * d
        if dd == 0.0:
            multiplicity += 1
            continue
        inv = 1.0 / math.sqrt(dd)
        for b in range(B):
            grad[b] += (obs[i, b] - obs[k, b]) * inv
    gg = 0.0
    for b in range(B):
        gg += grad[b] * grad[b]
    if gg < (multiplicity * (1.0 - 1e-9)) ** 2:  # margin: equality (e.g. n = 2) is not unique
        cur[:] = obs[k]


_OVER_RELAXATION = 1.3  # Weiszfeld step multiplier: still a descent for 1 < λ < 2, fewer steps


@njit(cache=True, nogil=True, parallel=True)
def _geomedian_kernel(stack, valid, net, big, eps, max_iter, fill, chunk, out):
    """Over-relaxed Weiszfeld iteration from the per-band median, with the Vardi-Zhang step when
    the estimate sits on an observation."""
    T, B, N = stack.shape
    for c in prange((N + chunk - 1) // chunk):
        p0 = c * chunk
        m = min(chunk, N - p0)
        ok = np.empty((T, m), np.bool_)
        cnt = np.empty(m, np.int64)
        _usable(stack, valid, p0, ok, cnt)
        start = np.empty((B, m), np.float64)
        blk = np.empty((T, m), stack.dtype)
        for b in range(B):
            _band_quantile(stack, b, p0, ok, cnt, net, big, 0.5, True, fill, blk, start[b])
        obs = np.empty((T, B), np.float64)
        cur = np.empty(B, np.float64)
        num = np.empty(B, np.float64)
        for x in range(m):
            n = 0
            for t in range(T):
                if ok[t, x]:
                    for b in range(B):
                        obs[n, b] = stack[t, b, p0 + x]
                    n += 1
            for b in range(B):
                cur[b] = start[b, x]
            for _ in range(max_iter if n > 1 else 0):
                wsum = 0.0
                coincident = 0
                num[:] = 0.0
                for i in range(n):
                    dd = 0.0
                    for b in range(B):
                        d = obs[i, b] - cur[b]
                        dd += d * d
                    if dd == 0.0:
                        coincident += 1
                        continue
                    w = 1.0 / math.sqrt(dd)
                    wsum += w
                    for b in range(B):
                        num[b] += w * obs[i, b]
                if wsum == 0.0:
                    break  # all observations coincide with the estimate
                # num -> Weiszfeld update T(cur); r = |sum_i w_i (x_i - cur)| = wsum |T(cur) - cur|
                rr = 0.0
                for b in range(B):
                    num[b] /= wsum
                    d = num[b] - cur[b]
                    rr += d * d
                r = wsum * math.sqrt(rr)
                if coincident > 0 and r <= coincident:
                    break  # cur is an observation that satisfies the optimality condition
                # on an observation: Vardi-Zhang step; elsewhere: over-relaxed Weiszfeld step
                step = 1.0 - coincident / r if coincident > 0 else _OVER_RELAXATION
                moved = 0.0
                norm = 0.0
                for b in range(B):
                    d = step * (num[b] - cur[b])
                    cur[b] += d
                    moved += d * d
                    norm += cur[b] * cur[b]
                if moved <= eps * eps * norm:
                    break
            if n > 1:
                _snap_to_observation(obs, n, cur, num)
            for b in range(B):
                out[b, p0 + x] = cur[b] if n > 0 else fill


# --------------------------------------------------------------------------- public API


def _prepare(stack: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check layouts; return the flattened stack [T, B, N], valid [T, N] and an empty output."""
    stack = np.asarray(stack)
    valid = np.asarray(valid)
    if stack.ndim != 4:
        raise ValueError(f"stack must be [T, B, H, W], got shape {stack.shape}")
    if stack.dtype.kind not in "uif":
        raise TypeError(f"stack must have an integer or float dtype, got {stack.dtype}")
    t, b, h, w = stack.shape
    if valid.shape != (t, h, w):
        raise ValueError(f"valid must be [T, H, W] = {(t, h, w)}, got shape {valid.shape}")
    if t > _MAX_T:
        raise ValueError(f"at most {_MAX_T} observations, got {t}")
    flat = np.ascontiguousarray(stack).reshape(t, b, h * w)
    valid = np.ascontiguousarray(valid, dtype=np.bool_).reshape(t, h * w)
    return flat, valid, np.empty((b, h * w), np.float32)


def _result(out: np.ndarray, shape: tuple[int, ...], index=None, return_index: bool = False):
    out = out.reshape(shape[1:])
    return (out, index.reshape(shape[2:])) if return_index else out


def count(valid: np.ndarray) -> np.ndarray:
    """Number of True flags per pixel: ``valid [T, H, W]`` bool → ``uint16 [H, W]``.

    NaN values of a stack are not seen here; count the usable observations of a float stack with
    ``count(valid & ~np.isnan(stack).any(axis=1))``.
    """
    valid = np.asarray(valid, dtype=np.bool_)
    if valid.ndim != 3:
        raise ValueError(f"valid must be [T, H, W], got shape {valid.shape}")
    if valid.shape[0] > np.iinfo(np.uint16).max:
        raise ValueError(f"at most 65535 observations, got {valid.shape[0]}")
    return valid.sum(axis=0, dtype=np.uint16)


def first_valid(
    stack: np.ndarray, valid: np.ndarray, *, nodata: float = np.nan, return_index: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The first usable observation in time order (order the stack newest first for "latest")."""
    flat, ok, out = _prepare(stack, valid)
    index = np.empty(flat.shape[2], np.int16)
    dummy = np.empty((1, 1), np.float64)
    _select_kernel(flat, ok, dummy, False, 1.0, float(nodata), _chunk(flat.shape[0]), out, index)
    return _result(out, np.shape(stack), index, return_index)


def _by_score(stack, valid, score, sign, nodata, return_index):
    flat, ok, out = _prepare(stack, valid)
    score = np.asarray(score)
    if score.shape != np.shape(valid):
        raise ValueError(f"score must be [T, H, W] = {np.shape(valid)}, got shape {score.shape}")
    if score.dtype not in (np.float32, np.float64):
        score = score.astype(np.float64)
    score = np.ascontiguousarray(score).reshape(ok.shape)
    index = np.empty(flat.shape[2], np.int16)
    _select_kernel(flat, ok, score, True, sign, float(nodata), _chunk(flat.shape[0]), out, index)
    return _result(out, np.shape(stack), index, return_index)


def max_score(
    stack: np.ndarray,
    valid: np.ndarray,
    score: np.ndarray,
    *,
    nodata: float = np.nan,
    return_index: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The usable observation with the highest ``score [T, H, W]`` (any real dtype, e.g. NDVI).

    Observations with a NaN score are skipped; ties go to the lowest time index.
    """
    return _by_score(stack, valid, score, 1.0, nodata, return_index)


def min_score(
    stack: np.ndarray,
    valid: np.ndarray,
    score: np.ndarray,
    *,
    nodata: float = np.nan,
    return_index: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The usable observation with the lowest ``score`` (e.g. blue reflectance, cloud probability).

    Same as :func:`max_score` of ``-score``, without materialising it.
    """
    return _by_score(stack, valid, score, -1.0, nodata, return_index)


def _quantile(stack, valid, q, is_median, nodata):
    flat, ok, out = _prepare(stack, valid)
    net, big = _sorting_network(flat.shape[0]), _largest(flat.dtype)
    _quantile_kernel(flat, ok, net, big, q, is_median, float(nodata), _chunk(flat.shape[0]), out)
    return _result(out, np.shape(stack))


def median(stack: np.ndarray, valid: np.ndarray, *, nodata: float = np.nan) -> np.ndarray:
    """Per-band median of the usable observations; for an even count the mean of the middle two."""
    return _quantile(stack, valid, 0.5, True, nodata)


def percentile(
    stack: np.ndarray, valid: np.ndarray, q: float, *, nodata: float = np.nan
) -> np.ndarray:
    """Per-band ``q``-th percentile (0 ≤ q ≤ 100) of the usable observations.

    Linear interpolation between the closest ranks, as ``numpy.percentile``'s default method.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be within [0, 100], got {q}")
    return _quantile(stack, valid, float(q) / 100.0, False, nodata)


def mean(stack: np.ndarray, valid: np.ndarray, *, nodata: float = np.nan) -> np.ndarray:
    """Per-band mean of the usable observations (summed in float64: no integer overflow)."""
    flat, ok, out = _prepare(stack, valid)
    _mean_kernel(flat, ok, float(nodata), _chunk(flat.shape[0]), out)
    return _result(out, np.shape(stack))


def medoid(
    stack: np.ndarray, valid: np.ndarray, *, nodata: float = np.nan, return_index: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The usable observation with the smallest sum of Euclidean distances (over the B bands, in
    stack units, computed in float64) to the other usable observations of its pixel."""
    flat, ok, out = _prepare(stack, valid)
    index = np.empty(flat.shape[2], np.int16)
    _medoid_kernel(flat, ok, float(nodata), _chunk(flat.shape[0]), out, index)
    return _result(out, np.shape(stack), index, return_index)


def geomedian(
    stack: np.ndarray,
    valid: np.ndarray,
    eps: float = 1e-4,
    max_iter: int = 100,
    *,
    nodata: float = np.nan,
) -> np.ndarray:
    """Geometric median over the B bands of the usable observations (Weiszfeld, float64).

    Starts from the per-band median and takes over-relaxed Weiszfeld steps until a step is at
    most ``eps`` times the estimate's Euclidean norm (relative, so DN and reflectance stacks
    behave alike) or ``max_iter`` steps were taken; finally snaps to the nearest observation if
    that one is the exact, unique optimum (e.g. a value shared by half of the observations).
    The sum of distances is then within about ``eps`` of its minimum; the position may differ
    more where the optimum lies in a flat valley (e.g. two equally large clusters). A pixel with
    a single usable observation returns it.
    """
    if not eps > 0 or max_iter < 0:
        raise ValueError(f"need eps > 0 and max_iter >= 0, got eps={eps}, max_iter={max_iter}")
    flat, ok, out = _prepare(stack, valid)
    net, big = _sorting_network(flat.shape[0]), _largest(flat.dtype)
    chunk = _chunk(flat.shape[0])
    _geomedian_kernel(flat, ok, net, big, float(eps), int(max_iter), float(nodata), chunk, out)
    return _result(out, np.shape(stack))
