"""Multi-band assets (titiler's `asset_bidx` and `{asset}_b{index}`) against direct rasterio reads of the COG.

The items are the real 33TWM time series with a 3-band 8-bit `visual` asset made from their B04, B03, B02
(`tests/visual.py`); its values are DN (no scale), so physical values equal the file's.
"""

from __future__ import annotations

import io

import morecantile
import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_transform
from tests.conftest import start_server, stop_server
from tests.reference import nearest_tile
from tests.visual import COLLECTION as C
from tests.visual import make_visual_catalog

ITEM = "S2B_33TWM_20230813_0_L2A"
WM = morecantile.tms.get("WebMercatorQuad")
TILES = {"native": WM.tile(15.9, 46.45, 11), "overview": WM.tile(15.7, 46.45, 8), "wedge": WM.tile(15.2, 46.75, 10)}
SCL_INVALID = (0, 1, 3, 8, 9, 10)
VISUAL = {"assets": "visual", "asset_bidx": "visual|1,2,3"}


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared_data):
    return make_visual_catalog(shared_data, tmp_path_factory.mktemp("visual-data"))


@pytest.fixture(scope="module")
def vserver(tmp_path_factory, data):
    from mosaics.catalog import Catalog

    home = tmp_path_factory.mktemp("visual-home")
    catalog = Catalog(home / "catalog.db")
    catalog.ingest(data / "collection.json")
    catalog.close()
    running = start_server(home)
    yield running
    stop_server(running)


def npy(server, path: str, **params) -> np.ndarray:
    response = server.get(path, params=params)
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content))


def item_tile(tile) -> str:
    return f"/collections/{C}/items/{ITEM}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.npy"


def reference(path, tile, bands=(1, 2, 3)) -> np.ndarray:
    """float32 `[B, 256, 256]` nearest-neighbour values of bands of the COG at `path`, NaN where nodata/outside."""
    read = [nearest_tile(path, WM, tile, band=b) for b in bands]
    return np.stack([np.where(r.mask, np.nan, r.data) for r in read]).astype(np.float32)


def assert_values(actual, expected):
    both = np.isnan(actual) == np.isnan(expected)
    assert both.all(), f"{(~both).sum()} pixels differ in validity"
    np.testing.assert_allclose(actual[both], expected[both], rtol=1e-6, atol=0)


@pytest.mark.parametrize("where", ["native", "overview"])
def test_item_tile_equals_the_cog_pixel_for_pixel(vserver, data, where):
    tile = TILES[where]
    expected = reference(data / ITEM / "visual.tif", tile)
    actual = npy(vserver, item_tile(tile), **VISUAL)
    assert actual.shape == (4, 256, 256)  # 3 bands + mask
    assert np.isfinite(expected).mean() > 0.5
    assert_values(actual[:3], expected)
    # every band by default, a subset in any order
    np.testing.assert_array_equal(npy(vserver, item_tile(tile), assets="visual"), actual)
    picked = npy(vserver, item_tile(tile), assets="visual", asset_bidx="visual|3,1")
    assert_values(picked[:2], expected[[2, 0]])


def test_visual_is_true_colour_of_the_reflectance_bands(vserver, data):
    """The same tile by eo:bands name from the visual asset and from the single-band assets it was made of."""
    from tests.visual import tci

    tile = TILES["native"]
    visual = npy(vserver, item_tile(tile), **VISUAL)[:3]
    for band, name in enumerate(("B04", "B03", "B02")):
        dn = nearest_tile(data / ITEM / f"{name}.tif", WM, tile)
        np.testing.assert_array_equal(np.where(dn.mask, np.nan, tci(dn.data)), visual[band])


def test_expression_on_asset_bands_equals_numpy(vserver, data):
    tile = TILES["native"]
    b1, b2, b3 = reference(data / ITEM / "visual.tif", tile)
    actual = npy(vserver, item_tile(tile), expression="visual_b1/visual_b2;visual_b3*2")
    assert_values(actual[0], (b1 / b2).astype(np.float32))
    assert_values(actual[1], b3 * 2)


def test_the_bands_of_one_asset_are_one_read(data, monkeypatch):
    """Three bands of `visual` are one windowed read and one gather (the real read, counted)."""
    from mosaics import reader
    from mosaics.catalog import Catalog
    from mosaics.grid import Grid

    calls = []
    real = reader._read_mapped

    def counted(path, grid, nodata, bands, *wanted):
        calls.append((path.rsplit("/", 1)[-1], list(bands)))
        return real(path, grid, nodata, bands, *wanted)

    monkeypatch.setattr(reader, "_read_mapped", counted)
    catalog = Catalog(data.parent / "count.db")
    catalog.ingest(data / "collection.json")
    item = catalog.item(C, ITEM)
    grid = Grid.for_tile(WM, TILES["native"], 256)
    keys = [item.band(n) for n in ("visual_b3", "visual_b1", "visual_b2", "red")]
    raw = reader.read_window(item, keys, grid)
    assert calls == [("visual.tif", [3, 1, 2]), ("B04.tif", [1])]
    expected = reference(data / ITEM / "visual.tif", TILES["native"], bands=(3, 1, 2))
    assert_values(np.where(np.ma.getmaskarray(raw)[:3], np.nan, raw.data[:3]).astype(np.float32), expected)


