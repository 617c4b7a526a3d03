"""Browser tests of the Leaflet viewer (/viewer) and the OpenLayers WMTS page (/viewer/openlayers).

Debian's Chromium driven by Playwright for Python (no `playwright install`): the tests fail, never
skip, when /usr/bin/chromium is missing. Screenshots are written to each test's tmp_path.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
COLLECTION = "sentinel-2-l2a-timeseries"
MAP_BACKGROUND = np.array([0x1C, 0x27, 0x33])  # --map-bg of viewer.css
VIEWPORT = {"width": 1280, "height": 820}
TIMEOUT_MS = 120_000

ITEM_TILE = re.compile(r"/collections/[^/]+/items/[^/]+/tiles/")
COMPOSITE_TILE = re.compile(r"/collections/[^/]+/tiles/")
WMTS_TILE = re.compile(r"/wmts/1\.0\.0/[^/]+/[^/]+/[^/]+/[^/]+/\d+/\d+/\d+\.\w+")
# Chromium reports every non-2xx fetch as a console error; tile statuses are checked on the responses.
NETWORK_CONSOLE = re.compile(r"^Failed to load resource: the server responded with a status of 404")


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class PageLog:
    """What a page did: console errors, uncaught exceptions, responses, failed requests."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    responses: list[tuple[int, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def tiles(self, pattern: re.Pattern) -> list[tuple[int, str]]:
        return [(status, url) for status, url in self.responses if pattern.search(url)]

    def assert_clean(self) -> None:
        errors = [m for m in self.console_errors if not NETWORK_CONSOLE.search(m)]
        assert not errors, f"console errors: {errors}"
        assert not self.page_errors, f"uncaught page errors: {self.page_errors}"
        server_errors = [(s, u) for s, u in self.responses if s >= 500]
        assert not server_errors, f"5xx answers: {server_errors}"
        others = [(s, u) for s, u in self.responses if s >= 400 and s != 404]
        assert not others, f"4xx answers: {others}"
        # Aborted requests (a layer replaced while loading) are not failures of the server.
        failed = [f for f in self.failed if "ERR_ABORTED" not in f]
        assert not failed, f"failed requests: {failed}"


@pytest.fixture
def page(browser, server):
    """A fresh page on the test server, logging what happens."""
    context = browser.new_context(viewport=VIEWPORT, base_url=server.url)
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    log = PageLog()
    opened.on("console", lambda m: log.console_errors.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda e: log.page_errors.append(str(e)))
    opened.on("response", lambda r: log.responses.append((r.status, r.url)))
    opened.on("requestfailed", lambda r: log.failed.append(f"{r.url}: {r.failure}"))
    # Nothing may leave the loopback interface (no CDN, no basemap).
    opened.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/]).*"), lambda route: route.abort())
    opened.log = log
    yield opened
    context.close()


def decode_png(data: bytes) -> np.ndarray:
    """A PNG screenshot as an [H, W, 3] uint8 array."""
    from rasterio.io import MemoryFile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with MemoryFile(data) as memfile, memfile.open() as dataset:
            return np.moveaxis(dataset.read()[:3], 0, -1)


def assert_not_blank(png: bytes, *, min_colours: int = 2000, min_std: float = 12.0) -> np.ndarray:
    """The map shows imagery, not just its background and graticule.

    A map without a layer has ~1 % of its pixels away from the background colour (graticule, labels,
    controls), so: at least 10 % of the pixels differ from the background, and those have many
    distinct colours and real contrast.
    """
    rgb = decode_png(png)
    pixels = rgb.reshape(-1, 3).astype(np.int16)
    data = pixels[np.abs(pixels - MAP_BACKGROUND).max(axis=1) > 40]
    share = len(data) / len(pixels)
    assert share >= 0.10, f"only {share:.1%} of the map differs from the background"
    colours = len(np.unique(data, axis=0))
    std = float(data.std())
    assert colours >= min_colours, f"only {colours} distinct colours on the map"
    assert std >= min_std, f"map standard deviation {std:.1f}"
    return rgb


def wait_for_tiles(page, minimum: int) -> None:
    """Until the page counts `minimum` loaded tiles and none loading, then the network is idle."""
    page.wait_for_function(
        "n => Number(document.body.dataset.tilesLoaded || 0) >= n && document.body.dataset.tilesLoading === '0'",
        arg=minimum, timeout=TIMEOUT_MS,
    )
    page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)
    # Tiles fade in: screenshot only once every one is drawn at full opacity.
    page.wait_for_function(
        """() => document.body.dataset.renderComplete !== undefined
            ? document.body.dataset.renderComplete === "true"
            : [...document.querySelectorAll("img.leaflet-tile-loaded")].every(i => getComputedStyle(i).opacity === "1")""",
        timeout=TIMEOUT_MS,
    )


