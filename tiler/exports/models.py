"""Export requests, plans and records.

`ExportRequest` is what a client sends (HTTP body or `jeo export` options); `prepare` validates it
against the catalog, the presets and the settings and resolves it into an `ExportPlan`: everything a
worker needs to compute a chunk (recipe, compositing, scene selection, output grid, chunking,
destination), with no further reference to the request or to the server's settings. `ExportRecord`
is a stored export: plan, status, progress, times, executor job ids, error.

Every validation error is an `InvalidParameter` (HTTP 400) or `NotFound` (404) naming the field.
"""

from __future__ import annotations

import math
import re
import typing
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import pyproj
import rasterio.warp
import shapely
import shapely.geometry
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rasterio.crs import CRS
from rasterio.transform import Affine
from rio_tiler.types import RIOResampling, WarpResampling

from algorithms import indices
from mosaics.catalog import Catalog
from mosaics.collection_reader import default_cloud_mask
from mosaics.composite import CloudMask, Compositing, Selection
from mosaics.corrections import check as check_correction
from mosaics.errors import InvalidParameter, JeoError, NotFound
from mosaics.grid import Grid
from mosaics.limits import MemoryEstimate, check_memory
from mosaics.models import Asset, Item
from mosaics.recipe import Recipe
from tiler.exports import chunks as chunking
from tiler.exports.leases import Lease
from tiler.params import parse_crs, parse_datetime

STATUSES = ("queued", "running", "finished", "failed", "canceled")
ACTIVE = ("queued", "running")
FORMATS = ("cog", "gtiff")
EXECUTORS = ("local", "slurm")
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
GTIFF_MEDIA_TYPE = "image/tiff; application=geotiff"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9][A-Za-z0-9._-]{0,99}){0,7}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_EPSG_4326 = CRS.from_epsg(4326)
_GEOD = pyproj.Geod(ellps="WGS84")
_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s'\"`:,;()\[\]{}<>]+/)+(?=[^\s/])")


class DestinationConflict(InvalidParameter):
    """The destination exists (without `overwrite`) or another active export writes it. HTTP 409."""


def redact(text: str) -> str:
    """`text` with the directories of absolute paths removed (messages name files, never server paths)."""
    return _PATH.sub("", text)


class ExportRequest(BaseModel):
    """`POST /exports` body; `jeo export` builds the same."""

    model_config = ConfigDict(extra="forbid")

    collection: str = Field(description="STAC collection id.")
    preset: str | None = Field(None, description="A preset of the collection (its recipe, method, cloud mask, period).")
    assets: list[str] | str | None = Field(None, description="Band combination (list or comma-separated).")
    expression: str | None = Field(None, description="Band math; `;` separates output bands.")
    index: str | None = Field(None, description="Named spectral index.")
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


@dataclass
class ExportPlan:
    """A validated export: what every chunk job and the merge job need, JSON-serialisable."""

    id: str
    collection: str
    recipe: dict[str, Any]
    compositing: dict[str, Any]
    selection: dict[str, Any]
    read_options: dict[str, Any]
    crs: str
    transform: list[float]
    width: int
    height: int
    chunk_size: int
    format: str
    destination: dict[str, Any]
    descriptions: list[str]
    executor: str
    work_dir: str
    on_error: str = "skip"  # skip or fail
    geometry: dict[str, Any] | None = None  # in the output CRS
    preset: str | None = None
    estimate: dict[str, Any] = field(default_factory=dict)
    items_interval: list[str | None] = field(default_factory=lambda: [None, None])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportPlan:
        data = dict(data)
        if "strict" in data:  # plans stored before `on_error`
            data["on_error"] = "fail" if data.pop("strict") else "skip"
        return cls(**data)

    # --- derived objects ---

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    @property
    def rasterio_crs(self) -> CRS:
        return CRS.from_user_input(self.crs)

    @property
    def windows(self) -> list[chunking.Window]:
        return chunking.windows(self.width, self.height, self.chunk_size)

    @property
    def chunks_total(self) -> int:
        return len(self.windows)

    def chunk_grid(self, chunk: int) -> Grid:
        """The output grid of chunk `chunk` (a window of the full output grid)."""
        return chunking.window_grid(self.affine, self.rasterio_crs, self.windows[chunk])

    @property
    def grid(self) -> Grid:
        return chunking.window_grid(self.affine, self.rasterio_crs, chunking.Window(0, 0, self.width, self.height))

    def recipe_object(self) -> Recipe:
        return Recipe(
            assets=tuple(self.recipe["assets"]), expression=self.recipe["expression"], index=self.recipe["index"]
        )

    def compositing_object(self) -> Compositing:
        c = self.compositing
        return Compositing(
            c["method"], c["p"], CloudMask.parse(c["cloud_mask"]), c["mask_dilation"], correction=c["correction"]
        )

    def selection_object(self) -> Selection:
        s = self.selection
        interval = None
        if s["datetime"] is not None:
            interval = tuple(None if v is None else datetime.fromisoformat(v) for v in s["datetime"])
        return Selection(
            datetime=interval, max_cloud=s["max_cloud"], sortby=tuple(s["sortby"]), max_items=s["max_items"]
        )

    @property
    def bands(self) -> int:
        return len(self.descriptions)

    @property
    def media_type(self) -> str:
        return COG_MEDIA_TYPE if self.format == "cog" else GTIFF_MEDIA_TYPE

    @property
    def result_href(self) -> str:
        d = self.destination
        return d["path"] if d["kind"] == "local" else f"s3://{d['bucket']}/{d['key']}"


