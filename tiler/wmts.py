"""OGC WMTS 1.0.0: service-level capabilities (KVP and REST) whose layers are the collections' presets.

Item layers have one Time value per acquisition date (default: the latest); composite layers have
intervals written `start--end` (ISO 8601's alternative separator, safe in REST paths).

GetTile (KVP `/wmts?REQUEST=GetTile…` and REST `/wmts/1.0.0/{layer}/{style}/{Time}/{tms}/{z}/{row}/{col}.{ext}`)
is rewritten by `tiler.middleware` into the matching tile URL with `preset=`, so every WMTS tile is
byte-identical to the tile endpoint's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlencode
from xml.sax.saxutils import escape, quoteattr

from fastapi import APIRouter, Query
from morecantile import TileMatrixSet
from starlette.requests import Request
from starlette.responses import Response

from mosaics.errors import InvalidParameter, NotFound
from mosaics.models import Item
from mosaics.reader import SceneReader
from tiler.access import token_query
from tiler.dependencies import get_catalog
from tiler.params import parse_datetime

router = APIRouter()

LAYER_TMS = ("WebMercatorQuad", "WorldCRS84Quad")
FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
REST_TILE = "/wmts/1.0.0/{layer}/{style}/{Time}/{TileMatrixSet}/{TileMatrix}/{TileRow}/{TileCol}.{ext}"


@dataclass(frozen=True)
class Layer:
    """A WMTS layer: one preset of one collection, with its dates and tile matrix set limits."""

    identifier: str
    title: str
    abstract: str
    collection_id: str
    preset_id: str
    composite: bool
    bbox: tuple[float, float, float, float]
    times: tuple[str, ...]
    zooms: dict[str, tuple[int, int]]

    @property
    def default_time(self) -> str:
        """The latest date (item layers) or the preset's period (composite layers)."""
        return self.times[-1]


def _crs_urn(tms: TileMatrixSet) -> str:
    uri = tms.crs.root if hasattr(tms.crs, "root") else str(tms.crs)
    authority, version, code = uri.rstrip("/").split("/")[-3:]
    return f"urn:ogc:def:crs:{authority}:{'' if version == '0' else version}:{code}"


def _date(item: Item) -> str:
    return item.datetime.date().isoformat()


def layers(request: Request) -> list[Layer]:
    """The layers of the collections the caller may see."""
    visible = {collection.id for collection in get_catalog(request).collections()}
    return [layer for layer in all_layers(request) if layer.collection_id in visible]


def all_layers(request: Request) -> list[Layer]:
    """Every preset of every collection whose items have the preset's bands."""
    catalog, registry, tms_sets = request.app.state.catalog, request.app.state.presets, request.app.state.tms
    found: list[Layer] = []
    for collection in catalog.collections():
        items = catalog.search(collection.id, sortby=("datetime",))
        if not items:
            continue
        latest = items[-1]
        utm = [t for t in tms_sets.list() if t.startswith("UTM") and _crs_urn(tms_sets.get(t)).endswith(
            f":{next((a.epsg for a in latest.assets.values() if a.epsg), 0)}")]
        zooms = {}
        for tms_id in (*LAYER_TMS, *utm):
            reader = SceneReader(latest, tms=tms_sets.get(tms_id))
            zooms[tms_id] = (reader.minzoom, reader.maxzoom)
        bbox = (
            min(i.bbox[0] for i in items), min(i.bbox[1] for i in items),
            max(i.bbox[2] for i in items), max(i.bbox[3] for i in items),
        )
        dates = tuple(sorted({_date(i) for i in items}))
        whole = f"{dates[0]}--{dates[-1]}"
        composite_min = request.app.state.settings.composite_minzoom
        for preset in registry.for_collection(collection.id, latest).values():
            interval = (preset.interval(latest.datetime) or whole).replace("/", "--")
            found.append(Layer(
                identifier=f"{collection.id}.{preset.id}",
                title=f"{collection.title or collection.id}: {preset.title}",
                abstract=preset.description,
                collection_id=collection.id,
                preset_id=preset.id,
                composite=preset.is_composite,
                bbox=bbox,
                times=tuple(dict.fromkeys((whole, interval))) if preset.is_composite else dates,
                zooms={
                    tms_id: (max(low, composite_min) if preset.is_composite and tms_id == "WebMercatorQuad" else low, high)
                    for tms_id, (low, high) in zooms.items()
                },
            ))
    return found


def find_layer(request: Request, identifier: str) -> Layer:
    """The layer called `identifier` if the caller may see it (NotFound names it)."""
    for layer in all_layers(request):
        if layer.identifier == identifier:
            try:
                get_catalog(request).collection(layer.collection_id)
            except NotFound:
                break
            return layer
    raise NotFound("layer", identifier)


