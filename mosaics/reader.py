"""SceneReader: a rio-tiler reader over one catalog item that returns physical values.

Reading goes through rio-tiler (tiles, points, previews of each asset); the catalog's `raster:bands`
scale/offset are applied before the recipe (band combination, expression or index) is evaluated, so that
band math always works on physical values (e.g. reflectance 0–1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attr
import numpy as np
from affine import Affine
from morecantile import Tile, TileMatrixSet
from rasterio.crs import CRS
from rasterio.transform import array_bounds
from rio_tiler.constants import WEB_MERCATOR_TMS, WGS84_CRS
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.io import MultiBaseReader
from rio_tiler.models import ImageData, PointData
from rio_tiler.types import AssetInfo
from shapely.geometry import box, shape
from shapely.prepared import prep

from algorithms.corrections import scale_offset
from mosaics.datasets import PooledReader
from mosaics.errors import InvalidParameter
from mosaics.grid import Grid
from mosaics.models import Asset, Item
from mosaics.recipe import Recipe


def gdal_path(href: str) -> str:
    """The path GDAL opens for an asset href (local path or s3:// URL)."""
    return "/vsis3/" + href[len("s3://") :] if href.startswith("s3://") else href


def to_physical(data: np.ma.MaskedArray, assets: Sequence[Asset]) -> np.ndarray:
    """`float32[B, ...]` physical values of DN bands `data[B, ...]` (one band per asset); masked → NaN."""
    out = np.empty(data.shape, dtype=np.float32)
    mask = np.ma.getmaskarray(data)
    for i, asset in enumerate(assets):
        band = asset.bands[0] if asset.bands else None
        scale, offset = (band.scale, band.offset) if band else (1.0, 0.0)
        out[i] = scale_offset(np.ascontiguousarray(data.data[i]), scale, offset, None)
        out[i][mask[i]] = np.nan
    return out


def _native_grid(item: Item) -> Asset | None:
    """The finest raster asset that carries projection metadata."""
    gridded = [a for a in item.assets.values() if a.is_raster and a.epsg and a.transform and a.shape]
    return min(gridded, key=lambda a: abs(a.transform[0]), default=None)


@attr.s
class SceneReader(MultiBaseReader):
    """Read one item's assets as physical values and evaluate a `Recipe` on them."""

    input: Item = attr.ib()
    tms: TileMatrixSet = attr.ib(default=WEB_MERCATOR_TMS)
    minzoom: int | None = attr.ib(default=None)
    maxzoom: int | None = attr.ib(default=None)
    reader_options: dict = attr.ib(factory=dict)

    def __attrs_post_init__(self):
        item = self.input
        self.reader = PooledReader
        self.assets = [key for key, asset in item.assets.items() if asset.is_raster]
        grid = _native_grid(item)
        if grid is not None:
            self.crs = CRS.from_epsg(grid.epsg)
            self.transform = Affine(*grid.transform[:6])
            self.height, self.width = grid.shape
            self.bounds = tuple(array_bounds(self.height, self.width, self.transform))
        else:
            self.crs, self.bounds = WGS84_CRS, tuple(item.bbox)
        self.minzoom = self.minzoom if self.minzoom is not None else self._minzoom
        self.maxzoom = self.maxzoom if self.maxzoom is not None else self._maxzoom
        self._footprint = prep(shape(item.geometry))

    def _get_asset_info(self, asset: str) -> AssetInfo:
        meta = self.input.assets[asset]
        options: dict[str, Any] = {}
        if meta.bands and meta.bands[0].nodata is not None:
            options["nodata"] = meta.bands[0].nodata
        return AssetInfo(
            url=gdal_path(meta.href),
            name=asset,
            media_type=meta.media_type,
            reader_options={"options": options},
            method_options={},
        )

    def tile_exists(self, tile_x: int, tile_y: int, tile_z: int) -> bool:
        """True when the tile touches the item's footprint (not only its bounding box)."""
        if not super().tile_exists(tile_x, tile_y, tile_z):
            return False
        return self._footprint.intersects(box(*self.tms.bounds(Tile(tile_x, tile_y, tile_z))))

    def _evaluate(self, recipe: Recipe, keys: dict[str, str], data: np.ma.MaskedArray) -> np.ndarray:
        order = list(dict.fromkeys(keys.values()))
        physical = to_physical(data, [self.input.assets[k] for k in order])
        return recipe.evaluate({name: physical[order.index(key)] for name, key in keys.items()})

    def cache_token(self, tile_x: int, tile_y: int, tile_z: int) -> dict[str, str]:
        """What a cached tile depends on in the catalog: this item's version."""
        return {self.input.id: self.input.version}

    def read_grid(self, grid: Grid, keys: Sequence[str], **kwargs: Any) -> ImageData:
        """Raw DN of the given asset keys on `grid`, one band each, masked where there is no data."""
        return MultiBaseReader.part(
            self, grid.bounds, dst_crs=grid.crs, bounds_crs=grid.crs, width=grid.width, height=grid.height,
            max_size=None, assets=list(keys), asset_as_band=True, **kwargs,
        )

    def read_point(self, lon: float, lat: float, keys: Sequence[str], **kwargs: Any) -> PointData:
        """Raw DN of the given asset keys at a point (EPSG:4326), one value each."""
        return MultiBaseReader.point(self, lon, lat, assets=list(keys), asset_as_band=True, **kwargs)

    def _image(self, method: str, recipe: Recipe, *args: Any, **kwargs: Any) -> ImageData:
        keys = recipe.resolve(self.input)
        raw = getattr(super(), method)(*args, assets=list(dict.fromkeys(keys.values())), asset_as_band=True, **kwargs)
        values = self._evaluate(recipe, keys, raw.array)
        return ImageData(
            np.ma.MaskedArray(values, mask=~np.isfinite(values)),
            assets=[self.input.id],
            bounds=raw.bounds,
            crs=raw.crs,
            band_descriptions=recipe.descriptions,
            metadata={"item": self.input.id, "datetime": self.input.datetime.isoformat()},
        )

    def tile(  # type: ignore[override]
        self,
        tile_x: int,
        tile_y: int,
        tile_z: int,
        assets: Sequence[str] | None = None,
        expression: str | None = None,
        index: str | None = None,
        **kwargs: Any,
    ) -> ImageData:
        """A tile of the recipe's output bands (float32, physical units, NaN/masked outside data)."""
        recipe = Recipe.from_params(assets, expression, index)
        if not self.tile_exists(tile_x, tile_y, tile_z):
            raise TileOutsideBounds(f"Tile {tile_z}/{tile_x}/{tile_y} is outside the footprint of item '{self.input.id}'")
        return self._image("tile", recipe, tile_x, tile_y, tile_z, **kwargs)

    def preview(  # type: ignore[override]
        self, assets: Sequence[str] | None = None, expression: str | None = None, index: str | None = None, **kwargs: Any
    ) -> ImageData:
        """A low-resolution view of the whole item."""
        return self._image("preview", Recipe.from_params(assets, expression, index), **kwargs)

    def part(  # type: ignore[override]
        self, bbox: tuple[float, float, float, float], assets: Sequence[str] | None = None,
        expression: str | None = None, index: str | None = None, **kwargs: Any,
    ) -> ImageData:
        """The recipe's output over `bbox` (in `bounds_crs`, default EPSG:4326)."""
        return self._image("part", Recipe.from_params(assets, expression, index), bbox, **kwargs)

    def point(  # type: ignore[override]
        self, lon: float, lat: float, assets: Sequence[str] | None = None, expression: str | None = None,
        index: str | None = None, **kwargs: Any,
    ) -> PointData:
        """Values at a point; without a recipe, the physical value of every raster asset."""
        if kwargs.get("coord_crs", WGS84_CRS) == WGS84_CRS and not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise InvalidParameter("lon" if abs(lon) > 180 else "lat", f"({lon}, {lat}) is not a longitude, latitude")
        given = assets or expression or index
        recipe = Recipe.from_params(assets, expression, index) if given else Recipe(assets=tuple(self.assets))
        keys = recipe.resolve(self.input)
        raw = super().point(lon, lat, assets=list(dict.fromkeys(keys.values())), asset_as_band=True, **kwargs)
        values = self._evaluate(recipe, keys, raw.array.reshape(-1, 1, 1)).reshape(-1)
        return PointData(
            np.ma.MaskedArray(values, mask=~np.isfinite(values)),
            band_names=recipe.descriptions,
            band_descriptions=recipe.descriptions,
            coordinates=raw.coordinates,
            crs=raw.crs,
            assets=[self.input.id],
            pixel_location=raw.pixel_location,
        )
