"""OGC WMTS 1.0.0: service-level capabilities (KVP and REST) whose layers are the collections' presets, and
each item of a collection of access `owner` (export results: `exports.<export id>`, rendered as its
`renders.default` says, listed only for the item's owner).

Item layers have one Time value per acquisition date (default: the latest); composite layers have
intervals written `start--end` (ISO 8601's alternative separator, safe in REST paths).

GetTile (KVP `/wmts?REQUEST=GetTile…` and REST `/wmts/1.0.0/{layer}/{style}/{Time}/{tms}/{z}/{row}/{col}.{ext}`)
is rewritten by `tiler.middleware` into the matching tile URL with `preset=`, so every WMTS tile is
byte-identical to the tile endpoint's. The layer comes from a `LayerIndex` rebuilt only when the catalog
changes. Tiles are served at every tile matrix of the set (GDAL reads the finest one), within the rows and
columns covering the layer's bounding box (the TileMatrixSetLimits, advertised for the native zooms).
Every error is an OWS ExceptionReport (`OWSError`, `translate`).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode
from xml.sax.saxutils import escape, quoteattr

from fastapi import APIRouter, Query
from morecantile import TileMatrixSet
from morecantile.defaults import TileMatrixSets
from starlette.requests import Request
from starlette.responses import Response

from mosaics.catalog import Catalog
from mosaics.errors import NotFound
from mosaics.models import Collection, Item
from mosaics.reader import SceneReader
from tiler.access import CatalogView, catalog_view, token_query
from tiler.params import parse_datetime
from tiler.presets import PresetRegistry

router = APIRouter()

LAYER_TMS = ("WebMercatorQuad", "WorldCRS84Quad")
FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
REST_TILE = "/wmts/1.0.0/{layer}/{style}/{Time}/{TileMatrixSet}/{TileMatrix}/{TileRow}/{TileCol}.{ext}"


class OWSError(Exception):
    """A WMTS error, answered as an OWS ExceptionReport with an OGC exception code."""

    def __init__(self, code: str, locator: str, text: str, status: int = 400):
        self.code, self.locator, self.text, self.status = code, locator, text, status
        super().__init__(f"{locator}: {text}")

    def response(self) -> Response:
        """The ExceptionReport."""
        return exception_report(self.code, self.locator, self.text, self.status)


@dataclass(frozen=True)
class Layer:
    """A WMTS layer: one preset of one collection, or one item of an `owner` collection with its rendering
    (`query`, `owner`), with its dates and tile matrix set limits."""

    identifier: str
    title: str
    abstract: str
    collection_id: str
    preset_id: str
    composite: bool
    bbox: tuple[float, float, float, float]
    times: tuple[str, ...]
    zooms: dict[str, tuple[int, int]]
    scenes: dict[str, str]  # item layers: acquisition date → id of the newest item of that date
    query: tuple[tuple[str, str], ...] = ()  # tile query of a layer without a preset
    owner: str | None = None  # the only caller that sees the layer of an owned item

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


def _zooms(item: Item, tms_sets: TileMatrixSets) -> dict[str, tuple[int, int]]:
    """The item's zoom range in the layer tile matrix sets and the UTM set of its zone."""
    utm = [t for t in tms_sets.list() if t.startswith("UTM") and _crs_urn(tms_sets.get(t)).endswith(
        f":{next((a.epsg for a in item.assets.values() if a.epsg), 0)}")]
    zooms = {}
    for tms_id in (*LAYER_TMS, *utm):
        reader = SceneReader(item, tms=tms_sets.get(tms_id))
        zooms[tms_id] = (reader.minzoom, reader.maxzoom)
    return zooms


