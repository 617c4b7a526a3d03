"""Rendered-tile cache shared by every worker process of a host (diskcache), with stampede protection.

Entries are framed with a CRC32 so that a corrupted entry reads as a miss. Keys are a hash of the
canonical request (parsed parameters with their defaults), of the versions of the items behind the tile
(their JSON in the catalog and their files on disk or S3) and of the code and settings (`code_version`),
so re-ingesting an item or replacing one of its files invalidates exactly the tiles that used it.

A repeated request is answered without routing: the request as sent (path, query parameters sorted by
name, repeated ones in their order) with the code version and its collection's version maps to the key of
the tile it got and the file versions that tile was computed from (`request_key`, `remember`, `lookup`).
A changed collection or file makes the shortcut lapse, and the full key decides again.

Stores happen after the response: a computed tile is handed to the process's `WriteQueue`, which stores
it and only then releases the tile's lock, so concurrent requests for it still wait and reuse it. When
the queue is full (a slow disk), the tile is not stored.

The cache never fails a request: when its directory cannot be opened, is full or read-only, tiles are
computed and served uncached and a warning is logged (once per `BYPASS_SECONDS`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import rasterio
from diskcache import Cache, Lock

from mosaics.fileversions import FileVersions
from tiler import __version__
from tiler.cachewriter import WriteQueue
from tiler.presets import PresetRegistry
from tiler.settings import Settings

logger = logging.getLogger(__name__)
_MAGIC = b"JEO1"
BYPASS_SECONDS = 30.0
PACKAGES = ("algorithms", "mosaics", "tiler")
LIBRARIES = ("titiler.core", "rio-tiler", "rasterio", "morecantile", "numpy", "numba", "imagecodecs")
# Settings (name prefixes) that decide a tile response or its stored headers: composite defaults and limits,
# request caps, Cache-Control. They are part of `code_version`; the others (paths, ports, catalog location,
# access, exports, …) are not, so that servers behind one proxy give the same ETags.
TILE_SETTINGS = ("composite_", "max_", "request_max_bytes", "cache_control_")


@dataclass(frozen=True)
class CachedTile:
    """A rendered tile as stored."""

    content: bytes
    media_type: str
    headers: dict[str, str]


def cache_key(parts: dict[str, Any]) -> str:
    """A stable hash of request parts (JSON with sorted keys; lists keep their order)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def code_version(settings: Settings, presets: PresetRegistry) -> str:
    """Hash of what renders tiles besides the request and the data: the package (version and sources),
    the rendering libraries, the `TILE_SETTINGS`, and the presets."""
    sources = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if path.suffix in (".py", ".toml"):
                sources.update(f"{path.relative_to(root)}\n".encode() + path.read_bytes())
    return cache_key({
        "package": __version__,
        "sources": sources.hexdigest(),
        "libraries": {name: importlib.metadata.version(name) for name in LIBRARIES} | {"gdal": rasterio.__gdal_version__},
        "settings": {name: value for name, value in settings.model_dump().items() if name.startswith(TILE_SETTINGS)},
        "presets": [dataclasses.asdict(profile) for profile in presets.profiles],
    })  # fmt: skip


def request_key(path: str, query: str, version: str) -> str:
    """Key of a request as sent: path, query parameters sorted by name (repeated ones keep their order), and
    `version` (code and collection versions)."""
    params = sorted(parse_qsl(query, keep_blank_values=True), key=itemgetter(0))
    return "request:" + cache_key({"path": path, "query": params, "version": version})


def _pack(tile: CachedTile) -> bytes:
    meta = json.dumps({"media_type": tile.media_type, "headers": tile.headers}).encode()
    body = struct.pack(">I", len(meta)) + meta + tile.content
    return _MAGIC + struct.pack(">I", zlib.crc32(body)) + body


def _unpack(blob: bytes) -> CachedTile | None:
    if not isinstance(blob, bytes) or blob[:4] != _MAGIC or len(blob) < 12:
        return None
    (crc,) = struct.unpack(">I", blob[4:8])
    body = blob[8:]
    if zlib.crc32(body) != crc:
        return None
    (size,) = struct.unpack(">I", body[:4])
    meta = json.loads(body[4 : 4 + size])
    return CachedTile(body[4 + size :], meta["media_type"], meta["headers"])


