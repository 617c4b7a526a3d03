"""The database of the server's own records (access control, exports): the catalog's SQLite file, or the
PostgreSQL database of a `postgresql://` catalog, so that every server sharing that catalog shares them.

Stores write their SQL once, in the dialect both understand: `?` placeholders, `ON CONFLICT`,
`IS NOT DISTINCT FROM`, `RETURNING`, `CREATE TABLE IF NOT EXISTS` with TEXT/INTEGER/DOUBLE PRECISION
columns (`INTEGER PRIMARY KEY` numbers rows on both), partial unique indexes. A `Database` runs it:
`execute` for single statements (autocommit), `transaction()` for several (SQLite: `BEGIN IMMEDIATE`,
which locks the database; PostgreSQL: rows read with `… {db.for_update}` stay locked until the end of
the transaction). Rows are indexed by name or position on both; `unique_violation` recognises either
backend's unique constraint error.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mosaics.catalog import connect, is_postgres_url, transaction

SCHEMA_NAME = "jeo"  # PostgreSQL schema of the records, beside pgSTAC's


class Database(ABC):
    """One database of records; safe to share between threads."""

    for_update: str = ""  # appended to a SELECT in a transaction: locks the rows read until it ends

    @abstractmethod
    def columns(self, table: str) -> set[str]:
        """The column names of `table` (empty if there is no such table)."""

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement in its own transaction; a cursor (fetchone, fetchall, iteration, rowcount)."""

    @abstractmethod
    def transaction(self) -> Any:
        """Context manager: a `Transaction` whose statements commit together (or roll back on an exception)."""

    @abstractmethod
    def close(self) -> None:
        """Close the connections."""


class Transaction(ABC):
    """Statements of one transaction."""

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement."""



def open_database(
    location: str | Path, schema: str, added_columns: dict[tuple[str, str], str] | None = None, indexes: str = ""
) -> Database:
    """The records database at `location` (a `postgresql://` URL, else a SQLite file path) with the
    `CREATE … IF NOT EXISTS` statements of `schema` run, the (table, column): definition columns that a
    database made by an older version lacks added, then the `CREATE … INDEX IF NOT EXISTS` statements of
    `indexes` (which may use those columns) run."""
    if is_postgres_url(location):
        return PostgresDatabase(str(location), schema, added_columns or {}, indexes)
    return SQLiteDatabase(location, schema, added_columns or {}, indexes)


def unique_violation(error: BaseException) -> bool:
    """True if `error` is a unique (or primary key) constraint failure of either backend."""
    if isinstance(error, sqlite3.IntegrityError):
        return "UNIQUE" in str(error)
    return getattr(error, "sqlstate", None) == "23505"


# --- SQLite -------------------------------------------------------------------------------------


class SQLiteDatabase(Database):
    """One connection of the catalog's kind (`mosaics.catalog.connect`), shared by threads under a lock."""

    def __init__(self, path: str | Path, schema: str, added_columns: dict[tuple[str, str], str], indexes: str = ""):
        self._lock = threading.RLock()
        self._db = connect(path, schema, added_columns)
        if indexes:
            self._db.executescript(indexes)

    def columns(self, table: str) -> set[str]:
        with self._lock:
            return {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, tuple(params))

    @contextmanager
    def transaction(self) -> Iterator[_SQLiteTransaction]:
        with transaction(self._db, self._lock) as db:
            yield _SQLiteTransaction(db)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _SQLiteTransaction(Transaction):
    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, tuple(params))


# --- PostgreSQL ---------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"%|\?")
_IDENTITY = re.compile(r"\bINTEGER PRIMARY KEY\b")  # SQLite's row number column


def _postgres_sql(sql: str) -> str:
    """`?` placeholders → psycopg's `%s` (and a literal `%` → `%%`)."""
    return _PLACEHOLDER.sub(lambda m: "%s" if m[0] == "?" else "%%", sql)


class Row(tuple):
    """A result row indexed by position or column name, like sqlite3.Row."""

    names: dict[str, int]

    def __getitem__(self, key: int | str | slice) -> Any:
        return super().__getitem__(self.names[key] if isinstance(key, str) else key)

    def keys(self) -> list[str]:
        return list(self.names)


def _row_factory(cursor: Any) -> Any:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    row_type = type("Row", (Row,), {"names": names, "__slots__": ()})
    return row_type


class PostgresDatabase(Database):
    """A connection pool; tables in the `jeo` schema."""

    for_update = " FOR UPDATE"

    def __init__(self, url: str, schema: str, added_columns: dict[tuple[str, str], str], indexes: str = "",
                 pool_size: int = 8):
        import psycopg
        from psycopg_pool import ConnectionPool

        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('jeo-records-schema'))")  # one creator at a time
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA_NAME}; SET LOCAL search_path = {SCHEMA_NAME}")
            conn.execute(_IDENTITY.sub("BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", schema))
            for (table, column), definition in added_columns.items():
                conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {definition}")
            if indexes:
                conn.execute(indexes)
        self._pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, open=True, name="jeo-records",
            kwargs={"autocommit": True, "row_factory": _row_factory, "options": f"-c search_path={SCHEMA_NAME}"},
        )  # fmt: skip

    def columns(self, table: str) -> set[str]:
        rows = self.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
            (SCHEMA_NAME, table),
        )
        return {row[0] for row in rows}

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._pool.connection() as conn:
            cursor = conn.execute(_postgres_sql(sql), tuple(params))
            return _Result(cursor)

    @contextmanager
    def transaction(self) -> Iterator[_PostgresTransaction]:
        with self._pool.connection() as conn, conn.transaction():
            yield _PostgresTransaction(conn)

    def close(self) -> None:
        self._pool.close()


class _Result:
    """A finished statement's rows (fetched before its connection goes back to the pool) and rowcount."""

    def __init__(self, cursor: Any):
        self.rowcount = cursor.rowcount
        self._rows = cursor.fetchall() if cursor.description is not None else []

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return list(self._rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


class _PostgresTransaction(Transaction):
    def __init__(self, conn: Any):
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(_postgres_sql(sql), tuple(params))

