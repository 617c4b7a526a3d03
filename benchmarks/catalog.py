"""Catalog benchmark (not a test): ingest rate and tile-search latency of the SQLite and pgSTAC catalogs at
growing sizes. ``python benchmarks/catalog.py [--sizes 10000,100000,1000000] [--backends sqlite,pgstac]``.

Synthetic Sentinel-2-like items (4 COG assets with eo:bands, raster:bands and projection fields, all
pointing at one real file so that ingest validation runs as usual): a grid of 2,000 footprints of
1° × 0.9° over Europe, each revisited every 2 days, so a size is 2,000 × dates items in one collection.
Ingest: batches of 10,000 items per transaction (``Catalog._ingest`` of an in-memory walk: the same
path as ``jeo ingest`` after the files are read and validated; the validation, which opens every asset
and is the same for both backends, is done once for a template item and not timed). Search: what a composite tile asks
(``mosaics.composite.candidates``): the items touching a random WebMercator z10 tile inside the grid, in a
random 30-day window, newest first, at most 20; p50/p95 over ``--queries`` searches after a warm-up.
Target: p50 ≤ 5 ms at 10⁶ items on SQLite. pgSTAC runs in a throwaway PostgreSQL
(scripts/postgres-start.sh) unless ``--postgres URL`` names a server (a new database is made per size).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import morecantile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mosaics import stac  # noqa: E402
from mosaics.catalog import Catalog  # noqa: E402
from mosaics.models import Item  # noqa: E402

COLLECTION = "synthetic-s2"
GRID = (50, 40)  # footprints in longitude × latitude: 2,000
WEST, SOUTH, STEP_LON, STEP_LAT = -10.0, 35.0, 1.0, 0.9
START = datetime(2020, 1, 1, 10, 30, tzinfo=timezone.utc)
REVISIT = timedelta(days=2)
BATCH = 10_000
HREF = str(ROOT / "tiler" / "sample" / "sentinel-2-l2a-sample" / "S2B_33TWM_20230813_0_L2A" / "B04.tif")
BANDS = (("B02", "blue"), ("B03", "green"), ("B04", "red"), ("B08", "nir"))


def collection_doc() -> dict:
    return {
        "type": "Collection", "stac_version": "1.0.0", "id": COLLECTION, "description": "synthetic benchmark items",
        "license": "proprietary", "links": [],
        "extent": {"spatial": {"bbox": [[WEST, SOUTH, WEST + GRID[0] * STEP_LON, SOUTH + GRID[1] * STEP_LAT]]},
                   "temporal": {"interval": [[START.isoformat(), None]]}},
    }  # fmt: skip


def item_doc(index: int) -> dict:
    """Item `index`: footprint index % 2,000, date index // 2,000."""
    cell, date = divmod(index, GRID[0] * GRID[1])[::-1]
    col, row = divmod(cell, GRID[1])
    west, south = WEST + col * STEP_LON, SOUTH + row * STEP_LAT
    east, north = west + STEP_LON * 1.05, south + STEP_LAT * 1.05  # neighbours overlap like S2 tiles
    when = START + date * REVISIT + timedelta(seconds=cell)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    asset = {
        "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"],
        "proj:shape": [10980, 10980], "proj:transform": [10.0, 0.0, 499980.0, 0.0, -10.0, 5200020.0],
    }  # fmt: skip
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": f"S2_{cell:04d}_{when:%Y%m%d}", "collection": COLLECTION,
        "bbox": [west, south, east, north], "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"datetime": when.isoformat(), "eo:cloud_cover": (index * 37) % 100, "platform": "sentinel-2b",
                       "proj:epsg": 32633, "s2:processing_baseline": "05.09"},
        "assets": {common: {**asset, "href": HREF, "eo:bands": [{"name": name, "common_name": common}],
                            "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 0.0001}]}
                   for name, common in BANDS},
        "links": [],
    }  # fmt: skip


def synthetic_item(template: Item, index: int) -> Item:
    """Item `index`: the validated template's assets with the id, time, footprint and clouds of `item_doc`."""
    doc = item_doc(index)
    doc["assets"] = template.stac["assets"]
    props = doc["properties"]
    return dataclasses.replace(
        template, id=doc["id"], datetime=datetime.fromisoformat(props["datetime"]), bbox=tuple(doc["bbox"]),
        geometry=doc["geometry"], cloud_cover=props["eo:cloud_cover"], properties=props, stac=doc,
        version=stac.content_hash(doc),
    )  # fmt: skip


