"""Reading catalog items: `SceneReader` (a rio-tiler reader returning physical values) and the raw
window/pixel reads that composites use (`read_window`, `read_pixel`).

Tiles and windows with nearest-neighbour resampling are read through pixel maps (`mosaics.pixelmap`);
points, previews, parts and other resampling go through rio-tiler. The catalog's `raster:bands`
scale/offset are applied before the recipe (band combination, expression or index) is evaluated, so that
band math always works on physical values (e.g. reflectance 0–1).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import attr
import numpy as np
import rasterio._err
from affine import Affine
from morecantile import Tile, TileMatrixSet
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rasterio.transform import array_bounds
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rio_tiler import reader as rio_reader
from rio_tiler.constants import WEB_MERCATOR_TMS, WGS84_CRS
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.io import MultiBaseReader
from rio_tiler.models import ImageData, PointData
from rio_tiler.types import AssetInfo, AssetType, AssetWithOptions
from rio_tiler.utils import _get_width_height
from shapely.geometry import box, shape
from shapely.prepared import prep

from algorithms.corrections import scale_offset
from mosaics.datasets import POOL, PooledReader, file_version, gdal_path
from mosaics.errors import InvalidParameter, SceneReadError
from mosaics.grid import Grid
from mosaics.limits import Limits, MemoryEstimate
from mosaics.models import Asset, Item
from mosaics.pixelmap import SourceGrid, pixel_map
from mosaics.recipe import Recipe


# What reading a missing, truncated or unreadable file raises (GDAL errors may come through as CPLE_*).
READ_ERRORS = (RasterioError, CPLE_BaseError, OSError)
_GDAL = ctypes.CDLL(rasterio._err.__file__)  # its symbol lookup reaches the libgdal that rasterio links
# rio-tiler's (minzoom, maxzoom) of an item grid in a tile matrix set (a GDAL warp estimate, ~7 ms): one per grid
_NATIVE_ZOOMS: dict[tuple, tuple[int, int]] = {}
_NATIVE_ZOOMS_SIZE = 4096


@contextmanager
def clean_gdal_errors() -> Iterator[None]:
    """On a read error, clear GDAL's last error of this thread: warped reads (rio-tiler parts and points) fail on
    a stale one, so the thread's next read of another, healthy file would fail too."""
    try:
        yield
    except READ_ERRORS:
        _GDAL.CPLErrorReset()
        raise


def to_physical(data: np.ma.MaskedArray, item: Item, keys: Sequence[str]) -> np.ndarray:
    """`float32[B, ...]` physical values of DN bands `data[B, ...]` of the item's band keys `keys`; masked → NaN."""
    scales, offsets = [], []
    for key in keys:
        asset, index = item.source(key)
        band = asset.raster_band(index)
        scales.append(band.scale if band else 1.0)
        offsets.append(band.offset if band else 0.0)
    out = scale_offset(np.ma.getdata(data).reshape(len(keys), 1, -1), scales, offsets, None).reshape(data.shape)
    np.copyto(out, np.float32(np.nan), where=np.ma.getmaskarray(data))
    return out


def asset_nodata(asset: Asset, override: float | None = None, band: int = 1) -> float | None:
    """The nodata value (DN) to read band `band` of an asset with: the override (InvalidParameter naming `nodata`
    when the band's data type cannot hold it), else the catalog's `raster:bands` nodata."""
    raster_band = asset.raster_band(band)
    if override is not None:
        data_type = raster_band.data_type if raster_band else None
        if data_type and np.dtype(data_type).kind in "iu":
            limits = np.iinfo(data_type)
            if not (np.isfinite(override) and limits.min <= override <= limits.max):
                raise InvalidParameter("nodata", f"{override:g} is not a {data_type} value of asset '{asset.key}'")
        return override
    return raster_band.nodata if raster_band else None


def asset_bands(item: Item, keys: Sequence[str]) -> dict[str, list[int]]:
    """The band keys `keys` grouped by asset: asset key → its 1-based bands, in order (each asset is read once)."""
    grouped: dict[str, list[int]] = {}
    for key in keys:
        asset, band = item.source(key)
        bands = grouped.setdefault(asset.key, [])
        if band not in bands:
            bands.append(band)
    return grouped


def _in_order(item: Item, keys: Sequence[str], grouped: dict[str, list[int]], data: Any) -> Any:
    """`data[K, ...]` read asset by asset (`grouped` order) as `[len(keys), ...]` in the order of the band keys."""
    read = [(asset, band) for asset, bands in grouped.items() for band in bands]
    order = [read.index((asset.key, band)) for asset, band in map(item.source, keys)]
    return data if order == list(range(len(read))) else data[order]