def centre_tile(server, z: int) -> str:
    """`z/x/y` of the WebMercatorQuad tile at the centre of the collection's extent."""
    import morecantile

    collection = server.get(f"/collections/{COLLECTION}").json()
    west, south, east, north = collection["extent"]["spatial"]["bbox"][0]
    tile = morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, z)
    return f"{tile.z}/{tile.x}/{tile.y}"


def assert_tiles_ok(tiles: list[tuple[int, str]], minimum: int) -> None:
    """At least `minimum` tiles answered 200; the others only 404 (outside the footprint)."""
    ok = [url for status, url in tiles if status == 200]
    assert len(ok) >= minimum, f"{len(ok)} tiles answered 200: {tiles}"
    assert all(status in (200, 404) for status, _ in tiles), tiles


# ------------------------------------------------------------------ Leaflet viewer


def test_viewer_truecolor_preset(page, server, tmp_path):
    page.goto("/viewer")
    page.wait_for_function("document.body.dataset.ready === 'true'")
    page.select_option("#collection", COLLECTION)
    page.wait_for_function(
        "c => document.querySelector('#collection').value === c && !document.querySelector('#item').disabled",
        arg=COLLECTION,
    )
    page.check("input[name=mode][value=preset]")
    page.select_option("#preset", "truecolor")
    # TileJSON answers with the preset expanded (assets, rescale, color_formula).
    page.wait_for_function("document.querySelector('#tile-url').value.includes('assets=red%2Cgreen%2Cblue')")
    wait_for_tiles(page, 4)

    # Newest scene first, with date and cloud cover.
    first_option = page.locator("#item option").first.text_content()
    assert first_option.startswith("2023-08-20") and "% cloud" in first_option, first_option
    assert page.locator("#item option").count() == 5
    # Presets come from the WMTS capabilities.
    presets = page.locator("#preset option").evaluate_all("els => els.map(e => e.value)")
    assert {"truecolor", "falsecolor", "ndvi"} <= set(presets)

    url = page.input_value("#tile-url")
    assert url.startswith(server.url + f"/collections/{COLLECTION}/items/S2B_33TWM_20230820_0_L2A/tiles/WebMercatorQuad/")
    assert "{z}/{x}/{y}.png" in url and "assets=red%2Cgreen%2Cblue" in url and "rescale=0%2C0.25" in url, url
    assert page.locator("#error").is_hidden(), page.locator("#error").text_content()

    tiles = page.log.tiles(ITEM_TILE)
    assert_tiles_ok(tiles, 4)
    assert all("assets=red%2Cgreen%2Cblue" in u for _, u in tiles), tiles
    page.log.assert_clean()

    shot = page.locator("#map").screenshot(path=tmp_path / "viewer-truecolor.png")
    page.screenshot(path=tmp_path / "viewer-truecolor-page.png")
    assert_not_blank(shot)


def test_viewer_index_and_bands(page, server, tmp_path):
    """Index mode with a colormap, then a band combination of an older scene."""
    page.goto(f"/viewer#collection={COLLECTION}")
    page.wait_for_function("document.body.dataset.ready === 'true'")
    page.check("input[name=mode][value=index]")
    page.select_option("#index", "ndvi")
    page.select_option("#colormap", "viridis")
    page.wait_for_function("document.querySelector('#tile-url').value.includes('colormap_name=viridis')")
    wait_for_tiles(page, 4)
    url = page.input_value("#tile-url")
    assert "index=ndvi" in url and "colormap_name=viridis" in url and "rescale=-1%2C1" in url, url
    assert page.locator("#error").is_hidden(), page.locator("#error").text_content()
    assert_not_blank(page.locator("#map").screenshot(path=tmp_path / "viewer-ndvi.png"), min_colours=1000)

    page.select_option("#item", "S2B_33TWM_20230813_0_L2A")
    page.check("input[name=mode][value=bands]")
    page.select_option("#band-r", "nir")
    page.select_option("#band-g", "red")
    page.select_option("#band-b", "green")
    assert page.locator("#colormap").is_disabled()  # viridis stays chosen but does not apply to three bands
    page.fill("#rescale", "0,0.45 0,0.25 0,0.25")
    page.press("#rescale", "Enter")
    page.wait_for_function("document.querySelector('#tile-url').value.includes('assets=nir%2Cred%2Cgreen')")
    wait_for_tiles(page, 4)
    url = page.input_value("#tile-url")
    assert "/items/S2B_33TWM_20230813_0_L2A/" in url and url.count("rescale=") == 3, url
    assert "colormap_name" not in url, url
    assert page.locator("#error").is_hidden(), page.locator("#error").text_content()
    assert_tiles_ok(page.log.tiles(ITEM_TILE), 8)
    page.log.assert_clean()
    assert_not_blank(page.locator("#map").screenshot(path=tmp_path / "viewer-falsecolor.png"))


