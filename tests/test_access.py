"""Public and restricted collections, tokens and export owners (issue 12), on a real server with real data.

Two collections are restricted with the real CLI: R (the Sentinel-2 time series) and OTHER_R (Landsat).
Tokens, also from the CLI: `right` (grant on R, exports), `other` (grant on OTHER_R, exports), `revoked`,
`expired` and `reader` (all collections, no exports). The route matrix is generated from the served
OpenAPI document (the app's route table) plus the WMTS GetTile URLs the middleware answers, so a new
route is checked without editing this file (it fails, naming the route, if it needs a sample value).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from xml.etree import ElementTree

import httpx
import morecantile
import numpy as np
import pytest
import rasterio
from owslib.wmts import WebMapTileService
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from mosaics.catalog import Catalog
from tests.conftest import REPO_ROOT, start_server, stop_server
from tiler.tokens import digest
from tests.test_viewer import browser, page, wait_for_tiles, assert_not_blank, ITEM_TILE  # noqa: F401 - fixtures

R = "sentinel-2-l2a-timeseries"
OTHER_R = "landsat-8-l1"
PUBLIC = "sentinel-2-l2a-allbands"
ITEM = "S2B_33TWM_20230813_0_L2A"
LATEST = "S2B_33TWM_20230820_0_L2A"
WM = morecantile.tms.get("WebMercatorQuad")
INSIDE = WM.tile(15.9, 46.45, 10)
EXPORT = {"collection": R, "assets": ["red", "green", "blue"], "method": "median", "datetime": "2023-08-01/2023-08-31",
          "bbox": [499980, 5090220, 609780, 5200020], "bbox_crs": "EPSG:32633", "crs": "EPSG:32633",
          "resolution": 960, "executor": "local"}  # fmt: skip
CALLERS = ("none", "revoked", "expired", "other", "right")


CATALOG_URLS: dict[Path, str] = {}  # JEO_HOME → JEO_CATALOG_URL of the PostgreSQL runs


def environment(home: Path) -> dict[str, str]:
    """JEO_HOME, and JEO_CATALOG_URL when the module runs on PostgreSQL."""
    return {"JEO_HOME": str(home), **({"JEO_CATALOG_URL": CATALOG_URLS[home]} if home in CATALOG_URLS else {})}


def jeo(home: Path, *args: str) -> str:
    """Run the `jeo` command line against `home`; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "tiler.cli", *args], env={**os.environ, **environment(home)},
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def create_token(home: Path, name: str, *options: str) -> str:
    """`jeo token create`; the token is the last line of stdout."""
    return jeo(home, "token", "create", "--name", name, *options).strip().splitlines()[-1]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def tokens(request, tmp_path_factory, shared_data) -> tuple[Path, dict[str, str]]:
    """The catalog, restricted collections and tokens, on each backend."""
    home = tmp_path_factory.mktemp("access")
    if request.param == "postgres":
        CATALOG_URLS[home] = request.getfixturevalue("postgres").database()
    jeo(home, "ingest", str(shared_data / "catalog.json"))
    for collection in (R, OTHER_R):
        assert jeo(home, "access", "restrict", collection).strip() == f"{collection}: restricted"
    found = {
        "right": create_token(home, "right", "--collections", R, "--exports"),
        "other": create_token(home, "other", "--collections", OTHER_R, "--exports"),
        "revoked": create_token(home, "revoked", "--collections", R, "--exports"),
        "expired": create_token(home, "expired", "--collections", R, "--exports", "--expires", "1s"),
        "reader": create_token(home, "reader", "--all"),
    }
    jeo(home, "token", "revoke", "revoked")
    return home, found


@pytest.fixture(scope="module")
def server(tokens):
    """The restricted server (this name makes test_viewer's `page` fixture open it)."""
    running = start_server(tokens[0], env=environment(tokens[0]))
    yield running
    stop_server(running)


