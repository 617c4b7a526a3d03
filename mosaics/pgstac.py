"""The scene catalog in PostgreSQL: items and collections in pgSTAC, searched through pgSTAC's SQL functions.

Opened by `Catalog("postgresql://…")`. pypgstac migrates the schema (once per database version, under
an advisory lock so that servers starting together do not race) and loads collections and items with
its loader, inside the ingest's own transaction. Beside pgSTAC, the `jeo` schema holds what jeo-tiler
derives from each item at ingest (its version and parsed assets, like the SQLite catalog's columns) and
each collection's version, so that reading an item never touches its files and both backends give the
same versions (and so the same cache keys and ETags) for the same content.

Searches run `pgstac.stac_search_to_where` (the STAC API search → SQL WHERE) and `pgstac.search_rows`,
reading dehydrated items and hydrating them in Python (pypgstac), without `pgstac.search`'s per-call
bookkeeping (search hashes, statistics, paging tokens) that a tile request does not need.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
import shapely.geometry
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
from pypgstac.db import PgstacDB
from pypgstac.hydration import hydrate
from pypgstac.load import Loader, Methods
from pypgstac.migrate import Migrate

from . import stac
from .catalog import (
    EVERYONE,
    Catalog,
    IngestReport,
    SearchQuery,
    _dumps,
    _from_text,
    asset_values,
    check_access,
    check_item_collections,
    collection_version,
    item_model,
    item_values,
    ASSET_COLUMNS,
)
from .errors import NotFound
from .models import Collection, Item

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS jeo;
CREATE TABLE IF NOT EXISTS jeo.collections (
    id      text PRIMARY KEY,
    stac    text NOT NULL,              -- the collection JSON as ingested (its version covers this text)
    version text NOT NULL,              -- catalog.collection_version
    access  text NOT NULL DEFAULT 'public'  -- catalog.ACCESS_LEVELS (tiler.access); kept by ingest
);
CREATE TABLE IF NOT EXISTS jeo.items (  -- catalog.item_values + parsed assets of every pgstac.items row
    collection text NOT NULL,
    id         text NOT NULL,
    datetime   text NOT NULL,
    cloud_cover double precision,
    platform   text,
    processing_baseline text,
    west double precision NOT NULL, south double precision NOT NULL,
    east double precision NOT NULL, north double precision NOT NULL,
    version    text NOT NULL,
    assets     jsonb NOT NULL,          -- [{catalog.ASSET_COLUMNS: stored value}] in the item's asset order
    PRIMARY KEY (collection, id)
);
ALTER TABLE jeo.items ADD COLUMN IF NOT EXISTS owner text;  -- catalog items.owner
CREATE INDEX IF NOT EXISTS items_owned ON jeo.items (collection) WHERE owner IS NOT NULL;
"""
_ITEM_COLUMNS = (
    "collection", "id", "datetime", "cloud_cover", "platform", "processing_baseline",
    "west", "south", "east", "north", "version", "owner", "assets",
)  # fmt: skip
MIGRATION_LOCK = 0x6A656F  # pg_advisory_lock key of `jeo` schema set-up
# pgSTAC columns and expressions of the catalog's sort keys (catalog.SORT_COLUMNS values)
_SORT_SQL = {"datetime": "datetime", "cloud_cover": "to_float(content->'properties'->'eo:cloud_cover')", "id": "id"}
_NO_LIMIT = 2**31 - 1


def _rows(conn: psycopg.Connection, sql: str, params: Any = None) -> psycopg.Cursor[dict[str, Any]]:
    """Execute `sql`, rows as dicts."""
    return conn.cursor(row_factory=dict_row).execute(sql, params)


