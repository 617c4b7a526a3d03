#!/usr/bin/env python3
"""Composite-tile benchmark, jeo-tiler vs titiler's MosaicJSON, side by side in one run (issue 5).

On the synthetic 20-scene set (../shared/bench/make_data.py, see stac_from_bench.py), same tile list for both:

* jeo-tiler `method=median` WITH the per-scene cloud masks (`cloud_mask=cloud_probability:0.5`, 20 scenes)
  vs titiler `/mosaicjson/tiles/…?url=mosaic.json&pixel_selection=median` (no masks: titiler's MosaicJSON has no
  per-scene cloud-mask input);
* jeo-tiler `method=first` (cloud-masked, newest first, reads in batches until every pixel is filled) vs titiler
  `pixel_selection=first` (first non-nodata pixel in MosaicJSON order);
* (full runs) titiler median over `mosaic_masked.json` (make_data.py's VRTs whose mask band hides the clouds:
  the closest titiler gets to a masked median);
* a low-zoom composite (z9-10: every scene read from overviews);
* the I/O floor: the same windows read with rasterio alone (no server, no warping, no compositing), 1 and 2
  threads, for jeo-tiler's layout (3 single-band COGs + mask per scene) and titiler's (3 bands of the 4-band COG);
* the kernel share of jeo-tiler's tile time, from its `Server-Timing` (catalog, read, mask, kernel, render) and
  `X-Items-Read`, on a separate sequential pass.

Also used by run_all.py: the real 5-date Sentinel-2 L2A set (jeo `cloud_mask=scl` vs a titiler MosaicJSON over one
VRT per date) and the cached-tile case.

    .venv/bin/python benchmarks/composites.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiles as T  # noqa: E402

MASK = "cloud_probability:0.5"
JEO_COMPOSITE = ("/collections/{cid}/tiles/WebMercatorQuad/{z}/{x}/{y}.png?assets=red,green,blue&rescale=0,0.3"
                 "&method={method}&cloud_mask={mask}&max_items=20")
TT_MOSAIC = ("/mosaicjson/tiles/WebMercatorQuad/{z}/{x}/{y}.png?url={mosaic}&pixel_selection={method}"
             "&bidx=3&bidx=2&bidx=1&rescale=0,3000")


def jeo_t(method: str, mask: str = MASK) -> str:
    return JEO_COMPOSITE.replace("{method}", method).replace("{mask}", mask)


def tt_t(method: str) -> str:
    return TT_MOSAIC.replace("{method}", method)


def zooms_for(ctx: T.Context) -> tuple[str, str]:
    size = ctx.synth.get("size") or 4096
    return ("12-14", "9-10") if size >= 4096 else ("12-13", "9-10")


# ----------------------------------------------------------------------------------------------- Server-Timing


def probe_timings(ctx: T.Context, spec: T.ServerSpec, label: str, cases: dict[str, str], tiles, variables: dict,
                  passes: int = 2, tiles_per_case: dict | None = None) -> dict:
    """Sequential requests on one server; Server-Timing stages, X-Items-Read, client ms (last pass only)."""
    out = {}
    with T.RunningServer(ctx, spec, label) as srv:
        for name, template in cases.items():
            rows = []
            for k in range(passes):
                rows = []
                for tile in (tiles_per_case or {}).get(name, tiles):
                    st, h, _, ms = T.get(spec.base, T.fill(template, tile, variables))
                    rows.append(dict(status=st, ms=ms, timing=T.server_timing(h.get("server-timing")),
                                     items_read=h.get("x-items-read"), cache=h.get("x-cache")))
            ok = [r for r in rows if r["status"] == 200]
            stages = sorted({s for r in ok for s in r["timing"]})
            mean = {s: statistics.fmean(r["timing"].get(s, 0.0) for r in ok) for s in stages} if ok else {}
            total_server = sum(mean.values())
            client = statistics.fmean(r["ms"] for r in ok) if ok else None
            items = [int(r["items_read"]) for r in ok if r["items_read"] not in (None, "")]
            out[name] = dict(
                n=len(ok), errors=len(rows) - len(ok), stages_mean_ms={s: round(v, 1) for s, v in mean.items()},
                server_total_ms=round(total_server, 1), client_mean_ms=round(client, 1) if client else None,
                kernel_share_of_server=round(mean.get("kernel", 0) / total_server, 3) if total_server else None,
                kernel_share_of_client=round(mean.get("kernel", 0) / client, 3) if client else None,
                items_read_mean=round(statistics.fmean(items), 1) if items else None,
                status_counts={str(s): sum(1 for r in rows if r["status"] == s) for s in {r["status"] for r in rows}},
            )
            o = out[name]
            log_stages = ", ".join(f"{s} {v:.0f}" for s, v in o["stages_mean_ms"].items())
            T.log(f"    Server-Timing {name}: client {o['client_mean_ms']} ms; server {log_stages} ms; "
                  f"kernel share {o['kernel_share_of_server']} of server time; items read {o['items_read_mean']}")
    return out


# ----------------------------------------------------------------------------------------------- I/O floor


def _tile_windows(tile, ds_transform, ds_crs, ds_width, ds_height, size=256):
    """The dataset window covering a WebMercatorQuad tile and the output shape for a `size`² tile (clipped)."""
    import mercantile
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window, from_bounds

    z, x, y = tile
    b = mercantile.xy_bounds(x, y, z)
    left, bottom, right, top = transform_bounds("EPSG:3857", ds_crs, b.left, b.bottom, b.right, b.top)
    win = from_bounds(left, bottom, right, top, ds_transform)
    full_w, full_h = win.width, win.height
    clipped = win.intersection(Window(0, 0, ds_width, ds_height))
    ow = max(1, round(size * clipped.width / full_w))
    oh = max(1, round(size * clipped.height / full_h))
    return clipped, (oh, ow)


def io_floor(ctx: T.Context, tiles, threads_list=(1, 2)) -> dict:
    """Read, for each tile, the windows of every scene that a composite reads — nothing else. Per-tile wall time."""
    import rasterio
    from rasterio.enums import Resampling

    manifest = ctx.synth["manifest"]
    data = Path(ctx.synth["data"])
    scenes = [s["name"] for s in manifest["scenes"]]
    layouts = {
        "jeo layout: 3 single-band COGs + mask": [
            [(str(data / "bands" / f"{n}_{b}.tif"), [1]) for b in ("B04", "B03", "B02")]
            + [(str(data / f"{n}_cloud.tif"), [1])] for n in scenes],
        "titiler layout: 4-band COG, bands 3,2,1": [[(str(data / f"{n}.tif"), [3, 2, 1])] for n in scenes],
    }
    with rasterio.open(str(data / f"{scenes[0]}.tif")) as ds:
        grid = (ds.transform, ds.crs, ds.width, ds.height)
    windows = {t: _tile_windows(t, *grid) for t in tiles}

    def read_scene(job, tile):
        win, shape = windows[tile]
        for path, idx in job:
            with rasterio.open(path) as ds:
                ds.read(idx, window=win, out_shape=(len(idx), *shape), resampling=Resampling.nearest)

    out = {}
    # rasterio.Env takes GDAL_CACHEMAX as an int in BYTES (256 would mean 256 bytes: 100× slower reads)
    env = {k: int(v) * 2**20 if k == "GDAL_CACHEMAX" and int(v) < 100000 else v for k, v in ctx.gdal_env.items()}
    with rasterio.Env(**env):
        for layout, jobs in layouts.items():
            for n in threads_list:
                with ThreadPoolExecutor(n) as pool:
                    for tile in tiles[:2]:  # warm-up (page cache, GDAL init)
                        list(pool.map(read_scene, jobs, [tile] * len(jobs)))
                    ms = []
                    t_all = time.perf_counter()
                    for tile in tiles:
                        t0 = time.perf_counter()
                        list(pool.map(read_scene, jobs, [tile] * len(jobs)))
                        ms.append((time.perf_counter() - t0) * 1000)
                    wall = time.perf_counter() - t_all
                s = sorted(ms)
                key = f"{layout}, {n} thread{'s' if n > 1 else ''}"
                out[key] = dict(tiles=len(ms), p50=round(statistics.median(s), 1),
                                p95=round(s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))], 1),
                                tiles_per_s=round(len(ms) / wall, 2), scenes=len(jobs))
                T.log(f"    I/O floor {key}: p50 {out[key]['p50']} ms p95 {out[key]['p95']} ms, "
                      f"{out[key]['tiles_per_s']} tiles/s ({len(jobs)} scenes)")
    return out


# ----------------------------------------------------------------------------------------------- synthetic


def run_synthetic(ctx: T.Context, workers: int = 1) -> dict:
    p = ctx.profile
    cid = ctx.synth["collection"]
    bounds = ctx.synth["bounds"]
    high, low = zooms_for(ctx)
    data = ctx.synth["data"]
    variables = {"cid": cid, "mosaic": ctx.synth["mosaic"], "mosaic_masked": ctx.synth["mosaic_masked"]}
    n_scenes = len(ctx.synth["item_ids"])
    lat = max(4, p.latency_max // 2)
    T.log(f"\n## composites, synthetic {n_scenes} scenes, z{high} and z{low}")
    cases = {"median": (jeo_t("median"), tt_t("median")),
             "median_lowzoom": (jeo_t("median"), tt_t("median"), low)}
    if not p.quick:
        cases["first"] = (jeo_t("first"), tt_t("first"))
        cases["median_masked_vrt"] = (None, tt_t("median").replace("{mosaic}", "{mosaic_masked}"))
    res = T.bench_pair(ctx, f"composite-synth-w{workers}",
                       T.jeo_server(ctx, workers, evict_dir=str(Path(data) / "bands")),
                       T.titiler_server(ctx, workers, evict_dir=data), cases, bounds, high, variables,
                       latency_max=lat, rounds=p.composite_rounds,
                       max_window=p.composite_max_window)
    raw = dict(ours=res["ours"], theirs=res["theirs"])
    label = f"{n_scenes}-scene composite"
    ours, theirs = res["ours"], res["theirs"]
    T.add_row(ctx, "composite", f"{label} median (jeo: cloud masks; titiler: none)", f"synthetic z{high}", workers,
              T.case_result(ours, "median"), T.case_result(theirs, "median"))
    if T.case_result(theirs, "median_masked_vrt"):
        T.add_row(ctx, "composite", f"{label} median (titiler: masked-VRT mosaic)", f"synthetic z{high}", workers,
                  T.case_result(ours, "median"), T.case_result(theirs, "median_masked_vrt"),
                  note="titiler over make_data.py's mosaic_masked.json")
    if T.case_result(ours, "first"):
        T.add_row(ctx, "composite", f"{label} first (jeo: cloud masks; titiler: none)", f"synthetic z{high}",
                  workers, T.case_result(ours, "first"), T.case_result(theirs, "first"))
    T.add_row(ctx, "composite", f"low-zoom {label} median (jeo: masks)", f"synthetic z{low}", workers,
              T.case_result(ours, "median_lowzoom"), T.case_result(theirs, "median_lowzoom"))

    tl_high = T.tile_paths(bounds, high, p.per_zoom)[:lat]
    tl_low = T.tile_paths(bounds, low, p.per_zoom)[:lat]
    T.log("  Server-Timing pass (jeo-tiler, 1 worker, sequential, 2nd pass reported)")
    probe = {"median": jeo_t("median"), "median_lowzoom": jeo_t("median")}
    if not p.quick:
        probe["first"] = jeo_t("first")
    st = probe_timings(ctx, T.jeo_server(ctx, 1), "timing-synth", probe, tl_high, variables,
                       tiles_per_case={"median_lowzoom": tl_low})
    raw["server_timing"] = st
    T.log("  I/O floor (rasterio only, same windows, warm page cache)")
    raw["io_floor"] = io_floor(ctx, tl_high)
    raw["io_floor_lowzoom"] = io_floor(ctx, tl_low, threads_list=(2,))
    return raw


# ----------------------------------------------------------------------------------------------- real data

REAL_COLLECTION = "sentinel-2-l2a-timeseries"
VRT_BAND = """  <VRTRasterBand dataType="UInt16" band="{b}">
    <NoDataValue>0</NoDataValue>
    <SimpleSource>
      <SourceFilename relativeToVRT="0">{src}</SourceFilename>
      <SourceBand>1</SourceBand>
    </SimpleSource>
  </VRTRasterBand>
