"""Composite methods (`method=`): one `Method` entry each, read by every part that composites, validates,
bounds memory or documents a method (tiles, points, areas, exports, OpenAPI, the export CLI).

A method turns a stack of scenes' physical bands `float32[T, B, H, W]` and their usable pixels `bool[T, H, W]`
into composited bands `float32[B, H, W]` with one of `algorithms.composite`'s kernels, and, when it selects one
observation per pixel, the index of that observation `int[H, W]` (-1 where none).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from algorithms import composite as kernels
from algorithms import indices
from mosaics.errors import registered

NDVI_BANDS = indices.INDICES["ndvi"].bands

# (stack, valid, band names of the stack, p) → (composited bands or the method's own output, index or None)
Kernel = Callable[[np.ndarray, np.ndarray, Sequence[str], "float | None"], "tuple[np.ndarray, np.ndarray | None]"]


@dataclass(frozen=True)
class Method:
    """A compositing method."""

    name: str
    description: str
    kernel: Kernel
    extra_bands: tuple[str, ...] = ()  # band names read besides the recipe's (by name, e.g. nir and red)
    selects: bool = False  # picks one observation per pixel: it has an index (`provenance`, point explanations)
    needs_p: bool = False  # takes the percentile `p`
    in_order: bool = False  # scenes are read in selection order, in growing batches, until every pixel is usable
    output: str | None = None  # the name of its single output band, which replaces the recipe's outputs

    def scene_bands(self, recipe_bands: int) -> int:
        """Bands held per scene for the memory bound (`mosaics.limits`): the recipe's and the extra ones."""
        return recipe_bands + len(self.extra_bands)


def _max_ndvi(stack: np.ndarray, valid: np.ndarray, names: Sequence[str], p: float | None):
    nir, red = (list(names).index(band) for band in NDVI_BANDS)
    return kernels.max_score(stack, valid, indices.ndvi(stack[:, nir], stack[:, red]), return_index=True)


METHODS: dict[str, Method] = {method.name: method for method in (
    Method("first", "the first usable observation in `sortby` order",
           lambda s, v, n, p: kernels.first_valid(s, v, return_index=True), selects=True, in_order=True),
    Method("median", "per-band median", lambda s, v, n, p: (kernels.median(s, v), None)),
    Method("percentile", "per-band percentile `p`", lambda s, v, n, p: (kernels.percentile(s, v, p), None), needs_p=True),
    Method("mean", "per-band mean", lambda s, v, n, p: (kernels.mean(s, v), None)),
    Method("max_ndvi", "the greenest observation (highest NDVI)", _max_ndvi, extra_bands=NDVI_BANDS, selects=True),
    Method("medoid", "the observation closest to all others",
           lambda s, v, n, p: kernels.medoid(s, v, return_index=True), selects=True),
    Method("geomedian", "geometric median (Weiszfeld)", lambda s, v, n, p: (kernels.geomedian(s, v), None)),
    Method("count", "the number of usable observations",
           lambda s, v, n, p: (kernels.count(v).astype(np.float32)[np.newaxis], None), output="count"),
)}  # fmt: skip


def get_method(name: str) -> Method:
    """The registered method called `name` (InvalidParameter naming `method` otherwise)."""
    return registered(METHODS, "method", name)


def describe() -> str:
    """One line per method, for OpenAPI and CLI help."""
    return "; ".join(f"{m.name} ({m.description})" for m in METHODS.values())