def migrate(url: str) -> None:
    """Install or upgrade pgSTAC (pypgstac) and the `jeo` schema, one process at a time."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            db = PgstacDB(dsn=url)
            try:
                Migrate(db).run_migration()
            finally:
                db.disconnect()
                db.close()
            conn.execute(SCHEMA)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


class PgstacCatalog(Catalog):
    """pgSTAC catalog; a pool of connections shared by threads."""

    def __init__(self, url: str, *, pool_size: int = 8):
        migrate(url)
        self._pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, open=True, name="jeo-catalog",
            kwargs={"autocommit": True, "options": "-c search_path=pgstac,public"},
        )  # fmt: skip
        self._base_item = lru_cache(maxsize=256)(self._load_base_item)

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection (autocommit; tuple rows, as pypgstac expects)."""
        with self._pool.connection() as conn:
            yield conn

    # --- ingest ------------------------------------------------------------------------------------

    def _ingest(self, walk: stac.Walk, access: str | None) -> IngestReport:
        with self._connection() as conn, conn.transaction():
            known = {row[0] for row in conn.execute("SELECT id FROM jeo.collections FOR SHARE")}
            check_item_collections(walk, known)
            stored = self._stored_versions(conn, walk)
            changed = [item for key, item in walk.items.items() if stored.get(key) != item.version]
            collections = [
                c for c in walk.collections.values()
                if c.id not in known or self._stored_collection(conn, c.id) != _dumps(c.stac)
            ]  # fmt: skip
            loader = Loader(PgstacDB(pool=self._pool, connection=conn, commit_on_exit=False))
            if collections:
                loader.load_collections(iter([c.stac for c in collections]), insert_mode=Methods.upsert)
                conn.execute(
                    """INSERT INTO jeo.collections (id, stac, version) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])
                       ON CONFLICT (id) DO UPDATE SET stac = excluded.stac""",
                    ([c.id for c in collections], [_dumps(c.stac) for c in collections], [""] * len(collections)),
                )
            if changed:
                loader.load_items(iter([dict(item.stac) for item in changed]), insert_mode=Methods.upsert)
                self._store_item_fields(conn, changed)
            if access is not None:
                conn.execute("UPDATE jeo.collections SET access = %s WHERE id = ANY(%s)", (access, list(walk.collections)))
            for collection_id in {c.id for c in collections} | {item.collection for item in changed}:
                self._refresh_version(conn, collection_id)
        added = sum(key not in stored for key in walk.items)
        return IngestReport(tuple(walk.collections), added, len(changed) - added, len(walk.items) - len(changed))

    def remove(self, collection_id: str, item_id: str) -> bool:
        with self._connection() as conn, conn.transaction():
            deleted = conn.execute(
                "DELETE FROM jeo.items WHERE collection = %s AND id = %s", (collection_id, item_id)
            ).rowcount
            if deleted:
                conn.execute("SELECT pgstac.delete_item(%s, %s)", (item_id, collection_id))
                self._refresh_version(conn, collection_id)
        return bool(deleted)

    @staticmethod
    def _stored_versions(conn: psycopg.Connection, walk: stac.Walk) -> dict[tuple[str, str], str]:
        keys = list(walk.items)
        rows = _rows(
            conn,
            """SELECT i.collection, i.id, i.version FROM jeo.items i
               JOIN unnest(%s::text[], %s::text[]) AS k (collection, id) USING (collection, id)""",
            ([c for c, _ in keys], [i for _, i in keys]),
        )
        return {(row["collection"], row["id"]): row["version"] for row in rows}

    @staticmethod
    def _stored_collection(conn: psycopg.Connection, collection_id: str) -> str | None:
        row = conn.execute("SELECT stac FROM jeo.collections WHERE id = %s", (collection_id,)).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def _store_item_fields(conn: psycopg.Connection, items: list[Item]) -> None:
        rows = []
        for item in items:
            assets = [dict(zip(ASSET_COLUMNS, asset_values(a))) for a in item.assets.values()]
            rows.append((*item_values(item).values(), Jsonb(assets)))
        with conn.cursor() as cursor:
            cursor.executemany(
                f"""INSERT INTO jeo.items ({", ".join(_ITEM_COLUMNS)}) VALUES ({", ".join(["%s"] * len(_ITEM_COLUMNS))})
                    ON CONFLICT (collection, id) DO UPDATE SET
                    {", ".join(f"{c} = excluded.{c}" for c in _ITEM_COLUMNS[2:])}""",
                rows,
            )

    @staticmethod
    def _refresh_version(conn: psycopg.Connection, collection_id: str) -> None:
        (collection_json,) = conn.execute(
            "SELECT stac FROM jeo.collections WHERE id = %s FOR UPDATE", (collection_id,)
        ).fetchone()
        versions = conn.execute(
            "SELECT id, version FROM jeo.items WHERE collection = %s ORDER BY id COLLATE \"C\"", (collection_id,)
        )
        version = collection_version(collection_json, versions)
        conn.execute("UPDATE jeo.collections SET version = %s WHERE id = %s", (version, collection_id))

    # --- queries -----------------------------------------------------------------------------------

    def collections(self) -> list[Collection]:
        with self._connection() as conn:
            rows = _rows(conn, "SELECT id, stac, access FROM jeo.collections ORDER BY id COLLATE \"C\"").fetchall()
            return [self._collection(conn, row) for row in rows]

    def collection(self, collection_id: str) -> Collection:
        with self._connection() as conn:
            row = _rows(conn, "SELECT id, stac, access FROM jeo.collections WHERE id = %s", (collection_id,)).fetchone()
            if row is None:
                raise NotFound("collection", collection_id)
            return self._collection(conn, row)

    def version(self, collection_id: str) -> str:
        return self._column(collection_id, "version")

    def versions(self) -> dict[str, str]:
        with self._connection() as conn:
            return dict(conn.execute('SELECT id, version FROM jeo.collections ORDER BY id COLLATE "C"').fetchall())

    def access(self, collection_id: str) -> str:
        return self._column(collection_id, "access")

    def _column(self, collection_id: str, column: str) -> Any:
        with self._connection() as conn:
            row = conn.execute(f"SELECT {column} FROM jeo.collections WHERE id = %s", (collection_id,)).fetchone()
        if row is None:
            raise NotFound("collection", collection_id)
        return row[0]

    def set_access(self, collection_id: str, access: str) -> None:
        check_access(access)
        with self._connection() as conn:
            if conn.execute("UPDATE jeo.collections SET access = %s WHERE id = %s", (access, collection_id)).rowcount == 0:
                raise NotFound("collection", collection_id)

    def item(self, collection_id: str, item_id: str) -> Item:
        self.version(collection_id)
        found = self._search(SearchQuery(collection_id, None, None, None, None, (("id", False),), 1, (item_id,)))
        if not found:
            raise NotFound("item", item_id, f"in collection '{collection_id}'")
        return found[0]

    def _search(self, query: SearchQuery) -> list[Item]:
        search: dict[str, Any] = {"collections": [query.collection]}
        if query.area is not None:
            search["intersects"] = shapely.geometry.mapping(query.area)
        if query.start is not None or query.end is not None:
            search["datetime"] = f"{query.start or '..'}/{query.end or '..'}"
        if query.max_cloud is not None:
            search["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, query.max_cloud]}
            search["filter-lang"] = "cql2-json"
        if query.ids is not None:
            search["ids"] = list(query.ids)
        order = ", ".join(f"{_SORT_SQL[c]} {'DESC' if d else 'ASC'} NULLS LAST" for c, d in query.sortby)
        everyone = query.visible_to == EVERYONE
        with self._connection() as conn:
            # items of other owners are dropped after pgSTAC's search: then it must not stop at `limit` where there are any
            rows = _rows(
                conn,
                """WITH found AS (
                       SELECT row_number() OVER () AS n, i AS item
                       FROM pgstac.search_rows(pgstac.stac_search_to_where(%(search)s), %(order)s, NULL,
                            CASE WHEN %(everyone)s OR NOT EXISTS (SELECT 1 FROM jeo.items
                                 WHERE collection = %(collection)s AND owner IS NOT NULL) THEN %(limit)s ELSE %(all)s END) i
                   )
                   SELECT j.*, c.version AS collection_version,
                          pgstac.format_item(found.item, '{}'::jsonb, false) AS content
                   FROM found JOIN jeo.items j ON j.collection = (found.item).collection AND j.id = (found.item).id
                   JOIN jeo.collections c ON c.id = j.collection
                   WHERE %(everyone)s OR j.owner IS NULL OR j.owner = %(owner)s
                   ORDER BY found.n LIMIT %(limit)s""",
                {"search": Jsonb(search), "order": order, "everyone": everyone, "collection": query.collection,
                 "limit": query.limit or _NO_LIMIT, "all": _NO_LIMIT, "owner": None if everyone else query.visible_to},
            ).fetchall()
        return [self._item(row) for row in rows]

    # --- rows to models ----------------------------------------------------------------------------

    def _load_base_item(self, collection_id: str, collection_version: str) -> dict[str, Any]:
        """pgSTAC's base item of the collection (what items are dehydrated against), cached per version."""
        with self._connection() as conn:
            (base,) = conn.execute("SELECT pgstac.collection_base_item(%s)", (collection_id,)).fetchone()
        return base

    def _item(self, row: dict[str, Any]) -> Item:
        content = hydrate(self._base_item(row["collection"], row["collection_version"]), row["content"])
        content.pop("pgstac:base_item", None)
        assets = {asset["key"]: asset for asset in row["assets"]}
        content["assets"] = {key: content["assets"][key] for key in assets}  # jsonb does not keep key order
        return item_model(row, content, assets)

    def _collection(self, conn: psycopg.Connection, row: dict[str, Any]) -> Collection:
        """The stored collection; missing extent parts are computed from its items."""
        collection = stac.parse_collection(json.loads(row["stac"]), f"pgstac:{row['id']}")
        bbox, (start, end) = collection.bbox, collection.interval
        if bbox is None or (start is None and end is None):
            agg = _rows(
                conn,
                """SELECT min(west) AS w, min(south) AS s, max(east) AS e, max(north) AS n,
                          min(datetime) AS start, max(datetime) AS end FROM jeo.items WHERE collection = %s""",
                (row["id"],),
            ).fetchone()
            if bbox is None and agg["w"] is not None:
                bbox = (agg["w"], agg["s"], agg["e"], agg["n"])
            if start is None and end is None and agg["start"] is not None:
                start, end = _from_text(agg["start"]), _from_text(agg["end"])
        return Collection(
            collection.id, collection.title, collection.description, bbox, (start, end), collection.stac, row["access"]
        )
