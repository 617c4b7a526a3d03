#!/usr/bin/env python3
"""Cut the packaged sample data set (tiler/sample/) out of the shared Sentinel-2 L2A time series.

Source: ../shared/data/sentinel-2-l2a-timeseries (5 items, MGRS 33TWM, 915 x 915 px at 120 m,
EPSG:32633; see ../shared/data/README.md for provenance). Output: a small static STAC catalog

    tiler/sample/catalog.json
    tiler/sample/sentinel-2-l2a-sample/collection.json
    tiler/sample/sentinel-2-l2a-sample/<item-id>/<item-id>.json
    tiler/sample/sentinel-2-l2a-sample/<item-id>/{B02,B03,B04,B08,SCL,CLDPRB}.tif

Every item keeps all five dates' pixels for one pixel window of the source grid, unchanged (no
resampling): the window is a plain crop aligned on the 120 m grid. Rasters are written as COGs
with the same conventions as the source (rio-cogeo, DEFLATE level 9, predictor 2, 256 x 256
internal tiles, decimation-2 overviews, `average` overviews for reflectance / probability and
`mode` for SCL, GDAL scale/offset, nodata and band description copied).

Usage (from the repository root, with the project venv):

    .venv/bin/python scripts/make_sample_data.py            # default window, writes tiler/sample
    .venv/bin/python scripts/make_sample_data.py --check    # only validate what is there

The output is deterministic: running it twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.io import MemoryFile
from rasterio.warp import transform_geom
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_translate, cog_validate
from rio_cogeo.profiles import cog_profiles
from shapely.geometry import box, mapping, shape

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "data" / "sentinel-2-l2a-timeseries"
DEFAULT_OUT = REPO / "tiler" / "sample"

SRC_COLLECTION = "sentinel-2-l2a-timeseries"
COLLECTION_ID = "sentinel-2-l2a-sample"
CATALOG_ID = "jeo-tiler-sample"

# Window on the 915 x 915 source grid (pixels): columns 0-383, rows 265-648. It holds the
# western no-data wedge of the 10/15/20 August acquisitions (orbit R079, ~27 % of the window)
# and a mix of clear and cloudy dates (window cloud cover from <1 % to ~83 %).
DEFAULT_WINDOW = (0, 265, 384, 384)  # col_off, row_off, width, height

# asset key -> (file name, overview resampling)
ASSETS = {
    "blue": ("B02.tif", "average"),
    "green": ("B03.tif", "average"),
    "red": ("B04.tif", "average"),
    "nir": ("B08.tif", "average"),
    "scl": ("SCL.tif", "mode"),
    "cloud_probability": ("CLDPRB.tif", "average"),
}
DROPPED_ASSETS = {"granule_metadata"}

MAX_TOTAL_BYTES = 12 * 1024 * 1024
COORD_DECIMALS = 9  # ~0.1 mm in degrees: enough, and keeps the JSON small and stable
DENSIFY_M = 2000.0  # max segment length (m) of the window outline before reprojection


def log(msg: str) -> None:
    print(f"[make_sample_data] {msg}", flush=True)


def _round_coords(obj):
    if isinstance(obj, float):
        return round(obj, COORD_DECIMALS)
    if isinstance(obj, (list, tuple)):
        return [_round_coords(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _round_coords(v) for k, v in obj.items()}
    return obj


def write_cog(src_path: Path, dst_path: Path, window: Window, resampling: str) -> None:
    """Crop `window` out of `src_path` (values unchanged) and write it as a COG."""
    with rasterio.open(src_path) as src:
        data = src.read(window=window)
        profile = {
            "driver": "GTiff",
            "width": int(window.width),
            "height": int(window.height),
            "count": src.count,
            "dtype": src.dtypes[0],
            "crs": src.crs,
            "transform": src.window_transform(window),
            "nodata": src.nodata,
        }
        descriptions, scales, offsets = src.descriptions, src.scales, src.offsets
        tags = {k: v for k, v in src.tags().items() if k not in ("OVERVIEW_RESAMPLING",)}

    dst_profile = cog_profiles.get("deflate")
    dst_profile.update(
        {"blockxsize": 256, "blockysize": 256, "predictor": 2, "zlevel": 9}
    )
    with MemoryFile() as mem:
        with mem.open(**profile) as tmp:
            tmp.write(data)
            for i, desc in enumerate(descriptions, start=1):
                if desc:
                    tmp.set_band_description(i, desc)
            tmp.scales = scales
            tmp.offsets = offsets
            if tags:
                tmp.update_tags(**tags)
        with mem.open() as tmp:
            cog_translate(
                tmp,
                str(dst_path),
                dst_profile,
                nodata=profile["nodata"],
                overview_resampling=resampling,
                in_memory=True,
                quiet=True,
            )


def window_stats(scl: np.ndarray) -> dict:
    valid = scl != 0
    n_valid = int(valid.sum())
    n = scl.size
    cloud = int(np.isin(scl, (8, 9, 10)).sum())
    shadow = int((scl == 3).sum())
    pct = (lambda k: round(100.0 * k / n_valid, 2)) if n_valid else (lambda k: 0.0)
    return {
        "valid_pct": round(100.0 * n_valid / n, 2),
        "cloud_pct": pct(cloud),
        "shadow_pct": pct(shadow),
    }


def window_footprint(crs, transform, width: int, height: int):
    """The window's outline as a densified polygon in EPSG:4326 (shapely)."""
    left, top = transform * (0, 0)
    right, bottom = transform * (width, height)
    outline = box(min(left, right), min(bottom, top), max(left, right), max(bottom, top))
    outline = outline.segmentize(DENSIFY_M)
    return shape(transform_geom(crs, "EPSG:4326", mapping(outline)))