class TileCache:
    """Size-bounded on-disk cache of rendered tiles."""

    enabled = True

    def __init__(self, directory: Path, size_limit: int, write_queue_bytes: int = 64 * 2**20):
        self.cache = Cache(str(directory), size_limit=size_limit, eviction_policy="least-recently-stored")
        self.writes = WriteQueue(write_queue_bytes)
        self._bypass_until = 0.0
        self._failures = threading.Lock()

    def _failed(self, action: str, error: Exception) -> None:
        """Serve uncached for `BYPASS_SECONDS` after a failed write; warn once per period."""
        with self._failures:
            warn = time.monotonic() >= self._bypass_until
            self._bypass_until = time.monotonic() + BYPASS_SECONDS
        if warn:
            logger.warning("tile cache %s failed (%s: %s); serving tiles uncached for %.0f s",
                           action, type(error).__name__, error, BYPASS_SECONDS)

    @property
    def writable(self) -> bool:
        """False for a while after a write failed (full or read-only directory)."""
        return time.monotonic() >= self._bypass_until

    def get(self, key: str) -> CachedTile | None:
        """The tile, or None on a miss or a corrupted entry (which is dropped)."""
        try:
            blob = self.cache.get(key)
        except Exception:  # noqa: BLE001 - an unreadable entry is a miss
            logger.warning("tile cache entry %s unreadable; recomputing", key)
            blob = b""
        if blob is None:
            return None
        tile = _unpack(blob)
        if tile is None:
            logger.warning("tile cache entry %s corrupted; recomputing", key)
            self._write("delete", self.cache.delete, key)
        return tile

    def _write(self, action: str, method: Callable[..., Any], *args: Any) -> bool:
        """Call a cache write; on failure warn and bypass the cache for a while."""
        try:
            method(*args)
            return True
        except Exception as error:  # noqa: BLE001 - a cache that cannot be written must not fail the request
            self._failed(action, error)
            return False

    def get_or_compute(self, key: str, compute: Callable[[], CachedTile]) -> tuple[CachedTile, bool]:
        """(tile, hit): one process computes a missing tile, concurrent requests for it wait and reuse it."""
        if (tile := self.get(key)) is not None:
            return tile, True
        lock = Lock(self.cache, f"lock:{key}", expire=120)
        if not (self.writable and self._write("lock", lock.acquire)):
            return compute(), False
        try:
            if (tile := self.get(key)) is not None:
                self._write("unlock", lock.release)
                return tile, True
            tile = compute()
        except BaseException:
            self._write("unlock", lock.release)
            raise
        logger.info("tile computed %s", key)
        blob = _pack(tile)

        def store() -> None:
            try:
                self._write("store", self.cache.set, key, blob)
            finally:
                self._write("unlock", lock.release)

        if not self.writes.submit(len(blob), store):
            self._write("unlock", lock.release)
        return tile, False

    def remember(self, request: str, key: str, headers: dict[str, str], files: dict[str, str]) -> None:
        """Let `request` (a `request_key`) find the tile stored under `key`, with these response headers, as
        long as the files it was computed from keep these versions (stored after the tile)."""
        if self.writable:
            alias = json.dumps({"key": key, "headers": headers, "files": files})
            self.writes.submit(len(alias), lambda: self._write("store", self.cache.set, request, alias))

    def close(self) -> None:
        """Store the queued tiles, then stop writing."""
        self.writes.close()

    def lookup(self, request: str, versions: FileVersions) -> tuple[CachedTile, dict[str, str]] | None:
        """The tile and response headers remembered for `request`, or None (also when a file changed)."""
        try:
            alias = json.loads(self.cache.get(request) or "null")
        except Exception:  # noqa: BLE001 - an unreadable alias is a miss
            alias = None
        if not isinstance(alias, dict) or not isinstance(files := alias.get("files"), dict):
            return None
        if versions.versions(files) != files or (tile := self.get(str(alias.get("key")))) is None:
            return None
        return tile, alias["headers"]


class NoCache(TileCache):
    """Caching disabled (`JEO_CACHE_SIZE_MB=0`, or a cache directory that cannot be opened): always compute."""

    enabled = False

    def __init__(self):  # noqa: D107 - nothing to open
        pass

    def remember(self, request: str, key: str, headers: dict[str, str], files: dict[str, str]) -> None:
        pass

    def close(self) -> None:
        pass

    def get_or_compute(self, key: str, compute: Callable[[], CachedTile]) -> tuple[CachedTile, bool]:
        return compute(), False


def open_tile_cache(settings: Settings) -> TileCache:
    """The configured cache; `NoCache` (with a warning) when it is disabled or its directory cannot be opened."""
    if not settings.cache_size_mb:
        return NoCache()
    try:
        return TileCache(settings.cache_path, settings.cache_size_mb * 2**20, settings.cache_write_queue_mb * 2**20)
    except Exception as error:  # noqa: BLE001 - a full or read-only disk must not stop the server
        logger.warning("tile cache %s cannot be opened (%s: %s); serving tiles uncached",
                       settings.cache_path, type(error).__name__, error)
        return NoCache()