def render_query(render: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """Tile query parameters of a STAC render extension object (`renders.<name>`)."""
    query = [(k, str(render[k])) for k in ("expression", "color_formula", "colormap_name") if render.get(k)]
    query += [("assets", ",".join(render["assets"]))] if render.get("assets") and not render.get("expression") else []
    return tuple(query + [("rescale", ",".join(f"{v:g}" for v in r)) for r in render.get("rescale") or ()])


def item_layer(collection: Collection, item: Item, tms_sets: TileMatrixSets) -> Layer:
    """The layer of one item of an `owner` collection, rendered as its `renders.default` says."""
    date = _date(item)
    return Layer(
        identifier=f"{collection.id}.{item.id}", title=f"{collection.title or collection.id}: {item.id}",
        abstract=f"{collection.description} Item {item.id}.", collection_id=collection.id, preset_id="",
        composite=False, bbox=item.bbox, times=(date,), zooms=_zooms(item, tms_sets), scenes={date: item.id},
        query=render_query(item.properties.get("renders", {}).get("default", {})), owner=item.owner,
    )  # fmt: skip


def build_layers(catalog: Catalog, registry: PresetRegistry, tms_sets: TileMatrixSets, composite_minzoom: int) -> dict[str, Layer]:
    """Every preset of every collection whose items have the preset's bands, and every item of the collections of
    access `owner`, by identifier."""
    found: dict[str, Layer] = {}
    for collection in catalog.collections():
        items = catalog.search(collection.id, sortby=("datetime",))
        if collection.access == "owner":
            found.update({layer.identifier: layer for layer in (item_layer(collection, i, tms_sets) for i in items)})
            continue
        if not items:
            continue
        latest = items[-1]
        zooms = _zooms(latest, tms_sets)
        bbox = (
            min(i.bbox[0] for i in items), min(i.bbox[1] for i in items),
            max(i.bbox[2] for i in items), max(i.bbox[3] for i in items),
        )
        scenes = {_date(i): i.id for i in items}  # ascending: the newest item of a date wins
        dates = tuple(sorted(scenes))
        whole = f"{dates[0]}--{dates[-1]}"
        for preset in registry.for_collection(collection.id, latest).values():
            interval = (preset.interval(latest.datetime) or whole).replace("/", "--")
            identifier = f"{collection.id}.{preset.id}"
            found[identifier] = Layer(
                identifier=identifier,
                title=f"{collection.title or collection.id}: {preset.title}",
                abstract=preset.description,
                collection_id=collection.id,
                preset_id=preset.id,
                composite=preset.is_composite,
                bbox=bbox,
                times=tuple(dict.fromkeys((whole, interval))) if preset.is_composite else dates,
                zooms={
                    tms_id: (max(low, composite_minzoom) if preset.is_composite and tms_id == "WebMercatorQuad" else low, high)
                    for tms_id, (low, high) in zooms.items()
                },
                scenes={} if preset.is_composite else scenes,
            )
    return found


class LayerIndex:
    """`build_layers` of the whole catalog, rebuilt only when a collection's version changes; and the
    capabilities XML of each layer, built once per index and base URL. What a caller may see is filtered
    on top (`visible_layers`, `layer`)."""

    def __init__(self, catalog: Catalog, registry: PresetRegistry, tms_sets: TileMatrixSets, composite_minzoom: int):
        self.catalog, self.registry, self.tms_sets, self.composite_minzoom = catalog, registry, tms_sets, composite_minzoom
        self._lock = threading.Lock()
        self._version: dict[str, str] | None = None
        self._layers: dict[str, Layer] = {}
        self._xml: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._limits: dict[tuple[str, tuple[float, float, float, float], int], tuple[int, int, int, int]] = {}

    def layers(self) -> dict[str, Layer]:
        """Layers by identifier, for the catalog as it is now."""
        version = self.catalog.versions()
        with self._lock:
            if version != self._version:
                self._layers = build_layers(self.catalog, self.registry, self.tms_sets, self.composite_minzoom)
                self._version = version
                self._xml.clear()
                self._limits.clear()
            return self._layers

    def tms(self, tms_id: str) -> TileMatrixSet:
        """A tile matrix set of the index's registry."""
        return self.tms_sets.get(tms_id)

    def limits(self, tms_id: str, bbox: tuple[float, float, float, float], z: int) -> tuple[int, int, int, int]:
        """`tile_limits` of a layer's bounding box, computed once per index."""
        key = (tms_id, bbox, z)
        if (found := self._limits.get(key)) is None:
            found = self._limits[key] = tile_limits(self.tms(tms_id), bbox, z)
        return found

    def layer(self, identifier: str, view: CatalogView) -> Layer:
        """The layer called `identifier` if the caller of `view` may see its collection and item (InvalidParameterValue
        naming it, with a 404 as for an unknown layer, otherwise)."""
        layer = self.layers().get(identifier)
        try:
            if layer is not None and layer.owner in (None, view.caller.principal):
                view.version(layer.collection_id)
                return layer
        except NotFound:
            pass
        raise OWSError("InvalidParameterValue", "LAYER", f"layer '{identifier}' not found", 404)

    def layer_xml(self, layer: Layer, base: str, query: str) -> str:
        """The `<Layer>` element of `layer` with tile URLs under `base` ending in `query` (the last 4096 kept)."""
        key = (layer.identifier, base, query)
        with self._lock:
            if (xml := self._xml.get(key)) is not None:
                return xml
        xml = _layer_xml(layer, base, query, self)
        with self._lock:
            if self._layers.get(layer.identifier) is layer:
                self._xml[key] = xml
                while len(self._xml) > 4096:
                    self._xml.popitem(last=False)
        return xml


def tile_limits(tms: TileMatrixSet, bbox: tuple[float, float, float, float], z: int) -> tuple[int, int, int, int]:
    """(min row, max row, min col, max col) of the tiles of matrix `z` under the corners of the WGS 84 `bbox`
    (GDAL's WMTS driver reads the tiles under the corners' envelope in the set's CRS)."""
    west, south, east, north = bbox
    corners = [tms.tile(lon, lat, z) for lon, lat in ((west, north), (east, north), (west, south), (east, south))]
    rows, cols = [t.y for t in corners], [t.x for t in corners]
    return min(rows), max(rows), min(cols), max(cols)


def _index(params: dict[str, str], name: str) -> int:
    if not (params[name].isascii() and params[name].isdigit() and len(params[name]) <= 9):
        raise OWSError("InvalidParameterValue", name.upper(), f"'{params[name]}' is not a non-negative integer")
    return int(params[name])


def visible_layers(request: Request) -> list[Layer]:
    """The layers of the collections (and owned items) the caller may see."""
    view = catalog_view(request)
    visible = {collection.id for collection in view.collections()}
    found = [layer for layer in request.app.state.wmts_layers.layers().values() if layer.collection_id in visible]
    if any(layer.owner is not None for layer in found):
        view.restricted = True  # the list depends on the caller
    return [layer for layer in found if layer.owner in (None, view.caller.principal)]


def tile_target(index: LayerIndex, params: dict[str, str], view: CatalogView) -> str:
    """The tile URL (path and query) that answers a GetTile request given as lower-case KVP names, for the
    caller of `view`.

    Raises OWSError for a missing or bad parameter and for a tile outside the rows and columns of the layer.
    """
    for name in ("layer", "tilematrixset", "tilematrix", "tilerow", "tilecol"):
        if not params.get(name):
            raise OWSError("MissingParameterValue", name.upper(), "is required for GetTile")
    layer = index.layer(params["layer"], view)
    if params.get("style") not in (None, "", "default"):
        raise OWSError("InvalidParameterValue", "STYLE", f"'{params['style']}' is not a style of {layer.identifier} (default)")
    tms_id = params["tilematrixset"]
    if tms_id not in layer.zooms:
        raise OWSError("InvalidParameterValue", "TILEMATRIXSET", f"'{tms_id}': layer {layer.identifier} offers {', '.join(layer.zooms)}")
    ext = FORMATS.get(params.get("format") or "image/png")
    if ext is None:
        raise OWSError("InvalidParameterValue", "FORMAT", f"'{params.get('format')}' is not one of {', '.join(FORMATS)}")
    time = params.get("time") or layer.default_time
    if time not in layer.times and not (layer.composite and "--" in time):
        raise OWSError("InvalidParameterValue", "TIME", f"'{time}' is not one of {', '.join(layer.times)}")
    z, row, col = (_index(params, name) for name in ("tilematrix", "tilerow", "tilecol"))
    tms = index.tms(tms_id)
    if not tms.minzoom <= z <= tms.maxzoom:
        raise OWSError("InvalidParameterValue", "TILEMATRIX", f"'{z}' is not a tile matrix of {tms_id}")
    min_row, max_row, min_col, max_col = index.limits(tms_id, layer.bbox, z)
    if not min_row <= row <= max_row:
        raise OWSError("TileOutOfRange", "TILEROW", f"{row} is outside {min_row}–{max_row} at tile matrix {z} of {layer.identifier}")
    if not min_col <= col <= max_col:
        raise OWSError("TileOutOfRange", "TILECOL", f"{col} is outside {min_col}–{max_col} at tile matrix {z} of {layer.identifier}")
    if layer.composite:
        interval = time.replace("--", "/")
        parse_datetime(interval, "TIME")
        return (
            f"/collections/{layer.collection_id}/tiles/{tms_id}/{z}/{col}/{row}.{ext}"
            f"?{urlencode({'preset': layer.preset_id, 'datetime': interval})}"
        )
    query = urlencode(layer.query) if not layer.preset_id else f"preset={layer.preset_id}"
    return f"/collections/{layer.collection_id}/items/{layer.scenes[time]}/tiles/{tms_id}/{z}/{col}/{row}.{ext}?{query}"


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


def _limits_xml(index: LayerIndex, tms_id: str, bbox: tuple[float, float, float, float], zooms: tuple[int, int]) -> str:
    limits = []
    for z in range(zooms[0], zooms[1] + 1):
        min_row, max_row, min_col, max_col = index.limits(tms_id, bbox, z)
        limits.append(
            f"<TileMatrixLimits><TileMatrix>{z}</TileMatrix>"
            f"<MinTileRow>{min_row}</MinTileRow><MaxTileRow>{max_row}</MaxTileRow>"
            f"<MinTileCol>{min_col}</MinTileCol><MaxTileCol>{max_col}</MaxTileCol></TileMatrixLimits>"
        )
    return f"<TileMatrixSetLimits>{''.join(limits)}</TileMatrixSetLimits>"


def _layer_xml(layer: Layer, base: str, query: str, index: LayerIndex) -> str:
    west, south, east, north = layer.bbox
    links = "".join(
        f"<TileMatrixSetLink><TileMatrixSet>{tms_id}</TileMatrixSet>"
        f"{_limits_xml(index, tms_id, layer.bbox, zooms)}</TileMatrixSetLink>"
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
    index: LayerIndex = request.app.state.wmts_layers
    found = visible_layers(request)
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
        "<Contents>" + "".join(index.layer_xml(layer, base, query) for layer in found)
        + "".join(_tile_matrix_set_xml(index.tms(t)) for t in used)
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


# Tile endpoint parameters → the WMTS parameters they come from.
_LOCATORS = {
    "z": "TILEMATRIX", "x": "TILECOL", "y": "TILEROW", "tileMatrixSetId": "TILEMATRIXSET", "format": "FORMAT",
    "datetime": "TIME", "preset": "LAYER", "collection": "LAYER", "item": "TIME",
}  # fmt: skip
_PARAMETER = re.compile(r"^([\w:-]+): ")


def translate(status: int, detail: Any, tile: bool) -> OWSError:
    """The OWS error for an error response (`{"detail": …}`) of the tile endpoint (`tile`) or another route.

    A tile without data (404) is `TileOutOfRange` and stays a 404 (GDAL reads it as an empty block);
    other client errors are `InvalidParameterValue` (or `TileOutOfRange` for the tile address) with 400;
    server errors keep their status with `NoApplicableCode`.
    """
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):  # FastAPI validation errors
        parameter, text = str((detail[0].get("loc") or ["", ""])[-1]), "; ".join(str(d.get("msg")) for d in detail)
    else:
        text = str(detail)
        parameter = (match[1] if (match := _PARAMETER.match(text)) else "") or text.split(" ", 1)[0]
    locator = _LOCATORS.get(parameter, parameter)
    if status >= 500:
        return OWSError("NoApplicableCode", "", text, status)
    if not tile:
        code = "OperationNotSupported" if status in (404, 405) else "InvalidParameterValue"
        return OWSError(code, locator, text, 400 if status == 422 else status)
    if status == 404:
        return OWSError("TileOutOfRange", "TILEMATRIX", text, 404)
    if locator in ("TILEMATRIX", "TILEROW", "TILECOL"):
        return OWSError("TileOutOfRange", locator, text, 400)
    return OWSError("InvalidParameterValue", locator, text, 400)


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
    params = kvp_params(request.query_params.multi_items())
    operation = params.get("request", "")
    if operation != "GetCapabilities":
        raise OWSError("OperationNotSupported", "REQUEST", f"unsupported REQUEST '{operation}'")
    return Response(capabilities(request), media_type="application/xml")


def kvp_params(query: Iterable[tuple[str, str]]) -> dict[str, str]:
    """KVP parameters by lower-case name; OWSError for a repeated name and for a SERVICE other than WMTS."""
    params: dict[str, str] = {}
    for name, value in query:
        if name.lower() in params:
            raise OWSError("InvalidParameterValue", name.upper(), "is given more than once")
        params[name.lower()] = value
    if not params.get("service"):
        raise OWSError("MissingParameterValue", "SERVICE", "is required (WMTS)")
    if params["service"].upper() != "WMTS":
        raise OWSError("InvalidParameterValue", "SERVICE", f"SERVICE must be WMTS, not '{params['service']}'")
    if params.get("version", "1.0.0") != "1.0.0":
        raise OWSError("InvalidParameterValue", "VERSION", f"'{params['version']}' is not supported (1.0.0)")
    return params
