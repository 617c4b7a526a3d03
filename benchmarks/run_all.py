#!/usr/bin/env python3
"""Every benchmark of jeo-tiler, side by side with titiler on the same data, in ONE command, ONE table (issue 7).

    .venv/bin/python benchmarks/run_all.py [--quick]      # measured on the shared 2-core box: full 26 min, --quick 6-13 min

What it does (see benchmarks/README.md):
1. creates the titiler venv (/tmp/titiler-venv: titiler.application 2.x, cogeo-mosaic, uvicorn) if missing;
2. generates the synthetic set if missing (/tmp/jeo-benchdata: 20 × 4096² px; --quick: /tmp/jeo-benchdata-quick,
   8 × 2048² px) with ../shared/bench/make_data.py and converts it to STAC (benchmarks/stac_from_bench.py);
3. ingests it and the real scenes (../shared/data) into a temporary JEO_HOME, loads the numba kernels once;
4. runs, with ../shared/bench/bench_server.py (a fresh server per case, page cache dropped):
   single-COG true colour and NDVI (1 and 2 workers, synthetic + real; the load generator on a core of its
   own where there are 3+ cores), true colour from the 4-band COG as a multi-band asset (`assets=visual`) vs
   titiler's `/cog` on the same file, 20-scene composites (median with cloud masks vs titiler's MosaicJSON median
   without, first, low zoom, real 5-date median with SCL), the viewport fill (viewport.py), the cost growth
   over 5-40 scenes (growth.py, its own 40-scene set), the cached tile, first request after start; plus the
   Server-Timing breakdown and the rasterio-only I/O floor;
5. runs benchmarks/exports.py at 4, 16, 64 Mpx (2 local workers) and 1 vs 2 SLURM tasks at 64 Mpx, then
   benchmarks/kernels.py and render.py (they print their own tables);
6. prints one table with ratios and writes it, the machine details and all raw JSON to
   /tmp/jeo-bench-results/<run>/ (summary.md, summary.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_PY = REPO / ".venv" / "bin" / "python"

if Path(sys.prefix).resolve() != (REPO / ".venv").resolve() and VENV_PY.exists() and not os.environ.get("JEO_BENCH_NO_REEXEC"):
    # always run inside jeo-tiler's dev venv (rasterio, numpy, the project itself)
    os.environ["JEO_BENCH_NO_REEXEC"] = "1"
    os.execv(str(VENV_PY), [str(VENV_PY), __file__, *sys.argv[1:]])

sys.path.insert(0, str(HERE))
import composites as C  # noqa: E402
import growth  # noqa: E402
import tiles as T  # noqa: E402
import viewport  # noqa: E402


def machine(ctx: T.Context) -> dict:
    def sh(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO).stdout.strip()
        except OSError:
            return ""

    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = f"{int(open('/proc/meminfo').readline().split()[1]) / 2**20:.0f} GiB"
    except (OSError, ValueError):
        pass
    import numba
    import numpy
    import rasterio
    import rio_tiler

    versions = {"python": platform.python_version(), "numpy": numpy.__version__, "numba": numba.__version__,
                "rasterio": rasterio.__version__, "GDAL": rasterio.__gdal_version__, "rio-tiler": rio_tiler.__version__}
    try:
        import importlib.metadata as md

        versions["titiler.core (jeo venv)"] = md.version("titiler.core")
        versions["uvicorn (jeo venv)"] = md.version("uvicorn")
    except Exception:  # noqa: BLE001
        pass
    return dict(
        host=platform.node(), os=sh("sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"), kernel=platform.release(),
        cpu=cpu, cores=os.cpu_count(), memory=mem, loadavg_start=os.getloadavg(),
        git=sh("git", "rev-parse", "--short", "HEAD") + (" (+ uncommitted changes)" if sh("git", "status", "--porcelain") else ""),
        jeo_versions=versions, titiler_versions=T.titiler_versions(),
        synthetic=f"{len(ctx.synth['item_ids'])} scenes × {ctx.synth.get('size')}² px ({ctx.synth['data']})",
        profile=dict(quick=ctx.profile.quick, duration_s=ctx.profile.duration, warmup_s=ctx.profile.warmup,
                     latency_tiles=ctx.profile.latency_max, per_zoom=ctx.profile.per_zoom,
                     concurrency=ctx.profile.concurrency, settle_cap_s=ctx.profile.settle_cap),
    )


def special_rows(ctx: T.Context, single: dict, comp: dict) -> None:
    """First request after start and worker scaling, from the runs above."""
    def first(res, name):
        c = T.case_result(res or {}, name)
        return None if c is None else dict(p50=c.get("first_request_ms"), startup_s=c.get("server_startup_s"))

    s1 = single.get("synth-w1", {})
    pairs = [("first request after start: true colour", "synthetic", s1.get("ours"), s1.get("theirs"), "rgb"),
             ("first request after start: composite median", "synthetic", comp.get("ours"), comp.get("theirs"),
              "median")]
    for title, data, ours, theirs, case in pairs:
        a, b = first(ours, case), first(theirs, case)
        if a or b:
            note = (f"ms, fresh process, page cache dropped; server start-up {T.fmt((a or {}).get('startup_s'), 1)} s "
                    f"vs {T.fmt((b or {}).get('startup_s'), 1)} s")
            ctx.results.append(dict(section="first", case=title, data=data, workers=1, clients="1st", ours=a,
                                    theirs=b, note=note))
    s2 = single.get("synth-w2", {})
    for case, title in (("rgb", "true colour"), ("ndvi", "NDVI")):
        vals = {}
        for who in ("ours", "theirs"):
            r1, r2 = T.case_result(s1.get(who) or {}, case), T.case_result(s2.get(who) or {}, case)
            if r1 and r2:
                t1 = next((t for t in r1["throughput"] if t["concurrency"] == 8), None)
                t2 = next((t for t in r2["throughput"] if t["concurrency"] == 8), None)
                if t1 and t2:
                    vals[who] = dict(w1=t1["rps"], w2=t2["rps"])
        if vals:
            o, t = vals.get("ours", {}), vals.get("theirs", {})
            ctx.results.append(dict(
                section="workers", case=f"1 → 2 workers, {title} (req/s w1 → w2)", data="synthetic", workers="1→2",
                clients=8, ours=dict(rps=o.get("w2")), theirs=dict(rps=t.get("w2")),
                note=f"w2/w1 speed-up: jeo ×{T.ratio(o.get('w2'), o.get('w1'))} ({o.get('w1')}→{o.get('w2')} req/s), "
                     f"titiler ×{T.ratio(t.get('w2'), t.get('w1'))} ({t.get('w1')}→{t.get('w2')} req/s); "
                     f"{T.core_note(*T.core_split())}; target ≥ ×1.7 (issue 14)"))


def run_other(script: str, quick: bool, timeout: int) -> str | None:
    """benchmarks/kernels.py or render.py if present: their own table, verbatim."""
    path = HERE / script
    if not path.exists():
        return None
    T.log(f"\n## {script} (if present; prints its own table)")
    args = [str(VENV_PY), str(path)] + (["--quick"] if quick else [])
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        text = out.stdout + (f"\n[exit {out.returncode}] {out.stderr[-2000:]}" if out.returncode else "")
    except subprocess.TimeoutExpired:
        text = f"[timed out after {timeout} s]"
    T.log(text)
    return text


EXPORT_SIZES = {False: (2048, 4096, 8192), True: (1024, 2048, 4096)}  # 4, 16, 64 Mpx; quick 1, 4, 16


def run_exports(ctx: T.Context, timeout: int) -> dict:
    """benchmarks/exports.py at each size of EXPORT_SIZES with 2 local workers (Mpx/s), one SLURM task vs two at
    the largest, and the cost of the same area as tiles at the smallest: rows of the table."""
    sizes = EXPORT_SIZES[ctx.profile.quick]
    T.log(f"\n## exports: median composite at {', '.join(f'{s}²' for s in sizes)} px (benchmarks/exports.py)")
    raw = {}
    for size in sizes:
        runs = ["local:2"] + (["slurm:1", "slurm:2"] if size == sizes[-1] else []) + (["tiles"] if size == sizes[0] else [])
        out = ctx.out / f"exports-{size}.json"
        chunk = max(256, size // 4 // 256 * 256)  # 16 chunks; JEO_EXPORT_CHUNK_SIZE is a multiple of 256
        args = [str(VENV_PY), str(HERE / "exports.py"), "--data", ctx.synth["data"], "--size", str(size),
                "--chunk-size", str(chunk), "--runs", ",".join(runs), "--tile-samples",
                "8" if ctx.profile.quick else "16", "--out", str(out)]
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        except subprocess.TimeoutExpired:
            T.log(f"  {size}²: timed out after {timeout} s")
            continue
        (ctx.work / f"exports-{size}.log").write_text(done.stdout + done.stderr)
        if done.returncode or not out.exists():
            T.log(f"  {size}²: failed ({done.returncode}): {done.stderr[-1500:]}")
            continue
        report = json.loads(out.read_text())
        raw[size] = report
        by_run = {r["run"]: r for r in report["results"]}
        mpx = size * size / 1e6
        data = f"synthetic, {size}² px ({mpx:.3g} Mpx), chunks {chunk}²"
        if "local:2" in by_run:
            r = by_run["local:2"]
            note = (f"{r['mpx_per_s']} Mpx/s ({r['wall_s']} s wall, {r['chunks']} chunks), worker s per Mpx "
                    f"{r['worker_s_per_mpx']}")
            if "tiles" in by_run:
                note += f" (as 256 px tiles in one process: {by_run['tiles']['worker_s_per_mpx']})"
            ctx.results.append(dict(section="export", case="export Mpx/s, 2 local workers (jeo-tiler only)", data=data,
                                    workers=2, clients="–", ours=None, theirs=None, note=note))
        if "slurm:1" in by_run and "slurm:2" in by_run:
            one, two = by_run["slurm:1"], by_run["slurm:2"]
            note = (f"1 task {one['wall_s']} s ({one['mpx_per_s']} Mpx/s), 2 tasks {two['wall_s']} s "
                    f"({two['mpx_per_s']} Mpx/s): ×{T.ratio(one['wall_s'], two['wall_s'])}; target ≥ ×1.8 (issue 14)")
            ctx.results.append(dict(section="export", case="2 SLURM tasks vs 1 (jeo-tiler only)", data=data,
                                    workers="1→2", clients="–", ours=None, theirs=None, note=note))
        T.log(f"  {size}²: " + "; ".join(f"{r['run']} {r.get('wall_s', r.get('s_per_tile'))} s" for r in report["results"]))
    return raw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 scenes of 2048² px, 3 s windows, fewer variants")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: "
                    "single,visual,composite,real,viewport,growth,cache,exports,other")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default /tmp/jeo-bench-results/<run>)")
    a = ap.parse_args()
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    t0 = time.time()
    ctx = T.setup(a.quick, a.out)
    info = machine(ctx)
    T.log(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory']}, load {info['loadavg_start']}")
    single, comp, real, cached, other = {}, {}, {}, {}, {}
    try:
        if "single" not in skip:
            single = T.run_single_scene(ctx, workers_list=(1, 2), real="real" not in skip)
        if "visual" not in skip:
            single.update(T.run_visual(ctx))
        if "composite" not in skip:
            comp = C.run_synthetic(ctx)
        if "real" not in skip and "composite" not in skip:
            real = C.run_real(ctx)
        if "cache" not in skip:
            cached = C.run_cached(ctx)
        special_rows(ctx, single, comp)
        if "viewport" not in skip:
            viewport.run(ctx)
        if "growth" not in skip:
            growth.run(ctx)
        if "exports" not in skip:
            run_exports(ctx, 900 if a.quick else 2400)
        if "other" not in skip:
            for script in ("kernels.py", "render.py"):
                text = run_other(script, a.quick, 240 if a.quick else 420)
                if text is not None:
                    other[script] = text
    finally:
        shutil.rmtree(ctx.home, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()
    info["wall_minutes"] = round((time.time() - t0) / 60, 1)

    order = {"single": 0, "composite": 1, "viewport": 2, "growth": 3, "cache": 4, "first": 5, "workers": 6, "export": 7}
    rows = sorted(ctx.results, key=lambda r: order.get(r["section"], 9))
    table = T.markdown_table(rows)
    parts = [f"# jeo-tiler vs titiler — {'quick' if a.quick else 'full'} run {time.strftime('%Y-%m-%d %H:%M')}", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory']}; {info['os']}; load average "
             f"{', '.join(f'{v:.1f}' for v in info['loadavg_start'])} at start, "
             f"{', '.join(f'{v:.1f}' for v in info['loadavg_end'])} at end; {info['wall_minutes']} min; git {info['git']}",
             f"Synthetic set: {info['synthetic']}. Windows: {ctx.profile.warmup} s warm-up + {ctx.profile.duration} s "
             "measured per concurrency level.", "", table]
    if comp.get("server_timing") or real.get("server_timing"):
        st = dict(comp.get("server_timing") or {})
        st.update({f"real {k}": v for k, v in (real.get("server_timing") or {}).items()})
        parts += ["", "Server-Timing of jeo-tiler composites (sequential, 1 worker, mean ms per stage):", "",
                  C.timing_table(st)]
    if comp.get("io_floor"):
        parts += ["", "I/O floor (rasterio only, same windows as the composite tiles, warm page cache):", "",
                  C.floor_table({**comp["io_floor"], **{f"low zoom: {k}": v for k, v in
                                                        comp.get("io_floor_lowzoom", {}).items()}})]
    if cached.get("probe"):
        p = cached["probe"]
        parts += ["", f"Cache probe (same composite tile twice): X-Cache {p['first']['x_cache']} "
                  f"{p['first']['ms']} ms, then {p['second']['x_cache']} {p['second']['ms']} ms."]
    for script, text in other.items():
        parts += ["", f"## {script}", "", "```", text.strip(), "```"]
    summary = "\n".join(parts)
    (ctx.out / "summary.md").write_text(summary + "\n")
    with open(ctx.out / "summary.json", "w") as f:
        json.dump(dict(machine=info, rows=rows, server_timing=comp.get("server_timing"),
                       real_server_timing=real.get("server_timing"), io_floor=comp.get("io_floor"),
                       io_floor_lowzoom=comp.get("io_floor_lowzoom"), cache_probe=cached.get("probe")),
                  f, indent=1, default=str)
    print("\n" + summary)
    print(f"\nraw bench_server JSON, server logs and summary.md/json: {ctx.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
