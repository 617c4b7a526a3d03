"""The scene catalog: static STAC catalogs ingested, searched by space, time and clouds.

`Catalog` is the interface (parameter checks shared); `Catalog(location)` opens the embedded SQLite
file at a path (`SQLiteCatalog`, the default) or PostgreSQL with pgSTAC at a `postgresql://` URL
(`mosaics.pgstac.PgstacCatalog`). Items are upserted, never deleted, by `Catalog.ingest`; items
registered one by one (`Catalog.register`, e.g. export results, with an owner) are removed with `Catalog.remove`. Footprints are in EPSG:4326; an item bbox
with west > east (crossing the antimeridian) is indexed over all longitudes and its geometry must be
split at the antimeridian as RFC 7946 asks, so that the exact intersection test is right.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyproj
import shapely
import shapely.geometry
from pyproj.exceptions import CRSError, ProjError
from shapely.geometry.base import BaseGeometry

from . import stac
from .errors import CatalogError, InvalidParameter, NotFound
from .models import Asset, Collection, Item, RasterBand

SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    id             TEXT PRIMARY KEY,
    title          TEXT,
    description    TEXT NOT NULL,
    west REAL, south REAL, east REAL, north REAL,  -- extent.spatial.bbox[0] (EPSG:4326), NULL if absent
    start_datetime TEXT,                           -- extent.temporal.interval[0], NULL if absent or open
    end_datetime   TEXT,
    stac           TEXT NOT NULL,                  -- the collection JSON
    version        TEXT NOT NULL,                  -- hash of the collection JSON and its items' versions
    access         TEXT NOT NULL DEFAULT 'public'  -- public, restricted or owner (tiler.access); kept by ingest
);

CREATE TABLE IF NOT EXISTS items (
    pk                  INTEGER PRIMARY KEY,       -- = item_boxes.id = assets.item
    collection          TEXT NOT NULL REFERENCES collections (id),
    id                  TEXT NOT NULL,
    datetime            TEXT NOT NULL,             -- UTC, 'YYYY-MM-DDTHH:MM:SS.ffffffZ' (sorts chronologically)
    cloud_cover         REAL,                      -- eo:cloud_cover, percent
    platform            TEXT,
    processing_baseline TEXT,                      -- s2:processing_baseline
    west REAL NOT NULL, south REAL NOT NULL, east REAL NOT NULL, north REAL NOT NULL,  -- bbox, EPSG:4326
    geometry            TEXT NOT NULL,             -- GeoJSON footprint, EPSG:4326
    stac                TEXT NOT NULL,             -- the item JSON, asset hrefs relative to their ingest root
    version             TEXT NOT NULL,             -- sha256 of the canonical item JSON
    owner               TEXT,                      -- who may see it in a collection of access `owner`; NULL = all
    UNIQUE (collection, id)
);
CREATE INDEX IF NOT EXISTS items_datetime ON items (collection, datetime);
CREATE INDEX IF NOT EXISTS items_cloud_cover ON items (collection, cloud_cover);

-- Footprint bounding boxes × acquisition time in days since 1970 (float32, rounded outwards): the
-- prefilter of searches by area (and time), so a tile's items are found among its own, not among a
-- collection's whole time range.
CREATE VIRTUAL TABLE IF NOT EXISTS item_boxes USING rtree (id, min_lon, max_lon, min_lat, max_lat, min_day, max_day);

CREATE TABLE IF NOT EXISTS assets (
    item         INTEGER NOT NULL REFERENCES items (pk),
    key          TEXT NOT NULL,
    href         TEXT NOT NULL,                    -- absolute local path or s3:// URL
    roles        TEXT NOT NULL,                    -- JSON list
    media_type   TEXT,
    title        TEXT,
    bands        TEXT NOT NULL,                    -- JSON list of raster:bands {nodata, data_type, scale, offset}
    names        TEXT NOT NULL,                    -- JSON list of eo:bands names
    common_names TEXT NOT NULL,                    -- JSON list of eo:bands common names ("" if none)
    epsg         INTEGER,                          -- proj:epsg of the asset, else of the item
    shape        TEXT,                             -- proj:shape JSON [rows, cols], asset else item
    transform    TEXT,                             -- proj:transform JSON, asset else item
    gsd          REAL,                             -- gsd, asset else item
    PRIMARY KEY (item, key)
);
"""

