"""Rendered-tile cache shared by every worker process of a host (diskcache), with stampede protection.

Entries are framed with a CRC32 so that a corrupted entry reads as a miss. Keys are a hash of the
canonical request (parsed parameters with their defaults) and of the catalog versions of the items
behind the tile, so re-ingesting an item invalidates exactly the tiles that used it.

A repeated request is answered without routing: the request as sent (path, sorted query) and its
collection's version map to the key of the tile it got (`request_key`, `remember`, `lookup`). Any change
of the collection changes its version, so those shortcuts lapse and the full key decides again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from diskcache import Cache, Lock

logger = logging.getLogger(__name__)
_MAGIC = b"JEO1"


@dataclass(frozen=True)
class CachedTile:
    """A rendered tile as stored."""

    content: bytes
    media_type: str
    headers: dict[str, str]


def cache_key(parts: dict[str, Any]) -> str:
    """A stable hash of request parts (JSON with sorted keys)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def request_key(path: str, query: str, collection_version: str) -> str:
    """Key of a request as sent: path, query parameters in sorted order, and the collection's version."""
    params = sorted(parse_qsl(query, keep_blank_values=True))
    return "request:" + cache_key({"path": path, "query": params, "collection": collection_version})


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

    def __init__(self, directory: Path, size_limit: int):
        self.cache = Cache(str(directory), size_limit=size_limit, eviction_policy="least-recently-stored")

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
            self.cache.delete(key)
        return tile

    def get_or_compute(self, key: str, compute: Callable[[], CachedTile]) -> tuple[CachedTile, bool]:
        """(tile, hit): one process computes a missing tile, concurrent requests for it wait and reuse it."""
        if (tile := self.get(key)) is not None:
            return tile, True
        with Lock(self.cache, f"lock:{key}", expire=120):
            if (tile := self.get(key)) is not None:
                return tile, True
            tile = compute()
            logger.info("tile computed %s", key)
            self.cache.set(key, _pack(tile))
            return tile, False

    def remember(self, request: str, key: str, headers: dict[str, str]) -> None:
        """Let `request` (a `request_key`) find the tile stored under `key`, with these response headers."""
        self.cache.set(request, json.dumps({"key": key, "headers": headers}))

    def lookup(self, request: str) -> tuple[CachedTile, dict[str, str]] | None:
        """The tile and response headers remembered for `request`, or None."""
        try:
            alias = json.loads(self.cache.get(request) or "null")
        except (ValueError, TypeError):
            alias = None
        if not isinstance(alias, dict) or (tile := self.get(str(alias.get("key")))) is None:
            return None
        return tile, alias["headers"]


class NoCache(TileCache):
    """Caching disabled (`JEO_CACHE_SIZE_MB=0`): always compute."""

    enabled = False

    def __init__(self):  # noqa: D107 - nothing to open
        pass

    def remember(self, request: str, key: str, headers: dict[str, str]) -> None:
        pass

    def get_or_compute(self, key: str, compute: Callable[[], CachedTile]) -> tuple[CachedTile, bool]:
        return compute(), False
