"""Processing services (area subsets, statistics, time series) over real HTTP against rasterio/numpy references on the
33TWM time series, read at its native 120 m grid (EPSG:32633)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import rasterio
from rasterio.features import geometry_mask
from rasterio.transform import Affine, rowcol
from rasterio.warp import transform as transform_coords
from rasterio.windows import Window

from algorithms import masks
from tests import reference as ref

C = "sentinel-2-l2a-timeseries"
ITEM = "S2A_33TWM_20230818_0_L2A"  # 42 % cloud
NATIVE = Affine(120.0, 0.0, 499980.0, 0.0, -120.0, 5200020.0)
WINDOW = Window(500, 400, 60, 50)  # col, row, width, height of the native grid; every date has data there
LEFT, TOP = NATIVE @ (WINDOW.col_off, WINDOW.row_off)
RIGHT, BOTTOM = NATIVE @ (WINDOW.col_off + WINDOW.width, WINDOW.row_off + WINDOW.height)
UTM_BBOX = f"{LEFT},{BOTTOM},{RIGHT},{TOP}"
FIELD = {  # a field-sized polygon inside WINDOW, in EPSG:32633
    "type": "Polygon",
    "coordinates": [[[LEFT + 700, TOP - 500], [LEFT + 5300, TOP - 900], [LEFT + 6100, TOP - 5200],
                     [LEFT + 1500, TOP - 5800], [LEFT + 700, TOP - 500]]],
}
_XS, _YS = zip(*FIELD["coordinates"][0])
FIELD_PIXELS = (slice(math.floor((TOP - max(_YS)) / 120), math.ceil((TOP - min(_YS)) / 120)),
                slice(math.floor((min(_XS) - LEFT) / 120), math.ceil((max(_XS) - LEFT) / 120)))  # its grid in WINDOW
AUGUST = "2023-08-01/2023-08-31"
BANDS = {"red": "B04", "green": "B03", "blue": "B02", "nir": "B08"}


def scenes(shared_data) -> list[str]:
    """Item ids, oldest first."""
    return sorted((p.name for p in (shared_data / C).glob("S2*_L2A")), key=lambda name: name.split("_")[2])


def read_scene(shared_data, item: str, names: list[str], window: Window = WINDOW) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reflectance [B, H, W] (NaN = no data), SCL-clear and has-data masks [H, W] of `window`, with rasterio alone."""
    bands = []
    for name in names:
        with rasterio.open(shared_data / C / item / f"{BANDS[name]}.tif") as src:
            dn = src.read(1, window=window)
        bands.append(np.where(dn == 0, np.nan, dn * 1e-4).astype(np.float32))
    with rasterio.open(shared_data / C / item / "SCL.tif") as src:
        scl = src.read(1, window=window)
    bands = np.stack(bands)
    data = np.isfinite(bands).all(axis=0)
    return bands, masks.scl_valid(scl) & data, data


def field_inside() -> np.ndarray:
    transform = NATIVE @ Affine.translation(WINDOW.col_off, WINDOW.row_off)
    return geometry_mask([FIELD], out_shape=(WINDOW.height, WINDOW.width), transform=transform, invert=True)


def npy(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content))


def post(server, path: str, body, **params):
    import httpx

    return httpx.post(server.url + path, params=params, json=body, timeout=120)


def assert_values(actual, expected):
    same = np.isnan(actual) == np.isnan(expected)
    assert same.all(), f"{(~same).sum()} pixels differ in validity"
    np.testing.assert_allclose(actual[same], expected[same], rtol=1e-6)


def assert_statistics(actual: dict, values: np.ndarray, percentiles=(2, 98), bins=10, rtol=1e-9):
    """`actual` (one band of the JSON answer) against numpy on `values`' finite pixels."""
    expected = ref.band_statistics(values[np.newaxis], np.ones(values.shape, bool), percentiles, bins)[0]
    assert actual["count"] == actual["valid_pixels"] == expected["count"]
    for name in ("min", "max", "mean", "std", "median"):
        np.testing.assert_allclose(actual[name], expected[name], rtol=rtol, err_msg=name)
    np.testing.assert_allclose(actual["sum"], expected["sum"], rtol=1e-6)
    for p in percentiles:
        np.testing.assert_allclose(actual[f"percentile_{p}"], expected["percentiles"][p], rtol=rtol)
    assert actual["histogram"][0] == expected["histogram"][0]
    np.testing.assert_allclose(actual["histogram"][1], expected["histogram"][1], rtol=rtol)