# Columns added after the first release: added to existing databases when they are opened.
ADDED_COLUMNS = {("collections", "access"): "TEXT NOT NULL DEFAULT 'public'", ("items", "owner"): "TEXT"}
# public: everyone; restricted: callers with a grant; owner: everyone, but each item only to its owner (if it has one)
ACCESS_LEVELS = ("public", "restricted", "owner")
EVERYONE = "*"  # `Catalog.search(visible_to=EVERYONE)`: items of every owner
MODEL_CACHE_SIZE = 4096  # items per SQLite catalog (a few KB each)
SORT_COLUMNS = {"datetime": "datetime", "eo:cloud_cover": "cloud_cover", "id": "id"}
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_EPSG_4326 = pyproj.CRS.from_epsg(4326)
_TRANSFORMERS = threading.local()  # pyproj transformers are not shared between threads
_ITEM_FIELDS = (
    "collection", "id", "datetime", "cloud_cover", "platform", "processing_baseline",
    "west", "south", "east", "north", "geometry", "stac", "version", "owner",
)  # fmt: skip
_ITEM_COLUMNS = ", ".join(("pk", *_ITEM_FIELDS))


@dataclass(frozen=True)
class IngestReport:
    """What one `Catalog.ingest` did: ids of the collections read; numbers of items added, changed, unchanged."""

    collections: tuple[str, ...]
    items_added: int
    items_updated: int
    items_unchanged: int


def connect(path: str | Path, schema: str, added_columns: dict[tuple[str, str], str] | None = None) -> sqlite3.Connection:
    """A connection to the catalog's SQLite file (autocommit, WAL, rows by name, shareable between threads
    under a lock) with `schema` created and the (table, column): definition pairs of `added_columns` added
    where a database created by an older version lacks them."""
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode = WAL")
    db.executescript(schema)
    add_columns(db, added_columns or {})
    return db


def add_columns(db: sqlite3.Connection, columns: dict[tuple[str, str], str]) -> None:
    """`ALTER TABLE … ADD COLUMN` what `db` lacks of `columns`, in one transaction (concurrent openers add each once)."""

    def missing() -> list[tuple[str, str]]:
        return [(t, c) for t, c in columns if c not in {r[1] for r in db.execute(f"PRAGMA table_info({t})")}]

    if missing():
        with transaction(db, threading.RLock()):
            for table, column in missing():
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {columns[table, column]}")


