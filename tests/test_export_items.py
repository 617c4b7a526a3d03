"""Finished exports as layers (issue 13, item 3): items of the collection `exports`, each visible to its owner only.

A real uvicorn with tokens from the real CLI (`owner` and `second`, both with --exports), a SLURM export of the
owner (the local cluster, as in test_exports) and an anonymous local export; the item's tiles are compared with
the export's GeoTIFF read with rasterio (tests.reference.nearest_tile), the WMTS through OWSLib.
"""

from __future__ import annotations

import io
from pathlib import Path

import morecantile
import numpy as np
import pytest
import rasterio
import rasterio.warp
from owslib.wmts import WebMapTileService

from tests.conftest import start_server, stop_server
from tests.reference import nearest_tile
from tests.test_access import call, create_token, jeo, wait_finished
from tests.test_exports import slurm  # noqa: F401 - fixture

C = "sentinel-2-l2a-timeseries"
WM = morecantile.tms.get("WebMercatorQuad")
EXPORT = {"collection": C, "assets": ["red", "green", "blue"], "method": "median", "cloud_mask": "scl",
          "datetime": "2023-08-01/2023-08-31", "bbox": [15.4, 46.2, 16.0, 46.6], "crs": "EPSG:32633",
          "resolution": 120, "chunk_size": 256, "executor": "slurm"}  # fmt: skip
TILES = [WM.tile(lon, lat, z) for lon, lat, z in ((15.7, 46.4, 10), (15.55, 46.3, 11), (15.9, 46.5, 12), (15.7, 46.4, 8))]
pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def home(tmp_path_factory, shared_data) -> tuple[Path, dict[str, str]]:
    home = tmp_path_factory.mktemp("export-items")
    jeo(home, "ingest", str(shared_data / C / "collection.json"))
    return home, {name: create_token(home, name, "--exports") for name in ("owner", "second")}


@pytest.fixture(scope="module")
def server(home, slurm):  # noqa: F811
    running = start_server(home[0], env={**slurm, "JEO_EXPORT_EXECUTORS": "local,slurm", "JEO_EXPORT_POLL_INTERVAL": "1"})
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def exports(server, home) -> dict[str, dict]:
    """The owner's SLURM export and an anonymous local one, finished."""
    owner = call(server, "POST", "/exports", home[1]["owner"], header=True, json=EXPORT)
    anonymous = call(server, "POST", "/exports", json={**EXPORT, "executor": "local", "resolution": 480})
    assert owner.status_code == anonymous.status_code == 202, (owner.text, anonymous.text)
    return {"owner": wait_finished(server, owner.json()["id"], home[1]["owner"]),
            "anonymous": wait_finished(server, anonymous.json()["id"], None)}  # fmt: skip


def ids(server, token: str | None) -> set[str]:
    response = call(server, "GET", "/collections/exports/items", token)
    assert response.status_code == 200, response.text
    return {feature["id"] for feature in response.json()["features"]}


def test_the_finished_export_is_an_item_of_its_owner(server, home, exports):
    owner, second = home[1]["owner"], home[1]["second"]
    export, anonymous = exports["owner"]["id"], exports["anonymous"]["id"]
    assert ids(server, owner) == {export, anonymous}
    assert ids(server, second) == ids(server, None) == {anonymous}  # anonymous exports are everyone's, as before
    for token in (owner, second, None):
        assert "exports" in {c["id"] for c in call(server, "GET", "/collections", token).json()["collections"]}
    response = call(server, "GET", f"/collections/exports/items/{export}", owner)
    assert response.status_code == 200 and "private" in response.headers["cache-control"]
    item = response.json()
    assert item["id"] == export and item["collection"] == "exports"
    assert item["properties"]["proj:epsg"] == 32633 and item["properties"]["jeo:export"] == export
    assert item["properties"]["start_datetime"].startswith("2023-08-01")
    asset = item["assets"]["data"]
    assert "cloud-optimized" in asset["type"] and [b["name"] for b in asset["eo:bands"]] == ["red", "green", "blue"]
    assert asset["href"] == Path(exports["owner"]["result"]).name  # relative to its root: no server path
    assert not Path(exports["owner"]["result"]).is_absolute()
    assert {"rel": "jeo:export", "href": f"{server.url}/exports/{export}", "type": "application/json"} in item["links"]
    assert item["properties"]["renders"]["default"]["expression"] == "red;green;blue"
    assert call(server, "GET", f"/exports/{export}/item", owner).json()["id"] == export  # the same item


