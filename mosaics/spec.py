"""A composite request resolved once: what to compute (recipe), how (method, cloud mask, correction) and from
which scenes (selection), validated in one place whether it came from query parameters, a preset or a WMTS
layer (both rewritten to query parameters) or an export body; then bound to the scenes selected for an area
(`bind`), which every read of the request uses without searching again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mosaics.cloudmasks import CloudMask, default_cloud_mask
from mosaics.composite import Compositing, Selection
from mosaics.corrections import check as check_correction
from mosaics.errors import InvalidParameter, NotFound
from mosaics.models import Item
from mosaics.recipe import Recipe


@dataclass(frozen=True)
class CompositeSpec:
    """A validated composite request; `cloud_mask` None is the default of the scenes it is bound to."""

    recipe: Recipe
    selection: Selection
    method: str = "median"
    p: float | None = None
    cloud_mask: CloudMask | None = None
    mask_dilation: int = 0
    provenance: bool = False
    correction: str = "none"

    def __post_init__(self):
        self.compositing(CloudMask())  # method, p, provenance and correction

    @classmethod
    def from_params(
        cls, selection: Selection, assets: Sequence[str] | None = None, expression: str | None = None,
        index: str | None = None, asset_bidx: Sequence[str] | None = None, method: str = "median",
        p: float | None = None, cloud_mask: str | None = None, mask_dilation: int = 0, provenance: bool = False,
        correction: str = "none",
    ) -> CompositeSpec:
        """From request parameters (those of `tiler.dependencies.CompositeParams`)."""
        return cls(
            Recipe.from_params(assets, expression, index, asset_bidx), selection, method, p,
            CloudMask.parse(cloud_mask) if cloud_mask else None, mask_dilation, provenance, correction,
        )  # fmt: skip

    def compositing(self, default_mask: CloudMask) -> Compositing:
        """How the scenes are composited, with `default_mask` when the request names no cloud mask."""
        return Compositing(
            self.method, self.p, self.cloud_mask or default_mask, self.mask_dilation, self.provenance, self.correction
        )

    def bind(self, items: list[Item]) -> BoundComposite:
        """This request on the scenes selected for its area (in selection order), checked against the newest:
        its bands (NotFound naming an unknown one), the method's extra bands, the cloud mask and the correction."""
        newest = max(items, key=lambda item: item.datetime) if items else None
        if newest is None:
            return BoundComposite(self, items, None, self.recipe, self.compositing(CloudMask()))
        recipe = self.recipe.for_item(newest)
        compositing = self.compositing(default_cloud_mask(newest))
        keys = recipe.resolve(newest)
        for band in compositing.kind.extra_bands:
            try:
                newest.band(band)
            except NotFound as error:
                raise InvalidParameter("method", f"{self.method} needs {band}: {error}") from None
        compositing.cloud_mask.asset_key(newest)
        check_correction(compositing.correction, newest, list(dict.fromkeys(keys.values())))
        return BoundComposite(self, items, newest, recipe, compositing)


@dataclass(frozen=True)
class BoundComposite:
    """A `CompositeSpec` with the scenes selected for one area and what they resolve it to."""

    spec: CompositeSpec
    items: list[Item]  # the selected scenes, in selection order
    newest: Item | None
    recipe: Recipe  # multi-band assets' bands picked as in the newest scene
    compositing: Compositing  # with the newest scene's default cloud mask when none was given

    @property
    def descriptions(self) -> list[str]:
        """One per output band: the method's own output, else the recipe's."""
        return [self.compositing.kind.output] if self.compositing.kind.output else list(self.recipe.descriptions)
