"""Read and walk static STAC catalogs (local paths and ``s3://`` URLs) into validated models.

Everything here is pure reading and validation: no database. Problems raise `CatalogError`
naming the offending file and field (dotted path, e.g. ``assets.red.href``).

A catalog may only name files inside its roots (`Roots`): the folder or S3 prefix of the document
ingested, and the allowed roots given to `walk`. Raster assets must open as self-contained GeoTIFFs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import shapely.geometry
from botocore.exceptions import BotoCoreError, ClientError
from rasterio.errors import RasterioError

from .datasets import gdal_path, open_raster
from .errors import CatalogError
from .models import Asset, Collection, Item, RasterBand, known_epsg
from .s3 import S3_PREFIX, s3_client, split_s3

_NODATA_WORDS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# --- storage: local files and S3 ---------------------------------------------------------------


def _check_scheme(href: str) -> None:
    if "://" in href and not href.startswith(S3_PREFIX):
        raise ValueError(f"unsupported href scheme (local paths and s3:// only): {href}")


def resolve_href(base: str, href: str) -> str:
    """Absolute form of `href` as linked from the document at `base` (an absolute path or s3:// URL)."""
    if "://" in href:
        return href
    if base.startswith(S3_PREFIX):
        bucket, key = split_s3(base)
        return f"{S3_PREFIX}{bucket}/" + posixpath.normpath(posixpath.join(posixpath.dirname(key), href)).lstrip("/")
    return os.path.normpath(os.path.join(os.path.dirname(base), href))


def exists(href: str) -> bool:
    """Whether the file exists (local: os.path.exists, S3: head_object)."""
    _check_scheme(href)
    if not href.startswith(S3_PREFIX):
        return os.path.exists(href)
    bucket, key = split_s3(href)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return False
        raise
    return True


def _read_bytes(href: str) -> bytes:
    _check_scheme(href)
    if not href.startswith(S3_PREFIX):
        return Path(href).read_bytes()
    bucket, key = split_s3(href)
    return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()


def read_text(href: str) -> str:
    """The text of a local file or an s3:// object."""
    return _read_bytes(href).decode()


# --- roots: where a catalog's files may be ---------------------------------------------------------


def _root_prefix(location: str) -> str:
    """A folder (symlinks resolved) or ``s3://bucket[/prefix]`` as a prefix ending in "/"."""
    if location.startswith(S3_PREFIX):
        return location.rstrip("/") + "/"
    return os.path.join(os.path.realpath(location), "")


@dataclass(frozen=True)
class Roots:
    """Folders and S3 prefixes an ingest may read: the allowed roots and the catalog's own root.

    A local href counts by its real path: a symlink inside the root that points elsewhere is outside.
    Paths are named relative to the first allowed root holding them (stable whatever document of a
    catalog is ingested), else to the own root.
    """

    own: str
    allowed: tuple[str, ...] = ()

    @classmethod
    def of(cls, entry: str, allowed: Sequence[str | Path] = ()) -> Roots:
        """The roots of an ingest of the document at `entry` (absolute path or s3:// URL)."""
        own = posixpath.dirname(entry) if entry.startswith(S3_PREFIX) else os.path.dirname(entry)
        return cls(_root_prefix(own), tuple(_root_prefix(str(root)) for root in allowed))

    def relative(self, href: str) -> str | None:
        """`href` relative to the root holding it; None when none does."""
        if href.startswith(S3_PREFIX):
            bucket, key = split_s3(href)
            target = f"{S3_PREFIX}{bucket}/" + posixpath.normpath("/" + key).lstrip("/")
            if target != href:  # S3 keys are literal: "a/../b" is not "b"
                return None
        elif href.startswith("/vsi") or "://" in href:
            return None  # GDAL virtual file systems and URLs are never catalog files
        else:
            target = os.path.realpath(href)
        return next((target[len(root) :] for root in (*self.allowed, self.own) if target.startswith(root)), None)

    def require(self, href: str, path: str, field: str) -> str:
        """`relative(href)`, or CatalogError naming the file and field when `href` is outside every root."""
        relative = self.relative(href)
        if relative is None:
            raise CatalogError(
                path, field, f"{href} is outside the catalog root {self.own} and the allowed roots "
                f"({', '.join(self.allowed) or 'none'}; setting JEO_INGEST_ALLOWED_ROOTS)",
            )
        return relative


def _require_exists(href: str, path: str, field: str) -> None:
    try:
        found = exists(href)
    except (ValueError, OSError, BotoCoreError, ClientError) as exc:
        raise CatalogError(path, field, str(exc)) from exc
    if not found:
        raise CatalogError(path, field, f"{href} does not exist")


def read_json(href: str) -> dict[str, Any]:
    """The JSON object stored at `href`."""
    try:
        raw = _read_bytes(href)
    except (ValueError, OSError, BotoCoreError, ClientError) as exc:
        raise CatalogError(href, "(document)", f"cannot read: {exc}") from exc
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise CatalogError(href, "(document)", f"invalid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CatalogError(href, "(document)", "not a JSON object")
    return doc


# --- field parsing -------------------------------------------------------------------------------


def _require(doc: dict[str, Any], key: str, kind: type, path: str, prefix: str = "") -> Any:
    value = doc.get(key)
    if value is None:
        raise CatalogError(path, prefix + key, "missing")
    if not isinstance(value, kind) or (kind is str and not value):
        raise CatalogError(path, prefix + key, f"expected a non-empty {kind.__name__}, got {value!r}")
    return value


def _number(value: Any, path: str, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CatalogError(path, field, f"expected a number, got {value!r}")
    return float(value)


def parse_datetime(value: Any, path: str, field: str) -> datetime:
    """RFC 3339 string as an aware UTC datetime (naive values are taken as UTC)."""
    if not isinstance(value, str):
        raise CatalogError(path, field, "missing" if value is None else f"expected a string, got {value!r}")
    try:
        dt = datetime.fromisoformat(value.upper())
    except ValueError as exc:
        raise CatalogError(path, field, f"not an RFC 3339 datetime: {value!r}") from exc
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _bbox(value: Any, path: str, field: str) -> tuple[float, float, float, float]:
    """2D bbox (a 3D bbox loses its heights); west > east means it crosses the antimeridian."""
    if value is None:
        raise CatalogError(path, field, "missing")
    if (
        not isinstance(value, list)
        or len(value) not in (4, 6)
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise CatalogError(path, field, f"expected 4 or 6 finite numbers, got {value!r}")
    west, south, east, north = value if len(value) == 4 else (value[0], value[1], value[3], value[4])
    if south > north:
        raise CatalogError(path, field, f"south > north in {value!r}")
    return float(west), float(south), float(east), float(north)


def _geometry(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        raise CatalogError(path, "geometry", "missing")
    try:
        if shapely.geometry.shape(value).is_empty:
            raise ValueError("empty geometry")
    except Exception as exc:  # shapely raises several kinds for malformed GeoJSON
        raise CatalogError(path, "geometry", f"not a GeoJSON geometry: {exc}") from exc
    return value


def _numbers(value: Any, cast: type, lengths: tuple[int, ...], path: str, field: str) -> tuple[Any, ...] | None:
    """A list of `lengths` numbers cast to `cast` (e.g. proj:shape, proj:transform), or None."""
    if value is None:
        return None
    try:
        numbers = tuple(cast(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise CatalogError(path, field, f"expected a list of numbers, got {value!r}") from exc
    if len(numbers) not in lengths:
        raise CatalogError(path, field, f"expected {' or '.join(map(str, lengths))} numbers, got {value!r}")
    return numbers


def _epsg(doc: dict[str, Any], path: str, field: str) -> int | None:
    """`proj:epsg`, or the EPSG code of a projection v2 `proj:code` such as "EPSG:32633"; must be a known CRS."""
    code = doc.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:") and code[5:].isdigit():
        epsg, name = int(code[5:]), f"{field}proj:code"
    else:
        epsg, name = doc.get("proj:epsg"), f"{field}proj:epsg"
        if epsg is None:
            return None
        if isinstance(epsg, bool) or not isinstance(epsg, int):
            raise CatalogError(path, name, f"expected an integer, got {epsg!r}")
    if not known_epsg(epsg):
        raise CatalogError(path, name, f"EPSG:{epsg} is not a known coordinate reference system")
    return epsg


def _raster_band(raw: Any, path: str, field: str) -> RasterBand:
    if not isinstance(raw, dict):
        raise CatalogError(path, field, f"expected an object, got {raw!r}")
    nodata = raw.get("nodata")
    if isinstance(nodata, str) and nodata.lower() in _NODATA_WORDS:
        nodata = _NODATA_WORDS[nodata.lower()]
    scale = _number(raw.get("scale"), path, f"{field}.scale")
    offset = _number(raw.get("offset"), path, f"{field}.offset")
    return RasterBand(
        nodata=_number(nodata, path, f"{field}.nodata"),
        data_type=raw.get("data_type"),
        scale=1.0 if scale is None else scale,
        offset=0.0 if offset is None else offset,
    )


def _require_geotiff(href: str, path: str, field: str) -> None:
    try:
        open_raster(gdal_path(href)).close()
    except RasterioError as exc:
        raise CatalogError(path, field, f"{href} is not a readable self-contained GeoTIFF: {exc}") from exc


def parse_asset(key: str, raw: Any, properties: dict[str, Any], path: str, roots: Roots) -> Asset:
    """Asset `key` of the item at `path`; projection fields and gsd fall back to the item's properties.

    The href is made absolute, must be inside `roots` and exist; a raster asset must open as a
    self-contained GeoTIFF. `stac` is the asset JSON with the href relative to its root.
    """
    prefix = f"assets.{key}."
    if not isinstance(raw, dict):
        raise CatalogError(path, f"assets.{key}", f"expected an object, got {raw!r}")
    href = resolve_href(path, _require(raw, "href", str, path, prefix))
    relative = roots.require(href, path, prefix + "href")
    _require_exists(href, path, prefix + "href")

    def inherited(name: str) -> tuple[Any, str]:
        """Value and field name of `name`, from the asset or else from the item properties."""
        return (raw[name], prefix + name) if name in raw else (properties.get(name), "properties." + name)

    (shape, shape_field), (transform, transform_field), (gsd, gsd_field) = map(
        inherited, ("proj:shape", "proj:transform", "gsd")
    )
    eo_bands = [b for b in raw.get("eo:bands") or () if isinstance(b, dict)]
    own_projection = bool({"proj:epsg", "proj:code"} & raw.keys())
    roles = raw.get("roles") or []
    if not isinstance(roles, list):
        raise CatalogError(path, prefix + "roles", f"expected a list, got {roles!r}")
    asset = Asset(
        key=key,
        href=href,
        roles=tuple(roles),
        media_type=raw.get("type"),
        title=raw.get("title"),
        bands=tuple(
            _raster_band(b, path, f"{prefix}raster:bands[{i}]") for i, b in enumerate(raw.get("raster:bands") or ())
        ),
        names=tuple(b.get("name") or "" for b in eo_bands),
        common_names=tuple(b.get("common_name") or "" for b in eo_bands),
        epsg=_epsg(raw, path, prefix) if own_projection else _epsg(properties, path, "properties."),
        shape=_numbers(shape, int, (2,), path, shape_field),
        transform=_numbers(transform, float, (6, 9), path, transform_field),
        gsd=_number(gsd, path, gsd_field),
        stac={**raw, "href": relative},
    )
    if asset.is_raster:
        _require_geotiff(href, path, prefix + "href")
    return asset


def content_hash(doc: Any) -> str:
    """sha256 of the canonical JSON form (sorted keys, compact) of `doc`."""
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_item(doc: dict[str, Any], path: str, roots: Roots, collection: str | None = None) -> Item:
    """Validated item of the file at `path`, linked from `collection` (else its `collection` field).

    `stac` is the item JSON with asset hrefs relative to their root (`parse_asset`); `version` is the
    content hash of it and the absolute hrefs. A null `datetime` falls back to `start_datetime`.
    """
    item_id = _require(doc, "id", str, path)
    own = doc.get("collection")
    if collection is not None and own not in (None, collection):
        raise CatalogError(path, "collection", f"'{own}' but linked from collection '{collection}'")
    collection = collection or own
    if not isinstance(collection, str) or not collection:
        raise CatalogError(path, "collection", "the item belongs to no collection")
    props = _require(doc, "properties", dict, path)
    if props.get("datetime") is None and props.get("start_datetime") is not None:
        when = parse_datetime(props["start_datetime"], path, "properties.start_datetime")
    else:
        when = parse_datetime(props.get("datetime"), path, "properties.datetime")
    bbox = _bbox(doc.get("bbox"), path, "bbox")
    geometry = _geometry(doc.get("geometry"), path)
    assets = {
        key: parse_asset(key, raw, props, path, roots) for key, raw in _require(doc, "assets", dict, path).items()
    }
    baseline = props.get("s2:processing_baseline")
    stac = {**doc, "assets": {key: asset.stac for key, asset in assets.items()}}
    return Item(
        id=item_id,
        collection=collection,
        datetime=when,
        bbox=bbox,
        geometry=geometry,
        assets=assets,
        cloud_cover=_number(props.get("eo:cloud_cover"), path, "properties.eo:cloud_cover"),
        platform=props.get("platform"),
        processing_baseline=None if baseline is None else str(baseline),
        properties=props,
        version=content_hash([stac, {key: asset.href for key, asset in assets.items()}]),
        stac=stac,
    )


def parse_collection(doc: dict[str, Any], path: str) -> Collection:
    """Validated collection of the file at `path`; extent parts that are absent stay None."""
    extent = doc.get("extent") or {}
    bboxes = (extent.get("spatial") or {}).get("bbox") or [None]
    intervals = (extent.get("temporal") or {}).get("interval") or [[None, None]]
    if not isinstance(bboxes, list):
        raise CatalogError(path, "extent.spatial.bbox", f"expected a list of bboxes, got {bboxes!r}")
    if not isinstance(intervals, list) or not isinstance(intervals[0], list) or len(intervals[0]) != 2:
        raise CatalogError(path, "extent.temporal.interval", f"expected a list of [start, end], got {intervals!r}")
    start, end = (
        None if value is None else parse_datetime(value, path, "extent.temporal.interval") for value in intervals[0]
    )
    return Collection(
        id=_require(doc, "id", str, path),
        title=doc.get("title"),
        description=doc.get("description") or "",
        bbox=None if bboxes[0] is None else _bbox(bboxes[0], path, "extent.spatial.bbox"),
        interval=(start, end),
        stac=doc,
    )


# --- walking ------------------------------------------------------------------------------------


@dataclass
class Walk:
    """Everything reachable from one ingest source, validated, with the file each came from."""

    collections: dict[str, Collection] = field(default_factory=dict)
    items: dict[tuple[str, str], Item] = field(default_factory=dict)  # key: (collection id, item id)
    collection_files: dict[str, str] = field(default_factory=dict)
    item_files: dict[tuple[str, str], str] = field(default_factory=dict)


def _entry_href(source: str | Path) -> str:
    text = str(source)
    if text.startswith(S3_PREFIX):
        return text + "catalog.json" if text.endswith("/") else text
    path = os.path.abspath(text)
    return os.path.join(path, "catalog.json") if os.path.isdir(path) else path


def _links(doc: dict[str, Any], path: str, rels: tuple[str, ...]) -> list[tuple[str, str]]:
    """(absolute href, field name) of the links with one of `rels`."""
    links = doc.get("links") or []
    if not isinstance(links, list):
        raise CatalogError(path, "links", "expected a list")
    found = []
    for i, link in enumerate(links):
        if isinstance(link, dict) and link.get("rel") in rels:
            href = link.get("href")
            if not isinstance(href, str) or not href:
                raise CatalogError(path, f"links[{i}].href", "missing")
            found.append((resolve_href(path, href), f"links[{i}].href"))
    return found


def _read_linked(href: str, path: str, field: str) -> dict[str, Any]:
    """The document a link of `path` points to; a dangling link is reported on the linking file."""
    _require_exists(href, path, field)
    return read_json(href)


class _Walker:
    def __init__(self, roots: Roots) -> None:
        self.roots = roots
        self.result = Walk()
        self.seen: set[str] = set()

    def add_collection(self, path: str, doc: dict[str, Any]) -> str:
        collection = parse_collection(doc, path)
        other = self.result.collection_files.get(collection.id, path)
        if other != path:
            raise CatalogError(path, "id", f"duplicate collection id '{collection.id}' (also in {other})")
        self.result.collections[collection.id] = collection
        self.result.collection_files[collection.id] = path
        return collection.id

    def add_item(self, path: str, doc: dict[str, Any], collection: str | None) -> None:
        item = parse_item(doc, path, self.roots, collection)
        key = (item.collection, item.id)
        if key in self.result.items:
            raise CatalogError(path, "id", f"duplicate item id '{item.id}' (also in {self.result.item_files[key]})")
        self.result.items[key] = item
        self.result.item_files[key] = path

    def visit(self, path: str, doc: dict[str, Any], collection: str | None) -> None:
        """Catalogs and collections recurse into their child and item links; items are added."""
        self.seen.add(path)
        kind = doc.get("type")
        if kind == "Feature":
            self.add_item(path, doc, collection)
            return
        if kind == "Collection":
            collection = self.add_collection(path, doc)
        elif kind != "Catalog":
            raise CatalogError(path, "type", f"expected 'Catalog', 'Collection' or 'Feature', got {kind!r}")
        for href, field_name in _links(doc, path, ("child", "item")):
            if href not in self.seen:
                self.roots.require(href, path, field_name)
                self.visit(href, _read_linked(href, path, field_name), collection)


def documents(
    collection: dict[str, Any], item: dict[str, Any], location: str, allowed_roots: Sequence[str | Path] = (),
    owner: str | None = None,
) -> Walk:
    """A collection and one of its items given as documents, validated as if both were read from `location` (an
    absolute path or s3:// URL, whose folder is their root); the item owned by `owner`."""
    walker = _Walker(Roots.of(location, allowed_roots))
    collection_id = walker.add_collection(location, collection)
    parsed = parse_item(item, location, walker.roots, collection_id)
    walker.result.items[parsed.collection, parsed.id] = replace(parsed, owner=owner)
    walker.result.item_files[parsed.collection, parsed.id] = location
    return walker.result


def walk(source: str | Path, allowed_roots: Sequence[str | Path] = ()) -> Walk:
    """Read and validate the catalog, collection or item at `source` (a directory means its catalog.json).

    Child and item links and asset hrefs must stay inside the folder (or S3 prefix) of `source`'s
    document or one of `allowed_roots` (folders, ``s3://bucket[/prefix]``); symlinks count by their target.
    A lone item also brings its collection document (first rel=collection link), if it has one.
    """
    path = _entry_href(source)
    doc = read_json(path)
    walker = _Walker(Roots.of(path, allowed_roots))
    collection = None
    if doc.get("type") == "Feature":
        links = _links(doc, path, ("collection",))
        if links:
            href, field_name = links[0]
            collection = walker.add_collection(href, _read_linked(href, path, field_name))
    walker.visit(path, doc, collection)
    return walker.result
