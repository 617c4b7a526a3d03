"""Before routing: WMTS GetTile → the tile endpoint, `preset=` → its parameters (both only rewrite the
path and query string, so a WMTS tile and the equivalent tile URL are answered by the same code with the
same bytes); then repeated tile requests are answered from the tile cache.
"""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qsl, urlencode

from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mosaics.errors import InvalidParameter, JeoError, NotFound
from tiler import wmts
from tiler.access import catalog_view
from tiler.cache import request_key

COLLECTION_PATH = re.compile(r"^/collections/(?P<collection>[^/]+)/(?P<items>items/)?")
TILE_PATH = re.compile(r"^/collections/(?P<collection>[^/]+)/(items/[^/]+/)?tiles/")
REST_TILE = re.compile(
    r"^/wmts/1\.0\.0/(?P<layer>[^/]+)/(?P<style>[^/]+)/(?P<time>[^/]+)/(?P<tilematrixset>[^/]+)/"
    r"(?P<tilematrix>[^/]+)/(?P<tilerow>[^/]+)/(?P<tilecol>[^/.]+)\.(?P<ext>[a-z]+)$"
)


class PresetMiddleware:
    """Expand WMTS GetTile requests and `preset=<id>` query parameters."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                self._rewrite_wmts(scope)
                self._expand_preset(scope)
            except JeoError as error:
                status = 404 if isinstance(error, NotFound) else 400
                if get_route_path(scope).startswith("/wmts"):
                    locator = getattr(error, "parameter", None) or getattr(error, "kind", "")
                    code = "InvalidParameterValue" if status == 400 else "TileOutOfRange"
                    response = wmts.exception_report(code, locator, str(error), status)
                else:
                    response = JSONResponse({"detail": str(error)}, status_code=status)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _set_target(scope: Scope, target: str) -> None:
        path, _, query = target.partition("?")
        path = scope.get("root_path", "") + path  # the ASGI path includes the root path (behind a proxy)
        scope["path"], scope["raw_path"], scope["query_string"] = path, path.encode(), query.encode()

    def _rewrite_wmts(self, scope: Scope) -> None:
        path = get_route_path(scope)
        if path == "/wmts":
            params = {k.lower(): v for k, v in parse_qsl(scope["query_string"].decode(), keep_blank_values=True)}
            if params.get("request", "").lower() == "gettile":
                self._set_target(scope, wmts.tile_target(Request(scope), params))
        elif match := REST_TILE.match(path):
            params = match.groupdict()
            params["format"] = {v: k for k, v in wmts.FORMATS.items()}.get(params.pop("ext"), "")
            if params["format"] == "":
                raise InvalidParameter("format", f"unsupported tile extension in '{path}'")
            self._set_target(scope, wmts.tile_target(Request(scope), params))

    def _expand_preset(self, scope: Scope) -> None:
        match = COLLECTION_PATH.match(get_route_path(scope))
        if not match:
            return
        query = parse_qsl(scope["query_string"].decode(), keep_blank_values=True)
        names = [v for k, v in query if k == "preset"]
        if not names:
            return
        if len(names) > 1:
            raise InvalidParameter("preset", "give one preset")
        state = scope["app"].state
        preset = state.presets.get(match["collection"], names[0])
        catalog = catalog_view(Request(scope))
        if preset.is_composite and match["items"]:
            raise InvalidParameter("preset", f"'{preset.id}' is a composite preset: use /collections/{match['collection']}/tiles/…")
        given = {k for k, _ in query}
        rest = [(k, v) for k, v in query if k != "preset"]
        defaults = preset.query()
        if preset.is_composite and (latest := catalog.search(match["collection"], limit=1)):
            defaults.append(("datetime", preset.interval(latest[0].datetime)))
        expanded = [(k, v) for k, v in defaults if k not in given and v is not None]
        if given & {"assets", "expression", "index"}:
            expanded = [(k, v) for k, v in expanded if k not in ("assets", "expression", "index")]
        scope["query_string"] = urlencode(expanded + rest).encode()


class CachedTileMiddleware:
    """Answer a tile request seen before from the tile cache, without routing, parameter parsing or catalog
    search; otherwise mark the request so that the tile endpoint remembers where its tile is stored."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state if scope["type"] == "http" else None
        if state is not None and scope["method"] == "GET" and state.tile_cache.enabled and (match := TILE_PATH.match(get_route_path(scope))):
            started = time.perf_counter()
            try:  # restricted collections without a grant are unknown here: never answered from the cache
                version = catalog_view(Request(scope)).version(match["collection"])
            except NotFound:
                version = None
            if version is not None:
                shortcut = request_key(match.string, scope["query_string"].decode(), version)
                if (found := state.tile_cache.lookup(shortcut)) is not None:
                    await self._cached(scope, found, started)(scope, receive, send)
                    return
                scope.setdefault("state", {})["tile_request"] = shortcut
        await self.app(scope, receive, send)

    @staticmethod
    def _cached(scope: Scope, found, started: float) -> Response:
        tile, validators = found
        if validators["ETag"] in Request(scope).headers.get("if-none-match", ""):
            return Response(status_code=304, headers=validators)
        headers = {**tile.headers, **validators, "X-Cache": "hit"}
        headers["Server-Timing"] = f"cache;dur={(time.perf_counter() - started) * 1000:.1f}"
        return Response(tile.content, media_type=tile.media_type, headers=headers)
