"""Export requests: what a client sends (HTTP body or `jeo export` options), validated against the catalog, the
presets and the server's `ExportConfig` and resolved into an `ExportPlan` by `prepare`.

`prepare` runs named steps, each checking one part of the request: the recipe (request or preset), the scene
selection, the area and the scenes in it, the compositing, the output grid (`mosaics.area`, the rules of area
subsets), the output format, executor and chunking, the destination, and the estimate. Every error is an
`InvalidParameter` (HTTP 400) or `NotFound` (404) naming the field; a destination in use is a
`DestinationConflict` (409).
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyproj
import rasterio.warp
import shapely
import shapely.geometry
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rasterio.transform import Affine
from rio_tiler.types import RIOResampling, WarpResampling

from mosaics.area import WGS84, Area, output_crs, pixel_size
from mosaics.catalog import Catalog, search_area
from mosaics.cloudmasks import CloudMask
from mosaics.composite import Selection
from mosaics.errors import InvalidParameter, NotFound
from mosaics.grid import Grid
from mosaics.limits import MemoryEstimate, check_memory
from mosaics.models import Collection, Item
from mosaics.recipe import Recipe
from mosaics.spec import CompositeSpec
from tiler.exports import chunks as chunking
from tiler.exports import destinations
from tiler.exports.plan import EXECUTORS, FORMATS, ExportPlan, estimate, new_id
from tiler.params import parse_crs, parse_datetime

_GEOD = pyproj.Geod(ellps="WGS84")
_FORMAT_ALIASES = {"geotiff": "gtiff", "tif": "gtiff", "tiff": "gtiff"}
_CHUNKS_MARGIN = 0.01  # degrees around the grid's search area, so that it covers each chunk's own
_ESTIMATED_CHUNKS = 256  # up to this many chunks, the estimate selects the scenes of each


class ExportRequest(BaseModel):
    """`POST /exports` body; `jeo export` builds the same."""

    model_config = ConfigDict(extra="forbid")

    collection: str = Field(description="STAC collection id.")
    preset: str | None = Field(None, description="A preset of the collection (its recipe, method, cloud mask, period).")
    assets: list[str] | str | None = Field(None, description="Band combination (list or comma-separated).")
    expression: str | None = Field(None, description="Band math; `;` separates output bands.")
    index: str | None = Field(None, description="Named spectral index.")
    asset_bidx: list[str] | str | None = Field(
        None, description="Bands of multi-band assets in `assets`: `{asset}|{index},…` (e.g. visual|1,2,3), one per asset."
    )
    datetime: str | None = Field(None, description="RFC 3339 instant or interval `start/end`.")
    method: str | None = Field(None, description="Compositing method (default median, or the preset's).")
    p: float | None = Field(None, ge=0, le=100, description="Percentile for method=percentile.")
    cloud_mask: str | None = Field(None, description="scl, cloud_probability:<percent>, qa or none; default: the collection's.")
    mask_dilation: int = Field(0, ge=0, le=50, description="Grow masked areas by this many pixels.")
    correction: str = Field("none", description="Per-scene correction: none, s2_harmonize, toa or dos.")
    max_cloud: float | None = Field(None, ge=0, le=100, description="Only scenes with eo:cloud_cover at most this.")
    max_items: int | None = Field(None, ge=1, description="At most this many scenes per chunk, in sortby order.")
    sortby: str = Field("-datetime", description="Scene order.")
    resampling: str | None = Field(None, description="Resampling when reading overviews/windows (default nearest).")
    reproject: str | None = Field(None, description="Resampling when reprojecting to the output grid (default nearest).")
    bbox: list[float] | None = Field(None, description="Area: minx, miny, maxx, maxy in `bbox_crs`.")
    bbox_crs: str = Field("EPSG:4326", description="CRS of `bbox`.")
    geometry: dict[str, Any] | None = Field(None, description="Area: a GeoJSON geometry (EPSG:4326); pixels outside are nodata.")
    crs: str | None = Field(None, description="Output CRS (default: the collection's native CRS).")
    resolution: float | list[float] | None = Field(None, description="Output pixel size in `crs` units (default: native).")
    format: str = Field("cog", description="cog (Cloud-Optimized GeoTIFF) or gtiff (tiled GeoTIFF).")
    destination: str | None = Field(None, description="A file name under the export root, or s3://bucket/prefix.")
    overwrite: bool = Field(False, description="Replace a result that exists at `destination` (else 409).")
    on_error: Literal["skip", "fail"] | None = Field(
        None, description="A scene that cannot be read is skipped and named in the status (skip), or fails the export "
        "(fail); default from settings."
    )
    executor: str | None = Field(None, description="local or slurm (default from settings).")
    chunk_size: int | None = Field(None, description="Chunk size in pixels (multiple of 256; default from settings).")

    @classmethod
    def parse(cls, data: Any) -> ExportRequest:
        """Validate `data`, turning pydantic's errors into an `InvalidParameter` naming the field."""
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            first = error.errors()[0]
            name = ".".join(str(part) for part in first["loc"]) or "body"
            raise InvalidParameter(name, first["msg"]) from None


