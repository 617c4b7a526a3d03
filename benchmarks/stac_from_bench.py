#!/usr/bin/env python3
"""Turn the synthetic benchmark set of ``../shared/bench/make_data.py`` into a static STAC catalog.

make_data.py writes, per scene, one 4-band uint16 COG (``scene_XX.tif``: B02, B03, B04, B08, nodata 0)
and one uint8 cloud-mask COG (``scene_XX_cloud.tif``: 0 clear, 1 cloud, 255 outside the footprint),
plus ``scenes.json`` (dates, cloud and nodata fractions). Each band is extracted once into its own COG with
rio-cogeo (same DEFLATE/predictor/block size/overview levels as the source) and cached next to the data in
``<data>/bands/`` (skipped when already there and newer than the source): band-per-file, like Earth Search.
With ``--multiband KEY`` the items also have the original 4-band COG as one multi-band asset ``KEY`` (e.g.
``visual``: ``eo:bands`` B02, B03, B04, B08, ``raster:bands`` scale 0.0001 / nodata 0), read with
``assets=KEY&asset_bidx=KEY|3,2,1`` like titiler's ``/cog`` reads that file with ``bidx=3&bidx=2&bidx=1``.

Output (default ``<data>/jeo-stac``; benchmarks/exports.py writes its own collection to ``<data>/stac``)::

    catalog.json -> <collection>/collection.json -> <collection>/<scene>/<scene>.json

Items: ``datetime``, ``eo:cloud_cover`` (percent, from the manifest), geometry/bbox in EPSG:4326
(footprint = raster extent, densified), ``proj:epsg``/``proj:shape``/``proj:transform``, assets
``blue, green, red, nir`` (``eo:bands`` name + common name, ``raster:bands`` scale 0.0001 / nodata 0) and
``cloud_probability`` (the 0/1 mask, ``raster:bands`` nodata 255). With jeo-tiler's
``cloud_probability_valid`` (usable where value < threshold and value != 255),
``cloud_mask=cloud_probability:0.5`` keeps 0 (clear) and masks 1 (cloud) and 255 (outside).
Asset hrefs are absolute paths, so titiler's ``/stac`` endpoints can read the very same files.

Usage::

    python benchmarks/stac_from_bench.py --data /tmp/jeo-benchdata [--out DIR] [--collection bench-s2] [--jobs 2]
        [--multiband visual]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

BANDS = [  # (index in the 4-band COG, eo:bands name, common name, asset key, centre wavelength µm)
    (1, "B02", "blue", "blue", 0.49),
    (2, "B03", "green", "green", 0.56),
    (3, "B04", "red", "red", 0.665),
    (4, "B08", "nir", "nir", 0.842),
]
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


def band_path(data: str, scene: str, name: str) -> str:
    return os.path.join(data, "bands", f"{scene}_{name}.tif")


def extract_band(src_path: str, dst_path: str, bidx: int, blocksize: int, predictor: int | None) -> float:
    """Write band `bidx` of `src_path` as a single-band COG (same layout as the source). Returns seconds."""
    import rasterio
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    t0 = time.time()
    profile = cog_profiles.get("deflate")
    profile.update(blockxsize=blocksize, blockysize=blocksize)
    if predictor:
        profile.update(predictor=predictor)
    tmp = dst_path + ".part"
    with rasterio.open(src_path) as src:
        levels = len(src.overviews(1))
        cog_translate(
            src, tmp, profile, indexes=(bidx,), nodata=0, overview_level=levels, overview_resampling="average",
            in_memory=True, quiet=True,
            config={"GDAL_NUM_THREADS": "1", "GDAL_TIFF_OVR_BLOCKSIZE": str(blocksize)},
        )
    os.replace(tmp, dst_path)
    return time.time() - t0


def footprint(transform, width: int, height: int, crs: str, steps: int = 8):
    """Raster extent as a densified EPSG:4326 polygon and its bbox."""
    from rasterio.warp import transform as warp

    xs, ys = [], []
    corners = [(0, 0), (width, 0), (width, height), (0, height)]
    for (c0, r0), (c1, r1) in zip(corners, corners[1:] + corners[:1]):
        for k in range(steps):
            c = c0 + (c1 - c0) * k / steps
            r = r0 + (r1 - r0) * k / steps
            x, y = transform * (c, r)
            xs.append(x)
            ys.append(y)
    lon, lat = warp(crs, "EPSG:4326", xs, ys)
    ring = [[round(a, 9), round(b, 9)] for a, b in zip(lon, lat)]
    ring.append(ring[0])
    bbox = [min(lon), min(lat), max(lon), max(lat)]
    return {"type": "Polygon", "coordinates": [ring]}, bbox


def inner_bounds(transform, width: int, height: int, crs: str, inset: float = 0.02) -> list[float]:
    """A lon/lat rectangle inside the raster extent (inset by `inset` of the extent on each side).

    Tile lists drawn from it only hold tiles that touch the data on every server (no 404 at the rotated
    UTM corners)."""
    from rasterio.warp import transform as warp

    c0, c1 = width * inset, width * (1 - inset)
    r0, r1 = height * inset, height * (1 - inset)
    pts = [transform * (c, r) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1))]
    lon, lat = warp(crs, "EPSG:4326", [p[0] for p in pts], [p[1] for p in pts])
    return [max(lon[0], lon[3]), max(lat[2], lat[3]), min(lon[1], lon[2]), min(lat[0], lat[1])]


def convert(data: str, out: str | None = None, collection_id: str = "bench-s2", jobs: int = 2, log=print,
            multiband: str | None = None) -> dict:
    """Build the catalog (extracting bands as needed), with the 4-band COG as asset `multiband` if given. Returns a
    summary dict (paths, bounds, items)."""
    import rasterio

    data = os.path.abspath(data)
    out = os.path.abspath(out or os.path.join(data, "jeo-stac"))
    with open(os.path.join(data, "scenes.json")) as f:
        manifest = json.load(f)
    args = manifest.get("args", {})
    blocksize = int(args.get("blocksize", 512))
    predictor = int(args.get("predictor", 2)) or None
    scenes = manifest["scenes"]
    os.makedirs(os.path.join(data, "bands"), exist_ok=True)

    # 1. per-band COGs (cached)
    todo = []
    for s in scenes:
        src = s["image"] if os.path.isabs(s["image"]) else os.path.join(data, s["image"])
        for bidx, name, *_ in BANDS:
            dst = band_path(data, s["name"], name)
            if not (os.path.exists(dst) and os.path.getmtime(dst) >= os.path.getmtime(src)):
                todo.append((src, dst, bidx))
    if todo:
        t0 = time.time()
        log(f"extracting {len(todo)} single-band COGs into {data}/bands ({jobs} processes) ...")
        with ProcessPoolExecutor(jobs) as ex:
            futs = [ex.submit(extract_band, src, dst, bidx, blocksize, predictor) for src, dst, bidx in todo]
            for f in futs:
                f.result()
        log(f"  done in {time.time() - t0:.0f} s")

    # 2. STAC
    coll_dir = os.path.join(out, collection_id)
    os.makedirs(coll_dir, exist_ok=True)
    items, bboxes, dates = [], [], []
    bounds = None
    for s in scenes:
        name = s["name"]
        image = s["image"] if os.path.isabs(s["image"]) else os.path.join(data, s["image"])
        mask = s["cloud_mask"] if os.path.isabs(s["cloud_mask"]) else os.path.join(data, s["cloud_mask"])
        with rasterio.open(image) as ds:
            crs = ds.crs.to_string()
            epsg = ds.crs.to_epsg()
            tr, width, height = ds.transform, ds.width, ds.height
            res = abs(tr.a)
        geometry, bbox = footprint(tr, width, height, crs)
        if bounds is None:
            bounds = inner_bounds(tr, width, height, crs)
        when = dt.datetime.fromisoformat(s["date"]).replace(hour=10, minute=30, tzinfo=dt.timezone.utc)
        transform = [tr.a, tr.b, tr.c, tr.d, tr.e, tr.f]
        assets = {}
        for _, band, common, key, wl in BANDS:
            assets[key] = {
                "href": band_path(data, name, band),
                "type": COG_TYPE,
                "title": f"{band} ({common})",
                "roles": ["data", "reflectance"],
                "eo:bands": [{"name": band, "common_name": common, "center_wavelength": wl}],
                "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": 0.0,
                                  "spatial_resolution": res}],
            }
        if multiband:
            assets[multiband] = {
                "href": image,
                "type": COG_TYPE,
                "title": "B02, B03, B04, B08 in one COG",
                "roles": ["data", "reflectance"],
                "eo:bands": [{"name": band, "common_name": common, "center_wavelength": wl}
                             for _, band, common, _, wl in BANDS],
                "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": 0.0,
                                  "spatial_resolution": res} for _ in BANDS],
            }
        assets["cloud_probability"] = {
            "href": mask,
            "type": COG_TYPE,
            "title": "cloud mask (0 clear, 1 cloud, 255 outside the footprint)",
            "roles": ["data", "cloud"],
            "description": "Synthetic 0/1 cloud mask exposed as a cloud probability: use "
                           "cloud_mask=cloud_probability:0.5 (usable where value < 0.5, 255 = no data).",
            "raster:bands": [{"nodata": 255, "data_type": "uint8", "spatial_resolution": res}],
        }
        item = {
            "type": "Feature",
            "stac_version": "1.0.0",
            "stac_extensions": [
                "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            ],
            "id": name,
            "collection": collection_id,
            "geometry": geometry,
            "bbox": bbox,
            "properties": {
                "datetime": when.isoformat().replace("+00:00", "Z"),
                "platform": "synthetic-s2",
                "constellation": "sentinel-2",
                "eo:cloud_cover": round(100 * float(s["cloud_fraction"]), 2),
                "proj:epsg": epsg,
                "proj:shape": [height, width],
                "proj:transform": transform,
                "gsd": res,
                "bench:nodata_fraction": s.get("nodata_fraction"),
            },
            "links": [
                {"rel": "collection", "href": "../collection.json", "type": "application/json"},
                {"rel": "parent", "href": "../collection.json", "type": "application/json"},
                {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
            ],
            "assets": assets,
        }
        item_dir = os.path.join(coll_dir, name)
        os.makedirs(item_dir, exist_ok=True)
        path = os.path.join(item_dir, f"{name}.json")
        with open(path, "w") as f:
            json.dump(item, f, indent=1)
        items.append(path)
        bboxes.append(bbox)
        dates.append(when)
    collection = {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": collection_id,
        "title": "Synthetic Sentinel-2-like benchmark time series",
        "description": f"{len(scenes)} synthetic scenes from ../shared/bench/make_data.py (speed only, not real data).",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [[min(b[0] for b in bboxes), min(b[1] for b in bboxes),
                                  max(b[2] for b in bboxes), max(b[3] for b in bboxes)]]},
            "temporal": {"interval": [[min(dates).isoformat().replace("+00:00", "Z"),
                                       max(dates).isoformat().replace("+00:00", "Z")]]},
        },
        "links": [
            {"rel": "root", "href": "../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
        ] + [
            {"rel": "item", "href": f"./{os.path.basename(os.path.dirname(p))}/{os.path.basename(p)}",
             "type": "application/geo+json"} for p in items
        ],
    }
    with open(os.path.join(coll_dir, "collection.json"), "w") as f:
        json.dump(collection, f, indent=1)
    catalog = {
        "type": "Catalog",
        "stac_version": "1.0.0",
        "id": f"{collection_id}-catalog",
        "description": "Synthetic benchmark catalog for jeo-tiler",
        "links": [
            {"rel": "root", "href": "./catalog.json", "type": "application/json"},
            {"rel": "child", "href": f"./{collection_id}/collection.json", "type": "application/json"},
        ],
    }
    catalog_path = os.path.join(out, "catalog.json")
    with open(catalog_path, "w") as f:
        json.dump(catalog, f, indent=1)
    summary = {"catalog": catalog_path, "collection": collection_id, "items": items,
               "item_ids": [s["name"] for s in scenes], "bounds": bounds,
               "size": manifest.get("meta", {}).get("shape", [None, None, None])[1]}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/tmp/jeo-benchdata", help="make_data.py output folder")
    p.add_argument("--out", default=None, help="catalog folder (default <data>/jeo-stac)")
    p.add_argument("--collection", default="bench-s2")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--multiband", metavar="KEY", help="also add the 4-band COG as the multi-band asset KEY (e.g. visual)")
    a = p.parse_args()
    s = convert(a.data, a.out, a.collection, a.jobs, multiband=a.multiband)
    print(json.dumps({k: v for k, v in s.items() if k != "items"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