def call(server, method: str, path: str, token: str | None = None, *, header: bool = False, **kwargs) -> httpx.Response:
    """A request with `token` in `Authorization: Bearer` (header) or `?access_token=`."""
    headers, params = dict(kwargs.pop("headers", {})), dict(kwargs.pop("params", {}))
    if token and header:
        headers["Authorization"] = f"Bearer {token}"
    elif token:
        params["access_token"] = token
    return httpx.request(method, server.url + path, headers=headers, params=params, timeout=120, **kwargs)


def wait_finished(server, export_id: str, token: str) -> dict:
    deadline = time.monotonic() + 300
    while (record := call(server, "GET", f"/exports/{export_id}", token).json())["status"] not in ("finished", "failed"):
        assert time.monotonic() < deadline, record
        time.sleep(0.5)
    assert record["status"] == "finished", record
    return record


@pytest.fixture(scope="module")
def export_id(server, tokens) -> str:
    """A finished export of R submitted with the `right` token."""
    response = call(server, "POST", "/exports", tokens[1]["right"], json=EXPORT)
    assert response.status_code == 202, response.text
    return wait_finished(server, response.json()["id"], tokens[1]["right"])["id"]


# --- the route matrix ---------------------------------------------------------------------------------------


SAMPLES = {
    "collection_id": R, "item_id": ITEM, "tileMatrixSetId": "WebMercatorQuad", "z": str(INSIDE.z),
    "x": str(INSIDE.x), "y": str(INSIDE.y), "scale": "2", "format": "png", "lon": "15.8", "lat": "46.5",
    "width": "128", "height": "128", "minx": "15.7", "miny": "46.4", "maxx": "15.8", "maxy": "46.5",
}  # fmt: skip
QUERY = [("assets", "red"), ("assets", "green"), ("assets", "blue"), ("rescale", "0,0.3"), ("point", "15.8,46.5")]
AREA = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
    [[15.7, 46.4], [15.8, 46.4], [15.8, 46.5], [15.7, 46.5], [15.7, 46.4]]]}}  # body of the other POST routes
QUERIES = {"/wmts": {"SERVICE": "WMTS", "REQUEST": "GetCapabilities"}}  # routes that need a query
# Answered by the middleware before routing (not in the route table): WMTS GetTile of R's layers.
WMTS_GETTILE = [
    ("GET", f"/wmts/1.0.0/{R}.truecolor/default/2023-08-13/WebMercatorQuad/{INSIDE.z}/{INSIDE.y}/{INSIDE.x}.png", {}),
    ("GET", "/wmts", {"SERVICE": "WMTS", "REQUEST": "GetTile", "LAYER": f"{R}.ndvi", "STYLE": "default",
                      "FORMAT": "image/png", "TILEMATRIXSET": "WebMercatorQuad", "TILEMATRIX": str(INSIDE.z),
                      "TILEROW": str(INSIDE.y), "TILECOL": str(INSIDE.x)}),
]  # fmt: skip


def route_requests(server, export: str) -> list[tuple[str, str, dict, dict | None, bool]]:
    """(method, path, query, JSON body, scoped) for every operation of the served OpenAPI document; scoped =
    about R or about the `right` token's export, so that only grant holders / the owner may get it."""
    requests = []
    for template, operations in server.get("/openapi.json").json()["paths"].items():
        names = re.findall(r"\{(\w+)\}", template)
        unknown = [n for n in names if n not in SAMPLES and n != "export_id"]
        assert not unknown, f"route {template}: add a sample value for {unknown} to SAMPLES"
        path = re.sub(r"\{(\w+)\}", lambda m: export if m[1] == "export_id" else SAMPLES[m[1]], template)
        for method, operation in operations.items():
            body = (EXPORT if template == "/exports" else AREA) if "requestBody" in operation else None
            scoped = bool({"collection_id", "export_id"} & set(names)) or body is not None
            query = QUERY if "collection_id" in names else QUERIES.get(template, {})
            requests.append((method.upper(), path, query, body, scoped))
    assert len(requests) > 30, "the route table looks incomplete"
    requests += [(method, path, query, None, True) for method, path, query in WMTS_GETTILE]
    # DELETE last: it cancels (a no-op on the finished export, but keep it after the reads).
    return sorted(requests, key=lambda r: r[0] == "DELETE")