@contextmanager
def transaction(db: sqlite3.Connection, lock: threading.RLock) -> Iterator[sqlite3.Connection]:
    """`BEGIN IMMEDIATE` … `COMMIT` under `lock` (`ROLLBACK` on any error)."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def _to_text(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(timezone.utc).strftime(_TIME_FORMAT)


def _from_text(text: str) -> datetime:
    return datetime.fromisoformat(text)  # _TIME_FORMAT, UTC


def _day(dt: datetime) -> float:
    """Days since 1970-01-01 UTC (the R*Tree's time axis)."""
    return dt.timestamp() / 86400


def _box(bbox: Sequence[float], when: datetime) -> tuple[float, ...]:
    """R*Tree box (min_lon, max_lon, min_lat, max_lat, min_day, max_day) of an item; all longitudes if its
    bbox crosses the antimeridian."""
    west, south, east, north = bbox
    day = _day(when)
    return (west, east, south, north, day, day) if west <= east else (-180.0, 180.0, south, north, day, day)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def is_postgres_url(location: str | Path) -> bool:
    """True for a `postgresql://` (or `postgres://`) URL, which selects the pgSTAC catalog."""
    return str(location).startswith(("postgresql://", "postgres://"))


def collection_version(collection_json: str, item_versions: Iterable[tuple[str, str]]) -> str:
    """Hash of the stored collection JSON and its items' (id, version) in id order: equal on every backend."""
    digest = hashlib.sha256(collection_json.encode())
    for item_id, version in item_versions:
        digest.update(f"\n{item_id}\t{version}".encode())
    return digest.hexdigest()


def check_item_collections(walk: stac.Walk, known: set[str]) -> None:
    """CatalogError naming the file of the first item whose collection is neither stored nor being ingested."""
    for key, item in walk.items.items():
        if item.collection not in known | walk.collections.keys():
            raise CatalogError(walk.item_files[key], "collection", f"unknown collection '{item.collection}'")


@dataclass(frozen=True)
class SearchQuery:
    """A checked `Catalog.search`: area in EPSG:4326 (None = anywhere), UTC interval ends as catalog text,
    sort keys as (SORT_COLUMNS column, descending) ending with id."""

    collection: str
    area: BaseGeometry | None
    start: str | None
    end: str | None
    max_cloud: float | None
    sortby: tuple[tuple[str, bool], ...]
    limit: int | None
    ids: tuple[str, ...] | None
    visible_to: str | None = EVERYONE  # only items without an owner or owned by this principal, unless EVERYONE


class Catalog(ABC):
    """STAC collections and items. `Catalog(location)` opens the backend for `location` (see the module doc);
    every implementation is safe to share between threads."""

    def __new__(cls, location: str | Path, *args: Any, **kwargs: Any) -> Catalog:
        if cls is Catalog:
            if is_postgres_url(location):
                from .pgstac import PgstacCatalog

                cls = PgstacCatalog
            else:
                cls = SQLiteCatalog
        return super().__new__(cls)

    @abstractmethod
    def close(self) -> None:
        """Release the database connections."""

    def ingest(
        self, source: str | Path, allowed_roots: Sequence[str | Path] = (), access: str | None = None
    ) -> IngestReport:
        """Upsert the catalog, collection or item at `source` (path, s3:// URL or directory with catalog.json).

        Asset hrefs and child/item links must stay inside the folder or S3 prefix of `source`'s document
        or one of `allowed_roots` (symlinks count by their target), and raster assets must open as
        self-contained GeoTIFFs (`mosaics.stac.walk`). Everything is read and validated before anything
        is written, in one transaction: on any error (`CatalogError` naming file and field) the database
        is left as it was. With `access`, the collections read get that access level in the same
        transaction (a new restricted collection is never visible as public); without it, new
        collections are public and known ones keep theirs.
        """
        if access is not None:
            check_access(access)
        return self._ingest(stac.walk(source, allowed_roots), access)

    def register(
        self, collection: dict[str, Any], item: dict[str, Any], location: str, allowed_roots: Sequence[str | Path] = (),
        *, owner: str | None = None, access: str | None = None,
    ) -> IngestReport:
        """Upsert one item given as a document, with its collection document, as if both were read from
        `location` (asset hrefs are checked and stored as by `ingest`), owned by `owner` (None = nobody)."""
        if access is not None:
            check_access(access)
        return self._ingest(stac.documents(collection, item, location, allowed_roots, owner), access)

    @abstractmethod
    def remove(self, collection_id: str, item_id: str) -> bool:
        """Delete an item (True if there was one)."""

    @abstractmethod
    def _ingest(self, walk: stac.Walk, access: str | None) -> IngestReport:
        """Store what `walk` read, in one transaction (`check_item_collections` first)."""

    @abstractmethod
    def collections(self) -> list[Collection]:
        """All collections, by id."""

    @abstractmethod
    def collection(self, collection_id: str) -> Collection:
        """The collection `collection_id`; raises NotFound."""

    @abstractmethod
    def version(self, collection_id: str) -> str:
        """Changes whenever the collection or any of its items changes (for cache keys); raises NotFound.
        The same content has the same version on every backend (`collection_version`)."""

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """`{collection id: version}` of every collection, in one query (for caches of catalog-wide views)."""

    @abstractmethod
    def access(self, collection_id: str) -> str:
        """The collection's access level, `public` or `restricted`; raises NotFound."""

    @abstractmethod
    def set_access(self, collection_id: str, access: str) -> None:
        """Make the collection `public` or `restricted`; raises NotFound."""

    @abstractmethod
    def item(self, collection_id: str, item_id: str) -> Item:
        """The item `item_id` of the collection; raises NotFound."""

    def search(
        self,
        collection_id: str,
        *,
        bbox: Sequence[float] | None = None,
        bbox_crs: str = "EPSG:4326",
        intersects: dict[str, Any] | None = None,
        datetime: tuple[datetime | None, datetime | None] | None = None,
        max_cloud: float | None = None,
        sortby: Sequence[str] = ("-datetime",),
        limit: int | None = None,
        ids: Sequence[str] | None = None,
        visible_to: str | None = EVERYONE,
    ) -> list[Item]:
        """Items of the collection whose footprint intersects `bbox` (in `bbox_crs`) or `intersects`.

        `datetime` is an inclusive (start, end) interval, either end None = open; naive datetimes are
        UTC. `max_cloud` keeps items with `eo:cloud_cover <= max_cloud` and drops those without
        cloud cover. `sortby` keys: datetime, eo:cloud_cover (missing values last), id, each with an
        optional +/- prefix (or one comma-separated string); ties are broken by id. `visible_to` keeps the items
        without an owner and those of that owner (None: without an owner only). Raises NotFound
        for an unknown collection and InvalidParameter (named after the parameter) for bad values.
        """
        self.version(collection_id)  # NotFound first
        area = search_area(bbox, bbox_crs, intersects)
        start, end = _interval(datetime)
        if max_cloud is not None:
            if isinstance(max_cloud, bool) or not isinstance(max_cloud, (int, float)) or math.isnan(max_cloud):
                raise InvalidParameter("max_cloud", f"expected a number, got {max_cloud!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise InvalidParameter("limit", f"expected a positive integer, got {limit!r}")
        if ids is not None and not ids:
            return []
        query = SearchQuery(
            collection_id, area, start, end, max_cloud, _sort_keys(sortby), limit, None if ids is None else tuple(ids),
            visible_to,
        )
        return self._search(query)

    @abstractmethod
    def _search(self, query: SearchQuery) -> list[Item]:
        """The items matching a checked query, exact footprint intersection, in order, at most `limit`."""


class SQLiteCatalog(Catalog):
    """SQLite catalog (R*Tree of footprints × time); one connection shared by threads under a lock; the
    models of recently read items cached by (row, version)."""

    def __init__(self, path: str | Path):
        self._models: OrderedDict[tuple[int, str], Item] = OrderedDict()
        self._lock = threading.RLock()
        self._db = connect(path, SCHEMA, ADDED_COLUMNS)
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db, self._lock)

    # --- ingest --------------------------------------------------------------------------------

    def _ingest(self, walk: stac.Walk, access: str | None) -> IngestReport:
        added = updated = unchanged = 0
        with self._transaction() as db:
            check_item_collections(walk, {row[0] for row in db.execute("SELECT id FROM collections")})
            for collection in walk.collections.values():
                self._upsert_collection(db, collection)
                if access is not None:
                    db.execute("UPDATE collections SET access = ? WHERE id = ?", (access, collection.id))
            for item in walk.items.values():
                row = db.execute(
                    "SELECT pk, version FROM items WHERE collection = ? AND id = ?", (item.collection, item.id)
                ).fetchone()
                if row is None:
                    self._insert_item(db, item)
                    added += 1
                elif row["version"] != item.version:
                    self._replace_item(db, row["pk"], item)
                    updated += 1
                else:
                    unchanged += 1
            for collection_id in walk.collections.keys() | {item.collection for item in walk.items.values()}:
                self._refresh_version(db, collection_id)
        return IngestReport(tuple(walk.collections), added, updated, unchanged)

    def remove(self, collection_id: str, item_id: str) -> bool:
        with self._transaction() as db:
            row = db.execute("SELECT pk FROM items WHERE collection = ? AND id = ?", (collection_id, item_id)).fetchone()
            if row is None:
                return False
            for table, column in (("assets", "item"), ("item_boxes", "id"), ("items", "pk")):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (row["pk"],))
            self._refresh_version(db, collection_id)
        return True

    @staticmethod
    def _upsert_collection(db: sqlite3.Connection, collection: Collection) -> None:
        west, south, east, north = collection.bbox or (None, None, None, None)
        db.execute(
            """INSERT INTO collections (id, title, description, west, south, east, north,
                                        start_datetime, end_datetime, stac, version)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '')
               ON CONFLICT (id) DO UPDATE SET
                   title = excluded.title, description = excluded.description,
                   west = excluded.west, south = excluded.south, east = excluded.east, north = excluded.north,
                   start_datetime = excluded.start_datetime, end_datetime = excluded.end_datetime,
                   stac = excluded.stac
               WHERE stac != excluded.stac""",
            (
                collection.id, collection.title, collection.description, west, south, east, north,
                _to_text(collection.interval[0]), _to_text(collection.interval[1]), _dumps(collection.stac),
            ),
        )  # fmt: skip

    @staticmethod
    def _refresh_version(db: sqlite3.Connection, collection_id: str) -> None:
        (collection_json,) = db.execute("SELECT stac FROM collections WHERE id = ?", (collection_id,)).fetchone()
        version = collection_version(
            collection_json, db.execute("SELECT id, version FROM items WHERE collection = ? ORDER BY id", (collection_id,))
        )
        db.execute("UPDATE collections SET version = ? WHERE id = ? AND version != ?", (version, collection_id, version))

    @staticmethod
    def _item_values(item: Item) -> tuple[Any, ...]:
        values = {**item_values(item), "geometry": _dumps(item.geometry), "stac": _dumps(item.stac)}
        return tuple(values[field] for field in _ITEM_FIELDS)

    def _insert_item(self, db: sqlite3.Connection, item: Item) -> None:
        pk = db.execute(
            f"INSERT INTO items ({', '.join(_ITEM_FIELDS)}) VALUES ({', '.join('?' * len(_ITEM_FIELDS))})",
            self._item_values(item),
        ).lastrowid
        db.execute("INSERT INTO item_boxes VALUES (?, ?, ?, ?, ?, ?, ?)", (pk, *self._box(item)))
        self._insert_assets(db, pk, item)

    def _replace_item(self, db: sqlite3.Connection, pk: int, item: Item) -> None:
        db.execute(
            f"UPDATE items SET {', '.join(f'{c} = ?' for c in _ITEM_FIELDS)} WHERE pk = ?",
            (*self._item_values(item), pk),
        )
        db.execute(
            "UPDATE item_boxes SET min_lon = ?, max_lon = ?, min_lat = ?, max_lat = ?, min_day = ?, max_day = ? "
            "WHERE id = ?",
            (*self._box(item), pk),
        )
        db.execute("DELETE FROM assets WHERE item = ?", (pk,))
        self._insert_assets(db, pk, item)

    @staticmethod
    def _box(item: Item) -> tuple[float, ...]:
        return _box(item.bbox, item.datetime)

    def _migrate(self) -> None:
        """Databases made before item_boxes: fill it from the items, drop the old 2-D index."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'item_footprints'").fetchone() is None:
                return
            rows = db.execute("SELECT pk, west, south, east, north, datetime FROM items").fetchall()
            db.executemany(
                "INSERT OR REPLACE INTO item_boxes VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(pk, *_box((w, s, e, n), _from_text(when))) for pk, w, s, e, n, when in rows],
            )
            db.execute("DROP TABLE item_footprints")

    @staticmethod
    def _insert_assets(db: sqlite3.Connection, pk: int, item: Item) -> None:
        db.executemany(
            "INSERT INTO assets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(pk, *asset_values(a)) for a in item.assets.values()],
        )

    # --- queries -------------------------------------------------------------------------------

    def collections(self) -> list[Collection]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM collections ORDER BY id").fetchall()
            return [self._collection(row) for row in rows]

    def collection(self, collection_id: str) -> Collection:
        with self._lock:
            row = self._db.execute("SELECT * FROM collections WHERE id = ?", (collection_id,)).fetchone()
            if row is None:
                raise NotFound("collection", collection_id)
            return self._collection(row)

    def version(self, collection_id: str) -> str:
        return self._column(collection_id, "version")

    def access(self, collection_id: str) -> str:
        return self._column(collection_id, "access")

    def _column(self, collection_id: str, column: str) -> Any:
        with self._lock:
            row = self._db.execute(f"SELECT {column} FROM collections WHERE id = ?", (collection_id,)).fetchone()
        if row is None:
            raise NotFound("collection", collection_id)
        return row[0]

    def set_access(self, collection_id: str, access: str) -> None:
        check_access(access)
        with self._transaction() as db:
            if db.execute("UPDATE collections SET access = ? WHERE id = ?", (access, collection_id)).rowcount == 0:
                raise NotFound("collection", collection_id)

    def versions(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT id, version FROM collections ORDER BY id").fetchall())

    def item(self, collection_id: str, item_id: str) -> Item:
        self.version(collection_id)
        with self._lock:
            row = self._db.execute(
                "SELECT pk, version FROM items WHERE collection = ? AND id = ?", (collection_id, item_id)
            ).fetchone()
            if row is None:
                raise NotFound("item", item_id, f"in collection '{collection_id}'")
            return self._cached_items([tuple(row)])[0]

    def _search(self, query: SearchQuery) -> list[Item]:
        """Candidates from the R*Tree (area, then time) or the (collection, datetime) index, in order; the
        exact footprint test on their geometry; then the full rows of the first `limit` that pass."""
        tables, where, params = "items AS i", ["i.collection = ?"], [query.collection]
        area = query.area
        if area is not None:
            boxes = []
            for west, south, east, north in (part.bounds for part in getattr(area, "geoms", [area])):
                boxes.append("(b.max_lon >= ? AND b.min_lon <= ? AND b.max_lat >= ? AND b.min_lat <= ?)")
                params += [west, east, south, north]
            tables = "item_boxes AS b CROSS JOIN items AS i ON i.pk = b.id"  # CROSS JOIN: the R*Tree first
            where.append(f"({' OR '.join(boxes)})")
            for bound, end in (("b.max_day >= ?", query.start), ("b.min_day <= ?", query.end)):
                if end is not None:
                    where.append(bound)
                    params.append(_day(_from_text(end)))
        if query.start is not None:
            where.append("i.datetime >= ?")
            params.append(query.start)
        if query.end is not None:
            where.append("i.datetime <= ?")
            params.append(query.end)
        if query.max_cloud is not None:
            where.append("i.cloud_cover <= ?")
            params.append(query.max_cloud)
        if query.ids is not None:
            where.append(f"i.id IN ({', '.join('?' * len(query.ids))})")
            params += list(query.ids)
        if query.visible_to != EVERYONE:
            where.append("(i.owner IS NULL OR i.owner = ?)")
            params.append(query.visible_to)
        order = ", ".join(f"i.{column} {'DESC' if descending else 'ASC'} NULLS LAST" for column, descending in query.sortby)
        sql = f"SELECT i.pk, i.version, i.geometry FROM {tables} WHERE {' AND '.join(where)} ORDER BY {order}"
        if area is not None:
            shapely.prepare(area)
        chosen: list[tuple[int, str]] = []
        with self._lock:
            for pk, version, geometry in self._db.execute(sql, params):
                if area is None or area.intersects(shapely.from_geojson(geometry)):
                    chosen.append((pk, version))
                    if len(chosen) == query.limit:
                        break
            return self._cached_items(chosen)

    def _cached_items(self, keys: list[tuple[int, str]]) -> list[Item]:
        """The items of (pk, version) keys, from the model cache or else their rows (call under the lock)."""
        missing = [pk for pk, version in keys if (pk, version) not in self._models]
        if missing:
            rows = self._db.execute(
                f"SELECT {_ITEM_COLUMNS} FROM items WHERE pk IN ({', '.join('?' * len(missing))})", missing
            ).fetchall()
            for item, row in zip(self._items(rows), rows):
                self._models[row["pk"], item.version] = item
        found = [self._models[key] for key in keys]
        for key in keys:
            self._models.move_to_end(key)
        while len(self._models) > MODEL_CACHE_SIZE:
            self._models.popitem(last=False)
        return found

    # --- rows to models ------------------------------------------------------------------------

    def _collection(self, row: sqlite3.Row) -> Collection:
        """Collection of a row; missing extent parts are computed from the collection's items."""
        bbox = None if row["west"] is None else (row["west"], row["south"], row["east"], row["north"])
        start, end = row["start_datetime"], row["end_datetime"]
        if bbox is None or (start is None and end is None):
            agg = self._db.execute(
                """SELECT min(west), min(south), max(east), max(north), min(datetime), max(datetime)
                   FROM items WHERE collection = ?""",
                (row["id"],),
            ).fetchone()
            if bbox is None and agg[0] is not None:
                bbox = tuple(agg[:4])
            if start is None and end is None:
                start, end = agg[4], agg[5]
        return Collection(
            id=row["id"],
            title=row["title"],
            description=row["description"],
            bbox=bbox,
            interval=(start and _from_text(start), end and _from_text(end)),
            stac=json.loads(row["stac"]),
            access=row["access"],
        )

    def _items(self, rows: list[sqlite3.Row]) -> list[Item]:
        assets: dict[int, dict[str, dict[str, Any]]] = {row["pk"]: {} for row in rows}
        if rows:
            cursor = self._db.cursor()
            cursor.row_factory = None  # plain tuples made into dicts: faster to read by name than sqlite3.Row
            cursor.execute(
                f"SELECT item, {', '.join(ASSET_COLUMNS)} FROM assets WHERE item IN ({', '.join('?' * len(rows))})",
                list(assets),
            )
            for pk, *values in cursor:
                assets[pk][values[0]] = dict(zip(ASSET_COLUMNS, values))
        return [_item(row, assets[row["pk"]]) for row in rows]