def test_item_bbox_subset_equals_the_native_window(server, shared_data):
    bands, _, _ = read_scene(shared_data, ITEM, ["red", "nir"])
    response = server.get(f"/collections/{C}/items/{ITEM}/bbox/{UTM_BBOX}.npy",
                          params={"assets": "red,nir", "coord_crs": "EPSG:32633"})
    array = npy(response)
    assert array.shape == (3, WINDOW.height, WINDOW.width)  # two bands and the mask
    assert_values(array[:2], bands)
    assert json.loads(response.headers["X-Band-Names"]) == ["red", "nir"]
    assert response.headers["X-Datetime"].startswith("2023-08-18")

    tif = server.get(f"/collections/{C}/items/{ITEM}/bbox/{UTM_BBOX}.tif",
                     params={"assets": "red,nir", "coord_crs": "EPSG:32633", "return_mask": "false"})
    with rasterio.MemoryFile(tif.content) as memory, memory.open() as dataset:
        assert dataset.crs.to_epsg() == 32633 and dataset.count == 2
        assert dataset.transform.almost_equals(NATIVE @ Affine.translation(WINDOW.col_off, WINDOW.row_off))
        assert_values(dataset.read(), bands)


def test_bbox_in_lonlat_covers_it_on_the_native_grid(server):
    response = server.get(f"/collections/{C}/bbox/15.6,46.4,15.8,46.5.tif", params={"assets": "red", "return_mask": "false"})
    assert response.status_code == 200, response.text
    with rasterio.MemoryFile(response.content) as memory, memory.open() as dataset:
        transform, width, height = dataset.transform, dataset.width, dataset.height
    assert (transform.a, transform.e) == (120.0, -120.0)
    assert ((transform.c - NATIVE.c) / 120).is_integer() and ((transform.f - NATIVE.f) / 120).is_integer()
    xs, ys = transform_coords("EPSG:4326", "EPSG:32633", [15.6, 15.8, 15.6, 15.8], [46.4, 46.4, 46.5, 46.5])
    assert transform.c <= min(xs) < transform.c + 120 and transform.f >= max(ys) > transform.f - 120
    assert transform.c + width * 120 >= max(xs) and transform.f - height * 120 <= min(ys)


def test_output_grid_options(server):
    base = f"/collections/{C}/bbox/{UTM_BBOX}"
    params = {"assets": "red", "coord_crs": "EPSG:32633"}
    assert npy(server.get(f"{base}.npy", params={**params, "resolution": 240})).shape == (2, 25, 30)
    assert npy(server.get(f"{base}.npy", params={**params, "max_size": 30})).shape == (2, 25, 30)
    assert npy(server.get(f"{base}/40x20.npy", params=params)).shape == (2, 20, 40)
    geographic = server.get(f"{base}.tif", params={**params, "dst_crs": "EPSG:4326", "return_mask": "false"})
    with rasterio.MemoryFile(geographic.content) as memory, memory.open() as dataset:
        assert dataset.crs.to_epsg() == 4326 and 0.0005 < dataset.res[0] < 0.003
    png = server.get(f"{base}.png", params={"assets": "red,green,blue", "coord_crs": "EPSG:32633", "rescale": "0,0.3"})
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"