def test_route_matrix(server, tokens, export_id):
    """Every route × {no token, revoked, expired, token for another collection, right token}: bad tokens 401
    everywhere; R's routes and the export's 404 without the grant / for others; R's id in no other answer."""
    tokens = tokens[1]
    wrong = []
    for method, path, query, body, scoped in route_requests(server, export_id):
        for name in CALLERS:
            token = tokens.get(name)
            # The right and the expired token go in the header, the others in the query string.
            response = call(server, method, path, token, header=name in ("right", "expired"), params=query, json=body)
            status = response.status_code
            if name in ("revoked", "expired"):
                ok = status == 401 and "access_token" in response.text and "Bearer" in response.headers["WWW-Authenticate"]
            elif name == "right" or not scoped:
                ok = status < 400
            else:
                ok = status == 404
            if name in ("none", "other") and status < 400:
                ok &= R not in response.text and (name == "other" or OTHER_R not in response.text)
            if not ok:
                wrong.append(f"{name:8} {method} {path} → {status} {response.text[:160]!r}")
    assert not wrong, "\n".join(wrong)


def test_revocation_is_immediate(server, tokens):
    home = tokens[0]
    token = create_token(home, "short-lived", "--collections", R)
    url = f"/collections/{R}/items/{ITEM}"
    assert call(server, "GET", url, token).status_code == 200
    jeo(home, "token", "revoke", "short-lived")
    response = call(server, "GET", url, token)
    assert response.status_code == 401 and "revoked" in response.json()["detail"]
    assert "short-lived\trevoked" in jeo(home, "token", "list")


def test_tokens_are_stored_hashed(tokens):
    home, found = tokens
    if home in CATALOG_URLS:
        import psycopg

        with psycopg.connect(CATALOG_URLS[home]) as conn:
            database = repr(conn.execute("SELECT * FROM jeo.tokens, jeo.grants").fetchall()).encode()
        assert all(digest(token).encode() in database for token in found.values())
    else:
        database = (home / "catalog.db").read_bytes() + b"".join(p.read_bytes() for p in home.glob("catalog.db-*"))
    assert all(token.encode() not in database for token in found.values())
    listed = jeo(home, "token", "list")
    assert all(token not in listed for token in found.values())
    assert re.search(r"^right\tactive\t" + re.escape(R) + r"\texports\texpires never$", listed, re.M), listed
    assert re.search(r"^expired\texpired\t", listed, re.M) and re.search(r"^reader\tactive\t\*\t-\t", listed, re.M)


def test_collection_listings_and_tilejson(server, tokens):
    found = tokens[1]
    ids = {name: {c["id"] for c in call(server, "GET", "/collections", found.get(name)).json()["collections"]}
           for name in ("none", "other", "right", "reader")}  # fmt: skip
    assert R not in ids["none"] and OTHER_R not in ids["none"] and PUBLIC in ids["none"]
    assert ids["other"] == ids["none"] | {OTHER_R}
    assert ids["right"] == ids["none"] | {R}
    assert ids["reader"] == ids["none"] | {R, OTHER_R}
    tilejson = call(server, "GET", f"/collections/{R}/items/{ITEM}/WebMercatorQuad/tilejson.json", found["right"],
                    header=True, params={"preset": "truecolor"}).json()  # fmt: skip
    (template,) = tilejson["tiles"]
    assert f"access_token={found['right']}" in template
    tile = httpx.get(template.format(z=INSIDE.z, x=INSIDE.x, y=INSIDE.y), timeout=120)
    assert tile.status_code == 200 and tile.headers["Cache-Control"].startswith("private")