@dataclass(frozen=True)
class ExportConfig:
    """The server's export defaults and limits (`JEO_EXPORT_*` and the composite caps), passed to `prepare`."""

    root: Path  # results with a plain destination name
    work: Path  # per-export working directories
    executor: str  # default executor
    executors: tuple[str, ...]  # those a request may choose
    chunk_size: int  # default chunk size
    max_chunk_size: int
    chunk_max_bytes: int  # memory estimate of one chunk
    max_pixels: int
    max_bytes: int
    max_area_km2: float
    on_error: str  # default on_error
    max_items: int  # scenes per chunk unless the request says
    max_items_cap: int
    s3_endpoint_url: str | None
    s3_region: str | None

    @classmethod
    def from_settings(cls, settings) -> ExportConfig:
        return cls(
            root=Path(settings.export_root_path), work=Path(settings.export_work_path),
            executor=settings.export_executor,
            executors=tuple(e.strip() for e in settings.export_executors.split(",") if e.strip()),
            chunk_size=settings.export_chunk_size, max_chunk_size=settings.export_max_chunk_size,
            chunk_max_bytes=settings.export_chunk_max_bytes, max_pixels=settings.export_max_pixels,
            max_bytes=settings.export_max_bytes, max_area_km2=settings.export_max_area_km2,
            on_error=settings.export_on_error, max_items=settings.composite_max_items,
            max_items_cap=settings.composite_max_items_cap, s3_endpoint_url=settings.export_s3_endpoint_url,
            s3_region=settings.export_s3_region,
        )  # fmt: skip


