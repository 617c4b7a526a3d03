"""Where export chunks run: a local pool of `jeo export-worker` processes, or SLURM job arrays.

Both run the same commands (`python -m tiler.cli export-worker --export ID ...`, then `export-merge
--export ID`) with `JEO_HOME` pointing at the same catalog; workers record their own progress and
failures in the store, and the executors only start, watch and stop them.

- `LocalExecutor`: N worker processes on this host shared by all exports (first in, first out).
  The process hosting it holds each export's `run` lease (leases.py) and renews it; its workers end
  with it. A stopped holder leaves its exports active; `ExportService.reconcile` then resumes them
  (missing chunks only) or fails them.
- `SlurmExecutor`: one `sbatch --array=0-{n-1}%{max_parallel}` for the chunks and one merge job
  `--dependency=afterok:{array}`; status from `squeue -t all` (then `sacct`, then the jobcomp file
  through `sacct -c`), cancel with `scancel`. Chunk or merge jobs that end NODE_FAIL or PREEMPTED are
  resubmitted (`export_slurm_retries` times), with a new merge job that waits for the new attempts.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mosaics.errors import InvalidParameter
from tiler.exports.jobs import merge_command, worker_command
from tiler.exports.leases import RUN, process_token
from tiler.exports.plan import ACTIVE, ExportRecord, now, redact
from tiler.exports.store import ExportStore
from tiler.exports.workdir import chunk_log, chunk_path, logs_dir, merge_log, remove_partials, tail, worker_log

logger = logging.getLogger(__name__)


# --- local ------------------------------------------------------------------------------------------


@dataclass
class _Task:
    export_id: str
    slot: int  # worker number within the export (its log is logs/worker-<slot>.log)
    token: int  # the `run` lease the worker works for
    proc: subprocess.Popen | None = None
    log: IO[bytes] | None = None
    started: float = field(default_factory=time.monotonic)


class LocalExecutor:
    """A pool of `workers` worker processes on this host.

    An export gets up to `workers` processes (`jeo export-worker --all`), each taking chunks from the
    store until none is left; the one that completes the last chunk merges. Exports queue first in,
    first out, so the pool never runs more than `workers` processes. While it has work, the pool renews
    the `run` leases of its exports every `heartbeat` seconds and stops the workers of a lease it lost."""

    def __init__(self, store: ExportStore, env: dict[str, str], workers: int, heartbeat: float = 5.0):
        self.store = store
        self.env = env
        self.workers = max(1, workers)
        self.heartbeat = heartbeat
        self.holder = process_token()  # holds the run leases of the exports it runs
        self._queue: deque[_Task] = deque()
        self._running: list[_Task] = []
        self._dying: list[_Task] = []  # taken from `_running`, being stopped
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_check = 0.0
        self._last_beat = 0.0

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

    def submit(self, record: ExportRecord, token: int) -> None:
        """Queue worker processes for `record`, whose `run` lease `token` this process holds (as many as chunks
        are left, at most `workers`)."""
        plan = record.plan
        done = {i for i, st in self.store.chunk_states(record.id).items() if st == "done"}
        lost = {i for i in done if not chunk_path(plan, i).exists()}  # recorded, but the file is gone: redo
        if lost:
            self.store.reset_chunks(record.id, sorted(lost))
        todo = plan.chunks_total - len(done - lost)
        logs_dir(plan).mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._queue.extend(_Task(record.id, slot, token) for slot in range(min(self.workers, max(1, todo))))
        self.start()
        self._wake.set()

    def cancel(self, export_id: str) -> None:
        """Stop the export's worker processes (also those another thread is stopping) and drop its queued chunks."""
        self._kill(self._take(export_id))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with self._lock:
                if not any(t.export_id == export_id for t in self._dying):
                    return
            time.sleep(0.05)

    def _take(self, export_id: str) -> list[_Task]:
        with self._lock:
            self._queue = deque(t for t in self._queue if t.export_id != export_id)
            taken = [t for t in self._running if t.export_id == export_id]
            self._running = [t for t in self._running if t.export_id != export_id]
            self._dying += taken
        return taken

    # --- the loop ---

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._reap()
                if time.monotonic() - self._last_beat > self.heartbeat:
                    self._last_beat = time.monotonic()
                    self._renew()
                if time.monotonic() - self._last_check > 0.5:
                    self._last_check = time.monotonic()
                    self._drop_inactive()
                self._launch()
            except Exception:  # noqa: BLE001 - keep the pool alive; the error is logged
                logger.exception("local export executor")
            self._wake.wait(0.2)
            self._wake.clear()

    def _renew(self) -> None:
        """Heartbeat of every `run` lease held for queued or running workers; stop the workers of a lost one."""
        with self._lock:
            held = {(t.export_id, t.token) for t in [*self._queue, *self._running]}
        for export_id, token in held:
            if not self.store.renew(export_id, RUN, token):
                logger.warning("export %s: run lease %s went to another process: stopping its workers here", export_id, token)
                self._kill(self._take(export_id))

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
                        worker_command(task.export_id, lease=task.token), stdout=task.log, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, env=env, cwd=plan.work_dir, start_new_session=True,
                    )  # fmt: skip
                except OSError as error:  # the export fails; `_drop_inactive` cleans up
                    task.log.close()
                    self.store.transition(task.export_id, "failed", fence=(RUN, task.token),
                                          error=redact(f"cannot start a worker process: {error}"))
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
            fence = (RUN, task.token)
            if code != 0:
                self.store.transition(
                    task.export_id, "failed", fence=fence, error=f"worker process failed (exit code {code})",
                    log_tail=tail(worker_log(record.plan, task.slot)),
                )  # fmt: skip
                self._abort(task.export_id)
                continue
            with self._lock:
                others = any(t.export_id == task.export_id for t in [*self._queue, *self._running])
            if not others and self.store.status(task.export_id) in ACTIVE:
                self.store.transition(
                    task.export_id, "failed", fence=fence, error="the worker processes ended before the export finished",
                    log_tail=tail(worker_log(record.plan, task.slot)),
                )  # fmt: skip
                self._abort(task.export_id)

    def _drop_inactive(self) -> None:
        """Stop work of exports that became inactive elsewhere (canceled by another process, failed). The worker that
        finished an export is left to end by itself: it still publishes the result (`merge.run_merge`)."""
        with self._lock:
            ids = {t.export_id for t in [*self._queue, *self._running]}
        for export_id in ids:
            status = self.store.status(export_id)
            if status == "finished":
                with self._lock:
                    self._queue = deque(t for t in self._queue if t.export_id != export_id)
            elif status not in ACTIVE:
                self._abort(export_id)

    def _abort(self, export_id: str) -> None:
        self._kill(self._take(export_id))
        record = self.store.get(export_id)
        if record is not None and not record.active and record.status != "finished":
            remove_partials(record.plan, keep_logs=record.status != "canceled")

    def _kill(self, tasks: list[_Task]) -> None:
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
        with self._lock:
            self._dying = [t for t in self._dying if t not in tasks]


