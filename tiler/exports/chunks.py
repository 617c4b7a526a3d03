"""Chunking of an export's output grid.

The output grid is `width` × `height` pixels of an affine `transform`; chunk `i` is the window
`windows(width, height, size)[i]` (row-major, `size` × `size`, smaller at the right and bottom edges),
so chunks never overlap and leave no gaps. A chunk's `Grid` is that window of the full transform:
its pixels are exactly the output's pixels, which is why chunked and single-chunk exports agree.
"""

from __future__ import annotations

from typing import NamedTuple

from rasterio.crs import CRS
from rasterio.transform import Affine

from mosaics.grid import Grid


class Window(NamedTuple):
    """Pixel window of the output grid."""

    col_off: int
    row_off: int
    width: int
    height: int


def windows(width: int, height: int, size: int) -> list[Window]:
    """Row-major `size`² windows tiling a `width` × `height` grid exactly."""
    if width < 1 or height < 1 or size < 1:
        raise ValueError(f"bad grid {width}×{height} or chunk size {size}")
    return [
        Window(col, row, min(size, width - col), min(size, height - row))
        for row in range(0, height, size)
        for col in range(0, width, size)
    ]


def window_transform(transform: Affine, window: Window) -> Affine:
    """The transform of `window` (north-up grids)."""
    return Affine(
        transform.a, 0.0, transform.c + window.col_off * transform.a,
        0.0, transform.e, transform.f + window.row_off * transform.e,
    )  # fmt: skip


def window_grid(transform: Affine, crs: CRS, window: Window) -> Grid:
    """The `Grid` of `window` of the output grid."""
    t = window_transform(transform, window)
    left, top = t.c, t.f
    right, bottom = left + window.width * t.a, top + window.height * t.e
    return Grid((left, bottom, right, top), crs, window.width, window.height)