# --- WMTS with real clients ---------------------------------------------------------------------------------


def test_wmts_capabilities_list_only_visible_layers(server, tokens):
    token = tokens[1]["right"]
    anonymous = server.get("/wmts/1.0.0/WMTSCapabilities.xml").text
    assert R not in anonymous and OTHER_R not in anonymous and f"{PUBLIC}.truecolor" in anonymous
    granted = call(server, "GET", "/wmts", token, params={"SERVICE": "WMTS", "REQUEST": "GetCapabilities"})
    assert granted.headers["Cache-Control"].startswith("private")
    root = ElementTree.fromstring(granted.content)
    templates = [e.get("template") for e in root.iter("{http://www.opengis.net/wmts/1.0}ResourceURL")]
    hrefs = [e.get("{http://www.w3.org/1999/xlink}href") for e in root.iter("{http://www.opengis.net/ows/1.1}Get")]
    assert any(f"/{R}.truecolor/" in t for t in templates) and OTHER_R not in granted.text
    assert all(t.endswith(f"?access_token={token}") for t in templates)
    assert hrefs and all(f"access_token={token}" in h for h in hrefs)


def test_gdal_reads_a_restricted_layer_with_a_token_only(server, tokens):
    token = tokens[1]["right"]
    layer = f"layer={R}.truecolor,tilematrixset=WebMercatorQuad"
    with rasterio.Env(GDAL_HTTP_TIMEOUT=60), rasterio.open(
        f"WMTS:{server.url}/wmts/1.0.0/WMTSCapabilities.xml?access_token={token},{layer}"
    ) as dataset:
        z = max(m.id for m in WM.tileMatrices if abs(m.cellSize - dataset.transform.a) / m.cellSize < 1e-6)
        tile = WM.tile(15.8, 46.5, int(z))
        left, _, _, top = WM.xy_bounds(tile)
        col = round((left - dataset.transform.c) / dataset.transform.a)
        row = round((dataset.transform.f - top) / -dataset.transform.e)
        pixels = dataset.read(window=Window(col, row, 256, 256))
    direct = call(server, "GET", f"/collections/{R}/items/{LATEST}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png",
                  token, params={"preset": "truecolor"})  # fmt: skip
    with rasterio.MemoryFile(direct.content) as memfile, memfile.open() as image:
        np.testing.assert_array_equal(pixels, image.read())
    assert pixels[:3].std() > 5
    with pytest.raises(RasterioIOError):
        rasterio.open(f"WMTS:{server.url}/wmts/1.0.0/WMTSCapabilities.xml,{layer}")


def test_owslib_reads_a_restricted_layer_with_a_token_only(server, tokens):
    token = tokens[1]["right"]
    service = WebMapTileService(f"{server.url}/wmts?access_token={token}", version="1.0.0")
    assert f"{R}.truecolor" in service.contents and OTHER_R + ".truecolor" not in service.contents
    tile = service.gettile(layer=f"{R}.truecolor", tilematrixset="WebMercatorQuad", tilematrix=str(INSIDE.z),
                           row=INSIDE.y, column=INSIDE.x, format="image/png").read()  # fmt: skip
    direct = call(server, "GET", f"/collections/{R}/items/{LATEST}/tiles/WebMercatorQuad/{INSIDE.z}/{INSIDE.x}/{INSIDE.y}.png",
                  token, params={"preset": "truecolor"})  # fmt: skip
    assert tile == direct.content
    anonymous = WebMapTileService(f"{server.url}/wmts", version="1.0.0")
    assert f"{R}.truecolor" not in anonymous.contents and f"{PUBLIC}.truecolor" in anonymous.contents
    with pytest.raises(Exception, match="404"):
        anonymous.gettile(layer=f"{R}.truecolor", tilematrixset="WebMercatorQuad", tilematrix=str(INSIDE.z),
                          row=INSIDE.y, column=INSIDE.x, format="image/png", style="default")  # fmt: skip