@dataclass
class ExportRecord:
    """A stored export."""

    id: str
    status: str
    collection: str
    executor: str
    request: dict[str, Any]
    plan: ExportPlan
    created: str
    started: str | None = None
    finished: str | None = None
    jobs: list[str] = field(default_factory=list)
    error: str | None = None
    log_tail: str | None = None
    result: str | None = None
    chunks_total: int = 0
    chunks_done: int = 0
    attempts: int = 0  # local resumes
    created_by: str | None = None  # the submitting caller (tiler.tokens.Caller.principal); None = anonymous
    run: Lease | None = None  # local exports: the process hosting the workers
    merges: int = 0  # merges started (the merge lease's token)
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable scenes: item id → reason
    retries: list[dict[str, Any]] = field(default_factory=list)  # SLURM resubmissions

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def summary(self) -> dict[str, Any]:
        """Status, progress, times, jobs, estimate and outcome, as the API and the CLI show them."""
        total = self.chunks_total or 1
        done = total if self.status == "finished" else self.chunks_done
        return {
            "id": self.id,
            "status": self.status,
            "collection": self.collection,
            "executor": self.executor,
            "jobs": self.jobs,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "progress": {"chunks_done": done, "chunks_total": self.chunks_total, "fraction": round(done / total, 4)},
            "estimate": self.plan.estimate,
            "format": self.plan.format,
            "destination": self.plan.result_href,
            "result": self.result,
            "error": self.error,
            "log_tail": self.log_tail,
            "skipped": self.skipped,
            "merges": self.merges,
            "retries": self.retries,
        }


def now() -> str:
    """UTC now, RFC 3339 with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    """A new export id: sortable by creation time, unguessable enough."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:10]


# --- validation ------------------------------------------------------------------------------------


def _gridded(asset: Asset) -> bool:
    return bool(asset.is_raster and asset.epsg and asset.transform and asset.shape)


def _native(item: Item, keys: list[str]) -> Asset:
    """The finest gridded asset among `keys` (else among all of the item's assets)."""
    for pool in ([item.assets[k] for k in keys], list(item.assets.values())):
        gridded = [a for a in pool if _gridded(a)]
        if gridded:
            return min(gridded, key=lambda a: abs(a.transform[0]))
    raise InvalidParameter("crs", f"item '{item.id}' has no projection metadata: give crs and resolution")


