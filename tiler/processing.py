"""Processing services: area subsets, statistics and time series with the tile endpoints' recipe parameters.

Items, under `/collections/{collection_id}/items/{item_id}`, and composites, under `/collections/{collection_id}`:
`GET /bbox/{minx},{miny},{maxx},{maxy}[/{width}x{height}].{format}`, `POST /feature[/{width}x{height}][.{format}]`
(pixels outside the geometry masked) and `POST /statistics`; composites also `GET|POST /timeseries` (one row per
scene). The output grid follows `mosaics.area` (native grid by default, like exports) and is capped at
`JEO_PROCESSING_MAX_PIXELS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import rasterio
from attrs import define
from fastapi import Body, Depends, Path, Query
from pydantic import Field
from rasterio.crs import CRS
from rio_tiler.models import ImageData
from starlette.requests import Request
from starlette.responses import Response
from titiler.core.dependencies import CoordCRSParams, DefaultDependency, DstCRSParams
from titiler.core.factory import img_endpoint_params
from titiler.core.resources.enums import ImageType

from mosaics.area import WGS84, Area, check_size
from mosaics.collection_reader import CollectionReader
from mosaics.errors import InvalidParameter
from mosaics.grid import Grid
from mosaics.models import Asset, Item
from mosaics.reader import SceneReader
from mosaics.recipe import Recipe
from mosaics.zonal import image_statistics, statistics_per_date, timeseries
from tiler.dependencies import CollectionStackParams, CompositeParams, ItemPathParams, MaskParams
from tiler.factory import RecipeTilerFactory, tile_headers
from tiler.params import parse_bbox

GEOJSON_DOC = "GeoJSON Feature or geometry (Point, Polygon, MultiPolygon), coordinates in `coord_crs`."
EXAMPLE = {"type": "Polygon", "coordinates": [[[15.6, 46.4], [15.7, 46.4], [15.7, 46.5], [15.6, 46.4]]]}


@dataclass
class GridParams(DefaultDependency):
    """The output grid's pixel size (the CRS comes from `dst_crs`)."""

    resolution: Annotated[
        float | None, Query(gt=0, description="Output pixel size in `dst_crs` units. Default: the data's native resolution.")
    ] = None
    max_size: Annotated[
        int | None, Query(ge=1, description="Shrink the output so that its longest side has at most this many pixels.")
    ] = None


@dataclass
class StatisticsParams(DefaultDependency):
    """What statistics report besides count, min, max, mean, sum, std and median."""

    percentiles: Annotated[
        list[float] | None, Query(description="Percentiles to report (0–100), repeated; default 2 and 98.")
    ] = None
    histogram_bins: Annotated[
        str | None,
        Query(description="Number of equal-width histogram bins (default 10), or increasing comma-separated bin edges."),
    ] = None
    histogram_range: Annotated[
        str | None, Query(description="`min,max` of the equal-width bins; default: each band's min and max.")
    ] = None

    def parsed(self) -> dict[str, Any]:
        """Arguments of `mosaics.zonal`'s statistics, validated (errors name the parameter)."""
        percentiles = self.percentiles if self.percentiles else [2, 98]
        if not all(0 <= p <= 100 for p in percentiles):
            raise InvalidParameter("percentiles", f"{percentiles}: each must be within 0–100")
        bins: int | list[float] = 10
        if self.histogram_bins:
            try:
                values = [float(v) for v in self.histogram_bins.split(",")]
            except ValueError:
                raise InvalidParameter("histogram_bins", f"'{self.histogram_bins}' is not a number or edges") from None
            if len(values) == 1:
                if not (values[0].is_integer() and 1 <= values[0] <= 1000):
                    raise InvalidParameter("histogram_bins", f"{self.histogram_bins}: a bin count is 1–1000")
                bins = int(values[0])
            elif any(b <= a for a, b in zip(values, values[1:])):
                raise InvalidParameter("histogram_bins", f"'{self.histogram_bins}': edges must increase")
            else:
                bins = values
        histogram_range = None
        if self.histogram_range:
            try:
                low, high = (float(v) for v in self.histogram_range.split(","))
            except ValueError:
                raise InvalidParameter("histogram_range", f"'{self.histogram_range}' is not min,max") from None
            if not low < high:
                raise InvalidParameter("histogram_range", f"'{self.histogram_range}': min must be below max")
            histogram_range = (low, high)
        return {"percentiles": percentiles, "bins": bins, "histogram_range": histogram_range}


