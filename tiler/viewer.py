"""The built-in map pages: a Leaflet viewer and an OpenLayers page reading the WMTS capabilities."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from starlette.responses import HTMLResponse

router = APIRouter()


def _page(name: str) -> HTMLResponse:
    return HTMLResponse(files("tiler").joinpath("static", name).read_text())


@router.get("/viewer", response_class=HTMLResponse, summary="Leaflet viewer.")
def leaflet_viewer():
    """Pick a collection, a date or item and a preset, expression or index; watch the tiles."""
    return _page("viewer.html")


@router.get("/viewer/openlayers", response_class=HTMLResponse, summary="OpenLayers WMTS page.")
def openlayers_viewer():
    """The WMTS layers in OpenLayers, configured from the capabilities document."""
    return _page("openlayers.html")
