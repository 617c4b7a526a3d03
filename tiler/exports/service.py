"""ExportService: submit, list, watch and cancel exports; shared by the web API and `jeo export`.

The service validates a request into a plan (`models.prepare`), stores the record, hands it to an
executor, and reconciles active exports with their executor every `export_poll_interval` seconds:
SLURM exports from squeue/sacct; local exports whose owning process is gone are resumed (missing
chunks only, once) or failed with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from mosaics.catalog import Catalog
from mosaics.errors import InvalidParameter, JeoError
from tiler.exports.executors import LocalExecutor, SlurmError, SlurmExecutor, owner_alive
from tiler.exports.merge import remove_partials
from tiler.exports.models import ExportRecord, ExportRequest, now, prepare
from tiler.exports.store import EVERYONE, ExportStore
from tiler.presets import PresetRegistry

logger = logging.getLogger(__name__)
HANDOVER_SECONDS = 60  # a local export without owner this young is being handed to a `jeo export-run`


class ExecutorUnavailable(JeoError):
    """The executor could not take the export (e.g. SLURM unreachable). HTTP 503."""


def worker_env(settings) -> dict[str, str]:
    """Environment that makes `jeo` worker processes use the same catalog and settings."""
    env = {"JEO_HOME": str(settings.home)}
    if settings.database:
        env["JEO_DATABASE"] = str(settings.database)
    return env


class ExportService:
    """Exports of one catalog."""

    def __init__(self, settings, catalog: Catalog | None = None, presets: PresetRegistry | None = None,
                 *, adopt_orphans: bool = True):
        self.settings = settings
        self.catalog = catalog or Catalog(settings.database_path)
        self.presets = presets or PresetRegistry.from_files(settings.presets)
        self.store = ExportStore(settings.database_path)
        self.env = worker_env(settings)
        self.local = LocalExecutor(self.store, self.env, settings.export_local_workers)
        self.slurm = SlurmExecutor(self.store, settings, self.env)
        self.adopt_orphans = adopt_orphans
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refreshed: dict[str, float] = {}
        self._lock = threading.Lock()

    # --- lifecycle ---

    def start(self) -> None:
        """Start reconciling (in a thread), adopting or failing orphaned exports first."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="jeo-export-reconcile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop reconciling and the local workers (their exports are resumed by the next start)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.local.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - keep reconciling; the error is logged
                logger.exception("export reconciliation")
            self._stop.wait(self.settings.export_poll_interval)

    # --- requests ---

    def prepare(self, request: ExportRequest | dict[str, Any]):
        """Validate a request into a plan (nothing is stored or submitted)."""
        if not isinstance(request, ExportRequest):
            request = ExportRequest.parse(request)
        return request, prepare(
            request, catalog=self.catalog, presets=self.presets, settings=self.settings,
            active_paths=self.store.active_destinations(),
        )  # fmt: skip

    def submit(
        self, request: ExportRequest | dict[str, Any], *, run_local: bool = True, created_by: str | None = None
    ) -> ExportRecord:
        """Validate, store and submit an export on behalf of `created_by` (a caller principal, None =
        anonymous). With run_local=False a local export is only stored (owner None) for a `jeo export-run`
        process to pick up."""
        request, plan = self.prepare(request)
        local = plan.executor == "local"
        record = ExportRecord(
            id=plan.id, status="queued", collection=plan.collection, executor=plan.executor,
            request=request.model_dump(exclude_none=True), plan=plan, created=now(),
            owner=self.local.owner if local and run_local else None, chunks_total=plan.chunks_total,
            created_by=created_by,
        )  # fmt: skip
        self.store.insert(record)
        try:
            if local:
                if run_local:
                    self.local.submit(record)
            else:
                self.slurm.submit(record)
        except SlurmError as error:
            self.store.delete(record.id)
            remove_partials(plan, keep_logs=False)
            raise ExecutorUnavailable(f"executor: SLURM did not accept the export: {error}") from None
        except BaseException:
            self.store.delete(record.id)
            remove_partials(plan, keep_logs=False)
            raise
        return self.store.require(record.id)

    def run_owned(self, export_id: str) -> bool:
        """Take over a stored local export without owner (`jeo export-run`) and run it here."""
        record = self.store.require(export_id)
        if record.executor != "local" or not self.store.claim(export_id, self.local.owner, None):
            return False
        self.local.submit(self.store.require(export_id))
        return True

    def get(self, export_id: str, refresh: bool = True) -> ExportRecord:
        record = self.store.require(export_id)
        if refresh and record.active and record.executor == "slurm":
            with self._lock:
                due = time.monotonic() - self._refreshed.get(export_id, 0) > 1.0
                if due:
                    self._refreshed[export_id] = time.monotonic()
            if due:
                self.slurm.refresh(record)
                record = self.store.require(export_id)
        return record

    def list(self, status: str | None = None, limit: int | None = None, created_by: str | None = EVERYONE) -> list[ExportRecord]:
        """Newest first; those of `created_by` only (None = anonymous callers) unless EVERYONE."""
        if status is not None and status not in ("queued", "running", "finished", "failed", "canceled"):
            raise InvalidParameter("status", f"'{status}' is not one of queued, running, finished, failed, canceled")
        return self.store.list(status, limit, created_by)

    def cancel(self, export_id: str) -> ExportRecord:
        """Cancel (idempotent): stop its jobs, remove partial files. Finished/failed exports stay as they are."""
        record = self.store.require(export_id)
        if record.status == "canceled":
            self._cleanup_canceled(record)
            return record
        if not self.store.transition(export_id, "canceled", error="canceled by request"):
            return self.store.require(export_id)
        record = self.store.require(export_id)
        self._cleanup_canceled(record)
        return self.store.require(export_id)

    def _cleanup_canceled(self, record: ExportRecord) -> None:
        if record.executor == "slurm":
            try:
                gone = self.slurm.cancel_jobs(record, wait=True)
            except SlurmError as error:
                logger.warning("scancel of export %s failed: %s", record.id, error)
                gone = False
            if gone:
                remove_partials(record.plan, keep_logs=False)
            return
        if self.local.owns(record.id) or record.owner == self.local.owner:
            self.local.cancel(record.id)
            remove_partials(record.plan, keep_logs=False)
        elif not owner_alive(record.owner):
            remove_partials(record.plan, keep_logs=False)
        # else: the owning process sees the status within a second and cleans up

    # --- reconciliation ---

    def reconcile(self) -> None:
        """One pass over active exports (and recently ended SLURM ones that may have jobs left)."""
        for record in self.store.active():
            try:
                if record.executor == "slurm":
                    self.slurm.refresh(record)
                else:
                    self._reconcile_local(record)
            except SlurmError as error:
                logger.warning("export %s: %s", record.id, error)
        recent = (datetime.now(timezone.utc) - timedelta(minutes=10)).isoformat()
        for record in self.store.list("failed", limit=20) + self.store.list("canceled", limit=20):
            if record.executor == "slurm" and record.jobs and (record.finished or "") > recent[:23]:
                # e.g. a chunk job failed the export itself: stop the others, then remove partial files
                try:
                    if self.slurm.live_jobs(record):
                        self.slurm.cancel_jobs(record, wait=False)
                    else:
                        remove_partials(record.plan, keep_logs=record.status != "canceled")
                except SlurmError:
                    pass

    def _reconcile_local(self, record: ExportRecord) -> None:
        if record.owner == self.local.owner or owner_alive(record.owner):
            return
        if record.owner is None:
            created = datetime.fromisoformat(record.created.replace("Z", "+00:00"))
            if datetime.now(timezone.utc) - created < timedelta(seconds=HANDOVER_SECONDS):
                return
        if not self.adopt_orphans:
            return
        if self.settings.export_resume_local and record.attempts < 1:
            if self.store.claim(record.id, self.local.owner, record.owner, resume=True):
                logger.info("resuming local export %s (its process %s stopped)", record.id, record.owner)
                self.store.reset_unfinished_chunks(record.id)
                self.local.submit(self.store.require(record.id))
            return
        if self.store.transition(
            record.id, "failed",
            error=f"interrupted: the process running it ({record.owner or 'none'}) stopped"
            + (" and it was already resumed once" if record.attempts else ""),
        ):  # fmt: skip
            remove_partials(record.plan)