def check_access(access: str) -> None:
    """InvalidParameter unless `access` is one of ACCESS_LEVELS."""
    if access not in ACCESS_LEVELS:
        raise InvalidParameter("access", f"'{access}' is not one of {', '.join(ACCESS_LEVELS)}")


ASSET_COLUMNS = (
    "key", "href", "roles", "media_type", "title", "bands", "names", "common_names", "epsg", "shape", "transform", "gsd",
)  # fmt: skip


def asset_values(a: Asset) -> tuple[Any, ...]:
    """The stored form of an asset's parsed fields (`ASSET_COLUMNS`; lists as JSON text), read by `item_model`."""
    return (
        a.key, a.href, _dumps(a.roles), a.media_type, a.title, _dumps([b.__dict__ for b in a.bands]),
        _dumps(a.names), _dumps(a.common_names), a.epsg, None if a.shape is None else _dumps(a.shape),
        None if a.transform is None else _dumps(a.transform), a.gsd,
    )  # fmt: skip


def item_values(item: Item) -> dict[str, Any]:
    """The stored form of an item's parsed fields besides its JSON, geometry and assets, read by `item_model`."""
    west, south, east, north = item.bbox
    return {
        "collection": item.collection, "id": item.id, "datetime": _to_text(item.datetime),
        "cloud_cover": item.cloud_cover, "platform": item.platform, "processing_baseline": item.processing_baseline,
        "west": west, "south": south, "east": east, "north": north, "version": item.version, "owner": item.owner,
    }  # fmt: skip