def prepare(
    request: ExportRequest, *, catalog: Catalog, presets, config: ExportConfig, export_id: str | None = None
) -> ExportPlan:
    """Validate `request` and resolve it into a plan; raises InvalidParameter / NotFound naming the field."""
    export_id = export_id or new_id()
    collection = catalog.collection(request.collection)
    newest_overall = catalog.search(collection.id, limit=1)
    if not newest_overall:
        raise InvalidParameter("collection", f"collection '{collection.id}' has no items")
    preset = presets.get(collection.id, request.preset) if request.preset else None
    recipe, recipe_field = _recipe(request, preset)
    selection = _selection(request, preset, newest_overall[0], config)
    _check_resampling(request)
    area = _area(request)
    footprint = shapely.geometry.shape(area.lonlat())
    spec = _spec(request, preset, recipe, selection)
    matching = _scenes(catalog, collection, area, footprint, selection)
    try:
        bound = spec.bind(matching)
    except NotFound as error:
        raise InvalidParameter(recipe_field, str(error)) from None
    newest, recipe, compositing, descriptions = bound.newest, bound.recipe, bound.compositing, bound.descriptions
    keys = recipe.resolve(newest)
    grid, resolution = _output_grid(request, area, newest, keys, len(descriptions), config)
    km2 = abs(_GEOD.geometry_area_perimeter(footprint)[0]) / 1e6
    if km2 > config.max_area_km2:
        raise InvalidParameter(area.field, f"{km2:,.0f} km² exceeds the maximum of {config.max_area_km2:,.0f} km²")
    fmt, executor, chunk_size = _format(request), _executor(request, config), _chunk_size(request, config)
    destination = destinations.resolve(
        request.destination, export_id, request.overwrite, root=config.root, s3_endpoint_url=config.s3_endpoint_url,
        s3_region=config.s3_region,
    )  # fmt: skip
    transform = _transform(grid, resolution)
    items, item_reads = _item_counts(catalog, collection, grid, transform, chunk_size, matching, selection)
    bands_read = compositing.kind.scene_bands(len(dict.fromkeys(keys.values()))) + 1
    chunk_memory = MemoryEstimate(
        min(len(matching), selection.max_items), bands_read, len(descriptions), min(chunk_size, grid.width),
        min(chunk_size, grid.height), request.mask_dilation,
    )  # fmt: skip
    check_memory(chunk_memory, config.chunk_max_bytes, "chunk_size")
    geometry = None
    if request.geometry is not None:
        geometry = rasterio.warp.transform_geom(area.crs, grid.crs, shapely.geometry.mapping(area.geometry))
    used = [item.datetime for item in matching]
    cm = compositing.cloud_mask
    return ExportPlan(
        id=export_id,
        collection=collection.id,
        recipe={"assets": list(recipe.assets), "expression": recipe.expression, "index": recipe.index,
                "asset_bidx": [[name, list(bands)] for name, bands in recipe.asset_bidx]},
        compositing={
            "method": compositing.method,
            "p": compositing.p,
            "cloud_mask": cm.kind if cm.threshold is None else f"{cm.kind}:{cm.threshold:g}",
            "mask_dilation": compositing.mask_dilation,
            "correction": compositing.correction,
        },
        selection={
            "datetime": None if selection.datetime is None else [None if v is None else v.isoformat() for v in selection.datetime],
            "max_cloud": selection.max_cloud,
            "sortby": list(selection.sortby),
            "max_items": selection.max_items,
        },
        read_options={
            "resampling_method": request.resampling or "nearest",
            "reproject_method": request.reproject or "nearest",
        },
        crs=grid.crs.to_string(),
        transform=list(transform)[:6],
        width=grid.width,
        height=grid.height,
        chunk_size=chunk_size,
        format=fmt,
        destination=destination,
        descriptions=descriptions,
        executor=executor,
        work_dir=str(config.work.resolve() / export_id),
        on_error=request.on_error or config.on_error,
        geometry=geometry,
        preset=preset.id if preset else None,
        estimate=estimate(grid, resolution, len(descriptions), chunk_size, items, item_reads, chunk_memory, km2),
        items_interval=[min(used).isoformat(), max(used).isoformat()],
    )


# --- the steps of `prepare` ---------------------------------------------------------------------------


def _pick(request_value, preset_value):
    return request_value if request_value is not None else preset_value


def _recipe(request: ExportRequest, preset) -> tuple[Recipe, str]:
    """The recipe (the request's, else the preset's) and the field that names it."""
    assets, asset_bidx = ([value] if isinstance(value, str) else value for value in (request.assets, request.asset_bidx))
    if preset is not None and not (assets or request.expression or request.index):
        recipe = preset.recipe
    else:
        recipe = Recipe.from_params(assets, request.expression, request.index, asset_bidx)
    return recipe, "assets" if recipe.assets else "expression" if recipe.expression else "index"


def _selection(request: ExportRequest, preset, newest: Item, config: ExportConfig) -> Selection:
    """Which scenes: dates (the request's, else the preset's period ending at the newest scene), cloud cover,
    order and how many per chunk."""
    if request.max_items is not None and request.max_items > config.max_items_cap:
        raise InvalidParameter("max_items", f"{request.max_items} is above the cap of {config.max_items_cap}")
    datetime_text = request.datetime
    if datetime_text is None and preset is not None and preset.period:
        datetime_text = preset.interval(newest.datetime)
    sortby = tuple(s.strip() for s in request.sortby.split(",") if s.strip()) or ("-datetime",)
    return Selection(
        datetime=parse_datetime(datetime_text) if datetime_text else None, max_cloud=request.max_cloud,
        sortby=sortby, max_items=request.max_items or config.max_items,
    )  # fmt: skip


