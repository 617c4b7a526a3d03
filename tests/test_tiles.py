"""Single-scene tiles against pixels read directly with rasterio (real data, real uvicorn)."""

from __future__ import annotations

import io

import morecantile
import numpy as np
import pytest
import rasterio
from rasterio.io import MemoryFile
from rasterio.warp import transform as warp_transform

COLLECTION = "sentinel-2-l2a-timeseries"
ITEM = "S2B_33TWM_20230813_0_L2A"  # clear, covers the whole tile
TILE = (11, 1113, 727)  # z, x, y in WebMercatorQuad, inside 33TWM (120 m native, ~52 m tile pixels)


def reference_dn(shared_data, asset_file: str, tms_id: str, z: int, x: int, y: int, size: int = 256) -> np.ndarray:
    """Nearest-neighbour DN at each tile pixel centre, read with rasterio alone."""
    tms = morecantile.tms.get(tms_id)
    bounds = tms.xy_bounds(morecantile.Tile(x, y, z))
    step_x, step_y = (bounds.right - bounds.left) / size, (bounds.top - bounds.bottom) / size
    cols, rows = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    xs, ys = bounds.left + cols * step_x, bounds.top - rows * step_y
    with rasterio.open(shared_data / COLLECTION / ITEM / asset_file) as src:
        ex, ey = warp_transform(tms.rasterio_crs, src.crs, xs.ravel(), ys.ravel())
        r, c = rasterio.transform.rowcol(src.transform, ex, ey)
        data = src.read(1)
    r, c = np.asarray(r), np.asarray(c)
    inside = (r >= 0) & (r < data.shape[0]) & (c >= 0) & (c < data.shape[1])
    out = np.zeros(r.shape, dtype=data.dtype)
    out[inside] = data[r[inside], c[inside]]
    return out.reshape(size, size)


def load_npy(content: bytes) -> np.ndarray:
    return np.load(io.BytesIO(content))


