"""Explicit models of what the catalog stores and the readers need."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


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
    `common_names` their `common_name`s (e.g. red).
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


@dataclass(frozen=True)
class Item:
    """A scene: one acquisition with its assets. `bbox` and `geometry` are in EPSG:4326.

    `version` changes whenever the stored item changes (re-ingest with different content).
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


@dataclass(frozen=True)
class Collection:
    """A STAC collection as ingested."""

    id: str
    title: str | None
    description: str
    bbox: tuple[float, float, float, float] | None
    interval: tuple[datetime | None, datetime | None]
    stac: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
