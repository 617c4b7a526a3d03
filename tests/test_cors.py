"""CORS from settings: reads (and computing POSTs) from any origin by default, writes (exports) only from the
same origin or `JEO_CORS_WRITE_ORIGINS`; checked with Chromium's fetch and with raw requests."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Server, start_server, stop_server
from tests.test_viewer import browser  # noqa: F401 - Chromium, headless

C = "sentinel-2-l2a-timeseries"
TILE = f"/collections/{C}/items/S2B_33TWM_20230813_0_L2A/tiles/WebMercatorQuad/11/1113/727.png?assets=red&rescale=0,0.3"
ELSEWHERE = "http://elsewhere.example"


@pytest.fixture(scope="module")
def configured(jeo_home, server) -> Server:
    """A second server: reads and writes allowed only from the session server's origin."""
    running = start_server(jeo_home, env={"JEO_CORS_ORIGINS": server.url, "JEO_CORS_WRITE_ORIGINS": server.url})
    yield running
    stop_server(running)


def fetch(browser, page_origin: str, url: str, method: str = "GET") -> str:  # noqa: F811 - the fixture's value
    """What a script of a page at `page_origin` gets from `fetch(url)`: `status <n>` or `blocked`."""
    page = browser.new_page()
    try:
        page.goto(f"{page_origin}/healthz")
        return page.evaluate(
            """async ([url, method]) => {
                const init = method === "GET" ? {} : {method, headers: {"content-type": "application/json"}, body: "{}"};
                try { return `status ${(await fetch(url, init)).status}`; } catch (error) { return "blocked"; }
            }""",
            [url, method],
        )
    finally:
        page.close()


def test_browser_reads_anywhere_writes_only_where_allowed(browser, server, configured):  # noqa: F811
    assert fetch(browser, configured.url, server.url + TILE) == "status 200"
    assert fetch(browser, configured.url, server.url + "/exports", "POST") == "blocked"
    assert fetch(browser, configured.url, server.url + "/exports/nope", "DELETE") == "blocked"
    assert fetch(browser, server.url, configured.url + TILE) == "status 200"
    assert fetch(browser, server.url, configured.url + "/exports", "POST") == "status 422"  # reached the API
    assert fetch(browser, server.url, configured.url + "/exports/nope", "DELETE") == "status 404"
    statistics = f"/collections/{C}/items/S2B_33TWM_20230813_0_L2A/statistics?assets=red"
    assert fetch(browser, configured.url, server.url + statistics, "POST") == "status 400"  # a computation: a read


def test_cross_origin_writes_are_refused_before_they_run(server):
    """Form-encoded POSTs need no preflight: a foreign Origin is refused with 403 by the server itself."""
    before = server.get("/exports").json()["exports"]
    body = {"collection": C, "preset": "truecolor", "bbox": [15.5, 46.4, 15.6, 46.5]}
    refused = httpx.post(f"{server.url}/exports", json=body, headers={"Origin": ELSEWHERE}, timeout=60)
    assert refused.status_code == 403 and "JEO_CORS_WRITE_ORIGINS" in refused.json()["detail"]
    assert server.get("/exports").json()["exports"] == before
    assert httpx.delete(f"{server.url}/exports/nope", headers={"Origin": ELSEWHERE}).status_code == 403
    assert httpx.delete(f"{server.url}/exports/nope", headers={"Origin": server.url}).status_code == 404
    preflight = httpx.options(f"{server.url}/exports", headers={
        "Origin": ELSEWHERE, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 400 and "access-control-allow-origin" not in preflight.headers


def test_read_origins_from_settings(server, configured):
    assert server.get(TILE, headers={"Origin": ELSEWHERE}).headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-origin" not in configured.get(TILE, headers={"Origin": ELSEWHERE}).headers
    allowed = configured.get(TILE, headers={"Origin": server.url})
    assert allowed.headers["access-control-allow-origin"] == server.url