def test_item_tiles_equal_the_export_pixels(server, home, exports):
    path, token = home[0] / "exports" / exports["owner"]["result"], home[1]["owner"]
    base = f"/collections/exports/items/{exports['owner']['id']}/tiles/WebMercatorQuad"
    for tile in TILES:
        for query in ({"assets": "red,green,blue"}, {"expression": "red;green;blue"}, {"assets": "data"}):
            response = call(server, "GET", f"{base}/{tile.z}/{tile.x}/{tile.y}.npy", token, params=query)
            assert response.status_code == 200, response.text
            npy = np.load(io.BytesIO(response.content))
            bands = (1, 2, 3) if len(npy) == 4 else (1,)
            expected = np.ma.stack([nearest_tile(path, WM, tile, band=b) for b in bands])
            valid = ~expected.mask.any(axis=0)
            assert valid.sum() > 1000, tile
            assert ((npy[-1] > 0) == valid).all(), tile
            np.testing.assert_array_equal(npy[:-1][:, valid], expected.data[:, valid])


def test_areas_points_and_previews_of_the_item(server, home, exports):
    """The item's other readers (pixel maps for areas, rio-tiler for points, info and previews) read each band of the
    one multi-band asset: an area subset on the native grid is the export's GeoTIFF itself."""
    path, token = home[0] / "exports" / exports["owner"]["result"], home[1]["owner"]
    base = f"/collections/exports/items/{exports['owner']['id']}"
    with rasterio.open(path) as src:
        whole, bounds = src.read(), src.bounds
        sample = [float(v) for v in next(src.sample([(src.xy(100, 120))]))]
        lon, lat = rasterio.warp.transform(src.crs, "EPSG:4326", *[[v] for v in src.xy(100, 120)])
    area = call(server, "GET", f"{base}/bbox/{bounds.left},{bounds.bottom},{bounds.right},{bounds.top}.tif", token,
                params={"assets": "blue,green,red", "coord_crs": "EPSG:32633", "return_mask": "false"})  # fmt: skip
    assert area.status_code == 200, area.text
    with rasterio.MemoryFile(area.content) as memory, memory.open() as subset:
        assert subset.shape == whole.shape[1:]
        np.testing.assert_array_equal(subset.read(), whole[::-1])
    point = call(server, "GET", f"{base}/point/{lon[0]},{lat[0]}", token, params={"assets": "red,green,blue"}).json()
    np.testing.assert_allclose(point["values"], sample, rtol=1e-6)
    info = call(server, "GET", f"{base}/info", token, params={"assets": "data"})
    assert info.status_code == 200, info.text
    assert info.json()["data"]["count"] == 3 and info.json()["data"]["band_descriptions"][1][1] == "green", info.text
    preview = call(server, "GET", f"{base}/preview.npy", token, params={"assets": "green", "max_size": 64})
    assert preview.status_code == 200 and np.load(io.BytesIO(preview.content)).shape[0] == 2


def test_wmts_layer_and_tilejson_of_the_owner(server, home, exports):
    owner, export = home[1]["owner"], exports["owner"]["id"]
    layer = f"exports.{export}"
    wmts = WebMapTileService(f"{server.url}/wmts/1.0.0/WMTSCapabilities.xml?access_token={owner}")
    assert layer in wmts.contents and f"exports.{exports['anonymous']['id']}" in wmts.contents
    tile = TILES[0]
    got = wmts.gettile(layer=layer, tilematrixset="WebMercatorQuad", tilematrix=str(tile.z), row=tile.y, column=tile.x,
                       format="image/png")  # fmt: skip
    # no preset: every band, stretched over 2–98 % of the result's values
    rendering = call(server, "GET", f"/collections/exports/items/{export}", owner).json()["properties"]["renders"]["default"]
    assert rendering["expression"] == "red;green;blue" and len(rendering["rescale"]) == 1
    assert 0 < rendering["rescale"][0][0] < rendering["rescale"][0][1] < 1
    direct = call(server, "GET", f"/collections/exports/items/{export}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png",
                  owner, params={"expression": "red;green;blue", "rescale": ",".join(f"{v:g}" for v in rendering["rescale"][0])})
    assert direct.status_code == 200 and got.read() == direct.content
    tilejson = call(server, "GET", f"/collections/exports/items/{export}/WebMercatorQuad/tilejson.json", owner,
                    params={"assets": "red"})  # fmt: skip
    assert tilejson.status_code == 200 and f"access_token={owner}" in tilejson.json()["tiles"][0]