def test_composite_feature_and_statistics_equal_numpy(server, shared_data):
    """The feature subset is the SCL-masked median of the five dates inside the field; its statistics are numpy's on
    those pixels; per date, numpy's on each scene's clear pixels inside the field."""
    params = {"assets": "red,nir", "method": "median", "cloud_mask": "scl", "datetime": AUGUST, "coord_crs": "EPSG:32633"}
    stacks = [read_scene(shared_data, item, ["red", "nir"]) for item in scenes(shared_data)]
    stack, valid = np.stack([s[0] for s in stacks]), np.stack([s[1] for s in stacks])
    inside = field_inside()
    expected = np.where(inside, ref.median(stack, valid), np.nan)[(slice(None), *FIELD_PIXELS)]

    feature = npy(post(server, f"/collections/{C}/feature.npy", FIELD, **params))
    assert feature.shape == (3, *expected.shape[1:])
    assert_values(feature[:2], expected)
    assert (feature[2] < 0).sum() == (~np.isfinite(expected[0])).sum()  # the mask band: dtype min = masked

    answer = post(server, f"/collections/{C}/statistics", FIELD, **params, percentiles=[5, 50, 95], histogram_bins=16)
    assert answer.status_code == 200, answer.text
    properties = answer.json()["properties"]
    assert properties["pixels"] == inside.sum()
    for b, name in enumerate(("red", "nir")):
        assert_statistics(properties["statistics"][name], feature[b], (5, 50, 95), 16)

    per_date = post(server, f"/collections/{C}/statistics", FIELD, **params, per_date="true").json()["properties"]
    assert [d["item"] for d in per_date["dates"]] == scenes(shared_data)
    for (bands, clear, _), date in zip(stacks, per_date["dates"], strict=True):
        for b, name in enumerate(("red", "nir")):
            assert_statistics(date["statistics"][name], np.where(inside & clear, bands[b], np.nan)[FIELD_PIXELS], rtol=1e-6)
    assert min(d["statistics"]["red"]["valid_percent"] for d in per_date["dates"]) < 50  # cloudy dates


def test_item_statistics_with_histogram_edges(server, shared_data):
    bands, _, _ = read_scene(shared_data, ITEM, ["nir"])
    edges = [0.0, 0.1, 0.2, 0.3, 0.5, 1.0]
    answer = post(server, f"/collections/{C}/items/{ITEM}/statistics", FIELD, assets="nir", coord_crs="EPSG:32633",
                  histogram_bins=",".join(map(str, edges)))
    assert answer.status_code == 200, answer.text
    stats = answer.json()["properties"]["statistics"]["nir"]
    inside = field_inside()
    assert_statistics(stats, np.where(inside, bands[0], np.nan)[FIELD_PIXELS], bins=edges, rtol=1e-6)
    assert stats["valid_pixels"] + stats["masked_pixels"] == inside.sum()


def test_timeseries_at_a_point_equals_the_masked_pixel_values(server, shared_data):
    lon, lat = 15.7012, 46.4488
    (x,), (y,) = transform_coords("EPSG:4326", "EPSG:32633", [lon], [lat])
    row, col = rowcol(NATIVE, x, y)
    pixel = Window(col, row, 1, 1)
    answer = server.get(f"/collections/{C}/timeseries", params={"point": f"{lon},{lat}", "index": "ndvi", "cloud_mask": "scl"})
    assert answer.status_code == 200, answer.text
    properties = answer.json()["properties"]
    rows = properties["timeseries"]
    assert [r["item"] for r in rows] == scenes(shared_data)
    assert properties["band_names"] == ["ndvi"] and properties["pixels"] == 1
    masked = 0
    for item, row_ in zip(scenes(shared_data), rows):
        (red, nir), clear, _ = read_scene(shared_data, item, ["red", "nir"], pixel)
        if clear[0, 0]:
            ndvi = ref.normalized_difference(nir, red)[0, 0]
            assert row_["ndvi"] == pytest.approx(float(ndvi), rel=1e-6), item
            assert row_["valid_fraction"] == 1.0
        else:
            masked += 1
            assert row_["ndvi"] is None and row_["cloud_masked_fraction"] == 1.0
    assert 0 < masked < len(rows)  # the point is cloudy on some dates only


