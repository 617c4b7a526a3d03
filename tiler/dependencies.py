"""FastAPI dependencies: every query parameter of jeo-tiler's endpoints, documented for OpenAPI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Path, Query, Request
from rio_tiler.types import RIOResampling, WarpResampling
from titiler.core.dependencies import DefaultDependency

from algorithms.indices import INDICES
from mosaics.catalog import Catalog
from mosaics.models import Item

INDEX_DOC = "Named spectral index, on physical values: " + "; ".join(
    f"`{name}` = {spec.formula}" for name, spec in INDICES.items()
)


def get_catalog(request: Request) -> Catalog:
    """The application's catalog."""
    return request.app.state.catalog


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
