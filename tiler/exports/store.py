"""Export records in the catalog's SQLite file (own tables, own connection).

Servers, `jeo export` processes, local workers and SLURM jobs all update the same records; every
status change is one conditional UPDATE (`... WHERE status IN ('queued', 'running')`), so terminal
states (finished, failed, canceled) are final and concurrent writers cannot resurrect an export.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mosaics.catalog import add_columns
from mosaics.errors import NotFound
from tiler.exports.models import ACTIVE, ExportPlan, ExportRecord, now

SCHEMA = """
CREATE TABLE IF NOT EXISTS exports (
    id           TEXT PRIMARY KEY,
    status       TEXT NOT NULL,              -- queued, running, finished, failed, canceled
    collection   TEXT NOT NULL,
    executor     TEXT NOT NULL,              -- local, slurm
    request      TEXT NOT NULL,              -- JSON as submitted
    plan         TEXT NOT NULL,              -- JSON ExportPlan
    created      TEXT NOT NULL,
    started      TEXT,
    finished     TEXT,
    jobs         TEXT NOT NULL DEFAULT '[]', -- JSON list of executor job ids
    owner        TEXT,                       -- local executor: host:pid:starttime of the process running it
    error        TEXT,
    log_tail     TEXT,
    result       TEXT,                       -- path or s3:// URL of the result
    chunks_total INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0, -- local resumes
    updated      TEXT NOT NULL,
    created_by   TEXT                        -- the caller that submitted it (tiler.tokens.Caller.principal); NULL = anonymous
);
CREATE INDEX IF NOT EXISTS exports_status ON exports (status);

