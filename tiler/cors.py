"""CORS with one policy for reads and one for writes (settings `JEO_CORS_ORIGINS`, `JEO_CORS_WRITE_ORIGINS`).

Reads are GET and HEAD (tiles, STAC, WMTS, export status and results) and the POSTs that only compute an
answer (`computations`: area, statistics and time-series requests with a GeoJSON body); they are allowed
from `read_origins` (default any). Writes are every other POST and DELETE (exports); they are allowed only
from the server's own origin and `write_origins`, and one with another `Origin` is refused with 403 before
it runs (browsers send form-encoded POSTs without a preflight).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from starlette._utils import get_route_path
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

READS = ("GET", "HEAD")
WRITES = ("POST", "DELETE")
COMPUTATIONS = re.compile(r"^/collections/[^/]+(/items/[^/]+)?/(feature|statistics|timeseries)([/.]|$)")


def origins(setting: str) -> list[str]:
    """A comma-separated origin list (`*` = any, empty = none)."""
    return [origin.strip() for origin in setting.split(",") if origin.strip()]


class SplitCORSMiddleware:
    """Starlette's CORS middleware with separate allowed origins for reads and writes."""

    def __init__(self, app: ASGIApp, read_origins: list[str], write_origins: list[str], computations: re.Pattern = COMPUTATIONS):
        self.app = app
        self.computations = computations
        self.reads = CORSMiddleware(app, allow_origins=read_origins, allow_methods=(*READS, "POST"), allow_headers=["*"])
        self.writes = CORSMiddleware(app, allow_origins=write_origins, allow_methods=READS + WRITES, allow_headers=["*"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        method = scope["method"]
        if method == "OPTIONS":
            method = headers.get("access-control-request-method", method).upper()
        origin = headers.get("origin")
        if method in READS or (method == "POST" and self.computations.match(get_route_path(scope))):
            await self.reads(scope, receive, send)
        elif scope["method"] == "OPTIONS" or origin is None or self._permitted(origin, headers):
            await self.writes(scope, receive, send)
        else:
            detail = f"origin '{origin}' may not {method} here (JEO_CORS_WRITE_ORIGINS)"
            await JSONResponse({"detail": detail}, status_code=403)(scope, receive, send)

    def _permitted(self, origin: str, headers: Headers) -> bool:
        """The server's own origin (same host and port) or one of the write origins."""
        return urlsplit(origin).netloc == headers.get("host") or self.writes.is_allowed_origin(origin)
