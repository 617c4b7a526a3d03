"""The tile cache's directory full or read-only: tiles are still served (uncached) with a warning, never a 5xx.

The tests run as root, so permissions do not stop writes: the cache lives on a small tmpfs (full), a
read-only tmpfs (read-only from the start) or gets a read-only tmpfs mounted over it while the server
runs (new files land on the read-only one). Mounting needs CAP_SYS_ADMIN; without it the tests skip.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import morecantile
import pytest

from mosaics.catalog import Catalog
from tests.conftest import Server, start_server, stop_server

C = "sentinel-2-l2a-timeseries"
ITEM = "S2B_33TWM_20230813_0_L2A"
TILES = list(morecantile.tms.get("WebMercatorQuad").tiles(15.3, 46.2, 16.2, 46.8, [11]))[:12]


@contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `path` (over whatever is there) for the duration."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.fixture(scope="module")
def home(tmp_path_factory, shared_data) -> Path:
    home = tmp_path_factory.mktemp("cache-faults")
    Catalog(home / "catalog.db").ingest(shared_data / C / "collection.json")
    return home


def tile_url(tile, size: int = 256, fmt: str = "npy") -> str:
    return (f"/collections/{C}/items/{ITEM}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.{fmt}"
            f"?assets=red,green,blue&rescale=0,0.3&tilesize={size}")


def log_text(server: Server) -> str:
    return "".join(path.read_text() for path in server.home.glob(f"server-{server.url.rsplit(':', 1)[1]}.log"))


def served(server: Server, urls: list[str]) -> list[str]:
    """X-Cache of each response; every one must be a 200."""
    caches = []
    for url in urls:
        response = server.get(url)
        assert response.status_code == 200, (url, response.status_code, response.text)
        caches.append(response.headers["X-Cache"])
    return caches


@contextmanager
def serving(home: Path, cache: Path) -> Iterator[Server]:
    """A server whose tile cache is in `cache`."""
    server = start_server(home, env={"JEO_CACHE_DIR": str(cache)})
    try:
        yield server
    finally:
        stop_server(server)


def test_full_cache_directory(home, tmp_path):
    """A 2 MiB tmpfs fills after two 768 KiB tiles (files), then with small tiles (SQLite)."""
    cache = tmp_path / "cache"
    with tmpfs(cache, "size=2m"), serving(home, cache) as server:
        first = tile_url(TILES[0])
        assert served(server, [first, first]) == ["miss", "hit"]  # the cache works until it is full
        assert set(served(server, [tile_url(t) for t in TILES[1:]])) == {"miss"}
        assert set(served(server, [tile_url(t, 64, "png") for t in TILES])) == {"miss"}
    assert "tile cache store failed (OSError: [Errno 28] No space left on device)" in log_text(server)
    assert "Traceback" not in log_text(server)


def test_cache_directory_turning_read_only(home, tmp_path):
    """A read-only tmpfs mounted over the cache directory of a running server."""
    cache = tmp_path / "cache"
    with tmpfs(cache, "size=64m"), serving(home, cache) as server:
        first = tile_url(TILES[0])
        assert served(server, [first, first]) == ["miss", "hit"]
        with tmpfs(cache, "ro,size=1m"):
            assert set(served(server, [tile_url(t) for t in TILES[1:4]] + [first])) == {"miss"}
    assert "tile cache store failed (FileNotFoundError" in log_text(server)  # its new subdirectory cannot be made
    assert "Traceback" not in log_text(server)


def test_read_only_cache_directory_at_start(home, tmp_path):
    cache = tmp_path / "cache"
    with tmpfs(cache, "ro,size=1m"), serving(home, cache) as server:
        assert served(server, [tile_url(TILES[0])] * 2) == ["miss", "miss"]
    assert "cannot be opened" in log_text(server) and "serving tiles uncached" in log_text(server)


def test_read_only_dark_value_store(shared_data, tmp_path, server):
    """A read-only `$JEO_HOME/dark-values` neither stops the server nor fails `correction=dos`: the dark values
    are computed per request, and the tiles equal those of a server whose store works."""
    landsat = "landsat-8-l1"
    home = tmp_path / "home"
    home.mkdir()
    Catalog(home / "catalog.db").ingest(shared_data / landsat / "collection.json")
    tile = morecantile.tms.get("WebMercatorQuad").tile(-87.45, 30.70, 13)
    url = (f"/collections/{landsat}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.npy"
           "?assets=blue&method=first&correction=dos&cloud_mask=none")
    with tmpfs(home / "dark-values", "ro,size=1m"):
        read_only = start_server(home, env={"JEO_CACHE_SIZE_MB": "0"})
        try:
            responses = [read_only.get(url) for _ in range(2)]
        finally:
            stop_server(read_only)
    expected = server.get(url)
    assert expected.status_code == 200, expected.text
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.content == expected.content
    assert "dark-value store" in log_text(read_only)
