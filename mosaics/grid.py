"""Grid: the output raster a read or a composite fills (bounds, CRS and size); a tile is one kind of grid."""

from __future__ import annotations

from dataclasses import dataclass

from morecantile import Tile, TileMatrixSet
from rasterio.crs import CRS
from rasterio.transform import Affine, from_bounds


@dataclass(frozen=True)
class Grid:
    """`width` × `height` pixels covering `bounds` (left, bottom, right, top) in `crs`."""

    bounds: tuple[float, float, float, float]
    crs: CRS
    width: int
    height: int

    @classmethod
    def for_tile(cls, tms: TileMatrixSet, tile: Tile, tilesize: int = 256, buffer: float = 0) -> Grid:
        """The grid of a tile of a tile matrix set, grown by `buffer` pixels on each side."""
        left, bottom, right, top = tms.xy_bounds(tile)
        pad_x, pad_y = (right - left) / tilesize * buffer, (top - bottom) / tilesize * buffer
        size = int(tilesize + 2 * buffer)
        return cls((left - pad_x, bottom - pad_y, right + pad_x, top + pad_y), tms.rasterio_crs, size, size)

    @property
    def transform(self) -> Affine:
        """Pixel → CRS coordinates."""
        return from_bounds(*self.bounds, self.width, self.height)