def test_true_colour_png_equals_rescaled_reflectance(server, shared_data):
    z, x, y = TILE
    response = server.get(
        f"/collections/{COLLECTION}/items/{ITEM}/tiles/WebMercatorQuad/{z}/{x}/{y}.png",
        params={"assets": "B04,B03,B02", "rescale": "0,0.3"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    with MemoryFile(response.content) as memfile, memfile.open() as png:
        rgba = png.read()
    assert rgba.shape == (4, 256, 256)
    for band, asset_file in enumerate(("B04.tif", "B03.tif", "B02.tif")):
        dn = reference_dn(shared_data, asset_file, "WebMercatorQuad", z, x, y)
        expected = np.clip(dn * 0.0001 / 0.3 * 255, 0, 255)
        diff = np.abs(rgba[band].astype(float) - expected)
        assert (diff <= 1).all(), f"band {asset_file}: {np.mean(diff <= 1):.4f} of pixels match"
    assert rgba[3].min() == 255  # clear scene, whole tile inside the footprint


def test_ndvi_npy_equals_numpy_on_physical_values(server, shared_data):
    z, x, y = TILE
    response = server.get(
        f"/collections/{COLLECTION}/items/{ITEM}/tiles/WebMercatorQuad/{z}/{x}/{y}.npy",
        params={"expression": "(B08-B04)/(B08+B04)"},
    )
    assert response.status_code == 200, response.text
    tile = load_npy(response.content)
    ndvi = tile[0]
    nir = reference_dn(shared_data, "B08.tif", "WebMercatorQuad", z, x, y) * 0.0001
    red = reference_dn(shared_data, "B04.tif", "WebMercatorQuad", z, x, y) * 0.0001
    expected = (nir - red) / (nir + red)
    np.testing.assert_allclose(ndvi, expected, rtol=1e-5, atol=1e-6)
    assert -1 <= np.nanmin(ndvi) and np.nanmax(ndvi) <= 1


def test_named_index_equals_expression(server):
    z, x, y = TILE
    base = f"/collections/{COLLECTION}/items/{ITEM}/tiles/WebMercatorQuad/{z}/{x}/{y}.npy"
    by_index = load_npy(server.get(base, params={"index": "ndvi"}).content)
    by_expression = load_npy(server.get(base, params={"expression": "(nir-red)/(nir+red)"}).content)
    np.testing.assert_allclose(by_index[0], by_expression[0], rtol=1e-6)


def test_scale_suffix_and_tilesize(server):
    z, x, y = TILE
    base = f"/collections/{COLLECTION}/items/{ITEM}/tiles/WebMercatorQuad/{z}/{x}/{y}"
    assert load_npy(server.get(base + "@2x.npy", params={"assets": "red"}).content).shape[-1] == 512
    assert load_npy(server.get(base + ".npy", params={"assets": "red", "tilesize": 128}).content).shape[-1] == 128


def test_geotiff_tile_is_georeferenced(server):
    z, x, y = TILE
    response = server.get(
        f"/collections/{COLLECTION}/items/{ITEM}/tiles/WebMercatorQuad/{z}/{x}/{y}.tif", params={"index": "ndvi"}
    )
    assert response.status_code == 200
    with MemoryFile(response.content) as memfile, memfile.open() as tif:
        assert tif.crs.to_epsg() == 3857
        bounds = morecantile.tms.get("WebMercatorQuad").xy_bounds(morecantile.Tile(x, y, z))
        assert tif.bounds.left == pytest.approx(bounds.left) and tif.bounds.top == pytest.approx(bounds.top)


@pytest.mark.parametrize("fmt,mime", [("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")])
def test_image_formats(server, fmt, mime):
    z, x, y = TILE
    response = server.get(
        f"/collections/{COLLECTION}/items/{ITEM}/tiles/WebMercatorQuad/{z}/{x}/{y}.{fmt}", params={"preset": "truecolor"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == mime


def test_utm_tile_matrix_set(server, shared_data):
    tms = morecantile.tms.get("UTM31WGS84Quad")  # same grid as UTM33N, other CRS: pick the tile via the server's TMS
    listed = server.get("/tileMatrixSets").json()
    assert "UTM33NWGS84Quad" in {t["id"] for t in listed["tileMatrixSets"]}
    tilejson = server.get(f"/collections/{COLLECTION}/items/{ITEM}/UTM33NWGS84Quad/tilejson.json",
                          params={"assets": "red"}).json()
    assert "/tiles/UTM33NWGS84Quad/{z}/{x}/{y}" in tilejson["tiles"][0]
    assert tms is not None


def test_tile_outside_footprint_is_404(server):
    # 10 August misses the western wedge of 33TWM; the tile at 15.02 E, 46.9 N lies in it.
    tms = morecantile.tms.get("WebMercatorQuad")
    t = tms.tile(15.02, 46.9, 12)
    response = server.get(
        f"/collections/{COLLECTION}/items/S2B_33TWM_20230810_0_L2A/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png",
        params={"preset": "truecolor"},
    )
    assert response.status_code == 404
    assert "outside" in response.json()["detail"]


def test_point_values_per_band(server, shared_data):
    lon, lat = 15.8, 46.5
    body = server.get(f"/collections/{COLLECTION}/items/{ITEM}/point/{lon},{lat}", params={"assets": "B04,B08"}).json()
    with rasterio.open(shared_data / COLLECTION / ITEM / "B04.tif") as src:
        ex, ey = warp_transform("EPSG:4326", src.crs, [lon], [lat])
        expected = next(src.sample([(ex[0], ey[0])]))[0] * 0.0001
    assert body["band_names"] == ["B04", "B08"]
    assert body["values"][0] == pytest.approx(expected, rel=1e-5)


def test_tilejson_info_preview(server):
    base = f"/collections/{COLLECTION}/items/{ITEM}"
    tilejson = server.get(f"{base}/WebMercatorQuad/tilejson.json", params={"preset": "ndvi"}).json()
    assert tilejson["minzoom"] <= 9 <= tilejson["maxzoom"]
    assert "index=ndvi" in tilejson["tiles"][0]
    assert server.get(f"{base}/info", params={"assets": "red"}).json()["red"]["dtype"] == "uint16"
    preview = server.get(f"{base}/preview.png", params={"preset": "truecolor"})
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"


def test_stac_api_links_resolve(server):
    collections = server.get("/collections").json()["collections"]
    assert {c["id"] for c in collections} >= {COLLECTION, "landsat-8-l1"}
    collection = server.get(f"/collections/{COLLECTION}").json()
    for link in collection["links"]:
        assert server.get(link["href"].replace(server.url, ""), params={"assets": "red"}).status_code == 200, link
    found = server.get(f"/collections/{COLLECTION}/items", params={"bbox": "15.0,46.6,15.1,46.7"}).json()
    assert {f["id"] for f in found["features"]} == {"S2B_33TWM_20230813_0_L2A", "S2A_33TWM_20230818_0_L2A"}
    item = server.get(f"/collections/{COLLECTION}/items/{ITEM}").json()
    assert item["properties"]["eo:cloud_cover"] == 1.05
    assert item["assets"]["red"]["href"].endswith("B04.tif")


def test_landing_page_links_resolve(server):
    landing = server.get("/").json()
    for link in landing["links"]:
        assert server.get(link["href"].replace(server.url, "") or "/").status_code == 200, link
