"""Hostile catalogs (issue 11): files outside the catalog's roots, rasters that are not self-contained GeoTIFFs,
bad `proj:epsg`, server paths in STAC responses. Real ingest (library, CLI, S3 on loopback), real GDAL, a real
server, and a loopback HTTP listener that must never see a request.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import RasterioIOError

from mosaics.catalog import Catalog
from mosaics.corrections import Corrector
from mosaics.datasets import POOL, PooledReader, open_raster
from mosaics.errors import CatalogError
from mosaics.stac import Roots
from tests.conftest import REPO_ROOT, start_server, stop_server
from tests.test_cache import copy_catalog
from tests.test_catalog import edit_json, item_json as item_path

TS = "sentinel-2-l2a-timeseries"
L1C = "sentinel-2-l1c-10m"
LANDSAT = "landsat-8-l1"
VRT_ITEM, META_ITEM, SIDECAR_ITEM = "S2A_33TWM_20230818_0_L2A", "S2A_33TWM_20230815_0_L2A", "S2B_33TWM_20230813_0_L2A"
L1C_ITEM = "eolearn_S2L1C_20150711T100008"
LANDSAT_ITEM = "LC80200392015216LGN00"
INSIDE = (11, 1113, 727)  # WebMercatorQuad z, x, y inside 33TWM, covered by every date
BASE_URL = "https://data.example.org/eo/"

LISTENER = r"""
import http.server, sys
log = open(sys.argv[1], "a", buffering=1)
class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self):
        log.write(f"{self.command} {self.path}\n")
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    do_GET = do_HEAD = do_POST = do_PUT = answer
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class Listener:
    """A loopback HTTP server in its own process that logs every request it gets (and answers 404)."""

    def __init__(self, log: Path):
        self.log = log
        log.touch()
        self.process = subprocess.Popen([sys.executable, "-c", LISTENER, str(log)], stdout=subprocess.PIPE, text=True)
        self.port = int(self.process.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[str]:
        return self.log.read_text().splitlines()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


@pytest.fixture(scope="module")
def listener(tmp_path_factory) -> Listener:
    running = Listener(tmp_path_factory.mktemp("listener") / "requests.log")
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def nothing_reached_the_listener(listener):
    """Every test of this module ends with the listener never asked for anything."""
    yield
    assert listener.requests() == []


# --- hostile files ---------------------------------------------------------------------------------


def replace(path: Path, content: bytes) -> None:
    """Put `content` where `path` is (a symlink into the shared data is replaced, never written through)."""
    path.unlink()
    path.write_bytes(content)


def vrt(source: str) -> bytes:
    """A VRT whose only band is read from `source` (GDAL follows it when it opens the file as a VRT)."""
    return (
        '<VRTDataset rasterXSize="915" rasterYSize="915"><VRTRasterBand dataType="UInt16" band="1">'
        f"<SimpleSource><SourceFilename>{source}</SourceFilename><SourceBand>1</SourceBand></SimpleSource>"
        "</VRTRasterBand></VRTDataset>"
    ).encode()


def geotiff_naming(real: Path, target: Path, elsewhere: str) -> None:
    """`target`: the real COG's pixels as a GeoTIFF whose embedded metadata names `elsewhere` as its overviews."""
    with rasterio.open(real) as src:
        profile, data = src.profile, src.read()
    target.unlink(missing_ok=True)
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(ns="OVERVIEWS", OVERVIEW_FILE=elsewhere)
    assert not target.with_name(target.name + ".aux.xml").exists()  # inside the TIFF, not a side-car


# --- ingest: roots -----------------------------------------------------------------------------------


@pytest.fixture
def copy(shared_data, tmp_path) -> Path:
    return copy_catalog(shared_data, tmp_path / "data")


def hostile_href(listener: Listener, case: str) -> str:
    return {
        "absolute path": "/etc/passwd",
        "relative path escaping the root": "../" * 12 + "etc/passwd",
        "symlink to a file outside": "./evil.tif",
        "other bucket": "s3://other-bucket/B4.tif",
        "vsicurl": f"/vsicurl/{listener.url}/B4.tif",
        "url": f"{listener.url}/B4.tif",
    }[case]


@pytest.mark.parametrize("case", [
    "absolute path", "relative path escaping the root", "symlink to a file outside", "other bucket", "vsicurl", "url",
])
def test_asset_hrefs_outside_the_roots_are_refused_before_any_read(case, shared_data, copy, tmp_path, listener,
                                                                    monkeypatch):
    monkeypatch.setenv("JEO_S3_ENDPOINT_URL", listener.url)  # an S3 request would reach the listener
    path = item_path(copy, LANDSAT, LANDSAT_ITEM)
    (path.parent / "evil.tif").symlink_to("/etc/passwd")
    edit_json(path, lambda doc: doc["assets"]["red"].update(href=hostile_href(listener, case)))
    catalog = Catalog(tmp_path / "catalog.db")
    with pytest.raises(CatalogError) as raised:
        catalog.ingest(copy, [shared_data])
    assert (raised.value.path, raised.value.field) == (str(path), "assets.red.href")
    assert "is outside the catalog root" in str(raised.value) and f"{os.path.realpath(copy)}/" in str(raised.value)
    assert catalog.collections() == []


def test_symlinks_count_by_their_target(shared_data, copy, tmp_path):
    catalog = Catalog(tmp_path / "catalog.db")
    with pytest.raises(CatalogError, match="is outside the catalog root") as raised:
        catalog.ingest(copy)  # every raster is a link into shared_data
    assert raised.value.field.startswith("assets.") and raised.value.field.endswith(".href")
    assert catalog.ingest(copy, [shared_data]).items_added == 12
    red = catalog.item(TS, SIDECAR_ITEM).assets["red"]
    assert red.href == str(copy / TS / SIDECAR_ITEM / "B04.tif")  # read through the link in the copy
    assert red.stac["href"] == f"{TS}/{SIDECAR_ITEM}/B04.tif"  # named relative to the allowed root


def test_links_outside_the_root_are_refused(shared_data, tmp_path):
    root = tmp_path / "catalog"
    root.mkdir()
    document = json.loads((shared_data / "catalog.json").read_text())
    document["links"] = [{"rel": "child", "href": str(shared_data / L1C / "collection.json")}]
    (root / "catalog.json").write_text(json.dumps(document))
    catalog = Catalog(tmp_path / "catalog.db")
    with pytest.raises(CatalogError, match="is outside the catalog root") as raised:
        catalog.ingest(root)
    assert (raised.value.path, raised.value.field) == (str(root / "catalog.json"), "links[0].href")
    assert catalog.ingest(root, [shared_data]).collections == (L1C,)


def test_roots_are_folders_and_s3_prefixes(tmp_path):
    roots = Roots.of("s3://cat/stac/catalog.json", ["s3://data/cogs", str(tmp_path / "allowed")])
    assert roots.relative("s3://cat/stac/c/i/B04.tif") == "c/i/B04.tif"
    assert roots.relative("s3://data/cogs/i/B04.tif") == "i/B04.tif"
    for outside in ("s3://cat/stac2/B04.tif", "s3://data/cogs2/B04.tif", "s3://data/cogs/../x/B04.tif",
                    "s3://cat/B04.tif", str(tmp_path / "allowed2" / "B04.tif"), "/vsis3/data/cogs/i/B04.tif"):
        assert roots.relative(outside) is None, outside
    assert roots.relative(str(tmp_path / "allowed" / "i" / "B04.tif")) == "i/B04.tif"


def test_s3_catalog_with_an_asset_in_another_bucket(s3, shared_data, tmp_path, monkeypatch):
    """A catalog in one bucket naming a COG in another: refused without a request to that bucket, unless allowed."""
    monkeypatch.setenv("JEO_S3_ENDPOINT_URL", s3.url)
    for name, value in {**s3.env, "AWS_S3_ENDPOINT": s3.url.removeprefix("http://"), "AWS_HTTPS": "NO",
                        "AWS_VIRTUAL_HOSTING": "FALSE"}.items():
        monkeypatch.setenv(name, value)
    s3.client.create_bucket(Bucket="catalogs")
    s3.client.create_bucket(Bucket="other-bucket")
    for path in (shared_data / L1C).rglob("*"):
        if path.is_file():
            s3.client.upload_file(str(path), "catalogs", f"l1c/{path.relative_to(shared_data / L1C)}")
    key = f"l1c/{L1C_ITEM}/{L1C_ITEM}.json"
    document = json.loads((shared_data / L1C / L1C_ITEM / f"{L1C_ITEM}.json").read_text())
    document["assets"]["red"]["href"] = "s3://other-bucket/cogs/B04.tif"
    s3.client.put_object(Bucket="catalogs", Key=key, Body=json.dumps(document).encode())
    s3.client.upload_file(str(shared_data / L1C / L1C_ITEM / "B04.tif"), "other-bucket", "cogs/B04.tif")

    catalog = Catalog(tmp_path / "catalog.db")
    with pytest.raises(CatalogError, match="is outside the catalog root s3://catalogs/l1c/") as raised:
        catalog.ingest("s3://catalogs/l1c/collection.json")
    assert (raised.value.path, raised.value.field) == (f"s3://catalogs/{key}", "assets.red.href")
    assert catalog.collections() == []
    report = catalog.ingest("s3://catalogs/l1c/collection.json", ["s3://other-bucket/cogs"])
    assert report.items_added == 5  # every raster opened over S3 (GDAL /vsis3/) as a GeoTIFF
    red = catalog.item(L1C, L1C_ITEM).assets["red"]
    assert (red.href, red.stac["href"]) == ("s3://other-bucket/cogs/B04.tif", "B04.tif")


# --- ingest: rasters -----------------------------------------------------------------------------------


def hostile_rasters(listener: Listener, real: Path) -> dict[str, Callable[[Path], None]]:
    """Ways to make a file a raster that names other files (`real`: a COG to take pixels from), by case name."""
    return {
        "VRT named .tif, source over HTTP": lambda path: replace(path, vrt(f"/vsicurl/{listener.url}/vrt-source.tif")),
        "VRT named .tif, source /etc/passwd": lambda path: replace(path, vrt("/etc/passwd")),
        "GeoTIFF whose metadata names an HTTP overview": lambda path: geotiff_naming(
            real, path, f"/vsicurl/{listener.url}/overview.tif"),
    }


RASTER_CASES = ["VRT named .tif, source over HTTP", "VRT named .tif, source /etc/passwd",
                "GeoTIFF whose metadata names an HTTP overview"]


@pytest.mark.parametrize("case", RASTER_CASES)
def test_rasters_that_name_other_files_are_refused_at_ingest(case, shared_data, copy, tmp_path, listener):
    path = item_path(copy, LANDSAT, LANDSAT_ITEM)
    hostile_rasters(listener, shared_data / LANDSAT / LANDSAT_ITEM / "B4.tif")[case](path.parent / "B4.tif")
    catalog = Catalog(tmp_path / "catalog.db")
    with pytest.raises(CatalogError, match="is not a readable self-contained GeoTIFF") as raised:
        catalog.ingest(copy, [shared_data])
    assert (raised.value.path, raised.value.field) == (str(path), "assets.red.href")


@pytest.mark.parametrize("case", RASTER_CASES)
def test_rasters_that_name_other_files_are_never_opened(case, shared_data, copy, tmp_path, listener):
    """Files replaced after the ingest: the dataset pool, rio-tiler readers and the DOS dark values refuse them."""
    catalog = Catalog(tmp_path / "catalog.db")
    catalog.ingest(copy, [shared_data])
    item = catalog.item(L1C, L1C_ITEM)
    hostile_rasters(listener, shared_data / L1C / L1C_ITEM / "B04.tif")[case](Path(item.assets["red"].href))
    path = item.assets["red"].href
    with pytest.raises(RasterioIOError):
        open_raster(path)
    with pytest.raises(RasterioIOError):
        open_raster(path, overview_level=0)
    with pytest.raises(RasterioIOError), POOL.open(path):
        pass
    with pytest.raises(RasterioIOError), PooledReader(path):
        pass
    with pytest.raises(RasterioIOError):
        Corrector(tmp_path / "dark-values").dark_value(item, "red")


def test_side_car_files_are_ignored(shared_data, copy, listener):
    """A .ovr, .aux.xml or .msk next to a COG (each could be a VRT or name other files) is never opened."""
    path = copy / TS / SIDECAR_ITEM / "B04.tif"
    for suffix in (".ovr", ".msk"):
        path.with_name(path.name + suffix).write_bytes(vrt(f"/vsicurl/{listener.url}/side-car{suffix}"))
    path.with_name(path.name + ".aux.xml").write_text(
        f'<PAMDataset><Metadata domain="OVERVIEWS"><MDI key="OVERVIEW_FILE">/vsicurl/{listener.url}/aux.tif'
        "</MDI></Metadata></PAMDataset>"
    )
    with open_raster(str(path)) as dataset, rasterio.open(shared_data / TS / SIDECAR_ITEM / "B04.tif") as real:
        assert dataset.overviews(1) == real.overviews(1) == [2, 4]
        assert np.array_equal(dataset.read(1, out_shape=(229, 229)), real.read(1, out_shape=(229, 229)))
        assert dataset.mask_flag_enums == real.mask_flag_enums


# --- ingest: proj:epsg -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "field"), [
    (lambda doc: doc["properties"].update({"proj:epsg": 999999}), "properties.proj:epsg"),
    (lambda doc: doc["properties"].update({"proj:epsg": "32616"}), "properties.proj:epsg"),
    (lambda doc: doc["assets"]["red"].update({"proj:code": "EPSG:32699"}), "assets.red.proj:code"),
], ids=["unknown code", "string", "unknown proj:code"])
def test_bad_proj_epsg_is_refused_at_ingest(change, field, shared_data, copy, tmp_path):
    path = item_path(copy, LANDSAT, LANDSAT_ITEM)
    edit_json(path, change)
    with pytest.raises(CatalogError) as raised:
        Catalog(tmp_path / "catalog.db").ingest(copy, [shared_data])
    assert (raised.value.path, raised.value.field) == (str(path), field)


