"""Named presets: a recipe plus its rendering, offered per collection (see presets.toml)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from mosaics.errors import CatalogError, InvalidParameter, JeoError, NotFound
from mosaics.models import Item
from mosaics.recipe import Recipe

DEFAULT_PRESETS = Path(__file__).with_name("presets.toml")
_DAYS = re.compile(r"^P(\d+)D$")


def parse_days(period: str) -> timedelta:
    """An ISO 8601 duration in days (`P30D`)."""
    if not (match := _DAYS.match(period)):
        raise InvalidParameter("period", f"'{period}' is not an ISO 8601 duration in days such as P30D")
    return timedelta(days=int(match[1]))


@dataclass(frozen=True)
class Preset:
    """A named recipe with its rendering parameters."""

    id: str
    title: str
    description: str = ""
    assets: tuple[str, ...] = ()
    expression: str | None = None
    index: str | None = None
    asset_bidx: tuple[str, ...] = ()
    rescale: tuple[str, ...] = ()
    colormap_name: str | None = None
    color_formula: str | None = None
    resampling: str | None = None
    minzoom: int | None = None
    maxzoom: int | None = None
    format: str = "png"
    method: str | None = None
    p: float | None = None
    cloud_mask: str | None = None
    period: str | None = None

    @property
    def is_composite(self) -> bool:
        """A composite preset (it has a `method`) is served by the collection tile endpoints."""
        return self.method is not None

    def interval(self, latest: datetime) -> str | None:
        """The preset's default `datetime`: `period` (ISO 8601 days, e.g. P30D) ending at `latest`."""
        if self.period is None:
            return None
        start = latest - parse_days(self.period)
        return f"{start.date().isoformat()}/{latest.date().isoformat()}"

    @property
    def recipe(self) -> Recipe:
        """What the preset computes."""
        return Recipe.from_params(self.assets, self.expression, self.index, self.asset_bidx)

    def query(self) -> list[tuple[str, str]]:
        """The tile-endpoint query parameters equivalent to this preset."""
        params: list[tuple[str, str]] = []
        if self.assets:
            params.append(("assets", ",".join(self.assets)))
        for name in ("expression", "index", "colormap_name", "color_formula", "resampling", "method", "p", "cloud_mask"):
            if (value := getattr(self, name)) is not None:
                params.append((name, str(value)))
        params += [("asset_bidx", b) for b in self.asset_bidx] + [("rescale", r) for r in self.rescale]
        return params

    def applies_to(self, item: Item) -> bool:
        """True when `item` has every band the recipe reads."""
        try:
            self.recipe.for_item(item).resolve(item)
        except (NotFound, InvalidParameter):
            return False
        return True


@dataclass(frozen=True)
class Profile:
    """Presets for collections whose id matches one of `collections` (glob patterns)."""

    name: str
    collections: tuple[str, ...]
    presets: dict[str, Preset]


def _preset(source: Path, preset_id: str, data: dict[str, Any]) -> Preset:
    known = {f.name for f in fields(Preset)} - {"id"}
    if unknown := set(data) - known:
        raise CatalogError(str(source), f"presets.{preset_id}.{sorted(unknown)[0]}", "unknown preset field")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        preset = Preset(id=preset_id, **values)
        preset.recipe  # noqa: B018 - validates the recipe now, not at the first request
        if preset.period is not None:
            parse_days(preset.period)
    except (TypeError, JeoError) as error:
        raise CatalogError(str(source), f"presets.{preset_id}", str(error)) from None
    return preset


def load_profiles(*sources: Path) -> list[Profile]:
    """Profiles from TOML files, later files first so that they take precedence."""
    profiles: list[Profile] = []
    for source in sources:
        try:
            document = tomllib.loads(source.read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise CatalogError(str(source), "profiles", str(error)) from None
        for entry in document.get("profiles", []):
            presets = {pid: _preset(source, pid, body) for pid, body in entry.get("presets", {}).items()}
            profiles.insert(0, Profile(entry.get("name", ""), tuple(entry.get("collections", ())), presets))
    return profiles


class PresetRegistry:
    """Answers which presets a collection offers."""

    def __init__(self, profiles: list[Profile]):
        self.profiles = profiles

    @classmethod
    def from_files(cls, extra: Path | None = None) -> PresetRegistry:
        """The shipped presets, overridden by `extra` when given."""
        return cls(load_profiles(DEFAULT_PRESETS, *([extra] if extra else [])))

    def for_collection(self, collection_id: str, sample: Item | None = None) -> dict[str, Preset]:
        """Presets offered for a collection; with `sample`, only those whose bands its items have."""
        offered: dict[str, Preset] = {}
        for profile in reversed(self.profiles):
            if any(fnmatch(collection_id, pattern) for pattern in profile.collections):
                offered.update(profile.presets)
        if sample is not None:
            offered = {pid: p for pid, p in offered.items() if p.applies_to(sample)}
        return offered

    def get(self, collection_id: str, preset_id: str, sample: Item | None = None) -> Preset:
        """One preset (NotFound names `<collection>.<preset>`)."""
        try:
            return self.for_collection(collection_id, sample)[preset_id]
        except KeyError:
            raise NotFound("preset", f"{collection_id}.{preset_id}") from None
