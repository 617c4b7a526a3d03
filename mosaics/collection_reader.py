"""CollectionReader: a rio-tiler-style reader whose tiles are per-pixel composites of a collection's scenes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import attr
import numpy as np
from morecantile import Tile, TileMatrixSet
from rio_tiler.constants import WEB_MERCATOR_TMS, WGS84_CRS
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.io.base import SpatialMixin
from rio_tiler.models import ImageData

from mosaics.area import Area
from mosaics.catalog import Catalog
from mosaics.composite import Observations, Selection, candidates, composite, explain_point, observe
from mosaics.corrections import Corrector
from mosaics.errors import InvalidParameter
from mosaics.grid import Grid
from mosaics.limits import Limits, MemoryEstimate
from mosaics.models import Collection, Item
from mosaics.reader import SceneReader
from mosaics.spec import BoundComposite, CompositeSpec


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

    def latest(self) -> Item | None:
        """The newest item matching the selection's dates, for the native zoom."""
        found = self.catalog.search(self.collection.id, datetime=self.selection.datetime, limit=1)
        return found[0] if found else None


@attr.s
class CollectionReader(SpatialMixin):
    """Composite tiles, areas and points of a `CollectionStack`.

    Each read takes a `CompositeSpec` and binds it to the scenes selected for its grid or point, searched once
    per reader (the tile endpoint's cache key and its composite use the same scenes).
    """

    input: CollectionStack = attr.ib()
    tms: TileMatrixSet = attr.ib(default=WEB_MERCATOR_TMS)
    minzoom: int | None = attr.ib(default=None)

    def __attrs_post_init__(self):
        self.crs = WGS84_CRS
        self.bounds = self.input.collection.bbox or (-180.0, -90.0, 180.0, 90.0)
        self.minzoom = self.minzoom if self.minzoom is not None else max(self.input.minzoom, self.tms.minzoom)
        self._selected: dict[Grid | tuple[float, float], list[Item]] = {}

    @cached_property
    def maxzoom(self) -> int:
        """The native zoom of the newest scene (searched only when asked, e.g. for TileJSON)."""
        latest = self.input.latest()
        return SceneReader(latest, tms=self.tms).maxzoom if latest else self.tms.maxzoom

    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass

    def select(self, area: Grid | tuple[float, float]) -> list[Item]:
        """The scenes selected for a grid or (lon, lat) point, searched once per reader."""
        if (found := self._selected.get(area)) is None:
            found = self._selected[area] = candidates(self.input.catalog, self.input.collection.id, area, self.input.selection)
        return found

    def area_grid(self, area: Area, grid: Callable[[Item], Grid]) -> Grid:
        """`grid(newest)`: the output grid covering `area`, from the newest of the scenes selected for the area's
        bounds (or point), which reads of that grid then use (one search; the grid covers the area to within a
        native pixel). InvalidParameter naming the area's field when none is selected."""
        items = candidates(self.input.catalog, self.input.collection.id, area, self.input.selection)
        if not items:
            collection = self.input.collection.id
            raise InvalidParameter(area.field, f"no scene of collection '{collection}' matches the area and selection")
        covering = grid(max(items, key=lambda item: item.datetime))
        self._selected.setdefault(covering, items)
        return covering

    def spec(self, **params: Any) -> CompositeSpec:
        """The request parameters (`CompositeSpec.from_params`) with this reader's scene selection."""
        return CompositeSpec.from_params(self.input.selection, **params)

    def tile_items(self, tile_x: int, tile_y: int, tile_z: int, tilesize: int = 256, buffer: float = 0) -> list[Item]:
        """The items a tile is computed from (its cache key holds their versions): the scenes selected for it."""
        return self.select(Grid.for_tile(self.tms, Tile(tile_x, tile_y, tile_z), tilesize, buffer))

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
        spec = self.spec(assets=assets, expression=expression, index=index, asset_bidx=asset_bidx, method=method, p=p,
                         cloud_mask=cloud_mask, mask_dilation=mask_dilation, provenance=provenance, correction=correction)
        if tile_z < self.minzoom:
            raise InvalidParameter("z", f"composites of {self.input.collection.id} start at zoom {self.minzoom}")
        if not self.tile_exists(tile_x, tile_y, tile_z):
            raise TileOutsideBounds(f"Tile {tile_z}/{tile_x}/{tile_y} is outside collection {self.input.collection.id}")
        grid = Grid.for_tile(self.tms, Tile(tile_x, tile_y, tile_z), tilesize, read_options.pop("buffer", 0) or 0)
        return self.read_grid(grid, spec, **read_options)

    def read_grid(self, grid: Grid, spec: CompositeSpec, **read_options: Any) -> ImageData:
        """The composite on any grid (a tile, an area subset); `metadata` as for tiles."""
        bound = spec.bind(self.select(grid))
        with self._admit(bound, grid, image=True):
            result = composite(
                self.input.catalog, self.input.collection.id, grid, bound.recipe, bound.compositing,
                self.input.selection, self.input.pool, read_options, self.input.corrector, bound.items,
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
                "unread": result.unread,
                "skipped": result.skipped,
                "timings": result.timings.spent,
            },
        )

    def observe(self, grid: Grid, spec: CompositeSpec, **read_options: Any) -> tuple[BoundComposite, Observations]:
        """Every selected scene's usable values on `grid`, not composited (time series, per-date statistics), and
        the spec as bound to them."""
        bound = spec.bind(self.select(grid))
        with self._admit(bound, grid):
            return bound, observe(
                self.input.catalog, self.input.collection.id, grid, bound.recipe, bound.compositing,
                self.input.selection, self.input.pool, read_options, self.input.corrector, bound.items,
            )

    def point(
        self, lon: float, lat: float, assets: list[str] | None = None, expression: str | None = None,
        index: str | None = None, asset_bidx: list[str] | None = None, cloud_mask: str | None = None,
        correction: str = "none", **_: Any,
    ) -> dict:
        """Candidate scenes' values and mask state at a point, and the result and choice of each method."""
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise InvalidParameter("lon" if abs(lon) > 180 else "lat", f"({lon}, {lat}) is not a longitude, latitude")
        spec = self.spec(assets=assets, expression=expression, index=index, asset_bidx=asset_bidx,
                         cloud_mask=cloud_mask, correction=correction)
        bound = spec.bind(self.select((lon, lat)))
        with self._admit(bound, Grid((lon, lat, lon, lat), WGS84_CRS, 1, 1)):
            return explain_point(
                self.input.catalog, self.input.collection.id, lon, lat, bound.recipe, bound.compositing,
                self.input.selection, self.input.pool, self.input.corrector, bound.items,
            )

    @contextmanager
    def _admit(self, bound: BoundComposite, grid: Grid, image: bool = False) -> Iterator[None]:
        """Before anything is read: the output bands of an `image`, and the memory bound of `max_items` scenes on
        `grid` grown by the mask-dilation margin, whose estimate is then held in the budget."""
        limits = self.input.limits
        if limits is None:
            yield
            return
        recipe, compositing = bound.recipe, bound.compositing
        if image:
            limits.check_outputs(recipe)
        bands = compositing.kind.scene_bands(len(recipe.names)) + 1  # and the mask
        estimate = MemoryEstimate(
            self.input.selection.max_items, bands, len(recipe.descriptions), grid.width, grid.height,
            compositing.mask_dilation,
        )
        with limits.admit(estimate, "max_items"):
            yield
