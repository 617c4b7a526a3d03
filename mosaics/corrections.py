"""Radiometric corrections per scene (`correction=`): one `Correction` entry each in `CORRECTIONS`, read by
validation, reading and docs; which `algorithms.corrections` kernel applies and with which metadata.

`none` uses the catalog's scale/offset; `s2_harmonize` makes Sentinel-2 products of every processing
baseline comparable (BOA/RADIO_ADD_OFFSET, never applied twice); `toa` turns Landsat Level-1 DN into
TOA reflectance with the scene's MTL; `dos` is dark-object subtraction (DOS1) on TOA reflectance, with
dark values computed once per scene from an overview and stored in `$JEO_HOME/dark-values`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from diskcache import Cache

from algorithms import corrections as kernels
from mosaics.datasets import PooledReader, gdal_path
from mosaics.errors import InvalidParameter, registered
from mosaics.fileversions import FILE_VERSIONS
from mosaics.models import Asset, Item
from mosaics.reader import to_physical
from mosaics.stac import read_text

logger = logging.getLogger(__name__)
DISPLAY_ROLES = ("visual", "overview", "thumbnail")  # STAC roles of display-ready (e.g. 8-bit true colour) assets
_LANDSAT_BAND = re.compile(r"^B(\d{1,2})$")


@lru_cache(maxsize=256)
def _mtl(href: str, version: str) -> dict[str, float | str]:
    """The parsed MTL of a file version (cached per process)."""
    return kernels.parse_mtl(read_text(href))


def _landsat_band(asset: Asset) -> int:
    for name in asset.names:
        if match := _LANDSAT_BAND.match(name):
            return int(match[1])
    raise InvalidParameter("correction", f"asset '{asset.key}' is not a numbered Landsat band")


def _reflectance_bands(item: Item, keys: list[str]) -> tuple[dict[str, float | str], list[int]]:
    """The item's MTL and the Landsat band numbers of `keys`; InvalidParameter when one is not reflective."""
    if "mtl" not in item.assets:
        raise InvalidParameter("correction", f"toa needs an MTL asset; item '{item.id}' has none")
    mtl = _mtl(item.assets["mtl"].href, FILE_VERSIONS.version(item.assets["mtl"].href))
    bands = [_landsat_band(item.source(k)[0]) for k in keys]
    for key, band in zip(keys, bands):
        if f"REFLECTANCE_MULT_BAND_{band}" not in mtl:
            raise InvalidParameter(
                "correction", f"toa/dos apply to reflective bands; '{key}' (B{band}) of '{item.id}' is not one"
            )
    return mtl, bands


def _toa(item: Item, keys: list[str], dn: np.ndarray) -> np.ndarray:
    mtl, bands = _reflectance_bands(item, keys)
    mult = [float(mtl[f"REFLECTANCE_MULT_BAND_{b}"]) for b in bands]
    add = [float(mtl[f"REFLECTANCE_ADD_BAND_{b}"]) for b in bands]
    return kernels.landsat_toa_reflectance(dn, mult, add, float(mtl["SUN_ELEVATION"]), nodata=None)


def _check_s2_harmonize(item: Item, keys: Sequence[str]) -> None:
    if not item.processing_baseline:
        raise InvalidParameter("correction", f"s2_harmonize needs s2:processing_baseline; '{item.id}' has none")


def _check_level1(name: str) -> Callable[[Item, Sequence[str]], None]:
    def check_level1(item: Item, keys: Sequence[str]) -> None:
        if "mtl" not in item.assets and (item.properties.get("processing:level") or "").upper() != "L1C":
            raise InvalidParameter("correction", f"{name} needs a Level-1 (TOA) product; '{item.id}' is not one")
        if "mtl" in item.assets:
            _reflectance_bands(item, list(keys))

    return check_level1


@dataclass(frozen=True)
class Correction:
    """A per-scene radiometric correction."""

    name: str
    description: str
    check: Callable[[Item, Sequence[str]], None]  # InvalidParameter when it cannot apply to the item's assets
    apply: Callable[[Corrector, Item, list[str], np.ma.MaskedArray], np.ndarray]  # raw DN → float32 physical
    display: bool = False  # applies to display data (`DISPLAY_ROLES`) too


CORRECTIONS: dict[str, Correction] = {c.name: c for c in (
    Correction("none", "catalog scale/offset", lambda item, keys: None,
               lambda corrector, item, keys, raw: to_physical(raw, item, keys), display=True),
    Correction("s2_harmonize", "Sentinel-2 baseline ≥ 04.00 offset", _check_s2_harmonize,
               lambda corrector, item, keys, raw: corrector.harmonized(item, raw)),
    Correction("toa", "Landsat L1 DN → TOA reflectance, MTL", _check_level1("toa"),
               lambda corrector, item, keys, raw: corrector.toa(item, keys, raw)),
    Correction("dos", "DOS1 dark-object subtraction on TOA, dark values once per scene", _check_level1("dos"),
               lambda corrector, item, keys, raw: corrector.dos(item, keys, raw)),
)}  # fmt: skip


