"""Composites of many scenes on a grid (a tile or an export chunk): catalog query → parallel window reads →
masks → corrections → kernel.

A composite works on the recipe's *input* bands: each scene's bands are read as physical values,
masked (no data, clouds), corrected, composited per pixel by one of `algorithms.composite`'s kernels,
and the recipe (band combination, expression or index) is evaluated on the composited bands.
`count` returns the number of usable observations instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from rasterio.crs import CRS
from rio_tiler.errors import RioTilerError

from algorithms import masks
from mosaics.area import Area
from mosaics.catalog import Catalog
from mosaics.cloudmasks import CloudMask
from mosaics.corrections import Corrector, get_correction
from mosaics.errors import InvalidParameter, NotFound, SceneReadError
from mosaics.grid import Grid
from mosaics.methods import METHODS, Method, get_method
from mosaics.models import Item
from mosaics.reader import READ_ERRORS, read_pixel, read_window
from mosaics.recipe import Recipe

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Compositing:
    """How a stack becomes one image."""

    method: str = "median"
    p: float | None = None
    cloud_mask: CloudMask = field(default_factory=CloudMask)
    mask_dilation: int = 0
    provenance: bool = False
    correction: str = "none"

    def __post_init__(self):
        get_correction(self.correction)
        if self.kind.needs_p and self.p is None:
            raise InvalidParameter("p", f"is required with method={self.method}")
        if self.provenance and not self.kind.selects:
            selecting = ", ".join(m.name for m in METHODS.values() if m.selects)
            raise InvalidParameter("provenance", f"needs a selecting method ({selecting}), not {self.method}")

    @property
    def kind(self) -> Method:
        """The registered method (InvalidParameter naming `method` if there is none)."""
        return get_method(self.method)


@dataclass(frozen=True)
class Selection:
    """Which scenes: a STAC datetime interval, a cloud-cover limit, an order and a count."""

    datetime: tuple[datetime | None, datetime | None] | None = None
    max_cloud: float | None = None
    sortby: tuple[str, ...] = ("-datetime",)
    max_items: int = 20


@dataclass
class Timings:
    """Milliseconds spent per stage, for `Server-Timing`."""

    spent: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spent[name] = self.spent.get(name, 0.0) + (time.perf_counter() - start) * 1000


@dataclass
class CompositeResult:
    """A composited grid and how it was made."""

    values: np.ndarray  # float32 [outputs, H, W], NaN where no usable observation
    descriptions: list[str]
    items: list[Item]  # candidates in selection order; `index` refers to this list
    read: list[str]  # ids of the items actually read
    unread: list[str]  # ids of the items read whose bands were not (their cloud mask left no usable pixel)
    skipped: dict[str, str]  # item id → reason
    index: np.ndarray | None  # int16 [H, W] chosen observation (selecting methods), -1 = none
    bounds: tuple[float, float, float, float]
    crs: object
    timings: Timings
    scenes: list[Observation]  # what was read, for point queries


@dataclass
class Observation:
    """One scene's usable values on the grid."""

    item: Item
    bands: np.ndarray  # float32 [K, H, W] physical, NaN = no data (or not read: cloud-masked, see `observe`)
    valid: np.ndarray  # bool [H, W]
    mask: np.ndarray | None  # raw cloud-mask values [H, W]
    unread: bool = False  # its bands were not read: the cloud mask left no usable pixel


def candidates(
    catalog: Catalog, collection_id: str, area: Grid | Area | tuple[float, float], selection: Selection
) -> list[Item]:
    """Items whose footprint touches the grid, the area's bounds (or point) or the (lon, lat) point, filtered and
    ordered by `selection`."""
    if isinstance(area, Grid):
        where = {"bbox": area.bounds, "bbox_crs": area.crs.to_string()}
    elif isinstance(area, Area) and not area.is_point:
        where = {"bbox": area.bounds_in(area.crs), "bbox_crs": area.crs.to_string()}
    else:
        where = {"intersects": area.lonlat() if isinstance(area, Area) else {"type": "Point", "coordinates": list(area)}}
    return catalog.search(
        collection_id,
        **where,
        datetime=selection.datetime,
        max_cloud=selection.max_cloud,
        sortby=selection.sortby,
        limit=selection.max_items,
    )


def _keys(recipe: Recipe, compositing: Compositing, item: Item) -> dict[str, str]:
    """Band name → band key for everything the recipe and the method read."""
    keys = recipe.resolve(item)
    for name in compositing.kind.extra_bands:
        keys.setdefault(name, item.band(name))
    return keys


# (item, band keys, read options, wanted pixels bool[H, W] or None) → raw DN [K, H, W], masked where no data
Read = Callable[[Item, list[str], dict, "np.ndarray | None"], np.ma.MaskedArray]


