"""Finished exports as STAC Items: the one Item of a result (`stac_item`, also `GET /exports/{id}/item`), and its
registration in the catalog collection `exports` (`publish`, `withdraw`), so that a result is a tile layer, a WMTS
layer and a viewer entry like any scene.

The collection has access `owner` (`tiler.access`): it is listed for everyone, and each item is visible only to the
caller that submitted the export (anonymous exports: to everyone). The item's asset is the result file itself (a
local path under the export root or an `s3://` URL), registered as if the Item were a document next to it, so the
ingest's checks apply (inside its root, a readable GeoTIFF); its `eo:bands` name the output bands, and
`renders.default` (STAC render extension) is the preset's rendering or a 2–98 % stretch of the result.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.warp

from mosaics.catalog import Catalog
from mosaics.datasets import gdal_path, open_raster
from mosaics.errors import JeoError
from tiler.exports.plan import ExportRecord
from tiler.presets import PresetRegistry

EXPORTS = "exports"
COLLECTION: dict[str, Any] = {
    "type": "Collection",
    "stac_version": "1.0.0",
    "id": EXPORTS,
    "title": "Exports",
    "description": "Results of finished exports, one item each; every item is visible only to the caller that "
    "submitted the export.",
    "license": "other",
    # a fixed extent: computed from the items, it would tell every caller about the others' exports
    "extent": {"spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]}, "temporal": {"interval": [["1970-01-01T00:00:00Z", None]]}},
    "links": [],
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def band_names(descriptions: list[str]) -> list[str]:
    """`eo:bands` names of the output bands: their descriptions where these are plain names (red, ndvi), else b1, b2…"""
    names = [d if _NAME.match(d) else f"b{i}" for i, d in enumerate(descriptions, 1)]
    return names if len(set(names)) == len(names) else [f"b{i}" for i in range(1, len(names) + 1)]


def stac_item(record: ExportRecord, base: str, href: str, location: str | None) -> dict[str, Any]:
    """The STAC Item of a finished export: `base` is the server's URL, `href` the result's (its URL for clients, its
    path or s3:// URL in the catalog), `location` where it is stored as clients may see it."""
    plan = record.plan
    crs = plan.rasterio_crs
    left, bottom, right, top = plan.grid.bounds
    west, south, east, north = rasterio.warp.transform_bounds(crs, "EPSG:4326", left, bottom, right, top, densify_pts=21)
    url = f"{base}/exports/{record.id}"
    interval = plan.selection["datetime"] or plan.items_interval
    start, end = interval[0] or plan.items_interval[0], interval[1] or plan.items_interval[1]
    names = band_names(plan.descriptions)
    properties: dict[str, Any] = {
        "datetime": None if start else record.finished,
        "start_datetime": start,
        "end_datetime": end,
        "created": record.finished,
        "proj:shape": [plan.height, plan.width],
        "proj:transform": plan.transform,
        "proj:bbox": [left, bottom, right, top],
        "jeo:export": record.id,
        "jeo:collection": plan.collection,
        "jeo:recipe": {k: v for k, v in plan.recipe.items() if v},
        "jeo:compositing": plan.compositing,
        "jeo:selection": plan.selection,
        "jeo:preset": plan.preset,
        "jeo:skipped": record.skipped,  # scenes that could not be read: item id → reason
    }
    if crs.to_epsg() is not None:
        properties["proj:epsg"] = crs.to_epsg()
    else:
        properties["proj:wkt2"] = crs.to_wkt()
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
        ],
        "id": record.id,
        "collection": EXPORTS,
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[west, south], [east, south], [east, north], [west, north], [west, south]]],
        },
        "bbox": [west, south, east, north],
        "properties": properties,
        "assets": {
            "data": {
                "href": href,
                "type": plan.media_type,
                "title": f"{plan.collection} {plan.compositing['method']} composite",
                "roles": ["data"],
                "jeo:location": location,
                "raster:bands": [{"name": d, "data_type": "float32", "nodata": "nan"} for d in plan.descriptions],
                "eo:bands": [{"name": n, "description": d} for n, d in zip(names, plan.descriptions)],
            }
        },
        "links": [
            {"rel": "self", "href": f"{url}/item", "type": "application/geo+json"},
            {"rel": "derived_from", "href": f"{base}/collections/{plan.collection}", "type": "application/json"},
            {"rel": "jeo:export", "href": url, "type": "application/json", "title": "export record"},
        ],
    }


def default_render(record: ExportRecord, presets: PresetRegistry, href: str) -> dict[str, Any]:
    """`renders.default`: every output band (`expression`), with the preset's rescale, colour formula and colormap,
    or else a 2–98 % stretch of the result's values (from its smallest overview)."""
    plan = record.plan
    render: dict[str, Any] = {"title": f"export {record.id}", "expression": ";".join(band_names(plan.descriptions))}
    preset = presets.for_collection(plan.collection).get(plan.preset or "")
    if preset is not None and preset.rescale:
        render["rescale"] = [[float(v) for v in r.split(",")] for r in preset.rescale]
        render.update({k: v for k in ("color_formula", "colormap_name") if (v := getattr(preset, k))})
        return render
    with open_raster(gdal_path(href)) as src:
        factor = max(src.overviews(1) or [1])
        shape = (src.count, max(1, src.height // factor), max(1, src.width // factor))
        values = src.read(out_shape=shape)
    values = values[np.isfinite(values)]
    if values.size:
        low, high = (float(v) for v in np.percentile(values, [2, 98]))
        render["rescale"] = [[low, high if high > low else low + 1]]
    return render


def publish(catalog: Catalog, record: ExportRecord, presets: PresetRegistry, allowed_roots: tuple[str, ...] = ()) -> bool:
    """Register a finished export's result as item `record.id` of the collection `exports`, owned by its submitter;
    False (printed to the merge log) when it cannot be registered (e.g. the catalog cannot read its S3 destination)."""
    href = record.result
    if href is None:
        return False
    location = posixpath.join(posixpath.dirname(href), f"{record.id}.json") if href.startswith("s3://") else str(
        Path(href).parent / f"{record.id}.json"
    )
    try:
        item = stac_item(record, "", href, None)
        item["properties"]["renders"] = {"default": default_render(record, presets, href)}
        item["assets"]["data"].pop("jeo:location")
        catalog.register(COLLECTION, item, location, allowed_roots, owner=record.created_by, access="owner")
        stored = catalog.item(EXPORTS, record.id).assets["data"].href
        for other in catalog.search(EXPORTS):  # an earlier export whose result this one overwrote (`overwrite`)
            if other.id != record.id and other.assets["data"].href == stored:
                catalog.remove(EXPORTS, other.id)
    except Exception as error:  # noqa: BLE001 - the export has finished; only its layer is missing
        print(f"export {record.id}: its result is not registered as a layer: {error}", flush=True)
        return False
    return True


def withdraw(catalog: Catalog, export_id: str) -> bool:
    """Remove an export's item from the collection `exports` (True if it was there)."""
    try:
        return catalog.remove(EXPORTS, export_id)
    except JeoError:
        return False


def publisher(settings, catalog: Catalog) -> Callable[[ExportRecord], bool]:
    """`publish` into `catalog` with the presets and allowed roots of `settings` (for `run_merge`)."""
    presets = PresetRegistry.from_files(settings.presets)
    return lambda record: publish(catalog, record, presets, settings.allowed_roots)