@clean_gdal_errors()
def read_window(
    item: Item, keys: Sequence[str], grid: Grid, nodata: float | None = None,
    resampling_method: str | None = None, reproject_method: str | None = None, wanted: np.ndarray | None = None,
    **warp_options: Any,
) -> np.ma.MaskedArray:
    """Raw DN `[K, H, W]` of band keys (`Item.band`) on `grid`, masked where there is no data.

    The bands of one asset are one read (one window, one gather; one nodata value, its first band's). Nearest-
    neighbour reads (the default) use cached pixel maps (`mosaics.pixelmap`); other resampling goes through
    rio-tiler's warped read (with `warp_options`, e.g. `padding`). The assets are read one after another in the
    calling thread: composites read many scenes in parallel already. With `wanted` (`bool[H, W]`), nearest-neighbour
    reads skip the raster blocks that hold no wanted pixel, and pixels not wanted come back masked.
    """
    nearest = (resampling_method or "nearest") == "nearest" and (reproject_method or "nearest") == "nearest"
    grouped = asset_bands(item, keys)
    arrays = []
    for key, bands in grouped.items():
        asset = item.assets[key]
        path, value = gdal_path(asset.href), asset_nodata(asset, nodata, bands[0])
        if nearest and (array := _read_mapped(path, grid, value, bands, wanted)) is not None:
            arrays.append(array)
            continue
        with POOL.open(path) as dataset:
            image = rio_reader.part(
                dataset, grid.bounds, height=grid.height, width=grid.width, dst_crs=grid.crs, bounds_crs=grid.crs,
                indexes=bands, nodata=value, resampling_method=resampling_method or "nearest",
                reproject_method=reproject_method or "nearest", **warp_options,
            )
        arrays.append(image.array)
    return _in_order(item, keys, grouped, np.ma.concatenate(arrays))


@dataclass(frozen=True)
class _Raster:
    """What a pixel-map read needs to know of a file version (read once per process)."""

    source: SourceGrid | None  # None without a CRS
    nodata: float | None
    all_valid: tuple[bool, ...]  # per band: no mask (nodata or mask band)
    dtypes: tuple[str, ...]
    blocks: tuple[tuple[int, int], ...]  # band 1's block shape (rows, columns): full resolution, then each overview


@lru_cache(maxsize=4096)
def _raster(path: str, version: str) -> _Raster:
    with POOL.open(path, version=version) as dataset:
        factors = tuple(dataset.overviews(1))
        info = dict(nodata=dataset.nodata, dtypes=tuple(dataset.dtypes),
                    all_valid=tuple(flags == [MaskFlags.all_valid] for flags in dataset.mask_flag_enums))
        crs, transform, shape, blocks = dataset.crs, tuple(dataset.transform)[:6], dataset.shape, [dataset.block_shapes[0]]
    shapes = []
    for level in range(len(factors)):
        with POOL.open(path, overview_level=level, version=version) as overview:
            shapes.append(overview.shape)
            blocks.append(overview.block_shapes[0])
    source = None if crs is None else SourceGrid(crs.to_wkt(), transform, *shape, factors, tuple(shapes))
    return _Raster(source, blocks=tuple(blocks), **info)


def _read_mapped(
    path: str, grid: Grid, nodata: float | None, bands: Sequence[int], wanted: np.ndarray | None = None,
) -> np.ma.MaskedArray | None:
    """Bands `bands` of `path` on `grid` through a pixel map, in one window read (only its blocks that hold a
    `wanted` pixel, if given); None for rasters it does not handle (no CRS, mask bands)."""
    version = file_version(path)
    raster = _raster(path, version)
    nodata = nodata if nodata is not None else raster.nodata
    if raster.source is None or (nodata is None and not all(raster.all_valid[band - 1] for band in bands)):
        return None
    mapping = pixel_map(grid, raster.source)
    if mapping.window is None:
        return np.ma.masked_all((len(bands), grid.height, grid.width), dtype=raster.dtypes[bands[0] - 1])
    block = raster.blocks[0 if mapping.level is None else mapping.level + 1]
    parts = None if wanted is None else mapping.parts(wanted, block)
    if parts == []:
        window = np.zeros((len(bands), mapping.window.height, mapping.window.width), dtype=raster.dtypes[bands[0] - 1])
    else:
        with POOL.open(path, overview_level=mapping.level, version=version) as dataset:
            window = _read_parts(dataset, bands, mapping.window, parts)
    values = mapping.take(window)
    missing = ~mapping.inside if wanted is None else ~(mapping.inside & wanted)
    mask = np.repeat(missing[np.newaxis], len(bands), axis=0)
    if nodata is not None:
        mask |= np.isnan(values) if np.isnan(nodata) else values == nodata
    return np.ma.MaskedArray(values, mask=mask)