def _item(row: sqlite3.Row, asset_rows: dict[str, dict[str, Any]]) -> Item:
    return item_model(row, json.loads(row["stac"]), asset_rows)


def item_model(row: Any, item_json: dict[str, Any], asset_rows: dict[str, Any]) -> Item:
    """The Item of stored fields (`item_values` keys), its JSON and its assets' stored fields by key."""
    return Item(
        id=row["id"],
        collection=row["collection"],
        datetime=_from_text(row["datetime"]),
        bbox=(row["west"], row["south"], row["east"], row["north"]),
        geometry=item_json["geometry"],
        assets={key: _asset(asset_rows[key], raw) for key, raw in item_json["assets"].items()},
        cloud_cover=row["cloud_cover"],
        platform=row["platform"],
        processing_baseline=row["processing_baseline"],
        properties=item_json["properties"],
        version=row["version"],
        stac=item_json,
        owner=row["owner"],
    )


def _asset(row: Any, raw: dict[str, Any]) -> Asset:
    roles, bands, names, common_names, shape, transform = _asset_lists(
        row["roles"], row["bands"], row["names"], row["common_names"], row["shape"], row["transform"]
    )
    return Asset(
        key=row["key"],
        href=row["href"],
        roles=roles,
        media_type=row["media_type"],
        title=row["title"],
        bands=bands,
        names=names,
        common_names=common_names,
        epsg=row["epsg"],
        shape=shape,
        transform=transform,
        gsd=row["gsd"],
        stac=raw,
    )