def test_point_values_of_every_band(vserver, data):
    lon, lat = 15.8, 46.5
    body = vserver.get(f"/collections/{C}/items/{ITEM}/point/{lon},{lat}", params={"assets": "visual"}).json()
    with rasterio.open(data / ITEM / "visual.tif") as src:
        ex, ey = warp_transform("EPSG:4326", src.crs, [lon], [lat])
        expected = [float(v) for v in next(src.sample([(ex[0], ey[0])]))]
    assert body["band_names"] == ["visual_b1", "visual_b2", "visual_b3"]
    assert body["values"] == expected
    composite = vserver.get(f"/collections/{C}/point/{lon},{lat}", params={"expression": "visual_b2"}).json()
    scene = next(i for i in composite["items"] if i["id"] == ITEM)
    assert scene["values"] == [expected[1]]


def test_preview_and_bbox_read_the_asset_bands(vserver, data):
    base = f"/collections/{C}/items/{ITEM}"
    preview = npy(vserver, f"{base}/preview.npy", assets="visual", asset_bidx="visual|2", max_size=128)
    assert preview.shape == (2, 128, 128)
    bbox = npy(vserver, f"{base}/bbox/499980,5190420,509580,5200020.npy", **VISUAL, coord_crs="EPSG:32633")
    with rasterio.open(data / ITEM / "visual.tif") as src:
        native = src.read(window=((0, 80), (0, 80))).astype(np.float32)
    assert bbox.shape == (4, 80, 80)
    assert_values(bbox[:3], np.where(native == 0, np.nan, native))


def read_stack(data, tile) -> tuple[np.ndarray, np.ndarray]:
    """`visual` bands [T, 3, H, W] (NaN = nodata) and SCL-clear [T, H, W] of every scene, newest first."""
    folders = sorted((p.parent for p in data.glob("*/*_L2A.json")), key=lambda f: f.name.split("_")[2], reverse=True)
    stack, valid = [], []
    for folder in folders:
        bands = reference(folder / "visual.tif", tile)
        scl = nearest_tile(folder / "SCL.tif", WM, tile)
        stack.append(bands)
        valid.append(~np.isin(scl.data, SCL_INVALID) & ~scl.mask)
    return np.stack(stack), np.stack(valid)


def usable(stack: np.ndarray, clear: np.ndarray) -> np.ndarray:
    """The stack with NaN where a scene is cloudy or lacks one of the stack's bands (as composites mask)."""
    return np.where((clear & np.isfinite(stack).all(axis=1))[:, None], stack, np.nan)


@pytest.mark.parametrize("where", ["native", "wedge"])
def test_composite_of_visual_equals_numpy(vserver, data, where):
    tile = TILES[where]
    stack, clear = read_stack(data, tile)
    path = f"/collections/{C}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.npy"
    actual = npy(vserver, path, **VISUAL, method="median", cloud_mask="scl")
    expected = np.nanmedian(usable(stack, clear), axis=0)
    assert np.isfinite(expected).mean() > 0.9
    assert_values(actual[:3], expected.astype(np.float32))
    ratio = npy(vserver, path, expression="visual_b1/visual_b2", method="mean", cloud_mask="scl")
    mean = np.nanmean(usable(stack[:, :2], clear), axis=0)
    np.testing.assert_allclose(ratio[0], (mean[0] / mean[1]).astype(np.float32), rtol=1e-5)


