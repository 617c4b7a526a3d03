"""Tile cache writes off the response path: one thread per process runs queued writes in order.

The queue is bounded by the bytes it holds: when a slow or stalled disk lets writes pile up beyond the
bound, a new write is refused (the caller drops it) instead of holding more tiles in memory.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class WriteQueue:
    """Writes (callables) run in submission order by one daemon thread, at most `max_bytes` queued."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._jobs: queue.Queue[tuple[int, Callable[[], None]] | None] = queue.Queue()
        self._pending = 0
        self._closed = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, size: int, write: Callable[[], None]) -> bool:
        """Queue `write` (holding `size` bytes); False, and nothing queued, when the queue is full or closed."""
        with self._lock:
            if self._closed or self._pending + size > self.max_bytes:
                return False
            self._pending += size
            if self._thread is None:  # started on first use: after any fork of the worker process
                self._thread = threading.Thread(target=self._run, name="jeo-cache-writer", daemon=True)
                self._thread.start()
            self._jobs.put((size, write))
        return True

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            size, write = job
            try:
                write()
            except Exception as error:  # noqa: BLE001 - a failed write must not stop the writer
                logger.warning("tile cache write failed (%s: %s)", type(error).__name__, error)
            finally:
                with self._lock:
                    self._pending -= size
                self._jobs.task_done()
        self._jobs.task_done()

    def flush(self) -> None:
        """Wait until every write queued so far has run."""
        self._jobs.join()

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new writes, run the queued ones (for at most `timeout` seconds), stop the thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._jobs.put(None)
            thread.join(timeout)
