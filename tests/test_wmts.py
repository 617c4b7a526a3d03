"""WMTS 1.0.0 with real clients: GDAL's WMTS driver (through rasterio) and OWSLib."""

from __future__ import annotations

import math

import morecantile
import numpy as np
import pytest
import rasterio
from owslib.wmts import WebMapTileService
from rasterio.io import MemoryFile
from rasterio.windows import Window

C = "sentinel-2-l2a-timeseries"
LAYER = f"{C}.truecolor"
LATEST = "S2B_33TWM_20230820_0_L2A"


def decode(content: bytes) -> np.ndarray:
    with MemoryFile(content) as memfile, memfile.open() as img:
        return img.read()


@pytest.fixture(scope="module")
def wmts(server):
    return WebMapTileService(f"{server.url}/wmts", version="1.0.0")


def test_owslib_parses_capabilities(wmts):
    layer = wmts.contents[LAYER]
    assert {f"{C}.{p}" for p in ("truecolor", "falsecolor", "ndvi", "ndwi")} <= set(wmts.contents)
    assert f"{C}.nbr" not in wmts.contents  # no SWIR band in this collection
    west, south, east, north = layer.boundingBoxWGS84
    assert 14.9 < west < 15.1 and 16.3 < east < 16.5 and 45.9 < south < 46.0 and 46.9 < north < 47.0
    assert {"WebMercatorQuad", "WorldCRS84Quad", "UTM33NWGS84Quad"} <= set(layer.tilematrixsetlinks)
    assert "image/png" in layer.formats
    limits = layer.tilematrixsetlinks["WebMercatorQuad"].tilematrixlimits
    assert limits and min(int(z) for z in limits) >= 0


def test_owslib_gettile_equals_tile_endpoint(server, wmts):
    tile = morecantile.tms.get("WebMercatorQuad").tile(15.8, 46.5, 10)
    fetched = wmts.gettile(layer=LAYER, tilematrixset="WebMercatorQuad", tilematrix=str(tile.z),
                           row=tile.y, column=tile.x, format="image/png").read()
    direct = server.get(f"/collections/{C}/items/{LATEST}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png",
                        params={"preset": "truecolor"})
    assert direct.status_code == 200
    assert fetched == direct.content


def test_kvp_and_rest_return_identical_bytes(server):
    tile = morecantile.tms.get("WebMercatorQuad").tile(15.8, 46.5, 10)
    kvp = server.get("/wmts", params={
        "SERVICE": "WMTS", "REQUEST": "GetTile", "VERSION": "1.0.0", "LAYER": f"{C}.ndvi", "STYLE": "default",
        "FORMAT": "image/png", "TILEMATRIXSET": "WebMercatorQuad", "TILEMATRIX": tile.z,
        "TILEROW": tile.y, "TILECOL": tile.x, "TIME": "2023-08-13"})
    rest = server.get(f"/wmts/1.0.0/{C}.ndvi/default/2023-08-13/WebMercatorQuad/{tile.z}/{tile.y}/{tile.x}.png")
    assert kvp.status_code == rest.status_code == 200
    assert kvp.content == rest.content
    other_date = server.get(f"/wmts/1.0.0/{C}.ndvi/default/2023-08-18/WebMercatorQuad/{tile.z}/{tile.y}/{tile.x}.png")
    assert other_date.content != rest.content  # the Time dimension selects the scene


def test_capabilities_kvp_equals_rest(server):
    kvp = server.get("/wmts", params={"SERVICE": "WMTS", "REQUEST": "GetCapabilities"})
    rest = server.get("/wmts/1.0.0/WMTSCapabilities.xml")
    assert kvp.status_code == 200 and kvp.content == rest.content
    assert b"<Dimension><ows:Identifier>Time</ows:Identifier>" in rest.content
    assert b"<Default>2023-08-20</Default>" in rest.content


def test_gdal_wmts_driver_reads_the_layer(server):
    source = f"WMTS:{server.url}/wmts/1.0.0/WMTSCapabilities.xml,layer={LAYER},tilematrixset=WebMercatorQuad"
    with rasterio.Env(GDAL_HTTP_TIMEOUT=60), rasterio.open(source) as dataset:
        assert dataset.crs.to_epsg() == 3857
        assert dataset.count == 4
        tms = morecantile.tms.get("WebMercatorQuad")
        z = next(m for m in tms.tileMatrices if math.isclose(m.cellSize, dataset.transform.a, rel_tol=1e-6)).id
        tile = tms.tile(15.8, 46.5, int(z))
        left, _, _, top = tms.xy_bounds(tile)
        col = round((left - dataset.transform.c) / dataset.transform.a)
        row = round((dataset.transform.f - top) / -dataset.transform.e)
        pixels = dataset.read(window=Window(col, row, 256, 256))
    direct = server.get(f"/collections/{C}/items/{LATEST}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png",
                        params={"preset": "truecolor"})
    np.testing.assert_array_equal(pixels, decode(direct.content))
    assert pixels[:3].std() > 5  # real imagery, not an empty tile


def test_gdal_lists_the_layers(server):
    with rasterio.open(f"WMTS:{server.url}/wmts/1.0.0/WMTSCapabilities.xml") as dataset:
        listed = " ".join(dataset.subdatasets)
    assert f"layer={LAYER}" in listed
    assert "layer=landsat-8-l1.truecolor" in listed
