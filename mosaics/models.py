"""Explicit models of what the catalog stores and the readers need."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

from rasterio.crs import CRS
from rasterio.errors import CRSError

from mosaics.errors import InvalidParameter, NotFound


# Common names that stand in for another when an item lacks it (Landsat's NIR is `nir08`).
COMMON_NAME_FALLBACKS: dict[str, tuple[str, ...]] = {"nir": ("nir08",), "rededge": ("rededge1",)}
BAND_SEPARATOR = "#"  # band key of band n > 1 of a multi-band asset: `<asset key>#<n>`
ASSET_BAND = re.compile(r"(.+)_b([1-9][0-9]*)")  # titiler's `{asset}_b{index}` band names (1-based)


def band_key(asset_key: str, band: int) -> str:
    """The key reads name band `band` (1-based) of an asset by: the asset key for band 1, `<key>#<band>` else."""
    return asset_key if band == 1 else f"{asset_key}{BAND_SEPARATOR}{band}"


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
    def count(self) -> int:
        """How many bands the asset has, from its `raster:bands` or `eo:bands` (1 when it lists none)."""
        return max(len(self.bands), len(self.names), 1)

    def raster_band(self, band: int = 1) -> RasterBand | None:
        """The `raster:bands` entry of band `band` (1-based), if the asset lists it."""
        return self.bands[band - 1] if len(self.bands) >= band else None

    def band_of(self, name: str) -> int:
        """The 1-based band of a multi-band asset named `name` in its `eo:bands` (by name, then common name); 1 else."""
        for names in (self.names, self.common_names):
            if len(names) > 1 and name in names:
                return names.index(name) + 1
        return 1

    def check_band(self, band: int, parameter: str) -> None:
        """InvalidParameter naming `parameter` when the asset has no band `band` (1-based)."""
        if not 1 <= band <= self.count:
            raise InvalidParameter(
                parameter, f"asset '{self.key}' has {self.count} band{'s' * (self.count != 1)}; there is no band {band}"
            )

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
    owner: str | None = None  # the caller it belongs to in a collection of access `owner` (tiler.access); None = all

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

    def band(self, name: str, parameter: str = "assets") -> str:
        """The band key (`band_key`) of the band called `name`: an asset key (band 1), `{asset}_b{index}` (titiler's
        name of band `index` of an asset; out of range: InvalidParameter naming `parameter`), an `eo:bands` name or a
        common name (see `asset`)."""
        match = ASSET_BAND.fullmatch(name)
        if name not in self.assets and match and match[1] in self.assets:
            asset, index = self.assets[match[1]], int(match[2])
            asset.check_band(index, parameter)
            return band_key(asset.key, index)
        asset = self.asset(name)
        return band_key(asset.key, asset.band_of(name))

    def source(self, key: str) -> tuple[Asset, int]:
        """The asset and 1-based band of a band key."""
        if key in self.assets:
            return self.assets[key], 1
        asset_key, _, band = key.rpartition(BAND_SEPARATOR)
        return self.assets[asset_key], int(band)

    def grid_asset(self, keys: Sequence[str] = ()) -> Asset | None:
        """The finest gridded asset among those of the band keys `keys`, else among all assets (None if there is none)."""
        for pool in ([self.source(k)[0] for k in keys], self.assets.values()):
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
