"""The processes the executors start: their command lines, and the entry points those commands run.

- `jeo export-worker --export ID --chunk N` (a SLURM array task; N defaults to `$SLURM_ARRAY_TASK_ID`):
  `worker.run_chunk`.
- `jeo export-worker --export ID --all --lease TOKEN` (a local pool worker): `worker.run_claiming`, then, in the
  worker that finds every chunk done, `merge.run_merge`.
- `jeo export-merge --export ID` (a SLURM job after the array): `merge.run_merge`.

A merge that finishes its export publishes it as an item of the collection `exports` (`items.publish`).

Each entry point reads the settings (and the SLURM environment) once, here, and passes them on.
"""

from __future__ import annotations

import os
import sys

from mosaics.catalog import Catalog
from mosaics.corrections import Corrector
from tiler.exports.items import publisher
from tiler.exports.leases import RUN
from tiler.exports.merge import run_merge
from tiler.exports.store import ExportStore
from tiler.exports.workdir import merge_log, output_to
from tiler.exports.worker import Worker, run_chunk, run_claiming


def worker_command(export_id: str, chunk: int | str | None = None, lease: int | None = None) -> list[str]:
    """The command computing chunk `chunk` (None: taking chunks for the holder of `run` lease `lease` until none
    is left, then merging)."""
    base = [sys.executable, "-m", "tiler.cli", "export-worker", "--export", export_id]
    return base + (["--all", "--lease", str(lease)] if chunk is None else ["--chunk", str(chunk)])


def merge_command(export_id: str) -> list[str]:
    """The command merging an export's chunks."""
    return [sys.executable, "-m", "tiler.cli", "export-merge", "--export", export_id]


def open_store(settings) -> ExportStore:
    """The export store of the settings' catalog."""
    return ExportStore(settings.catalog_location, settings.export_lease_timeout)


def _worker(settings) -> Worker:
    job = os.environ.get("SLURM_JOB_ID") or f"pid:{os.getpid()}"
    return Worker(
        open_store(settings), Catalog(settings.catalog_location), Corrector(settings.home / "dark-values"), job,
        settings.read_threads,
    )  # fmt: skip


def _merge_threads() -> str:
    return os.environ.get("SLURM_CPUS_PER_TASK") or "ALL_CPUS"


def chunk_job(settings, export_id: str, chunk: int) -> int:
    """One chunk (a SLURM array task); the exit code."""
    return run_chunk(_worker(settings), export_id, chunk)


def pool_worker(settings, export_id: str, token: int) -> int:
    """Chunks until none is left, for the holder of `run` lease `token`; the worker that sees every chunk done
    merges. The exit code."""
    worker = _worker(settings)
    code = run_claiming(worker, export_id, token)
    store = worker.store
    plan = store.require(export_id).plan
    if code or not store.holds(export_id, RUN, token) or store.chunks_done(export_id) != plan.chunks_total:
        return code
    with output_to(merge_log(plan)):
        return run_merge(store, export_id, wait=False, threads=_merge_threads(), publish=publisher(settings, worker.catalog))


def merge_job(settings, export_id: str) -> int:
    """The merge (a SLURM job, waiting for a merge in progress elsewhere); the exit code."""
    publish = publisher(settings, Catalog(settings.catalog_location))
    return run_merge(open_store(settings), export_id, threads=_merge_threads(), publish=publish)