def _read_parts(dataset: DatasetReader, bands: Sequence[int], window: Window, parts: list[Window] | None) -> np.ndarray:
    """`bands` of `window` (`[K, h, w]`); with `parts` (`PixelMap.parts`), only those parts of it, the rest 0."""
    if parts is None or parts == [Window(0, 0, window.width, window.height)]:
        return dataset.read(list(bands), window=window)
    out = np.zeros((len(bands), window.height, window.width), dtype=dataset.dtypes[bands[0] - 1])
    for part in parts:
        rows, cols = slice(part.row_off, part.row_off + part.height), slice(part.col_off, part.col_off + part.width)
        out[:, rows, cols] = dataset.read(list(bands), window=Window(
            window.col_off + part.col_off, window.row_off + part.row_off, part.width, part.height))
    return out


@clean_gdal_errors()
def read_pixel(item: Item, keys: Sequence[str], lon: float, lat: float, nodata: float | None = None, **options: Any) -> np.ma.MaskedArray:
    """Raw DN `[K]` of band keys at a point (EPSG:4326), read like `read_window` (one read per asset)."""
    grouped = asset_bands(item, keys)
    values = []
    for key, bands in grouped.items():
        asset = item.assets[key]
        with POOL.open(gdal_path(asset.href)) as dataset:
            point = rio_reader.point(dataset, (lon, lat), indexes=bands, coord_crs=WGS84_CRS,
                                     nodata=asset_nodata(asset, nodata, bands[0]), **options)  # fmt: skip
        values.append(point.array)
    return _in_order(item, keys, grouped, np.ma.concatenate(values))