def get_correction(name: str) -> Correction:
    """The registered correction called `name` (InvalidParameter naming `correction` otherwise)."""
    return registered(CORRECTIONS, "correction", name)


def check(correction: str, item: Item, keys: Sequence[str] = ()) -> None:
    """InvalidParameter naming `correction` when it cannot apply to `item` or its band keys `keys` (checked
    before reading): display data (`DISPLAY_ROLES`) is corrected only by corrections for it."""
    chosen = get_correction(correction)
    if not chosen.display:
        for key in keys:
            asset = item.source(key)[0]
            if display := set(DISPLAY_ROLES) & set(asset.roles):
                raise InvalidParameter(
                    "correction", f"{correction} applies to measured values; asset '{asset.key}' of item '{item.id}' is "
                    f"display data (role {', '.join(sorted(display))})",
                )
    chosen.check(item, keys)


def describe() -> str:
    """One line per correction, for OpenAPI and CLI help."""
    return ", ".join(f"{c.name} ({c.description})" for c in CORRECTIONS.values())


class Corrector:
    """Applies one correction to raw DN windows; keeps DOS dark values in a shared on-disk store.

    Without a usable store (none given, or its directory cannot be opened or written: read-only or full
    disk) dark values are computed per request instead, with a warning; corrections never fail for it."""

    def __init__(self, store: Path | None = None):
        self._dark: Cache | None = None
        if store is not None:
            try:
                self._dark = Cache(str(store), size_limit=64 * 2**20)
            except Exception as error:  # noqa: BLE001 - a read-only or full home must not stop the server
                logger.warning("dark-value store %s cannot be opened (%s: %s); dark values are not stored",
                               store, type(error).__name__, error)

    def physical(self, correction: str, item: Item, keys: list[str], raw: np.ma.MaskedArray) -> np.ndarray:
        """`float32[len(keys), H, W]` corrected values of raw DN `raw[len(keys), H, W]`; masked → NaN."""
        check(correction, item, keys)
        return get_correction(correction).apply(self, item, keys, raw)

    @staticmethod
    def harmonized(item: Item, raw: np.ma.MaskedArray) -> np.ndarray:
        """Sentinel-2 reflectance comparable across processing baselines."""
        applied = bool(item.properties.get("earthsearch:boa_offset_applied", False))
        out = kernels.s2_reflectance(raw.data, item.processing_baseline, offset_applied=applied, nodata=None)
        out[np.ma.getmaskarray(raw)] = np.nan
        return out

    def toa(self, item: Item, keys: list[str], raw: np.ma.MaskedArray) -> np.ndarray:
        """TOA reflectance."""
        out = self._toa_like(item, keys, raw.data)
        out[np.ma.getmaskarray(raw)] = np.nan
        return out

    def dos(self, item: Item, keys: list[str], raw: np.ma.MaskedArray) -> np.ndarray:
        """DOS1: TOA reflectance less each band's dark value."""
        out = kernels.dos1(self._toa_like(item, keys, raw.data), [self.dark_value(item, k) for k in keys])
        out[np.ma.getmaskarray(raw)] = np.nan
        return out

    @staticmethod
    def _toa_like(item: Item, keys: list[str], dn: np.ndarray) -> np.ndarray:
        """TOA reflectance: Landsat via the MTL, otherwise (L1C) the catalog's scale/offset."""
        if "mtl" in item.assets:
            return _toa(item, keys, dn)
        return to_physical(np.ma.MaskedArray(dn), item, keys)

    def dark_value(self, item: Item, key: str) -> float:
        """The scene's DOS1 dark value for one band, from a ≤ 512 px overview, computed once and stored."""
        asset, band = item.source(key)
        files = FILE_VERSIONS.versions([asset.href, *([item.assets["mtl"].href] if "mtl" in item.assets else [])])
        cache_key = (item.collection, item.id, item.version, key, *files.values())
        if self._dark is not None and (value := self._dark.get(cache_key)) is not None:
            return value
        with PooledReader(gdal_path(asset.href)) as src:
            overview = src.preview(indexes=(band,), max_size=512)
        toa = self._toa_like(item, [key], overview.array.data)
        value = float(kernels.dark_object_values(toa, ~overview.array.mask[0])[0])
        if self._dark is not None:
            try:
                self._dark.set(cache_key, value)
            except Exception as error:  # noqa: BLE001 - an unwritable store only costs a recomputation
                logger.warning("dark value of %s/%s not stored (%s: %s)", item.id, key, type(error).__name__, error)
        return value
