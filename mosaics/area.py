"""Areas of interest: a bbox, a GeoJSON geometry or a point in some CRS; the output `Grid` that covers one, and
which of its pixels are inside.

The grid follows the exports' rules, so that a subset and an export of the same area and recipe have the same
pixels: by default the CRS and resolution of the data's native grid, with bounds widened to whole native pixels;
in another CRS (`crs`) or at another `resolution`, pixels counted from the CRS origin. `width`/`height` give
the size instead (exact bounds, titiler's `/{width}x{height}`); `max_size` shrinks the longest side to at most
that many pixels. A point covers the one native pixel that contains it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio.warp
import shapely
import shapely.geometry
from rasterio.crs import CRS
from rasterio.features import geometry_mask
from rasterio.transform import Affine, array_bounds

from mosaics.errors import InvalidParameter
from mosaics.grid import Grid
from mosaics.models import Asset

WGS84 = CRS.from_epsg(4326)
GEOMETRY_TYPES = ("Point", "Polygon", "MultiPolygon")
_EPS = 1e-6  # of a pixel: coordinates this close to a pixel edge count as on it


def _finite(values: Sequence[float]) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _check_lonlat(geometry: shapely.Geometry, field: str) -> None:
    west, south, east, north = geometry.bounds
    if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90):
        raise InvalidParameter(field, f"coordinates {[west, south, east, north]} are not longitude, latitude")


@dataclass(frozen=True)
class Area:
    """A point or (multi)polygon `geometry` in `crs`; `field` is the request field that named it (for errors)."""

    geometry: shapely.Geometry
    crs: CRS
    field: str

    @classmethod
    def from_bbox(cls, bbox: Sequence[float], crs: CRS = WGS84, field: str = "bbox") -> Area:
        """minx, miny, maxx, maxy in `crs`."""
        if len(bbox) != 4 or not _finite(bbox):
            raise InvalidParameter(field, f"expected 4 finite numbers, got {list(bbox)}")
        if not (bbox[0] < bbox[2] and bbox[1] < bbox[3]):
            raise InvalidParameter(field, f"{list(bbox)}: min must be below max")
        area = cls(shapely.box(*bbox), crs, field)
        if crs.is_geographic:
            _check_lonlat(area.geometry, field)
        return area

    @classmethod
    def from_geojson(
        cls, geojson: Any, crs: CRS = WGS84, field: str = "geometry", types: Sequence[str] = GEOMETRY_TYPES
    ) -> Area:
        """A GeoJSON geometry or Feature of one of `types` (coordinates in `crs`)."""
        geometry = geojson
        if isinstance(geometry, dict) and geometry.get("type") == "Feature":
            geometry = geometry.get("geometry")
        kind = geometry.get("type") if isinstance(geometry, dict) else type(geometry).__name__
        if kind not in types:
            raise InvalidParameter(field, f"expected a GeoJSON {', '.join(types)} (or a Feature of one), got {kind!r}")
        try:
            shape = shapely.geometry.shape(geometry)
        except Exception as error:  # shapely raises several kinds for malformed coordinates
            raise InvalidParameter(field, f"malformed {kind} coordinates: {error}") from None
        if shape.is_empty or not _finite(shapely.get_coordinates(shape).ravel().tolist()):
            raise InvalidParameter(field, f"empty {kind} or non-finite coordinates")
        if kind != "Point" and not shape.is_valid:
            raise InvalidParameter(field, f"invalid {kind}: {shapely.is_valid_reason(shape)}")
        if kind != "Point" and shape.area == 0:
            raise InvalidParameter(field, f"the {kind} has no area")
        if crs.is_geographic:
            _check_lonlat(shape, field)
        return cls(shape, crs, field)

    @property
    def is_point(self) -> bool:
        return self.geometry.geom_type == "Point"

    def _points_in(self, crs: CRS) -> tuple[np.ndarray, np.ndarray]:
        """The outline's coordinates (densified to 1/50 of its extent) in `crs`."""
        geometry = self.geometry
        if not self.is_point:
            west, south, east, north = geometry.bounds
            geometry = shapely.segmentize(geometry.boundary, max(east - west, north - south) / 50)
        xs, ys = shapely.get_coordinates(geometry).T
        if crs == self.crs:
            return xs, ys
        try:
            xs, ys = rasterio.warp.transform(self.crs, crs, xs, ys)
        except Exception as error:  # PROJ errors
            raise InvalidParameter(self.field, f"cannot be transformed to {crs.to_string()}: {error}") from None
        xs, ys = np.asarray(xs), np.asarray(ys)
        if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
            raise InvalidParameter(self.field, f"cannot be transformed to {crs.to_string()}")
        return xs, ys

    def bounds_in(self, crs: CRS) -> tuple[float, float, float, float]:
        """Bounds of the area in `crs`."""
        xs, ys = self._points_in(crs)
        return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())

    def lonlat(self) -> dict[str, Any]:
        """The area as a GeoJSON geometry in EPSG:4326 (for catalog searches)."""
        if self.crs == WGS84:
            return shapely.geometry.mapping(self.geometry)
        if self.is_point:
            xs, ys = self._points_in(WGS84)
            return {"type": "Point", "coordinates": [float(xs[0]), float(ys[0])]}
        return rasterio.warp.transform_geom(self.crs, WGS84, shapely.geometry.mapping(self.geometry))

    def grid(
        self,
        native: Asset | None,
        crs: CRS | None = None,
        resolution: float | Sequence[float] | None = None,
        width: int | None = None,
        height: int | None = None,
        max_size: int | None = None,
        crs_field: str = "dst_crs",
    ) -> Grid:
        """The output grid covering the area (see the module docstring); `native` is the data's finest asset,
        `crs_field` the request field of `crs` (for errors)."""
        if native is None and (crs is None or (resolution is None and width is None)):
            raise InvalidParameter(crs_field, f"the data has no projection metadata: give {crs_field} and resolution")
        out_crs = output_crs(native, crs, crs_field)
        bounds = self.bounds_in(out_crs)
        if width is not None or height is not None:
            if self.is_point or width is None or height is None or width < 1 or height < 1:
                raise InvalidParameter("width", f"{width}x{height}: give both, positive, for an area")
            return Grid(bounds, out_crs, width, height)
        res = pixel_size(native, out_crs, resolution, crs_field)
        same = native is not None and out_crs == CRS.from_epsg(native.epsg)
        origin = (native.transform[2], native.transform[5]) if same else (0, 0)
        if self.is_point:  # the pixel containing it, as rasterio's `index` finds it
            left = origin[0] + math.floor((bounds[0] - origin[0]) / res[0]) * res[0]
            top = origin[1] - math.floor((origin[1] - bounds[1]) / res[1]) * res[1]
            return Grid((left, top - res[1], left + res[0], top), out_crs, 1, 1)
        left, right = _snap(bounds[0], bounds[2], origin[0], res[0])
        bottom, top = _snap(bounds[1], bounds[3], origin[1], res[1])
        cols, rows = max(1, round((right - left) / res[0])), max(1, round((top - bottom) / res[1]))
        right, bottom = left + cols * res[0], top - rows * res[1]
        if max_size is not None and max(cols, rows) > max_size:
            if max_size < 1:
                raise InvalidParameter("max_size", f"{max_size} must be positive")
            ratio = max(cols, rows) / max_size
            cols, rows = max(1, round(cols / ratio)), max(1, round(rows / ratio))
        return Grid((left, bottom, right, top), out_crs, cols, rows)

    def inside(self, grid: Grid) -> np.ndarray:
        """`bool[H, W]`: grid pixels whose centre is in the area (every pixel for a point's grid)."""
        if self.is_point:
            return np.ones((grid.height, grid.width), np.bool_)
        geometry = shapely.geometry.mapping(self.geometry)
        if grid.crs != self.crs:
            geometry = rasterio.warp.transform_geom(self.crs, grid.crs, geometry)
        return geometry_mask([geometry], out_shape=(grid.height, grid.width), transform=grid.transform, invert=True)


