"""Unreadable data and a process out of memory budget: a missing or corrupt COG in an item request is a 502
naming the item (no server paths), composites skip the scene; beyond the budget, requests get 503 with
`Retry-After` while cached tiles are still served."""

from __future__ import annotations

import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import start_server, stop_server

C = "sentinel-2-l2a-timeseries"
TRUNCATED = "S2A_33TWM_20230818_0_L2A"  # B04 (red) cut to 5,000 bytes
MISSING = "S2B_33TWM_20230813_0_L2A"  # B03 (green) deleted
ITEM_TILE = "/collections/{C}/items/{item}/tiles/WebMercatorQuad/11/1113/727.npy"
COMPOSITE = f"/collections/{C}/tiles/WebMercatorQuad/10/555/363.npy"


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, shared_data):
    """A server over a copy of the time series with one truncated and one deleted COG (after ingest), and a
    memory budget of one byte with no wait: one heavy request at a time, the others refused at once."""
    from mosaics.catalog import Catalog

    root = tmp_path_factory.mktemp("faulty")
    data = root / "data"
    shutil.copytree(shared_data / C, data / C)
    home = root / "home"
    home.mkdir()
    Catalog(home / "catalog.db").ingest(data / C / "collection.json")
    path = data / C / TRUNCATED / "B04.tif"
    path.write_bytes(path.read_bytes()[:5000])
    (data / C / MISSING / "B03.tif").unlink()
    server = start_server(home, env={"JEO_REQUEST_BUDGET_BYTES": "1", "JEO_REQUEST_BUDGET_WAIT": "0"})
    server.data = data
    yield server
    stop_server(server)


def assert_no_server_paths(server, text: str) -> None:
    assert str(server.data) not in text and str(server.home) not in text
    assert not re.search(r"(^|[\s'\"(])/(tmp|work|home|root|vsi)", text), text
    assert "Traceback" not in text


@pytest.mark.parametrize(
    "item,path,query,asset",
    [
        (TRUNCATED, ITEM_TILE, {"assets": "red"}, "B04"),
        (TRUNCATED, ITEM_TILE, {"index": "ndvi"}, "B04"),
        (MISSING, ITEM_TILE, {"assets": "red,green,blue"}, "B03"),
        (MISSING, "/collections/{C}/items/{item}/preview.png", {"assets": "green", "rescale": "0,0.3"}, "B03"),
        (MISSING, "/collections/{C}/items/{item}/point/15.8,46.5", {"assets": "green"}, "B03"),
        (MISSING, "/collections/{C}/items/{item}/info", {"assets": "green"}, "B03"),
        (TRUNCATED, "/collections/{C}/items/{item}/preview.npy", {"assets": "red", "max_size": "512"}, "B04"),
    ],
)
def test_unreadable_cog_is_a_502_naming_the_item(faulty, item, path, query, asset):
    response = faulty.get(path.format(C=C, item=item), params=query)
    assert response.status_code == 502, response.text
    detail = response.json()["detail"]
    assert f"item '{item}'" in detail
    assert_no_server_paths(faulty, response.text)


def test_composite_skips_unreadable_scenes_without_paths(faulty):
    response = faulty.get(COMPOSITE, params={"assets": "red,green"})
    assert response.status_code == 200, response.text
    assert set(response.headers["X-Items-Skipped"].split(",")) == {TRUNCATED, MISSING}
    point = faulty.get(f"/collections/{C}/point/15.8,46.5", params={"assets": "red,green"})
    assert point.status_code == 200, point.text
    errors = {entry["id"]: entry["error"] for entry in point.json()["items"] if "error" in entry}
    assert set(errors) == {TRUNCATED, MISSING}, errors
    assert all(item in error for item, error in errors.items())
    assert_no_server_paths(faulty, point.text)


def test_a_failed_read_does_not_fail_the_next_read_in_the_thread(faulty):
    """GDAL keeps the last error per thread; a stale one used to fail the next warped read of a healthy file
    (composite points named healthy scenes as unreadable)."""
    from mosaics.catalog import Catalog
    from mosaics.reader import READ_ERRORS, read_pixel

    catalog = Catalog(faulty.home / "catalog.db")
    broken, healthy = catalog.item(C, TRUNCATED), catalog.item(C, "S2A_33TWM_20230815_0_L2A")
    for _ in range(3):
        with pytest.raises(READ_ERRORS):
            read_pixel(broken, ["red"], 15.8, 46.5)
        assert read_pixel(healthy, ["red"], 15.8, 46.5).shape == (1,)


def test_beyond_the_budget_503_with_retry_after_and_cached_tiles_still_served(faulty):
    cached = faulty.get(COMPOSITE, params={"assets": "blue"})
    assert cached.status_code == 200, cached.text

    def heavy(i: int):
        return faulty.get(COMPOSITE, params={"assets": "blue", "rescale": f"0,{0.2 + i / 1000}"})

    def hit(_: int):
        return faulty.get(COMPOSITE, params={"assets": "blue"})

    refused = []
    with ThreadPoolExecutor(24) as pool:
        for round_ in range(5):  # uncached composites overlap on the server: with a 1-byte budget, one runs
            heavies = [pool.submit(heavy, round_ * 8 + i) for i in range(8)]
            hits = [pool.submit(hit, i) for i in range(16)]
            for future in hits:
                response = future.result()
                assert response.status_code == 200 and response.headers["X-Cache"] == "hit", response.text
            for future in heavies:
                response = future.result()
                assert response.status_code in (200, 503), response.text
                if response.status_code == 503:
                    refused.append(response)
            if refused:
                break
    assert refused, "no request overlapped another"
    assert refused[0].headers["Retry-After"] == "1"
    assert "busy" in refused[0].json()["detail"]