# --- jeo ingest --------------------------------------------------------------------------------------------


def test_cli_ingest_uses_the_allowed_roots_setting(shared_data, copy, tmp_path):
    env = {**os.environ, "JEO_HOME": str(tmp_path / "home")}
    env.pop("JEO_INGEST_ALLOWED_ROOTS", None)
    command = [sys.executable, "-m", "tiler.cli", "ingest", str(copy)]
    refused = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    assert refused.returncode == 1 and "is outside the catalog root" in refused.stderr
    assert f"Error: {copy}/{TS}/" in refused.stderr and ".json: field 'assets." in refused.stderr  # file and field
    env["JEO_INGEST_ALLOWED_ROOTS"] = f"s3://unused-bucket, {shared_data}"
    accepted = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    assert accepted.returncode == 0, accepted.stderr
    assert "items added 12" in accepted.stdout


# --- a real server over a catalog whose files turned hostile after the ingest ------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, shared_data, listener):
    """A server over a linked copy of the catalog, files replaced after the ingest: item VRT_ITEM's red is a VRT
    reading from the listener, META_ITEM's red a GeoTIFF naming an overview on the listener, SIDECAR_ITEM's
    red has side-car files pointing there; Landsat's and one L1C item's proj:epsg are unknown codes (a catalog
    ingested before they were checked). STAC asset hrefs are joined to a public base URL."""
    root = tmp_path_factory.mktemp("hostile")
    data = copy_catalog(shared_data, root / "data")
    home = root / "home"
    home.mkdir()
    catalog = Catalog(home / "catalog.db")
    catalog.ingest(data, [shared_data])
    catalog.close()
    replace(data / TS / VRT_ITEM / "B04.tif", vrt(f"/vsicurl/{listener.url}/vrt-source.tif"))
    geotiff_naming(shared_data / TS / META_ITEM / "B04.tif", data / TS / META_ITEM / "B04.tif",
                   f"/vsicurl/{listener.url}/overview.tif")
    sidecar = data / TS / SIDECAR_ITEM / "B04.tif"
    for suffix in (".ovr", ".msk"):
        sidecar.with_name(sidecar.name + suffix).write_bytes(vrt(f"/vsicurl/{listener.url}/side-car{suffix}"))
    with sqlite3.connect(home / "catalog.db") as db:
        sql = "UPDATE assets SET epsg = ? WHERE item = (SELECT pk FROM items WHERE id = ?)"
        db.execute(sql, (32699, LANDSAT_ITEM))
        db.execute(sql, (999999, L1C_ITEM))
    server = start_server(home, env={"JEO_STAC_ASSET_BASE_URL": BASE_URL, "JEO_CACHE_SIZE_MB": "0"})
    yield server, data
    stop_server(server)