def test_timeseries_over_a_field_equals_masked_means(server, shared_data):
    answer = post(server, f"/collections/{C}/timeseries", FIELD, index="ndvi", coord_crs="EPSG:32633", datetime=AUGUST)
    assert answer.status_code == 200, answer.text
    rows = answer.json()["properties"]["timeseries"]
    inside = field_inside()
    for item, row_ in zip(scenes(shared_data), rows, strict=True):
        (red, nir), clear, data = read_scene(shared_data, item, ["red", "nir"])
        ndvi = ref.normalized_difference(nir, red)
        usable = inside & clear
        expected = ndvi[usable & np.isfinite(ndvi)].astype(np.float64)
        assert row_["valid_pixels"] == usable.sum()
        assert row_["cloud_masked_pixels"] == (inside & data & ~clear).sum()
        assert row_["valid_fraction"] == pytest.approx(usable.sum() / inside.sum(), abs=1e-6)
        if expected.size:
            assert row_["ndvi"] == pytest.approx(expected.mean(), rel=1e-6)
        else:
            assert row_["ndvi"] is None


SELF_INTERSECTING = {"type": "Polygon", "coordinates": [[[15.6, 46.4], [15.7, 46.5], [15.7, 46.4], [15.6, 46.5], [15.6, 46.4]]]}
LINE = {"type": "LineString", "coordinates": [[15.6, 46.4], [15.7, 46.5]]}


@pytest.mark.parametrize(
    ("method", "path", "params", "body", "status", "field"),
    [
        ("POST", "/feature.npy", {"assets": "red"}, SELF_INTERSECTING, 400, "geometry"),
        ("POST", "/feature.npy", {"assets": "red"}, LINE, 400, "geometry"),
        ("POST", "/statistics", {"assets": "red"}, {"type": "Polygon", "coordinates": [[[15.6, 46.4], [200, 46.5], [15.7, 46.4]]]}, 400, "geometry"),
        ("POST", "/statistics", {"assets": "red"}, {"type": "Polygon", "coordinates": "nonsense"}, 400, "geometry"),
        ("POST", "/statistics", {"assets": "red"}, {"type": "Feature", "geometry": None}, 400, "geometry"),
        ("POST", "/timeseries", {"index": "ndvi"}, {"type": "Point", "coordinates": [15.6, 95.0]}, 400, "geometry"),
        ("POST", "/statistics", {"assets": "red", "percentiles": 120, "coord_crs": "EPSG:32633"}, FIELD, 400, "percentiles"),
        ("POST", "/statistics", {"assets": "red", "histogram_bins": "3,2,1", "coord_crs": "EPSG:32633"}, FIELD, 400, "histogram_bins"),
        ("POST", f"/items/{ITEM}/statistics", {"assets": "red", "per_date": "true", "coord_crs": "EPSG:32633"}, FIELD, 400, "per_date"),
        ("GET", "/bbox/15.8,46.4,15.6,46.5.npy", {"assets": "red"}, None, 400, "bbox"),
        ("GET", "/bbox/10,40,20,50.npy", {"assets": "red"}, None, 400, "bbox"),  # 1000 km at 120 m
        ("GET", "/bbox/15.6,46.4,15.8,46.5.npy", {"assets": "red", "resolution": 1}, None, 400, "resolution"),
        ("GET", "/bbox/15.6,46.4,15.8,46.5/9000x9000.npy", {"assets": "red"}, None, 400, "width"),
        ("GET", "/bbox/15.6,46.4,15.8,46.5.npy", {"assets": "red", "resolution": 10, "max_items": 100}, None, 400, "max_items"),
        ("GET", "/bbox/15.6,46.4,15.8,46.5.npy", {"assets": "red", "dst_crs": "EPSG:999999"}, None, 422, "dst_crs"),
        ("GET", "/bbox/15.6,46.4,15.8,46.5.npy", {"assets": "nope"}, None, 404, "asset"),
        ("GET", "/timeseries", {"index": "ndvi"}, None, 400, "point"),
        ("GET", "/timeseries", {"index": "ndvi", "point": "15.6"}, None, 400, "point"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(server, method, path, params, body, status, field):
    import httpx

    response = httpx.request(method, f"{server.url}/collections/{C}{path}", params=params, json=body, timeout=60)
    assert response.status_code == status, response.text
    assert field in str(response.json()["detail"])
