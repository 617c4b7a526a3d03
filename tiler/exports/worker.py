"""One export chunk: `mosaics.composite.composite` on the chunk's `Grid`, written as a tiled GeoTIFF.

Run as `jeo export-worker --export ID --chunk N` (a SLURM array task) or `--all --lease TOKEN` (a local
pool worker taking chunks). The chunk is written to a `.part` file of the process and renamed when
complete, and recorded in the store for the attempt that computed it (a later attempt or a new lease
holder replaces it). Unreadable scenes are skipped and recorded with the chunk (`on_error: skip`), or
fail the export (`fail`); a failure marks the export failed with the tail of the chunk's log.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rasterio
from rasterio.features import geometry_mask

from mosaics.catalog import Catalog
from mosaics.composite import composite
from mosaics.corrections import Corrector
from mosaics.errors import NotFound, SceneReadError
from tiler.exports.chunks import window_transform
from tiler.exports.leases import RUN, die_with_parent, token_pid
from tiler.exports.models import ACTIVE, ExportPlan, redact
from tiler.exports.store import ExportStore
from tiler.settings import get_settings

LOG_TAIL_LINES = 40


def chunks_dir(plan: ExportPlan) -> Path:
    return Path(plan.work_dir) / "chunks"


def chunk_path(plan: ExportPlan, chunk: int) -> Path:
    return chunks_dir(plan) / f"{chunk:05d}.tif"


def logs_dir(plan: ExportPlan) -> Path:
    return Path(plan.work_dir) / "logs"


def chunk_log(plan: ExportPlan, chunk: int) -> Path:
    return logs_dir(plan) / f"chunk-{chunk}.log"


def merge_log(plan: ExportPlan) -> Path:
    return logs_dir(plan) / "merge.log"


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str | None:
    """The last `lines` lines of a text file (None if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def terminate_as_exit():
    """SIGTERM (scancel, pool shutdown) raises SystemExit so that `finally` blocks clean up."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ChunkError(RuntimeError):
    """A chunk could not be computed as requested."""


def compute_chunk(plan: ExportPlan, chunk: int, catalog: Catalog, pool: ThreadPoolExecutor) -> tuple[np.ndarray, dict[str, str]]:
    """`float32[bands, h, w]` of chunk `chunk`, NaN where there is no usable observation, and the scenes that
    could not be read (item id → reason; with `on_error: fail` they fail the chunk instead)."""
    grid = plan.chunk_grid(chunk)
    nodata = np.full((plan.bands, grid.height, grid.width), np.nan, dtype=np.float32)
    try:
        result = composite(
            catalog, plan.collection, grid, plan.recipe_object(), plan.compositing_object(), plan.selection_object(),
            pool, dict(plan.read_options), Corrector(get_settings().home / "dark-values"),
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
        return nodata, {item: "unreadable (see the chunk's log)" for item in error.item_id.split(",")}
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
        window = plan.windows[chunk]
        outside = geometry_mask(
            [plan.geometry], out_shape=(grid.height, grid.width), transform=window_transform(plan.affine, window)
        )
        values[:, outside] = np.nan
    return values, skipped


def write_chunk(plan: ExportPlan, chunk: int, values: np.ndarray) -> Path:
    """Write a chunk as a tiled float32 GeoTIFF (atomically: a `.part` of this process, then rename)."""
    window = plan.windows[chunk]
    path = chunk_path(plan, chunk)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    profile = {
        "driver": "GTiff", "width": window.width, "height": window.height, "count": plan.bands, "dtype": "float32",
        "crs": plan.rasterio_crs, "transform": window_transform(plan.affine, window), "nodata": float("nan"),
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


@contextmanager
def output_to(path: Path):
    """Send this process's stdout and stderr (file descriptors 1 and 2) to `path` (appending)."""
    sys.stdout.flush()
    sys.stderr.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = os.dup(1), os.dup(2)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _job() -> str:
    if "SLURM_JOB_ID" in os.environ:
        return os.environ["SLURM_JOB_ID"]
    return f"pid:{os.getpid()}"


def _compute(store: ExportStore, catalog: Catalog, plan: ExportPlan, chunk: int, pool: ThreadPoolExecutor,
             job: str, fence: tuple[str, int] | None = None) -> int:
    """Compute and write a chunk already marked running by attempt `job`; 0, or 1 after failing the export.
    Nothing is recorded once the attempt was replaced (or, with `fence`, the lease lost)."""
    export_id = plan.id
    window = plan.windows[chunk]
    print(f"export {export_id} chunk {chunk}/{plan.chunks_total}: window {tuple(window)} on {os.uname().nodename} "
          f"({job})", flush=True)
    start = time.perf_counter()
    try:
        values, skipped = compute_chunk(plan, chunk, catalog, pool)
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
        log = tail(chunk_log(plan, chunk)) or traceback.format_exc()
        store.transition(export_id, "failed", fence=fence, error=redact(f"chunk {chunk} failed: {error}"), log_tail=log)
        return 1
    seconds = time.perf_counter() - start
    if not store.chunk_finished(export_id, chunk, job, "done", seconds, skipped, fence=fence):
        print(f"chunk {chunk} was taken over by another attempt: not recorded", flush=True)
        return 0
    print(f"chunk {chunk} written in {seconds:.2f} s", flush=True)
    return 0


def run_chunk(store: ExportStore, catalog: Catalog, export_id: str, chunk: int, read_threads: int = 8) -> int:
    """Compute one given chunk (a SLURM array task); the exit code (0 also when the export is no longer active).

    Output goes to the process's stdout/stderr (SLURM writes them to the chunk's log)."""
    record = store.require(export_id)
    plan = record.plan
    if not 0 <= chunk < plan.chunks_total:
        print(f"export {export_id} has chunks 0–{plan.chunks_total - 1}, not {chunk}", file=sys.stderr)
        return 2
    if not record.active:
        print(f"export {export_id} is {record.status}: chunk {chunk} not computed", flush=True)
        return 0
    job = _job()
    store.chunk_started(export_id, chunk, job)
    with terminate_as_exit(), ThreadPoolExecutor(read_threads, thread_name_prefix="jeo-export-read") as pool:
        return _compute(store, catalog, plan, chunk, pool, job)


def run_claiming(store: ExportStore, catalog: Catalog, export_id: str, token: int, read_threads: int = 8) -> int:
    """Take chunks until none is left (local pool worker, for the holder of `run` lease `token`), each logged to
    its own chunk log; the worker that sees every chunk done then merges. The exit code (0 also when the export
    is no longer active or the lease went to another process). The worker ends with the process that started it."""
    from tiler.exports.merge import run_merge

    plan = store.require(export_id).plan
    lease = store.lease(export_id, RUN)
    if lease is None or lease.token != token or not die_with_parent(token_pid(lease.holder or "") or -1):
        print(f"export {export_id}: run lease {token} is not held by this worker's parent", flush=True)
        return 0
    job, fence = _job(), (RUN, token)
    with terminate_as_exit(), ThreadPoolExecutor(read_threads, thread_name_prefix="jeo-export-read") as pool:
        while (chunk := store.claim_chunk(export_id, plan.chunks_total, job, token)) is not None:
            with output_to(chunk_log(plan, chunk)):
                code = _compute(store, catalog, plan, chunk, pool, job, fence)
            if code:
                return code
    if store.holds(export_id, RUN, token) and store.chunks_done(export_id) == plan.chunks_total:
        with output_to(merge_log(plan)):
            return run_merge(store, export_id, wait=False)
    return 0