def item_tile(item: str, collection: str = TS, tile=INSIDE, **params):
    z, x, y = tile
    return f"/collections/{collection}/items/{item}/tiles/WebMercatorQuad/{z}/{x}/{y}.npy", params or {"assets": "red"}


def test_hostile_rasters_fail_their_item_and_are_skipped_in_composites(hostile, server):
    hostile_server, _ = hostile
    for item in (VRT_ITEM, META_ITEM):
        path, params = item_tile(item)
        response = hostile_server.get(path, params=params)
        assert response.status_code != 200, (item, response.text)  # 502 naming the item once errors are mapped
        point = hostile_server.get(f"/collections/{TS}/items/{item}/point/15.9,46.45", params={"assets": "red"})
        assert point.status_code != 200, (item, point.text)
    z, x, y = INSIDE
    composite = hostile_server.get(f"/collections/{TS}/tiles/WebMercatorQuad/{z}/{x}/{y}.npy",
                                   params={"assets": "red", "method": "median"})
    assert composite.status_code == 200, composite.text
    assert set(composite.headers["X-Items-Skipped"].split(",")) == {VRT_ITEM, META_ITEM}
    # Side-car files are ignored: the tile is the one of the untouched catalog.
    path, params = item_tile(SIDECAR_ITEM)
    ours, reference = hostile_server.get(path, params=params), server.get(path, params=params)
    assert ours.status_code == reference.status_code == 200
    assert ours.content == reference.content