"""


def write_mosaic(path: Path, urls: list[str]) -> None:
    """A MosaicJSON over `urls` at `path`, written by cogeo-mosaic in the titiler venv."""
    code = ("import sys; from cogeo_mosaic.mosaic import MosaicJSON; from cogeo_mosaic.backends import MosaicBackend\n"
            "m = MosaicJSON.from_urls(sys.argv[2:], quiet=True)\n"
            "with MosaicBackend(sys.argv[1], mosaic_def=m) as b: b.write(overwrite=True)")
    subprocess.run([str(T.TITILER_VENV / "bin" / "python"), "-c", code, str(path), *urls], check=True,
                   capture_output=True)


def real_mosaic(ctx: T.Context) -> tuple[str, list[float]]:
    """A MosaicJSON (for titiler) over one 3-band VRT (B04, B03, B02 single-band COGs) per real L2A date."""
    import rasterio

    coll = T.SHARED_DATA / REAL_COLLECTION
    vrts = []
    for item_dir in sorted(p for p in coll.iterdir() if p.is_dir()):
        with rasterio.open(item_dir / "B04.tif") as ds:
            n_w, n_h, gt, crs = ds.width, ds.height, ds.transform.to_gdal(), ds.crs.to_wkt()
        bands = "".join(VRT_BAND.format(b=i + 1, src=item_dir / f"{b}.tif") for i, b in enumerate(("B04", "B03", "B02")))
        text = (f'<VRTDataset rasterXSize="{n_w}" rasterYSize="{n_h}">\n  <SRS>{crs}</SRS>\n'
                f"  <GeoTransform>{', '.join(repr(float(v)) for v in gt)}</GeoTransform>\n{bands}</VRTDataset>\n")
        path = ctx.work / f"real_{item_dir.name}.vrt"
        path.write_text(text)
        vrts.append(str(path))
    mosaic = ctx.work / "real_mosaic.json"
    write_mosaic(mosaic, vrts)
    with open(coll / "collection.json") as f:
        bbox = json.load(f)["extent"]["spatial"]["bbox"][0]
    dx, dy = (bbox[2] - bbox[0]) * 0.03, (bbox[3] - bbox[1]) * 0.03
    return str(mosaic), [bbox[0] + dx, bbox[1] + dy, bbox[2] - dx, bbox[3] - dy]


def run_real(ctx: T.Context, workers: int = 1) -> dict:
    mosaic, bounds = real_mosaic(ctx)
    variables = {"cid": REAL_COLLECTION, "mosaic": mosaic}
    lat = max(4, ctx.profile.latency_max // 2)
    per_zoom = min(ctx.profile.per_zoom, 16)
    T.log("\n## composites, real Sentinel-2 L2A 33TWM, 5 dates (z9-11)")
    res = T.bench_pair(ctx, f"composite-real-w{workers}", T.jeo_server(ctx, workers), T.titiler_server(ctx, workers),
                       {"median": (jeo_t("median", "scl"), tt_t("median"))}, bounds, "9-11", variables,
                       per_zoom=per_zoom, latency_max=lat, rounds=ctx.profile.composite_rounds,
                       max_window=ctx.profile.composite_max_window)
    T.add_row(ctx, "composite", "5-date composite median (jeo: SCL mask; titiler: none)", "real S2 L2A 120 m",
              workers, T.case_result(res["ours"], "median"), T.case_result(res["theirs"], "median"),
              note="titiler: MosaicJSON over per-date VRTs")
    tl = T.tile_paths(bounds, "9-11", per_zoom)[:lat]
    st = probe_timings(ctx, T.jeo_server(ctx, 1), "timing-real", {"median": jeo_t("median", "scl")}, tl, variables)
    return dict(ours=res["ours"], theirs=res["theirs"], server_timing=st)


# ----------------------------------------------------------------------------------------------- cached tile


def run_cached(ctx: T.Context, workers: int = 1) -> dict:
    """jeo-tiler with its tile cache on vs titiler (no tile cache) on a small tile list requested again and again.

    The tile list is small enough that the cold pass covers all of it: jeo-tiler's cold pass fills the cache
    (misses), its warm pass and throughput windows are hits; titiler recomputes every tile."""
    p = ctx.profile
    cid = ctx.synth["collection"]
    bounds = ctx.synth["bounds"]
    high, _ = zooms_for(ctx)
    variables = {"cid": cid, "mosaic": ctx.synth["mosaic"]}
    cache_dir = ctx.work / f"tile-cache-{time.time_ns()}"
    per_zoom = 2 if p.quick else 3
    T.log("\n## cached composite tile (jeo-tiler tile cache on)")
    tl = T.tile_paths(bounds, high, per_zoom)
    probe = {}
    with T.RunningServer(ctx, T.jeo_server(ctx, 1, cache=cache_dir / "probe"), "cache-probe") as srv:
        path = T.fill(jeo_t("median"), tl[0], variables)
        for k in ("first", "second"):
            st, h, _, ms = T.get(srv.spec.base, path)
            probe[k] = dict(status=st, x_cache=h.get("x-cache"), ms=round(ms, 1), server_timing=h.get("server-timing"))
    T.log(f"    same tile twice: X-Cache {probe['first']['x_cache']} {probe['first']['ms']} ms, then "
          f"{probe['second']['x_cache']} {probe['second']['ms']} ms ({probe['second']['server_timing']})")
    res = T.bench_pair(ctx, f"composite-cached-w{workers}", T.jeo_server(ctx, workers, cache=cache_dir / "bench"),
                       T.titiler_server(ctx, workers), {"median": (jeo_t("median"), tt_t("median"))}, bounds, high,
                       variables, per_zoom=per_zoom, latency_max=1000, rounds=p.composite_rounds,
                       max_window=p.composite_max_window)
    if probe["second"].get("x_cache") != "hit":
        note = f"NO CACHE HIT: X-Cache {probe['second'].get('x_cache')!r}"
    else:
        note = f"jeo: X-Cache hit after the cold pass ({len(tl)} tiles); titiler recomputes"
    T.add_row(ctx, "cache", "cached composite tile (median)", f"synthetic z{high}", workers,
              T.case_result(res["ours"], "median"), T.case_result(res["theirs"], "median"), note=note)
    return dict(probe=probe, ours=res["ours"], theirs=res["theirs"])


# ----------------------------------------------------------------------------------------------- report


def timing_table(st: dict) -> str:
    lines = ["| composite | client mean ms | catalog | read | mask | kernel | render | other stages | kernel share "
             "(of server time) | scenes read |", "|" + "---|" * 10]
    for name, o in st.items():
        s = dict(o["stages_mean_ms"])
        main = [s.pop(k, None) for k in ("catalog", "read", "mask", "kernel", "render")]
        other = ", ".join(f"{k} {v:.0f}" for k, v in s.items())
        lines.append(f"| {name} | {T.fmt(o['client_mean_ms'])} | " + " | ".join(T.fmt(v, 1) for v in main)
                     + f" | {other} | {T.fmt((o['kernel_share_of_server'] or 0) * 100, 1)} % | {o['items_read_mean']} |")
    return "\n".join(lines)


def floor_table(fl: dict, ours_rows: list[dict] | None = None) -> str:
    lines = ["| I/O floor (rasterio only) | p50 ms | p95 ms | tiles/s |", "|---|---|---|---|"]
    for k, v in fl.items():
        lines.append(f"| {k} | {v['p50']} | {v['p95']} | {v['tiles_per_s']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--real", action="store_true", help="also the real 5-date L2A composite")
    a = ap.parse_args()
    ctx = T.setup(a.quick)
    raw = run_synthetic(ctx)
    if a.real:
        raw["real"] = run_real(ctx)
    text = [T.markdown_table(ctx.results), "", "Server-Timing (jeo-tiler, sequential, means)", "",
            timing_table(raw["server_timing"]), "", floor_table(raw["io_floor"]), "",
            floor_table(raw["io_floor_lowzoom"])]
    out = "\n".join(text)
    (ctx.out / "composites.md").write_text(out + "\n")
    with open(ctx.out / "composites_raw.json", "w") as f:
        json.dump(dict(rows=ctx.results, **{k: v for k, v in raw.items() if k in ("server_timing", "io_floor",
                                                                                 "io_floor_lowzoom")}), f, indent=1)
    print("\n" + out)
    print(f"\nraw JSON and server logs: {ctx.out}")
    shutil.rmtree(ctx.home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
