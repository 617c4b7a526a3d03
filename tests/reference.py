"""Plain-numpy reference implementations of the algorithms/ kernels, for tests only.

Written for obviousness, not speed: float64 copies, loops over time, numpy's own nan-reductions.
Layouts as in algorithms/: stack [T, B, H, W], valid [T, H, W], outputs float32 [B, H, W] and
int16 [H, W] indices (-1 = none). Sums run in increasing time / band order, as in the kernels.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

NAN = np.float32(np.nan)


# ----------------------------------------------------------------------------- composites


def usable(stack: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """valid, and no band NaN."""
    ok = np.asarray(valid, bool).copy()
    if stack.dtype.kind == "f":
        ok &= ~np.isnan(stack).any(axis=1)
    return ok


def _masked_float(stack, valid):
    return np.where(usable(stack, valid)[:, None], stack.astype(np.float64), np.nan)


def _fill(values: np.ndarray, has: np.ndarray, nodata: float) -> np.ndarray:
    out = values.astype(np.float32)
    out[:, ~has] = nodata
    return out


def pick(stack: np.ndarray, index: np.ndarray, nodata: float = np.nan) -> np.ndarray:
    """Values of observation index[y, x] at each pixel, nodata where the index is -1."""
    out = np.full(stack.shape[1:], nodata, np.float32)
    for t in range(stack.shape[0]):
        chosen = index == t
        out[:, chosen] = stack[t][:, chosen]
    return out


def first_valid(stack, valid, nodata=np.nan):
    ok = usable(stack, valid)
    index = np.full(ok.shape[1:], -1, np.int16)
    for t in reversed(range(ok.shape[0])):
        index[ok[t]] = t
    return pick(stack, index, nodata), index


def max_score(stack, valid, score, nodata=np.nan):
    score = np.asarray(score, np.float64)
    ok = usable(stack, valid) & ~np.isnan(score)
    index = np.full(ok.shape[1:], -1, np.int16)
    best = np.zeros(ok.shape[1:])
    for t in range(ok.shape[0]):
        take = ok[t] & ((index < 0) | (score[t] > best))
        index[take] = t
        best[take] = score[t][take]
    return pick(stack, index, nodata), index


def count(valid):
    return np.asarray(valid, bool).sum(axis=0).astype(np.uint16)


def median(stack, valid, nodata=np.nan):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        values = np.nanmedian(_masked_float(stack, valid), axis=0)
    return _fill(values, usable(stack, valid).any(axis=0), nodata)


def percentile(stack, valid, q, nodata=np.nan):
    """numpy.percentile of each pixel's usable values, run per group of pixels with the same count
    (numpy.nanpercentile does the same but loops over pixels in Python: minutes for a tile)."""
    ordered = np.sort(_masked_float(stack, valid), axis=0)  # NaN last
    n = usable(stack, valid).sum(axis=0)
    out = np.full(stack.shape[1:], nodata, np.float32)
    for k in range(1, stack.shape[0] + 1):
        group = n == k
        out[:, group] = np.percentile(ordered[:k][:, :, group], q, axis=0)
    return out


def mean(stack, valid, nodata=np.nan):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        values = np.nanmean(_masked_float(stack, valid), axis=0)
    return _fill(values, usable(stack, valid).any(axis=0), nodata)


def distance_sums(stack, valid):
    """[T, H, W]: sum over usable partners s (in increasing s) of |x_t - x_s| (bands in order)."""
    ok = usable(stack, valid)
    x = stack.astype(np.float64)
    t_count, bands = x.shape[:2]
    sums = np.zeros(ok.shape)
    for t in range(t_count):
        for s in range(t_count):
            if s == t:
                continue
            squares = np.zeros(ok.shape[1:])
            for b in range(bands):
                squares += (x[t, b] - x[s, b]) ** 2
            sums[t] += np.where(ok[s], np.sqrt(squares), 0.0)
    return sums


def medoid(stack, valid, nodata=np.nan):
    ok = usable(stack, valid)
    sums = distance_sums(stack, valid)
    index = np.full(ok.shape[1:], -1, np.int16)
    best = np.zeros(ok.shape[1:])
    for t in range(ok.shape[0]):
        take = ok[t] & ((index < 0) | (sums[t] < best))
        index[take] = t
        best[take] = sums[t][take]
    return pick(stack, index, nodata), index


def geomedian_point(points: np.ndarray, tol: float = 1e-12, max_iter: int = 100_000) -> np.ndarray:
    """Geometric median of points [n, B] (float64). A point is the unique optimum iff the unit
    vectors from it to the other points sum to less than its multiplicity; otherwise the optimum
    is not a data point and Weiszfeld (Vardi-Zhang step on data points) runs to a relative step
    of ``tol``."""
    for p in points:
        d = np.sqrt(((points - p) ** 2).sum(axis=1))
        others = d > 0
        pull = ((points[others] - p) / d[others][:, None]).sum(axis=0)
        if np.linalg.norm(pull) < (~others).sum() * (1 - 1e-9):  # strictly: the optimum is unique
            return p
    y = points.mean(axis=0)
    for _ in range(max_iter):
        d = np.sqrt(((points - y) ** 2).sum(axis=1))
        at_y = d == 0
        if at_y.all():
            return y
        w = 1.0 / d[~at_y]
        t_y = (w[:, None] * points[~at_y]).sum(axis=0) / w.sum()
        eta = at_y.sum()
        r = w.sum() * np.linalg.norm(t_y - y)
        if eta and r <= eta:
            return y
        gamma = min(1.0, eta / r) if eta else 0.0
        new = (1 - gamma) * t_y + gamma * y
        done = np.linalg.norm(new - y) <= tol * np.linalg.norm(new)
        y = new
        if done:
            break
    return y


def geomedian(stack, valid, nodata=np.nan):
    ok = usable(stack, valid)
    out = np.full(stack.shape[1:], nodata, np.float64)
    for yx in zip(*np.nonzero(ok.any(axis=0)), strict=True):
        points = stack[(slice(None), slice(None)) + yx][ok[(slice(None),) + yx]]
        out[(slice(None),) + yx] = geomedian_point(points.astype(np.float64))
    return out.astype(np.float32)


def sum_of_distances(stack, valid, centre):
    """[H, W]: sum over usable observations of |x_t - centre| (float64)."""
    ok = usable(stack, valid)
    x = stack.astype(np.float64)
    d = np.sqrt(((x - np.asarray(centre, np.float64)[None]) ** 2).sum(axis=1))
    return np.where(ok, d, 0.0).sum(axis=0)


# ----------------------------------------------------------------------------- indices


def _f64(*arrays):
    return [np.asarray(a, np.float32).astype(np.float64) for a in arrays]


def _ratio(num, den):
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    out[den == 0] = np.nan
    return out.astype(np.float32)


def normalized_difference(a, b):
    a, b = _f64(a, b)
    return _ratio(a - b, a + b)


def evi(nir, red, blue, g=2.5, c1=6.0, c2=7.5, soil=1.0):
    nir, red, blue = _f64(nir, red, blue)
    return _ratio(g * (nir - red), nir + c1 * red - c2 * blue + soil)


def savi(nir, red, soil=0.5):
    nir, red = _f64(nir, red)
    return _ratio((1 + soil) * (nir - red), nir + red + soil)


def msavi(nir, red):
    nir, red = _f64(nir, red)
    disc = (2 * nir + 1) ** 2 - 8 * (nir - red)
    with np.errstate(invalid="ignore"):
        out = (2 * nir + 1 - np.sqrt(disc)) / 2
    return out.astype(np.float32)


# ----------------------------------------------------------------------------- masks


def scl_valid(scl, invalid=(0, 1, 3, 8, 9, 10)):
    return ~np.isin(scl, list(invalid))


def bqa_valid(bqa, cloud=2, cirrus=3, snow=None):
    bqa = bqa.astype(np.int64)
    ok = (bqa % 2 == 0) & ((bqa // 2) % 2 == 0) & ((bqa // 4) % 2 == 0)
    for level, first_bit in ((cloud, 14), (cirrus, 12), (snow, 10)):
        if level is not None:
            ok &= (bqa // 2**first_bit) % 4 < level
    return ok


def qa_pixel_valid(qa, dilated_cloud=True, cirrus=True, cloud_shadow=True, snow=False):
    bit = lambda n: (qa.astype(np.int64) // 2**n) % 2 == 1  # noqa: E731
    bad = bit(0) | bit(3)
    for flag, n in ((dilated_cloud, 1), (cirrus, 2), (cloud_shadow, 4), (snow, 5)):
        if flag:
            bad |= bit(n)
    return ~bad


def dilate_invalid(valid, pixels):
    """A pixel stays valid iff every in-image pixel within Chebyshev distance ``pixels`` is."""
    valid = np.asarray(valid, bool)
    h, w = valid.shape[-2:]
    invalid = np.pad(~valid, [(0, 0)] * (valid.ndim - 2) + [(pixels, pixels)] * 2)
    grown = np.zeros(valid.shape, bool)
    for dy in range(2 * pixels + 1):
        for dx in range(2 * pixels + 1):
            grown |= invalid[..., dy : dy + h, dx : dx + w]
    return ~grown


# ----------------------------------------------------------------------------- corrections


def scale_offset(dn, scale, offset, nodata):
    x = dn.astype(np.float64)
    out = x * scale + offset
    bad = np.isnan(x) if nodata is None else np.isnan(x) | (x == nodata)
    out[bad] = np.nan
    return out.astype(np.float32)


def landsat_toa(dn, mult, add, sun_elevation_deg):
    out = (mult * dn.astype(np.float64) + add) / math.sin(math.radians(sun_elevation_deg))
    out[dn == 0] = np.nan
    return out


# ----------------------------------------------------------------------------- reads


def nearest_tile(path, tms, tile, size: int = 256, band: int = 1, buffer: int = 0) -> np.ma.MaskedArray:
    """A band of the raster at `path` on a tile (grown by `buffer` pixels on each side), masked where outside
    the raster or nodata.

    Each tile pixel takes the source pixel that contains its centre (GDAL's coordinate transformation,
    rasterio's `rowcol`), read from the coarsest overview whose pixels are not larger than the tile's
    pixels at the tile centre; the whole band of that level is read.
    """
    import rasterio
    from rasterio.transform import rowcol
    from rasterio.warp import transform

    left, bottom, right, top = tms.xy_bounds(tile)
    step = (right - left) / size
    left, top, size = left - buffer * step, top + buffer * step, size + 2 * buffer
    xs, ys = np.meshgrid(left + (np.arange(size) + 0.5) * step, top - (np.arange(size) + 0.5) * step)
    with rasterio.open(path) as src:
        sx, sy = transform(tms.rasterio_crs, src.crs, xs.ravel(), ys.ravel())
        middle = left + size * step / 2, top - size * step / 2
        (x0, x1), (y0, y1) = transform(tms.rasterio_crs, src.crs, [middle[0], middle[0] + step], [middle[1]] * 2)
        pixel = math.hypot(x1 - x0, y1 - y0) / src.res[0]
        levels = [i for i, factor in enumerate(src.overviews(1)) if factor <= pixel]
        nodata = src.nodata
    options = {"overview_level": levels[-1]} if levels else {}
    with rasterio.open(path, **options) as level:
        data = level.read(band)
        rows, cols = rowcol(level.transform, sx, sy, op=math.floor)
    rows, cols = np.asarray(rows).reshape(size, size), np.asarray(cols).reshape(size, size)
    inside = (rows >= 0) & (cols >= 0) & (rows < data.shape[0]) & (cols < data.shape[1])
    values = np.where(inside, data[np.clip(rows, 0, data.shape[0] - 1), np.clip(cols, 0, data.shape[1] - 1)], 0)
    mask = ~inside
    if nodata is not None:
        mask |= np.isnan(values) if math.isnan(nodata) else values == nodata
    return np.ma.MaskedArray(values, mask=mask)


# ----------------------------------------------------------------------------- statistics


def band_statistics(values, inside, percentiles=(2, 98), bins=10, histogram_range=None):
    """Per band: numpy's reductions on the float64 copy of the finite values inside."""
    out = []
    for band in values:
        sample = band[np.asarray(inside, bool) & np.isfinite(band)].astype(np.float64)
        if sample.size:
            stats = {"count": sample.size, "min": sample.min(), "max": sample.max(), "mean": sample.mean(),
                     "sum": sample.sum(), "std": sample.std(), "median": np.percentile(sample, 50),
                     "percentiles": {p: np.percentile(sample, p) for p in percentiles}}
        else:
            stats = {"count": 0, **{k: np.nan for k in ("min", "max", "mean", "std", "median")}, "sum": 0.0,
                     "percentiles": {p: np.nan for p in percentiles}}
        counts, edges = np.histogram(sample, bins=bins, range=histogram_range)
        stats["histogram"] = (counts.tolist(), edges.tolist())
        out.append(stats)
    return out


def zonal_summary(values, valid, data, inside):
    """Per date: nanmean of each band over inside & data & valid, and the pixel counts."""
    inside = np.asarray(inside, bool)
    usable = inside & data & valid
    means = np.full(values.shape[:2], np.nan)
    for t in range(values.shape[0]):
        for b in range(values.shape[1]):
            sample = values[t, b][usable[t]].astype(np.float64)
            sample = sample[np.isfinite(sample)]
            if sample.size:
                means[t, b] = sample.mean()
    return {"mean": means, "usable": usable.sum(axis=(1, 2)), "masked": (inside & data & ~valid).sum(axis=(1, 2)),
            "missing": (inside & ~data).sum(axis=(1, 2)), "pixels": int(inside.sum())}
