"""The shared tile cache against a real two-worker server: hits, invalidation (catalog, files on disk and on
S3, code and settings), stampedes, limits, validators."""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import morecantile
import pytest
from diskcache import Cache

from mosaics.catalog import Catalog
from tests.conftest import SHARED_DATA, Server, start_server, stop_server
from tiler.cache import code_version
from tiler.presets import PresetRegistry
from tiler.settings import Settings

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
    assert server.get(url).headers["X-Cache"] == "hit"  # stored (after the first response)
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


# --- the versions in the key: files behind an unchanged item JSON, code and settings ---------------

REPLACED = "S2A_33TWM_20230818_0_L2A"


def red_tile(item: str, tile=INSIDE) -> str:
    return f"/collections/{C}/items/{item}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.npy?assets=red"


def test_replacing_an_asset_file_changes_tiles_and_etags(cached, server):
    """A COG replaced on disk under the same item JSON: new tiles and ETags, also through the pre-routing
    shortcut, for the item and the composites that use it."""
    cache_server, data, _ = cached
    urls = {"item": red_tile(REPLACED), "composite": composite_tile(INSIDE, max_items=5)}
    before = {name: cache_server.get(url) for name, url in urls.items()}
    assert all(cache_server.get(url).headers["X-Cache"] == "hit" for url in urls.values())
    band = data / C / REPLACED / "B04.tif"
    staged = band.with_name("B04.tif.new")
    shutil.copyfile(shared_band(OTHER), staged)
    os.replace(staged, band)  # the link to the real file becomes another scene's band
    after = {name: cache_server.get(url) for name, url in urls.items()}
    for name in urls:
        assert after[name].status_code == 200 and after[name].headers["X-Cache"] == "miss", name
        assert after[name].headers["ETag"] != before[name].headers["ETag"], name
        assert after[name].content != before[name].content, name
    assert after["item"].content == server.get(red_tile(OTHER)).content  # the new file's pixels
    assert all(cache_server.get(url).headers["X-Cache"] == "hit" for url in urls.values())


def shared_band(item: str, band: str = "B04.tif") -> Path:
    return SHARED_DATA / C / item / band


def test_code_version_covers_rendering_settings_and_presets(tmp_path):
    presets = PresetRegistry.from_files()
    version = code_version(Settings(home=tmp_path), presets)
    process = {"port": 1, "workers": 3, "root_path": "/jeo", "catalog_url": "postgresql://db/jeo",
               "cache_dir": tmp_path / "cache", "export_local_workers": 9}  # one proxy, several servers
    assert code_version(Settings(home=tmp_path / "other", **process), presets) == version
    assert code_version(Settings(home=tmp_path, composite_max_items=5), presets) != version
    assert code_version(Settings(home=tmp_path, cache_control_item="no-store"), presets) != version
    assert code_version(Settings(home=tmp_path, max_buffer=1), presets) != version
    extra = tmp_path / "presets.toml"
    extra.write_text('[[profiles]]\ncollections = ["*"]\n[profiles.presets.red]\ntitle = "Red"\nassets = ["red"]\n')
    assert code_version(Settings(home=tmp_path), PresetRegistry.from_files(extra)) != version


def test_changed_settings_do_not_reuse_cached_tiles(cached):
    """A restart with another Cache-Control on the same cache: not the remembered headers of the old one."""
    server, _, home = cached
    url = item_tile(OTHER)
    server.get(url)
    assert server.get(url).headers["X-Cache"] == "hit"
    restarted = start_server(home, env={"JEO_CACHE_CONTROL_ITEM": "public, max-age=60"})
    try:
        first, second = restarted.get(url), restarted.get(url)
    finally:
        stop_server(restarted)
    assert first.headers["X-Cache"] == "miss" and second.headers["X-Cache"] == "hit"
    assert first.headers["Cache-Control"] == second.headers["Cache-Control"] == "public, max-age=60"


@pytest.fixture(scope="module")
def s3_catalog(tmp_path_factory, shared_data, s3, monkeypatch_module) -> tuple[Server, str]:
    """A server whose catalog is on S3 (one item), with S3 file versions remembered for 1 s."""
    item_dir = shared_data / C / OTHER
    collection = json.loads((shared_data / C / "collection.json").read_text())
    collection["links"] = [link for link in collection["links"] if link["rel"] != "item" or OTHER in link["href"]]
    collection["links"] = [link for link in collection["links"] if link["rel"] not in ("root", "parent")]
    prefix = "s3-catalog"
    s3.client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{C}/collection.json", Body=json.dumps(collection).encode())
    for path in item_dir.iterdir():
        body = path.read_text().replace('"../../catalog.json"', '"../collection.json"') if path.suffix == ".json" else None
        key = f"{prefix}/{C}/{OTHER}/{path.name}"
        if body is None:
            s3.client.upload_file(str(path), s3.bucket, key)
        else:
            s3.client.put_object(Bucket=s3.bucket, Key=key, Body=body.encode())
    env = {**s3.env, "JEO_S3_ENDPOINT_URL": s3.url, "AWS_S3_ENDPOINT": s3.url.removeprefix("http://"),
           "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE", "JEO_S3_VERSION_TTL": "1"}
    for name, value in env.items():
        monkeypatch_module.setenv(name, value)
    home = tmp_path_factory.mktemp("s3-home")
    Catalog(home / "catalog.db").ingest(f"s3://{s3.bucket}/{prefix}/{C}/collection.json")
    running = start_server(home, env=env)
    yield running, f"{prefix}/{C}/{OTHER}"
    stop_server(running)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_replacing_an_s3_object_changes_tiles_and_etags(s3_catalog, s3, server):
    """An S3 object replaced under the same item JSON: after `JEO_S3_VERSION_TTL` a new ETag, and the new
    object's pixels (not GDAL's cached blocks of the old one)."""
    s3_server, prefix = s3_catalog
    url = red_tile(OTHER)
    first, again = s3_server.get(url), s3_server.get(url)
    assert first.status_code == 200, first.text
    assert again.headers["X-Cache"] == "hit" and first.content == server.get(url).content
    s3.client.upload_file(str(shared_band(CHANGED)), s3.bucket, f"{prefix}/B04.tif")
    time.sleep(1.5)
    replaced = s3_server.get(url)
    assert replaced.headers["X-Cache"] == "miss" and replaced.headers["ETag"] != first.headers["ETag"]
    assert replaced.content == server.get(red_tile(CHANGED)).content


def test_replaced_band_gets_a_new_dark_value(cached, server):
    """DOS dark values (stored per scene and band) follow the file, not only the item JSON: after a band of
    scene A is replaced by scene B's, A's dark-object-subtracted tile equals B's."""
    cache_server, data, _ = cached
    l1c, scene_a, scene_b = "sentinel-2-l1c-10m", "eolearn_S2L1C_20150711T100008", "eolearn_S2L1C_20150830T100547"
    tile = WM.tile(14.5578, 45.8705, 15)

    def url(date: str) -> str:
        return (f"/collections/{l1c}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.npy"
                f"?assets=red&correction=dos&method=first&cloud_mask=none&datetime={date}")

    before = cache_server.get(url("2015-07-11"))
    assert before.status_code == 200, before.text
    band = data / l1c / scene_a / "B04.tif"
    staged = band.with_name("B04.tif.new")
    shutil.copyfile(data / l1c / scene_b / "B04.tif", staged)
    os.replace(staged, band)
    after = cache_server.get(url("2015-07-11"))
    assert after.headers["X-Cache"] == "miss" and after.content != before.content
    assert after.content == server.get(url("2015-08-30")).content