def output_crs(native: Asset | None, crs: CRS | None, crs_field: str = "dst_crs") -> CRS:
    """`crs`, by default the native grid's; InvalidParameter naming `crs_field` unless projected or geographic."""
    out_crs = crs or CRS.from_epsg(native.epsg)
    if not (out_crs.is_projected or out_crs.is_geographic):
        raise InvalidParameter(crs_field, f"'{out_crs.to_string()}' is neither projected nor geographic")
    return out_crs


def pixel_size(
    native: Asset | None, out_crs: CRS, resolution: float | Sequence[float] | None = None, crs_field: str = "dst_crs"
) -> tuple[float, float]:
    """The output pixel size: `resolution` (a number or [x, y]), by default the native grid's in `out_crs`."""
    if resolution is not None:
        values = [resolution] * 2 if isinstance(resolution, (int, float)) else list(resolution)
        if len(values) != 2 or not _finite(values) or min(values) <= 0:
            raise InvalidParameter("resolution", f"expected a positive number or [x, y], got {resolution!r}")
        return float(values[0]), float(values[1])
    native_crs, transform = CRS.from_epsg(native.epsg), Affine(*native.transform[:6])
    if out_crs == native_crs:
        return abs(transform.a), abs(transform.e)
    rows, cols = native.shape
    try:
        default, _, _ = rasterio.warp.calculate_default_transform(
            native_crs, out_crs, cols, rows, *array_bounds(rows, cols, transform)
        )
    except Exception as error:  # PROJ errors
        raise InvalidParameter(crs_field, f"cannot reproject the native grid to {out_crs.to_string()}: {error}") from None
    return abs(default.a), abs(default.e)


def _snap(low: float, high: float, origin: float, res: float) -> tuple[float, float]:
    """`[low, high]` widened to whole pixels of size `res` counted from `origin`."""
    return origin + math.floor((low - origin) / res + _EPS) * res, origin + math.ceil((high - origin) / res - _EPS) * res


def check_size(grid: Grid, max_pixels: int, parameter: str) -> None:
    """InvalidParameter naming `parameter` when the grid has more than `max_pixels` pixels."""
    pixels = grid.width * grid.height
    if pixels > max_pixels:
        raise InvalidParameter(
            parameter, f"{grid.width} × {grid.height} = {pixels:,} pixels exceeds the limit of {max_pixels:,}: "
            "use a coarser resolution, max_size or a smaller area (or an export)",
        )