def test_unknown_proj_epsg_in_the_catalog_breaks_nothing(hostile):
    """The server started; the UTM sets come from valid codes; items with unknown codes are read by their files'
    own CRS."""
    hostile_server, _ = hostile
    sets = {t["id"] for t in hostile_server.get("/tileMatrixSets").json()["tileMatrixSets"]}
    assert "UTM33NWGS84Quad" in sets and not any(s.startswith("UTM99") for s in sets)
    path, params = item_tile(LANDSAT_ITEM, LANDSAT, (11, 526, 840))
    assert hostile_server.get(path, params=params).status_code == 200
    path, params = item_tile(L1C_ITEM, L1C, (14, 8854, 5837))
    assert hostile_server.get(path, params=params).status_code == 200
    assert hostile_server.get(f"/collections/{L1C}/items/{L1C_ITEM}/info", params={"assets": "red"}).status_code == 200
    capabilities = hostile_server.get("/wmts", params={"SERVICE": "WMTS", "REQUEST": "GetCapabilities"})
    assert capabilities.status_code == 200 and f"{LANDSAT}.truecolor" in capabilities.text


# --- STAC responses ----------------------------------------------------------------------------------------


def strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def stac_documents(server, collection: str, item: str) -> list:
    return [server.get(path).json() for path in (
        "/", "/collections", f"/collections/{collection}", f"/collections/{collection}/items",
        f"/collections/{collection}/items/{item}",
    )]


