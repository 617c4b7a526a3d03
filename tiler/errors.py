"""HTTP status codes for jeo-tiler and titiler/rio-tiler errors; bodies are `{"detail": message}`.

Bad input is a 4xx naming the parameter; an unreadable data file is a 502 naming the item; a process out
of memory budget is a 503 with `Retry-After`. Messages of errors that come from I/O or from unexpected
failures carry no server paths (`redact_paths`) and never a traceback.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from rasterio._err import CPLE_BaseError
from rasterio.errors import CRSError, RasterioError, RasterioIOError
from rio_tiler.errors import PointOutsideBounds, RioTilerError
from starlette.requests import Request
from starlette.responses import JSONResponse
from titiler.core.errors import DEFAULT_STATUS_CODES

from mosaics.errors import CatalogError, InvalidParameter, NotFound, SceneReadError, redact_paths
from mosaics.limits import Busy

logger = logging.getLogger(__name__)

STATUS_CODES: dict[type[Exception], int] = {
    **DEFAULT_STATUS_CODES,
    NotFound: 404,
    InvalidParameter: 400,
    CatalogError: 400,
    CRSError: 400,
    PointOutsideBounds: 404,
    SceneReadError: 502,
    RasterioError: 502,
    RasterioIOError: 502,
    CPLE_BaseError: 502,
    OSError: 502,
    Busy: 503,
}

# Their messages echo the request (which may name a path on purpose), not the server's files.
ECHO_INPUT = (NotFound, InvalidParameter)


def handler(status: int, log: bool):
    """An exception handler answering `status` with the (path-free) message; `log`s the traceback."""

    def handle(request: Request, error: Exception) -> JSONResponse:
        if log:
            logger.error("%s %s → %d", request.method, request.url.path, status, exc_info=error)
        message = str(error) if isinstance(error, ECHO_INPUT) else redact_paths(str(error))
        if status == 500:
            message = f"internal error ({type(error).__name__}): {message}"
        headers = {"Retry-After": str(error.retry_after)} if isinstance(error, Busy) else None
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    return handle


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    for error, status in STATUS_CODES.items():
        # Starlette logs what reaches the `Exception` handler itself
        app.add_exception_handler(error, handler(status, status >= 500 and error not in (Exception, Busy)))
