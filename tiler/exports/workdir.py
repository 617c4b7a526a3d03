"""An export's files: its working directory (chunk files, logs, merge intermediates), the result staged next to a
local destination, and the tail of a log as records show it.

    <work_dir>/chunks/00000.tif      chunk 0 (float32, tiled)
    <work_dir>/logs/chunk-0.log      its output; also worker-<slot>.log, merge.log, runner.log
    <work_dir>/merge/                the merge's VRT and result before delivery
    <root>/.<name>.<id>.part         the result being moved into the export root
"""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from tiler.exports.plan import ExportPlan, redact

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


def worker_log(plan: ExportPlan, slot: int) -> Path:
    """Output of local worker process `slot` outside its chunks (start-up errors)."""
    return logs_dir(plan) / f"worker-{slot}.log"


def merge_dir(plan: ExportPlan) -> Path:
    return Path(plan.work_dir) / "merge"


def staged_result(plan: ExportPlan) -> Path | None:
    """The result being moved into place beside a local destination (None for S3)."""
    if plan.destination["kind"] != "local":
        return None
    target = Path(plan.destination["path"])
    return target.with_name(f".{target.name}.{plan.id}.part")


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str | None:
    """The last `lines` lines of a log, without server paths (None if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    return redact("\n".join(text.splitlines()[-lines:]))


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


def remove_partials(plan: ExportPlan, keep_logs: bool = True) -> None:
    """Remove chunks and merge intermediates (and everything else with keep_logs=False)."""
    if not keep_logs:
        shutil.rmtree(plan.work_dir, ignore_errors=True)
        return
    shutil.rmtree(chunks_dir(plan), ignore_errors=True)
    shutil.rmtree(merge_dir(plan), ignore_errors=True)
    staged = staged_result(plan)
    if staged is not None:
        staged.unlink(missing_ok=True)