def test_viewer_shows_tile_error_detail(page, server):
    """A bad expression: the error line shows the server's JSON detail of the failed tile."""
    page.goto(f"/viewer#collection={COLLECTION}")
    page.wait_for_function("document.body.dataset.ready === 'true'")
    page.check("input[name=mode][value=expression]")
    page.fill("#expression", "(B99-B04)/(B99+B04)")
    page.press("#expression", "Enter")
    error = page.locator("#error")
    error.wait_for(state="visible")
    text = error.text_content()
    assert re.search(r"\b4\d\d\b", text) and "B99" in text, text
    z, x, y = re.search(r"Tile (\d+)/(\d+)/(\d+)", text).groups()
    answer = server.get(f"/collections/{COLLECTION}/items/S2B_33TWM_20230820_0_L2A/tiles/WebMercatorQuad/"
                        f"{z}/{x}/{y}.png", params={"expression": "(B99-B04)/(B99+B04)"})
    assert 400 <= answer.status_code < 500 and answer.json()["detail"] in text, (answer.text, text)
    assert not page.log.page_errors, page.log.page_errors


def test_viewer_composite_mode(page, server):
    """Composite (all dates): tiles from the collection endpoint, or the endpoint's error shown."""
    page.goto(f"/viewer#collection={COLLECTION}")
    page.wait_for_function("document.body.dataset.ready === 'true'")
    page.check("input[name=source][value=composite]")
    assert page.locator("#item-controls").is_hidden()
    assert page.input_value("#date-start") == "2023-08-10" and page.input_value("#date-end") == "2023-08-20"
    page.select_option("#method", "median")
    page.select_option("#cloud-mask", "scl")
    page.wait_for_function("document.querySelector('#tile-url').value.includes('method=median')")
    url = page.input_value("#tile-url")
    assert url.startswith(server.url + f"/collections/{COLLECTION}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png?")
    assert "datetime=2023-08-10%2F2023-08-20" in url and "cloud_mask=scl" in url and "preset=truecolor" in url
    page.wait_for_function(
        "() => !document.querySelector('#error').hidden || Number(document.body.dataset.tilesLoaded || 0) >= 1"
    )
    probe = server.get(url.replace(server.url, "").replace("{z}/{x}/{y}", centre_tile(server, 9)))
    if probe.status_code == 200:
        wait_for_tiles(page, 4)
        assert page.locator("#error").is_hidden(), page.locator("#error").text_content()
    else:  # the endpoint is missing or refuses: its detail is on the page
        page.locator("#error").wait_for(state="visible")
        assert str(probe.status_code) in page.locator("#error").text_content()
    assert not page.log.page_errors, page.log.page_errors


# ------------------------------------------------------------------ OpenLayers WMTS page


def test_openlayers_wmts_layer(page, server, tmp_path):
    page.goto("/viewer/openlayers")
    page.wait_for_function("document.body.dataset.ready === 'true'")
    layers = page.locator("#layer option").evaluate_all("els => els.map(e => e.value)")
    assert f"{COLLECTION}.truecolor" in layers and f"{COLLECTION}.ndvi" in layers
    page.select_option("#layer", f"{COLLECTION}.truecolor")
    assert page.input_value("#matrix-set") == "WebMercatorQuad"
    times = page.locator("#time option").evaluate_all("els => els.map(e => e.value)")
    assert times == ["2023-08-20", "2023-08-18", "2023-08-15", "2023-08-13", "2023-08-10"]
    assert page.input_value("#time") == "2023-08-20"
    wait_for_tiles(page, 4)
    assert page.locator("#error").is_hidden(), page.locator("#error").text_content()
    # The page first shows the first layer of the capabilities: keep the chosen layer's tiles.
    tiles = [(s, u) for s, u in page.log.tiles(WMTS_TILE) if f"/{COLLECTION}.truecolor/" in u]
    assert_tiles_ok(tiles, 4)
    assert all(f"/{COLLECTION}.truecolor/default/2023-08-20/WebMercatorQuad/" in u for _, u in tiles), tiles
    assert_not_blank(page.locator("#map").screenshot(path=tmp_path / "openlayers-truecolor.png"))

    # Another date: the Time dimension changes in the tile URLs.
    page.select_option("#time", "2023-08-13")
    page.wait_for_function(
        "() => performance.getEntriesByType('resource').some(e => e.name.includes('/2023-08-13/WebMercatorQuad/'))"
    )
    wait_for_tiles(page, 4)
    dated = [(s, u) for s, u in page.log.tiles(WMTS_TILE) if f"/{COLLECTION}.truecolor/default/2023-08-13/" in u]
    assert_tiles_ok(dated, 4)
    page.log.assert_clean()
    page.screenshot(path=tmp_path / "openlayers-page.png")
    assert_not_blank(page.locator("#map").screenshot(path=tmp_path / "openlayers-0813.png"))