def _area(request: ExportRequest) -> tuple[shapely.Geometry, str, shapely.Geometry | None, CRS | None]:
    """(area in EPSG:4326, the field naming it, the area in its own CRS, that CRS)."""
    if request.bbox is not None and request.geometry is not None:
        raise InvalidParameter("geometry", "give bbox or geometry, not both")
    if request.geometry is not None:
        geometry = request.geometry
        if geometry.get("type") == "Feature":
            geometry = geometry.get("geometry") or {}
        if geometry.get("type") not in ("Polygon", "MultiPolygon"):
            raise InvalidParameter("geometry", f"expected a GeoJSON Polygon or MultiPolygon, got {geometry.get('type')!r}")
        try:
            area = shapely.geometry.shape(geometry)
        except Exception as error:  # shapely raises several kinds for malformed GeoJSON
            raise InvalidParameter("geometry", f"not a GeoJSON geometry: {error}") from None
        if area.is_empty or not area.is_valid or area.area == 0:
            raise InvalidParameter("geometry", "empty or invalid polygon")
        west, south, east, north = area.bounds
        if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90):
            raise InvalidParameter("geometry", "coordinates must be longitude, latitude (EPSG:4326)")
        return area, "geometry", area, _EPSG_4326
    if request.bbox is None:
        raise InvalidParameter("bbox", "an area is required: bbox (with bbox_crs) or geometry")
    crs = parse_crs(request.bbox_crs, "bbox_crs")
    if len(request.bbox) != 4:
        raise InvalidParameter("bbox", f"expected 4 numbers, got {len(request.bbox)}")
    west, south, east, north = request.bbox
    if not all(map(math.isfinite, request.bbox)) or not (west < east and south < north):
        raise InvalidParameter("bbox", f"expected finite minx < maxx and miny < maxy, got {request.bbox}")
    if crs == _EPSG_4326:
        if not (-180 <= west and east <= 180 and -90 <= south and north <= 90):
            raise InvalidParameter("bbox", f"{request.bbox} is outside longitude/latitude bounds")
        box = shapely.box(west, south, east, north)
        return box, "bbox", box, crs
    outline = shapely.segmentize(shapely.box(west, south, east, north), max(east - west, north - south) / 20)
    xs, ys = shapely.get_coordinates(outline).T
    try:
        lons, lats = rasterio.warp.transform(crs, _EPSG_4326, xs, ys)
    except Exception as error:  # PROJ errors
        raise InvalidParameter("bbox", f"cannot be transformed from {request.bbox_crs} to EPSG:4326: {error}") from None
    if not all(map(math.isfinite, [*lons, *lats])):
        raise InvalidParameter("bbox", f"cannot be transformed from {request.bbox_crs} to EPSG:4326")
    area = shapely.Polygon(zip(lons, lats))
    if not area.is_valid:
        area = shapely.box(min(lons), min(lats), max(lons), max(lats))
    return area, "bbox", shapely.box(west, south, east, north), crs


def _area_km2(area: shapely.Geometry) -> float:
    return abs(_GEOD.geometry_area_perimeter(area)[0]) / 1e6


def _resolution(request: ExportRequest) -> tuple[float, float] | None:
    value = request.resolution
    if value is None:
        return None
    values = [value, value] if isinstance(value, (int, float)) else list(value)
    if len(values) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
        raise InvalidParameter("resolution", f"expected a positive number or [x, y], got {value!r}")
    return float(values[0]), float(values[1])


def _snap(low: float, high: float, origin: float, res: float) -> tuple[float, float]:
    """`[low, high]` widened to whole pixels of size `res` counted from `origin`."""
    eps = 1e-6
    return (
        origin + math.floor((low - origin) / res + eps) * res,
        origin + math.ceil((high - origin) / res - eps) * res,
    )


def _destination(request: ExportRequest, export_id: str, settings) -> dict[str, Any]:
    """Where the result goes; DestinationConflict if something is there already (unless `overwrite`)."""
    text = (request.destination or "").strip()
    refuse = "; set overwrite: true to replace it"
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://"):].partition("/")
        if not _BUCKET.match(bucket):
            raise InvalidParameter("destination", f"'{bucket}' is not a valid S3 bucket name")
        if ".." in prefix.split("/") or "//" in prefix:
            raise InvalidParameter("destination", f"bad S3 key prefix '{prefix}'")
        if prefix.lower().endswith((".tif", ".tiff")):
            key = prefix
        else:
            key = (prefix.rstrip("/") + "/" if prefix.strip("/") else "") + f"{export_id}.tif"
        destination = {
            "kind": "s3", "bucket": bucket, "key": key, "overwrite": request.overwrite,
            "endpoint_url": settings.export_s3_endpoint_url, "region": settings.export_s3_region,
        }  # fmt: skip
        from tiler.exports.merge import check_bucket, delivered_by

        check_bucket(destination)
        try:
            present = delivered_by(destination)
        except Exception as error:  # noqa: BLE001 - botocore's errors: the message says what
            raise InvalidParameter("destination", f"cannot check 's3://{bucket}/{key}': {redact(str(error))}") from None
        if present is not None and not request.overwrite:
            raise DestinationConflict("destination", f"'s3://{bucket}/{key}' already exists{refuse}")
        return destination
    if text and text.startswith("s3:"):
        raise InvalidParameter("destination", f"'{text}': S3 destinations are s3://bucket/prefix")
    name = text or f"{export_id}.tif"
    if not _NAME.match(name):
        raise InvalidParameter(
            "destination", f"'{name}' must be a relative file name (letters, digits, . _ - and /, no '..') or s3://bucket/prefix"
        )
    if not name.lower().endswith((".tif", ".tiff")):
        name += ".tif"
    root = Path(settings.export_root_path).resolve()
    path = (root / name).resolve()
    if root not in path.parents:
        raise InvalidParameter("destination", f"'{name}' is outside the export root")
    if path.is_dir() or any(parent.is_file() for parent in path.parents if root in parent.parents):
        raise InvalidParameter("destination", f"'{name}' is a directory, or inside a file")
    if path.exists() and not request.overwrite:
        raise DestinationConflict("destination", f"'{name}' already exists{refuse}")
    return {"kind": "local", "path": str(path), "name": name, "overwrite": request.overwrite}