def tile_target(request: Request, params: dict[str, str]) -> str:
    """The tile URL (path and query) that answers a GetTile request given as lower-case KVP names."""
    for name in ("layer", "tilematrixset", "tilematrix", "tilerow", "tilecol"):
        if not params.get(name):
            raise InvalidParameter(name.upper(), "is required for GetTile")
    layer = find_layer(request, params["layer"])
    tms_id = params["tilematrixset"]
    if tms_id not in layer.zooms:
        raise NotFound("TileMatrixSet", tms_id, f"layer {layer.identifier} offers {', '.join(layer.zooms)}")
    ext = FORMATS.get(params.get("format") or "image/png") or params.get("format")
    if ext not in FORMATS.values():
        raise InvalidParameter("FORMAT", f"'{params.get('format')}' is not one of {', '.join(FORMATS)}")
    time = params.get("time") or layer.default_time
    if time not in layer.times and not (layer.composite and "--" in time):
        raise InvalidParameter("TIME", f"'{time}' is not one of {', '.join(layer.times)}")
    for name in ("tilematrix", "tilerow", "tilecol"):
        if not params[name].isdigit():
            raise InvalidParameter(name.upper(), f"'{params[name]}' is not a non-negative integer")
    z, row, col = params["tilematrix"], params["tilerow"], params["tilecol"]
    if layer.composite:
        interval = time.replace("--", "/")
        parse_datetime(interval, "TIME")
        return (
            f"/collections/{layer.collection_id}/tiles/{tms_id}/{z}/{col}/{row}.{ext}"
            f"?{urlencode({'preset': layer.preset_id, 'datetime': interval})}"
        )
    items = get_catalog(request).search(layer.collection_id, sortby=("-datetime",))
    item = next(i for i in items if _date(i) == time)
    return (
        f"/collections/{layer.collection_id}/items/{item.id}/tiles/{tms_id}/{z}/{col}/{row}.{ext}"
        f"?preset={layer.preset_id}"
    )


def _tile_matrix_set_xml(tms: TileMatrixSet) -> str:
    matrices = "".join(
        f"<TileMatrix><ows:Identifier>{m.id}</ows:Identifier>"
        f"<ScaleDenominator>{m.scaleDenominator!r}</ScaleDenominator>"
        f"<TopLeftCorner>{m.pointOfOrigin[0]!r} {m.pointOfOrigin[1]!r}</TopLeftCorner>"
        f"<TileWidth>{m.tileWidth}</TileWidth><TileHeight>{m.tileHeight}</TileHeight>"
        f"<MatrixWidth>{m.matrixWidth}</MatrixWidth><MatrixHeight>{m.matrixHeight}</MatrixHeight></TileMatrix>"
        for m in tms.tileMatrices
    )
    return (
        f"<TileMatrixSet><ows:Identifier>{tms.id}</ows:Identifier>"
        f"<ows:SupportedCRS>{_crs_urn(tms)}</ows:SupportedCRS>{matrices}</TileMatrixSet>"
    )


def _limits_xml(tms: TileMatrixSet, bbox: tuple[float, float, float, float], zooms: tuple[int, int]) -> str:
    west, south, east, north = bbox
    limits = []
    for z in range(zooms[0], zooms[1] + 1):
        upper_left, lower_right = tms.tile(west, north, z), tms.tile(east, south, z)
        limits.append(
            f"<TileMatrixLimits><TileMatrix>{z}</TileMatrix>"
            f"<MinTileRow>{upper_left.y}</MinTileRow><MaxTileRow>{lower_right.y}</MaxTileRow>"
            f"<MinTileCol>{upper_left.x}</MinTileCol><MaxTileCol>{lower_right.x}</MaxTileCol></TileMatrixLimits>"
        )
    return f"<TileMatrixSetLimits>{''.join(limits)}</TileMatrixSetLimits>"


