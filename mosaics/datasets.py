"""Opening catalog rasters safely, and a bounded per-process pool of open datasets reused across requests.

`open_raster` is the one way catalog data is opened: GeoTIFF/COG only, self-contained (see there); the pool
checks each file version once and then opens its overview levels directly.
A pooled handle is lent to one reader at a time (GDAL handles are not shared between threads) and returned
afterwards; the least recently used idle handles are closed beyond `max_open`. Files are keyed by path
and file version (`mosaics.fileversions`), so a file replaced on disk or on S3 is reopened; for S3, GDAL's
process-wide cache of the object's blocks is dropped first, else the new handle would read old blocks.
"""

from __future__ import annotations

import os
import resource
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import attr
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.io import DatasetReader
from rio_tiler.io import Reader

from mosaics.fileversions import FILE_VERSIONS, local_version

Key = tuple[str, str, int | None]
S3_VSI = "/vsis3/"


def file_version(path: str) -> str:
    """Version of a GDAL path: a local file's, or an S3 object's (other /vsi paths: none)."""
    if path.startswith(S3_VSI):
        return FILE_VERSIONS.version("s3://" + path[len(S3_VSI):])
    return "" if path.startswith("/vsi") else local_version(path)


# The only GDAL driver catalog data is opened with: a VRT (or any other format) named .tif is refused.
ALLOWED_DRIVER = "GTiff"


def gdal_path(href: str) -> str:
    """The path GDAL opens for an asset href (local path or s3:// URL)."""
    return "/vsis3/" + href[len("s3://") :] if href.startswith("s3://") else href


def _open_gtiff(path: str, **options: int) -> DatasetReader:
    # EMPTY_DIR: GDAL sees no side-car files, so no .ovr/.msk/.aux.xml next to the file (which could be a VRT
    # or name other files) is ever opened. Thread-local, and only needed while opening.
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        return rasterio.open(path, driver=ALLOWED_DRIVER, **options)


def open_raster(path: str, overview_level: int | None = None) -> DatasetReader:
    """`path` (or one of its internal overview levels) opened as a self-contained GeoTIFF.

    Raises RasterioIOError for any other format and for a GeoTIFF whose metadata names another file to
    read (`OVERVIEW_FILE` in the OVERVIEWS domain, which GDAL would follow, /vsicurl/ URLs included):
    the file itself is checked before an overview level is opened.
    """
    dataset = _open_gtiff(path)
    if dataset.tags(ns="OVERVIEWS"):
        dataset.close()
        raise RasterioIOError("not a self-contained GeoTIFF: its OVERVIEWS metadata names another file")
    if overview_level is None:
        return dataset
    dataset.close()
    return _open_gtiff(path, overview_level=overview_level)


def drop_gdal_cache(path: str) -> None:
    """Forget GDAL's cached blocks and size of a remote file (closing a handle opened uncached does that)."""
    try:
        with rasterio.Env(CPL_VSIL_CURL_NON_CACHED=path), open_raster(path):
            pass
    except RasterioIOError:
        pass


def file_limit(wanted: int) -> int:
    """The process's open-file limit, raised towards `wanted` (as far as the hard limit allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    return wanted if soft == resource.RLIM_INFINITY else soft


class DatasetPool:
    """Open datasets by path, lending each to one user at a time.

    A composite of N scenes at one zoom keeps about N × its assets handles open (one per overview level read);
    the bound keeps `FILE_HEADROOM` descriptors of the process's limit for sockets and other files."""

    FILE_HEADROOM = 256

    def __init__(self, max_open: int = 1024):
        self.max_open = max(1, min(max_open, file_limit(max_open + self.FILE_HEADROOM) - self.FILE_HEADROOM))
        self._idle: OrderedDict[Key, list[DatasetReader]] = OrderedDict()
        self._versions: dict[str, str] = {}
        self._checked: dict[str, str] = {}  # path → the version open_raster last accepted
        self._count = 0  # idle handles in `_idle`
        self._lock = threading.Lock()

    @contextmanager
    def open(self, path: str, overview_level: int | None = None, version: str | None = None) -> Iterator[DatasetReader]:
        """A dataset for `path` (or one of its overview levels), from the pool when one is idle; `version`: the
        file's `file_version` when the caller has it."""
        key = (path, file_version(path) if version is None else version, overview_level)
        with self._lock:
            handles = self._idle.get(key)
            dataset = handles.pop() if handles else None
            if handles == []:  # no empty lists: eviction takes the oldest key's first handle
                del self._idle[key]
            self._count -= dataset is not None
            replaced = self._versions.setdefault(path, key[1]) != key[1]
            if replaced:
                self._versions[path] = key[1]
                old_keys = [k for k in self._idle if k[0] == path and k[1] != key[1]]
                stale = [handle for k in old_keys for handle in self._idle.pop(k)]
                self._count -= len(stale)
        if replaced:
            for handle in stale:
                handle.close()
            if path.startswith("/vsi"):
                drop_gdal_cache(path)
        if dataset is None:
            if overview_level is not None and self._checked.get(path) == key[1]:
                dataset = _open_gtiff(path, overview_level=overview_level)
            else:
                dataset = open_raster(path, overview_level)
                self._checked[path] = key[1]
        try:
            yield dataset
        finally:
            self._give_back(key, dataset)

    def _give_back(self, key: Key, dataset: DatasetReader) -> None:
        closing = []
        with self._lock:
            if self._versions.get(key[0]) == key[1]:
                self._idle.setdefault(key, []).append(dataset)
                self._idle.move_to_end(key)
                self._count += 1
            else:  # the file was replaced while this handle was lent
                closing.append(dataset)
            while self._count > self.max_open:
                oldest, handles = next(iter(self._idle.items()))
                closing.append(handles.pop(0))
                self._count -= 1
                if not handles:
                    del self._idle[oldest]
        for handle in closing:
            handle.close()

    def idle(self) -> int:
        """Number of idle open handles."""
        with self._lock:
            return self._count


POOL = DatasetPool(int(os.environ.get("JEO_MAX_OPEN_DATASETS", "1024")))


@attr.s
class PooledReader(Reader):
    """rio-tiler's Reader on a dataset borrowed from `POOL` (returned on close)."""

    def __attrs_post_init__(self):
        if self.dataset is None:
            self.dataset = self._ctx_stack.enter_context(POOL.open(self.input))
        super().__attrs_post_init__()