def area_from_body(geojson: Any, coord_crs: CRS | None) -> Area:
    """The request body's GeoJSON as an `Area` (errors name `geometry`)."""
    return Area.from_geojson(geojson, coord_crs or WGS84, "geometry")


def native_asset(recipe: Recipe, item: Item) -> Asset | None:
    """The item's finest asset that the recipe reads (multi-band assets' bands picked as in the item)."""
    return item.grid_asset(list(recipe.for_item(item).resolve(item).values()))


def masked_outside(image: ImageData, inside: np.ndarray) -> ImageData:
    """`image` with the pixels outside the area set to NaN and masked."""
    values = np.where(inside, image.array.data, np.nan).astype(np.float32)
    image.array = np.ma.MaskedArray(values, mask=~np.isfinite(values))
    return image


def grid_json(grid: Grid) -> dict[str, Any]:
    """The output grid as STAC projection fields."""
    return {"proj:code": grid.crs.to_string(), "proj:transform": list(grid.transform)[:6],
            "proj:shape": [grid.height, grid.width], "proj:bbox": list(grid.bounds)}


class AreaRoutes:
    """`/bbox`, `/feature` and `/statistics` for a recipe factory; subclasses say how to read and compute."""

    def covering(self, src: Any, area: Area, layer_params: Any, grid: Callable[[Asset | None], Grid]) -> Grid:
        """`grid(native)`, `native` being the asset whose grid is the default output grid."""
        raise NotImplementedError

    def image(self, src: Any, grid: Grid, layer_params: Any, dataset_params: Any) -> ImageData:
        """The recipe's output on `grid`."""
        raise NotImplementedError

    def output_grid(self, request: Request, src: Any, area: Area, layer_params: Any, dst_crs: CRS | None,
                    grid_params: GridParams, width: int | None = None, height: int | None = None) -> Grid:
        """The grid covering `area`, within `JEO_PROCESSING_MAX_PIXELS` (the error names the parameter that set it)."""
        grid = self.covering(src, area, layer_params, lambda native: area.grid(
            native, dst_crs, grid_params.resolution, width, height, grid_params.max_size
        ))  # fmt: skip
        given = [name for name, value in (("width", width), ("resolution", grid_params.resolution),
                                          ("max_size", grid_params.max_size)) if value is not None]  # fmt: skip
        check_size(grid, request.app.state.settings.processing_max_pixels, given[0] if given else area.field)
        return grid

    def render(self, image: ImageData, format: ImageType | None, colormap: Any, render_params: Any) -> Response:
        content, media_type = self.render_func(image, output_format=format, colormap=colormap, **render_params.as_dict())
        headers = tile_headers(image, (image.metadata or {}).get("timings") or {})
        if not headers["Server-Timing"]:
            del headers["Server-Timing"]
        headers["X-Band-Names"] = json.dumps(list(image.band_descriptions))
        if "datetime" in (image.metadata or {}):
            headers["X-Datetime"] = image.metadata["datetime"]
        return Response(content, media_type=media_type, headers=headers)

    def bbox(self):
        """Register `/bbox/{minx},{miny},{maxx},{maxy}[/{width}x{height}].{format}`."""

        def bbox_image(
            request: Request,
            minx: Annotated[float, Path(description="Bounding box min X (in `coord_crs`).")],
            miny: Annotated[float, Path(description="Bounding box min Y.")],
            maxx: Annotated[float, Path(description="Bounding box max X.")],
            maxy: Annotated[float, Path(description="Bounding box max Y.")],
            format: Annotated[ImageType, Field(description="Output format (tif for GeoTIFF, npy, png, …).")],
            width: Annotated[int | None, Field(gt=0, description="Output width in pixels.")] = None,
            height: Annotated[int | None, Field(gt=0, description="Output height in pixels.")] = None,
            src_path=Depends(self.path_dependency),
            layer_params=Depends(self.layer_dependency),
            dataset_params=Depends(self.dataset_dependency),
            grid_params=Depends(GridParams),
            dst_crs=Depends(DstCRSParams),
            coord_crs=Depends(CoordCRSParams),
            colormap=Depends(self.colormap_dependency),
            render_params=Depends(self.render_dependency),
            env=Depends(self.environment_dependency),
        ):
            """The recipe's output over a bounding box, on the data's native grid unless told otherwise."""
            area = Area.from_bbox((minx, miny, maxx, maxy), coord_crs or WGS84, "bbox")
            with rasterio.Env(**env), self.reader(src_path) as src:
                grid = self.output_grid(request, src, area, layer_params, dst_crs, grid_params, width, height)
                image = self.image(src, grid, layer_params, dataset_params)
            return self.render(image, format, colormap, render_params)

        for path, sized in (("/bbox/{minx},{miny},{maxx},{maxy}.{format}", ""),
                            ("/bbox/{minx},{miny},{maxx},{maxy}/{width}x{height}.{format}", "WithSizes")):
            self.router.add_api_route(
                path, bbox_image, methods=["GET"], **img_endpoint_params,
                operation_id=f"{self.operation_prefix}getDataForBoundingBox{sized}WithFormat",
            )  # fmt: skip

    def feature(self):
        """Register `POST /feature[/{width}x{height}][.{format}]`."""

        def feature_image(
            request: Request,
            geojson: Annotated[dict, Body(description=GEOJSON_DOC, examples=[EXAMPLE])],
            format: Annotated[ImageType | None, Field(description="Output format; default png (with mask) or jpeg.")] = None,
            width: Annotated[int | None, Field(gt=0, description="Output width in pixels.")] = None,
            height: Annotated[int | None, Field(gt=0, description="Output height in pixels.")] = None,
            src_path=Depends(self.path_dependency),
            layer_params=Depends(self.layer_dependency),
            dataset_params=Depends(self.dataset_dependency),
            grid_params=Depends(GridParams),
            dst_crs=Depends(DstCRSParams),
            coord_crs=Depends(CoordCRSParams),
            colormap=Depends(self.colormap_dependency),
            render_params=Depends(self.render_dependency),
            env=Depends(self.environment_dependency),
        ):
            """The recipe's output over a geometry's bounds; pixels whose centre is outside the geometry are masked."""
            area = area_from_body(geojson, coord_crs)
            with rasterio.Env(**env), self.reader(src_path) as src:
                grid = self.output_grid(request, src, area, layer_params, dst_crs, grid_params, width, height)
                image = masked_outside(self.image(src, grid, layer_params, dataset_params), area.inside(grid))
            return self.render(image, format, colormap, render_params)

        # Most specific first: `{height}` would otherwise swallow `128.png`.
        for path, name in (("/feature.{format}", "WithFormat"), ("/feature", ""),
                           ("/feature/{width}x{height}.{format}", "WithSizesAndFormat"),
                           ("/feature/{width}x{height}", "WithSizes")):
            self.router.add_api_route(
                path, feature_image, methods=["POST"], **img_endpoint_params,
                operation_id=f"{self.operation_prefix}postDataForGeoJSON{name}",
            )  # fmt: skip

    def statistics(self):
        """Register `POST /statistics`."""

        @self.router.post("/statistics", operation_id=f"{self.operation_prefix}postStatistics")
        def statistics(
            request: Request,
            geojson: Annotated[dict, Body(description=GEOJSON_DOC, examples=[EXAMPLE])],
            src_path=Depends(self.path_dependency),
            layer_params=Depends(self.layer_dependency),
            dataset_params=Depends(self.dataset_dependency),
            grid_params=Depends(GridParams),
            dst_crs=Depends(DstCRSParams),
            coord_crs=Depends(CoordCRSParams),
            stats_params=Depends(StatisticsParams),
            per_date: Annotated[
                bool, Query(description="Composites: statistics of each scene's usable pixels instead of the composite.")
            ] = False,
            env=Depends(self.environment_dependency),
        ):
            """Per band over the geometry's pixels: count, min, max, mean, sum, std, median, percentiles, histogram."""
            area = area_from_body(geojson, coord_crs)
            options = stats_params.parsed()
            with rasterio.Env(**env), self.reader(src_path) as src:
                grid = self.output_grid(request, src, area, layer_params, dst_crs, grid_params)
                inside = area.inside(grid)
                if per_date:
                    recipe, compositing, observed = self.observations(src, grid, layer_params, dataset_params)
                    result = {"dates": statistics_per_date(recipe, observed, inside, **options),
                              "cloud_mask": compositing.cloud_mask.kind, "skipped": observed.skipped}  # fmt: skip
                else:
                    image = self.image(src, grid, layer_params, dataset_params)
                    result = {"statistics": image_statistics(image.array.filled(np.nan), image.band_descriptions,
                                                             inside, **options)}  # fmt: skip
                    result.update({k: image.metadata[k] for k in ("items", "skipped") if k in (image.metadata or {})})
            return self.feature_response(geojson, grid, inside, result)

    def observations(self, src: Any, grid: Grid, layer_params: Any, dataset_params: Any):
        """The recipe and every scene's usable values on `grid` (collections only)."""
        raise InvalidParameter("per_date", "applies to collections, not to single items")

    @staticmethod
    def feature_response(geojson: Any, grid: Grid, inside: np.ndarray, properties: dict[str, Any]) -> dict[str, Any]:
        """The request's geometry as a GeoJSON Feature with the results and the grid in its properties."""
        feature = geojson if geojson.get("type") == "Feature" else {"type": "Feature", "geometry": geojson}
        given = feature.get("properties") or {}
        return {**feature, "properties": {**given, **properties, "pixels": int(inside.sum()), "grid": grid_json(grid)}}