def _pick(request_value, preset_value):
    return request_value if request_value is not None else preset_value


def prepare(request: ExportRequest, *, catalog: Catalog, presets, settings, export_id: str | None = None) -> ExportPlan:
    """Validate `request` and resolve it into a plan; raises InvalidParameter / NotFound naming the field."""
    export_id = export_id or new_id()
    collection = catalog.collection(request.collection)
    newest_overall = catalog.search(collection.id, limit=1)
    if not newest_overall:
        raise InvalidParameter("collection", f"collection '{collection.id}' has no items")

    # --- recipe, from the request or the preset ---
    preset = presets.get(collection.id, request.preset) if request.preset else None
    assets = request.assets
    if isinstance(assets, str):
        assets = [assets]
    recipe_given = bool(assets) or bool(request.expression) or bool(request.index)
    if preset is not None and not recipe_given:
        recipe = preset.recipe
    else:
        recipe = Recipe.from_params(assets, request.expression, request.index)
    recipe_field = "assets" if recipe.assets else "expression" if recipe.expression else "index"
    method = _pick(request.method, preset.method if preset else None) or "median"
    p = _pick(request.p, preset.p if preset else None)
    cloud_mask_text = _pick(request.cloud_mask, preset.cloud_mask if preset else None)
    datetime_text = request.datetime
    if datetime_text is None and preset is not None and preset.period:
        datetime_text = preset.interval(newest_overall[0].datetime)

    # --- scene selection ---
    cap = settings.composite_max_items_cap
    if request.max_items is not None and request.max_items > cap:
        raise InvalidParameter("max_items", f"{request.max_items} is above the cap of {cap}")
    sortby = tuple(s.strip() for s in request.sortby.split(",") if s.strip()) or ("-datetime",)
    interval = parse_datetime(datetime_text) if datetime_text else None
    selection = Selection(
        datetime=interval, max_cloud=request.max_cloud, sortby=sortby,
        max_items=request.max_items or settings.composite_max_items,
    )  # fmt: skip
    for name, value, choices in (
        ("resampling", request.resampling, typing.get_args(RIOResampling)),
        ("reproject", request.reproject, typing.get_args(WarpResampling)),
    ):
        if value is not None and value not in choices:
            raise InvalidParameter(name, f"'{value}' is not one of {', '.join(choices)}")

    # --- area and scenes ---
    area, area_field, own_area, own_crs = _area(request)
    west, south, east, north = area.bounds
    if collection.bbox is not None:
        cw, cs, ce, cn = collection.bbox
        extent = shapely.box(cw, cs, ce, cn) if cw <= ce else shapely.box(-180, cs, 180, cn)
        if not extent.intersects(area):
            raise InvalidParameter(area_field, f"the area does not touch collection '{collection.id}' (extent {list(collection.bbox)})")
    search = {"intersects": shapely.geometry.mapping(area)}
    matching = catalog.search(collection.id, **search, datetime=interval, max_cloud=request.max_cloud, sortby=sortby)
    if not matching:
        if not catalog.search(collection.id, **search, limit=1):
            raise InvalidParameter(area_field, f"no scene of collection '{collection.id}' touches the area")
        name = "datetime" if interval is not None else "max_cloud"
        raise InvalidParameter(name, "no scene of the area matches the date and cloud filters")
    newest = max(matching, key=lambda item: item.datetime)
    try:
        keys = recipe.resolve(newest)
    except NotFound as error:
        raise InvalidParameter(recipe_field, str(error)) from None
    mask = CloudMask.parse(cloud_mask_text) if cloud_mask_text else default_cloud_mask(newest)
    compositing = Compositing(method, p, mask, request.mask_dilation, correction=request.correction)
    check_correction(compositing.correction, newest, list(dict.fromkeys(keys.values())))
    mask.asset_key(newest)
    if method == "max_ndvi":
        for band in indices.INDICES["ndvi"].bands:
            try:
                newest.asset(band)
            except NotFound as error:
                raise InvalidParameter("method", f"max_ndvi needs {band}: {error}") from None
    if method == "count":
        descriptions = ["count"]
    else:
        descriptions = recipe.descriptions

    # --- output grid ---
    native = _native(newest, list(dict.fromkeys(keys.values())))
    native_crs = CRS.from_epsg(native.epsg)
    native_transform = Affine(*native.transform[:6])
    out_crs = parse_crs(request.crs, "crs") if request.crs else native_crs
    if not (out_crs.is_projected or out_crs.is_geographic):
        raise InvalidParameter("crs", f"'{request.crs}' is neither projected nor geographic")
    resolution = _resolution(request)
    same_crs = out_crs == native_crs
    if resolution is None:
        if same_crs:
            resolution = (abs(native_transform.a), abs(native_transform.e))
        else:
            rows, cols = native.shape
            from rasterio.transform import array_bounds

            try:
                default, _, _ = rasterio.warp.calculate_default_transform(
                    native_crs, out_crs, cols, rows, *array_bounds(rows, cols, native_transform)
                )
            except Exception as error:
                raise InvalidParameter("crs", f"cannot reproject the native grid to {request.crs}: {error}") from None
            resolution = (abs(default.a), abs(default.e))
    try:
        if own_crs == out_crs:
            bounds = own_area.bounds
        else:
            densified = shapely.segmentize(own_area, max(own_area.bounds[2] - own_area.bounds[0], own_area.bounds[3] - own_area.bounds[1]) / 50)
            xs, ys = shapely.get_coordinates(densified).T
            xs, ys = rasterio.warp.transform(own_crs, out_crs, xs, ys)
            bounds = (min(xs), min(ys), max(xs), max(ys))
    except Exception as error:
        raise InvalidParameter("crs", f"the area cannot be transformed to {request.crs}: {error}") from None
    if not all(map(math.isfinite, bounds)) or bounds[0] >= bounds[2] or bounds[1] >= bounds[3]:
        raise InvalidParameter("crs", f"the area cannot be transformed to {request.crs or native_crs.to_string()}")
    size_field = "resolution" if request.resolution is not None else area_field  # what makes an export too large
    span_x, span_y = bounds[2] - bounds[0], bounds[3] - bounds[1]
    if request.resolution is not None and (resolution[0] > span_x or resolution[1] > span_y):
        raise InvalidParameter(
            "resolution", f"{request.resolution} is coarser than the area itself ({span_x:.6g} × {span_y:.6g} in "
            f"{out_crs.to_string()})",
        )  # fmt: skip
    approximate = span_x / resolution[0] * (span_y / resolution[1])
    if not math.isfinite(approximate) or approximate > 2 * settings.export_max_pixels:  # checked before snapping
        raise InvalidParameter(
            size_field, f"about {approximate:,.0f} pixels exceeds the maximum of {settings.export_max_pixels:,}"
        )
    origin = (native_transform.c, native_transform.f) if same_crs else (0.0, 0.0)
    left, right = _snap(bounds[0], bounds[2], origin[0], resolution[0])
    bottom, top = _snap(bounds[1], bounds[3], origin[1], resolution[1])
    width = max(1, round((right - left) / resolution[0]))
    height = max(1, round((top - bottom) / resolution[1]))
    if width * height > settings.export_max_pixels:
        raise InvalidParameter(
            size_field, f"{width} × {height} = {width * height:,} pixels exceeds the maximum of {settings.export_max_pixels:,}"
        )
    size = width * height * len(descriptions) * 4
    if size > settings.export_max_bytes:
        raise InvalidParameter(
            size_field, f"{width} × {height} px × {len(descriptions)} band(s) × 4 B = {size / 2**30:,.2f} GiB exceeds the "
            f"maximum of {settings.export_max_bytes / 2**30:,.2f} GiB",
        )  # fmt: skip
    km2 = _area_km2(area)
    if km2 > settings.export_max_area_km2:
        raise InvalidParameter(area_field, f"{km2:,.0f} km² exceeds the maximum of {settings.export_max_area_km2:,.0f} km²")
    transform = Affine(resolution[0], 0.0, left, 0.0, -resolution[1], top)
    geometry = None
    if request.geometry is not None:
        geometry = rasterio.warp.transform_geom(_EPSG_4326, out_crs, shapely.geometry.mapping(area))

    # --- format, destination, executor, chunks ---
    fmt = request.format.lower()
    fmt = {"geotiff": "gtiff", "tif": "gtiff", "tiff": "gtiff"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise InvalidParameter("format", f"'{request.format}' is not one of {', '.join(FORMATS)}")
    executor = request.executor or settings.export_executor
    allowed = [e.strip() for e in settings.export_executors.split(",") if e.strip()]
    if executor not in EXECUTORS:
        raise InvalidParameter("executor", f"'{executor}' is not one of {', '.join(EXECUTORS)}")
    if executor not in allowed and executor != settings.export_executor:
        raise InvalidParameter("executor", f"'{executor}' is not enabled here (allowed: {', '.join(allowed)})")
    chunk_size = request.chunk_size or settings.export_chunk_size
    if chunk_size % 256 or not 256 <= chunk_size <= settings.export_max_chunk_size:
        raise InvalidParameter(
            "chunk_size", f"{chunk_size} must be a multiple of 256 between 256 and {settings.export_max_chunk_size}"
        )
    destination = _destination(request, export_id, settings)

    # --- estimate ---
    windows = chunking.windows(width, height, chunk_size)
    bands_read = len(dict.fromkeys(keys.values())) + (2 if method == "max_ndvi" else 0) + 1
    per_chunk, distinct = [], set()
    if len(windows) <= 256:
        for window in windows:
            grid = chunking.window_grid(transform, out_crs, window)
            found = catalog.search(
                collection.id, bbox=grid.bounds, bbox_crs=out_crs.to_string(), datetime=interval,
                max_cloud=request.max_cloud, sortby=sortby, limit=selection.max_items,
            )  # fmt: skip
            per_chunk.append(len(found))
            distinct.update(item.id for item in found)
    else:
        distinct = {item.id for item in matching}
        per_chunk = [min(len(matching), selection.max_items)] * len(windows)
    chunk_items = min(len(matching), selection.max_items)
    chunk_memory = MemoryEstimate(
        chunk_items, bands_read, len(descriptions), min(chunk_size, width), min(chunk_size, height), request.mask_dilation
    )
    check_memory(chunk_memory, settings.export_chunk_max_bytes, "chunk_size")
    chunk_bytes = chunk_memory.bytes
    estimate = {
        "width": width,
        "height": height,
        "pixels": width * height,
        "bands": len(descriptions),
        "chunks": len(windows),
        "chunk_size": chunk_size,
        "bytes": size,
        "items": len(distinct),
        "item_reads": sum(per_chunk),
        "memory_per_chunk": chunk_bytes,
        "area_km2": round(km2, 3),
        "resolution": list(resolution),
        "crs": out_crs.to_string(),
        "bounds": [left, top - height * resolution[1], left + width * resolution[0], top],
    }
    used = [item.datetime for item in matching]
    cm = compositing.cloud_mask
    return ExportPlan(
        id=export_id,
        collection=collection.id,
        recipe={"assets": list(recipe.assets), "expression": recipe.expression, "index": recipe.index},
        compositing={
            "method": compositing.method,
            "p": compositing.p,
            "cloud_mask": cm.kind if cm.threshold is None else f"{cm.kind}:{cm.threshold:g}",
            "mask_dilation": compositing.mask_dilation,
            "correction": compositing.correction,
        },
        selection={
            "datetime": None if interval is None else [None if v is None else v.isoformat() for v in interval],
            "max_cloud": request.max_cloud,
            "sortby": list(sortby),
            "max_items": selection.max_items,
        },
        read_options={
            "resampling_method": request.resampling or "nearest",
            "reproject_method": request.reproject or "nearest",
        },
        crs=out_crs.to_string(),
        transform=list(transform)[:6],
        width=width,
        height=height,
        chunk_size=chunk_size,
        format=fmt,
        destination=destination,
        descriptions=list(descriptions),
        executor=executor,
        work_dir=str(Path(settings.export_work_path).resolve() / export_id),
        on_error=request.on_error or settings.export_on_error,
        geometry=geometry,
        preset=preset.id if preset else None,
        estimate=estimate,
        items_interval=[min(used).isoformat(), max(used).isoformat()],
    )


def request_error(error: JeoError) -> str:
    """The field an error names (for CLI messages)."""
    return getattr(error, "parameter", None) or getattr(error, "kind", "") or "request"
