#!/usr/bin/env python3
"""Export throughput: a median composite export of the synthetic 20-scene set, local vs SLURM vs tiles.

Data: ``../shared/bench/make_data.py`` (20 scenes, 4096² px at 10 m, EPSG:32632, 4-band uint16 COGs plus
0/1/255 cloud masks). If ``<data>/scenes.json`` is missing the scenes are generated here with that
script's own functions (``--scenes``, ``--data-size``; its MosaicJSON step, which needs cogeo-mosaic, is
skipped). ``stac_from_bench.py`` turns ``scenes.json`` into a static STAC catalog in ``<data>/stac`` that
jeo-tiler ingests (``<data>`` is an allowed root, the bands live in ``<data>/bands``): one single-band COG per
band (extracted once) as the assets blue/green/red/nir, and the cloud mask as ``cloud_probability`` (0 clear,
1 cloud, 255 no data), used with ``cloud_mask=cloud_probability:0.5``.

Measured (each run is `jeo export … --json` in a fresh process against a private JEO_HOME):
- ``local:N``: the local executor with N worker processes;
- ``slurm:N``: a SLURM array with at most N tasks at once (`%N`) plus the merge job;
- ``tiles``: the same composite computed as 256 px tiles of the same grid, one after another in this
  process (sampled, then scaled to the area) — the cost of serving the area as tiles, without HTTP.

Reported: wall seconds and output Mpx/s per run, worker seconds per output Mpx (sum of chunk seconds from
the store, plus the merge), SLURM overhead against local with the same parallelism, and the per-Mpx cost
of exports against tiles. Results are printed and written as JSON (``--out``).

    python benchmarks/exports.py --data /tmp/jeo-benchdata                # full: 8192² output, 2048² chunks
    python benchmarks/exports.py --data /tmp/jeo-bench-small --scenes 6 --data-size 1024 --size 2048 \\
        --chunk-size 1024 --runs local:1,local:2,slurm:1,slurm:2,tiles     # small, a few minutes

The output grid covers the data extent at ``extent / --size`` metres (8192² over the 40.96 km of the
default data is 5 m, i.e. upsampled from 10 m by nearest neighbour). SLURM runs need the local cluster
(scripts/slurm-start.sh; started here if it is not running, and stopped again afterwards).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
MAKE_DATA = ROOT.parent / "shared" / "bench" / "make_data.py"
COLLECTION = "bench-exports"
RECIPE = ["--assets", "red,green,blue", "--method", "median", "--cloud-mask", "cloud_probability:0.5"]


# --- data -----------------------------------------------------------------------------------------


def generate(data: Path, scenes: int, size: int, jobs: int) -> None:
    """make_data.py's scenes (without its MosaicJSON step) and a scenes.json manifest."""
    from concurrent.futures import ProcessPoolExecutor

    import rasterio

    spec = importlib.util.spec_from_file_location("make_data", MAKE_DATA)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_data"] = module  # the process pool pickles its functions by module name
    spec.loader.exec_module(module)
    args = SimpleNamespace(
        out=str(data), scenes=scenes, size=size, res=10.0, origin_x=500000.0, origin_y=5300000.0, blocksize=512,
        predictor=2, cloud_min=0.2, cloud_max=0.6, seed=42, jobs=jobs,
    )  # fmt: skip
    data.mkdir(parents=True, exist_ok=True)
    print(f"generating {scenes} scenes of {size}² px into {data} …", flush=True)
    start = time.time()
    with ProcessPoolExecutor(jobs) as pool:
        done = list(pool.map(module.one, range(scenes), [args] * scenes, [args.seed] * scenes))
    with rasterio.open(done[0]["image"]) as ds:
        meta = {"crs": str(ds.crs), "bounds": list(ds.bounds), "shape": [ds.count, ds.height, ds.width]}
    (data / "scenes.json").write_text(json.dumps({"args": vars(args), "meta": meta, "scenes": done}, indent=1))
    print(f"  done in {time.time() - start:.0f} s", flush=True)


def to_stac(data: Path) -> Path:
    """A static STAC catalog (catalog → collection → items) over the scenes of ``scenes.json``."""
    sys.path.insert(0, str(Path(__file__).parent))
    from stac_from_bench import convert

    return Path(convert(str(data), str(data / "stac"), COLLECTION)["catalog"])


# --- runs -----------------------------------------------------------------------------------------