CREATE TABLE IF NOT EXISTS export_chunks (
    export   TEXT NOT NULL,
    chunk    INTEGER NOT NULL,
    status   TEXT NOT NULL,                  -- running, done, failed
    started  TEXT,
    finished TEXT,
    job      TEXT,                           -- SLURM job id or local pid
    seconds  REAL,
    PRIMARY KEY (export, chunk)
);
"""

ADDED_COLUMNS = {("exports", "created_by"): "TEXT"}
EVERYONE = "*"  # `ExportStore.list(created_by=EVERYONE)`: exports of every caller
_COLUMNS = (
    "id, status, collection, executor, request, plan, created, started, finished, jobs, owner, error, log_tail, "
    "result, chunks_total, attempts, created_by, "
    "(SELECT count(*) FROM export_chunks c WHERE c.export = exports.id AND c.chunk >= 0 AND c.status = 'done') "
    "AS chunks_done"
)
_ACTIVE_SQL = ", ".join(f"'{s}'" for s in ACTIVE)


class ExportStore:
    """Export records; safe to share between threads."""

    def __init__(self, path: str | Path):
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=60)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA busy_timeout = 60000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.executescript(SCHEMA)
            add_columns(self._db, ADDED_COLUMNS)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, tuple(params))

    # --- records ---

    def insert(self, record: ExportRecord) -> None:
        self._execute(
            """INSERT INTO exports (id, status, collection, executor, request, plan, created, jobs, owner,
                                    chunks_total, updated, created_by)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                record.id, record.status, record.collection, record.executor, json.dumps(record.request),
                json.dumps(record.plan.to_dict()), record.created, json.dumps(record.jobs), record.owner,
                record.chunks_total, now(), record.created_by,
            ),
        )  # fmt: skip

    def delete(self, export_id: str) -> None:
        """Forget an export that was never submitted."""
        self._execute("DELETE FROM export_chunks WHERE export = ?", (export_id,))
        self._execute("DELETE FROM exports WHERE id = ?", (export_id,))

    def get(self, export_id: str) -> ExportRecord | None:
        row = self._execute(f"SELECT {_COLUMNS} FROM exports WHERE id = ?", (export_id,)).fetchone()
        return None if row is None else _record(row)

    def require(self, export_id: str) -> ExportRecord:
        record = self.get(export_id)
        if record is None:
            raise NotFound("export", export_id)
        return record

    def list(
        self, status: str | None = None, limit: int | None = None, created_by: str | None = EVERYONE
    ) -> list[ExportRecord]:
        """Newest first; only those submitted by `created_by` (None = anonymous callers) unless EVERYONE."""
        where, params = [], []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if created_by != EVERYONE:
            where.append("created_by IS ?")
            params.append(created_by)
        sql = f"SELECT {_COLUMNS} FROM exports" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY created DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_record(row) for row in self._execute(sql, params).fetchall()]

    def active(self) -> list[ExportRecord]:
        return [_record(r) for r in self._execute(f"SELECT {_COLUMNS} FROM exports WHERE status IN ({_ACTIVE_SQL})")]

    def active_destinations(self) -> set[str]:
        paths = set()
        for (plan,) in self._execute(f"SELECT plan FROM exports WHERE status IN ({_ACTIVE_SQL})"):
            destination = json.loads(plan)["destination"]
            if destination["kind"] == "local":
                paths.add(destination["path"])
        return paths

    def status(self, export_id: str) -> str | None:
        row = self._execute("SELECT status FROM exports WHERE id = ?", (export_id,)).fetchone()
        return None if row is None else row[0]

    def transition(self, export_id: str, status: str, only_from: Iterable[str] = ACTIVE, **fields: Any) -> bool:
        """Set `status` (and fields) if the export is in one of `only_from`; True if it changed."""
        values = {"status": status, "updated": now(), **fields}
        if status in ("finished", "failed", "canceled"):
            values.setdefault("finished", now())
        sets = ", ".join(f"{k} = ?" for k in values)
        states = list(only_from)
        cursor = self._execute(
            f"UPDATE exports SET {sets} WHERE id = ? AND status IN ({', '.join('?' * len(states))})",
            [*values.values(), export_id, *states],
        )
        return cursor.rowcount == 1

    def mark_running(self, export_id: str) -> None:
        self._execute(
            "UPDATE exports SET status = 'running', started = coalesce(started, ?), updated = ? "
            "WHERE id = ? AND status = 'queued'",
            (now(), now(), export_id),
        )

    def set_jobs(self, export_id: str, jobs: list[str]) -> None:
        self._execute("UPDATE exports SET jobs = ?, updated = ? WHERE id = ?", (json.dumps(jobs), now(), export_id))

    def claim(self, export_id: str, owner: str, expected: str | None, resume: bool = False) -> bool:
        """Make `owner` run the (active) export if its owner is still `expected`."""
        cursor = self._execute(
            f"UPDATE exports SET owner = ?, attempts = attempts + ?, updated = ? "
            f"WHERE id = ? AND owner IS ? AND status IN ({_ACTIVE_SQL})",
            (owner, 1 if resume else 0, now(), export_id, expected),
        )
        return cursor.rowcount == 1

    # --- chunks ---

    def chunk_started(self, export_id: str, chunk: int, job: str | None) -> None:
        self._execute(
            """INSERT INTO export_chunks (export, chunk, status, started, job) VALUES (?, ?, 'running', ?, ?)
               ON CONFLICT (export, chunk) DO UPDATE SET status = 'running', started = excluded.started,
                   finished = NULL, job = excluded.job, seconds = NULL""",
            (export_id, chunk, now(), job),
        )
        self.mark_running(export_id)

    def claim_chunk(self, export_id: str, total: int, job: str | None) -> int | None:
        """Atomically take the lowest chunk nobody has taken (None when none is left)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                taken = {c for (c,) in self._db.execute(
                    "SELECT chunk FROM export_chunks WHERE export = ? AND chunk >= 0", (export_id,))}
                free = next((i for i in range(total) if i not in taken), None)
                if free is not None:
                    self._db.execute(
                        "INSERT INTO export_chunks (export, chunk, status, started, job) VALUES (?, ?, 'running', ?, ?)",
                        (export_id, free, now(), job),
                    )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        if free is not None:
            self.mark_running(export_id)
        return free

    def claim_merge(self, export_id: str, job: str | None) -> bool:
        """Atomically become the process that merges (chunk row -1); False if another one did."""
        cursor = self._execute(
            "INSERT OR IGNORE INTO export_chunks (export, chunk, status, started, job) VALUES (?, -1, 'running', ?, ?)",
            (export_id, now(), job),
        )
        return cursor.rowcount == 1

    def chunks_done(self, export_id: str) -> int:
        row = self._execute(
            "SELECT count(*) FROM export_chunks WHERE export = ? AND chunk >= 0 AND status = 'done'", (export_id,)
        ).fetchone()
        return row[0]

    def chunk_finished(self, export_id: str, chunk: int, status: str, seconds: float | None = None) -> None:
        self._execute(
            "UPDATE export_chunks SET status = ?, finished = ?, seconds = ? WHERE export = ? AND chunk = ?",
            (status, now(), seconds, export_id, chunk),
        )

    def chunk_states(self, export_id: str) -> dict[int, str]:
        rows = self._execute("SELECT chunk, status FROM export_chunks WHERE export = ? AND chunk >= 0", (export_id,))
        return {chunk: status for chunk, status in rows}

    def chunk_rows(self, export_id: str) -> list[dict[str, Any]]:
        rows = self._execute("SELECT * FROM export_chunks WHERE export = ? ORDER BY chunk", (export_id,))
        return [dict(row) for row in rows]

    def reset_chunks(self, export_id: str, chunks: list[int]) -> None:
        """Forget chunks so that they are computed again."""
        self._execute(
            f"DELETE FROM export_chunks WHERE export = ? AND chunk IN ({', '.join('?' * len(chunks))})",
            (export_id, *chunks),
        )

    def reset_unfinished_chunks(self, export_id: str) -> None:
        self._execute("DELETE FROM export_chunks WHERE export = ? AND status != 'done'", (export_id,))


def _record(row: sqlite3.Row) -> ExportRecord:
    return ExportRecord(
        id=row["id"],
        status=row["status"],
        collection=row["collection"],
        executor=row["executor"],
        request=json.loads(row["request"]),
        plan=ExportPlan.from_dict(json.loads(row["plan"])),
        created=row["created"],
        started=row["started"],
        finished=row["finished"],
        jobs=json.loads(row["jobs"]),
        owner=row["owner"],
        error=row["error"],
        log_tail=row["log_tail"],
        result=row["result"],
        chunks_total=row["chunks_total"],
        chunks_done=row["chunks_done"],
        attempts=row["attempts"],
        created_by=row["created_by"],
    )
