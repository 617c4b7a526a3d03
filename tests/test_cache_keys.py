"""Tile cache keys cannot collide: the regression of issue 11 first, then every parameter of the tile routes."""

from __future__ import annotations

import pytest

from mosaics.catalog import Catalog
from tests.conftest import start_server, stop_server

C = "sentinel-2-l2a-timeseries"
ITEM = "S2B_33TWM_20230813_0_L2A"
ITEM_TILE = f"/collections/{C}/items/{ITEM}/tiles/WebMercatorQuad/11/1113/727"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, shared_data):
    """A server with a fresh tile cache (so that every first request is a miss)."""
    home = tmp_path_factory.mktemp("keys")
    Catalog(home / "catalog.db").ingest(shared_data / C / "collection.json")
    server = start_server(home)
    yield server
    stop_server(server)


def test_repeated_parameters_keep_their_order(keyed):
    """Issue 11: `assets=red&assets=green&assets=blue` then `assets=blue&…&assets=red` was a hit with the first bytes."""
    rgb = keyed.get(f"{ITEM_TILE}.npy?assets=red&assets=green&assets=blue")
    bgr = keyed.get(f"{ITEM_TILE}.npy?assets=blue&assets=green&assets=red")
    assert rgb.status_code == bgr.status_code == 200
    assert bgr.headers["X-Cache"] == "miss"
    assert bgr.headers["ETag"] != rgb.headers["ETag"]
    assert bgr.content != rgb.content
    again = keyed.get(f"{ITEM_TILE}.npy?assets=blue&assets=green&assets=red")
    assert again.headers["X-Cache"] == "hit" and again.content == bgr.content


# --- every parameter of the tile routes ------------------------------------------------------------

ROUTES = {  # name: (OpenAPI path, URL, base query)
    "item": (
        "/collections/{collection_id}/items/{item_id}/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}",
        f"{ITEM_TILE}.png", {"assets": "red", "rescale": "0,0.3", "tilesize": "64"},
    ),
    "composite": (
        "/collections/{collection_id}/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}",
        f"/collections/{C}/tiles/WebMercatorQuad/11/1113/727.png",
        {"assets": "red", "rescale": "0,0.3", "tilesize": "64", "max_items": "2"},
    ),
}
# Two valid values per query parameter. A parameter of the routes that is missing here fails the test.
VALUES = {
    "scale": ("2", "3"), "tilesize": ("64", "96"), "buffer": ("1", "2"), "padding": ("1", "2"),
    "assets": ("red", "green"), "expression": ("red/green", "green/red"), "index": ("ndvi", "ndwi"),
    "nodata": ("0", "1"), "resampling": ("nearest", "bilinear"), "reproject": ("nearest", "bilinear"),
    "colormap_name": ("viridis", "magma"), "rescale": ("0,0.3", "0,0.5"),
    "colormap": ('{"0": [0, 0, 0, 255], "255": [255, 255, 255, 255]}', '{"0": [0, 0, 0, 255], "255": [255, 0, 0, 255]}'),
    "color_formula": ("gamma r 1.5", "gamma r 2"), "return_mask": ("true", "false"),
    "datetime": ("2023-08-01/2023-08-31", "2023-08-10/2023-08-20"), "max_cloud": ("50", "90"),
    "max_items": ("1", "3"), "sortby": ("-datetime", "eo:cloud_cover"), "method": ("median", "first"),
    "p": ("10", "90"), "cloud_mask": ("scl", "none"), "mask_dilation": ("0", "2"),
    "correction": ("none", "s2_harmonize"), "provenance": ("false", "true"),
    "asset_bidx": ("red|1", "red|01"),  # the data's assets have one band; repeats join (up to 4 bands for PNG)
}  # fmt: skip
RECIPE = ("assets", "expression", "index")
NEEDS = {"p": {"method": "percentile"}, "provenance": {"method": "first"}}  # parameters that act only with another


