"""A bounded per-process pool of open rasterio datasets, reused across requests.

A handle is lent to one reader at a time (GDAL handles are not shared between threads) and returned
afterwards; the least recently used idle handles are closed beyond `max_open`. Local files are keyed
by path, size and mtime, so a file replaced on disk is reopened.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import attr
import rasterio
from rasterio.io import DatasetReader
from rio_tiler.io import Reader

Key = tuple[str, int, int, int | None]


class DatasetPool:
    """Open datasets by path, lending each to one user at a time."""

    def __init__(self, max_open: int = 256):
        self.max_open = max_open
        self._idle: OrderedDict[Key, list[DatasetReader]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(path: str, overview_level: int | None) -> Key:
        if path.startswith("/vsi"):
            return path, 0, 0, overview_level
        stat = os.stat(path)
        return path, stat.st_size, stat.st_mtime_ns, overview_level

    @contextmanager
    def open(self, path: str, overview_level: int | None = None) -> Iterator[DatasetReader]:
        """A dataset for `path` (or one of its overview levels), from the pool when one is idle."""
        key = self._key(path, overview_level)
        with self._lock:
            handles = self._idle.get(key)
            dataset = handles.pop() if handles else None
        if dataset is None:
            dataset = rasterio.open(path) if overview_level is None else rasterio.open(path, overview_level=overview_level)
        try:
            yield dataset
        finally:
            self._give_back(key, dataset)

    def _give_back(self, key: Key, dataset: DatasetReader) -> None:
        closing = []
        with self._lock:
            self._idle.setdefault(key, []).append(dataset)
            self._idle.move_to_end(key)
            while sum(map(len, self._idle.values())) > self.max_open:
                oldest, handles = next(iter(self._idle.items()))
                closing.append(handles.pop(0))
                if not handles:
                    del self._idle[oldest]
        for handle in closing:
            handle.close()

    def idle(self) -> int:
        """Number of idle open handles."""
        with self._lock:
            return sum(map(len, self._idle.values()))


POOL = DatasetPool(int(os.environ.get("JEO_MAX_OPEN_DATASETS", "256")))


@attr.s
class PooledReader(Reader):
    """rio-tiler's Reader on a dataset borrowed from `POOL` (returned on close)."""

    def __attrs_post_init__(self):
        if self.dataset is None:
            self.dataset = self._ctx_stack.enter_context(POOL.open(self.input))
        super().__attrs_post_init__()
