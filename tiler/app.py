"""The jeo-tiler web application."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import numpy as np
from fastapi import Depends, FastAPI, Request
from starlette.staticfiles import StaticFiles
from titiler.core.factory import TMSFactory

import algorithms
from mosaics.catalog import Catalog
from mosaics.corrections import Corrector
from tiler import __version__, errors, stac_api, viewer, wmts
from tiler.access import AccessMiddleware, catalog_view, identity_provider
from tiler.exports import api as exports_api
from tiler.exports.service import ExportService
from mosaics.fileversions import FILE_VERSIONS
from tiler.cache import code_version, open_tile_cache
from tiler.cors import SplitCORSMiddleware, origins
from tiler.dependencies import create_limits
from tiler.factory import CompositeTilerFactory, ItemTilerFactory
from tiler.middleware import CachedTileMiddleware, PresetMiddleware, WMTSMiddleware
from tiler.params import refuse_repeated_parameters
from tiler.presets import PresetRegistry
from tiler.processing import CompositeProcessingFactory, ItemProcessingFactory
from tiler.settings import Settings, get_settings
from tiler.tms import supported_tms
from tiler.tokens import TokenStore

ITEM_PREFIX = "/collections/{collection_id}/items/{item_id}"
COLLECTION_PREFIX = "/collections/{collection_id}"


def catalog_epsg_codes(catalog: Catalog) -> set[int]:
    """EPSG codes of the newest item of every collection (as stored: `supported_tms` keeps the UTM zones)."""
    codes: set[int] = set()
    for collection in catalog.collections():
        for item in catalog.search(collection.id, limit=1):
            codes.update(a.epsg for a in item.assets.values() if a.epsg)
    return codes


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Warm the numba kernels, start the export service (reconciles exports left by an earlier run);
    stop it and store the tiles still queued for the tile cache on shutdown."""
    algorithms.warmup(stack_dtypes=(np.float32,))
    app.state.exports.start()
    yield
    app.state.exports.stop()
    app.state.tile_cache.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for `settings` (default: from the environment)."""
    settings = settings or get_settings()
    catalog = Catalog(settings.catalog_location)
    app = FastAPI(
        lifespan=lifespan,
        title="jeo-tiler",
        version=__version__,
        description="Dynamic tiles, band math, spectral indices and cloud-free composites of "
        "Earth-observation scenes, computed per request from Cloud-Optimized GeoTIFFs.",
        dependencies=[Depends(refuse_repeated_parameters)],
    )
    app.state.settings = settings
    app.state.catalog = catalog
    app.state.tokens = TokenStore(settings.catalog_location)
    app.state.identity = identity_provider(settings)
    app.state.presets = PresetRegistry.from_files(settings.presets)
    app.state.tms = supported_tms(catalog_epsg_codes(catalog))
    app.state.pool = ThreadPoolExecutor(settings.read_threads, thread_name_prefix="jeo-read")
    app.state.exports = ExportService(settings, catalog, app.state.presets)
    app.state.corrector = Corrector(settings.home / "dark-values")
    app.state.limits = create_limits(settings)
    app.state.tile_cache = open_tile_cache(settings)
    FILE_VERSIONS.s3_ttl = settings.s3_version_ttl
    app.state.file_versions = FILE_VERSIONS
    app.state.cache_version = code_version(settings, app.state.presets)
    app.state.wmts_layers = wmts.LayerIndex(catalog, app.state.presets, app.state.tms, settings.composite_minzoom)

    errors.install(app)
    app.add_exception_handler(wmts.OWSError, lambda request, error: error.response())

    app.include_router(stac_api.router)
    items = ItemTilerFactory(router_prefix=ITEM_PREFIX, supported_tms=app.state.tms)
    app.include_router(items.router, prefix=ITEM_PREFIX, tags=["Item tiles"])
    composites = CompositeTilerFactory(router_prefix=COLLECTION_PREFIX, supported_tms=app.state.tms)
    app.include_router(composites.router, prefix=COLLECTION_PREFIX, tags=["Composite tiles"])
    item_processing = ItemProcessingFactory(router_prefix=ITEM_PREFIX, supported_tms=app.state.tms)
    app.include_router(item_processing.router, prefix=ITEM_PREFIX, tags=["Item processing"])
    processing = CompositeProcessingFactory(router_prefix=COLLECTION_PREFIX, supported_tms=app.state.tms)
    app.include_router(processing.router, prefix=COLLECTION_PREFIX, tags=["Processing"])
    app.include_router(TMSFactory(supported_tms=app.state.tms).router, tags=["Tile matrix sets"])
    app.include_router(wmts.router, tags=["OGC WMTS"])
    app.include_router(viewer.router, tags=["Viewer"])
    app.include_router(exports_api.router)
    for name, folder in (("leaflet", "leaflet/dist"), ("ol", "ol")):
        if (settings.static_dir / folder).is_dir():
            app.mount(f"/static/{name}", StaticFiles(directory=settings.static_dir / folder), name=name)
    app.mount("/static/jeo", StaticFiles(packages=[("tiler", "static")]), name="jeo")

    @app.get("/healthz", tags=["Health"], summary="Liveness and catalog reachability.")
    def healthz(request: Request):
        return {"status": "ok", "collections": len(catalog_view(request).collections()), "version": __version__}

    app.add_middleware(CachedTileMiddleware)
    app.add_middleware(PresetMiddleware)
    app.add_middleware(WMTSMiddleware)
    app.add_middleware(AccessMiddleware)
    app.add_middleware(
        SplitCORSMiddleware, read_origins=origins(settings.cors_origins), write_origins=origins(settings.cors_write_origins)
    )
    return app