def make_item(src_item: dict, item_dir: Path, window: Window, src_grid: dict) -> dict:
    item = copy.deepcopy(src_item)
    item_id = item["id"]

    with rasterio.open(item_dir / "SCL.tif") as scl_ds:
        scl = scl_ds.read(1)
        transform = scl_ds.transform
        crs = scl_ds.crs
        shape_hw = [scl_ds.height, scl_ds.width]
    stats = window_stats(scl)

    footprint = shape(src_item["geometry"]).intersection(
        window_footprint(crs, transform, shape_hw[1], shape_hw[0])
    )
    if footprint.is_empty:
        raise SystemExit(f"{item_id}: window does not intersect the item footprint")
    geom = _round_coords(mapping(footprint))
    item["geometry"] = geom
    item["bbox"] = [round(v, COORD_DECIMALS) for v in footprint.bounds]
    item["collection"] = COLLECTION_ID

    props = item["properties"]
    props["eo:cloud_cover"] = stats["cloud_pct"]
    props["testdata:valid_pixel_percentage"] = stats["valid_pct"]
    props["testdata:cloud_shadow_percentage"] = stats["shadow_pct"]
    props["testdata:sample_of"] = f"{SRC_COLLECTION}/{item_id}/{item_id}.json"
    props["testdata:sample_window"] = {
        "col_off": int(window.col_off),
        "row_off": int(window.row_off),
        "width": int(window.width),
        "height": int(window.height),
        "source_shape": src_grid["shape"],
        "source_transform": src_grid["transform"],
    }

    proj_transform = [round(v, 6) for v in list(transform)[:6]]
    for key in DROPPED_ASSETS:
        item["assets"].pop(key, None)
    for key, asset in item["assets"].items():
        if key not in ASSETS:
            raise SystemExit(f"{item_id}: unexpected asset {key!r}")
        asset["href"] = f"./{ASSETS[key][0]}"
        asset["proj:shape"] = shape_hw
        asset["proj:transform"] = proj_transform
    for key in ASSETS:
        if key not in item["assets"]:
            raise SystemExit(f"{item_id}: asset {key!r} missing in the source item")

    item["links"] = [
        {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "../collection.json", "type": "application/json"},
        {"rel": "collection", "href": "../collection.json", "type": "application/json"},
        # relative, like every href here, so that the folder stays relocatable
        {"rel": "self", "href": f"./{item_id}.json", "type": "application/geo+json"},
    ]
    return item


