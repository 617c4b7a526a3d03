"""HTTP status codes for jeo-tiler and titiler/rio-tiler errors; bodies are `{"detail": message}`."""

from __future__ import annotations

from fastapi import FastAPI
from rasterio.errors import CRSError
from titiler.core.errors import DEFAULT_STATUS_CODES, add_exception_handlers

from mosaics.errors import CatalogError, InvalidParameter, NotFound, SceneReadError

STATUS_CODES: dict[type[Exception], int] = {
    **DEFAULT_STATUS_CODES,
    NotFound: 404,
    InvalidParameter: 400,
    CatalogError: 400,
    CRSError: 400,
    SceneReadError: 502,
}


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    add_exception_handlers(app, STATUS_CODES)