def assert_no_server_paths(documents: list, *paths: Path) -> None:
    forbidden = {str(p) for p in paths} | {os.path.realpath(p) for p in paths}
    for text in (s for doc in documents for s in strings(doc)):
        assert not text.startswith("/") and not any(p in text for p in forbidden), text


def test_stac_responses_show_asset_hrefs_relative_to_the_ingest_root(server, shared_data, jeo_home):
    documents = stac_documents(server, TS, SIDECAR_ITEM)
    assert_no_server_paths(documents, shared_data, jeo_home)
    item, source = documents[-1], json.loads(item_path(shared_data, TS, SIDECAR_ITEM).read_text())
    assert {key: asset["href"] for key, asset in item["assets"].items()} == {
        key: f"{TS}/{SIDECAR_ITEM}/{asset['href'].removeprefix('./')}" for key, asset in source["assets"].items()
    }
    assert {key: {**asset, "href": None} for key, asset in item["assets"].items()} == {
        key: {**asset, "href": None} for key, asset in source["assets"].items()
    }  # keys, roles, types and every other field as ingested


def test_stac_responses_join_hrefs_to_the_public_base_url(hostile, shared_data):
    hostile_server, data = hostile
    documents = stac_documents(hostile_server, LANDSAT, LANDSAT_ITEM)
    assert_no_server_paths(documents, shared_data, data, hostile_server.home)
    assert documents[-1]["assets"]["red"]["href"] == f"{BASE_URL}{LANDSAT}/{LANDSAT_ITEM}/B4.tif"