def test_visual_png_renders_with_rescale(vserver):
    tile = TILES["native"]
    response = vserver.get(item_tile(tile).replace(".npy", ".png"), params={**VISUAL, "rescale": "0,255"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"


def test_visual_preset_is_a_wmts_layer_equal_to_the_tile_endpoint(vserver, data):
    """The `visual` preset is offered where items have a 3-band visual asset; OWSLib's GetTile of its layer equals
    the item tile endpoint, whose pixels are the COG's."""
    from owslib.wmts import WebMapTileService

    wmts = WebMapTileService(f"{vserver.url}/wmts", version="1.0.0")
    assert f"{C}.visual" in wmts.contents
    latest = "S2B_33TWM_20230820_0_L2A"
    tile = TILES["native"]
    fetched = wmts.gettile(layer=f"{C}.visual", tilematrixset="WebMercatorQuad", tilematrix=str(tile.z), row=tile.y,
                           column=tile.x, format="image/png").read()
    direct = vserver.get(item_tile(tile).replace(ITEM, latest).replace(".npy", ".png"), params={"preset": "visual"})
    assert direct.status_code == 200 and fetched == direct.content
    with rasterio.MemoryFile(fetched) as memfile, memfile.open() as png:
        rgba = png.read()
    expected = reference(data / latest / "visual.tif", tile)
    valid = np.isfinite(expected).all(axis=0)
    assert valid.mean() > 0.9 and (rgba[3][valid] == 255).all()
    np.testing.assert_array_equal(rgba[:3][:, valid], expected[:, valid].astype(np.uint8))


ITEM_TILE = item_tile(TILES["native"]).replace(".npy", ".png")
COMPOSITE = f"/collections/{C}/tiles/WebMercatorQuad/10/555/363.png"


@pytest.mark.parametrize("path, query, status, needles", [
    (ITEM_TILE, {"assets": "visual", "asset_bidx": "visual|1,4"}, 400, ["asset_bidx", "3 bands", "visual"]),
    (COMPOSITE, {"assets": "visual", "asset_bidx": "visual|0"}, 400, ["asset_bidx"]),
    (ITEM_TILE, {"assets": "visual", "asset_bidx": "visual:1"}, 400, ["asset_bidx"]),
    (ITEM_TILE, {"assets": "visual", "asset_bidx": "red|1"}, 400, ["asset_bidx", "red"]),
    (ITEM_TILE, {"expression": "visual_b1", "asset_bidx": "visual|1"}, 400, ["asset_bidx"]),
    (ITEM_TILE, {"expression": "visual_b4/visual_b1"}, 400, ["expression", "3 bands"]),
    (COMPOSITE, {"expression": "visual * 2"}, 400, ["expression", "visual_b1"]),
    (ITEM_TILE, {"assets": "nosuch", "asset_bidx": "nosuch|1"}, 404, ["nosuch"]),
    (COMPOSITE, {**VISUAL, "correction": "toa"}, 400, ["correction", "visual"]),
    (COMPOSITE, {**VISUAL, "correction": "s2_harmonize"}, 400, ["correction", "visual"]),
])  # fmt: skip
def test_bad_band_requests_name_the_parameter(vserver, path, query, status, needles):
    response = vserver.get(path, params=query)
    assert response.status_code == status, response.text
    for needle in needles:
        assert needle in response.text


def test_export_of_visual_equals_the_composite_tiles(vserver):
    """A local export of the visual median composite (native grid), read at WebMercator tiles, equals the tiles."""
    import time

    import httpx

    body = {"collection": C, "assets": ["visual"], "asset_bidx": "visual|3,2,1", "method": "median", "cloud_mask": "scl",
            "bbox": [499980, 5090220, 609780, 5200020], "bbox_crs": "EPSG:32633", "executor": "local"}
    answer = httpx.post(f"{vserver.url}/exports", json=body, timeout=120)
    assert answer.status_code == 202, answer.text
    deadline = time.monotonic() + 300
    while (record := vserver.get(f"/exports/{answer.json()['id']}").json())["status"] not in ("finished", "failed"):
        assert time.monotonic() < deadline, record
        time.sleep(0.5)
    assert record["status"] == "finished", record
    result = vserver.home / "exports" / record["result"]
    with rasterio.open(result) as src:
        assert (src.count, src.width, src.height) == (3, 915, 915)
        assert src.descriptions == ("visual_b3", "visual_b2", "visual_b1")
    for tile in (WM.tile(15.9, 46.45, 10), TILES["wedge"], TILES["native"]):
        path = f"/collections/{C}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.npy"
        expected = npy(vserver, path, assets="visual", asset_bidx="visual|3,2,1", method="median", cloud_mask="scl")
        exported = np.ma.stack([nearest_tile(result, WM, tile, band=b) for b in (1, 2, 3)])
        valid = ~exported.mask[0]
        assert (valid == (expected[3] > 0)).all() and valid.sum() > 20000
        np.testing.assert_array_equal(exported.data[:, valid], expected[:3, valid])


def test_export_refuses_a_band_the_asset_lacks(vserver):
    import httpx

    body = {"collection": C, "assets": "visual", "asset_bidx": ["visual|5"], "bbox": [15.5, 46.3, 15.6, 46.4]}
    answer = httpx.post(f"{vserver.url}/exports", json=body, timeout=120)
    assert answer.status_code == 400 and "asset_bidx" in answer.text and "3 bands" in answer.text, answer.text