def dump_json(obj: dict, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build(src: Path, out: Path, window_t: tuple[int, int, int, int]) -> None:
    src_coll = json.loads((src / "collection.json").read_text())
    item_links = [ln for ln in src_coll["links"] if ln["rel"] == "item"]
    if not item_links:
        raise SystemExit(f"no items in {src}/collection.json")

    col_off, row_off, width, height = window_t
    window = Window(col_off, row_off, width, height)

    coll_dir = out / COLLECTION_ID
    if coll_dir.exists():
        shutil.rmtree(coll_dir)
    coll_dir.mkdir(parents=True)

    items = []
    for ln in item_links:
        src_item_path = (src / ln["href"]).resolve()
        src_item = json.loads(src_item_path.read_text())
        item_id = src_item["id"]
        src_dir = src_item_path.parent
        dst_dir = coll_dir / item_id
        dst_dir.mkdir()
        src_grid = None
        for key, (fname, resampling) in ASSETS.items():
            with rasterio.open(src_dir / fname) as ds:
                full = Window(0, 0, ds.width, ds.height)
                if window.intersection(full) != window:
                    raise SystemExit(f"window {window_t} is outside {src_dir / fname} ({ds.width}x{ds.height})")
                src_grid = src_grid or {
                    "shape": [ds.height, ds.width],
                    "transform": [round(v, 6) for v in list(ds.transform)[:6]],
                }
            write_cog(src_dir / fname, dst_dir / fname, window, resampling)
        item = make_item(src_item, dst_dir, window, src_grid)
        dump_json(item, dst_dir / f"{item_id}.json")
        items.append(item)
        p = item["properties"]
        log(
            f"{item_id}: eo:cloud_cover {p['eo:cloud_cover']} %, valid {p['testdata:valid_pixel_percentage']} %"
        )

    # Collection
    coll = copy.deepcopy(src_coll)
    coll["id"] = COLLECTION_ID
    coll["title"] = (
        f"Sentinel-2 L2A sample, MGRS 33TWM, {width} x {height} px at 120 m "
        "(B02, B03, B04, B08, SCL, cloud probability)"
    )
    coll["description"] = (
        "Packaged sample for jeo-tiler: a "
        f"{width} x {height} px window (columns {col_off}-{col_off + width - 1}, rows "
        f"{row_off}-{row_off + height - 1} of the 915 x 915 tile grid) of the five-date "
        "Sentinel-2 L2A time series 'sentinel-2-l2a-timeseries' (10-20 August 2023, "
        "120 m, lossy JPEG2000 upstream), pixel values unchanged. Surface reflectance = "
        "DN * 0.0001 (the L2A BOA_ADD_OFFSET is already applied). Contains modified "
        "Copernicus Sentinel data 2023."
    )
    if "item_assets" in coll:
        for key in DROPPED_ASSETS:
            coll["item_assets"].pop(key, None)
    xs0, ys0, xs1, ys1 = zip(*(it["bbox"] for it in items))
    coll["extent"]["spatial"]["bbox"] = [[min(xs0), min(ys0), max(xs1), max(ys1)]]
    dts = sorted(it["properties"]["datetime"] for it in items)
    coll["extent"]["temporal"]["interval"] = [[dts[0], dts[-1]]]
    coll["links"] = [
        {"rel": "root", "href": "../catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
        {"rel": "self", "href": "./collection.json", "type": "application/json"},
    ]
    coll["links"] += [ln for ln in src_coll["links"] if ln["rel"] == "license"]
    coll["links"] += [
        {"rel": "item", "href": f"./{it['id']}/{it['id']}.json", "type": "application/geo+json"}
        for it in items
    ]
    dump_json(coll, coll_dir / "collection.json")

    catalog = {
        "type": "Catalog",
        "stac_version": "1.0.0",
        "id": CATALOG_ID,
        "title": "jeo-tiler sample: real Sentinel-2 L2A time series (5 dates)",
        "description": (
            "A small real Sentinel-2 L2A time series packaged with jeo-tiler for the demo and "
            "tests that must run without the full data set. See README.md for provenance. "
            "Contains modified Copernicus Sentinel data 2023."
        ),
        "links": [
            {"rel": "root", "href": "./catalog.json", "type": "application/json"},
            {"rel": "self", "href": "./catalog.json", "type": "application/json"},
            {"rel": "child", "href": f"./{COLLECTION_ID}/collection.json", "type": "application/json"},
        ],
    }
    dump_json(catalog, out / "catalog.json")


def check(out: Path) -> int:
    """Validate the output: COGs, JSON, links, total size. Returns the number of problems."""
    problems = 0
    total = 0
    n_cogs = 0
    for f in sorted(out.rglob("*")):
        if not f.is_file():
            continue
        total += f.stat().st_size
        if f.suffix == ".json":
            try:
                doc = json.loads(f.read_text())
            except ValueError as exc:
                log(f"BAD JSON {f}: {exc}")
                problems += 1
                continue
            for ln in doc.get("links", []):
                href = ln["href"]
                if "://" not in href and not (f.parent / href).exists():
                    log(f"BROKEN LINK {f}: {ln['rel']} -> {href}")
                    problems += 1
            for key, asset in doc.get("assets", {}).items():
                if not (f.parent / asset["href"]).exists():
                    log(f"MISSING ASSET {f}: {key} -> {asset['href']}")
                    problems += 1
        elif f.suffix == ".tif":
            n_cogs += 1
            ok, errors, warnings = cog_validate(str(f), strict=True, quiet=True)
            if not ok:
                log(f"NOT A VALID COG {f}: {errors} {warnings}")
                problems += 1
    log(f"{n_cogs} COGs checked, total size {total / 1024 / 1024:.2f} MiB (limit 12 MiB)")
    if total > MAX_TOTAL_BYTES:
        log("TOO LARGE")
        problems += 1
    if n_cogs == 0:
        log("no COGs found")
        problems += 1
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="sentinel-2-l2a-timeseries folder")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (tiler/sample)")
    ap.add_argument(
        "--window",
        type=int,
        nargs=4,
        metavar=("COL_OFF", "ROW_OFF", "WIDTH", "HEIGHT"),
        default=DEFAULT_WINDOW,
    )
    ap.add_argument("--check", action="store_true", help="only validate the existing output")
    args = ap.parse_args(argv)

    if not args.check:
        if not (args.src / "collection.json").exists():
            log(f"source not found: {args.src}/collection.json")
            return 2
        args.out.mkdir(parents=True, exist_ok=True)
        build(args.src, args.out, tuple(args.window))
    problems = check(args.out)
    if problems:
        log(f"{problems} problem(s)")
        return 1
    log("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
