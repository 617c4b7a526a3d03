"""Nearest-neighbour pixel maps: which source pixel every pixel of an output `Grid` takes.

A warped read through a GDAL warped VRT costs several times the read itself for a 256² tile. Composites
read the same grid from many scenes that share a few source grids (a Sentinel-2 tile's scenes all share
one), so the mapping is computed once per (output grid, source grid) with PROJ, kept in an LRU cache, and
each read becomes one plain window read of the right overview level plus a gather. A 256² map holds
0.6 MB; the caches keep the 32 newest maps and the 8 newest grids' pixel centres per process.

PROJ projects every 16th pixel centre of each row and column (and the centres halfway between, which bound
the interpolation error) instead of every centre (≈ 20 ms for a 256² tile); the others are interpolated. Those
that may lie closer to a source pixel edge than that bound are projected too, so the map is the one of
projecting every centre.

Nearest rule (as GDAL's): an output pixel takes the source pixel that contains its centre. The overview
read is the coarsest one whose pixels are not larger than the output pixels (none: full resolution).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from affine import Affine
from pyproj import Transformer
from rasterio.windows import Window

from mosaics.grid import Grid


@dataclass(frozen=True)
class SourceGrid:
    """A raster's grid: CRS (WKT or authority string), geotransform, shape, and its overview levels' decimation
    factors and (height, width) (GDAL's tools round an overview's size up or down: 915 px → 458 or 457)."""

    crs: str
    transform: tuple[float, ...]
    height: int
    width: int
    overviews: tuple[int, ...] = ()
    overview_shapes: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class PixelMap:
    """Where each output pixel reads from: a window of one overview level, and a position in that window."""

    level: int | None  # overview index (rasterio's `overview_level`), None for full resolution
    window: Window | None  # the source window to read, None when no output pixel falls on the raster
    rows: np.ndarray  # int32 [H, W] row in the window (0 where outside)
    cols: np.ndarray  # int32 [H, W] column in the window (0 where outside)
    inside: np.ndarray  # bool [H, W] the pixel centre falls on the raster
    flat: np.ndarray  # intp [H * W] position of each output pixel in the flattened window
    outside: np.ndarray | None  # intp [n] flat positions of the output pixels off the raster, None when none are
    _blocks: dict = field(default_factory=dict, init=False, compare=False, repr=False)  # block shape → pixels' blocks

    def take(self, window_data: np.ndarray) -> np.ndarray:
        """The output grid's values `[..., H, W]` from the window's `window_data[..., h, w]` (outside: 0)."""
        lead = window_data.shape[:-2]
        flat = np.ascontiguousarray(window_data).reshape(*lead, -1)
        out = np.take(flat, self.flat, axis=-1)
        if self.outside is not None:
            out[..., self.outside] = 0
        return out.reshape(*lead, *self.rows.shape)

    def parts(self, wanted: np.ndarray, block: tuple[int, int]) -> list[Window]:
        """The parts of `window` to read (offsets relative to it) for the output pixels `wanted[H, W]`: per row of the
        raster's blocks (`block`: rows, columns of one block at this level), each run of neighbouring blocks holding a
        wanted pixel. Blocks are read and decompressed whole, so the others cost nothing; one part is the window."""
        window = self.window
        take = wanted & self.inside
        if window is None or not take.any():
            return []
        whole = [Window(0, 0, window.width, window.height)]
        block_rows, block_cols = block
        first_row, first_col = window.row_off // block_rows, window.col_off // block_cols
        shape = ((window.row_off + window.height - 1) // block_rows - first_row + 1,
                 (window.col_off + window.width - 1) // block_cols - first_col + 1)
        if shape == (1, 1):
            return whole
        if (blocks := self._blocks.get(block)) is None:
            blocks = self._blocks[block] = (
                ((self.rows + window.row_off) // block_rows - first_row) * shape[1]
                + (self.cols + window.col_off) // block_cols - first_col
            )
        needed = np.bincount(blocks[take], minlength=shape[0] * shape[1]).reshape(shape) > 0
        if needed.all():
            return whole
        parts = []
        for i, row in enumerate(needed):
            top = max((first_row + i) * block_rows, window.row_off)
            bottom = min((first_row + i + 1) * block_rows, window.row_off + window.height)
            edges = np.flatnonzero(np.diff(np.concatenate([[False], row, [False]]).astype(np.int8)))
            for start, stop in zip(edges[::2], edges[1::2]):
                left = max((first_col + start) * block_cols, window.col_off)
                right = min((first_col + stop) * block_cols, window.col_off + window.width)
                parts.append(Window(int(left - window.col_off), top - window.row_off, int(right - left), bottom - top))
        return parts


@lru_cache(maxsize=64)
def _transformer(src: str, dst: str) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


LATTICE_STEP = 16  # pixels between the centres PROJ projects
SAFETY = 4.0  # the error bound: this many times the error seen halfway between lattice centres
MAX_ERROR = 0.05  # source pixels: beyond it, every centre is projected


def _project(grid: Grid, crs: str, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The centres of the grid's pixels (`rows`, `cols`) projected to `crs` by PROJ."""
    return _transformer(grid.crs.to_wkt(), crs).transform(*(grid.transform * (cols + 0.5, rows + 0.5)))


