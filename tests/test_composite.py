"""Composite tiles against an independent numpy reference built from direct rasterio reads (real data)."""

from __future__ import annotations

import io
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import morecantile
import numpy as np
import pytest
from tests.conftest import start_server, stop_server
from tests.reference import dilate_invalid, nearest_tile

C = "sentinel-2-l2a-timeseries"
BANDS = {"red": "B04", "green": "B03", "blue": "B02", "nir": "B08"}
SCL_INVALID = (0, 1, 3, 8, 9, 10)
WM = morecantile.tms.get("WebMercatorQuad")
TILES = {
    "inside": WM.tile(15.9, 46.45, 10),
    "wedge": WM.tile(15.2, 46.75, 10),  # straddles the west edge of the 10, 15 and 20 August swath
    "low-zoom": WM.tile(15.7, 46.45, 7),  # read from overviews
}


def items(shared_data: Path) -> list[dict]:
    docs = [json.loads(p.read_text()) for p in sorted((shared_data / C).glob("*/*_L2A.json"))]
    return docs


def order(docs: list[dict], key: str) -> list[dict]:
    """Items as the server orders them: -datetime, or eo:cloud_cover ascending."""
    if key == "-datetime":
        return sorted(docs, key=lambda d: d["properties"]["datetime"], reverse=True)
    return sorted(docs, key=lambda d: (d["properties"]["eo:cloud_cover"], d["id"]))


def read_stack(shared_data: Path, docs: list[dict], tile, names: list[str], skip: str | None = None, buffer: int = 0):
    """Physical values [T, B, H, W] (NaN = no data) and SCL-valid [T, H, W], read with rasterio alone (on the
    tile grown by `buffer` pixels)."""
    stack, valid, kept = [], [], []
    for doc in docs:
        if doc["id"] == skip:
            continue
        folder = shared_data / C / doc["id"]
        bands = []
        for name in names:
            band = nearest_tile(folder / f"{BANDS[name]}.tif", WM, tile, buffer=buffer)
            bands.append(np.where(band.mask, np.nan, band.data * 0.0001).astype(np.float32))
        scl = nearest_tile(folder / "SCL.tif", WM, tile, buffer=buffer)
        ok = ~np.isin(scl.data, SCL_INVALID) & ~scl.mask
        bands = np.stack(bands)
        stack.append(bands)
        valid.append(ok & np.isfinite(bands).all(axis=0))
        kept.append(doc)
    return np.stack(stack), np.stack(valid), kept


def fetch(server, tile, **params) -> tuple[np.ndarray, dict]:
    response = server.get(f"/collections/{C}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.npy", params=params)
    assert response.status_code == 200, response.text
    array = np.load(io.BytesIO(response.content))
    return array, response.headers


def masked(stack, valid):
    return np.where(valid[:, None], stack, np.nan)


def select(stack, index):
    """Observation `index[H, W]` of every pixel; NaN where index < 0."""
    t = np.clip(index, 0, None)
    out = np.take_along_axis(stack, t[None, None], axis=0)[0]
    return np.where(index >= 0, out, np.nan)


def first_index(valid):
    any_valid = valid.any(axis=0)
    return np.where(any_valid, valid.argmax(axis=0), -1)