def jeo(home: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tiler.cli", *args], env={**os.environ, "JEO_HOME": str(home), **env},
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip


def run_export(home: Path, grid: list[str], executor: str, parallel: int, chunk_size: int) -> dict:
    from tiler.exports.store import ExportStore

    env = {"JEO_EXPORT_LOCAL_WORKERS": str(parallel), "JEO_EXPORT_SLURM_MAX_PARALLEL": str(parallel),
           "JEO_EXPORT_CHUNK_SIZE": str(chunk_size), "JEO_EXPORT_MAX_PIXELS": str(10**10)}
    name = f"{executor}-{parallel}-{time.time_ns()}"
    before = os.times()
    start = time.perf_counter()
    result = jeo(home, env, "export", COLLECTION, *RECIPE, *grid, "--executor", executor, "--destination", name, "--json")
    wall = time.perf_counter() - start
    after = os.times()
    if result.returncode != 0:
        raise RuntimeError(f"{executor}:{parallel} failed:\n{result.stdout}\n{result.stderr}")
    summary = json.loads(result.stdout)
    store = ExportStore(home / "catalog.db")
    rows = [r for r in store.chunk_rows(summary["id"]) if r["chunk"] >= 0]
    merge_log = home / "exports-work" / summary["id"] / "logs" / "merge.log"
    merge_seconds = None
    if merge_log.exists():
        for line in merge_log.read_text().splitlines():
            if line.startswith(f"export {summary['id']} finished in "):
                merge_seconds = float(line.split(" finished in ")[1].split(" s")[0])
    pixels = summary["estimate"]["pixels"]
    chunk_seconds = sum(r["seconds"] or 0 for r in rows)
    Path(summary["result"]).unlink(missing_ok=True)
    return {
        "run": f"{executor}:{parallel}",
        "wall_s": round(wall, 2),
        "mpx_per_s": round(pixels / 1e6 / wall, 3),
        "chunks": len(rows),
        "chunk_s_sum": round(chunk_seconds, 2),
        "chunk_s_mean": round(chunk_seconds / max(1, len(rows)), 2),
        "merge_s": merge_seconds,
        "worker_s_per_mpx": round((chunk_seconds + (merge_seconds or 0)) / (pixels / 1e6), 3),
        # CPU of the `jeo export` process and the local workers it reaped (SLURM tasks are not ours)
        "cpu_s_local_children": round((after.children_user + after.children_system)
                                      - (before.children_user + before.children_system), 2),
        "jobs": summary["jobs"],
    }


def run_tiles(home: Path, bounds: list[float], crs: str, size: int, samples: int) -> dict:
    """The same composite as 256 px tiles of the export grid, computed in this process (a sample)."""
    from concurrent.futures import ThreadPoolExecutor

    os.environ["JEO_HOME"] = str(home)
    from mosaics.catalog import Catalog
    from mosaics.cloudmasks import CloudMask
    from mosaics.composite import Compositing, Selection, composite
    from mosaics.recipe import Recipe
    from rasterio.crs import CRS
    from rasterio.transform import from_bounds
    from tiler.exports.chunks import window_grid, windows

    catalog = Catalog(home / "catalog.db")
    transform = from_bounds(*bounds, size, size)
    tiles = windows(size, size, 256)
    random.Random(1).shuffle(tiles)
    tiles = tiles[:samples]
    recipe = Recipe(assets=("red", "green", "blue"))
    compositing = Compositing("median", None, CloudMask("cloud_probability", 0.5))
    pool = ThreadPoolExecutor(8)
    grid = window_grid(transform, CRS.from_user_input(crs), tiles[0])
    composite(catalog, COLLECTION, grid, recipe, compositing, Selection(), pool, {})  # warm-up (numba, GDAL)
    start = time.perf_counter()
    pixels = 0
    for window in tiles:
        grid = window_grid(transform, CRS.from_user_input(crs), window)
        composite(catalog, COLLECTION, grid, recipe, compositing, Selection(), pool, {})
        pixels += window.width * window.height
    seconds = time.perf_counter() - start
    return {
        "run": "tiles",
        "tiles_sampled": len(tiles),
        "s_per_tile": round(seconds / len(tiles), 4),
        "worker_s_per_mpx": round(seconds / (pixels / 1e6), 3),
        "mpx_per_s": round(pixels / 1e6 / seconds, 3),
        "estimated_s_for_area": round(seconds / pixels * size * size, 1),
    }


def slurm_up(base: str) -> tuple[bool, bool]:
    """(running, started here)."""
    env = {**os.environ, "SLURM_BASE": base}
    if subprocess.run(["bash", "scripts/slurm-start.sh", "--check"], cwd=ROOT, env=env).returncode == 0:
        return True, False
    started = subprocess.run(["bash", "scripts/slurm-start.sh", "--probe"], cwd=ROOT, env=env).returncode == 0
    return started, started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/tmp/jeo-benchdata", help="make_data.py output (generated when missing)")
    p.add_argument("--scenes", type=int, default=20, help="scenes to generate when --data has none")
    p.add_argument("--data-size", type=int, default=4096, help="scene size in px when generating")
    p.add_argument("--jobs", type=int, default=2, help="processes for generating data")
    p.add_argument("--size", type=int, default=8192, help="export width and height in px")
    p.add_argument("--chunk-size", type=int, default=2048)
    p.add_argument("--runs", default="local:1,local:2,slurm:1,slurm:2,tiles")
    p.add_argument("--tile-samples", type=int, default=64)
    p.add_argument("--home", default=None, help="JEO_HOME for the benchmark (default: a temporary directory)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args()

    data = Path(a.data)
    if not (data / "scenes.json").exists():
        generate(data, a.scenes, a.data_size, a.jobs)
    catalog_path = to_stac(data)
    home = Path(a.home or tempfile.mkdtemp(prefix="jeo-bench-exports-"))
    home.mkdir(parents=True, exist_ok=True)
    ingest = jeo(home, {"JEO_INGEST_ALLOWED_ROOTS": str(data)}, "ingest", str(catalog_path))
    if ingest.returncode != 0:
        raise SystemExit(ingest.stderr)
    meta = json.loads((data / "scenes.json").read_text())["meta"]
    left, bottom, right, top = meta["bounds"]
    grid = ["--bbox", f"{left},{bottom},{right},{top}", "--bbox-crs", meta["crs"], "--crs", meta["crs"],
            "--resolution", repr((right - left) / a.size)]
    print(f"export: {a.size}² px over {meta['shape'][1:]} px scenes ({(right - left) / a.size:g} m), "
          f"chunks {a.chunk_size}², home {home}", flush=True)

    base = os.environ.get("JEO_SLURM_BASE") or os.environ.get("SLURM_BASE") or "/tmp/jeo-slurm"
    runs = [r.strip() for r in a.runs.split(",") if r.strip()]
    slurm_started = False
    if any(r.startswith("slurm") for r in runs):
        up, slurm_started = slurm_up(base)
        os.environ["SLURM_CONF"] = f"{base}/etc/slurm.conf"
        if not up:
            print("SLURM is not available: skipping slurm runs", file=sys.stderr)
            runs = [r for r in runs if not r.startswith("slurm")]
    results = []
    try:
        for run in runs:
            if run == "tiles":
                result = run_tiles(home, [left, bottom, right, top], meta["crs"], a.size, a.tile_samples)
            else:
                executor, _, parallel = run.partition(":")
                result = run_export(home, grid, executor, int(parallel or 1), a.chunk_size)
            print(json.dumps(result), flush=True)
            results.append(result)
    finally:
        if slurm_started:
            subprocess.run(["bash", "scripts/slurm-stop.sh"], cwd=ROOT, env={**os.environ, "SLURM_BASE": base})

    by_run = {r["run"]: r for r in results}
    summary = {}
    for n in (1, 2):
        local, slurm = by_run.get(f"local:{n}"), by_run.get(f"slurm:{n}")
        if local and slurm:
            summary[f"slurm_overhead_s_{n}"] = round(slurm["wall_s"] - local["wall_s"], 2)
            summary[f"slurm_vs_local_wall_ratio_{n}"] = round(slurm["wall_s"] / local["wall_s"], 2)
    if "tiles" in by_run:
        for run, result in by_run.items():
            if run != "tiles":
                summary[f"{run}_cost_vs_tiles"] = round(result["worker_s_per_mpx"] / by_run["tiles"]["worker_s_per_mpx"], 2)
    report = {"size": a.size, "chunk_size": a.chunk_size, "data": meta, "results": results, "summary": summary}
    print(json.dumps(summary, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
