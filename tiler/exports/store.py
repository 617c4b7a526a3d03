"""Export records in the catalog's SQLite file (own tables, own connection).

Servers, `jeo export` processes, local workers and SLURM jobs all update the same records; every
status change is one conditional UPDATE (`... WHERE status IN ('queued', 'running')`), so terminal
states (finished, failed, canceled) are final and concurrent writers cannot resurrect an export.

- An active export claims its destination: a unique index over the destinations of active exports
  makes a second export to the same file or S3 key fail at INSERT; ending the export releases it.
- Leases (`leases.py`) say which process hosts a local export's workers (`run`) and which one merges
  (`merge`); writes by those processes are fenced with the lease's token.
- Schema changes are additive: `ADDED_COLUMNS` are added with ALTER TABLE to databases that lack them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from mosaics.catalog import add_columns, transaction
from mosaics.errors import NotFound
from tiler.exports.leases import MERGE, RUN, Lease
from tiler.exports.plan import ACTIVE, DestinationConflict, ExportPlan, ExportRecord, now

_ACTIVE_SQL = ", ".join(f"'{s}'" for s in ACTIVE)

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
    job      TEXT,                           -- SLURM job id or local pid of the attempt
    seconds  REAL,
    PRIMARY KEY (export, chunk)
);

CREATE TABLE IF NOT EXISTS export_leases (
    export    TEXT NOT NULL,
    name      TEXT NOT NULL,                 -- run, merge
    holder    TEXT,                          -- host:pid:start time of the holding process
    token     INTEGER NOT NULL,              -- fencing token: +1 on every acquisition
    heartbeat REAL NOT NULL,                 -- unix time of the holder's last renewal
    PRIMARY KEY (export, name)
);
"""

ADDED_COLUMNS = {  # added by ALTER TABLE where missing (databases of older versions; the last three also new ones)
    ("exports", "created_by"): "TEXT",
    ("exports", "destination"): "TEXT",  # result href while the export is active (unique among active exports)
    ("exports", "retries"): "TEXT NOT NULL DEFAULT '[]'",  # JSON list of SLURM resubmissions
    ("export_chunks", "skipped"): "TEXT",  # JSON {item id: reason} of scenes that could not be read
}
EVERYONE = "*"  # `ExportStore.list(created_by=EVERYONE)`: exports of every caller

INDEXES = f"""
CREATE UNIQUE INDEX IF NOT EXISTS exports_destination ON exports (destination) WHERE status IN ({_ACTIVE_SQL});
"""

_COLUMNS = (
    "id, status, collection, executor, request, plan, created, started, finished, jobs, error, log_tail, "
    "result, chunks_total, attempts, retries, created_by, "
    "(SELECT count(*) FROM export_chunks c WHERE c.export = exports.id AND c.chunk >= 0 AND c.status = 'done') "
    "AS chunks_done, "
    "(SELECT json_group_array(c.skipped) FROM export_chunks c WHERE c.export = exports.id AND c.skipped IS NOT NULL) "
    "AS skipped, "
    f"(SELECT json_array(l.holder, l.token, l.heartbeat) FROM export_leases l WHERE l.export = exports.id "
    f"AND l.name = '{RUN}') AS run, "
    f"(SELECT l.token FROM export_leases l WHERE l.export = exports.id AND l.name = '{MERGE}') AS merges"
)
_FENCE = "(SELECT token FROM export_leases WHERE export = ? AND name = ?) = ?"


