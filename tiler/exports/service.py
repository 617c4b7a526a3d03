"""ExportService: submit, list, watch and cancel exports; shared by the web API and `jeo export`.

The service validates a request into a plan (`request.prepare`, then the executor's availability),
stores the record (claiming its destination), hands it to an executor, and reconciles active exports
with their executor every `export_poll_interval` seconds: SLURM exports from squeue/sacct; local
exports whose `run` lease holder is gone (this host: the process ended; another host: no heartbeat
for `export_lease_timeout` seconds) are resumed (missing chunks only, once) or failed with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from mosaics.catalog import Catalog
from mosaics.errors import InvalidParameter
from tiler.exports.destinations import delivered_by
from tiler.exports.executors import LocalExecutor, SlurmError, SlurmExecutor
from tiler.exports.items import withdraw
from tiler.exports.jobs import open_store
from tiler.exports.leases import RUN
from tiler.exports.plan import STATUSES, DestinationConflict, ExportRecord, now, redact
from tiler.exports.request import ExportConfig, ExportRequest, prepare
from tiler.exports.store import EVERYONE
from tiler.exports.workdir import remove_partials
from tiler.presets import PresetRegistry

logger = logging.getLogger(__name__)
HANDOVER_SECONDS = 60  # a local export without a run lease this young is being handed to a `jeo export-run`


def worker_env(settings) -> dict[str, str]:
    """Environment that makes `jeo` worker processes use the same catalog and settings."""
    env = {"JEO_HOME": str(settings.home)}
    if settings.database:
        env["JEO_DATABASE"] = str(settings.database)
    if settings.catalog_url:
        env["JEO_CATALOG_URL"] = settings.catalog_url
    return env


class ExportService:
    """Exports of one catalog."""

    def __init__(self, settings, catalog: Catalog | None = None, presets: PresetRegistry | None = None,
                 *, adopt_orphans: bool = True):
        self.settings = settings
        self.catalog = catalog or Catalog(settings.catalog_location)
        self.presets = presets or PresetRegistry.from_files(settings.presets)
        self.config = ExportConfig.from_settings(settings)
        self.store = open_store(settings)
        self.env = worker_env(settings)
        heartbeat = max(0.5, min(settings.export_poll_interval, settings.export_lease_timeout / 4))
        self.local = LocalExecutor(self.store, self.env, settings.export_local_workers, heartbeat)
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
        """Validate a request into a plan, and check that its executor can take it (nothing is stored or submitted)."""
        if not isinstance(request, ExportRequest):
            request = ExportRequest.parse(request)
        try:
            plan = prepare(request, catalog=self.catalog, presets=self.presets, config=self.config)
        except InvalidParameter as error:  # e.g. PROJ's or GDAL's messages: no server paths in answers
            error.args = (redact(str(error)),)
            raise
        if plan.executor == "slurm":
            self.slurm.check()
        return request, plan

    def submit(
        self, request: ExportRequest | dict[str, Any], *, run_local: bool = True, created_by: str | None = None
    ) -> ExportRecord:
        """Validate, store and submit an export on behalf of `created_by` (a caller principal, None =
        anonymous). With run_local=False a local export is only stored (without a run lease) for a
        `jeo export-run` process to pick up."""
        request, plan = self.prepare(request)
        if plan.destination.get("overwrite"):
            self._check_replaceable(plan, created_by)
        record = ExportRecord(
            id=plan.id, status="queued", collection=plan.collection, executor=plan.executor,
            request=request.model_dump(exclude_none=True), plan=plan, created=now(), chunks_total=plan.chunks_total,
            created_by=created_by,
        )  # fmt: skip
        self.store.insert(record)
        try:
            if plan.executor == "slurm":
                self.slurm.submit(record)
            elif run_local:
                self.local.submit(record, self.store.acquire(record.id, RUN, self.local.holder))
        except SlurmError as error:
            self.store.delete(record.id)
            remove_partials(plan, keep_logs=False)
            raise InvalidParameter("executor", redact(f"slurm: SLURM did not accept the export: {error}")) from None
        except BaseException:
            self.store.delete(record.id)
            remove_partials(plan, keep_logs=False)
            raise
        return self.store.require(record.id)

    def _check_replaceable(self, plan, created_by: str | None) -> None:
        """DestinationConflict when `overwrite` would replace the result of another caller's export."""
        previous = delivered_by(plan.destination)
        owner = self.store.get(previous) if previous else None
        if owner is not None and owner.created_by != created_by:
            shown = plan.destination.get("name") or plan.result_href
            raise DestinationConflict("destination", f"'{shown}' is the result of another caller's export: not replaced")

    def run_owned(self, export_id: str) -> bool:
        """Take over a stored local export without a run lease (`jeo export-run`) and run it here."""
        record = self.store.require(export_id)
        if record.executor != "local" or record.run is not None:
            return False
        token = self.store.acquire(export_id, RUN, self.local.holder)
        if token is None:
            return False
        self.local.submit(self.store.require(export_id), token)
        return True

    def get(self, export_id: str, refresh: bool = True) -> ExportRecord:
        record = self.store.require(export_id)
        if refresh and record.active and record.executor == "slurm":
            with self._lock:
                due = time.monotonic() - self._refreshed.get(export_id, 0) > 1.0
                if due:
                    self._refreshed[export_id] = time.monotonic()
            if due:
                try:
                    self.slurm.refresh(record)
                except SlurmError as error:
                    logger.warning("export %s: %s", export_id, error)
                record = self.store.require(export_id)
        return record

    def list(self, status: str | None = None, limit: int | None = None, created_by: str | None = EVERYONE) -> list[ExportRecord]:
        """Newest first; those of `created_by` only (None = anonymous callers) unless EVERYONE."""
        if status is not None and status not in STATUSES:
            raise InvalidParameter("status", f"'{status}' is not one of {', '.join(STATUSES)}")
        return self.store.list(status, limit, created_by)

    def cancel(self, export_id: str) -> ExportRecord:
        """Cancel (idempotent): stop its jobs, remove partial files. A finished export leaves the collection `exports`
        (its record and result stay); failed ones stay as they are."""
        record = self.store.require(export_id)
        if record.status == "canceled":
            self._cleanup_canceled(record)
            return record
        if not self.store.transition(export_id, "canceled", error="canceled by request"):
            record = self.store.require(export_id)
            if record.status == "finished":
                withdraw(self.catalog, export_id)
            return record
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
        run = record.run
        if self.local.owns(record.id) or (run is not None and run.holder == self.local.holder):
            self.local.cancel(record.id)
            remove_partials(record.plan, keep_logs=False)
        elif run is None or not run.alive(self.settings.export_lease_timeout):
            remove_partials(record.plan, keep_logs=False)
        # else: the holder sees the status within a second and cleans up

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
        run = record.run
        if run is not None and (run.holder == self.local.holder or run.alive(self.settings.export_lease_timeout)):
            return
        if run is None:
            created = datetime.fromisoformat(record.created.replace("Z", "+00:00"))
            if datetime.now(timezone.utc) - created < timedelta(seconds=HANDOVER_SECONDS):
                return
        if not self.adopt_orphans:
            return
        holder = run.holder if run else "none"
        if self.settings.export_resume_local and record.attempts < 1:
            token = self.store.acquire(record.id, RUN, self.local.holder, resume=True)
            if token is not None:
                logger.info("resuming local export %s (its process %s stopped)", record.id, holder)
                self.store.reset_unfinished_chunks(record.id)
                self.local.submit(self.store.require(record.id), token)
            return
        if self.store.transition(
            record.id, "failed", fence=(RUN, run.token) if run else None,
            error=f"interrupted: the process running it ({holder}) stopped"
            + (" and it was already resumed once" if record.attempts else ""),
        ):  # fmt: skip
            remove_partials(record.plan)
