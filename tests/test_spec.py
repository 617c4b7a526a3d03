"""One resolved request: a composite tile, point or WMTS composite layer tile searches the catalog once, and the
spec validates in one place for the tile endpoints and exports alike."""

from __future__ import annotations

import httpx
import pytest

from mosaics.catalog import Catalog
from mosaics.cloudmasks import CloudMask
from mosaics.composite import Selection
from mosaics.errors import InvalidParameter
from mosaics.recipe import Recipe
from mosaics.spec import CompositeSpec
from tests.test_cache_writes import home, in_process_server  # noqa: F401 - `home` is a fixture
from tiler.exports.request import ExportConfig, ExportRequest, prepare
from tiler.presets import PresetRegistry
from tiler.settings import Settings

C = "sentinel-2-l2a-timeseries"  # the collection of `home`
COMPOSITE = f"/collections/{C}/tiles/WebMercatorQuad/11/1113/727.npy"


def test_one_catalog_search_per_composite_request(home):
    with in_process_server(Settings(home=home)) as (url, app):
        catalog, searches = app.state.catalog, []
        search = catalog.search
        catalog.search = lambda *args, **kwargs: searches.append(kwargs) or search(*args, **kwargs)
        with httpx.Client(base_url=url, timeout=120) as client:
            tile = client.get(COMPOSITE, params={"assets": "red,nir", "method": "max_ndvi", "datetime": "2023-08-01/2023-08-31"})
            assert tile.status_code == 200 and tile.headers["X-Cache"] == "miss", tile.text
            assert len(searches) == 1
            searches.clear()
            point = client.get(f"/collections/{C}/point/15.8,46.5", params={"assets": "red,nir"})
            assert point.status_code == 200, point.text
            assert len(searches) == 1
            client.get("/wmts/1.0.0/WMTSCapabilities.xml")  # the layer index is built once per catalog version
            searches.clear()
            layer = client.get(f"/wmts/1.0.0/{C}.cloudfree-truecolor/default/2023-08-01--2023-08-31/WebMercatorQuad/11/727/1113.png")
            assert layer.status_code == 200 and layer.headers["X-Cache"] == "miss", layer.text
            assert len(searches) == 1  # the layer's period is given: no search for the preset's default
    assert tile.headers["X-Items"] and len(tile.headers["X-Items"].split(",")) == int(tile.headers["X-Items-Read"])


FIELD = {"type": "Polygon", "coordinates": [[[15.62, 46.42], [15.68, 46.42], [15.68, 46.47], [15.62, 46.42]]]}


def test_one_catalog_search_per_area_request(home):
    """The native grid is the newest selected scene's: the area's scenes are searched once, not once more for it."""
    with in_process_server(Settings(home=home)) as (url, app):
        catalog, searches = app.state.catalog, []
        search = catalog.search
        catalog.search = lambda *args, **kwargs: searches.append(kwargs) or search(*args, **kwargs)
        base, params = f"/collections/{C}", {"assets": "red,nir", "datetime": "2023-08-01/2023-08-31"}
        with httpx.Client(base_url=url, timeout=120) as client:
            for method, path, extra, body in [
                ("GET", "/bbox/15.6,46.4,15.7,46.5.npy", {}, None),
                ("POST", "/feature.npy", {}, FIELD),
                ("POST", "/statistics", {}, FIELD),
                ("POST", "/timeseries", {}, FIELD),
                ("GET", "/timeseries", {"point": "15.65,46.45"}, None),
            ]:
                searches.clear()
                answer = client.request(method, base + path, params={**params, **extra}, json=body)
                assert answer.status_code == 200, (path, answer.text)
                assert len(searches) == 1, path


def test_export_estimate_searches_the_area_once(home):
    """Each chunk's scenes are taken from one search of the whole grid, and are those its own search finds."""
    settings = Settings(home=home)
    catalog, searches = Catalog(home / "catalog.db"), []
    search = catalog.search
    catalog.search = lambda *args, **kwargs: searches.append(kwargs) or search(*args, **kwargs)
    request = ExportRequest(
        collection=C, assets=["red"], datetime="2023-08-01/2023-08-31", bbox=[499980, 5090220, 609780, 5200020],
        bbox_crs="EPSG:32633", crs="EPSG:32633", resolution=120, chunk_size=256,
    )  # the whole 33TWM tile in 16 chunks
    plan = prepare(request, catalog=catalog, presets=PresetRegistry.from_files(settings.presets),
                   config=ExportConfig.from_settings(settings))  # fmt: skip
    assert plan.estimate["chunks"] == 16
    assert len(searches) == 3  # the collection's newest scene, the area's scenes and the grid's
    selection = plan.selection_object()
    per_chunk = [search(C, bbox=plan.chunk_grid(chunk).bounds, bbox_crs=plan.crs, datetime=selection.datetime,
                        limit=selection.max_items) for chunk in range(plan.chunks_total)]  # fmt: skip
    assert plan.estimate["item_reads"] == sum(map(len, per_chunk))
    assert plan.estimate["items"] == len({item.id for found in per_chunk for item in found})


@pytest.mark.parametrize(("params", "parameter"), [
    ({"method": "magic"}, "method"),
    ({"method": "percentile"}, "p"),
    ({"method": "median", "provenance": True}, "provenance"),
    ({"correction": "magic"}, "correction"),
])
def test_the_spec_validates_before_any_search(params, parameter):
    with pytest.raises(InvalidParameter) as raised:
        CompositeSpec(Recipe(assets=("red",)), Selection(), **params)
    assert raised.value.parameter == parameter


def test_unknown_mask_is_named():
    with pytest.raises(InvalidParameter) as raised:
        CompositeSpec.from_params(Selection(), assets=["red"], cloud_mask="fog")
    assert raised.value.parameter == "cloud_mask"
    assert CompositeSpec.from_params(Selection(), assets=["red"], cloud_mask="cloud_probability:30").cloud_mask == CloudMask(
        "cloud_probability", 30.0
    )
