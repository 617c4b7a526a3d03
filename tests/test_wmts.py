"""WMTS 1.0.0 with real clients: GDAL's WMTS driver (through rasterio) and OWSLib; OWS errors; the layer index."""

from __future__ import annotations

import math
from xml.etree import ElementTree

import morecantile
import numpy as np
import pytest
import rasterio
from owslib.util import ServiceException
from owslib.wmts import WebMapTileService
from rasterio.io import MemoryFile
from rasterio.windows import Window

from mosaics.catalog import Catalog
from tiler.access import CatalogView
from tiler.app import catalog_epsg_codes
from tiler.presets import PresetRegistry
from tiler.tms import supported_tms
from tiler.tokens import ANONYMOUS
from tiler.wmts import LayerIndex, tile_target

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


# --- errors: always an OWS ExceptionReport with the OGC code -----------------------------------------

WM = morecantile.tms.get("WebMercatorQuad")
INSIDE = WM.tile(15.8, 46.5, 10)
WEDGE = WM.tile(15.05, 46.7, 11)  # inside the collection, outside the 20 August scene (the layer's default Time)
KVP = {"SERVICE": "WMTS", "REQUEST": "GetTile", "VERSION": "1.0.0", "LAYER": LAYER, "STYLE": "default",
       "FORMAT": "image/png", "TILEMATRIXSET": "WebMercatorQuad", "TILEMATRIX": str(INSIDE.z),
       "TILEROW": str(INSIDE.y), "TILECOL": str(INSIDE.x)}  # fmt: skip
ERRORS = [  # (changes to KVP, status, exceptionCode, locator)
    ({"LAYER": "nope.truecolor"}, 404, "InvalidParameterValue", "LAYER"),
    ({"TILEROW": None}, 400, "MissingParameterValue", "TILEROW"),
    ({"TILEROW": "x"}, 400, "InvalidParameterValue", "TILEROW"),
    ({"TILEROW": str(INSIDE.y + 40)}, 400, "TileOutOfRange", "TILEROW"),  # outside the layer's limits
    ({"TILECOL": "99999999"}, 400, "TileOutOfRange", "TILECOL"),  # outside the matrix
    ({"TILEMATRIX": "99"}, 400, "InvalidParameterValue", "TILEMATRIX"),
    ({"TILEMATRIX": str(WEDGE.z), "TILEROW": str(WEDGE.y), "TILECOL": str(WEDGE.x)}, 404, "TileOutOfRange", "TILEMATRIX"),
    ({"LAYER": f"{C}.cloudfree-truecolor", "TIME": "2023-08-01--2023-08-31", "TILEMATRIX": "3", "TILEROW": "2",
      "TILECOL": "4"}, 400, "TileOutOfRange", "TILEMATRIX"),  # below the composites' zooms
    ({"LAYER": f"{C}.cloudfree-truecolor", "TIME": "2023-08-20--2023-08-01"}, 400, "InvalidParameterValue", "TIME"),
    ({"TIME": "1999-01-01"}, 400, "InvalidParameterValue", "TIME"),
    ({"FORMAT": "image/gif"}, 400, "InvalidParameterValue", "FORMAT"),
    ({"STYLE": "fancy"}, 400, "InvalidParameterValue", "STYLE"),
    ({"TILEMATRIXSET": "WorldMercatorWGS84Quad"}, 400, "InvalidParameterValue", "TILEMATRIXSET"),
]  # fmt: skip


def rest_url(params: dict[str, str]) -> str:
    ext = {"image/png": "png", "image/jpeg": "jpeg"}.get(params["FORMAT"], "gif")
    return (f"/wmts/1.0.0/{params['LAYER']}/{params['STYLE']}/{params.get('TIME', '2023-08-20')}/"
            f"{params['TILEMATRIXSET']}/{params['TILEMATRIX']}/{params['TILEROW']}/{params['TILECOL']}.{ext}")