def ingest(catalog: Catalog, size: int) -> float:
    """Ingest `size` items in batches; items per second."""
    collection = stac.parse_collection(collection_doc(), "synthetic:collection")
    template = stac.parse_item(item_doc(0), "synthetic:0", stac.Roots.of(str(ROOT / "tiler" / "sample" / "catalog.json")))
    started = time.perf_counter()
    for first in range(0, size, BATCH):
        walk = stac.Walk(collections={COLLECTION: collection})
        for index in range(first, min(first + BATCH, size)):
            item = synthetic_item(template, index)
            walk.items[(COLLECTION, item.id)] = item
            walk.item_files[(COLLECTION, item.id)] = f"synthetic:{index}"
        catalog._ingest(walk, None)
    return size / (time.perf_counter() - started)


def searches(catalog: Catalog, size: int, count: int, seed: int = 1) -> tuple[list[float], float]:
    """Milliseconds per composite-tile search and mean items found."""
    rng = random.Random(seed)
    tms = morecantile.tms.get("WebMercatorQuad")
    days = max(1, size // (GRID[0] * GRID[1])) * REVISIT.days
    times, found = [], []
    for i in range(count + 20):
        lon = rng.uniform(WEST + 1, WEST + GRID[0] * STEP_LON - 1)
        lat = rng.uniform(SOUTH + 1, SOUTH + GRID[1] * STEP_LAT - 1)
        bounds = tms.xy_bounds(tms.tile(lon, lat, 10))
        start = START + timedelta(days=rng.uniform(0, max(0, days - 30)))
        t = time.perf_counter()
        items = catalog.search(
            COLLECTION, bbox=tuple(bounds), bbox_crs="EPSG:3857", datetime=(start, start + timedelta(days=30)),
            sortby=("-datetime",), limit=20,
        )
        if i >= 20:  # warm-up
            times.append((time.perf_counter() - t) * 1000)
            found.append(len(items))
    return times, statistics.mean(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated item counts")
    parser.add_argument("--backends", default="sqlite,pgstac", help="sqlite, pgstac or both")
    parser.add_argument("--queries", type=int, default=300, help="searches per size and backend")
    parser.add_argument("--postgres", help="postgresql:// URL of a server to use (default: a throwaway one)")
    parser.add_argument("--workdir", type=Path, help="keep the SQLite catalogs here; a catalog-SIZE.db already "
                        "there is searched again without a new ingest (its ingest rate is not reported)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    backends = args.backends.split(",")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="jeo-catalog-bench."))
    workdir.mkdir(parents=True, exist_ok=True)
    server, started_pg = args.postgres, None
    if "pgstac" in backends and server is None:
        started_pg = Path(tempfile.mkdtemp(prefix="jeo-pg-bench."))  # outside workdir: the postgres user enters it
        server = subprocess.run(["bash", str(ROOT / "scripts" / "postgres-start.sh"), str(started_pg)],
                                check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    print(f"{'backend':8} {'items':>9} {'ingest items/s':>15} {'search p50 ms':>14} {'p95 ms':>8} {'items found':>12}")
    results: dict[tuple[str, int], float] = {}
    try:
        for size in sizes:
            for backend in backends:
                reused = False
                if backend == "sqlite":
                    location: str = str(workdir / f"catalog-{size}.db")
                    reused = Path(location).exists()
                else:
                    import psycopg

                    with psycopg.connect(server, autocommit=True) as conn:
                        conn.execute(f"DROP DATABASE IF EXISTS jeo_bench_{size}")
                        conn.execute(f"CREATE DATABASE jeo_bench_{size}")
                    location = server.rsplit("/", 1)[0] + f"/jeo_bench_{size}"
                catalog = Catalog(location)
                rate = "reused" if reused else f"{ingest(catalog, size):,.0f}"
                times, found = searches(catalog, size, args.queries)
                catalog.close()
                p50, p95 = statistics.median(times), statistics.quantiles(times, n=20)[18]
                results[backend, size] = p50
                print(f"{backend:8} {size:9,d} {rate:>15} {p50:14.2f} {p95:8.2f} {found:12.1f}", flush=True)
        for size in sizes:
            if ("sqlite", size) in results and ("pgstac", size) in results:
                print(f"pgstac / sqlite search p50 at {size:,}: {results['pgstac', size] / results['sqlite', size]:.1f}×")
        if (sqlite := results.get(("sqlite", max(sizes)))) is not None:
            print(f"SQLite p50 at {max(sizes):,} items: {sqlite:.2f} ms (target ≤ 5 ms at 1,000,000)")
    finally:
        if started_pg is not None:
            subprocess.run(["bash", str(ROOT / "scripts" / "postgres-stop.sh"), str(started_pg)], check=False)


if __name__ == "__main__":
    main()
