"""tiler.client against a live server: values equal rasterio/numpy references and the export of the same recipe."""

from __future__ import annotations

import ipyleaflet
import numpy as np
import pandas as pd
import pytest

from tests.test_processing import AUGUST, C, FIELD, ITEM, NATIVE, UTM_BBOX, WINDOW, assert_values, read_scene, scenes
from tiler.client import Client, InvalidRequest, NotFound

LONLAT_BBOX = (15.66, 46.42, 15.74, 46.47)
RECIPE = {"assets": "red,nir", "method": "median", "cloud_mask": "scl", "datetime": AUGUST}


@pytest.fixture(scope="module")
def client(server):
    with Client(server.url) as client:
        yield client


def test_catalog_and_layers(client, shared_data):
    assert C in [c["id"] for c in client.collections()]
    found = client.items(C, bbox=LONLAT_BBOX, datetime=AUGUST)
    assert [i["id"] for i in found] == scenes(shared_data)[::-1]  # newest first
    layer = client.layer(C, preset="cloudfree-truecolor", name="cloud-free")
    assert isinstance(layer, ipyleaflet.TileLayer) and layer.name == "cloud-free"
    tile = client.http.get(layer.url.format(z=10, x=556, y=362))
    assert tile.status_code == 200 and tile.content[:4] == b"\x89PNG"
    url = client.tile_url(C, ITEM, assets=["red", "green", "blue"], rescale=(0, 0.3))
    assert url.endswith(f"/items/{ITEM}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png?assets=red%2Cgreen%2Cblue&rescale=0%2C0.3")


def test_read_item_is_a_georeferenced_data_array(client, shared_data):
    bands, _, _ = read_scene(shared_data, ITEM, ["red", "nir"])
    array = client.read(C, bbox=[float(v) for v in UTM_BBOX.split(",")], bbox_crs="EPSG:32633", item=ITEM,
                        assets="red,nir")  # fmt: skip
    assert array.dims == ("band", "y", "x") and list(array.band.values) == ["red", "nir"]
    assert array.rio.crs.to_epsg() == 32633
    assert array.rio.transform().almost_equals(NATIVE @ NATIVE.translation(WINDOW.col_off, WINDOW.row_off))
    assert array.time.values == np.datetime64("2023-08-18T10:07:54.167")
    assert_values(array.values, bands)


def test_composite_subset_equals_the_export_of_the_same_recipe(client, shared_data):
    subset = client.read(C, bbox=LONLAT_BBOX, **RECIPE)
    job = client.export(C, bbox=LONLAT_BBOX, executor="local", **RECIPE)
    exported = job.wait(timeout=300, progress=False).open()
    assert job.status()["status"] == "finished"
    assert exported.shape == subset.shape and list(exported.band.values) == ["red", "nir"]
    assert exported.rio.crs == subset.rio.crs
    assert exported.rio.transform() == subset.rio.transform()
    np.testing.assert_array_equal(exported.values, subset.values)  # NaN == NaN here
    assert np.isfinite(subset.values).mean() > 0.9
    assert sorted(subset.attrs["items"]) == sorted(scenes(shared_data))


def test_read_dates_gives_each_scene_cloud_masked(client, shared_data):
    cube = client.read_dates(C, bbox=[float(v) for v in UTM_BBOX.split(",")], bbox_crs="EPSG:32633", index="ndvi",
                             cloud_mask="scl", progress=False)  # fmt: skip
    assert cube.dims == ("time", "band", "y", "x") and cube.sizes["time"] == 5
    for t, item in enumerate(scenes(shared_data)):
        (red, nir), clear, _ = read_scene(shared_data, item, ["red", "nir"])
        assert str(cube.time.values[t])[:10] == f"{item.split('_')[2][:4]}-{item.split('_')[2][4:6]}-{item.split('_')[2][6:]}"
        expected = np.where(clear, (nir - red) / (nir + red), np.nan)
        assert_values(cube.values[t, 0], expected)


def test_timeseries_and_statistics_frames(client, shared_data):
    frame = client.timeseries(C, geometry=FIELD, index="ndvi", coord_crs="EPSG:32633")
    assert isinstance(frame.index, pd.DatetimeIndex) and list(frame["item"]) == scenes(shared_data)
    assert {"ndvi", "valid_fraction", "cloud_masked_fraction"} <= set(frame.columns)
    assert frame.attrs["band_names"] == ["ndvi"] and frame.attrs["cloud_mask"] == "scl"
    assert frame["cloud_masked_fraction"].max() > 0.5 and frame["valid_fraction"].max() > 0.9
    at_point = client.timeseries(C, point=(15.7012, 46.4488), index="ndvi")
    assert len(at_point) == 5 and at_point["ndvi"].isna().sum() == (at_point["valid_fraction"] == 0).sum() > 0
    stats = client.statistics(C, FIELD, per_date=True, percentiles=[10, 90], coord_crs="EPSG:32633", **RECIPE)
    assert [d["item"] for d in stats["dates"]] == scenes(shared_data)
    assert {"percentile_10", "percentile_90", "histogram"} <= set(stats["dates"][0]["statistics"]["nir"])


def test_server_errors_become_exceptions_with_the_server_message(client):
    with pytest.raises(NotFound, match="asset 'nope'"):
        client.read(C, bbox=LONLAT_BBOX, assets="nope")
    with pytest.raises(InvalidRequest, match="exceeds the limit") as error:
        client.read(C, bbox=LONLAT_BBOX, assets="red", resolution=0.5)
    assert error.value.parameter == "resolution" and error.value.status_code == 400
    with pytest.raises(InvalidRequest, match="dst_crs"):
        client.read(C, bbox=LONLAT_BBOX, assets="red", crs="EPSG:999999")
    with pytest.raises(InvalidRequest) as error:
        client.export(C, bbox=LONLAT_BBOX, executor="local", assets="red", method="nonsense")
    assert error.value.parameter == "method"
    with pytest.raises(NotFound, match="collection 'nope'"):
        client.timeseries("nope", point=(15.7, 46.45), index="ndvi")
