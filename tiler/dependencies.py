"""FastAPI dependencies: every query parameter of jeo-tiler's endpoints, documented for OpenAPI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Path, Query, Request
from rio_tiler.types import RIOResampling, WarpResampling
from titiler.core.dependencies import DefaultDependency

from algorithms.indices import INDICES
from mosaics.collection_reader import CollectionStack
from mosaics.composite import METHODS, Selection
from mosaics.corrections import CORRECTIONS
from mosaics.errors import InvalidParameter
from mosaics.models import Item
from tiler.access import CatalogView, catalog_view
from tiler.params import parse_datetime

INDEX_DOC = "Named spectral index, on physical values: " + "; ".join(
    f"`{name}` = {spec.formula}" for name, spec in INDICES.items()
)


def get_catalog(request: Request) -> CatalogView:
    """The catalog as the caller sees it: restricted collections without a grant are unknown (404)."""
    return catalog_view(request)


def ItemPathParams(
    request: Request,
    collection_id: Annotated[str, Path(description="STAC collection id.")],
    item_id: Annotated[str, Path(description="STAC item id.")],
) -> Item:
    """The catalog item named in the path (404 when unknown)."""
    return get_catalog(request).item(collection_id, item_id)


@dataclass
class RecipeParams(DefaultDependency):
    """What to compute: a band combination, a band-math expression or a named index (one of them)."""

    assets: Annotated[
        list[str] | None,
        Query(
            description="Band combination: STAC asset keys, `eo:bands` names or common names, "
            "repeated or comma-separated (e.g. `B04,B03,B02` or `red,green,blue`).",
        ),
    ] = None
    expression: Annotated[
        str | None,
        Query(
            description="Band math over band names with `+ - * / **`, comparisons and the functions "
            "where, abs, sqrt, log, clip, min, max; `;` separates output bands (e.g. `(B08-B04)/(B08+B04)`).",
        ),
    ] = None
    index: Annotated[str | None, Query(description=INDEX_DOC)] = None


@dataclass
class ReadParams(DefaultDependency):
    """How pixels are read."""

    nodata: Annotated[
        float | None, Query(description="Overwrite the assets' nodata value (in DN).")
    ] = None
    resampling_method: Annotated[
        RIOResampling | None,
        Query(alias="resampling", description="Resampling when reading overviews/windows. Default `nearest`."),
    ] = None
    reproject_method: Annotated[
        WarpResampling | None,
        Query(alias="reproject", description="Resampling when reprojecting to the tile grid. Default `nearest`."),
    ] = None


def CollectionStackParams(
    request: Request,
    collection_id: Annotated[str, Path(description="STAC collection id.")],
    datetime: Annotated[
        str | None,
        Query(description="Scenes acquired in this RFC 3339 instant or interval `start/end` (`..` = open end)."),
    ] = None,
    max_cloud: Annotated[
        float | None, Query(ge=0, le=100, description="Only scenes with `eo:cloud_cover` at most this (percent).")
    ] = None,
    max_items: Annotated[
        int | None, Query(ge=1, description="At most this many scenes, taken in `sortby` order (capped by settings).")
    ] = None,
    sortby: Annotated[
        str, Query(description="Scene order: `-datetime` (newest first), `datetime`, `eo:cloud_cover`, …")
    ] = "-datetime",
) -> CollectionStack:
    """The collection and scene selection a composite tile is computed from."""
    settings = request.app.state.settings
    if max_items is not None and max_items > settings.composite_max_items_cap:
        raise InvalidParameter("max_items", f"{max_items} is above the cap of {settings.composite_max_items_cap}")
    selection = Selection(
        datetime=parse_datetime(datetime) if datetime else None,
        max_cloud=max_cloud,
        sortby=tuple(s.strip() for s in sortby.split(",") if s.strip()),
        max_items=max_items or settings.composite_max_items,
    )
    catalog = get_catalog(request)
    return CollectionStack(
        catalog=catalog,
        collection=catalog.collection(collection_id),
        selection=selection,
        pool=request.app.state.pool,
        corrector=request.app.state.corrector,
        minzoom=settings.composite_minzoom,
        max_bytes=settings.composite_max_bytes,
    )


@dataclass
class MaskParams(RecipeParams):
    """Which observations of each scene are usable, and how each scene is corrected."""

    cloud_mask: Annotated[
        str | None,
        Query(description="Unusable pixels: `scl` (Sentinel-2 classes 0, 1, 3, 8, 9, 10), "
              "`cloud_probability:<percent>`, `qa` (Landsat QA cloud bits) or `none`. Default: the collection's."),
    ] = None
    mask_dilation: Annotated[int, Query(ge=0, le=50, description="Grow masked areas by this many pixels.")] = 0
    correction: Annotated[
        Literal[CORRECTIONS],
        Query(description="Per-scene radiometric correction before compositing: none (catalog scale/offset), "
              "s2_harmonize (Sentinel-2 baseline ≥ 04.00 offset), toa (Landsat L1 DN → TOA reflectance, MTL), "
              "dos (DOS1 dark-object subtraction on TOA, dark values once per scene)."),
    ] = "none"


@dataclass
class CompositeParams(MaskParams):
    """How the scenes are composited per pixel."""

    method: Annotated[
        Literal[METHODS],
        Query(description="Per-pixel compositing: first (in sortby order), median, percentile (with `p`), mean, "
              "max_ndvi (greenest observation), medoid, geomedian (Weiszfeld), count (usable observations)."),
    ] = "median"
    p: Annotated[float | None, Query(ge=0, le=100, description="Percentile for method=percentile.")] = None
    provenance: Annotated[
        bool, Query(description="Return the index of the chosen scene per pixel (selecting methods) instead of values.")
    ] = False
