"""Before routing: WMTS GetTile → the tile endpoint, `preset=` → its parameters (both only rewrite the
path and query string, so a WMTS tile and the equivalent tile URL are answered by the same code with the
same bytes); then repeated tile requests are answered from the tile cache.
"""

from __future__ import annotations

import json
import re
import time
from urllib.parse import parse_qsl, urlencode

from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


def _set_target(scope: Scope, target: str) -> None:
    path, _, query = target.partition("?")
    path = scope.get("root_path", "") + path  # the ASGI path includes the root path (behind a proxy)
    scope["path"], scope["raw_path"], scope["query_string"] = path, path.encode(), query.encode()


class WMTSMiddleware:
    """Rewrite WMTS GetTile requests (KVP and REST) to the tile endpoint, and answer every error of a WMTS
    request, also those of the tile endpoint, with an OWS ExceptionReport."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not get_route_path(scope).startswith("/wmts"):
            await self.app(scope, receive, send)
            return
        try:
            tile = self._rewrite(scope)
        except wmts.OWSError as error:
            await error.response()(scope, receive, send)
            return
        except InvalidParameter as error:
            await wmts.OWSError("InvalidParameterValue", error.parameter, str(error)).response()(scope, receive, send)
            return
        await self.app(scope, receive, self._reports(scope, receive, send, tile))

    @staticmethod
    def _rewrite(scope: Scope) -> bool:
        """Point a GetTile request at its tile URL; True if it was one."""
        index, path = scope["app"].state.wmts_layers, get_route_path(scope)
        if path == "/wmts":
            params = wmts.kvp_params(parse_qsl(scope["query_string"].decode(), keep_blank_values=True))
            if params.get("request", "").lower() != "gettile":
                return False
            _set_target(scope, wmts.tile_target(index, params, catalog_view(Request(scope))))
            return True
        if match := REST_TILE.match(path):
            params = match.groupdict()
            params["format"] = {v: k for k, v in wmts.FORMATS.items()}.get(params.pop("ext"), "")
            if params["format"] == "":
                raise wmts.OWSError("InvalidParameterValue", "FORMAT", f"unsupported tile extension in '{path}'")
            _set_target(scope, wmts.tile_target(index, params, catalog_view(Request(scope))))
            return True
        return False

    @staticmethod
    def _reports(scope: Scope, receive: Receive, send: Send, tile: bool) -> Send:
        """`send`, with JSON error responses replaced by ExceptionReports."""
        start: Message | None = None
        body = b""

        async def reporting(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                if message["status"] < 400 or headers.get(b"content-type", b"").startswith(b"application/xml"):
                    await send(message)
                else:
                    start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                try:
                    detail = json.loads(body)["detail"]
                except (ValueError, KeyError, TypeError):
                    detail = body.decode(errors="replace")
                error = wmts.translate(start["status"], detail, tile)
                await error.response()(scope, receive, send)

        return reporting


class PresetMiddleware:
    """Expand `preset=<id>` query parameters."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                self._expand_preset(scope)
            except JeoError as error:
                status = 404 if isinstance(error, NotFound) else 400
                await JSONResponse({"detail": str(error)}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _expand_preset(scope: Scope) -> None:
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
        if preset.is_composite and "datetime" not in given and (latest := catalog.search(match["collection"], limit=1)):
            defaults.append(("datetime", preset.interval(latest[0].datetime)))
        expanded = [(k, v) for k, v in defaults if k not in given and v is not None]
        if given & {"assets", "expression", "index"}:
            expanded = [(k, v) for k, v in expanded if k not in ("assets", "expression", "index", "asset_bidx")]
        scope["query_string"] = urlencode(expanded + rest).encode()


class CachedTileMiddleware:
    """Answer a tile request seen before from the tile cache, without routing, parameter parsing or catalog
    search; otherwise mark the request so that the tile endpoint remembers where its tile is stored.

    A remembered tile is served only to callers who may see its collection (the caller's catalog view
    answers its version) and only while the code, the collection and the files it was computed from are
    unchanged (`tiler.cache`).
    """

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
                shortcut = request_key(match.string, scope["query_string"].decode(), f"{state.cache_version}/{version}")
                if (found := state.tile_cache.lookup(shortcut, state.file_versions)) is not None:
                    await self._remembered(scope, found, started)(scope, receive, send)
                    return
                scope.setdefault("state", {})["tile_request"] = shortcut
        await self.app(scope, receive, send)

    @staticmethod
    def _remembered(scope: Scope, found, started: float) -> Response:
        tile, validators = found
        if validators["ETag"] in Request(scope).headers.get("if-none-match", ""):
            return Response(status_code=304, headers=validators)
        headers = {**tile.headers, **validators, "X-Cache": "hit"}
        headers["Server-Timing"] = f"cache;dur={(time.perf_counter() - started) * 1000:.1f}"
        return Response(tile.content, media_type=tile.media_type, headers=headers)