def test_a_second_token_never_sees_the_owners_item(server, home, exports):
    owner, second, export = home[1]["owner"], home[1]["second"], exports["owner"]["id"]
    tile = TILES[0]
    tile_path = f"/collections/exports/items/{export}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png"
    for _ in range(2):  # the second answer comes from the tile cache
        assert call(server, "GET", tile_path, owner, params={"assets": "red", "rescale": "0,0.3"}).status_code == 200
    layer = f"exports.{export}"
    kvp = {"SERVICE": "WMTS", "REQUEST": "GetTile", "LAYER": layer, "STYLE": "default", "FORMAT": "image/png",
           "TILEMATRIXSET": "WebMercatorQuad", "TILEMATRIX": str(tile.z), "TILEROW": str(tile.y), "TILECOL": str(tile.x)}
    rest = f"/wmts/1.0.0/{layer}/default/2023-08-01/WebMercatorQuad/{tile.z}/{tile.y}/{tile.x}.png"
    assert call(server, "GET", rest, owner).status_code == 200
    assert call(server, "GET", "/wmts", owner, params=kvp).status_code == 200
    for token in (second, None):
        for path, params in (
            (f"/collections/exports/items/{export}", {}),
            (tile_path, {"assets": "red", "rescale": "0,0.3"}),  # cached for the owner
            (f"/collections/exports/items/{export}/WebMercatorQuad/tilejson.json", {"assets": "red"}),
            (f"/collections/exports/items/{export}/info", {}),
            ("/wmts", kvp),
            (rest, {}),
        ):
            response = call(server, "GET", path, token, params=params)
            assert response.status_code == 404, (path, response.status_code, response.text[:200])
            assert export not in response.text or "not found" in response.text
        capabilities = call(server, "GET", "/wmts/1.0.0/WMTSCapabilities.xml", token).text
        assert export not in capabilities and f"exports.{exports['anonymous']['id']}" in capabilities
        # a composite of the collection is made of the caller's items only: none here
        composite = call(server, "GET", f"/collections/exports/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.npy",
                         token, params={"assets": "red", "datetime": "2023-08-01/2023-08-31"})  # fmt: skip
        assert composite.status_code in (200, 404)
        if composite.status_code == 200:  # the anonymous export covers the tile: its pixels, not the owner's
            assert composite.headers["x-items"] == exports["anonymous"]["id"]
    mine = call(server, "GET", f"/collections/exports/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.npy", owner,
                params={"assets": "red", "datetime": "2023-08-01/2023-08-31", "sortby": "id"})  # fmt: skip
    assert mine.status_code == 200 and export in mine.headers["x-items"].split(",")


def test_job_layer_in_the_python_client(server, home, exports):
    from tiler.client import Client

    with Client(server.url, access_token=home[1]["owner"]) as client:
        job = client.job(exports["owner"]["id"])
        layer = job.layer()
        assert f"/collections/exports/items/{job.id}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png?" in layer.url
        assert "expression=red%3Bgreen%3Bblue" in layer.url and "rescale=" in layer.url
        tile = TILES[0]
        response = client.http.get(layer.url.format(z=tile.z, x=tile.x, y=tile.y))
        assert response.status_code == 200 and response.content[:4] == b"\x89PNG"
        assert "assets=red&rescale=0%2C0.3" in job.layer(assets="red", rescale="0,0.3").url


def test_deleting_the_export_removes_its_item(server, home, exports):
    owner, export = home[1]["owner"], exports["owner"]["id"]
    deleted = call(server, "DELETE", f"/exports/{export}", owner)
    assert deleted.status_code == 200 and deleted.json()["status"] == "finished"  # the record and result stay
    assert export not in ids(server, owner)
    assert call(server, "GET", f"/collections/exports/items/{export}", owner).status_code == 404
    assert f"exports.{export}" not in call(server, "GET", "/wmts/1.0.0/WMTSCapabilities.xml", owner).text
    tile = TILES[0]
    gone = call(server, "GET", f"/collections/exports/items/{export}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png",
                owner, params={"assets": "red", "rescale": "0,0.3"})  # fmt: skip
    assert gone.status_code == 404
    assert call(server, "GET", f"/exports/{export}/result", owner).status_code == 200