def grid_read(grid: Grid, margin: int = 0) -> Read:
    """Read raw DN `[K, H + 2 margin, W + 2 margin]` of band keys on `grid` grown by `margin` pixels (only the blocks
    holding wanted pixels, if given: `read_window`)."""
    grown = grid.buffered(margin)
    return lambda item, keys, options, wanted: read_window(item, keys, grown, wanted=wanted, **options)


def point_read(lon: float, lat: float) -> Read:
    """Read raw DN `[K, 1, 1]` of band keys at a point (EPSG:4326); every value is read."""
    return lambda item, keys, options, wanted: read_pixel(item, keys, lon, lat, **options).reshape(-1, 1, 1)


def _read_scene(
    item: Item, read: Read, keys: dict[str, str], compositing: Compositing, corrector: Corrector, read_options: dict,
    margin: int = 0, masked_values: bool = True,
) -> Observation:
    """One scene's physical bands and usable pixels; a read `margin` (for mask dilation) is cut off at the end.

    The cloud mask is read first; without `masked_values`, bands are read only where it leaves usable pixels (NaN
    elsewhere), and not at all when it leaves none."""
    order = list(dict.fromkeys(keys.values()))
    mask_key = compositing.cloud_mask.asset_key(item)
    try:
        mask_value = usable = None
        if mask_key is not None:
            mask_options = {k: v for k, v in read_options.items() if k not in ("resampling_method", "reproject_method", "nodata")}
            mask = read(item, [mask_key], mask_options, None)
            mask_value = mask.data[0]
            usable = compositing.cloud_mask.valid(np.ascontiguousarray(mask_value)) & ~np.ma.getmaskarray(mask)[0]
        wanted = None if masked_values else usable
        if wanted is not None and not wanted.any():
            raw = np.ma.masked_all((len(order), *wanted.shape), dtype=np.float32)
        else:
            raw = read(item, order, read_options, wanted)
        bands = corrector.physical(compositing.correction, item, order, raw)
        valid = np.isfinite(bands).all(axis=0)
        if usable is not None:
            valid &= usable
    except (*READ_ERRORS, RioTilerError) as error:
        raise SceneReadError(item.id, ",".join(order + ([mask_key] if mask_key else [])), str(error)) from None
    if compositing.mask_dilation:
        valid = masks.dilate_invalid(valid, compositing.mask_dilation)
    inner = (slice(margin, -margin),) * 2 if margin else (slice(None),) * 2
    bands = bands[[order.index(keys[n]) for n in keys]]
    return Observation(item, bands[(slice(None), *inner)], valid[inner], None if mask_value is None else mask_value[inner],
                       unread=wanted is not None and not wanted.any())


@dataclass
class Observations:
    """The selected scenes' usable values on a grid (or at a point), before compositing."""

    items: list[Item]  # candidates in selection order
    names: list[str]  # band names, in the order of each scene's `bands`
    scenes: list[Observation]  # the scenes read, in selection order
    skipped: dict[str, str]  # item id → reason
    timings: Timings

    @property
    def read(self) -> list[str]:
        """Ids of the items read (skipped ones included)."""
        return [s.item.id for s in self.scenes] + list(self.skipped)

    @property
    def unread(self) -> list[str]:
        """Ids of the items whose bands were not read (their cloud mask left no usable pixel)."""
        return [s.item.id for s in self.scenes if s.unread]


def observe(
    catalog: Catalog,
    collection_id: str,
    grid: Grid | tuple[float, float],
    recipe: Recipe,
    compositing: Compositing,
    selection: Selection,
    pool: ThreadPoolExecutor,
    read_options: dict | None = None,
    corrector: Corrector | None = None,
    items: list[Item] | None = None,
    masked_values: bool = True,
) -> Observations:
    """Read every selected scene that touches `grid` (or a (lon, lat) point): physical bands, masks, corrections.

    `items` are the `candidates` when the caller already selected them. Unreadable scenes are skipped and
    reported. With an `in_order` method (`first`), scenes are read in order, in batches of 1, 2, 4, …, until
    every pixel has a usable observation. Without `masked_values`, a grid's bands are read only where the cloud
    mask leaves usable pixels (NaN elsewhere, as no data), which is all a composite needs.
    """
    timings = Timings()
    read_options = read_options or {}
    corrector = corrector or Corrector()
    point = not isinstance(grid, Grid)
    margin = 0 if point else compositing.mask_dilation  # dilation sees the masks beyond the grid's edge
    read_window = point_read(*grid) if point else grid_read(grid, margin)
    with timings.stage("catalog"):
        items = candidates(catalog, collection_id, grid, selection) if items is None else items
    if not items:
        raise NotFound("items", collection_id, "no scene matches the area and filters")
    scenes: list[Observation] = []
    skipped: dict[str, str] = {}

    def read(item: Item) -> Observation | None:
        try:
            return _read_scene(item, read_window, _keys(recipe, compositing, item), compositing, corrector, read_options,
                               margin, masked_values or point)
        except SceneReadError as error:
            logger.warning("skipping scene: %s", error)
            skipped[item.id] = str(error)
            return None

    with timings.stage("read"):
        if compositing.kind.in_order:
            filled, start, batch = None, 0, 1
            while start < len(items) and (filled is None or not filled.all()):
                for scene in pool.map(read, items[start:start + batch]):
                    if scene is not None:
                        scenes.append(scene)
                        filled = scene.valid.copy() if filled is None else filled | scene.valid
                start, batch = start + batch, batch * 2
        else:
            scenes = [s for s in pool.map(read, items) if s is not None]
    if not scenes:
        raise SceneReadError(",".join(skipped) or "-", "*", "every scene of the tile failed to read", skipped)
    return Observations(items, list(_keys(recipe, compositing, items[0])), scenes, skipped, timings)