# --- the tile cache -----------------------------------------------------------------------------------------


def test_cached_restricted_tile_is_never_answered_without_a_grant(server, tokens):
    found = tokens[1]
    tile = WM.tile(15.7, 46.6, 11)
    path = f"/collections/{R}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png"
    query = {"assets": "red,green,blue", "rescale": "0,0.3", "datetime": "2023-08-01/2023-08-31"}
    first = call(server, "GET", path, found["right"], params=query)
    assert first.status_code == 200 and first.headers["X-Cache"] == "miss"
    assert first.headers["Cache-Control"] == "private, max-age=86400"
    etag = first.headers["ETag"]
    for name in ("none", "other"):
        for headers in ({}, {"If-None-Match": etag}):
            denied = call(server, "GET", path, found.get(name), params=query, headers=headers)
            assert denied.status_code == 404 and denied.json() == {"detail": f"collection '{R}' not found"}
            assert "ETag" not in denied.headers and first.content not in denied.content
    again = call(server, "GET", path, found["right"], params=query)
    assert again.headers["X-Cache"] == "hit" and again.content == first.content
    assert again.headers["Cache-Control"] == "private, max-age=86400"
    shared = call(server, "GET", path, found["reader"], header=True, params=query)  # another grant holder
    assert shared.headers["X-Cache"] == "hit" and shared.content == first.content


# --- exports ------------------------------------------------------------------------------------------------


def test_exports_belong_to_their_creator(server, tokens, export_id):
    found = tokens[1]
    owner_list = call(server, "GET", "/exports", found["right"]).json()["exports"]
    assert export_id in {e["id"] for e in owner_list}
    result = call(server, "GET", f"/exports/{export_id}/result", found["right"])
    assert result.status_code == 200 and result.content[:4] in (b"II*\x00", b"MM\x00*")
    for name in ("none", "other", "reader"):
        token = found.get(name)
        assert export_id not in {e["id"] for e in call(server, "GET", "/exports", token).json()["exports"]}
        for method, path in (("GET", ""), ("GET", "/result"), ("GET", "/item"), ("DELETE", "")):
            response = call(server, method, f"/exports/{export_id}{path}", token)
            assert response.status_code == 404 and response.json() == {"detail": f"export '{export_id}' not found"}
    assert call(server, "GET", f"/exports/{export_id}", found["right"]).json()["status"] == "finished"


def test_export_results_are_items_of_their_owner(server, tokens):
    """On both catalog backends: a finished export is an item of `exports` for its owner only, until DELETE."""
    found = tokens[1]
    submitted = call(server, "POST", "/exports", found["right"], json=EXPORT)
    assert submitted.status_code == 202, submitted.text
    export = wait_finished(server, submitted.json()["id"], found["right"])["id"]
    items = "/collections/exports/items"
    assert export in {f["id"] for f in call(server, "GET", items, found["right"]).json()["features"]}
    assert call(server, "GET", f"{items}/{export}", found["right"]).status_code == 200
    for name in ("none", "other", "reader"):
        assert export not in call(server, "GET", items, found.get(name)).text
        assert call(server, "GET", f"{items}/{export}", found.get(name)).status_code == 404
    assert call(server, "DELETE", f"/exports/{export}", found["right"]).json()["status"] == "finished"
    assert call(server, "GET", f"{items}/{export}", found["right"]).status_code == 404


def test_cancel_by_another_caller_is_refused(server, tokens):
    found = tokens[1]
    body = {**EXPORT, "resolution": 120, "chunk_size": 256}
    submitted = call(server, "POST", "/exports", found["right"], json=body)
    assert submitted.status_code == 202, submitted.text
    export = submitted.json()["id"]
    try:
        refused = call(server, "DELETE", f"/exports/{export}", found["other"])
        assert refused.status_code == 404
        assert call(server, "GET", f"/exports/{export}", found["right"]).json()["status"] in ("queued", "running", "finished")
    finally:
        assert call(server, "DELETE", f"/exports/{export}", found["right"]).status_code == 200


