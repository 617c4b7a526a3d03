"""Statistics and time series of a recipe over an area: from one image (a composite or a scene) or per scene.

Per scene, the recipe is evaluated on each scene's physical bands, and a pixel counts when it is inside the
area and usable in that scene (data, not masked by the cloud mask). Results are JSON-ready dictionaries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from algorithms.statistics import BandStatistics, band_statistics, zonal_summary
from mosaics.composite import Observation, Observations
from mosaics.recipe import Recipe


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _json(stats: BandStatistics) -> dict:
    """titiler's band statistics keys."""
    return {
        "min": _number(stats.min), "max": _number(stats.max), "mean": _number(stats.mean), "count": stats.count,
        "sum": stats.sum, "std": _number(stats.std), "median": _number(stats.median),
        **{f"percentile_{p:g}": _number(v) for p, v in stats.percentiles.items()},
        "histogram": [stats.histogram[0], stats.histogram[1]],
        "valid_percent": round(stats.valid_percent, 4), "masked_pixels": stats.pixels - stats.count,
        "valid_pixels": stats.count,
    }  # fmt: skip


def image_statistics(
    values: np.ndarray, descriptions: Sequence[str], inside: np.ndarray, percentiles: Sequence[float] = (2, 98),
    bins: int | Sequence[float] = 10, histogram_range: tuple[float, float] | None = None,
) -> dict[str, dict]:
    """Per output band of `values[B, H, W]` (NaN = no value) over the area's pixels `inside[H, W]`."""
    stats = band_statistics(values, inside, percentiles, bins, histogram_range)
    return {name: _json(s) for name, s in zip(descriptions, stats)}


def scene_values(recipe: Recipe, observed: Observations) -> list[tuple[Observation, np.ndarray]]:
    """Each scene read, oldest first, with the recipe's outputs `float32[B, H, W]` on its bands (NaN = no data)."""
    scenes = sorted(observed.scenes, key=lambda s: (s.item.datetime, s.item.id))
    return [(s, recipe.evaluate({n: s.bands[i] for i, n in enumerate(observed.names)})) for s in scenes]


def _date(scene: Observation) -> dict:
    return {"datetime": scene.item.datetime.isoformat(), "item": scene.item.id, "eo:cloud_cover": scene.item.cloud_cover}


def statistics_per_date(
    recipe: Recipe, observed: Observations, inside: np.ndarray, percentiles: Sequence[float] = (2, 98),
    bins: int | Sequence[float] = 10, histogram_range: tuple[float, float] | None = None,
) -> list[dict]:
    """For each scene, oldest first: the statistics of its usable pixels inside the area (`valid_percent` is the share
    of the area's pixels that are usable)."""
    return [
        {**_date(scene), "statistics": image_statistics(
            np.where(scene.valid, values, np.nan), recipe.descriptions, inside, percentiles, bins, histogram_range)}
        for scene, values in scene_values(recipe, observed)
    ]  # fmt: skip


def timeseries(recipe: Recipe, observed: Observations, inside: np.ndarray) -> list[dict]:
    """One row per scene, oldest first: the mean of each output band over the area's usable pixels, and how many
    of the area's pixels were usable, cloud-masked or without data."""
    pairs = scene_values(recipe, observed)
    if not pairs:
        return []
    summary = zonal_summary(
        np.stack([values for _, values in pairs]),
        np.stack([scene.valid for scene, _ in pairs]),
        np.stack([np.isfinite(scene.bands).all(axis=0) for scene, _ in pairs]),
        inside,
    )  # fmt: skip
    pixels = summary.pixels or 1
    return [
        {
            **_date(scene),
            **{name: _number(summary.mean[t, b]) for b, name in enumerate(recipe.descriptions)},
            "valid_pixels": int(summary.usable[t]),
            "cloud_masked_pixels": int(summary.masked[t]),
            "nodata_pixels": int(summary.missing[t]),
            "valid_fraction": round(int(summary.usable[t]) / pixels, 6),
            "cloud_masked_fraction": round(int(summary.masked[t]) / pixels, 6),
        }
        for t, (scene, _) in enumerate(pairs)
    ]