def _layer_xml(layer: Layer, base: str, query: str, tms_sets) -> str:
    west, south, east, north = layer.bbox
    links = "".join(
        f"<TileMatrixSetLink><TileMatrixSet>{tms_id}</TileMatrixSet>"
        f"{_limits_xml(tms_sets.get(tms_id), layer.bbox, zooms)}</TileMatrixSetLink>"
        for tms_id, zooms in layer.zooms.items()
    )
    template = REST_TILE.replace("{layer}", layer.identifier).replace("{style}", "default")
    resources = "".join(
        f'<ResourceURL format="{mime}" resourceType="tile" template={quoteattr(base + template.replace("{ext}", ext) + query)}/>'
        for mime, ext in FORMATS.items()
    )
    values = "".join(f"<Value>{t}</Value>" for t in layer.times)
    return (
        f"<Layer><ows:Title>{escape(layer.title)}</ows:Title><ows:Abstract>{escape(layer.abstract)}</ows:Abstract>"
        f"<ows:WGS84BoundingBox><ows:LowerCorner>{west!r} {south!r}</ows:LowerCorner>"
        f"<ows:UpperCorner>{east!r} {north!r}</ows:UpperCorner></ows:WGS84BoundingBox>"
        f"<ows:Identifier>{escape(layer.identifier)}</ows:Identifier>"
        f"<Style isDefault=\"true\"><ows:Identifier>default</ows:Identifier></Style>"
        + "".join(f"<Format>{mime}</Format>" for mime in FORMATS)
        + f"<Dimension><ows:Identifier>Time</ows:Identifier><UOM>ISO8601</UOM>"
        f"<Default>{layer.default_time}</Default>{values}</Dimension>{links}{resources}</Layer>"
    )


def capabilities(request: Request) -> str:
    """The WMTS 1.0.0 capabilities document."""
    base = str(request.base_url).rstrip("/")
    tms_sets = request.app.state.tms
    found = layers(request)
    used = sorted({tms_id for layer in found for tms_id in layer.zooms})
    token = urlencode(token_query(request))  # clients that cannot set headers send it back in every URL
    query = f"?{token}" if token else ""
    kvp = f"{base}/wmts?" + (f"{token}&" if token else "")
    operations = "".join(
        f'<ows:Operation name="{op}"><ows:DCP><ows:HTTP><ows:Get xlink:href={quoteattr(kvp)}>'
        "<ows:Constraint name=\"GetEncoding\"><ows:AllowedValues><ows:Value>KVP</ows:Value></ows:AllowedValues>"
        "</ows:Constraint></ows:Get></ows:HTTP></ows:DCP></ows:Operation>"
        for op in ("GetCapabilities", "GetTile")
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1" '
        'xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:gml="http://www.opengis.net/gml" version="1.0.0" '
        'xsi:schemaLocation="http://www.opengis.net/wmts/1.0 http://schemas.opengis.net/wmts/1.0/wmtsGetCapabilities_response.xsd">'
        "<ows:ServiceIdentification><ows:Title>jeo-tiler</ows:Title>"
        "<ows:Abstract>Earth-observation presets computed per tile from Cloud-Optimized GeoTIFFs.</ows:Abstract>"
        "<ows:ServiceType>OGC WMTS</ows:ServiceType><ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion>"
        "</ows:ServiceIdentification>"
        f"<ows:OperationsMetadata>{operations}</ows:OperationsMetadata>"
        "<Contents>" + "".join(_layer_xml(layer, base, query, tms_sets) for layer in found)
        + "".join(_tile_matrix_set_xml(tms_sets.get(t)) for t in used)
        + "</Contents>"
        f'<ServiceMetadataURL xlink:href={quoteattr(base + "/wmts/1.0.0/WMTSCapabilities.xml" + query)}/>'
        "</Capabilities>"
    )


def exception_report(code: str, locator: str, text: str, status: int) -> Response:
    """An OWS ExceptionReport."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?><ExceptionReport xmlns="http://www.opengis.net/ows/1.1" version="1.1.0">'
        f"<Exception exceptionCode={quoteattr(code)} locator={quoteattr(locator)}>"
        f"<ExceptionText>{escape(text)}</ExceptionText></Exception></ExceptionReport>"
    )
    return Response(body, status_code=status, media_type="application/xml")


@router.get("/wmts/1.0.0/WMTSCapabilities.xml", summary="WMTS capabilities (RESTful).")
def capabilities_rest(request: Request):
    """The service's capabilities, listing a layer per collection preset."""
    return Response(capabilities(request), media_type="application/xml")


@router.get("/wmts", summary="WMTS KVP endpoint: GetCapabilities and GetTile.")
def wmts_kvp(
    request: Request,
    SERVICE: Annotated[str | None, Query(alias="SERVICE", description="`WMTS`.")] = None,
    REQUEST: Annotated[str | None, Query(alias="REQUEST", description="`GetCapabilities` or `GetTile`.")] = None,
):
    """GetCapabilities (GetTile requests are answered by the tile endpoint, see the module doc)."""
    params = {k.lower(): v for k, v in request.query_params.items()}
    service, operation = params.get("service", ""), params.get("request", "")
    if service.upper() != "WMTS":
        return exception_report("InvalidParameterValue", "SERVICE", f"SERVICE must be WMTS, not '{service}'", 400)
    if operation != "GetCapabilities":
        return exception_report("OperationNotSupported", "REQUEST", f"unsupported REQUEST '{operation}'", 400)
    return Response(capabilities(request), media_type="application/xml")