def composite(
    catalog: Catalog,
    collection_id: str,
    grid: Grid | tuple[float, float],
    recipe: Recipe,
    compositing: Compositing,
    selection: Selection,
    pool: ThreadPoolExecutor,
    read_options: dict | None = None,
    corrector: Corrector | None = None,
    items: list[Item] | None = None,
) -> CompositeResult:
    """Composite every selected scene that touches `grid` (or a (lon, lat) point); `items` as for `observe`.

    Unreadable scenes are skipped and reported. Cloud-masked pixels are not read (`observe`'s `masked_values`).
    """
    observed = observe(catalog, collection_id, grid, recipe, compositing, selection, pool, read_options, corrector, items,
                       masked_values=False)
    items, names, scenes, timings = observed.items, observed.names, observed.scenes, observed.timings
    with timings.stage("mask"):
        stack = np.stack([s.bands for s in scenes])
        valid = np.stack([s.valid for s in scenes])
    with timings.stage("kernel"):
        method = compositing.kind
        values, index = method.kernel(stack, valid, names, compositing.p)
        if method.output is not None:
            descriptions = [method.output]
        else:
            values = recipe.evaluate({name: values[i] for i, name in enumerate(names)})
            descriptions = recipe.descriptions
        if index is not None:
            # index into `items` (selection order), not into the read scenes
            positions = np.array([items.index(s.item) for s in scenes] + [-1], dtype=np.int16)
            index = positions[index]
        if compositing.provenance:
            values = np.where(index >= 0, index, np.nan).astype(np.float32)[np.newaxis]
            descriptions = ["provenance"]
    point = not isinstance(grid, Grid)
    return CompositeResult(
        values=values,
        descriptions=descriptions,
        items=items,
        read=observed.read,
        unread=observed.unread,
        skipped=observed.skipped,
        index=index,
        bounds=(grid[0], grid[1], grid[0], grid[1]) if point else grid.bounds,
        crs=CRS.from_epsg(4326) if point else grid.crs,
        timings=timings,
        scenes=scenes,
    )


def explain_point(
    catalog: Catalog,
    collection_id: str,
    lon: float,
    lat: float,
    recipe: Recipe,
    compositing: Compositing,
    selection: Selection,
    pool: ThreadPoolExecutor,
    corrector: Corrector | None = None,
    items: list[Item] | None = None,
) -> dict:
    """Every candidate scene's values and mask state at a point, and what each method makes of them; `items` as
    for `observe`."""
    reading = Compositing("median", None, compositing.cloud_mask, 0, False, compositing.correction)
    result = composite(catalog, collection_id, (lon, lat), recipe, reading, selection, pool, corrector=corrector, items=items)
    names = list(_keys(recipe, reading, result.scenes[0].item))
    stack = np.stack([o.bands for o in result.scenes])
    valid = np.stack([o.valid for o in result.scenes])
    methods: dict[str, dict] = {}
    for method in METHODS.values():
        if not set(method.extra_bands) <= set(names):
            continue
        p = 50.0 if method.needs_p else None
        values, index = method.kernel(stack, valid, names, p)
        output = values if method.output is not None else recipe.evaluate({n: values[i] for i, n in enumerate(names)})
        entry: dict = {"values": [None if np.isnan(v) else float(v) for v in output[:, 0, 0]]}
        if index is not None:
            entry["item"] = result.scenes[int(index[0, 0])].item.id if index[0, 0] >= 0 else None
        methods[f"{method.name}_{p:g}" if method.needs_p else method.name] = entry
    observed = {o.item.id: o for o in result.scenes}
    items = []
    for item in result.items:
        entry = {"id": item.id, "datetime": item.datetime.isoformat(), "eo:cloud_cover": item.cloud_cover}
        if (o := observed.get(item.id)) is not None:
            entry["values"] = [None if np.isnan(v) else float(v) for v in o.bands[:, 0, 0]]
            entry["usable"] = bool(o.valid[0, 0])
            entry["mask"] = None if o.mask is None else float(o.mask[0, 0])
        else:
            entry["error"] = result.skipped.get(item.id, "not read")
        items.append(entry)
    return {"coordinates": [lon, lat], "band_names": names, "output_names": recipe.descriptions,
            "cloud_mask": compositing.cloud_mask.kind, "items": items, "methods": methods}