class ExportStore:
    """Export records; safe to share between threads."""

    def __init__(self, path: str | Path, lease_timeout: float = 60.0):
        self.lease_timeout = lease_timeout
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=60)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA busy_timeout = 60000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.executescript(SCHEMA)
            self._migrate()

    def _migrate(self) -> None:
        """Add missing columns and indexes; carry state of older schemas over."""
        claims = "destination" in {row["name"] for row in self._db.execute("PRAGMA table_info(exports)")}
        add_columns(self._db, ADDED_COLUMNS)
        self._db.executescript(INDEXES)
        if not claims:  # claim the destinations of exports that were active before claims existed
            for row in self._db.execute(f"SELECT id, plan FROM exports WHERE status IN ({_ACTIVE_SQL})").fetchall():
                try:
                    self._db.execute("UPDATE exports SET destination = ? WHERE id = ?",
                                     (ExportPlan.from_dict(json.loads(row["plan"])).result_href, row["id"]))
                except sqlite3.IntegrityError:
                    pass  # two old exports to one destination: the first keeps the claim
        present = {row["name"] for row in self._db.execute("PRAGMA table_info(exports)")}
        if "owner" in present:  # the local executor's process before leases: becomes the `run` lease
            with self._transaction():
                self._db.execute(
                    "INSERT OR IGNORE INTO export_leases (export, name, holder, token, heartbeat) "
                    f"SELECT id, '{RUN}', owner, 1, ? FROM exports WHERE owner IS NOT NULL AND status IN ({_ACTIVE_SQL})",
                    (time.time(),),
                )
                self._db.execute("UPDATE exports SET owner = NULL WHERE owner IS NOT NULL")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, tuple(params))

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db, self._lock)

    # --- records ---

    def insert(self, record: ExportRecord) -> None:
        """Store a new export and claim its destination; DestinationConflict if an active export has it."""
        destination = record.plan.result_href
        try:
            self._execute(
                """INSERT INTO exports (id, status, collection, executor, request, plan, created, jobs, chunks_total,
                                        updated, destination, created_by)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    record.id, record.status, record.collection, record.executor, json.dumps(record.request),
                    json.dumps(record.plan.to_dict()), record.created, json.dumps(record.jobs), record.chunks_total,
                    now(), destination, record.created_by,
                ),
            )  # fmt: skip
        except sqlite3.IntegrityError:
            row = self._execute(
                f"SELECT 1 FROM exports WHERE destination = ? AND status IN ({_ACTIVE_SQL})", (destination,)
            ).fetchone()
            if row is None:  # the other export ended meanwhile
                return self.insert(record)
            shown = record.plan.destination.get("name") or destination
            raise DestinationConflict("destination", f"'{shown}' is being written by another export") from None

    def delete(self, export_id: str) -> None:
        """Forget an export that was never submitted."""
        self._execute("DELETE FROM export_chunks WHERE export = ?", (export_id,))
        self._execute("DELETE FROM export_leases WHERE export = ?", (export_id,))
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

    def status(self, export_id: str) -> str | None:
        row = self._execute("SELECT status FROM exports WHERE id = ?", (export_id,)).fetchone()
        return None if row is None else row[0]

    def transition(self, export_id: str, status: str, only_from: Iterable[str] = ACTIVE,
                   fence: tuple[str, int] | None = None, **fields: Any) -> bool:
        """Set `status` (and fields) if the export is in one of `only_from` (and, with `fence` = (lease name,
        token), that lease still has that token); True if it changed."""
        values = {"status": status, "updated": now(), **fields}
        if status in ("finished", "failed", "canceled"):
            values.setdefault("finished", now())
        sets = ", ".join(f"{k} = ?" for k in values)
        states = list(only_from)
        sql = f"UPDATE exports SET {sets} WHERE id = ? AND status IN ({', '.join('?' * len(states))})"
        params = [*values.values(), export_id, *states]
        if fence is not None:
            sql += f" AND {_FENCE}"
            params += [export_id, *fence]
        return self._execute(sql, params).rowcount == 1

    def mark_running(self, export_id: str) -> None:
        self._execute(
            "UPDATE exports SET status = 'running', started = coalesce(started, ?), updated = ? "
            "WHERE id = ? AND status = 'queued'",
            (now(), now(), export_id),
        )

    def set_jobs(self, export_id: str, jobs: list[str]) -> None:
        self._execute("UPDATE exports SET jobs = ?, updated = ? WHERE id = ?", (json.dumps(jobs), now(), export_id))

    def add_retry(self, record: ExportRecord, retry: dict[str, Any], jobs: list[str]) -> bool:
        """Record a SLURM resubmission, unless another process recorded one since `record` was read."""
        cursor = self._execute(
            f"UPDATE exports SET retries = ?, jobs = ?, updated = ? WHERE id = ? AND retries = ? "
            f"AND status IN ({_ACTIVE_SQL})",
            (json.dumps([*record.retries, retry]), json.dumps([*record.jobs, *jobs]), now(), record.id,
             json.dumps(record.retries)),
        )  # fmt: skip
        return cursor.rowcount == 1

    # --- leases ---

    def lease(self, export_id: str, name: str) -> Lease | None:
        row = self._execute(
            "SELECT holder, token, heartbeat FROM export_leases WHERE export = ? AND name = ?", (export_id, name)
        ).fetchone()
        return None if row is None else Lease(*row)

    def acquire(self, export_id: str, name: str, holder: str, *, resume: bool = False) -> int | None:
        """Make `holder` hold lease `name` of an active export if nobody alive holds it; its new fencing token,
        or None. `resume` counts the acquisition as a resume of the export (`attempts`)."""
        with self._transaction() as db:
            if db.execute(f"SELECT 1 FROM exports WHERE id = ? AND status IN ({_ACTIVE_SQL})", (export_id,)).fetchone() is None:
                return None
            row = db.execute(
                "SELECT holder, token, heartbeat FROM export_leases WHERE export = ? AND name = ?", (export_id, name)
            ).fetchone()
            if row is not None and Lease(*row).alive(self.lease_timeout):
                return None
            token = 1 if row is None else row["token"] + 1
            db.execute(
                "INSERT INTO export_leases (export, name, holder, token, heartbeat) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (export, name) DO UPDATE SET holder = excluded.holder, token = excluded.token, "
                "heartbeat = excluded.heartbeat",
                (export_id, name, holder, token, time.time()),
            )
            if resume:
                db.execute("UPDATE exports SET attempts = attempts + 1, updated = ? WHERE id = ?", (now(), export_id))
        return token

    def renew(self, export_id: str, name: str, token: int) -> bool:
        """Heartbeat of lease `name`; False once `token` is no longer current."""
        cursor = self._execute(
            "UPDATE export_leases SET heartbeat = ? WHERE export = ? AND name = ? AND token = ?",
            (time.time(), export_id, name, token),
        )
        return cursor.rowcount == 1

    def holds(self, export_id: str, name: str, token: int) -> bool:
        lease = self.lease(export_id, name)
        return lease is not None and lease.token == token

    # --- chunks ---

    def chunk_started(self, export_id: str, chunk: int, job: str | None) -> None:
        """Record a new attempt at `chunk` (it replaces any earlier one)."""
        self._execute(
            """INSERT INTO export_chunks (export, chunk, status, started, job) VALUES (?, ?, 'running', ?, ?)
               ON CONFLICT (export, chunk) DO UPDATE SET status = 'running', started = excluded.started,
                   finished = NULL, job = excluded.job, seconds = NULL, skipped = NULL""",
            (export_id, chunk, now(), job),
        )
        self.mark_running(export_id)

    def claim_chunk(self, export_id: str, total: int, job: str | None, token: int) -> int | None:
        """Atomically take the lowest chunk nobody has taken, while `token` is the current `run` lease
        (None when none is left or the lease was lost)."""
        with self._transaction() as db:
            row = db.execute(
                f"SELECT 1 FROM exports WHERE id = ? AND status IN ({_ACTIVE_SQL}) AND {_FENCE}",
                (export_id, export_id, RUN, token),
            ).fetchone()
            if row is None:
                return None
            taken = {c for (c,) in db.execute("SELECT chunk FROM export_chunks WHERE export = ? AND chunk >= 0", (export_id,))}
            free = next((i for i in range(total) if i not in taken), None)
            if free is not None:
                db.execute(
                    "INSERT INTO export_chunks (export, chunk, status, started, job) VALUES (?, ?, 'running', ?, ?)",
                    (export_id, free, now(), job),
                )
        if free is not None:
            self.mark_running(export_id)
        return free

    def chunk_finished(self, export_id: str, chunk: int, job: str | None, status: str, seconds: float | None = None,
                       skipped: dict[str, str] | None = None, fence: tuple[str, int] | None = None) -> bool:
        """Record the outcome of attempt `job` at `chunk`; False if a later attempt (or lease holder) replaced it."""
        sql = ("UPDATE export_chunks SET status = ?, finished = ?, seconds = ?, skipped = ? "
               "WHERE export = ? AND chunk = ? AND job IS ?")  # fmt: skip
        params: list[Any] = [status, now(), seconds, json.dumps(skipped) if skipped else None, export_id, chunk, job]
        if fence is not None:
            sql += f" AND {_FENCE}"
            params += [export_id, *fence]
        return self._execute(sql, params).rowcount == 1

    def chunks_done(self, export_id: str) -> int:
        row = self._execute(
            "SELECT count(*) FROM export_chunks WHERE export = ? AND chunk >= 0 AND status = 'done'", (export_id,)
        ).fetchone()
        return row[0]

    def chunk_states(self, export_id: str) -> dict[int, str]:
        rows = self._execute("SELECT chunk, status FROM export_chunks WHERE export = ? AND chunk >= 0", (export_id,))
        return {chunk: status for chunk, status in rows}

    def chunk_rows(self, export_id: str) -> list[dict[str, Any]]:
        rows = self._execute("SELECT * FROM export_chunks WHERE export = ? AND chunk >= 0 ORDER BY chunk", (export_id,))
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
    skipped: dict[str, str] = {}
    for chunk_skipped in json.loads(row["skipped"] or "[]"):
        for item, reason in json.loads(chunk_skipped).items():
            skipped.setdefault(item, reason)
    run = json.loads(row["run"]) if row["run"] else None
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
        error=row["error"],
        log_tail=row["log_tail"],
        result=row["result"],
        chunks_total=row["chunks_total"],
        chunks_done=row["chunks_done"],
        attempts=row["attempts"],
        run=None if run is None else Lease(*run),
        merges=row["merges"] or 0,
        skipped=dict(sorted(skipped.items())),
        retries=json.loads(row["retries"]),
        created_by=row["created_by"],
    )
