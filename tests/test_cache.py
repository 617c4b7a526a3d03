"""The shared tile cache against a real two-worker server: hits, invalidation, stampedes, limits, validators."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import morecantile
import pytest
from diskcache import Cache

from mosaics.catalog import Catalog
from tests.conftest import SHARED_DATA, start_server, stop_server

C = "sentinel-2-l2a-timeseries"
WM = morecantile.tms.get("WebMercatorQuad")
CHANGED = "S2B_33TWM_20230820_0_L2A"  # 20 August: does not cover the western wedge
OTHER = "S2B_33TWM_20230813_0_L2A"
INSIDE = WM.tile(15.9, 46.45, 10)
WEDGE_ONLY = WM.tile(15.05, 46.7, 11)  # west of the 10/15/20 August swath edge


def copy_catalog(shared_data: Path, target: Path) -> Path:
    """The real catalog with its JSON copied (editable) and its rasters linked: ingest it with
    `allowed_roots=[shared_data]` (the links point outside the copy)."""
    def link(src, dst):
        if src.endswith(".json"):
            shutil.copy2(src, dst)
        else:
            Path(dst).symlink_to(src)

    shutil.copytree(shared_data, target, copy_function=link)
    return target


@pytest.fixture(scope="module")
def cached(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("cache")
    data = copy_catalog(shared_data, root / "data")
    home = root / "home"
    home.mkdir()
    Catalog(home / "catalog.db").ingest(data / "catalog.json", [shared_data])
    server = start_server(home, workers=2)
    yield server, data, home
    stop_server(server)


def item_tile(item: str, tile=INSIDE) -> str:
    return f"/collections/{C}/items/{item}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png?preset=truecolor"


def composite_tile(tile, **extra) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"assets": "red,green,blue", "rescale": "0,0.3", **extra}.items())
    return f"/collections/{C}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png?{query}"


def test_repeated_tile_is_a_hit(cached):
    server, _, _ = cached
    first, second = server.get(item_tile(OTHER)), server.get(item_tile(OTHER))
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
    assert first.content == second.content
    assert second.headers["Server-Timing"].startswith("cache;dur=")
    varying = {"date", "server-timing", "x-cache"}
    assert {k: v for k, v in first.headers.items() if k not in varying} == {
        k: v for k, v in second.headers.items() if k not in varying
    }


def test_hit_through_a_differently_written_request(cached):
    """The request-as-sent shortcut misses on new spelling; the canonical key still finds the tile."""
    server, _, _ = cached
    tile = WM.tile(16.0, 46.5, 10)
    url = composite_tile(tile, method="median")
    assert server.get(url).headers["X-Cache"] == "miss"
    reordered = url.replace("assets=red,green,blue&rescale=0,0.3", "rescale=0,0.3&assets=red,green,blue")
    defaults_spelled_out = url + "&sortby=-datetime&mask_dilation=0"
    assert [server.get(u).headers["X-Cache"] for u in (url, reordered, defaults_spelled_out)] == ["hit"] * 3
    assert len({server.get(u).content for u in (url, reordered, defaults_spelled_out)}) == 1


def test_reingest_invalidates_exactly_the_tiles_that_used_the_item(cached):
    server, data, home = cached
    urls = {
        "changed item": item_tile(CHANGED),
        "other item": item_tile(OTHER),
        "composite with it": composite_tile(INSIDE),
        "composite without it": composite_tile(WEDGE_ONLY),
    }
    for url in urls.values():
        server.get(url)
    assert all(server.get(url).headers["X-Cache"] == "hit" for url in urls.values())
    path = data / C / CHANGED / f"{CHANGED}.json"
    document = json.loads(path.read_text())
    document["properties"]["testdata:note"] = "re-processed"
    path.write_text(json.dumps(document))
    report = Catalog(home / "catalog.db").ingest(data / "catalog.json", [SHARED_DATA])
    assert report.items_updated == 1
    after = {name: server.get(url).headers["X-Cache"] for name, url in urls.items()}
    assert after == {"changed item": "miss", "other item": "hit", "composite with it": "miss", "composite without it": "hit"}


def test_concurrent_requests_compute_a_new_tile_once(cached):
    server, _, home = cached
    url = server.url + composite_tile(INSIDE, method="medoid", max_items=5)
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: client.get(url), range(16)))
    assert all(r.status_code == 200 for r in responses)
    assert [r.headers["X-Cache"] for r in responses].count("miss") == 1
    assert len({r.content for r in responses}) == 1
    key = responses[0].headers["ETag"].strip('"')
    log = "".join(p.read_text() for p in home.glob("server-*.log"))
    assert sum(1 for line in log.splitlines() if "tile computed" in line and key in line) == 1


def test_corrupted_entry_is_a_miss(cached):
    server, _, home = cached
    url = item_tile(OTHER, WM.tile(16.1, 46.3, 11))
    original = server.get(url)
    cache = Cache(str(home / "tile-cache"))
    key = next(k for k in cache.iterkeys() if k.startswith(original.headers["ETag"].strip('"')))
    blob = cache.get(key)
    cache.set(key, blob[:20] + bytes([blob[20] ^ 0xFF]) + blob[21:])
    again = server.get(url)
    assert again.headers["X-Cache"] == "miss"
    assert again.content == original.content


def test_validators_and_cache_control(cached):
    server, _, _ = cached
    response = server.get(item_tile(OTHER))
    etag = response.headers["ETag"]
    not_modified = server.get(item_tile(OTHER), headers={"If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["ETag"] == etag
    assert response.headers["Cache-Control"] == "public, max-age=86400"
    fixed = server.get(composite_tile(INSIDE, datetime="2023-08-10/2023-08-20"))
    latest = server.get(composite_tile(INSIDE))
    assert fixed.headers["Cache-Control"] == "public, max-age=86400"
    assert latest.headers["Cache-Control"] == "public, max-age=300"
    assert fixed.headers["ETag"] != latest.headers["ETag"]


def test_cache_never_exceeds_its_size_limit(tmp_path, shared_data):
    home = tmp_path / "home"
    home.mkdir()
    Catalog(home / "catalog.db").ingest(shared_data / C / "collection.json")
    limit = 2**20
    server = start_server(home, env={"JEO_CACHE_SIZE_MB": "1"})
    try:
        tiles = list(WM.tiles(15.3, 46.2, 16.2, 46.8, [11]))[:30]
        assert len(tiles) == 30
        stored = 0
        for tile in tiles:
            response = server.get(item_tile(OTHER, tile).replace("preset=truecolor", "assets=red,green,blue")
                                  + "&rescale=0,0.3&tilesize=512")
            assert response.status_code == 200, response.text
            stored += len(response.content)
        assert stored > 1.5 * limit
        assert Cache(str(home / "tile-cache")).volume() <= limit
    finally:
        stop_server(server)
