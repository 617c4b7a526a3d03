"""Explicit models of what the catalog stores and the readers need."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

from rasterio.crs import CRS
from rasterio.errors import CRSError

from mosaics.errors import NotFound


# Common names that stand in for another when an item lacks it (Landsat's NIR is `nir08`).
COMMON_NAME_FALLBACKS: dict[str, tuple[str, ...]] = {"nir": ("nir08",), "rededge": ("rededge1",)}


@cache
def known_epsg(code: Any) -> bool:
    """Whether `code` is an integer EPSG code of a coordinate reference system PROJ knows."""
    if isinstance(code, bool) or not isinstance(code, int):
        return False
    try:
        CRS.from_epsg(code)
    except CRSError:
        return False
    return True


@dataclass(frozen=True)
class RasterBand:
    """One `raster:bands` entry. Physical value = DN * scale + offset; `nodata` is in DN."""

    nodata: float | None = None
    data_type: str | None = None
    scale: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class Asset:
    """A raster (or metadata) file of an item.

    `href` is absolute: a local path or an `s3://` URL. `names` are the `eo:bands` names (e.g. B04),
    `common_names` their `common_name`s (e.g. red). `stac` is the asset JSON as ingested, its `href`
    relative to the root it was found in (what the STAC API shows).
    """

    key: str
    href: str
    roles: tuple[str, ...] = ()
    media_type: str | None = None
    title: str | None = None
    bands: tuple[RasterBand, ...] = ()
    names: tuple[str, ...] = ()
    common_names: tuple[str, ...] = ()
    epsg: int | None = None
    shape: tuple[int, int] | None = None
    transform: tuple[float, ...] | None = None
    gsd: float | None = None
    stac: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_raster(self) -> bool:
        """True for GeoTIFF/COG assets."""
        return bool(self.bands) or (self.media_type or "").startswith("image/tiff")

    @property
    def is_gridded(self) -> bool:
        """A raster with projection metadata (`proj:epsg` of a known CRS, `proj:transform`, `proj:shape`)."""
        return bool(self.is_raster and known_epsg(self.epsg) and self.transform and self.shape)


@dataclass(frozen=True)
class Item:
    """A scene: one acquisition with its assets. `bbox` and `geometry` are in EPSG:4326.

    `version` changes whenever the stored item changes (re-ingest with different content).
    `stac` is the item JSON as ingested, asset hrefs relative to their root (see `Asset`).
    """

    id: str
    collection: str
    datetime: datetime
    bbox: tuple[float, float, float, float]
    geometry: dict[str, Any]
    assets: dict[str, Asset]
    cloud_cover: float | None = None
    platform: str | None = None
    processing_baseline: str | None = None
    properties: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    version: str = ""
    stac: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def asset(self, name: str) -> Asset:
        """The asset called `name`: an asset key, an `eo:bands` name (B04) or a common name (red)."""
        if name in self.assets:
            return self.assets[name]
        for candidate in (name, *COMMON_NAME_FALLBACKS.get(name, ())):
            for attribute in ("names", "common_names"):
                for asset in self.assets.values():
                    if candidate in getattr(asset, attribute):
                        return asset
        raise NotFound("asset", name, f"item '{self.id}' has {', '.join(self.assets)}")

    def grid_asset(self, keys: Sequence[str] = ()) -> Asset | None:
        """The finest gridded asset among the asset keys `keys`, else among all assets (None if there is none)."""
        for pool in ([self.assets[k] for k in keys], self.assets.values()):
            gridded = [a for a in pool if a.is_gridded]
            if gridded:
                return min(gridded, key=lambda a: abs(a.transform[0]))
        return None


@dataclass(frozen=True)
class Collection:
    """A STAC collection as ingested."""

    id: str
    title: str | None
    description: str
    bbox: tuple[float, float, float, float] | None
    interval: tuple[datetime | None, datetime | None]
    stac: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    access: str = "public"  # or "restricted": visible only to callers with a grant (tiler.access)
