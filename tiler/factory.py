"""Endpoint factories built on titiler's: single-item tiles and collection composites.

Items, under `/collections/{collection_id}/items/{item_id}`: `/tiles/{tms}/{z}/{x}/{y}[@{scale}x][.{format}]`,
`/{tms}/tilejson.json`, `/point/{lon},{lat}`, `/info`, `/preview[.{format}]`.
Composites, under `/collections/{collection_id}`: the same tile and tilejson routes and `/point/{lon},{lat}`.
"""

import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import numpy as np
import rasterio
from attrs import define
from fastapi import Depends, Path, Query
from pydantic import Field
from rio_tiler.colormap import apply_cmap
from rio_tiler.errors import InvalidFormat
from rio_tiler.models import ImageData
from rio_tiler.types import ColorMapType
from rio_tiler.utils import CRS_to_uri
from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import Response
from titiler.core.factory import MultiBaseTilerFactory, img_endpoint_params
from titiler.core.models.mapbox import TileJSON
from titiler.core.resources.enums import ImageType

from mosaics.collection_reader import CollectionReader
from mosaics.errors import InvalidParameter
from mosaics.fileversions import item_hrefs
from mosaics.reader import SceneReader
from tiler.access import token_query
from tiler.cache import CachedTile, cache_key
from tiler.dependencies import (
    AssetsParams,
    CollectionStackParams,
    ColorMapParams,
    CompositeParams,
    ItemPathParams,
    PreviewParams,
    ReaderParams,
    ReadParams,
    RecipeParams,
    RenderParams,
    TileParams,
    get_limits,
)
from tiler.render import render_image
from tiler.tms import check_tile

# Most specific first: `{y}.{format}` would otherwise swallow `2@2x.png`.
TILE_PATHS = (
    "/tiles/{tileMatrixSetId}/{z}/{x}/{y}@{scale}x.{format}",
    "/tiles/{tileMatrixSetId}/{z}/{x}/{y}@{scale}x",
    "/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}",
    "/tiles/{tileMatrixSetId}/{z}/{x}/{y}",
)


def _probe(bands: int) -> np.ndarray:
    """`uint8[bands, 16, 16]` covering 0–255 in every band, differently per band."""
    values = np.arange(bands * 256, dtype=np.int64).reshape(bands, 16, 16) * 37
    return ((values + np.arange(bands)[:, None, None] * 101) % 256).astype(np.uint8)


def render(
    image: ImageData, output_format: ImageType | None = None, rescale: Sequence[tuple[float, float]] | None = None,
    color_formula: str | None = None, colormap: ColorMapType | None = None, **kwargs: Any,
) -> tuple[bytes, str]:
    """`tiler.render.render_image`, with errors of `color_formula`, `colormap` and `format` named: the formula and
    the colormap are first tried on a small 8-bit array with the image's band count."""
    if color_formula:
        if not rescale and image.data.dtype.kind == "f":
            raise InvalidParameter("color_formula", "needs `rescale`: values are physical (e.g. rescale=0,0.3)")
        try:
            ImageData(np.ma.MaskedArray(_probe(image.count))).apply_color_formula(color_formula)
        except Exception as error:  # the formula is the only input here
            raise InvalidParameter(
                "color_formula", f"'{color_formula}' cannot apply to {image.count} band(s): {error}"
            ) from None
    if colormap is not None:
        if image.count != 1:
            raise InvalidParameter("colormap", f"applies to one output band, not {image.count}")
        try:
            apply_cmap(_probe(1), colormap)
        except Exception as error:  # the colormap is the only input here
            raise InvalidParameter("colormap", f"cannot apply: {error}") from None
    try:
        return render_image(
            image, output_format=output_format, rescale=rescale, color_formula=color_formula, colormap=colormap, **kwargs
        )
    except InvalidFormat as error:
        raise InvalidParameter(
            "format", f"{error}; png/jpeg/webp take 1–4 bands, npy and tif any number"
        ) from None


def no_post_processing() -> None:
    """Previews take the recipe's outputs as they are: no titiler `algorithm` post-processing."""
    return None


def tile_headers(image: ImageData, timings: dict[str, float]) -> dict[str, str]:
    """OGC API image headers, `Server-Timing`, and the scenes a composite used, read, skipped and did not read the
    bands of (cloud-masked on the whole tile)."""
    headers = {"Server-Timing": ", ".join(f"{stage};dur={ms:.1f}" for stage, ms in timings.items())}
    if image.bounds is not None:
        headers["Content-Bbox"] = ",".join(map(str, image.bounds))
    if uri := CRS_to_uri(image.crs):
        headers["Content-Crs"] = f"<{uri}>"
    metadata = image.metadata or {}
    if "items" in metadata:
        headers["X-Items"] = ",".join(metadata["items"])
        headers["X-Items-Read"] = str(len(metadata["read"]))
        headers["X-Items-Unread"] = ",".join(metadata.get("unread", ()))
        headers["X-Items-Skipped"] = ",".join(metadata["skipped"])
    return headers