def _check_resampling(request: ExportRequest) -> None:
    for name, value, choices in (
        ("resampling", request.resampling, typing.get_args(RIOResampling)),
        ("reproject", request.reproject, typing.get_args(WarpResampling)),
    ):
        if value is not None and value not in choices:
            raise InvalidParameter(name, f"'{value}' is not one of {', '.join(choices)}")


def _area(request: ExportRequest) -> Area:
    """The area: `bbox` in `bbox_crs`, or a GeoJSON (multi)polygon in EPSG:4326."""
    if request.bbox is not None and request.geometry is not None:
        raise InvalidParameter("geometry", "give bbox or geometry, not both")
    if request.geometry is not None:
        return Area.from_geojson(request.geometry, WGS84, "geometry", types=("Polygon", "MultiPolygon"))
    if request.bbox is None:
        raise InvalidParameter("bbox", "an area is required: bbox (with bbox_crs) or geometry")
    return Area.from_bbox(request.bbox, parse_crs(request.bbox_crs, "bbox_crs"), "bbox")


def _scenes(catalog: Catalog, collection: Collection, area: Area, footprint: shapely.Geometry,
            selection: Selection) -> list[Item]:
    """The scenes touching the area that match the filters (at least one)."""
    if collection.bbox is not None:
        cw, cs, ce, cn = collection.bbox
        extent = shapely.box(cw, cs, ce, cn) if cw <= ce else shapely.box(-180, cs, 180, cn)
        if not extent.intersects(footprint):
            raise InvalidParameter(area.field, f"the area does not touch collection '{collection.id}' (extent {list(collection.bbox)})")
    search = {"intersects": shapely.geometry.mapping(footprint)}
    matching = catalog.search(
        collection.id, **search, datetime=selection.datetime, max_cloud=selection.max_cloud, sortby=selection.sortby
    )
    if not matching:
        if not catalog.search(collection.id, **search, limit=1):
            raise InvalidParameter(area.field, f"no scene of collection '{collection.id}' touches the area")
        name = "datetime" if selection.datetime is not None else "max_cloud"
        raise InvalidParameter(name, "no scene of the area matches the date and cloud filters")
    return matching


def _spec(request: ExportRequest, preset, recipe: Recipe, selection: Selection) -> CompositeSpec:
    """The composite request: the request's method, cloud mask and p, else the preset's."""
    cloud_mask = _pick(request.cloud_mask, preset.cloud_mask if preset else None)
    return CompositeSpec(
        recipe, selection, _pick(request.method, preset.method if preset else None) or "median",
        _pick(request.p, preset.p if preset else None), CloudMask.parse(cloud_mask) if cloud_mask else None,
        request.mask_dilation, correction=request.correction,
    )  # fmt: skip


def _output_grid(
    request: ExportRequest, area: Area, newest: Item, keys: dict[str, str], bands: int, config: ExportConfig
) -> tuple[Grid, tuple[float, float]]:
    """The output grid (area subsets' rules: native CRS and pixels by default) and its pixel size, within the
    limits; errors name the field that made the export too large."""
    native = newest.grid_asset(list(dict.fromkeys(keys.values())))
    if native is None and not (request.crs and request.resolution is not None):
        raise InvalidParameter("crs", f"item '{newest.id}' has no projection metadata: give crs and resolution")
    out_crs = output_crs(native, parse_crs(request.crs, "crs") if request.crs else None, "crs")
    resolution = pixel_size(native, out_crs, request.resolution, "crs")
    left, bottom, right, top = area.bounds_in(out_crs)
    size_field = "resolution" if request.resolution is not None else area.field
    span_x, span_y = right - left, top - bottom
    if request.resolution is not None and (resolution[0] > span_x or resolution[1] > span_y):
        raise InvalidParameter(
            "resolution", f"{request.resolution} is coarser than the area itself ({span_x:.6g} × {span_y:.6g} in "
            f"{out_crs.to_string()})",
        )  # fmt: skip
    approximate = span_x / resolution[0] * (span_y / resolution[1])
    if not math.isfinite(approximate) or approximate > 2 * config.max_pixels:  # before snapping to whole pixels
        raise InvalidParameter(size_field, f"about {approximate:,.0f} pixels exceeds the maximum of {config.max_pixels:,}")
    grid = area.grid(native, out_crs, resolution, crs_field="crs")
    pixels = grid.width * grid.height
    if pixels > config.max_pixels:
        raise InvalidParameter(
            size_field, f"{grid.width} × {grid.height} = {pixels:,} pixels exceeds the maximum of {config.max_pixels:,}"
        )
    size = pixels * bands * 4
    if size > config.max_bytes:
        raise InvalidParameter(
            size_field, f"{grid.width} × {grid.height} px × {bands} band(s) × 4 B = {size / 2**30:,.2f} GiB exceeds the "
            f"maximum of {config.max_bytes / 2**30:,.2f} GiB",
        )  # fmt: skip
    return grid, resolution


