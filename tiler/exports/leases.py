"""Leases: which process hosts an export's local workers (`run`) and which one merges it (`merge`).

A lease is a row of the store: the holder (`host:pid:start time` of a process), a fencing token that
grows by one on every acquisition, and the holder's last heartbeat. A lease may be taken over when its
holder is gone: on this host when the process no longer exists, on another host when it has not renewed
the lease for `timeout` seconds. The store's fenced writes (chunk claims and results, the delivery and
the final status) succeed only with the current token, so a process that lost its lease changes nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RUN = "run"
MERGE = "merge"


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


def token_pid(token: str) -> int | None:
    """The pid in a process token."""
    pid = token.split(":")[1] if token.count(":") >= 2 else ""
    return int(pid) if pid.isdigit() else None


@dataclass(frozen=True)
class Lease:
    """A lease as stored."""

    holder: str | None
    token: int
    heartbeat: float  # unix time

    def alive(self, timeout: float, now: float | None = None) -> bool:
        """True while the holder runs: a process on this host, or a fresh heartbeat from another host."""
        if not self.holder:
            return False
        host = self.holder.partition(":")[0]
        if host == socket.gethostname():
            pid = token_pid(self.holder)
            return pid is not None and process_token(pid) == self.holder
        return (now or time.time()) - self.heartbeat < timeout


def die_with_parent(parent: int) -> bool:
    """Ask the kernel to SIGTERM this process when its parent ends (Linux); False if `parent` is gone already."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    return os.getppid() == parent


class Heartbeat:
    """Renews a lease every `interval` seconds in a thread; `lost` is set once it is no longer ours."""

    def __init__(self, renew, interval: float):
        self._renew = renew  # () -> bool
        self._interval = interval
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="jeo-export-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if not self._renew():
                    self.lost.set()
                    return
            except Exception:  # noqa: BLE001 - a busy database: try again at the next beat
                continue


@contextmanager
def terminate_as_exit():
    """SIGTERM (scancel, pool shutdown, a lost lease) raises SystemExit so that `finally` blocks clean up."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
