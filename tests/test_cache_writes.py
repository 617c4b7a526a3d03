"""Tile cache writes happen after the response: a tile is served while its store is still waiting for the
disk, concurrent requests still reuse it once stored, and a full write queue drops stores, never requests."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from diskcache import Cache

from mosaics.catalog import Catalog
from tiler.app import create_app
from tiler.cache import CachedTile, TileCache
from tiler.cachewriter import WriteQueue
from tiler.settings import Settings

C = "sentinel-2-l2a-timeseries"
TILE = f"/collections/{C}/items/S2B_33TWM_20230813_0_L2A/tiles/WebMercatorQuad/11/1113/727.png?assets=red&rescale=0,0.3"


class GatedCache(Cache):
    """A diskcache whose stores wait until `gate` is set (a disk that does not answer)."""

    def __init__(self, directory: str):
        super().__init__(directory)
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def set(self, *args, **kwargs):
        self.waiting.set()
        assert self.gate.wait(60), "the store was never released"
        return super().set(*args, **kwargs)


@contextmanager
def in_process_server(settings: Settings) -> Iterator[tuple[str, object]]:
    """A real uvicorn serving `create_app(settings)` from a thread of this process (so that its cache can be
    replaced), and the app."""
    app = create_app(settings)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        threading.Event().wait(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(60)


@pytest.fixture(scope="module")
def home(tmp_path_factory, shared_data):
    home = tmp_path_factory.mktemp("cache-writes")
    Catalog(home / "catalog.db").ingest(shared_data / C / "collection.json")
    return home


def test_response_does_not_wait_for_the_store(home, tmp_path):
    with in_process_server(Settings(home=home)) as (url, app):
        tiles = TileCache(tmp_path / "cache", 2**30)
        tiles.cache = GatedCache(str(tmp_path / "cache"))
        app.state.tile_cache = tiles
        with httpx.Client(base_url=url, timeout=120) as client:
            first = client.get(TILE)
            assert first.status_code == 200 and first.headers["X-Cache"] == "miss"
            assert tiles.cache.waiting.wait(60)  # served, and its store is waiting for the disk
            tiles.cache.gate.set()
            second = client.get(TILE)  # waits for the tile's lock, released once stored
        assert second.headers["X-Cache"] == "hit"
        assert second.content == first.content and second.headers["ETag"] == first.headers["ETag"]


def test_full_write_queue_drops_the_store_not_the_tile(tmp_path):
    tiles = TileCache(tmp_path / "cache", 2**30, write_queue_bytes=100)
    computed = []

    def compute() -> CachedTile:
        computed.append(1)
        return CachedTile(b"x" * 1000, "image/png", {})

    assert tiles.get_or_compute("big", compute) == (CachedTile(b"x" * 1000, "image/png", {}), False)
    tiles.writes.flush()
    assert tiles.get("big") is None  # dropped: larger than the queue
    assert tiles.get_or_compute("big", compute)[1] is False and len(computed) == 2  # its lock was released
    small = CachedTile(b"y", "image/png", {})
    assert tiles.get_or_compute("small", lambda: small) == (small, False)
    tiles.writes.flush()
    assert tiles.get_or_compute("small", compute) == (small, True)
    tiles.close()


def test_write_queue_is_bounded_and_ordered():
    writes = WriteQueue(max_bytes=10)
    gate, done = threading.Event(), []
    assert writes.submit(6, lambda: (gate.wait(60), done.append("first")))
    assert not writes.submit(6, lambda: done.append("dropped"))  # 12 bytes would be queued
    assert writes.submit(4, lambda: done.append("second"))
    gate.set()
    writes.flush()
    assert done == ["first", "second"]
    assert writes.submit(10, lambda: done.append("third"))
    writes.close()
    assert done == ["first", "second", "third"]
    assert not writes.submit(1, lambda: done.append("after close"))