def assert_values(actual, expected):
    both = np.isnan(actual) == np.isnan(expected)
    assert both.all(), f"{(~both).sum()} pixels differ in validity"
    np.testing.assert_allclose(actual[both], expected[both], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("where", list(TILES))
def test_median_equals_reference(server, shared_data, where):
    tile = TILES[where]
    docs = order(items(shared_data), "-datetime")
    stack, valid, _ = read_stack(shared_data, docs, tile, ["red", "green", "blue"])
    actual, headers = fetch(server, tile, assets="red,green,blue", method="median", cloud_mask="scl")
    assert_values(actual[:3], np.nanmedian(masked(stack, valid), axis=0))
    assert int(headers["X-Items-Read"]) == len(headers["X-Items"].split(",")) >= 2
    assert {"catalog", "read", "mask", "kernel", "render"} <= {
        part.split(";")[0].strip() for part in headers["Server-Timing"].split(",")}


@pytest.mark.parametrize("where", ["inside", "wedge"])
def test_percentile_and_mean(server, shared_data, where):
    tile = TILES[where]
    stack, valid, _ = read_stack(shared_data, order(items(shared_data), "-datetime"), tile, ["nir"])
    actual, _ = fetch(server, tile, assets="nir", method="percentile", p=25)
    assert_values(actual[:1], np.nanpercentile(masked(stack, valid), 25, axis=0))
    actual, _ = fetch(server, tile, assets="nir", method="mean")
    assert_values(actual[:1], np.nanmean(masked(stack, valid), axis=0))


@pytest.mark.parametrize("where", list(TILES))
def test_first_by_cloud_cover(server, shared_data, where):
    tile = TILES[where]
    docs = order(items(shared_data), "eo:cloud_cover")
    stack, valid, _ = read_stack(shared_data, docs, tile, ["red", "green", "blue"])
    actual, headers = fetch(server, tile, assets="red,green,blue", method="first", sortby="eo:cloud_cover")
    index = first_index(valid)
    assert_values(actual[:3], select(stack, index))
    assert headers["X-Items"].split(",") == [d["id"] for d in docs]


def test_first_stops_reading_when_the_tile_is_filled(server, shared_data):
    """The clearest scene (15 August, 0.19 %) covers this tile: fewer scenes are read than selected."""
    tile = WM.tile(16.2, 46.3, 12)
    _, headers = fetch(server, tile, assets="red", method="first", sortby="eo:cloud_cover")
    assert headers["X-Items"].split(",")[0] == "S2A_33TWM_20230815_0_L2A"
    assert int(headers["X-Items-Read"]) < len(headers["X-Items"].split(","))


@pytest.mark.parametrize("where", ["inside", "wedge"])
def test_max_ndvi_and_provenance(server, shared_data, where):
    tile = TILES[where]
    docs = order(items(shared_data), "-datetime")
    stack, valid, _ = read_stack(shared_data, docs, tile, ["red", "nir"])
    ndvi = (stack[:, 1] - stack[:, 0]) / (stack[:, 1] + stack[:, 0])
    score = np.where(valid & np.isfinite(ndvi), ndvi, -np.inf)
    index = np.where((score > -np.inf).any(axis=0), score.argmax(axis=0), -1)
    actual, _ = fetch(server, tile, assets="red,nir", method="max_ndvi")
    assert_values(actual[:2], select(stack, index))
    provenance, _ = fetch(server, tile, assets="red,nir", method="max_ndvi", provenance="true")
    np.testing.assert_array_equal(np.nan_to_num(provenance[0], nan=-1).astype(int), index)


def medoid_reference(stack, valid):
    t = stack.shape[0]
    distance = np.zeros((t, t) + stack.shape[2:], dtype=np.float64)
    for i in range(t):
        for j in range(t):
            distance[i, j] = np.sqrt(((stack[i].astype(np.float64) - stack[j]) ** 2).sum(axis=0))
    distance = np.where(valid[None] & valid[:, None], distance, 0.0)
    total = np.where(valid, distance.sum(axis=1), np.inf)
    return np.where(valid.any(axis=0), total.argmin(axis=0), -1)


@pytest.mark.parametrize("where", ["inside", "wedge"])
def test_medoid(server, shared_data, where):
    tile = TILES[where]
    stack, valid, _ = read_stack(shared_data, order(items(shared_data), "-datetime"), tile, ["red", "green", "blue"])
    actual, _ = fetch(server, tile, assets="red,green,blue", method="medoid")
    assert_values(actual[:3], select(stack, medoid_reference(stack, valid)))


def test_mask_dilation_sees_beyond_the_tile_edge(server, shared_data):
    """Clouds just outside the tile grow into it, as they do in the neighbouring tile."""
    tile, d = TILES["inside"], 4
    stack, valid, _ = read_stack(shared_data, order(items(shared_data), "-datetime"), tile, ["red"], buffer=d)
    grown = dilate_invalid(valid, d)[:, d:-d, d:-d]
    actual, _ = fetch(server, tile, assets="red", method="count", mask_dilation=d)
    np.testing.assert_array_equal(actual[0], grown.sum(axis=0))
    edge = np.ones(grown.shape[1:], bool)
    edge[d:-d, d:-d] = False
    assert (dilate_invalid(valid[:, d:-d, d:-d], d) != grown)[:, edge].any(), "the tile edge must matter here"
    actual, _ = fetch(server, tile, assets="red", method="median", mask_dilation=d)
    assert_values(actual[:1], np.nanmedian(masked(stack[:, :, d:-d, d:-d], grown), axis=0))


def test_count_equals_reference(server, shared_data):
    tile = TILES["wedge"]
    _, valid, _ = read_stack(shared_data, order(items(shared_data), "-datetime"), tile, ["red", "green", "blue"])
    actual, _ = fetch(server, tile, assets="red,green,blue", method="count")
    np.testing.assert_array_equal(actual[0], valid.sum(axis=0))


def test_no_cloud_where_a_clear_observation_exists_and_wedge_is_filled(server, shared_data):
    tile = TILES["wedge"]
    docs = order(items(shared_data), "-datetime")
    _, valid, _ = read_stack(shared_data, docs, tile, ["red"])
    provenance, headers = fetch(server, tile, assets="red", method="first", provenance="true")
    chosen = np.nan_to_num(provenance[0], nan=-1).astype(int)
    ids = headers["X-Items"].split(",")
    scl = []
    for item_id in ids:
        scl.append(nearest_tile(shared_data / C / item_id / "SCL.tif", WM, tile).data)
    scl = np.stack(scl)
    has_clear = valid.any(axis=0)
    assert (chosen[has_clear] >= 0).all()
    picked = np.take_along_axis(scl, np.clip(chosen, 0, None)[None], axis=0)[0]
    assert not np.isin(picked[has_clear], (8, 9, 10)).any()
    # the wedge (no data on 10, 15, 20 August) is filled from 13 and 18 August
    wedge = has_clear & ~valid[[ids.index(d["id"]) for d in docs if d["id"].endswith(("0810_0_L2A", "0815_0_L2A", "0820_0_L2A"))]].any(axis=0)
    assert wedge.sum() > 1000
    assert {ids[i] for i in np.unique(chosen[wedge])} <= {"S2B_33TWM_20230813_0_L2A", "S2A_33TWM_20230818_0_L2A"}


BAD = [
    ({"assets": "red", "method": "mode"}, 422, "method"),
    ({"assets": "red", "method": "percentile", "p": "101"}, 422, "p"),
    ({"assets": "red", "method": "percentile"}, 400, "p"),
    ({"assets": "red", "datetime": "2023-08-20/2023-08-10"}, 400, "datetime"),
    ({"assets": "red", "datetime": "August"}, 400, "datetime"),
    ({"assets": "red", "max_items": "100000"}, 400, "max_items"),
    ({"assets": "red", "max_items": "0"}, 422, "max_items"),
    ({"assets": "red", "cloud_mask": "fog"}, 400, "cloud_mask"),
    ({"assets": "red", "cloud_mask": "cloud_probability:200"}, 400, "cloud_mask"),
    ({"assets": "red", "cloud_mask": "qa"}, 400, "cloud_mask"),
    ({"assets": "red", "max_cloud": "-3"}, 422, "max_cloud"),
    ({"assets": "red", "sortby": "colour"}, 400, "sortby"),
    ({"assets": "red", "method": "median", "provenance": "true"}, 400, "provenance"),
    ({"assets": "red", "mask_dilation": "-1"}, 422, "mask_dilation"),
    ({"assets": "red", "correction": "toa"}, 400, "correction"),
    ({"assets": "red", "correction": "magic"}, 422, "correction"),
]


@pytest.mark.parametrize("query,status,needle", BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_composite_bad_input(server, query, status, needle):
    tile = TILES["inside"]
    response = server.get(f"/collections/{C}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png", params=query)
    assert response.status_code == status, response.text
    assert needle in response.text


def test_truncated_scene_is_skipped(tmp_path, shared_data):
    """One item's COG truncated: the tile is still 200, the header names the item, pixels = reference without it."""
    from mosaics.catalog import Catalog

    copy = tmp_path / "data"
    shutil.copytree(shared_data, copy)
    broken = "S2A_33TWM_20230818_0_L2A"
    path = copy / C / broken / "B04.tif"
    path.write_bytes(path.read_bytes()[:5000])
    home = tmp_path / "home"
    home.mkdir()
    Catalog(home / "catalog.db").ingest(copy)
    server = start_server(home)
    try:
        tile = TILES["inside"]
        actual, headers = fetch(server, tile, assets="red,green,blue", method="median")
        assert headers["X-Items-Skipped"] == broken
        docs = order(items(shared_data), "-datetime")
        stack, valid, kept = read_stack(shared_data, docs, tile, ["red", "green", "blue"], skip=broken)
        assert len(kept) == 4
        assert_values(actual[:3], np.nanmedian(masked(stack, valid), axis=0))
        log = "".join(p.read_text() for p in home.glob("server-*.log"))
        assert broken in log
    finally:
        stop_server(server)


def test_s2_harmonize_never_applies_the_offset_twice(server):
    """These L2A items say `earthsearch:boa_offset_applied: true`: harmonising changes nothing."""
    tile = TILES["inside"]
    plain, _ = fetch(server, tile, assets="red,nir", method="median")
    harmonized, _ = fetch(server, tile, assets="red,nir", method="median", correction="s2_harmonize")
    np.testing.assert_array_equal(plain, harmonized)


LANDSAT = "landsat-8-l1"
LANDSAT_ITEM = "LC80200392015216LGN00"


def landsat_tile(lon, lat, z=13):
    return WM.tile(lon, lat, z)


def mtl(shared_data):
    values = {}
    for line in (shared_data / LANDSAT / LANDSAT_ITEM / "MTL.txt").read_text().splitlines():
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


def test_landsat_toa_matches_the_mtl_formula(server, shared_data):
    tile = landsat_tile(-87.4, 30.73)
    response = server.get(f"/collections/{LANDSAT}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.npy",
                          params={"assets": "red", "method": "first", "correction": "toa", "cloud_mask": "none"})
    assert response.status_code == 200, response.text
    toa = np.load(io.BytesIO(response.content))[0]
    dn = nearest_tile(shared_data / LANDSAT / LANDSAT_ITEM / "B4.tif", WM, tile).data.astype(np.float64)
    values = mtl(shared_data)
    expected = (float(values["REFLECTANCE_MULT_BAND_4"]) * dn + float(values["REFLECTANCE_ADD_BAND_4"])) / np.sin(
        np.radians(float(values["SUN_ELEVATION"])))
    np.testing.assert_allclose(toa, expected, atol=1e-4)


def test_dos_dark_value_is_the_same_for_every_tile(server):
    offsets = []
    for lon, lat in ((-87.45, 30.70), (-87.33, 30.78)):
        tile = landsat_tile(lon, lat)
        arrays = {}
        for correction in ("toa", "dos"):
            response = server.get(f"/collections/{LANDSAT}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.npy",
                                  params={"assets": "blue", "method": "first", "correction": correction, "cloud_mask": "none"})
            assert response.status_code == 200, response.text
            arrays[correction] = np.load(io.BytesIO(response.content))[0]
        difference = (arrays["toa"] - arrays["dos"])[np.isfinite(arrays["toa"])]
        assert difference.std() < 1e-6
        offsets.append(float(difference.mean()))
    assert offsets[0] == pytest.approx(offsets[1], abs=1e-6)
    assert offsets[0] > 0  # haze removed: the scene's dark objects are brighter than 1 %


def test_point_lists_every_candidate_and_each_methods_choice(server, shared_data):
    import rasterio
    from rasterio.warp import transform as warp_transform

    lon, lat = 15.8, 46.5
    body = server.get(f"/collections/{C}/point/{lon},{lat}", params={"assets": "red,nir"}).json()
    docs = order(items(shared_data), "-datetime")
    assert [i["id"] for i in body["items"]] == [d["id"] for d in docs]
    usable = []
    for entry in body["items"]:
        folder = shared_data / C / entry["id"]
        sample = {}
        for name in ("B04", "B08", "SCL"):
            with rasterio.open(folder / f"{name}.tif") as src:
                x, y = warp_transform("EPSG:4326", src.crs, [lon], [lat])
                sample[name] = float(next(src.sample([(x[0], y[0])]))[0])
        assert entry["values"] == pytest.approx([sample["B04"] * 1e-4, sample["B08"] * 1e-4], rel=1e-6)
        assert entry["mask"] == sample["SCL"]
        assert entry["usable"] == (sample["SCL"] not in SCL_INVALID and sample["B04"] > 0)
        if entry["usable"]:
            usable.append(entry)
    assert body["methods"]["count"]["values"] == [len(usable)]
    assert body["methods"]["first"]["item"] == usable[0]["id"]
    assert body["methods"]["median"]["values"] == pytest.approx(np.median([u["values"] for u in usable], axis=0), rel=1e-6)
    greenest = max(usable, key=lambda u: (u["values"][1] - u["values"][0]) / (u["values"][1] + u["values"][0]))
    assert body["methods"]["max_ndvi"]["item"] == greenest["id"]


@contextmanager
def served(tmp_path: Path, data: Path):
    """A server of its own catalog of `data`."""
    from mosaics.catalog import Catalog

    (home := tmp_path / "home").mkdir()
    Catalog(home / "catalog.db").ingest(data)
    running = start_server(home)
    try:
        yield running
    finally:
        stop_server(running)


def test_scene_masked_on_the_whole_tile_is_not_read(tmp_path, shared_data):
    """One item's SCL all cloud and its band files truncated: its bands are never read (X-Items-Unread names it,
    nothing is skipped) and the tile equals the reference without it."""
    import rasterio

    copy = tmp_path / "data"
    shutil.copytree(shared_data, copy)
    cloudy = "S2A_33TWM_20230818_0_L2A"
    with rasterio.open(copy / C / cloudy / "SCL.tif") as src:
        profile = {k: v for k, v in src.profile.items() if k not in ("blockxsize", "blockysize", "tiled")}
    (copy / C / cloudy / "SCL.tif").unlink()
    with rasterio.open(copy / C / cloudy / "SCL.tif", "w", **profile) as dst:
        dst.write(np.full((1, profile["height"], profile["width"]), 9, dtype=profile["dtype"]))  # cloud, high probability
    for band in BANDS.values():
        path = copy / C / cloudy / f"{band}.tif"
        path.write_bytes(path.read_bytes()[:5000])
    tile = TILES["inside"]
    with served(tmp_path, copy) as server:
        actual, headers = fetch(server, tile, assets="red,green,blue", method="median", cloud_mask="scl")
    assert headers["X-Items-Unread"] == cloudy
    assert headers["X-Items-Skipped"] == ""
    assert cloudy in headers["X-Items"].split(",")
    stack, valid, kept = read_stack(shared_data, order(items(shared_data), "-datetime"), tile, ["red", "green", "blue"],
                                    skip=cloudy)
    assert len(kept) == 4
    assert_values(actual[:3], np.nanmedian(masked(stack, valid), axis=0))
