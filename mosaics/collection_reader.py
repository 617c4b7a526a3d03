"""CollectionReader: a rio-tiler-style reader whose tiles are per-pixel composites of a collection's scenes."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import attr
import numpy as np
from morecantile import Tile, TileMatrixSet
from rio_tiler.constants import WEB_MERCATOR_TMS, WGS84_CRS
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.io.base import SpatialMixin
from rio_tiler.models import ImageData

from mosaics.catalog import Catalog
from mosaics.cloudmasks import CloudMask, default_cloud_mask
from mosaics.composite import Compositing, Observations, Selection, candidates, composite, explain_point, observe
from mosaics.corrections import Corrector, check as check_correction
from mosaics.errors import InvalidParameter
from mosaics.grid import Grid
from mosaics.limits import Limits, MemoryEstimate
from mosaics.models import Collection, Item
from mosaics.reader import SceneReader
from mosaics.recipe import Recipe


@dataclass(frozen=True)
class CollectionStack:
    """A collection, the scene selection for composites, and where to read from."""

    catalog: Catalog
    collection: Collection
    selection: Selection
    pool: ThreadPoolExecutor
    corrector: Corrector
    minzoom: int = 0
    limits: Limits | None = None

    def latest(self, intersects: dict[str, Any] | None = None) -> Item | None:
        """The newest item matching the selection's dates (and touching `intersects`, GeoJSON in EPSG:4326), for
        grid and default-mask decisions."""
        found = self.catalog.search(self.collection.id, intersects=intersects, datetime=self.selection.datetime, limit=1)
        return found[0] if found else None


@attr.s
class CollectionReader(SpatialMixin):
    """Composite tiles of a `CollectionStack`."""

    input: CollectionStack = attr.ib()
    tms: TileMatrixSet = attr.ib(default=WEB_MERCATOR_TMS)
    minzoom: int | None = attr.ib(default=None)
    maxzoom: int | None = attr.ib(default=None)

    def __attrs_post_init__(self):
        self.crs = WGS84_CRS
        self.bounds = self.input.collection.bbox or (-180.0, -90.0, 180.0, 90.0)
        latest = self.input.latest()
        native = SceneReader(latest, tms=self.tms) if latest else None
        self.minzoom = self.minzoom if self.minzoom is not None else max(self.input.minzoom, self.tms.minzoom)
        self.maxzoom = self.maxzoom if self.maxzoom is not None else (native.maxzoom if native else self.tms.maxzoom)
        self._latest = latest
        self._selected: dict[Grid, list[Item]] = {}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass

    def tile_items(self, tile_x: int, tile_y: int, tile_z: int, tilesize: int = 256, buffer: float = 0) -> list[Item]:
        """The items a tile is computed from (its cache key holds their versions): the scenes selected for it,
        which its composite then reads (one search per tile)."""
        return self._candidates(Grid.for_tile(self.tms, Tile(tile_x, tile_y, tile_z), tilesize, buffer))

    def _candidates(self, grid: Grid) -> list[Item]:
        """The scenes selected for `grid`, searched once per reader."""
        if (found := self._selected.get(grid)) is None:
            found = self._selected[grid] = candidates(self.input.catalog, self.input.collection.id, grid, self.input.selection)
        return found

    def tile(
        self,
        tile_x: int,
        tile_y: int,
        tile_z: int,
        assets: list[str] | None = None,
        expression: str | None = None,
        index: str | None = None,
        asset_bidx: list[str] | None = None,
        method: str = "median",
        p: float | None = None,
        cloud_mask: str | None = None,
        mask_dilation: int = 0,
        provenance: bool = False,
        correction: str = "none",
        tilesize: int = 256,
        **read_options: Any,
    ) -> ImageData:
        """A composite tile; `metadata` carries the items used, read and skipped, and stage timings."""
        recipe = Recipe.from_params(assets, expression, index, asset_bidx)
        compositing = self.compositing(method, p, cloud_mask, mask_dilation, provenance, correction)
        if tile_z < self.minzoom:
            raise InvalidParameter("z", f"composites of {self.input.collection.id} start at zoom {self.minzoom}")
        if not self.tile_exists(tile_x, tile_y, tile_z):
            raise TileOutsideBounds(f"Tile {tile_z}/{tile_x}/{tile_y} is outside collection {self.input.collection.id}")
        grid = Grid.for_tile(self.tms, Tile(tile_x, tile_y, tile_z), tilesize, read_options.pop("buffer", 0) or 0)
        return self.read_grid(grid, recipe, compositing, **read_options)

    def compositing(
        self, method: str = "median", p: float | None = None, cloud_mask: str | None = None, mask_dilation: int = 0,
        provenance: bool = False, correction: str = "none",
    ) -> Compositing:
        """The compositing parameters, with the collection's default cloud mask when none is given."""
        mask = CloudMask.parse(cloud_mask) if cloud_mask else default_cloud_mask(self._latest)
        return Compositing(method, p, mask, mask_dilation, provenance, correction)

    def read_grid(self, grid: Grid, recipe: Recipe, compositing: Compositing, **read_options: Any) -> ImageData:
        """The composite on any grid (a tile, an area subset); `metadata` as for tiles."""
        recipe = self.for_latest(recipe)
        with self._admit(recipe, compositing, grid, image=True):
            result = composite(
                self.input.catalog, self.input.collection.id, grid, recipe, compositing, self.input.selection,
                self.input.pool, read_options, self.input.corrector, self._selected.get(grid),
            )
        return ImageData(
            np.ma.MaskedArray(result.values, mask=~np.isfinite(result.values)),
            assets=[item.id for item in result.items],
            bounds=result.bounds,
            crs=result.crs,
            band_descriptions=result.descriptions,
            metadata={
                "items": [item.id for item in result.items],
                "read": result.read,
                "skipped": result.skipped,
                "timings": result.timings.spent,
            },
        )

    def observe(self, grid: Grid, recipe: Recipe, compositing: Compositing, **read_options: Any) -> Observations:
        """Every selected scene's usable values on `grid`, not composited (time series, per-date statistics)."""
        recipe = self.for_latest(recipe)
        with self._admit(recipe, compositing, grid):
            return observe(
                self.input.catalog, self.input.collection.id, grid,
                recipe, compositing, self.input.selection, self.input.pool, read_options, self.input.corrector,
            )

    def point(
        self, lon: float, lat: float, assets: list[str] | None = None, expression: str | None = None,
        index: str | None = None, asset_bidx: list[str] | None = None, cloud_mask: str | None = None,
        correction: str = "none", **_: Any,
    ) -> dict:
        """Candidate scenes' values and mask state at a point, and the result and choice of each method."""
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise InvalidParameter("lon" if abs(lon) > 180 else "lat", f"({lon}, {lat}) is not a longitude, latitude")
        recipe = self.for_latest(Recipe.from_params(assets, expression, index, asset_bidx))
        compositing = self.compositing(cloud_mask=cloud_mask, correction=correction)
        with self._admit(recipe, compositing, Grid((lon, lat, lon, lat), WGS84_CRS, 1, 1)):
            return explain_point(
                self.input.catalog, self.input.collection.id, lon, lat, recipe, compositing,
                self.input.selection, self.input.pool, self.input.corrector,
            )

    def for_latest(self, recipe: Recipe) -> Recipe:
        """The recipe with the bands of multi-band assets picked as in the newest scene (`Recipe.for_item`)."""
        return recipe.for_item(self._latest) if self._latest is not None else recipe

    @contextmanager
    def _admit(self, recipe: Recipe, compositing: Compositing, grid: Grid, image: bool = False) -> Iterator[None]:
        """Before anything is read: the recipe and correction against the newest scene, the output bands of an
        `image`, and the memory bound of `max_items` scenes on `grid` grown by the mask-dilation margin, whose
        estimate is then held in the budget."""
        if self._latest is not None:
            keys = list(dict.fromkeys(recipe.resolve(self._latest).values()))
            check_correction(compositing.correction, self._latest, keys)
        limits = self.input.limits
        if limits is None:
            yield
            return
        if image:
            limits.check_outputs(recipe)
        bands = compositing.kind.scene_bands(len(recipe.names)) + 1  # and the mask
        estimate = MemoryEstimate(
            self.input.selection.max_items, bands, len(recipe.descriptions), grid.width, grid.height,
            compositing.mask_dilation,
        )
        with limits.admit(estimate, "max_items"):
            yield
