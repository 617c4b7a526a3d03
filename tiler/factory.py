"""Endpoint factories: titiler's MultiBaseTilerFactory specialised for catalog items.

Routes (under `/collections/{collection_id}/items/{item_id}`): `/tiles/{tms}/{z}/{x}/{y}[@{scale}x][.{format}]`,
`/{tms}/tilejson.json`, `/point/{lon},{lat}`, `/info`, `/preview[.{format}]`.
"""


from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import rasterio
from attrs import define
from fastapi import Depends, Path, Query
from pydantic import Field
from rio_tiler.utils import CRS_to_uri
from starlette.requests import Request
from starlette.responses import Response
from titiler.core.factory import MultiBaseTilerFactory, img_endpoint_params
from titiler.core.models.mapbox import TileJSON
from titiler.core.resources.enums import ImageType

from mosaics.reader import SceneReader
from tiler.dependencies import ItemPathParams, ReadParams, RecipeParams
from tiler.tms import check_tile

# Most specific first: `{y}.{format}` would otherwise swallow `2@2x.png`.
TILE_PATHS = (
    "/tiles/{tileMatrixSetId}/{z}/{x}/{y}@{scale}x.{format}",
    "/tiles/{tileMatrixSetId}/{z}/{x}/{y}@{scale}x",
    "/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}",
    "/tiles/{tileMatrixSetId}/{z}/{x}/{y}",
)


def image_headers(image) -> dict[str, str]:
    """OGC API headers describing a rendered image."""
    headers: dict[str, str] = {}
    if image.bounds is not None:
        headers["Content-Bbox"] = ",".join(map(str, image.bounds))
    if uri := CRS_to_uri(image.crs):
        headers["Content-Crs"] = f"<{uri}>"
    return headers


@define(kw_only=True)
class ItemTilerFactory(MultiBaseTilerFactory):
    """Tiles, TileJSON, point values, info and previews of one catalog item."""

    reader: type[SceneReader] = SceneReader
    path_dependency: Any = ItemPathParams
    layer_dependency: Any = RecipeParams
    dataset_dependency: Any = ReadParams
    add_viewer: bool = False
    add_part: bool = False

    def register_routes(self):
        """Register the item routes (titiler's info, point and preview; our tile and tilejson)."""
        self.info()
        self.tile()
        self.tilejson()
        self.point()
        self.preview()

    def tile(self):
        """Register the tile routes, with titiler's `@{scale}x` suffix."""

        def tile(
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
            """A map tile computed from the item's assets."""
            tms = self.supported_tms.get(tileMatrixSetId)
            check_tile(tms, z, x, y)
            with rasterio.Env(**env):
                with self.reader(src_path, tms=tms, **reader_params.as_dict()) as src:
                    image = src.tile(
                        x, y, z,
                        tilesize=tilesize or 256 * scale,
                        **tile_params.as_dict(),
                        **layer_params.as_dict(),
                        **dataset_params.as_dict(),
                    )
            content, media_type = self.render_func(
                image, output_format=format, colormap=colormap, **render_params.as_dict()
            )
            return Response(content, media_type=media_type, headers=image_headers(image))

        for path in TILE_PATHS:
            self.router.add_api_route(
                path, tile, methods=["GET"], name="tile", **img_endpoint_params,
                operation_id=f"{self.operation_prefix}getTile{'Scale' if '@' in path else ''}"
                f"{'WithFormat' if '.{format}' in path else ''}",
            )

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
            """TileJSON 3.0 for the item with the given recipe and rendering parameters."""
            route = {"z": "{z}", "x": "{x}", "y": "{y}", "tileMatrixSetId": tileMatrixSetId}
            if tile_scale > 1:
                route["scale"] = str(tile_scale)
            if tile_format:
                route["format"] = tile_format.value
            url = self.url_for(request, "tile", **route)
            drop = {"tile_format", "tile_scale", "minzoom", "maxzoom"}
            query = [(k, v) for k, v in request.query_params.multi_items() if k not in drop]
            tms = self.supported_tms.get(tileMatrixSetId)
            with self.reader(src_path, tms=tms) as src:
                return {
                    "tilejson": "3.0.0",
                    "name": f"{src_path.collection}/{src_path.id}",
                    "bounds": list(src_path.bbox),
                    "minzoom": src.minzoom if minzoom is None else minzoom,
                    "maxzoom": src.maxzoom if maxzoom is None else maxzoom,
                    "tiles": [url + (f"?{urlencode(query)}" if query else "")],
                    "attribution": request.app.state.settings.attribution,
                }