# --- SLURM ------------------------------------------------------------------------------------------

FAILED_STATES = {"FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED"}
RETRY_STATES = {"NODE_FAIL", "PREEMPTED"}  # not the job's fault: resubmitted
LIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING",
               "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT", "STOPPED"}
SLURM_TOOLS = ("sbatch", "squeue", "scancel", "scontrol")


class SlurmError(RuntimeError):
    """sbatch/scancel failed or SLURM cannot be reached."""


def _array_indices(spec: str) -> set[int]:
    """Task indices of an array spec such as `0-3,7%4`."""
    indices: set[int] = set()
    for part in spec.partition("%")[0].split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and (high.isdigit() or not high):
            indices.update(range(int(low), int(high or low) + 1))
    return indices


def _task_state(states: dict[str, str], array: str, chunk: int) -> str | None:
    """State of task `chunk` of `array` in squeue/sacct output (pending tasks are listed as `A_[0-3%4]`)."""
    state = states.get(f"{array}_{chunk}")
    if state is not None:
        return state
    for job, value in states.items():
        if job.startswith(f"{array}_[") and chunk in _array_indices(job[len(array) + 2:].rstrip("]")):
            return value
    return states.get(array)  # accounting that names only the array


@dataclass
class Attempts:
    """An export's current SLURM jobs: the array task of each chunk's latest attempt, and the latest merge job."""

    tasks: dict[int, str]  # chunk → "array_chunk"
    merge: str
    arrays: dict[str, list[int]]  # every chunk array → its chunks

    @classmethod
    def of(cls, record: ExportRecord) -> Attempts:
        array, merge = record.jobs[:2]
        arrays = {array: list(range(record.chunks_total))}
        tasks = {chunk: f"{array}_{chunk}" for chunk in arrays[array]}
        for retry in record.retries:
            if retry["array"]:
                arrays[retry["array"]] = retry["chunks"]
                tasks.update({chunk: f"{retry['array']}_{chunk}" for chunk in retry["chunks"]})
            merge = retry["merge"]
        return cls(tasks, merge, arrays)

    def dependency(self) -> str:
        """`afterok` on every chunk's latest attempt (whole arrays where all their tasks are current)."""
        current = {}
        for chunk, task in self.tasks.items():
            current.setdefault(task.partition("_")[0], []).append(chunk)
        parts = [array if sorted(chunks) == sorted(self.arrays[array]) else ":".join(f"{array}_{c}" for c in chunks)
                 for array, chunks in current.items()]
        return "afterok:" + ":".join(parts)


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

    def check(self) -> None:
        """InvalidParameter('executor') unless the SLURM tools are installed and the controller answers."""
        missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
        if missing:
            raise InvalidParameter("executor", f"slurm: {', '.join(missing)} not installed on the server host")
        try:
            ping = self._run(["scontrol", "ping"], timeout=20)
        except SlurmError as error:
            raise InvalidParameter("executor", f"slurm: {redact(str(error))}") from None
        if ping.returncode != 0 or " is UP" not in ping.stdout:
            raise InvalidParameter(
                "executor", "slurm: the SLURM controller does not answer (scontrol ping); try again later, or use local"
            )

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
            # a task computes with the CPUs it was given: its kernels' threads and its read threads
            'export NUMBA_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}" JEO_READ_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
            f"cd {shlex.quote(record.plan.work_dir)}",
            "exec " + " ".join(shlex.quote(part) for part in command),
            "",
        ]
        return "\n".join(lines)

    def _options(self, record: ExportRecord) -> tuple[list[str], list[str]]:
        """sbatch options of chunk arrays and of merge jobs."""
        s = self.settings
        common = [f"--chdir={record.plan.work_dir}", "--no-requeue", "--open-mode=append"]
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
        return common + chunk_options, common + merge_options

    def _submit_chunks(self, record: ExportRecord, spec: str) -> tuple[str, list[str]]:
        chunk_options, _ = self._options(record)
        parallel = max(1, self.settings.export_slurm_max_parallel)
        args = [
            *chunk_options, f"--array={spec}%{parallel}", f"--job-name=jeo-export-{record.id}",
            f"--output={logs_dir(record.plan)}/chunk-%a.log", str(Path(record.plan.work_dir) / "chunks.sbatch"),
        ]  # fmt: skip
        return self._sbatch(args), args

    def _submit_merge(self, record: ExportRecord, dependency: str) -> tuple[str, list[str]]:
        _, merge_options = self._options(record)
        args = [
            *merge_options, f"--dependency={dependency}", "--kill-on-invalid-dep=yes",
            f"--job-name=jeo-export-{record.id}-merge", f"--output={logs_dir(record.plan)}/merge.log",
            str(Path(record.plan.work_dir) / "merge.sbatch"),
        ]  # fmt: skip
        return self._sbatch(args), args

    def submit(self, record: ExportRecord) -> list[str]:
        """Submit the chunk array and the merge job; returns their job ids."""
        plan = record.plan
        work = Path(plan.work_dir)
        logs_dir(plan).mkdir(parents=True, exist_ok=True)
        chunk_command = worker_command(record.id, 0)
        chunk_command[-1] = "$SLURM_ARRAY_TASK_ID"
        text = self._script(record, chunk_command, f"chunk $SLURM_ARRAY_TASK_ID of {plan.chunks_total}")
        (work / "chunks.sbatch").write_text(text.replace("'$SLURM_ARRAY_TASK_ID'", '"$SLURM_ARRAY_TASK_ID"'))
        (work / "merge.sbatch").write_text(self._script(record, merge_command(record.id), "merge"))
        array, array_args = self._submit_chunks(record, f"0-{plan.chunks_total - 1}")
        try:
            merge, merge_args = self._submit_merge(record, f"afterok:{array}")
        except SlurmError:
            self._run(["scancel", array])
            raise
        jobs = [array, merge]
        self.store.set_jobs(record.id, jobs)
        (work / "jobs.txt").write_text(
            f"{array}\tsbatch --parsable {shlex.join(array_args)}\n{merge}\tsbatch --parsable {shlex.join(merge_args)}\n"
        )
        return jobs

    def _retry(self, record: ExportRecord, attempts: Attempts, chunks: list[int], reason: str) -> None:
        """Resubmit `chunks` (none: only the merge) and a merge job waiting for every chunk's latest attempt;
        recorded unless another process retried first (then the new jobs are canceled again)."""
        array = None
        lines = []
        if chunks:
            array, args = self._submit_chunks(record, ",".join(map(str, chunks)))
            lines.append(f"{array}\tsbatch --parsable {shlex.join(args)}")
            attempts.arrays[array] = chunks
            attempts.tasks.update({chunk: f"{array}_{chunk}" for chunk in chunks})
        try:
            merge, args = self._submit_merge(record, attempts.dependency())
        except SlurmError:
            if array:
                self._run(["scancel", array])
            raise
        lines.append(f"{merge}\tsbatch --parsable {shlex.join(args)}")
        jobs = [job for job in (array, merge) if job]
        retry = {"chunks": chunks, "array": array, "merge": merge, "reason": reason, "at": now()}
        if not self.store.add_retry(record, retry, jobs):
            self._run(["scancel", *jobs])
            return
        self._run(["scancel", attempts.merge])  # superseded (usually canceled already: its dependency failed)
        with open(Path(record.plan.work_dir) / "jobs.txt", "a") as out:
            out.write("\n".join(lines) + "\n")
        logger.warning("export %s: %s; resubmitted as %s", record.id, reason, ", ".join(jobs))

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
        """Reconcile an active export with what SLURM says about its jobs: resubmit jobs lost to NODE_FAIL or
        PREEMPTED, fail the export on other failures."""
        if not record.active or len(record.jobs) < 2:
            return
        states = self.job_states(record.jobs)
        if states is None:
            return
        plan = record.plan
        limit = self.settings.export_slurm_retries
        attempts = Attempts.of(record)
        chunks = {chunk: _task_state(states, task.partition("_")[0], chunk) for chunk, task in attempts.tasks.items()}
        merge_state = states.get(attempts.merge)
        tries = {chunk: sum(chunk in r["chunks"] for r in record.retries) for chunk in chunks}
        merge_tries = sum(not r["chunks"] for r in record.retries)
        failed = sorted((chunk, state) for chunk, state in chunks.items() if state in FAILED_STATES)
        error = log = None
        if failed:
            lost = [(chunk, state) for chunk, state in failed if state in RETRY_STATES and tries[chunk] < limit]
            if len(lost) == len(failed):
                reason = "; ".join(f"chunk {c}: SLURM job {attempts.tasks[c]} is {state}" for c, state in lost)
                self._retry(record, attempts, [chunk for chunk, _ in lost], reason)
                return
            chunk, state = next(fs for fs in failed if fs not in lost)
            error = f"chunk {chunk} failed: SLURM job {attempts.tasks[chunk]} is {state}"
            if state in RETRY_STATES:
                error += f" (after {tries[chunk]} resubmission(s))"
            log = tail(chunk_log(plan, chunk))
        elif merge_state in RETRY_STATES and merge_tries < limit:
            self._retry(record, attempts, [], f"merge: SLURM job {attempts.merge} is {merge_state}")
            return
        elif merge_state in FAILED_STATES:
            error, log = f"merge failed: SLURM job {attempts.merge} is {merge_state}", tail(merge_log(plan))
        elif merge_state == "CANCELLED" or "CANCELLED" in chunks.values():
            error = "SLURM jobs were cancelled outside jeo-tiler"
        elif merge_state == "COMPLETED":
            if self.store.status(record.id) in ACTIVE:
                error, log = "the merge job completed without recording a result", tail(merge_log(plan))
        elif not states:
            error = f"SLURM jobs {', '.join(record.jobs)} are unknown to SLURM (purged, or the cluster state was lost)"
        elif "RUNNING" in chunks.values() or merge_state == "RUNNING":
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
