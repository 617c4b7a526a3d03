"""One export chunk: `mosaics.composite.composite` on the chunk's `Grid`, written as a tiled GeoTIFF.

Run by a SLURM array task (`run_chunk`: one given chunk) or a local pool worker (`run_claiming`: chunks
taken from the store until none is left); `jobs` starts both. The chunk is written to a `.part` file of the process and renamed when
complete, and recorded in the store for the attempt that computed it (a later attempt or a new lease
holder replaces it). Unreadable scenes are skipped and recorded with the chunk (`on_error: skip`), or
fail the export (`fail`); a failure marks the export failed with the tail of the chunk's log.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely.geometry

from mosaics.area import Area
from mosaics.catalog import Catalog
from mosaics.composite import composite
from mosaics.corrections import Corrector
from mosaics.errors import NotFound, SceneReadError
from tiler.exports.leases import RUN, die_with_parent, terminate_as_exit, token_pid
from tiler.exports.plan import ACTIVE, ExportPlan, redact
from tiler.exports.store import ExportStore
from tiler.exports.workdir import chunk_log, chunk_path, output_to, tail


@dataclass(frozen=True)
class Worker:
    """What a worker process computes chunks with."""

    store: ExportStore
    catalog: Catalog
    corrector: Corrector  # dark values of the `dos` correction
    job: str  # the process's attempt id: SLURM job id, or pid:<pid>
    read_threads: int = 8

    def pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.read_threads, thread_name_prefix="jeo-export-read")


class ChunkError(RuntimeError):
    """A chunk could not be computed as requested."""


def compute_chunk(
    plan: ExportPlan, chunk: int, catalog: Catalog, pool: ThreadPoolExecutor, corrector: Corrector
) -> tuple[np.ndarray, dict[str, str]]:
    """`float32[bands, h, w]` of chunk `chunk`, NaN where there is no usable observation, and the scenes that
    could not be read (item id → reason naming the asset; with `on_error: fail` they fail the chunk instead)."""
    grid = plan.chunk_grid(chunk)
    nodata = np.full((plan.bands, grid.height, grid.width), np.nan, dtype=np.float32)
    try:
        result = composite(
            catalog, plan.collection, grid, plan.recipe_object(), plan.compositing_object(), plan.selection_object(),
            pool, dict(plan.read_options), corrector,
        )  # fmt: skip
    except NotFound as error:
        if error.kind != "items":
            raise
        print(f"chunk {chunk}: no scene touches it: all nodata", flush=True)
        return nodata, {}
    except SceneReadError as error:
        if plan.on_error == "fail" or error.asset != "*":
            raise
        print(f"chunk {chunk}: every scene failed to read ({error.item_id}): all nodata", flush=True)
        return nodata, {item: redact(reason) for item, reason in error.skipped.items()}
    skipped = {item: redact(reason) for item, reason in result.skipped.items()}
    print(
        f"chunk {chunk}: {len(result.items)} candidate items, {len(result.read)} read, skipped {skipped or 'none'}; "
        + ", ".join(f"{k} {v:.0f} ms" for k, v in result.timings.spent.items()),
        flush=True,
    )
    if skipped and plan.on_error == "fail":
        reasons = "; ".join(f"{item}: {why}" for item, why in result.skipped.items())
        raise SceneReadError(",".join(skipped), "*", f"unreadable scene(s) in chunk {chunk}: {reasons}")
    values = np.asarray(result.values, dtype=np.float32)
    if values.shape != (plan.bands, grid.height, grid.width):
        raise ChunkError(f"chunk {chunk}: composite shape {values.shape} != {(plan.bands, grid.height, grid.width)}")
    if plan.geometry is not None:
        values[:, ~Area(shapely.geometry.shape(plan.geometry), plan.rasterio_crs, "geometry").inside(grid)] = np.nan
    return values, skipped


def write_chunk(plan: ExportPlan, chunk: int, values: np.ndarray) -> Path:
    """Write a chunk as a tiled float32 GeoTIFF (atomically: a `.part` of this process, then rename)."""
    window = plan.windows[chunk]
    path = chunk_path(plan, chunk)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    profile = {
        "driver": "GTiff", "width": window.width, "height": window.height, "count": plan.bands, "dtype": "float32",
        "crs": plan.rasterio_crs, "transform": plan.chunk_transform(chunk), "nodata": float("nan"),
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate", "predictor": 3,
        "bigtiff": "if_safer",
    }  # fmt: skip
    try:
        with rasterio.open(part, "w", **profile) as dst:
            dst.write(values)
            for band, description in enumerate(plan.descriptions, 1):
                dst.set_band_description(band, description)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return path


def _compute(worker: Worker, plan: ExportPlan, chunk: int, pool: ThreadPoolExecutor,
             fence: tuple[str, int] | None = None) -> int:
    """Compute and write a chunk already marked running by this worker's attempt; 0, or 1 after failing the export.
    Nothing is recorded once the attempt was replaced (or, with `fence`, the lease lost)."""
    store, job, export_id = worker.store, worker.job, plan.id
    window = plan.windows[chunk]
    print(f"export {export_id} chunk {chunk}/{plan.chunks_total}: window {tuple(window)} on {os.uname().nodename} "
          f"({job}, read threads: {worker.read_threads})", flush=True)
    start = time.perf_counter()
    try:
        values, skipped = compute_chunk(plan, chunk, worker.catalog, pool, worker.corrector)
        if store.status(export_id) not in ACTIVE:
            print(f"export {export_id} is no longer active: chunk {chunk} discarded", flush=True)
            return 0
        write_chunk(plan, chunk, values)
    except Exception as error:  # noqa: BLE001 - any failure fails the chunk, with its log
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        if not store.chunk_finished(export_id, chunk, job, "failed", time.perf_counter() - start, fence=fence):
            return 0  # replaced by another attempt
        log = tail(chunk_log(plan, chunk)) or redact(traceback.format_exc())
        store.transition(export_id, "failed", fence=fence, error=redact(f"chunk {chunk} failed: {error}"), log_tail=log)
        return 1
    seconds = time.perf_counter() - start
    if not store.chunk_finished(export_id, chunk, job, "done", seconds, skipped, fence=fence):
        print(f"chunk {chunk} was taken over by another attempt: not recorded", flush=True)
        return 0
    print(f"chunk {chunk} written in {seconds:.2f} s", flush=True)
    return 0


def run_chunk(worker: Worker, export_id: str, chunk: int) -> int:
    """Compute one given chunk (a SLURM array task); the exit code (0 also when the export is no longer active).

    Output goes to the process's stdout/stderr (SLURM writes them to the chunk's log)."""
    record = worker.store.require(export_id)
    plan = record.plan
    if not 0 <= chunk < plan.chunks_total:
        print(f"export {export_id} has chunks 0–{plan.chunks_total - 1}, not {chunk}", file=sys.stderr)
        return 2
    if not record.active:
        print(f"export {export_id} is {record.status}: chunk {chunk} not computed", flush=True)
        return 0
    worker.store.chunk_started(export_id, chunk, worker.job)
    with terminate_as_exit(), worker.pool() as pool:
        return _compute(worker, plan, chunk, pool)


def run_claiming(worker: Worker, export_id: str, token: int) -> int:
    """Take chunks until none is left (local pool worker, for the holder of `run` lease `token`), each logged to
    its own chunk log. The exit code (0 also when the export is no longer active or the lease went to another
    process). The worker ends with the process that started it."""
    store = worker.store
    plan = store.require(export_id).plan
    lease = store.lease(export_id, RUN)
    if lease is None or lease.token != token or not die_with_parent(token_pid(lease.holder or "") or -1):
        print(f"export {export_id}: run lease {token} is not held by this worker's parent", flush=True)
        return 0
    with terminate_as_exit(), worker.pool() as pool:
        while (chunk := store.claim_chunk(export_id, plan.chunks_total, worker.job, token)) is not None:
            with output_to(chunk_log(plan, chunk)):
                code = _compute(worker, plan, chunk, pool, (RUN, token))
            if code:
                return code
    return 0