@define(kw_only=True)
class RecipeTilerFactory(MultiBaseTilerFactory):
    """Tile and TileJSON routes shared by item and composite endpoints."""

    layer_dependency: Any = RecipeParams
    dataset_dependency: Any = ReadParams
    tile_dependency: Any = TileParams
    img_preview_dependency: Any = PreviewParams
    render_dependency: Any = RenderParams
    render_func: Any = render
    process_dependency: Any = no_post_processing
    colormap_dependency: Any = ColorMapParams
    add_viewer: bool = False
    add_part: bool = False

    def tile(self):
        """Register the tile routes, with the `@{scale}x` suffix."""

        def tile(
            request: Request,
            z: Annotated[int, Path(description="Zoom level (TileMatrix identifier) in the TileMatrixSet.")],
            x: Annotated[int, Path(description="Column (TileCol) of the tile in the TileMatrix.")],
            y: Annotated[int, Path(description="Row (TileRow) of the tile in the TileMatrix.")],
            tileMatrixSetId: Annotated[
                Literal[tuple(self.supported_tms.list())],
                Path(description="TileMatrixSet identifier (see /tileMatrixSets)."),
            ],
            scale: Annotated[int, Field(ge=1, le=4, description="Tile size scale: 1 = 256 px, 2 = 512 px (`@2x`).")] = 1,
            format: Annotated[
                ImageType | None, Field(description="Output format; default png (with mask) or jpeg.")
            ] = None,
            tilesize: Annotated[int | None, Query(gt=0, le=2048, description="Tile size in pixels (overrides scale).")] = None,
            src_path=Depends(self.path_dependency),
            reader_params=Depends(self.reader_dependency),
            tile_params=Depends(self.tile_dependency),
            layer_params=Depends(self.layer_dependency),
            dataset_params=Depends(self.dataset_dependency),
            colormap=Depends(self.colormap_dependency),
            render_params=Depends(self.render_dependency),
            env=Depends(self.environment_dependency),
        ):
            """A map tile computed on request, or from the shared tile cache."""
            tms = self.supported_tms.get(tileMatrixSetId)
            check_tile(tms, z, x, y)
            started = time.perf_counter()
            size = tilesize or 256 * scale
            get_limits(request).check_tile(size, tile_params.buffer, tile_params.padding, "tilesize" if tilesize else "scale")
            state = request.app.state
            with rasterio.Env(**env), self.reader(src_path, tms=tms, **reader_params.as_dict()) as src:
                items = src.tile_items(x, y, z, tilesize=size, buffer=tile_params.buffer or 0)
                files = state.file_versions.versions(item_hrefs(items))
                key = cache_key({
                    "code": state.cache_version, "path": get_route_path(request.scope), "size": size, "env": env,
                    "source": getattr(src_path, "selection", None), "items": {i.id: i.version for i in items},
                    "files": files, "tile": tile_params.as_dict(), "layer": layer_params.as_dict(),
                    "dataset": dataset_params.as_dict(), "render": render_params.as_dict(), "colormap": colormap,
                })
                etag = f'"{key[:40]}"'
                headers = {"ETag": etag, "Cache-Control": self.cache_control(request, src_path)}
                if etag in request.headers.get("if-none-match", ""):
                    return Response(status_code=304, headers=headers)

                def compute() -> CachedTile:
                    start = time.perf_counter()
                    image = src.tile(
                        x, y, z, tilesize=size,
                        **tile_params.as_dict(), **layer_params.as_dict(), **dataset_params.as_dict(),
                    )
                    rendered = time.perf_counter()
                    content, media_type = self.render_func(
                        image, output_format=format, colormap=colormap, **render_params.as_dict()
                    )
                    timings = {"cache": (start - started) * 1000}
                    timings.update((image.metadata or {}).get("timings") or {"read": (rendered - start) * 1000})
                    timings["render"] = (time.perf_counter() - rendered) * 1000
                    return CachedTile(content, media_type, tile_headers(image, timings))

                cached, hit = state.tile_cache.get_or_compute(key, compute)
            if shortcut := getattr(request.state, "tile_request", None):
                state.tile_cache.remember(shortcut, key, headers, files)
            headers.update(cached.headers)
            headers["X-Cache"] = "hit" if hit else "miss"
            if hit:
                headers["Server-Timing"] = f"cache;dur={(time.perf_counter() - started) * 1000:.1f}"
            return Response(cached.content, media_type=cached.media_type, headers=headers)

        for path in TILE_PATHS:
            self.router.add_api_route(
                path, tile, methods=["GET"], name="tile", **img_endpoint_params,
                operation_id=f"{self.operation_prefix}getTile{'Scale' if '@' in path else ''}"
                f"{'WithFormat' if '.{format}' in path else ''}",
            )

    def cache_control(self, request: Request, source: Any) -> str:
        """The Cache-Control header of this endpoint's tiles."""
        return request.app.state.settings.cache_control_item

    def tilejson(self):
        """Register `/{tileMatrixSetId}/tilejson.json`."""

        @self.router.get(
            "/{tileMatrixSetId}/tilejson.json",
            response_model=TileJSON,
            response_model_exclude_none=True,
            operation_id=f"{self.operation_prefix}getTileJSON",
        )
        def tilejson(
            request: Request,
            tileMatrixSetId: Annotated[
                Literal[tuple(self.supported_tms.list())],
                Path(description="TileMatrixSet identifier (see /tileMatrixSets)."),
            ],
            tile_format: Annotated[ImageType | None, Query(description="Tile format in the URL template.")] = None,
            tile_scale: Annotated[int, Query(ge=1, le=4, description="Tile size scale in the URL template.")] = 1,
            minzoom: Annotated[int | None, Query(description="Overwrite the data's minzoom.")] = None,
            maxzoom: Annotated[int | None, Query(description="Overwrite the data's maxzoom.")] = None,
            src_path=Depends(self.path_dependency),
            layer_params=Depends(self.layer_dependency),
        ):
            """TileJSON 3.0 with the given recipe and rendering parameters in the tile URL."""
            route = {"z": "{z}", "x": "{x}", "y": "{y}", "tileMatrixSetId": tileMatrixSetId}
            if tile_scale > 1:
                route["scale"] = str(tile_scale)
            if tile_format:
                route["format"] = tile_format.value
            url = self.url_for(request, "tile", **route)
            drop = {"tile_format", "tile_scale", "minzoom", "maxzoom"}
            query = [(k, v) for k, v in request.query_params.multi_items() if k not in drop] + token_query(request)
            tms = self.supported_tms.get(tileMatrixSetId)
            with self.reader(src_path, tms=tms) as src:
                return {
                    "tilejson": "3.0.0",
                    "name": get_route_path(request.scope).rsplit("/", 2)[0].removeprefix("/collections/"),
                    "bounds": list(src.get_geographic_bounds(tms.rasterio_geographic_crs)),
                    "minzoom": src.minzoom if minzoom is None else minzoom,
                    "maxzoom": src.maxzoom if maxzoom is None else maxzoom,
                    "tiles": [url + (f"?{urlencode(query)}" if query else "")],
                    "attribution": request.app.state.settings.attribution,
                }


