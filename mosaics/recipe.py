"""What to compute from a scene's bands: a band combination, a band-math expression or a named index.

One recipe drives single-scene tiles, composites, presets and exports alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from algorithms.expression import Expression, compile_expression
from algorithms.indices import INDICES
from mosaics.errors import InvalidParameter
from mosaics.models import Item

AssetBands = tuple[tuple[str, tuple[int, ...]], ...]  # titiler's `asset_bidx`: (asset key, 1-based bands) pairs


def parse_asset_bidx(values: Sequence[str] | None) -> AssetBands:
    """titiler's `asset_bidx` values `{asset}|{index},{index},…` (e.g. `visual|1,2,3`) as (asset, bands) pairs; the
    values of one asset given several times are joined in order."""
    pairs: dict[str, tuple[int, ...]] = {}
    for value in values or ():
        name, bar, indexes = value.partition("|")
        try:
            bands = tuple(int(i) for i in indexes.split(","))
        except ValueError:
            bands = ()
        if not (bar and name.strip() and bands and min(bands) >= 1):
            raise InvalidParameter("asset_bidx", f"'{value}' is not `asset|index,index,…` with indexes from 1")
        pairs[name.strip()] = pairs.get(name.strip(), ()) + bands
    return tuple(pairs.items())


@lru_cache(maxsize=512)
def _compiled(text: str) -> Expression:
    try:
        return compile_expression(text)
    except ValueError as error:
        raise InvalidParameter("expression", str(error)) from None


@dataclass(frozen=True)
class Recipe:
    """Exactly one of `assets` (band combination), `expression` (band math) or `index` (named index).

    Names in `assets` and `expression` are asset keys, `eo:bands` names, common names or titiler's
    `{asset}_b{index}` (band `index` of a multi-band asset). `asset_bidx` picks bands of multi-band assets named in
    `assets` (titiler's `visual|1,2,3`: output bands `visual_b1`, `visual_b2`, `visual_b3`); `for_item` picks
    every band of those it does not name.
    """

    assets: tuple[str, ...] = ()
    expression: str | None = None
    index: str | None = None
    asset_bidx: AssetBands = ()
    _expression: Expression | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        given = [name for name in ("assets", "expression", "index") if getattr(self, name)]
        if not given:
            raise InvalidParameter("assets", "one of assets, expression or index is required")
        if len(given) > 1:
            raise InvalidParameter(given[1], f"cannot be combined with {given[0]}")
        if self.index is not None and self.index not in INDICES:
            raise InvalidParameter("index", f"unknown index '{self.index}'; known: {', '.join(INDICES)}")
        if self.expression is not None:
            object.__setattr__(self, "_expression", _compiled(self.expression))
            if not self._expression.names:
                raise InvalidParameter("expression", f"'{self.expression}' names no band (e.g. `B04 * 2`)")
        named = [name for name, _ in self.asset_bidx]
        if named and not self.assets:
            raise InvalidParameter("asset_bidx", f"picks bands of `assets`, not of {given[0]}")
        for name in named:
            if name not in self.assets:
                raise InvalidParameter("asset_bidx", f"'{name}' is not in assets: {', '.join(self.assets)}")

    @classmethod
    def from_params(
        cls, assets: Sequence[str] | None = None, expression: str | None = None, index: str | None = None,
        asset_bidx: Sequence[str] | None = None,
    ) -> Recipe:
        """Build from request parameters (`assets` may hold comma-separated lists)."""
        names = tuple(n.strip() for value in assets or () for n in value.split(",") if n.strip())
        return cls(assets=names, expression=expression or None, index=index or None,
                   asset_bidx=parse_asset_bidx(asset_bidx))  # fmt: skip

    def for_item(self, item: Item) -> Recipe:
        """This recipe with every band of each multi-band asset of `item` named in `assets` without `asset_bidx`
        (its band count from the asset's `raster:bands`/`eo:bands`); InvalidParameter naming `asset_bidx` for a band
        the asset does not have, NotFound for an unknown asset."""
        picked = dict(self.asset_bidx)
        for name in self.assets:
            asset = item.asset(name)
            if name in picked:
                if asset.key != name:
                    raise InvalidParameter("asset_bidx", f"'{name}' is a band of asset '{asset.key}', not an asset")
                for band in picked[name]:
                    asset.check_band(band, "asset_bidx")
            elif asset.count > 1 and asset.key == name:
                picked[name] = tuple(range(1, asset.count + 1))
        expanded = tuple((name, picked[name]) for name in self.assets if name in picked)
        return self if expanded == self.asset_bidx else replace(self, asset_bidx=expanded)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The band names of a band combination, one per output band (`{asset}_b{index}` for `asset_bidx`)."""
        picked = dict(self.asset_bidx)
        return tuple(
            band for name in self.assets for band in ([f"{name}_b{i}" for i in picked[name]] if name in picked else [name])
        )

    @property
    def names(self) -> tuple[str, ...]:
        """Band names the recipe reads, in order, without repeats."""
        if self._expression is not None:
            return tuple(self._expression.names)
        if self.index is not None:
            return INDICES[self.index].bands
        return tuple(dict.fromkeys(self.outputs))

    @property
    def descriptions(self) -> list[str]:
        """One description per output band."""
        if self.expression is not None:
            return [part.strip() for part in self.expression.split(";")]
        if self.index is not None:
            return [self.index]
        return list(self.outputs)

    @property
    def parameter(self) -> str:
        """The request parameter that gives this recipe: `assets`, `expression` or `index`."""
        return "expression" if self.expression is not None else "index" if self.index is not None else "assets"

    def resolve(self, item: Item) -> dict[str, str]:
        """Map each band name to the band key (`Item.band`) of the item's raster band it is (NotFound if none is;
        InvalidParameter for a multi-band asset named as a whole: `for_item` first picks its bands)."""
        keys = {}
        for name in self.names:
            key = item.band(name, self.parameter)
            asset, _ = item.source(key)
            if not asset.is_raster:
                raise InvalidParameter(self.parameter, f"'{name}' of item '{item.id}' is not a raster band")
            if asset.key == name and asset.count > 1:
                raise InvalidParameter(
                    self.parameter, f"asset '{name}' of item '{item.id}' has {asset.count} bands: name one ({name}_b1, …)"
                )
            keys[name] = key
        return keys

    def evaluate(self, bands: Mapping[str, np.ndarray]) -> np.ndarray:
        """Output bands `float32[outputs, H, W]` from physical values `bands[name] -> float32[H, W]` (NaN = nodata)."""
        if self._expression is not None:
            return self._expression(bands)
        if self.index is not None:
            spec = INDICES[self.index]
            return spec.function(*(bands[name] for name in spec.bands))[np.newaxis]
        return np.stack([bands[name] for name in self.outputs]).astype(np.float32, copy=False)