@define(kw_only=True)
class ItemProcessingFactory(AreaRoutes, RecipeTilerFactory):
    """Area subsets and statistics of one item (no cloud mask, like the item's tiles)."""

    reader: type[SceneReader] = SceneReader
    path_dependency: Any = ItemPathParams

    def register_routes(self):
        self.bbox()
        self.feature()
        self.statistics()

    def covering(self, src: SceneReader, area: Area, layer_params: Any, grid: Callable[[Asset | None], Grid]) -> Grid:
        return grid(native_asset(Recipe.from_params(**layer_params.as_dict()), src.input))

    def image(self, src: SceneReader, grid: Grid, layer_params: Any, dataset_params: Any) -> ImageData:
        return src.read_grid(grid, Recipe.from_params(**layer_params.as_dict()), **dataset_params.as_dict())


@define(kw_only=True)
class CompositeProcessingFactory(AreaRoutes, RecipeTilerFactory):
    """Area subsets, statistics and time series of a collection's composites and scenes."""

    reader: type[CollectionReader] = CollectionReader
    path_dependency: Any = CollectionStackParams
    layer_dependency: Any = CompositeParams

    def register_routes(self):
        self.bbox()
        self.feature()
        self.statistics()
        self.timeseries()

    def covering(
        self, src: CollectionReader, area: Area, layer_params: Any, grid: Callable[[Asset | None], Grid]
    ) -> Grid:
        """On the newest selected scene's native grid; the area's reads use the scenes selected here (one search)."""
        recipe = src.spec(**layer_params.as_dict()).recipe
        return src.area_grid(area, lambda newest: grid(native_asset(recipe, newest)))

    def image(self, src: CollectionReader, grid: Grid, layer_params: Any, dataset_params: Any) -> ImageData:
        return src.read_grid(grid, src.spec(**layer_params.as_dict()), **dataset_params.as_dict())

    def observations(self, src: CollectionReader, grid: Grid, layer_params: Any, dataset_params: Any):
        bound, observed = src.observe(grid, src.spec(**layer_params.as_dict()), **dataset_params.as_dict())
        return bound.recipe, bound.compositing, observed

    def timeseries(self):
        """Register `GET|POST /timeseries`."""

        def run(request: Request, area: Area, geojson: dict, src_path: Any, layer_params: Any, dataset_params: Any,
                grid_params: GridParams, dst_crs: CRS | None, env: dict) -> dict[str, Any]:
            with rasterio.Env(**env), self.reader(src_path) as src:
                grid = self.output_grid(request, src, area, layer_params, dst_crs, grid_params)
                inside = area.inside(grid)
                if not inside.any():
                    raise InvalidParameter("geometry", f"no pixel centre of the {grid.width} × {grid.height} grid is inside")
                recipe, compositing, observed = self.observations(src, grid, layer_params, dataset_params)
            rows = timeseries(recipe, observed, inside)
            properties = {"band_names": recipe.descriptions, "cloud_mask": compositing.cloud_mask.kind,
                          "timeseries": rows, "skipped": observed.skipped}  # fmt: skip
            return self.feature_response(geojson, grid, inside, properties)

        @self.router.get("/timeseries", operation_id=f"{self.operation_prefix}getTimeseries")
        def timeseries_get(
            request: Request,
            point: Annotated[str | None, Query(description="`x,y` of a point in `coord_crs` (default lon,lat).")] = None,
            bbox: Annotated[str | None, Query(description="`minx,miny,maxx,maxy` of an area in `coord_crs`.")] = None,
            src_path=Depends(self.path_dependency),
            layer_params=Depends(MaskParams),
            dataset_params=Depends(self.dataset_dependency),
            grid_params=Depends(GridParams),
            dst_crs=Depends(DstCRSParams),
            coord_crs=Depends(CoordCRSParams),
            env=Depends(self.environment_dependency),
        ):
            """One row per scene, oldest first: each output band's mean over the usable pixels of the point or
            bbox, and the shares of pixels usable and cloud-masked."""
            if (point is None) == (bbox is None):
                raise InvalidParameter("point", "give a point or a bbox (one of them)")
            if point is not None:
                xy = [v.strip() for v in point.split(",")]
                try:
                    coordinates = [float(v) for v in xy]
                except ValueError:
                    raise InvalidParameter("point", f"'{point}' is not x,y") from None
                if len(coordinates) != 2:
                    raise InvalidParameter("point", f"'{point}' is not x,y")
                geojson = {"type": "Point", "coordinates": coordinates}
                area = Area.from_geojson(geojson, coord_crs or WGS84, "point")
            else:
                area = Area.from_bbox(parse_bbox(bbox), coord_crs or WGS84, "bbox")
                geojson = {"type": "Polygon", "coordinates": [list(area.geometry.exterior.coords)]}
            return run(request, area, geojson, src_path, layer_params, dataset_params, grid_params, dst_crs, env)

        @self.router.post("/timeseries", operation_id=f"{self.operation_prefix}postTimeseries")
        def timeseries_post(
            request: Request,
            geojson: Annotated[dict, Body(description=GEOJSON_DOC, examples=[EXAMPLE])],
            src_path=Depends(self.path_dependency),
            layer_params=Depends(MaskParams),
            dataset_params=Depends(self.dataset_dependency),
            grid_params=Depends(GridParams),
            dst_crs=Depends(DstCRSParams),
            coord_crs=Depends(CoordCRSParams),
            env=Depends(self.environment_dependency),
        ):
            """One row per scene, oldest first, over a GeoJSON point or polygon (see `GET /timeseries`)."""
            area = area_from_body(geojson, coord_crs)
            return run(request, area, geojson, src_path, layer_params, dataset_params, grid_params, dst_crs, env)