def test_exports_need_the_exports_right(server, tokens):
    found = tokens[1]
    response = call(server, "POST", "/exports", found["reader"], json=EXPORT)
    assert response.status_code == 403 and "exports" in response.json()["detail"]
    hidden = call(server, "POST", "/exports", found["other"], json=EXPORT)
    assert hidden.status_code == 404 and hidden.json()["detail"] == f"collection '{R}' not found"


def test_python_client_reads_a_restricted_collection_with_its_token(server, tokens):
    from tiler.client import Client, NotFound

    with Client(server.url, access_token=tokens[1]["right"]) as client:
        assert R in {c["id"] for c in client.collections()}
        array = client.read(R, bbox=(15.7, 46.4, 15.8, 46.5), item=ITEM, assets="red")
        assert array.shape[0] == 1 and np.isfinite(array.values).mean() > 0.9
        template = client.tile_url(R, ITEM, assets="red,green,blue", rescale="0,0.3")
        assert httpx.get(template.format(z=INSIDE.z, x=INSIDE.x, y=INSIDE.y), timeout=120).status_code == 200
    with Client(server.url) as anonymous, pytest.raises(NotFound):
        anonymous.collection(R)


# --- JWTs of a site identity provider -----------------------------------------------------------------------


ISSUER = "https://sso.example.test/realms/jeo"


