"""STAC-shaped read-only API over the catalog: /collections, /collections/{id}, …/items, …/items/{id}.

Asset hrefs are shown relative to the root they were ingested from, or joined to `JEO_STAC_ASSET_BASE_URL`:
never as the server's own paths.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query
from starlette.requests import Request

from mosaics.models import Collection, Item
from tiler.access import CatalogView
from tiler.dependencies import get_catalog
from tiler.params import parse_bbox, parse_crs, parse_datetime

router = APIRouter(tags=["STAC"])


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def collection_json(request: Request, collection: Collection) -> dict[str, Any]:
    """The stored collection document with links pointing into this API."""
    base = f"{_base(request)}/collections/{collection.id}"
    body = {k: v for k, v in collection.stac.items() if k != "links"}
    body["links"] = [
        {"rel": "self", "href": base, "type": "application/json"},
        {"rel": "root", "href": _base(request), "type": "application/json"},
        {"rel": "items", "href": f"{base}/items", "type": "application/geo+json"},
        {"rel": "tilejson", "href": f"{base}/WebMercatorQuad/tilejson.json", "type": "application/json"},
    ]
    return body


def public_href(request: Request, href: str) -> str:
    """An asset href as clients see it: relative to its ingest root, or joined to the configured base URL."""
    base = request.app.state.settings.stac_asset_base_url
    return f"{base.rstrip('/')}/{quote(href)}" if base else href


def item_json(request: Request, item: Item) -> dict[str, Any]:
    """A STAC Item for a catalog item, links pointing into this API, tiles linked."""
    base = f"{_base(request)}/collections/{item.collection}"
    body = {k: v for k, v in item.stac.items() if k != "links"}
    body["assets"] = {key: {**asset, "href": public_href(request, asset["href"])} for key, asset in body["assets"].items()}
    body["links"] = [
        {"rel": "self", "href": f"{base}/items/{item.id}", "type": "application/geo+json"},
        {"rel": "collection", "href": base, "type": "application/json"},
        {"rel": "parent", "href": base, "type": "application/json"},
        {"rel": "tilejson", "href": f"{base}/items/{item.id}/WebMercatorQuad/tilejson.json",
         "type": "application/json"},
    ]
    if export := item.properties.get("jeo:export"):  # an export's result: its record
        body["links"].append({"rel": "jeo:export", "href": f"{_base(request)}/exports/{export}", "type": "application/json"})
    return body


@router.get("/", summary="Landing page.")
def landing(request: Request):
    """A STAC/OGC API landing page linking to the service's resources."""
    base = _base(request)
    links = [
        ("self", "", "application/json"), ("root", "", "application/json"),
        ("data", "/collections", "application/json"), ("tiling-schemes", "/tileMatrixSets", "application/json"),
        ("service-desc", "/openapi.json", "application/vnd.oai.openapi+json;version=3.0"),
        ("service-doc", "/docs", "text/html"), ("wmts", "/wmts/1.0.0/WMTSCapabilities.xml", "application/xml"),
        ("viewer", "/viewer", "text/html"), ("exports", "/exports", "application/json"),
    ]
    return {
        "type": "Catalog",
        "stac_version": "1.0.0",
        "id": "jeo-tiler",
        "title": "jeo-tiler",
        "description": "Dynamic tiles, composites and exports of Earth-observation scenes.",
        "links": [{"rel": rel, "href": base + path, "type": kind} for rel, path, kind in links],
    }


@router.get("/collections", summary="List the registered collections.")
def collections(request: Request, catalog: Annotated[CatalogView, Depends(get_catalog)]):
    """All collections, STAC-shaped."""
    return {
        "collections": [collection_json(request, c) for c in catalog.collections()],
        "links": [{"rel": "self", "href": f"{_base(request)}/collections", "type": "application/json"}],
    }


@router.get("/collections/{collection_id}", summary="One collection.")
def collection(
    request: Request,
    collection_id: Annotated[str, Path(description="STAC collection id.")],
    catalog: Annotated[CatalogView, Depends(get_catalog)],
):
    """One collection, STAC-shaped (404 when unknown)."""
    return collection_json(request, catalog.collection(collection_id))


@router.get("/collections/{collection_id}/items", summary="Search a collection's items.")
def items(
    request: Request,
    collection_id: Annotated[str, Path(description="STAC collection id.")],
    catalog: Annotated[CatalogView, Depends(get_catalog)],
    bbox: Annotated[str | None, Query(description="minx,miny,maxx,maxy in EPSG:4326 (or `bbox-crs`).")] = None,
    bbox_crs: Annotated[str, Query(alias="bbox-crs", description="CRS of `bbox`, e.g. EPSG:32633.")] = "EPSG:4326",
    datetime: Annotated[
        str | None, Query(description="RFC 3339 instant or interval `start/end` (`..` for an open end).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10000, description="Maximum number of items.")] = 100,
):
    """Items of a collection as a GeoJSON FeatureCollection, newest first."""
    catalog.collection(collection_id)
    found = catalog.search(
        collection_id,
        bbox=parse_bbox(bbox) if bbox else None,
        bbox_crs=parse_crs(bbox_crs, "bbox-crs").to_string(),
        datetime=parse_datetime(datetime) if datetime else None,
        limit=limit,
    )
    return {
        "type": "FeatureCollection",
        "features": [item_json(request, item) for item in found],
        "numberReturned": len(found),
        "links": [{"rel": "self", "href": str(request.url), "type": "application/geo+json"}],
    }


@router.get("/collections/{collection_id}/items/{item_id}", summary="One item.")
def item(
    request: Request,
    collection_id: Annotated[str, Path(description="STAC collection id.")],
    item_id: Annotated[str, Path(description="STAC item id.")],
    catalog: Annotated[CatalogView, Depends(get_catalog)],
):
    """One item, STAC-shaped (404 when unknown)."""
    return item_json(request, catalog.item(collection_id, item_id))
