"""Several tile servers sharing a PostgreSQL/pgSTAC catalog behind Debian's nginx (docker/nginx.conf), started by
scripts/scale-out-start.sh on loopback: tiles byte-identical to a single SQLite server's, public URLs with the proxy's
prefix, the proxy's cache and gzip, exports shared by every server, failover."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import morecantile
import numpy as np
import pytest
import rasterio
from owslib.wmts import WebMapTileService

from tests.conftest import REPO_ROOT
from tests.test_wmts import decode

C = "sentinel-2-l2a-timeseries"
ITEM = "S2B_33TWM_20230813_0_L2A"
PREFIX = "/jeo"
TILES = (
    f"/collections/{C}/items/{ITEM}/tiles/WebMercatorQuad/11/1113/727.png?assets=B04,B03,B02&rescale=0,0.3",
    f"/collections/{C}/items/{ITEM}/tiles/WebMercatorQuad/11/1113/727@2x.webp?assets=red,green,blue&rescale=0,0.3",
    f"/collections/{C}/items/{ITEM}/tiles/WebMercatorQuad/11/1113/727.npy?index=ndvi",
    f"/collections/{C}/items/{ITEM}/tiles/WebMercatorQuad/10/555/363.png?preset=falsecolor",
    f"/collections/{C}/tiles/WebMercatorQuad/10/555/363.png?preset=cloudfree-truecolor",
    f"/wmts/1.0.0/{C}.ndvi/default/2023-08-13/WebMercatorQuad/11/727/1113.png",
    f"/wmts?SERVICE=WMTS&REQUEST=GetTile&LAYER={C}.truecolor&TILEMATRIXSET=WebMercatorQuad&TILEMATRIX=11"
    "&TILEROW=727&TILECOL=1113&FORMAT=image/png&TIME=2023-08-13",
)


@dataclass
class Proxied:
    """nginx on `url` (with the prefix) in front of the tile servers `servers` ({url: pid})."""

    url: str
    directory: Path
    servers: dict[str, int]
    catalog_url: str
    home: Path  # shared by the servers (as a shared file system would be)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=120, **kwargs)

    def log(self) -> list[str]:
        return (self.directory / "access.log").read_text().splitlines()


@pytest.fixture(scope="module")
def proxied(tmp_path_factory, shared_data, postgres) -> Proxied:
    """Two `jeo serve` sharing one PostgreSQL catalog, each with its own tile cache (and JEO_HOME, as on two
    hosts), behind nginx with prefix /jeo."""
    from mosaics.catalog import Catalog

    catalog_url = postgres.database()
    Catalog(catalog_url).ingest(shared_data)
    home = tmp_path_factory.mktemp("scale-out-home")
    directory = tmp_path_factory.mktemp("scale-out")
    environment = {**os.environ, "JEO_HOME": str(home), "JEO_CATALOG_URL": catalog_url}
    started = subprocess.run(
        ["bash", "scripts/scale-out-start.sh", "-n", "2", "--prefix", PREFIX, str(directory)],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600,
    )
    assert started.returncode == 0, started.stderr  # the script stops what it started when it fails
    servers = {url: int(pid) for url, pid in (line.split() for line in (directory / "servers").read_text().splitlines())}
    yield Proxied(started.stdout.strip().splitlines()[-1], directory, servers, catalog_url, home)
    subprocess.run(["bash", "scripts/scale-out-stop.sh", str(directory)], cwd=REPO_ROOT, timeout=120, check=True)


def test_start_script_prints_the_proxy_url(proxied):
    assert proxied.url.startswith("http://127.0.0.1:") and proxied.url.endswith(PREFIX)
    assert (proxied.directory / "url").read_text().strip() == proxied.url
    assert len(proxied.servers) == 2
    assert proxied.get("/healthz").json()["collections"] == 4


def test_tiles_through_the_proxy_equal_a_single_server_byte_for_byte(proxied, server):
    for path in TILES:
        direct = server.get(path)
        first, second = proxied.get(path), proxied.get(path)
        assert direct.status_code == first.status_code == second.status_code == 200, path
        assert first.content == direct.content and second.content == direct.content, path
        assert first.headers["content-type"] == direct.headers["content-type"]
        # the ETag depends on the request and the catalog versions only: every host agrees
        assert first.headers["etag"] == second.headers["etag"] == direct.headers["etag"], path
        assert (first.headers["x-cache-status"], second.headers["x-cache-status"]) == ("MISS", "HIT"), path
    upstreams = {line.split("upstream=")[1].split()[0] for line in proxied.log() if "/tiles/" in line or "/wmts" in line}
    assert {url.removeprefix("http://") for url in proxied.servers} <= upstreams  # both servers took requests


def test_conditional_requests_are_answered_by_the_proxy_cache(proxied):
    path = TILES[0]
    etag = proxied.get(path).headers["etag"]
    again = proxied.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag and again.headers["x-cache-status"] == "HIT"
    assert proxied.get(path, headers={"If-None-Match": '"other"'}).status_code == 200


def test_only_cacheable_responses_are_cached_and_credentials_bypass_the_cache(proxied):
    for path in ("/collections", "/exports", f"/collections/{C}/items?limit=2"):
        statuses = [proxied.get(path).headers["x-cache-status"] for _ in range(2)]
        assert statuses == ["MISS", "MISS"], path  # no Cache-Control: never stored
    path = TILES[3]
    assert proxied.get(path).headers["x-cache-status"] in ("MISS", "HIT")
    bearer = proxied.get(path, headers={"Authorization": "Bearer x"})
    token = proxied.get(path + "&access_token=x")
    assert bearer.headers["x-cache-status"] == token.headers["x-cache-status"] == "BYPASS"


def test_json_and_xml_are_gzipped(proxied):
    for path in ("/wmts/1.0.0/WMTSCapabilities.xml", "/collections", "/openapi.json"):
        response = proxied.get(path, headers={"Accept-Encoding": "gzip"})
        assert response.headers["content-encoding"] == "gzip", path
        assert response.num_bytes_downloaded < len(response.content) / 3  # compressed on the wire
    tile = proxied.get(TILES[0], headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in tile.headers  # images are not recompressed


def test_wmts_capabilities_carry_the_proxy_url_and_prefix(proxied, server):
    capabilities = proxied.get("/wmts/1.0.0/WMTSCapabilities.xml").text
    wmts = WebMapTileService(f"{proxied.url}/wmts/1.0.0/WMTSCapabilities.xml", version="1.0.0")
    templates = [resource["template"] for layer in wmts.contents.values() for resource in layer.resourceURLs]
    assert templates and all(t.startswith(f"{proxied.url}/wmts/1.0.0/") for t in templates)
    assert f'xlink:href="{proxied.url}/wmts?"' in capabilities
    assert all(url not in capabilities for url in proxied.servers)
    # GDAL's WMTS driver follows those templates through the proxy
    source = f"WMTS:{proxied.url}/wmts/1.0.0/WMTSCapabilities.xml,layer={C}.truecolor,tilematrixset=WebMercatorQuad"
    tms = morecantile.tms.get("WebMercatorQuad")
    with rasterio.Env(GDAL_HTTP_TIMEOUT=60), rasterio.open(source) as dataset:
        z = next(m.id for m in tms.tileMatrices if np.isclose(m.cellSize, dataset.transform.a, rtol=1e-6))
        tile = tms.tile(15.8, 46.5, int(z))
        left, _, _, top = tms.xy_bounds(tile)
        col = round((left - dataset.transform.c) / dataset.transform.a)
        row = round((dataset.transform.f - top) / -dataset.transform.e)
        pixels = dataset.read(window=rasterio.windows.Window(col, row, 256, 256))
    latest = server.get(f"/collections/{C}/items", params={"limit": 1}).json()["features"][0]["id"]
    direct = server.get(f"/collections/{C}/items/{latest}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png",
                        params={"preset": "truecolor"})
    np.testing.assert_array_equal(pixels, decode(direct.content))


def test_tilejson_stac_and_docs_carry_the_proxy_url_and_prefix(proxied):
    tilejson = proxied.get(f"/collections/{C}/items/{ITEM}/WebMercatorQuad/tilejson.json?preset=ndvi").json()
    assert tilejson["tiles"][0].startswith(f"{proxied.url}/collections/{C}/items/{ITEM}/tiles/WebMercatorQuad/")
    assert tilejson["name"] == f"{C}/items/{ITEM}"
    composite = proxied.get(f"/collections/{C}/WebMercatorQuad/tilejson.json?preset=cloudfree-truecolor").json()
    assert composite["tiles"][0].startswith(f"{proxied.url}/collections/{C}/tiles/")
    assert httpx.get(tilejson["tiles"][0].format(z=11, x=1113, y=727), timeout=60).status_code == 200
    links = [link["href"] for link in proxied.get("/").json()["links"]]
    links += [link["href"] for link in proxied.get(f"/collections/{C}").json()["links"]]
    links += [link["href"] for link in proxied.get(f"/collections/{C}/items/{ITEM}").json()["links"]]
    assert links and all(href.startswith(proxied.url) for href in links)
    assert f"url: '{PREFIX}/openapi.json'" in proxied.get("/docs").text
    assert proxied.get("/openapi.json").status_code == 200


EXPORT = {"collection": C, "assets": ["red", "green", "blue"], "method": "median", "datetime": "2023-08-01/2023-08-31",
          "bbox": [499980, 5090220, 609780, 5200020], "bbox_crs": "EPSG:32633", "executor": "local"}  # all of 33TWM


def test_exports_submitted_through_one_server_are_shared_by_all(proxied):
    """Exports submitted through server A are listed and readable through B and the proxy, cancelled through B and
    through the proxy (A stops their workers), and a finished one downloads from B: the records are in
    PostgreSQL, the files on the shared file system."""
    a, b = proxied.servers

    def submit(body: dict) -> str:
        response = httpx.post(f"{a}/exports", json={**EXPORT, **body}, timeout=120)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    small = submit({"resolution": 960, "destination": "scale-out/small"})
    large = [submit({"resolution": 60, "chunk_size": 256, "destination": f"scale-out/large-{i}"}) for i in (1, 2)]
    import psycopg

    with psycopg.connect(proxied.catalog_url) as conn:  # the records are PostgreSQL rows, not a host's SQLite file
        assert {small, *large} <= {row[0] for row in conn.execute("SELECT id FROM jeo.exports")}
    for base in (b, proxied.url):
        listed = httpx.get(f"{base}/exports", params={"limit": 100}, timeout=60).json()["exports"]
        assert {small, *large} <= {export["id"] for export in listed}, base
        for export_id in large:
            record = httpx.get(f"{base}/exports/{export_id}", timeout=60).json()
            assert record["status"] in ("queued", "running") and record["progress"]["chunks_total"] == 64, record
            assert record["links"][0]["href"].endswith(f"{PREFIX}/exports/{export_id}")  # the public URL
    for base, export_id in zip((b, proxied.url), large):
        assert httpx.delete(f"{base}/exports/{export_id}", timeout=60).json()["status"] == "canceled"
        assert httpx.get(f"{a}/exports/{export_id}", timeout=60).json()["status"] == "canceled"
    deadline = time.monotonic() + 120
    while True:
        record = httpx.get(f"{b}/exports/{small}", timeout=60).json()
        left = [i for i in large if (proxied.home / "exports-work" / i).exists()]  # A removes canceled work
        if record["status"] not in ("queued", "running") and not left:
            break
        assert time.monotonic() < deadline, (record, left)
        time.sleep(0.5)
    assert record["status"] == "finished" and record["result"] == "scale-out/small.tif", record
    result = httpx.get(f"{b}/exports/{small}/result", timeout=60)
    assert result.status_code == 200
    assert result.content == (proxied.home / "exports" / "scale-out" / "small.tif").read_bytes()
    assert not any((proxied.home / "exports" / "scale-out" / f"large-{i}.tif").exists() for i in (1, 2))


def test_killing_a_server_mid_load_loses_no_request(proxied, server):
    """Distinct tiles (none cached) from 4 clients; server A is SIGKILLed after a quarter of them."""
    tms = morecantile.tms.get("WebMercatorQuad")
    tiles = list(tms.tiles(15.2, 46.1, 16.2, 46.8, [12]))[:48]
    paths = [f"/collections/{C}/items/{ITEM}/tiles/WebMercatorQuad/12/{t.x}/{t.y}.png?assets=red&rescale=0,0.{i + 10}"
             for i, t in enumerate(tiles)]
    with ThreadPoolExecutor(4) as pool:
        expected = dict(zip(paths, pool.map(lambda p: server.get(p).content, paths)))
    victim_url, victim_pid = next(iter(proxied.servers.items()))
    survivor = next(url for url in proxied.servers if url != victim_url).removeprefix("http://")
    victim = victim_url.removeprefix("http://")
    done, lock, killed = [], threading.Lock(), threading.Event()

    def client(share: list[str]) -> list[tuple[str, int, bytes]]:
        results = []
        with httpx.Client(timeout=120) as http:
            for path in share:
                response = http.get(proxied.url + path)
                results.append((path, response.status_code, response.content))
                with lock:
                    done.append(path)
                    if len(done) == len(paths) // 4 and not killed.is_set():
                        os.kill(victim_pid, signal.SIGKILL)
                        killed.set()
        return results

    with ThreadPoolExecutor(4) as pool:
        results = [r for share in pool.map(client, [paths[i::4] for i in range(4)]) for r in share]
    assert killed.is_set()
    assert len(results) == len(paths)
    assert [(p, status) for p, status, _ in results if status != 200] == []
    assert all(content == expected[p] for p, _, content in results)
    lines = [line for line in proxied.log() if "/tiles/WebMercatorQuad/12/" in line]
    assert any(f"upstream={victim} " in line for line in lines)  # A served some before it died
    assert any(f"upstream={victim}, {survivor} " in line for line in lines)  # …and the proxy failed over
    assert all(" 200 " in line for line in lines)
