"""Where export chunks run: a local pool of `jeo export-worker` processes, or SLURM job arrays.

Both run the same commands (`python -m tiler.cli export-worker --export ID --chunk N`, then
`export-merge --export ID`) with `JEO_HOME` pointing at the same catalog; workers record their own
progress and failures in the store, and the executors only start, watch and stop them.

- `LocalExecutor`: N worker processes on this host shared by all exports (first in, first out).
  The process hosting it owns its exports (`owner` = host:pid:start time). A stopped owner leaves
  its exports active; `ExportService.reconcile` then resumes them (missing chunks only) or fails them.
- `SlurmExecutor`: one `sbatch --array=0-{n-1}%{max_parallel}` for the chunks and one merge job
  `--dependency=afterok:{array}`; status from `squeue -t all` (then `sacct`, then the jobcomp file
  through `sacct -c`), cancel with `scancel`.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tiler.exports.merge import remove_partials
from tiler.exports.models import ACTIVE, ExportRecord
from tiler.exports.store import ExportStore
from tiler.exports.worker import chunk_log, chunk_path, logs_dir, merge_log, tail


def worker_log(plan, slot: int) -> Path:
    """Output of local worker process `slot` outside its chunks (start-up errors)."""
    return logs_dir(plan) / f"worker-{slot}.log"

logger = logging.getLogger(__name__)


# --- process identity -----------------------------------------------------------------------------


def process_token(pid: int | None = None) -> str | None:
    """`host:pid:start time` of a live process (None if it does not exist): unique across pid reuse."""
    pid = pid or os.getpid()
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return f"{socket.gethostname()}:{pid}:{fields[19]}"


def owner_alive(token: str | None) -> bool:
    """True while the process named by `token` runs (assumed true for other hosts)."""
    if not token:
        return False
    host, _, rest = token.partition(":")
    if host != socket.gethostname():
        return True
    pid = rest.partition(":")[0]
    return pid.isdigit() and process_token(int(pid)) == token


def worker_command(export_id: str, chunk: int | str | None = None) -> list[str]:
    """The command computing chunk `chunk` (None: taking chunks until none is left, then merging)."""
    base = [sys.executable, "-m", "tiler.cli", "export-worker", "--export", export_id]
    return base + (["--all"] if chunk is None else ["--chunk", str(chunk)])


def merge_command(export_id: str) -> list[str]:
    """The command merging an export's chunks."""
    return [sys.executable, "-m", "tiler.cli", "export-merge", "--export", export_id]


# --- local ------------------------------------------------------------------------------------------


@dataclass
class _Task:
    export_id: str
    slot: int  # worker number within the export (its log is logs/worker-<slot>.log)
    proc: subprocess.Popen | None = None
    log: IO[bytes] | None = None
    started: float = field(default_factory=time.monotonic)