@lru_cache(maxsize=4096)
def _asset_lists(
    roles: str, bands: str, names: str, common_names: str, shape: str | None, transform: str | None
) -> tuple[Any, ...]:
    """The immutable fields of an asset's six stored JSON columns, parsed once per distinct set (the same bands,
    roles and grids recur across a collection's items, and parsing was most of the cost of reading an item)."""
    lists = json.loads(f"[{roles},{bands},{names},{common_names},{shape or 'null'},{transform or 'null'}]")
    return (
        tuple(lists[0]), tuple(RasterBand(**band) for band in lists[1]), tuple(lists[2]), tuple(lists[3]),
        None if lists[4] is None else tuple(lists[4]), None if lists[5] is None else tuple(lists[5]),
    )  # fmt: skip


# --- search parameters ---------------------------------------------------------------------------


def search_area(
    bbox: Sequence[float] | None, bbox_crs: str, intersects: dict[str, Any] | None
) -> BaseGeometry | None:
    """The search area in EPSG:4326, or None; split in two parts if it crosses the antimeridian."""
    if bbox is not None and intersects is not None:
        raise InvalidParameter("intersects", "cannot be combined with bbox")
    if intersects is not None:
        try:
            area = shapely.geometry.shape(intersects)
        except Exception as exc:  # shapely raises several kinds for malformed GeoJSON
            raise InvalidParameter("intersects", f"not a GeoJSON geometry: {exc}") from exc
        if area.is_empty:
            raise InvalidParameter("intersects", "empty geometry")
        return area
    if bbox is None:
        return None
    to_lonlat = _to_lonlat(bbox_crs)
    try:
        west, south, east, north = (float(v) for v in bbox)
    except (TypeError, ValueError) as exc:
        raise InvalidParameter("bbox", f"expected 4 numbers, got {bbox!r}") from exc
    geographic = to_lonlat is None
    if not all(map(math.isfinite, (west, south, east, north))) or south > north or (west > east and not geographic):
        raise InvalidParameter("bbox", f"expected finite west, south, east, north, got {list(bbox)}")
    if geographic:
        lon_west, lat_south, lon_east, lat_north = west, south, east, north
    else:
        try:
            lon_west, lat_south, lon_east, lat_north = to_lonlat.transform_bounds(
                west, south, east, north, densify_pts=21
            )
        except ProjError:
            lon_west = math.inf
        if not all(map(math.isfinite, (lon_west, lat_south, lon_east, lat_north))):
            raise InvalidParameter("bbox", f"cannot be transformed from {bbox_crs} to EPSG:4326")
    if lon_west > lon_east:
        return shapely.MultiPolygon(
            [shapely.box(lon_west, lat_south, 180, lat_north), shapely.box(-180, lat_south, lon_east, lat_north)]
        )
    if geographic:
        return shapely.box(west, south, east, north)
    # The exact area: the densified bbox outline, reprojected; its bounding box where that is not valid (poles).
    outline = shapely.segmentize(shapely.box(west, south, east, north), max(east - west, north - south) / 20 or 1)
    xs, ys = shapely.get_coordinates(outline).T
    lons, lats = to_lonlat.transform(xs, ys)
    area = shapely.Polygon(zip(lons, lats))
    return area if area.is_valid else shapely.box(lon_west, lat_south, lon_east, lat_north)