def exception(response) -> tuple[int, str, str]:
    assert response.headers["content-type"].startswith("application/xml"), response.text
    element = ElementTree.fromstring(response.content).find("{http://www.opengis.net/ows/1.1}Exception")
    return response.status_code, element.get("exceptionCode"), element.get("locator")


@pytest.mark.parametrize("change,status,code,locator", ERRORS, ids=[f"{e[2]}:{e[3]}:{i}" for i, e in enumerate(ERRORS)])
def test_gettile_errors_are_exception_reports(server, change, status, code, locator):
    params = {k: v for k, v in {**KVP, **change}.items() if v is not None}
    assert exception(server.get("/wmts", params=params)) == (status, code, locator)
    if "TILEROW" in params:  # the same request in the REST encoding
        assert exception(server.get(rest_url(params))) == (status, code, locator)


@pytest.mark.parametrize("params,code,locator", [
    ({"REQUEST": "GetCapabilities"}, "MissingParameterValue", "SERVICE"),
    ({"SERVICE": "WMTS", "REQUEST": "GetFeatureInfo"}, "OperationNotSupported", "REQUEST"),
    ({"SERVICE": "WMTS", "REQUEST": "GetCapabilities", "VERSION": "2.0.0"}, "InvalidParameterValue", "VERSION"),
    ([("SERVICE", "WMTS"), ("REQUEST", "GetTile"), ("LAYER", LAYER), ("layer", f"{C}.ndvi")], "InvalidParameterValue", "LAYER"),
])  # fmt: skip
def test_kvp_request_errors_are_exception_reports(server, params, code, locator):
    assert exception(server.get("/wmts", params=params)) == (400, code, locator)


def test_owslib_sees_tile_out_of_range(wmts):
    with pytest.raises(ServiceException, match="TileOutOfRange"):
        wmts.gettile(layer=LAYER, tilematrixset="WebMercatorQuad", tilematrix=str(INSIDE.z),
                     row=INSIDE.y + 40, column=INSIDE.x, format="image/png")


def test_gdal_reads_the_whole_layer_with_empty_tiles(server):
    """An overview of the whole layer: tiles without data (404 ExceptionReports) are transparent blocks."""
    source = f"WMTS:{server.url}/wmts/1.0.0/WMTSCapabilities.xml,layer={LAYER},tilematrixset=WebMercatorQuad"
    with rasterio.Env(GDAL_HTTP_TIMEOUT=60), rasterio.open(source) as dataset:
        pixels = dataset.read(out_shape=(dataset.count, 256, 256))
    alpha = pixels[3]
    assert (alpha == 0).mean() > 0.05 and (alpha == 255).mean() > 0.5  # the western wedge is empty


# --- the layer index --------------------------------------------------------------------------------


def test_layer_index_is_rebuilt_only_when_the_catalog_changes(tmp_path, shared_data):
    catalog = Catalog(tmp_path / "catalog.db")
    catalog.ingest(shared_data / "landsat-8-l1" / "collection.json")
    presets = PresetRegistry.from_files()
    index = LayerIndex(catalog, presets, supported_tms(catalog_epsg_codes(catalog)), composite_minzoom=6)
    layers = index.layers()
    assert index.layers() is layers and "landsat-8-l1.truecolor" in layers
    xml = index.layer_xml(layers["landsat-8-l1.truecolor"], "http://a", "")
    assert index.layer_xml(layers["landsat-8-l1.truecolor"], "http://a", "") is xml
    catalog.ingest(shared_data / C / "collection.json")
    updated = index.layers()
    assert updated is not layers and LAYER in updated and "landsat-8-l1.truecolor" in updated
    assert tile_target(index, {k.lower(): v for k, v in KVP.items()}, CatalogView(catalog, ANONYMOUS)).startswith(
        f"/collections/{C}/items/{LATEST}/tiles/WebMercatorQuad/{INSIDE.z}/{INSIDE.x}/{INSIDE.y}.png")