class JWKS(http.server.BaseHTTPRequestHandler):
    """The identity provider's signing keys, served on loopback as Keycloak serves them."""

    keys: bytes = b""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.keys)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def sso(tokens):
    """A second server on the same catalog accepting JWTs of ISSUER (keys from a loopback JWKS URL); the
    function signing JWTs with the provider's key (or another one)."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key, impostor = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    JWKS.keys = json.dumps({"keys": [{**jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True),
                                      "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()  # fmt: skip
    jwks = http.server.ThreadingHTTPServer(("127.0.0.1", 0), JWKS)
    threading.Thread(target=jwks.serve_forever, daemon=True).start()
    env = {"JEO_JWT_ISSUER": ISSUER, "JEO_JWT_JWKS_URL": f"http://127.0.0.1:{jwks.server_port}/certs",
           "JEO_JWT_AUDIENCE": "jeo-tiler", "JEO_CACHE_SIZE_MB": "0"}  # fmt: skip
    running = start_server(tokens[0], env={**environment(tokens[0]), **env})

    def sign(subject: str, signer=key, **claims) -> str:
        body = {"iss": ISSUER, "aud": "jeo-tiler", "sub": subject, "exp": int(time.time()) + 300, **claims}
        return jwt.encode(body, signer, algorithm="RS256", headers={"kid": "k1"})

    yield running, sign, impostor
    stop_server(running)
    jwks.shutdown()


def test_jwt_grants_come_from_its_claims(sso, tokens):
    server, sign, _ = sso
    item = f"/collections/{R}/items/{ITEM}"
    granted = sign("alice", jeo_collections=[R])
    assert call(server, "GET", item, granted, header=True).status_code == 200
    assert call(server, "GET", f"/collections/{OTHER_R}", granted).status_code == 404
    assert call(server, "GET", f"/collections/{OTHER_R}", sign("carol", jeo_collections="*")).status_code == 200
    assert call(server, "GET", item, sign("dave")).status_code == 404  # valid, no grant
    assert call(server, "GET", item, tokens[1]["right"]).status_code == 200  # jeo_ tokens still work
    caps = call(server, "GET", "/wmts/1.0.0/WMTSCapabilities.xml", granted).text
    assert f"/{R}.truecolor/" in caps and f"access_token={granted}" in caps


@pytest.mark.parametrize("case", ["expired", "issuer", "audience", "signature", "garbage"])
def test_jwt_that_does_not_verify_is_a_401(sso, case):
    server, sign, impostor = sso
    token = {
        "expired": lambda: sign("alice", jeo_collections=[R], exp=int(time.time()) - 10),
        "issuer": lambda: sign("alice", jeo_collections=[R], iss="https://evil.example.test"),
        "audience": lambda: sign("alice", jeo_collections=[R], aud="someone-else"),
        "signature": lambda: sign("alice", signer=impostor, jeo_collections=[R]),
        "garbage": lambda: "not.a.jwt",
    }[case]()
    response = call(server, "GET", "/collections", token)
    assert response.status_code == 401 and response.json()["detail"].startswith("access_token: ")
    assert R not in response.text


def test_jwt_exports_belong_to_the_subject(sso):
    server, sign, _ = sso
    assert call(server, "POST", "/exports", sign("alice", jeo_collections=[R]), json=EXPORT).status_code == 403
    submitted = call(server, "POST", "/exports", sign("alice", jeo_collections=[R], jeo_exports=True), json=EXPORT)
    assert submitted.status_code == 202, submitted.text
    export = submitted.json()["id"]
    later = sign("alice", jti="another-session")  # another token of the same subject, without grants
    assert call(server, "GET", f"/exports/{export}", later).status_code == 200
    assert export in {e["id"] for e in call(server, "GET", "/exports", later).json()["exports"]}
    bob = sign("bob", jeo_collections=[R], jeo_exports=True)
    assert call(server, "GET", f"/exports/{export}", bob).status_code == 404
    assert call(server, "DELETE", f"/exports/{export}", bob).status_code == 404
    assert call(server, "DELETE", f"/exports/{export}", later).status_code == 200


# --- the viewers --------------------------------------------------------------------------------------------


@pytest.mark.browser
def test_viewer_shows_restricted_tiles_with_a_token_only(page, server, tokens, tmp_path):
    token = tokens[1]["right"]
    page.goto("/viewer")
    page.wait_for_function("document.body.dataset.ready === 'true'")
    options = page.locator("#collection option").evaluate_all("els => els.map(e => e.value)")
    assert R not in options and PUBLIC in options
    page.goto("/viewer/openlayers")
    page.wait_for_function("document.body.dataset.ready === 'true'")
    layers = page.locator("#layer option").evaluate_all("els => els.map(e => e.value)")
    assert not any(layer.startswith(R) for layer in layers) and f"{PUBLIC}.truecolor" in layers

    page.goto(f"/viewer?access_token={token}#collection={R}&preset=truecolor")
    page.wait_for_function("document.body.dataset.ready === 'true'")
    assert page.input_value("#collection") == R and page.input_value("#token") == token
    page.wait_for_function("document.querySelector('#tile-url').value.includes('access_token=')")
    wait_for_tiles(page, 4)
    tiles = [(status, url) for status, url in page.log.tiles(ITEM_TILE) if f"/collections/{R}/" in url]
    assert sum(status == 200 for status, _ in tiles) >= 4, tiles
    assert page.locator("#error").is_hidden(), page.locator("#error").text_content()
    assert_not_blank(page.locator("#map").screenshot(path=tmp_path / "viewer-restricted.png"))
    assert page.get_attribute("#ol-link", "href") == f"/viewer/openlayers?access_token={token}"


def test_access_column_is_added_to_an_old_catalog(tmp_path, shared_data):
    """A catalog created before access levels existed opens, keeps its collections public, can restrict."""
    import sqlite3

    path = tmp_path / "catalog.db"
    Catalog(path).ingest(shared_data / R / "collection.json")
    with sqlite3.connect(path) as db:  # back to the old schema: no access column
        db.execute("ALTER TABLE collections DROP COLUMN access")
    catalog = Catalog(path)
    assert catalog.collection(R).access == "public"
    catalog.set_access(R, "restricted")
    assert Catalog(path).access(R) == "restricted"
    catalog.ingest(shared_data / R / "collection.json")  # re-ingest keeps the access level
    assert catalog.access(R) == "restricted"