def _to_lonlat(bbox_crs: str) -> pyproj.Transformer | None:
    """This thread's transformer from `bbox_crs` to longitude/latitude; None for EPSG:4326 itself."""
    cache = _TRANSFORMERS.__dict__
    if bbox_crs not in cache:
        try:
            crs = pyproj.CRS.from_user_input(bbox_crs)
        except CRSError as exc:
            raise InvalidParameter("bbox_crs", str(exc)) from exc
        cache[bbox_crs] = None if crs == _EPSG_4326 else pyproj.Transformer.from_crs(crs, _EPSG_4326, always_xy=True)
    return cache[bbox_crs]


def _interval(interval: tuple[datetime | None, datetime | None] | None) -> tuple[str | None, str | None]:
    if interval is None:
        return None, None
    try:
        start, end = interval
    except (TypeError, ValueError) as exc:
        raise InvalidParameter("datetime", f"expected a (start, end) pair, got {interval!r}") from exc
    for value in (start, end):
        if value is not None and not isinstance(value, datetime):
            raise InvalidParameter("datetime", f"expected datetimes or None, got {value!r}")
    start, end = (v if v is None or v.tzinfo else v.replace(tzinfo=timezone.utc) for v in (start, end))
    if start is not None and end is not None and start > end:
        raise InvalidParameter("datetime", f"start {start.isoformat()} is after end {end.isoformat()}")
    return _to_text(start), _to_text(end)


def _sort_keys(sortby: Sequence[str]) -> tuple[tuple[str, bool], ...]:
    """(column, descending) of STAC-style sort keys, ties broken by id."""
    keys = sortby.split(",") if isinstance(sortby, str) else list(sortby)
    terms: list[tuple[str, bool]] = []
    for key in keys:
        key = key.strip()
        name = key.lstrip("+-")
        if name not in SORT_COLUMNS:
            raise InvalidParameter("sortby", f"unknown sort key '{key}' (known: {', '.join(SORT_COLUMNS)})")
        terms.append((SORT_COLUMNS[name], key.startswith("-")))
    if "id" not in {column for column, _ in terms}:
        terms.append(("id", False))
    return tuple(terms)
