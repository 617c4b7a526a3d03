"""Tile matrix sets: morecantile's defaults plus a UTM quad for each UTM zone the catalog uses."""

from __future__ import annotations

from collections.abc import Iterable

import morecantile
from morecantile import TileMatrixSet
from morecantile.defaults import TileMatrixSets

from mosaics.errors import InvalidParameter

_UTM_TEMPLATE = "UTM31WGS84Quad"


def is_utm(epsg: object) -> bool:
    """Whether `epsg` is the EPSG code of a WGS 84 / UTM zone: 32601–32660 (north), 32701–32760 (south)."""
    return isinstance(epsg, int) and not isinstance(epsg, bool) and epsg // 100 in (326, 327) and 1 <= epsg % 100 <= 60


def utm_tms(epsg: int) -> TileMatrixSet:
    """`UTM{zone}{N|S}WGS84Quad` for a WGS 84 / UTM EPSG code (`is_utm`)."""
    zone, hemisphere = epsg % 100, {326: "N", 327: "S"}[epsg // 100]
    crs = f"http://www.opengis.net/def/crs/EPSG/0/{epsg}"
    body = morecantile.tms.get(_UTM_TEMPLATE).model_dump(mode="json", exclude_none=True)
    body.update(id=f"UTM{zone:02d}{hemisphere}WGS84Quad", crs=crs, title=f"WGS 84 / UTM zone {zone}{hemisphere} quad")
    if "boundingBox" in body:
        body["boundingBox"]["crs"] = crs
    return TileMatrixSet.model_validate(body)


class SharedTileMatrixSets(TileMatrixSets):
    """morecantile's registry, but `get` answers one shared TileMatrixSet per identifier instead of a deep copy
    per call (~7 ms a tile): jeo-tiler never modifies them, and their pyproj transformers are thread-safe."""

    def get(self, identifier: str) -> TileMatrixSet:
        """The registered TileMatrixSet (InvalidIdentifier if unknown), loaded on first use."""
        found = self.tilematrixsets.get(identifier)
        if not isinstance(found, TileMatrixSet):
            found = self.tilematrixsets[identifier] = super().get(identifier)
        return found


def supported_tms(epsg_codes: Iterable[object]) -> SharedTileMatrixSets:
    """morecantile's default sets plus UTM quads for the UTM zones among `epsg_codes` (other values are ignored,
    so that a bad `proj:epsg` in the catalog never stops the server from starting)."""
    utm = [utm_tms(code) for code in sorted({code for code in epsg_codes if is_utm(code)})]
    registered = morecantile.tms.register({t.id: t for t in utm if t.id not in morecantile.tms.list()})
    return SharedTileMatrixSets(dict(registered.tilematrixsets))


def check_tile(tms: TileMatrixSet, z: int, x: int, y: int) -> None:
    """InvalidParameter naming z, x or y when the address is not in the tile matrix set."""
    if not tms.minzoom <= z <= tms.maxzoom:
        raise InvalidParameter("z", f"{z} is outside {tms.id} zoom levels {tms.minzoom}–{tms.maxzoom}")
    matrix = tms.matrix(z)
    if not 0 <= x < matrix.matrixWidth:
        raise InvalidParameter("x", f"{x} is outside 0–{matrix.matrixWidth - 1} at zoom {z} of {tms.id}")
    if not 0 <= y < matrix.matrixHeight:
        raise InvalidParameter("y", f"{y} is outside 0–{matrix.matrixHeight - 1} at zoom {z} of {tms.id}")