def canonical(route: str, query: list[tuple[str, str]], defaults: dict[str, str]) -> tuple:
    """What the server must treat as the same request: names in any order, repeated values in their order,
    comma-separated assets as repeated ones, documented defaults as absent."""
    values: dict[str, list[str]] = {}
    for name, value in query:
        values.setdefault(name, []).extend(value.split(",") if name == "assets" else [value])
    return route, tuple(sorted((k, tuple(v)) for k, v in values.items() if [defaults.get(k)] != v))


def test_every_tile_parameter_permuted_and_repeated(keyed):
    """Different requests never share a cache entry; equivalent spellings of one request do (hits)."""
    spec = keyed.get("/openapi.json").json()
    entries: dict[tuple, str] = {}  # canonical request → ETag
    for route, (openapi_path, url, base) in ROUTES.items():
        parameters = [p for p in spec["paths"][openapi_path]["get"]["parameters"] if p["in"] == "query"]
        assert {p["name"] for p in parameters} <= VALUES.keys(), "give the new tile parameter two values here"
        defaults = {p["name"]: str(p["schema"]["default"]).lower() for p in parameters if "default" in p["schema"]}

        def send(query: list[tuple[str, str]]) -> None:
            key = canonical(route, query, defaults)
            for spelling in (query, sorted(query, key=lambda kv: kv[0], reverse=True)):  # names in another order
                response = keyed.get(url, params=spelling)
                assert response.status_code == 200, (spelling, response.text)
                etag, hit = response.headers["ETag"], response.headers["X-Cache"] == "hit"
                if key in entries:
                    assert (hit, etag) == (True, entries[key]), f"{spelling}: an equivalent request was not a hit"
                else:
                    assert not hit and etag not in entries.values(), f"{spelling}: answered from another request's entry"
                    entries[key] = etag

        for parameter in parameters:
            name, repeatable = parameter["name"], "array" in str(parameter["schema"])
            dropped = {name, *(RECIPE if name in RECIPE else ()), *(("tilesize",) if name == "scale" else ())}
            query = [*({k: v for k, v in base.items() if k not in dropped} | NEEDS.get(name, {})).items()]
            first, second = VALUES[name]
            for value in (first, second):
                send([*query, (name, value)])
            if repeatable:
                for values in ((first, second), (second, first), (first, first), (second, second, first)):
                    send([*query, *((name, v) for v in values)])
                send([*query, (name, f"{first},{second}")] if name == "assets" else [*query, (name, first)])
            else:
                response = keyed.get(url, params=[*query, (name, first), (name, second)])
                assert response.status_code == 400 and name in response.json()["detail"], (name, response.text)
    assert len(set(entries.values())) == len(entries)


def test_preset_and_its_expansion_share_an_entry(keyed):
    expanded = keyed.get(f"{ITEM_TILE}.png", params={"rescale": "0,0.25", "color_formula": "gamma rgb 1.3",
                                                      "assets": "red,green,blue"})
    preset = keyed.get(f"{ITEM_TILE}.png?preset=truecolor")
    other = keyed.get(f"{ITEM_TILE}.png?preset=falsecolor")
    assert expanded.status_code == preset.status_code == other.status_code == 200
    assert preset.headers["ETag"] == expanded.headers["ETag"] and preset.headers["X-Cache"] == "hit"
    assert other.headers["ETag"] != preset.headers["ETag"] and other.headers["X-Cache"] == "miss"


@pytest.mark.parametrize("path,name,values", [
    (f"/collections/{C}/items", "limit", ("1", "2")),
    (f"/collections/{C}/items/{ITEM}/WebMercatorQuad/tilejson.json?assets=red", "tile_scale", ("1", "2")),
    (f"/collections/{C}/point/15.8,46.5?assets=red", "cloud_mask", ("scl", "none")),
    ("/wmts?SERVICE=WMTS", "REQUEST", ("GetCapabilities", "GetCapabilities")),
])  # fmt: skip
def test_one_value_parameters_given_twice_are_refused_on_every_route(keyed, path, name, values):
    response = keyed.get(path, params=[(name, value) for value in values])
    assert response.status_code == 400 and name in response.text, response.text