@dataclass(frozen=True)
class Centres:
    """A grid's pixel centres `x[H, W], y[H, W]` in a source CRS, each within `error` (CRS units) of its exact
    projection."""

    x: np.ndarray
    y: np.ndarray
    error: float


def _lattice(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lattice pixels along an axis of `size` (every LATTICE_STEP-th and the last; at least 3), and for
    every pixel the lattice interval it lies in and its weight towards the interval's end."""
    nodes = np.unique(np.r_[np.arange(0, size, LATTICE_STEP), size - 1])
    pixels = np.arange(size)
    cell = np.minimum(np.searchsorted(nodes, pixels, side="right") - 1, len(nodes) - 2)
    weight = (pixels - nodes[cell]) / np.diff(nodes)[cell]
    return nodes, cell, weight


def _interpolate(values: np.ndarray, rows: tuple, cols: tuple) -> np.ndarray:
    """Bilinear interpolation of `values[row nodes, column nodes]` to every pixel."""
    _, col_cell, col_weight = cols
    _, row_cell, row_weight = rows
    along = values[:, col_cell] * (1 - col_weight) + values[:, col_cell + 1] * col_weight
    return along[row_cell] * (1 - row_weight[:, None]) + along[row_cell + 1] * row_weight[:, None]


@lru_cache(maxsize=8)
def _centres(grid: Grid, crs: str) -> Centres:
    """The grid's pixel centres in `crs` (shared by every source grid in that CRS): projected on the lattice
    and interpolated; all projected for small grids and where the lattice is not projectable.

    The error bound adds the largest errors seen halfway along the lattice's rows and along its columns (the
    interpolation error of each direction's curvature; at cell centres they cancel for conformal projections)."""
    if min(grid.height, grid.width) > 2 * LATTICE_STEP:
        rows, cols = _lattice(grid.height), _lattice(grid.width)
        lattice_x, lattice_y = _project(grid, crs, *np.meshgrid(rows[0], cols[0], indexing="ij"))
        if np.isfinite(lattice_x).all() and np.isfinite(lattice_y).all():
            x, y = _interpolate(lattice_x, rows, cols), _interpolate(lattice_y, rows, cols)
            halfway = [(rows[0], (cols[0][:-1] + cols[0][1:]) // 2), ((rows[0][:-1] + rows[0][1:]) // 2, cols[0])]
            seen = 0.0
            for at_rows, at_cols in halfway:
                exact_x, exact_y = _project(grid, crs, *np.meshgrid(at_rows, at_cols, indexing="ij"))
                cells = np.ix_(at_rows, at_cols)
                seen += max(np.abs(exact_x - x[cells]).max(), np.abs(exact_y - y[cells]).max())
            rounding = 1e-12 * max(np.abs(lattice_x).max(), np.abs(lattice_y).max(), 1.0)
            return Centres(x, y, SAFETY * seen + rounding)
    return _projected(grid, crs)


def _projected(grid: Grid, crs: str) -> Centres:
    """Every pixel centre projected by PROJ."""
    return Centres(*_project(grid, crs, *np.meshgrid(np.arange(grid.height), np.arange(grid.width), indexing="ij")), 0.0)


_STRIPES = [threading.Lock() for _ in range(16)]


def pixel_map(grid: Grid, source: SourceGrid) -> PixelMap:
    """The nearest-neighbour map from `grid` onto `source`, computed once when many threads (the scenes of
    one composite) ask for it at the same time."""
    with _STRIPES[hash((grid, source)) % len(_STRIPES)]:
        return _pixel_map(grid, source)


@lru_cache(maxsize=32)
def _pixel_map(grid: Grid, source: SourceGrid) -> PixelMap:
    to_pixels = ~Affine(*source.transform[:6])
    centres = _centres(grid, source.crs)
    margin = centres.error / min(abs(source.transform[0]), abs(source.transform[4]))  # in source pixels
    if not margin <= MAX_ERROR:
        centres, margin = _projected(grid, source.crs), 0.0
    col, row = to_pixels * (centres.x, centres.y)
    level, _ = _overview(source, col, row)
    if level is None:
        height, width = source.height, source.width
    else:  # an overview covers the raster's extent with its own pixels
        height, width = source.overview_shapes[level]
    scale_col, scale_row = width / source.width, height / source.height
    col, row = col * scale_col, row * scale_row
    if margin:  # centres that may lie across a pixel edge from where they are interpolated: projected
        near = np.nonzero((np.abs(col - np.rint(col)) <= margin) | (np.abs(row - np.rint(row)) <= margin))
        if near[0].size:
            exact_col, exact_row = to_pixels * _project(grid, source.crs, *near)
            col[near], row[near] = exact_col * scale_col, exact_row * scale_row
    col, row = np.floor(col), np.floor(row)
    inside = (col >= 0) & (row >= 0) & (col < width) & (row < height)  # False for NaN (not projectable)
    if not inside.any():
        zeros = np.zeros(inside.shape, dtype=np.int32)
        return PixelMap(level, None, zeros, zeros, inside, np.zeros(inside.size, dtype=np.intp), None)
    col0, row0 = int(col[inside].min()), int(row[inside].min())
    col1, row1 = int(col[inside].max()) + 1, int(row[inside].max()) + 1
    rows = np.where(inside, row - row0, 0).astype(np.int32)
    cols = np.where(inside, col - col0, 0).astype(np.int32)
    flat = (rows.astype(np.intp) * (col1 - col0) + cols).ravel()
    outside = None if inside.all() else np.flatnonzero(~inside)
    return PixelMap(level, Window(col0, row0, col1 - col0, row1 - row0), rows, cols, inside, flat, outside)


def _overview(source: SourceGrid, col: np.ndarray, row: np.ndarray) -> tuple[int | None, int]:
    """(overview index or None, decimation factor): the coarsest level not coarser than the output pixels.

    The output pixel size in source pixels is the median step between neighbouring pixel centres along the
    middle row and column of the grid.
    """
    mid_row, mid_col = col.shape[0] // 2, col.shape[1] // 2
    steps = np.concatenate([
        np.hypot(np.diff(col[mid_row]), np.diff(row[mid_row])), np.hypot(np.diff(col[:, mid_col]), np.diff(row[:, mid_col])),
    ])
    steps = steps[np.isfinite(steps)]
    if not steps.size:
        return None, 1
    output_pixel = float(np.median(steps))
    level, factor = None, 1
    for index, candidate in enumerate(source.overviews):
        if candidate <= output_pixel:
            level, factor = index, candidate
    return level, factor