@attr.s
class SceneReader(MultiBaseReader):
    """Read one item's assets as physical values and evaluate a `Recipe` on them.

    With `limits`, every read is checked against them before anything is read and holds its memory estimate
    in the budget while it runs. Unreadable assets raise `SceneReadError` naming the item (HTTP 502).
    """

    input: Item = attr.ib()
    tms: TileMatrixSet = attr.ib(default=WEB_MERCATOR_TMS)
    minzoom: int | None = attr.ib(default=None)
    maxzoom: int | None = attr.ib(default=None)
    reader_options: dict = attr.ib(factory=dict)
    limits: Limits | None = attr.ib(default=None)

    def __attrs_post_init__(self):
        item = self.input
        self.reader = PooledReader
        self.assets = [key for key, asset in item.assets.items() if asset.is_raster]
        grid = item.grid_asset()
        if grid is not None:
            self.crs = CRS.from_epsg(grid.epsg)
            self.transform = Affine(*grid.transform[:6])
            self.height, self.width = grid.shape
            self.bounds = tuple(array_bounds(self.height, self.width, self.transform))
            key = (self.tms.id, grid.epsg, tuple(grid.transform[:6]), tuple(grid.shape))
        else:
            self.crs, self.bounds = WGS84_CRS, tuple(item.bbox)
            key = (self.tms.id, self.bounds)
        if (zooms := _NATIVE_ZOOMS.get(key)) is None:
            if len(_NATIVE_ZOOMS) >= _NATIVE_ZOOMS_SIZE:
                _NATIVE_ZOOMS.clear()
            zooms = _NATIVE_ZOOMS[key] = (self._minzoom, self._maxzoom)
        self.minzoom = self.minzoom if self.minzoom is not None else zooms[0]
        self.maxzoom = self.maxzoom if self.maxzoom is not None else zooms[1]

    @cached_property
    def _footprint(self):
        """The item's geometry, prepared for intersection tests."""
        return prep(shape(self.input.geometry))

    def _get_asset_info(self, asset: AssetType) -> AssetInfo:
        """rio-tiler's info of an asset name, or of `{"name": asset key, "indexes": bands}` (those bands, one read)."""
        name, indexes = (asset["name"], asset.get("indexes")) if isinstance(asset, dict) else (asset, None)
        meta = self.input.asset(name)  # NotFound (404) names an unknown asset
        if not meta.is_raster:
            raise InvalidParameter("assets", f"'{name}' of item '{self.input.id}' is not a raster band")
        nodata = asset_nodata(meta, band=indexes[0] if indexes else 1)
        options: dict[str, Any] = {} if nodata is None else {"nodata": nodata}
        return AssetInfo(
            url=gdal_path(meta.href),
            name=name,
            media_type=meta.media_type,
            reader_options={"options": options},
            method_options={"indexes": tuple(indexes)} if indexes else {},
        )

    def _assets(self, keys: Sequence[str]) -> tuple[dict[str, list[int]], list[AssetWithOptions]]:
        """The band keys grouped by asset (`asset_bands`), and as rio-tiler's assets with `indexes` (one read each)."""
        grouped = asset_bands(self.input, keys)
        return grouped, [AssetWithOptions(name=key, indexes=bands) for key, bands in grouped.items()]

    def tile_exists(self, tile_x: int, tile_y: int, tile_z: int) -> bool:
        """True when the tile touches the item's footprint (not only its bounding box)."""
        if not super().tile_exists(tile_x, tile_y, tile_z):
            return False
        return self._footprint.intersects(box(*self.tms.bounds(Tile(tile_x, tile_y, tile_z))))

    def _evaluate(self, recipe: Recipe, keys: dict[str, str], data: np.ma.MaskedArray) -> np.ndarray:
        order = list(dict.fromkeys(keys.values()))
        physical = to_physical(data, self.input, order)
        return recipe.evaluate({name: physical[order.index(key)] for name, key in keys.items()})

    def tile_items(self, tile_x: int, tile_y: int, tile_z: int, **_: Any) -> list[Item]:
        """The items a tile is computed from (its cache key holds their versions): this one."""
        return [self.input]

    @contextmanager
    def _reading(self, recipe: Recipe, keys: dict[str, str], height: int, width: int, margin: float = 0,
                 parameter: str | None = None, nodata: float | None = None) -> Iterator[list[str]]:
        """The asset keys to read, after the `nodata` override and the limits admitted the read; read errors
        become `SceneReadError`."""
        order = list(dict.fromkeys(keys.values()))
        for key in order:
            asset, band = self.input.source(key)
            asset_nodata(asset, nodata, band)
        admission = nullcontext()
        if self.limits is not None:
            estimate = MemoryEstimate(1, len(order), len(recipe.descriptions), width, height, margin)
            admission = self.limits.admit(estimate, parameter or recipe.parameter)
        with admission, self._scene_errors(order):
            yield order

    @contextmanager
    def _scene_errors(self, keys: Sequence[str]) -> Iterator[None]:
        """Read errors (missing, truncated or unreadable files) as `SceneReadError` naming the item."""
        try:
            with clean_gdal_errors():
                yield
        except READ_ERRORS as error:
            raise SceneReadError(self.input.id, ",".join(keys), str(error)) from None

    def info(self, assets: Sequence[str] | str | None = None, **kwargs: Any) -> dict:  # type: ignore[override]
        """rio-tiler's info of raster assets (all by default)."""
        keys = [assets] if isinstance(assets, str) else list(assets or self.assets)
        with self._scene_errors(keys):
            return super().info(assets=keys, **kwargs)

    def _image_shape(self, bounds: tuple[float, float, float, float] | None, width: int | None,
                     height: int | None, max_size: int | None, crs: CRS | None = None) -> tuple[int, int]:
        """(height, width) of a preview (`bounds` None) or part as rio-tiler will read it."""
        if getattr(self, "transform", None) is None:  # no projection metadata: a square guess
            side = width or height or max_size or 1024
            return height or side, width or side
        native_h, native_w = self.height, self.width
        if bounds is not None:
            left, bottom, right, top = transform_bounds(crs or WGS84_CRS, self.crs, *bounds, densify_pts=21)
            native_w = max(1, math.ceil((right - left) / abs(self.transform.a)))
            native_h = max(1, math.ceil((top - bottom) / abs(self.transform.e)))
        if width and height:
            return height, width
        if width:
            return max(1, math.ceil(width * native_h / native_w)), width
        if height:
            return height, max(1, math.ceil(height * native_w / native_h))
        if max_size:
            return _get_width_height(max_size, native_h, native_w)
        return native_h, native_w

    def _output(self, recipe: Recipe, keys: dict[str, str], raw: np.ma.MaskedArray, bounds, crs) -> ImageData:
        values = self._evaluate(recipe, keys, raw)
        return ImageData(
            np.ma.MaskedArray(values, mask=~np.isfinite(values)),
            assets=[self.input.id],
            bounds=bounds,
            crs=crs,
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
        asset_bidx: Sequence[str] | None = None,
        tilesize: int = 256,
        buffer: float | None = None,
        **kwargs: Any,
    ) -> ImageData:
        """A tile of the recipe's output bands (float32, physical units, NaN/masked outside data)."""
        recipe = Recipe.from_params(assets, expression, index, asset_bidx)
        if not self.tile_exists(tile_x, tile_y, tile_z):
            raise TileOutsideBounds(f"Tile {tile_z}/{tile_x}/{tile_y} is outside the footprint of item '{self.input.id}'")
        return self.read_grid(Grid.for_tile(self.tms, Tile(tile_x, tile_y, tile_z), tilesize, buffer or 0), recipe, **kwargs)

    def read_grid(self, grid: Grid, recipe: Recipe, **kwargs: Any) -> ImageData:
        """The recipe's output bands on any grid (a tile, an area subset), read like tiles."""
        recipe = recipe.for_item(self.input)
        if self.limits is not None:
            self.limits.check_outputs(recipe)
        keys = recipe.resolve(self.input)
        with self._reading(recipe, keys, grid.height, grid.width, nodata=kwargs.get("nodata")) as order:
            raw = read_window(self.input, order, grid, **kwargs)
            return self._output(recipe, keys, raw, grid.bounds, grid.crs)

    def _image(self, method: str, bbox: tuple[float, float, float, float] | None, recipe: Recipe,
               max_size: int | None, width: int | None, height: int | None, **kwargs: Any) -> ImageData:
        """rio-tiler's preview (`bbox` None) or part of the recipe's input assets, then the recipe."""
        recipe = recipe.for_item(self.input)
        if self.limits is not None:
            self.limits.check_outputs(recipe)
        keys = recipe.resolve(self.input)
        rows, cols = self._image_shape(bbox, width, height, max_size, kwargs.get("bounds_crs"))
        parameter = "width" if width or height else "max_size"
        with self._reading(recipe, keys, rows, cols, parameter=parameter, nodata=kwargs.get("nodata")) as order:
            grouped, assets = self._assets(order)
            raw = getattr(super(), method)(
                *(() if bbox is None else (bbox,)), assets=assets, max_size=max_size, width=width, height=height, **kwargs,
            )
            return self._output(recipe, keys, _in_order(self.input, order, grouped, raw.array), raw.bounds, raw.crs)

    def preview(  # type: ignore[override]
        self, assets: Sequence[str] | None = None, expression: str | None = None, index: str | None = None,
        asset_bidx: Sequence[str] | None = None, max_size: int | None = 1024, width: int | None = None,
        height: int | None = None, **kwargs: Any,
    ) -> ImageData:
        """A low-resolution view of the whole item."""
        recipe = Recipe.from_params(assets, expression, index, asset_bidx)
        return self._image("preview", None, recipe, max_size, width, height, **kwargs)

    def part(  # type: ignore[override]
        self, bbox: tuple[float, float, float, float], assets: Sequence[str] | None = None,
        expression: str | None = None, index: str | None = None, asset_bidx: Sequence[str] | None = None,
        max_size: int | None = None, width: int | None = None, height: int | None = None, **kwargs: Any,
    ) -> ImageData:
        """The recipe's output over `bbox` (in `bounds_crs`, default EPSG:4326)."""
        recipe = Recipe.from_params(assets, expression, index, asset_bidx)
        return self._image("part", bbox, recipe, max_size, width, height, **kwargs)

    def point(  # type: ignore[override]
        self, lon: float, lat: float, assets: Sequence[str] | None = None, expression: str | None = None,
        index: str | None = None, asset_bidx: Sequence[str] | None = None, **kwargs: Any,
    ) -> PointData:
        """Values at a point; without a recipe, the physical value of every band of every raster asset."""
        if kwargs.get("coord_crs", WGS84_CRS) == WGS84_CRS and not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise InvalidParameter("lon" if abs(lon) > 180 else "lat", f"({lon}, {lat}) is not a longitude, latitude")
        given = assets or expression or index or asset_bidx
        recipe = Recipe.from_params(assets, expression, index, asset_bidx) if given else Recipe(assets=tuple(self.assets))
        recipe = recipe.for_item(self.input)
        keys = recipe.resolve(self.input)
        with self._reading(recipe, keys, 1, 1, nodata=kwargs.get("nodata")) as order:
            grouped, assets = self._assets(order)
            raw = super().point(lon, lat, assets=assets, **kwargs)
            data = _in_order(self.input, order, grouped, raw.array)
            values = self._evaluate(recipe, keys, data.reshape(-1, 1, 1)).reshape(-1)
        return PointData(
            np.ma.MaskedArray(values, mask=~np.isfinite(values)),
            band_names=recipe.descriptions,
            band_descriptions=recipe.descriptions,
            coordinates=raw.coordinates,
            crs=raw.crs,
            assets=[self.input.id],
            pixel_location=raw.pixel_location,
        )
