"""What to compute from a scene's bands: a band combination, a band-math expression or a named index.

One recipe drives single-scene tiles, composites, presets and exports alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from algorithms.expression import Expression, compile_expression
from algorithms.indices import INDICES
from mosaics.errors import InvalidParameter
from mosaics.models import Item


@lru_cache(maxsize=512)
def _compiled(text: str) -> Expression:
    try:
        return compile_expression(text)
    except ValueError as error:
        raise InvalidParameter("expression", str(error)) from None


@dataclass(frozen=True)
class Recipe:
    """Exactly one of `assets` (band combination), `expression` (band math) or `index` (named index).

    Names in `assets` and `expression` are asset keys, `eo:bands` names or common names.
    """

    assets: tuple[str, ...] = ()
    expression: str | None = None
    index: str | None = None
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

    @classmethod
    def from_params(
        cls, assets: Sequence[str] | None = None, expression: str | None = None, index: str | None = None
    ) -> Recipe:
        """Build from request parameters (`assets` may hold comma-separated lists)."""
        names = tuple(n.strip() for value in assets or () for n in value.split(",") if n.strip())
        return cls(assets=names, expression=expression or None, index=index or None)

    @property
    def names(self) -> tuple[str, ...]:
        """Band names the recipe reads, in order, without repeats."""
        if self._expression is not None:
            return tuple(self._expression.names)
        if self.index is not None:
            return INDICES[self.index].bands
        return tuple(dict.fromkeys(self.assets))

    @property
    def descriptions(self) -> list[str]:
        """One description per output band."""
        if self.expression is not None:
            return [part.strip() for part in self.expression.split(";")]
        if self.index is not None:
            return [self.index]
        return list(self.assets)

    @property
    def parameter(self) -> str:
        """The request parameter that gives this recipe: `assets`, `expression` or `index`."""
        return "expression" if self.expression is not None else "index" if self.index is not None else "assets"

    def resolve(self, item: Item) -> dict[str, str]:
        """Map each band name to the key of the item's raster asset that holds it (NotFound if none does)."""
        keys = {}
        for name in self.names:
            asset = item.asset(name)
            if not asset.is_raster:
                raise InvalidParameter(self.parameter, f"'{name}' of item '{item.id}' is not a raster band")
            keys[name] = asset.key
        return keys

    def evaluate(self, bands: Mapping[str, np.ndarray]) -> np.ndarray:
        """Output bands `float32[outputs, H, W]` from physical values `bands[name] -> float32[H, W]` (NaN = nodata)."""
        if self._expression is not None:
            return self._expression(bands)
        if self.index is not None:
            spec = INDICES[self.index]
            return spec.function(*(bands[name] for name in spec.bands))[np.newaxis]
        return np.stack([bands[name] for name in self.assets]).astype(np.float32, copy=False)
