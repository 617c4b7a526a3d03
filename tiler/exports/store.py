"""Export records, chunk claims and leases in the records database (`tiler.db`): the catalog's SQLite file, or the
PostgreSQL database of a `postgresql://` catalog, so that every server sharing the catalog sees, cancels and
serves the same exports. One store, one set of SQL statements, two backends.

Servers, `jeo export` processes, local workers and SLURM jobs all update the same records; every
status change is one conditional UPDATE (`... WHERE status IN ('queued', 'running')`), so terminal
states (finished, failed, canceled) are final and concurrent writers cannot resurrect an export.

- An active export claims its destination: a unique index over the destinations of active exports
  makes a second export to the same file or S3 key fail at INSERT; ending the export releases it.
- Chunk claims and lease acquisitions are transactions that first lock the export's row (PostgreSQL:
  `SELECT … FOR UPDATE`; SQLite: the transaction locks the database), so two workers never take one chunk.
- Leases (`leases.py`) say which process hosts a local export's workers (`run`) and which one merges
  (`merge`); writes by those processes are fenced with the lease's token.
- Schema changes are additive: `ADDED_COLUMNS` are added to databases that lack them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mosaics.catalog import EVERYONE
from mosaics.errors import NotFound
from tiler.db import open_database, unique_violation
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
    seconds  DOUBLE PRECISION,
    PRIMARY KEY (export, chunk)
);

CREATE TABLE IF NOT EXISTS export_leases (
    export    TEXT NOT NULL,
    name      TEXT NOT NULL,                 -- run, merge
    holder    TEXT,                          -- host:pid:start time of the holding process
    token     INTEGER NOT NULL,              -- fencing token: +1 on every acquisition
    heartbeat DOUBLE PRECISION NOT NULL,     -- unix time of the holder's last renewal
    PRIMARY KEY (export, name)
);
"""

ADDED_COLUMNS = {  # added where missing (databases of older versions; the last three also new ones)
    ("exports", "created_by"): "TEXT",
    ("exports", "destination"): "TEXT",  # result href while the export is active (unique among active exports)
    ("exports", "retries"): "TEXT NOT NULL DEFAULT '[]'",  # JSON list of SLURM resubmissions
    ("export_chunks", "skipped"): "TEXT",  # JSON {item id: reason} of scenes that could not be read
}

INDEXES = f"""
CREATE UNIQUE INDEX IF NOT EXISTS exports_destination ON exports (destination) WHERE status IN ({_ACTIVE_SQL});
"""

_SELECT = (
    "SELECT e.id, e.status, e.collection, e.executor, e.request, e.plan, e.created, e.started, e.finished, e.jobs, "
    "e.error, e.log_tail, e.result, e.chunks_total, e.attempts, e.retries, e.created_by, "
    "(SELECT count(*) FROM export_chunks c WHERE c.export = e.id AND c.chunk >= 0 AND c.status = 'done') "
    "AS chunks_done, r.holder AS run_holder, r.token AS run_token, r.heartbeat AS run_heartbeat, m.token AS merges "
    f"FROM exports e LEFT JOIN export_leases r ON r.export = e.id AND r.name = '{RUN}' "
    f"LEFT JOIN export_leases m ON m.export = e.id AND m.name = '{MERGE}'"
)
_FENCE = "(SELECT token FROM export_leases WHERE export = ? AND name = ?) = ?"


class ExportStore:
    """Export records in the records database at `location` (a SQLite file or a `postgresql://` URL); safe to
    share between threads."""

    def __init__(self, location: str | Path, lease_timeout: float = 60.0):
        self.lease_timeout = lease_timeout
        self._db = open_database(location, SCHEMA, ADDED_COLUMNS, INDEXES)
        self._migrate()

    def _migrate(self) -> None:
        """Carry state of older schemas over: destinations of active exports stored before claims existed are
        claimed; the local executor's process (`owner`, before leases) becomes the `run` lease."""
        unclaimed = f"SELECT id, plan FROM exports WHERE destination IS NULL AND status IN ({_ACTIVE_SQL})"
        for row in self._db.execute(unclaimed).fetchall():
            try:
                self._db.execute("UPDATE exports SET destination = ? WHERE id = ?",
                                 (ExportPlan.from_dict(json.loads(row["plan"])).result_href, row["id"]))
            except Exception as error:
                if not unique_violation(error):
                    raise  # else: two old exports to one destination: the first keeps the claim
        if "owner" in self._db.columns("exports"):
            with self._db.transaction() as db:
                db.execute(
                    "INSERT INTO export_leases (export, name, holder, token, heartbeat) "
                    f"SELECT id, '{RUN}', owner, 1, ? FROM exports WHERE owner IS NOT NULL AND status IN ({_ACTIVE_SQL}) "
                    "ON CONFLICT (export, name) DO NOTHING",
                    (time.time(),),
                )
                db.execute("UPDATE exports SET owner = NULL WHERE owner IS NOT NULL")

    def close(self) -> None:
        self._db.close()

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> Any:
        return self._db.execute(sql, tuple(params))

    def _records(self, where: str = "", params: Iterable[Any] = (), tail: str = "") -> list[ExportRecord]:
        rows = self._execute(f"{_SELECT} {where} {tail}", params).fetchall()
        skipped: dict[str, dict[str, str]] = {row["id"]: {} for row in rows}
        if rows:
            found = self._execute(
                f"SELECT export, skipped FROM export_chunks WHERE export IN ({', '.join('?' * len(rows))}) "
                "AND skipped IS NOT NULL ORDER BY export, chunk",
                [row["id"] for row in rows],
            )
            for export_id, chunk_skipped in found:
                for item, reason in json.loads(chunk_skipped).items():
                    skipped[export_id].setdefault(item, reason)
        return [_record(row, skipped[row["id"]]) for row in rows]

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
        except Exception as error:
            if not unique_violation(error):
                raise
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
        records = self._records("WHERE e.id = ?", (export_id,))
        return records[0] if records else None

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
            where.append("e.status = ?")
            params.append(status)
        if created_by != EVERYONE:
            where.append("e.created_by IS NOT DISTINCT FROM ?")
            params.append(created_by)
        tail = "ORDER BY e.created DESC, e.id DESC" + (f" LIMIT {int(limit)}" if limit is not None else "")
        return self._records(f"WHERE {' AND '.join(where)}" if where else "", params, tail)

    def active(self) -> list[ExportRecord]:
        return self._records(f"WHERE e.status IN ({_ACTIVE_SQL})")

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
        with self._db.transaction() as db:
            active = f"SELECT 1 FROM exports WHERE id = ? AND status IN ({_ACTIVE_SQL}){self._db.for_update}"
            if db.execute(active, (export_id,)).fetchone() is None:
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
        with self._db.transaction() as db:
            row = db.execute(
                f"SELECT 1 FROM exports WHERE id = ? AND status IN ({_ACTIVE_SQL}) AND {_FENCE}{self._db.for_update}",
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
               "WHERE export = ? AND chunk = ? AND job IS NOT DISTINCT FROM ?")  # fmt: skip
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


def _record(row: Any, skipped: dict[str, str]) -> ExportRecord:
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
        run=None if row["run_token"] is None else Lease(row["run_holder"], row["run_token"], row["run_heartbeat"]),
        merges=row["merges"] or 0,
        skipped=dict(sorted(skipped.items())),
        retries=json.loads(row["retries"]),
        created_by=row["created_by"],
    )
