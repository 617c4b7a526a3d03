"""FastAPI dependencies: every query parameter of jeo-tiler's endpoints, documented for OpenAPI."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Path, Query, Request
from pydantic import Field
from rio_tiler.colormap import cmap as default_cmap
from rio_tiler.errors import InvalidColorFormat
from rio_tiler.types import ColorMapType, RIOResampling, WarpResampling
from titiler.core import dependencies as titiler
from titiler.core.dependencies import DefaultDependency

from algorithms.indices import INDICES
from mosaics import cloudmasks, corrections, methods
from mosaics.collection_reader import CollectionStack
from mosaics.composite import Selection
from mosaics.errors import InvalidParameter
from mosaics.limits import Limits, MemoryBudget
from mosaics.models import Item
from tiler.access import CatalogView, catalog_view
from tiler.params import parse_datetime
from tiler.settings import Settings

INDEX_DOC = "Named spectral index, on physical values: " + "; ".join(
    f"`{name}` = {spec.formula}" for name, spec in INDICES.items()
)


def create_limits(settings: Settings) -> Limits:
    """The request caps of `settings`, with a new per-process memory budget."""
    return Limits(
        max_buffer=settings.max_buffer,
        max_padding=settings.max_padding,
        max_tile_size=settings.max_tile_size,
        max_image_size=settings.max_image_size,
        max_output_bands=settings.max_output_bands,
        max_bytes=settings.request_max_bytes,
        budget=MemoryBudget(settings.request_budget_bytes, settings.request_budget_wait),
    )


def get_catalog(request: Request) -> CatalogView:
    """The catalog as the caller sees it: restricted collections without a grant are unknown (404)."""
    return catalog_view(request)


def get_limits(request: Request) -> Limits:
    """The application's request caps and memory budget."""
    return request.app.state.limits


@dataclass
class LimitsParams(DefaultDependency):
    """Reader options: the caps and budget every read is checked against (`SceneReader(limits=…)`)."""

    limits: Limits


def ReaderParams(request: Request) -> LimitsParams:
    """The application's limits, for the reader."""
    return LimitsParams(get_limits(request))


def TileParams(
    buffer: Annotated[
        float | None,
        Query(gt=0, description="Pixels added on each side of the tile, a multiple of 0.5 (e.g. 1 → 258 × 258); "
              "at most `JEO_MAX_BUFFER` (64)."),
    ] = None,
    padding: Annotated[
        int | None,
        Query(gt=0, description="Source pixels read around the tile to avoid resampling edge artefacts; "
              "at most `JEO_MAX_PADDING` (64)."),
    ] = None,
) -> titiler.TileParams:
    """Tile `buffer` and `padding` (checked against the limits with the tile size by the tile endpoint)."""
    return titiler.TileParams(buffer=buffer, padding=padding)


def PreviewParams(
    request: Request,
    max_size: Annotated[int, Field(description="Longest side of the output, in pixels (default 1024); "
                                   "at most `JEO_MAX_IMAGE_SIZE` (4096).")] = 1024,
    height: Annotated[int | None, Field(description="Output height in pixels (at most `JEO_MAX_IMAGE_SIZE`).")] = None,
    width: Annotated[int | None, Field(description="Output width in pixels (at most `JEO_MAX_IMAGE_SIZE`).")] = None,
) -> titiler.PreviewParams:
    """Preview size (query or path parameters), within the limits."""
    get_limits(request).check_image(width=width, height=height, max_size=max_size)
    return titiler.PreviewParams(max_size=max_size, height=height, width=width)


def ColorMapParams(
    colormap_name: Annotated[
        Literal[tuple(default_cmap.list())] | None, Query(description="Named colormap (matplotlib/rio-tiler).")
    ] = None,
    colormap: Annotated[
        str | None,
        Query(description='JSON colormap: `{"<value>": "<color>", …}` or intervals `[[[min, max], "<color>"], …]` '
              "(colors as `#rrggbb[aa]` or `[r, g, b, a]`)."),
    ] = None,
) -> ColorMapType | None:
    """titiler's colormap parameters; a malformed `colormap` is a 400 naming it."""
    try:
        return titiler.ColorMapParams(colormap_name=colormap_name, colormap=colormap)
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError, InvalidColorFormat) as error:
        raise InvalidParameter("colormap", f"not a colormap: {error}") from None


@dataclass
class RenderParams(titiler.ImageRenderingParams):
    """titiler's `rescale`, `color_formula` and `return_mask`; rescale ranges must be finite with min < max."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for low, high in self.rescale or ():
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise InvalidParameter("rescale", f"'{low:g},{high:g}' must be two finite numbers, min < max")


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
    asset_bidx: Annotated[
        list[str] | None,
        Query(
            description="Bands of multi-band assets named in `assets`, titiler's `{asset}|{index},{index},…` (e.g. "
            "`visual|1,2,3`: output bands `visual_b1`, `visual_b2`, `visual_b3`); one per asset (repeats are joined). Without it, a "
            "multi-band asset gives all its bands. In `expression`, band `n` of an asset is `{asset}_b{n}`.",
        ),
    ] = None

    def __post_init__(self):
        """One band name per entry, so that `red,green` and `red&assets=green` are the same request."""
        if self.assets is not None:
            self.assets = [name.strip() for value in self.assets for name in value.split(",") if name.strip()] or None


@dataclass
class AssetsParams(DefaultDependency):
    """Which raster assets `/info` describes."""

    assets: Annotated[
        list[str],
        Query(description="Raster assets: STAC asset keys, `eo:bands` names or common names, repeated or "
              "comma-separated (e.g. `red,nir`); `:all:` for every raster asset."),
    ]

    def __post_init__(self):
        self.assets = [name.strip() for value in self.assets for name in value.split(",") if name.strip()]


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
        limits=get_limits(request),
    )


@dataclass
class MaskParams(RecipeParams):
    """Which observations of each scene are usable, and how each scene is corrected."""

    cloud_mask: Annotated[
        str | None,
        Query(description=f"Unusable pixels: {cloudmasks.describe()}. Default: the collection's."),
    ] = None
    mask_dilation: Annotated[int, Query(ge=0, le=50, description="Grow masked areas by this many pixels.")] = 0
    correction: Annotated[
        Literal[tuple(corrections.CORRECTIONS)],
        Query(description=f"Per-scene radiometric correction before compositing: {corrections.describe()}."),
    ] = "none"


@dataclass
class CompositeParams(MaskParams):
    """How the scenes are composited per pixel."""

    method: Annotated[
        Literal[tuple(methods.METHODS)],
        Query(description=f"Per-pixel compositing: {methods.describe()}."),
    ] = "median"
    p: Annotated[float | None, Query(ge=0, le=100, description="Percentile for method=percentile.")] = None
    provenance: Annotated[
        bool, Query(description="Return the index of the chosen scene per pixel (selecting methods) instead of values.")
    ] = False