def _transform(grid: Grid, resolution: tuple[float, float]) -> Affine:
    """The output grid's transform, from its top-left corner and pixel size."""
    return Affine(resolution[0], 0.0, grid.bounds[0], 0.0, -resolution[1], grid.bounds[3])


def _format(request: ExportRequest) -> str:
    fmt = request.format.lower()
    fmt = _FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in FORMATS:
        raise InvalidParameter("format", f"'{request.format}' is not one of {', '.join(FORMATS)}")
    return fmt


def _executor(request: ExportRequest, config: ExportConfig) -> str:
    executor = request.executor or config.executor
    if executor not in EXECUTORS:
        raise InvalidParameter("executor", f"'{executor}' is not one of {', '.join(EXECUTORS)}")
    if executor not in config.executors and executor != config.executor:
        raise InvalidParameter("executor", f"'{executor}' is not enabled here (allowed: {', '.join(config.executors)})")
    return executor


def _chunk_size(request: ExportRequest, config: ExportConfig) -> int:
    chunk_size = request.chunk_size or config.chunk_size
    if chunk_size % 256 or not 256 <= chunk_size <= config.max_chunk_size:
        raise InvalidParameter(
            "chunk_size", f"{chunk_size} must be a multiple of 256 between 256 and {config.max_chunk_size}"
        )
    return chunk_size


def _item_counts(catalog: Catalog, collection: Collection, grid: Grid, transform: Affine, chunk_size: int,
                 matching: list[Item], selection: Selection) -> tuple[int, int]:
    """(distinct scenes read, scene reads summed over chunks): when there are few chunks, each chunk's selection
    taken from one search of the whole grid (as a chunk's own search would find it: the first `max_items` whose
    footprint touches the chunk; searched again only for a chunk whose search area leaves the grid's), else
    estimated from the scenes of the whole area."""
    windows = chunking.windows(grid.width, grid.height, chunk_size)
    if len(windows) > _ESTIMATED_CHUNKS:
        return len({item.id for item in matching}), min(len(matching), selection.max_items) * len(windows)
    crs, filters = grid.crs.to_string(), {"datetime": selection.datetime, "max_cloud": selection.max_cloud,
                                          "sortby": selection.sortby}  # fmt: skip
    whole = search_area(grid.bounds, crs, None).buffer(_CHUNKS_MARGIN)
    found = catalog.search(collection.id, intersects=shapely.geometry.mapping(whole), **filters)
    scenes = [(item, shapely.geometry.shape(item.geometry)) for item in found]
    distinct, reads = set(), 0
    for window in windows:
        bounds = chunking.window_grid(transform, grid.crs, window).bounds
        chunk = search_area(bounds, crs, None)
        if whole.covers(chunk):
            found = [item for item, footprint in scenes if chunk.intersects(footprint)][: selection.max_items]
        else:
            found = catalog.search(collection.id, bbox=bounds, bbox_crs=crs, **filters, limit=selection.max_items)
        reads += len(found)
        distinct.update(item.id for item in found)
    return len(distinct), reads