class LocalExecutor:
    """A pool of `workers` worker processes on this host.

    An export gets up to `workers` processes (`jeo export-worker --all`), each taking chunks from the
    store until none is left; the one that completes the last chunk merges. Exports queue first in,
    first out, so the pool never runs more than `workers` processes."""

    def __init__(self, store: ExportStore, env: dict[str, str], workers: int):
        self.store = store
        self.env = env
        self.workers = max(1, workers)
        self.owner = process_token()
        self._queue: deque[_Task] = deque()
        self._running: list[_Task] = []
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_check = 0.0

    # --- lifecycle ---

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                self._thread = threading.Thread(target=self._loop, name="jeo-export-local", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Stop every worker process; their exports stay active for a later resume."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            tasks, self._running = self._running, []
            self._queue.clear()
        self._kill(tasks)

    def owns(self, export_id: str) -> bool:
        with self._lock:
            return any(t.export_id == export_id for t in [*self._queue, *self._running])

    def busy(self) -> bool:
        with self._lock:
            return bool(self._queue or self._running)

    # --- submitting ---

    def submit(self, record: ExportRecord) -> None:
        """Queue worker processes for `record` (as many as chunks are left, at most `workers`)."""
        plan = record.plan
        done = {i for i, st in self.store.chunk_states(record.id).items() if st == "done"}
        lost = {i for i in done if not chunk_path(plan, i).exists()}  # recorded, but the file is gone: redo
        if lost:
            self.store.reset_chunks(record.id, sorted(lost))
        todo = plan.chunks_total - len(done - lost)
        logs_dir(plan).mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._queue.extend(_Task(record.id, slot) for slot in range(min(self.workers, max(1, todo))))
        self.start()
        self._wake.set()

    def cancel(self, export_id: str) -> None:
        """Stop the export's worker processes and drop its queued chunks."""
        self._kill(self._take(export_id))

    def _take(self, export_id: str) -> list[_Task]:
        with self._lock:
            self._queue = deque(t for t in self._queue if t.export_id != export_id)
            taken = [t for t in self._running if t.export_id == export_id]
            self._running = [t for t in self._running if t.export_id != export_id]
        return taken

    # --- the loop ---

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._reap()
                if time.monotonic() - self._last_check > 0.5:
                    self._last_check = time.monotonic()
                    self._drop_inactive()
                self._launch()
            except Exception:  # noqa: BLE001 - keep the pool alive; the error is logged
                logger.exception("local export executor")
            self._wake.wait(0.2)
            self._wake.clear()

    def _launch(self) -> None:
        while True:
            # Under the lock from the status check to `_running`, so that a cancel (`_take`) either
            # sees the process or prevents it.
            with self._lock:
                if self._stopping.is_set() or len(self._running) >= self.workers or not self._queue:
                    return
                task = self._queue.popleft()
                record = self.store.get(task.export_id)
                if record is None or not record.active:
                    continue
                plan = record.plan
                log_path = worker_log(plan, task.slot)
                log_path.parent.mkdir(parents=True, exist_ok=True)
                task.log = open(log_path, "ab")
                env = {**os.environ, **self.env}
                env.setdefault("NUMBA_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.workers)))
                try:
                    task.proc = subprocess.Popen(
                        worker_command(task.export_id), stdout=task.log, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, env=env, cwd=plan.work_dir, start_new_session=True,
                    )  # fmt: skip
                except OSError as error:  # the export fails; `_drop_inactive` cleans up
                    task.log.close()
                    self.store.transition(task.export_id, "failed", error=f"cannot start a worker process: {error}")
                    continue
                task.started = time.monotonic()
                self._running.append(task)

    def _reap(self) -> None:
        with self._lock:
            finished = [t for t in self._running if t.proc is not None and t.proc.poll() is not None]
            self._running = [t for t in self._running if t not in finished]
        for task in finished:
            if task.log:
                task.log.close()
            code = task.proc.returncode
            record = self.store.get(task.export_id)
            if record is None:
                continue
            if code != 0:
                self.store.transition(
                    task.export_id, "failed", error=f"worker process failed (exit code {code})",
                    log_tail=tail(worker_log(record.plan, task.slot)),
                )  # fmt: skip
                self._abort(task.export_id)
                continue
            with self._lock:
                others = any(t.export_id == task.export_id for t in [*self._queue, *self._running])
            if not others and self.store.status(task.export_id) in ACTIVE:
                self.store.transition(
                    task.export_id, "failed", error="the worker processes ended before the export finished",
                    log_tail=tail(worker_log(record.plan, task.slot)),
                )  # fmt: skip
                self._abort(task.export_id)

    def _drop_inactive(self) -> None:
        """Stop work of exports that became inactive elsewhere (canceled by another process, failed)."""
        with self._lock:
            ids = {t.export_id for t in [*self._queue, *self._running]}
        for export_id in ids:
            if self.store.status(export_id) not in ACTIVE:
                self._abort(export_id)

    def _abort(self, export_id: str) -> None:
        self._kill(self._take(export_id))
        record = self.store.get(export_id)
        if record is not None and not record.active and record.status != "finished":
            remove_partials(record.plan, keep_logs=record.status != "canceled")

    @staticmethod
    def _kill(tasks: list[_Task]) -> None:
        """SIGTERM the tasks' process groups, SIGKILL after 5 s."""
        for task in tasks:
            if task.proc is not None and task.proc.poll() is None:
                try:
                    os.killpg(task.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for task in tasks:
            if task.proc is None:
                continue
            try:
                task.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(task.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                task.proc.wait()
            if task.log:
                task.log.close()


# --- SLURM ------------------------------------------------------------------------------------------

FAILED_STATES = {"FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED"}
LIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING",
               "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT", "STOPPED"}


class SlurmError(RuntimeError):
    """sbatch/scancel failed or SLURM cannot be reached."""


class SlurmExecutor:
    """Chunk job arrays and merge jobs on SLURM."""

    def __init__(self, store: ExportStore, settings, env: dict[str, str]):
        self.store = store
        self.settings = settings
        self.env = env

    def _run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **self.env})
        except (OSError, subprocess.TimeoutExpired) as error:
            raise SlurmError(f"{args[0]}: {error}") from None

    def _sbatch(self, args: list[str]) -> str:
        result = self._run(["sbatch", "--parsable", *args])
        if result.returncode != 0:
            raise SlurmError(f"sbatch failed: {(result.stderr or result.stdout).strip()}")
        return result.stdout.strip().split(";")[0]

    def _script(self, record: ExportRecord, command: list[str], what: str) -> str:
        lines = [
            "#!/bin/bash",
            f"# jeo-tiler export {record.id}: {what}",
            "set -eo pipefail",
            *(f"export {key}={shlex.quote(value)}" for key, value in self.env.items()),
            'export NUMBA_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
            f"cd {shlex.quote(record.plan.work_dir)}",
            "exec " + " ".join(shlex.quote(part) for part in command),
            "",
        ]
        return "\n".join(lines)

    def submit(self, record: ExportRecord) -> list[str]:
        """Submit the chunk array and the merge job; returns their job ids."""
        s = self.settings
        plan = record.plan
        work = Path(plan.work_dir)
        logs = logs_dir(plan)
        logs.mkdir(parents=True, exist_ok=True)
        chunk_script = work / "chunks.sbatch"
        chunk_command = worker_command(record.id, 0)
        chunk_command[-1] = "$SLURM_ARRAY_TASK_ID"
        text = self._script(record, chunk_command, f"chunk $SLURM_ARRAY_TASK_ID of {plan.chunks_total}")
        chunk_script.write_text(text.replace("'$SLURM_ARRAY_TASK_ID'", '"$SLURM_ARRAY_TASK_ID"'))
        merge_script = work / "merge.sbatch"
        merge_script.write_text(self._script(record, merge_command(record.id), "merge"))
        common = [f"--chdir={work}"]
        for option, value in (("--partition", s.export_slurm_partition), ("--account", s.export_slurm_account)):
            if value:
                common.append(f"{option}={value}")
        common += shlex.split(s.export_slurm_extra or "")
        chunk_options = [f"--cpus-per-task={s.export_slurm_cpus_per_task}"]
        if s.export_slurm_time:
            chunk_options.append(f"--time={s.export_slurm_time}")
        if s.export_slurm_mem:
            chunk_options.append(f"--mem={s.export_slurm_mem}")
        merge_options = []
        if s.export_slurm_merge_time or s.export_slurm_time:
            merge_options.append(f"--time={s.export_slurm_merge_time or s.export_slurm_time}")
        if s.export_slurm_merge_mem or s.export_slurm_mem:
            merge_options.append(f"--mem={s.export_slurm_merge_mem or s.export_slurm_mem}")
        parallel = max(1, s.export_slurm_max_parallel)
        array_args = [
            *common, *chunk_options, f"--array=0-{plan.chunks_total - 1}%{parallel}",
            f"--job-name=jeo-export-{record.id}", f"--output={logs}/chunk-%a.log", str(chunk_script),
        ]  # fmt: skip
        array = self._sbatch(array_args)
        merge_args = [
            *common, *merge_options, f"--dependency=afterok:{array}", "--kill-on-invalid-dep=yes",
            f"--job-name=jeo-export-{record.id}-merge", f"--output={logs}/merge.log", str(merge_script),
        ]  # fmt: skip
        try:
            merge = self._sbatch(merge_args)
        except SlurmError:
            self._run(["scancel", array])
            raise
        jobs = [array, merge]
        self.store.set_jobs(record.id, jobs)
        (work / "jobs.txt").write_text(
            f"{array}\tsbatch --parsable {shlex.join(array_args)}\n{merge}\tsbatch --parsable {shlex.join(merge_args)}\n"
        )
        return jobs

    # --- status ---

    def job_states(self, job_ids: list[str]) -> dict[str, str] | None:
        """`{job or array task id: state}` of the jobs; None when SLURM cannot be asked right now."""
        states: dict[str, str] = {}
        for job in job_ids:
            result = self._run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%i|%T"], timeout=30)
            if result.returncode == 0 and result.stdout.strip():
                for line in result.stdout.splitlines():
                    task, _, state = line.strip().partition("|")
                    states[task] = state.split()[0] if state else "UNKNOWN"
                continue
            if result.returncode != 0 and "Invalid job id" not in result.stderr:
                return None  # controller unreachable: ask again later
            states.update(self._accounting(job))
        return states

    def _accounting(self, job: str) -> dict[str, str]:
        """Final states of a job purged from slurmctld: sacct (accounting), else the jobcomp file (sacct -c)."""
        for args in (["sacct", "-X", "-n", "-P", "-j", job, "-o", "JobID,State"],
                     ["sacct", "-c", "-n", "-P", "-j", job, "-o", "JobID,State"]):
            try:
                result = self._run(args, timeout=30)
            except SlurmError:
                continue
            if result.returncode == 0 and result.stdout.strip():
                found = {}
                for line in result.stdout.splitlines():
                    task, _, state = line.strip().partition("|")
                    if task:
                        found[task] = (state.split() or ["UNKNOWN"])[0]
                return found
        return {}

    def live_jobs(self, record: ExportRecord) -> list[str]:
        states = self.job_states(record.jobs) or {}
        return [job for job, state in states.items() if state in LIVE_STATES]

    def refresh(self, record: ExportRecord) -> None:
        """Reconcile an active export with what SLURM says about its jobs."""
        if not record.active or len(record.jobs) < 2:
            return
        array, merge = record.jobs[:2]
        states = self.job_states([array, merge])
        if states is None:
            return
        plan = record.plan
        tasks = {job: state for job, state in states.items() if job == array or job.startswith(f"{array}_")}
        merge_state = states.get(merge)
        failed = sorted(((job, state) for job, state in tasks.items() if state in FAILED_STATES), key=lambda js: js[0])
        error = log = None
        if failed:
            job, state = failed[0]
            index = job.partition("_")[2]
            chunk = int(index) if index.isdigit() else None
            what = f"chunk {chunk}" if chunk is not None else "a chunk"
            error = f"{what} failed: SLURM job {job} is {state}"
            log = tail(chunk_log(plan, chunk)) if chunk is not None else None
        elif merge_state in FAILED_STATES:
            error, log = f"merge failed: SLURM job {merge} is {merge_state}", tail(merge_log(plan))
        elif merge_state == "CANCELLED" or "CANCELLED" in tasks.values():
            error = "SLURM jobs were cancelled outside jeo-tiler"
        elif merge_state == "COMPLETED":
            if self.store.status(record.id) in ACTIVE:
                error, log = "the merge job completed without recording a result", tail(merge_log(plan))
        elif not states:
            error = f"SLURM jobs {', '.join(record.jobs)} are unknown to SLURM (purged, or the cluster state was lost)"
        elif "RUNNING" in tasks.values() or merge_state == "RUNNING":
            self.store.mark_running(record.id)
        if error is not None and self.store.transition(record.id, "failed", error=error, log_tail=log):
            self.cancel_jobs(record, wait=False)
            remove_partials(plan)

    # --- cancel ---

    def cancel_jobs(self, record: ExportRecord, wait: bool = True, timeout: float = 20) -> bool:
        """scancel the export's jobs; with `wait`, until none is pending or running. True if none is left."""
        if not record.jobs:
            return True
        self._run(["scancel", *record.jobs])
        deadline = time.monotonic() + timeout
        while True:
            states = self.job_states(record.jobs)
            if states is not None and not any(state in LIVE_STATES for state in states.values()):
                return True
            if not wait or time.monotonic() > deadline:
                return False
            time.sleep(0.3)
