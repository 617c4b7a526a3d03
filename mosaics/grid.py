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

    def __hash__(self) -> int:
        # a grid keys the pixel-map caches once per band read; hashing its CRS costs ~25 µs, so it is hashed once
        if (cached := self.__dict__.get("_hash")) is None:
            cached = self.__dict__["_hash"] = hash((self.bounds, self.crs, self.width, self.height))
        return cached

    def __getstate__(self) -> dict:
        """Pickled without the cached hash (string hashes differ between processes)."""
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    @classmethod
    def for_tile(cls, tms: TileMatrixSet, tile: Tile, tilesize: int = 256, buffer: float = 0) -> Grid:
        """The grid of a tile of a tile matrix set, grown by `buffer` pixels on each side."""
        return cls(tuple(tms.xy_bounds(tile)), tms.rasterio_crs, tilesize, tilesize).buffered(buffer)

    def buffered(self, pixels: float) -> Grid:
        """This grid grown by `pixels` on each side, at the same resolution."""
        if not pixels:
            return self
        left, bottom, right, top = self.bounds
        pad_x, pad_y = (right - left) / self.width * pixels, (top - bottom) / self.height * pixels
        bounds = (left - pad_x, bottom - pad_y, right + pad_x, top + pad_y)
        return Grid(bounds, self.crs, int(self.width + 2 * pixels), int(self.height + 2 * pixels))

    @property
    def transform(self) -> Affine:
        """Pixel → CRS coordinates."""
        return from_bounds(*self.bounds, self.width, self.height)