@define(kw_only=True)
class ItemTilerFactory(RecipeTilerFactory):
    """Tiles, TileJSON, point values, info and previews of one catalog item."""

    reader: type[SceneReader] = SceneReader
    path_dependency: Any = ItemPathParams
    reader_dependency: Any = ReaderParams
    assets_dependency: Any = AssetsParams

    def register_routes(self):
        """titiler's info, point and preview; our tile and tilejson."""
        self.info()
        self.tile()
        self.tilejson()
        self.point()
        self.preview()


@define(kw_only=True)
class CompositeTilerFactory(RecipeTilerFactory):
    """Per-pixel composites of a collection's scenes."""

    reader: type[CollectionReader] = CollectionReader
    path_dependency: Any = CollectionStackParams
    layer_dependency: Any = CompositeParams

    def cache_control(self, request: Request, source: Any) -> str:
        """Long for a closed datetime interval, short for open or default ranges ("latest")."""
        interval = source.selection.datetime
        settings = request.app.state.settings
        closed = interval is not None and None not in interval
        return settings.cache_control_fixed if closed else settings.cache_control_latest

    def register_routes(self):
        """Composite tile, tilejson and point routes."""
        self.tile()
        self.tilejson()
        self.point()

    def point(self):
        """Register `/point/{lon},{lat}`: every candidate scene and each method's choice at a point."""

        @self.router.get("/point/{lon},{lat}", operation_id=f"{self.operation_prefix}getCompositePoint")
        def point(
            lon: Annotated[float, Path(description="Longitude (EPSG:4326).")],
            lat: Annotated[float, Path(description="Latitude (EPSG:4326).")],
            src_path=Depends(self.path_dependency),
            layer_params=Depends(self.layer_dependency),
        ):
            """Values of every candidate scene, its mask state, and the value and chosen scene of every method."""
            with self.reader(src_path) as src:
                return src.point(lon, lat, **layer_params.as_dict())
