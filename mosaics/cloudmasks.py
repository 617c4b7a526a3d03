"""Per-pixel cloud masks (`cloud_mask=`): one `MaskKind` entry each, read by parsing, reading, defaults and docs.

A mask kind names the assets that may hold it (asset keys or band names) and turns that asset's raw values
`[H, W]` into usable pixels `bool[H, W]` with one of `algorithms.masks`' functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from algorithms import masks
from mosaics.errors import InvalidParameter
from mosaics.models import Item, band_key


@dataclass(frozen=True)
class MaskKind:
    """A kind of cloud mask."""

    name: str
    description: str
    assets: tuple[str, ...]  # asset keys or band names holding it, in order of preference
    valid: Callable[[np.ndarray, float | None], np.ndarray]  # (raw values, threshold) → usable pixels
    threshold: float | None = None  # default threshold of a kind that takes one (`name:<threshold>`), in 0–100


NONE = "none"
# In order of preference: a collection's default mask is the first kind its newest scene has.
MASKS: dict[str, MaskKind] = {kind.name: kind for kind in (
    MaskKind("scl", "Sentinel-2 scene classes 0, 1, 3, 8, 9, 10", ("scl", "SCL"), lambda raw, t: masks.scl_valid(raw)),
    MaskKind("cloud_probability", "cloud probability above `<percent>`", ("cloud_probability", "CLDPRB", "CLP"),
             masks.cloud_probability_valid, threshold=40.0),
    MaskKind("qa", "Landsat QA cloud bits", ("qa", "qa_pixel", "BQA"), lambda raw, t: masks.bqa_valid(raw)),
)}  # fmt: skip


def describe() -> str:
    """The `cloud_mask` values, for OpenAPI and CLI help."""
    kinds = [f"`{k.name}{':<percent>' if k.threshold is not None else ''}` ({k.description})" for k in MASKS.values()]
    return ", ".join(kinds) + f" or `{NONE}`"


@dataclass(frozen=True)
class CloudMask:
    """Which per-pixel cloud mask marks observations unusable: a `MASKS` kind (with its threshold) or `none`."""

    kind: str = NONE
    threshold: float | None = None

    @classmethod
    def parse(cls, text: str) -> CloudMask:
        """Parse the `cloud_mask` parameter."""
        name, _, value = text.partition(":")
        if name == NONE and not value:
            return cls()
        if (kind := MASKS.get(name)) is None:
            choices = [f"{k.name}:<0-100>" if k.threshold is not None else k.name for k in MASKS.values()]
            raise InvalidParameter("cloud_mask", f"'{text}' is not one of {', '.join([*choices, NONE])}")
        if kind.threshold is None:
            if value:
                raise InvalidParameter("cloud_mask", f"'{name}' takes no threshold")
            return cls(name)
        try:
            threshold = float(value or kind.threshold)
        except ValueError:
            raise InvalidParameter("cloud_mask", f"threshold '{value}' is not a number") from None
        if not 0 <= threshold <= 100:
            raise InvalidParameter("cloud_mask", f"threshold {threshold} is outside 0–100")
        return cls(name, threshold)

    def asset_key(self, item: Item) -> str | None:
        """The band key (`Item.band`) of the item's band holding this mask: an asset, or a band of a multi-band asset
        named in its `eo:bands` (None for `none`)."""
        if self.kind == NONE:
            return None
        for name in MASKS[self.kind].assets:
            if name in item.assets:
                return name
            for asset in item.assets.values():
                if name in asset.names:
                    return band_key(asset.key, asset.band_of(name))
        raise InvalidParameter("cloud_mask", f"item '{item.id}' has no {self.kind} asset")

    def valid(self, raw: np.ndarray) -> np.ndarray:
        """`bool[H, W]` usable pixels from the mask asset's raw values `raw[H, W]`."""
        return MASKS[self.kind].valid(raw, self.threshold)


def default_cloud_mask(item: Item | None) -> CloudMask:
    """The first `MASKS` kind (with its default threshold) that `item` has, else none."""
    if item is not None:
        for kind in MASKS.values():
            mask = CloudMask(kind.name, kind.threshold)
            try:
                mask.asset_key(item)
                return mask
            except InvalidParameter:
                continue
    return CloudMask()
