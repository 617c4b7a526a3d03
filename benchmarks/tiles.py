#!/usr/bin/env python3
"""Single-scene tile benchmark, jeo-tiler vs titiler, side by side in one run (issue 3).

Same tile list (WebMercatorQuad, drawn by ../shared/bench/bench_server.py from the scene's inner bounds), same
files, same machine, same HTTP stack (uvicorn with httptools and uvloop, TCP_NODELAY on the listener), same GDAL
environment (`tiler.serve.GDAL_ENV`) for both servers:

* true colour: jeo `…/items/{id}/tiles/…png?assets=red,green,blue&rescale=0,0.3` (physical reflectance)
  vs titiler `/stac/tiles/…?url=<item.json>&assets=red&assets=green&assets=blue&rescale=0,3000` (DN):
  the very same single-band COGs through the very same STAC item;
* NDVI: jeo `expression=(nir-red)/(nir+red)&rescale=-1,1&colormap_name=rdylgn` vs titiler
  `assets=red&assets=nir&expression=(b2-b1)/(b2+b1)`;
* (full runs) titiler `/cog` on make_data.py's original 4-band COG (`bidx=3,2,1`; NDVI `(b4-b3)/(b4+b3)`):
  same pixels, band-interleaved file.

Each case runs with 1 and 2 workers; bench_server.py measures first request, a cold pass (fresh server, page
cache dropped), a warm pass and closed-loop throughput at 1 and 8 clients (p50/p95, req/s).

This file also holds the helpers every benchmark of this folder uses (titiler venv, data, ingest, servers,
bench_server.py runs, header probes, tables).

    .venv/bin/python benchmarks/tiles.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = (REPO.parent / "shared" / "bench").resolve()
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
VENV_PY = REPO / ".venv" / "bin" / "python"
JEO = REPO / ".venv" / "bin" / "jeo"
TITILER_VENV = Path(os.environ.get("TITILER_VENV", "/tmp/titiler-venv"))
TITILER_REQ = ["titiler.application>=2,<3", "cogeo-mosaic", "uvicorn[standard]"]
FULL_DATA = Path("/tmp/jeo-benchdata")
QUICK_DATA = Path("/tmp/jeo-benchdata-quick")
VISUAL = "visual"  # the synthetic items' multi-band asset: the 4-band COG (stac_from_bench --multiband)
RESULTS_DIR = Path(os.environ.get("JEO_BENCH_OUT", "/tmp/jeo-bench-results"))

# Copy of tiler.serve.GDAL_ENV, used only if that module cannot be imported (the real one wins).
_GDAL_ENV_FALLBACK = {
    "GDAL_CACHEMAX": "256",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": "50000000",
    "GDAL_BAND_BLOCK_CACHE": "HASHSET",
}

NODELAY_WRAPPER = '''"""uvicorn CLI with TCP_NODELAY on the listening socket (Linux passes it on to accepted sockets).

Written by jeo-tiler's benchmarks/tiles.py: stock `uvicorn --workers N` binds the listener itself without
TCP_NODELAY (uvicorn issue 3149); jeo-tiler's `jeo serve` sets it, so titiler gets the same here.
"""
import socket
import sys

import uvicorn
from uvicorn.config import Config

_bind = Config.bind_socket


def bind_socket(self):
    sock = _bind(self)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


Config.bind_socket = bind_socket

if __name__ == "__main__":
    sys.exit(uvicorn.main())
'''

# bench_server.py, called from ../shared/bench with two limits adapted to a shared, busy machine:
# settle() (wait for an idle CPU between phases) is capped, and server start-up may take longer than 120 s.
BENCH_SHIM = """
import sys
sys.path.insert(0, {bench_dir!r})
import bench_server as b
_settle = b.settle
b.settle = lambda max_wait=120, idle=0.85: _settle(min(max_wait, {settle_cap}), idle)
b.Server.__init__.__defaults__ = ({startup_timeout},)
sys.argv[0] = b.__file__
b.main()
"""


def log(*args):
    print(*args, flush=True)


# ----------------------------------------------------------------------------------------------- config


@dataclass
class Profile:
    """Durations and sizes of one run (quick or full)."""

    quick: bool
    duration: int  # seconds per measured throughput window
    warmup: int  # seconds of load before each window
    latency_max: int  # tiles in the cold and warm passes
    per_zoom: int  # distinct tiles per zoom in the tile list
    settle_cap: float  # seconds, max wait for an idle CPU between phases
    concurrency: str = "1,8"
    rounds: int = 2  # alternating measured windows per server and concurrency
    min_completions: int = 12  # a window lasts long enough for about this many responses (slow tiles)
    max_window: float = 15.0  # ... but at most this many seconds
    composite_rounds: int = 1  # composite tiles take seconds: one window per server and concurrency
    composite_max_window: float = 10.0
    data: Path = FULL_DATA
    scenes: int = 20
    size: int = 4096

    @classmethod
    def make(cls, quick: bool) -> Profile:
        if quick:
            return cls(True, duration=3, warmup=1, latency_max=8, per_zoom=12, settle_cap=1.5, rounds=1,
                       min_completions=6, max_window=6.0, composite_max_window=6.0, data=QUICK_DATA, scenes=8,
                       size=2048)
        return cls(False, duration=5, warmup=2, latency_max=16, per_zoom=30, settle_cap=4, rounds=2)


@dataclass
class Context:
    """Everything a benchmark needs: profile, data, catalog home, output folder."""

    profile: Profile
    synth: dict  # stac_from_bench summary (+ mosaic paths)
    home: Path  # JEO_HOME with both data sets ingested
    out: Path  # results folder of this run
    work: Path  # scratch (titiler wrapper, VRTs, logs)
    gdal_env: dict = field(default_factory=dict)
    results: list = field(default_factory=list)  # rows for the final table
    checks: list = field(default_factory=list)  # pixel-check lines


# ----------------------------------------------------------------------------------------------- setup


def ensure_titiler_venv() -> Path:
    """titiler.application 2.x + cogeo-mosaic + uvicorn in their own venv (created once). Returns its python."""
    py = TITILER_VENV / "bin" / "python"
    check = [str(py), "-c", "import titiler.application, titiler.mosaic, cogeo_mosaic, rio_cogeo, uvicorn"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return py
    log(f"creating the titiler venv {TITILER_VENV} (pip install {' '.join(TITILER_REQ)}) ...")
    t0 = time.time()
    base = shutil.which("python3") or sys.executable
    subprocess.run([base, "-m", "venv", str(TITILER_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *TITILER_REQ], check=True)
    subprocess.run(check, check=True)
    log(f"  done in {time.time() - t0:.0f} s")
    return py


def titiler_versions() -> dict:
    py = TITILER_VENV / "bin" / "python"
    code = ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
            "['titiler.application', 'titiler.core', 'rio-tiler', 'rasterio', 'cogeo-mosaic', 'uvicorn']}))")
    try:
        return json.loads(subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True).stdout)
    except (subprocess.CalledProcessError, ValueError):
        return {}


def ensure_synthetic_data(profile: Profile, data: Path | None = None, scenes: int | None = None,
                          size: int | None = None, collection: str = "bench-s2") -> dict:
    """make_data.py output (generated if missing) converted to STAC as `collection` (bands extracted once).

    Default: the profile's set; another folder, scene count and size for sets of other benchmarks."""
    data, scenes, size = data or profile.data, scenes or profile.scenes, size or profile.size
    if not (data / "scenes.json").exists() or not (data / "mosaic.json").exists():
        log(f"generating the synthetic set in {data}: {scenes} scenes of {size}² px "
            "(../shared/bench/make_data.py, one-off) ...")
        t0 = time.time()
        subprocess.run([str(TITILER_VENV / "bin" / "python"), str(BENCH_DIR / "make_data.py"), "--out", str(data),
                        "--jobs", "2", "--scenes", str(scenes), "--size", str(size)],
                       check=True, stdout=subprocess.DEVNULL)
        log(f"  done in {time.time() - t0:.0f} s")
    sys.path.insert(0, str(Path(__file__).parent))
    from stac_from_bench import convert

    summary = convert(str(data), collection_id=collection, log=log, multiband=VISUAL)
    summary["data"] = str(data)
    summary["mosaic"] = str(data / "mosaic.json")
    summary["mosaic_masked"] = str(data / "mosaic_masked.json")
    with open(data / "scenes.json") as f:
        manifest = json.load(f)
    summary["manifest"] = manifest
    return summary


def prewarm_numba() -> float:
    """Compile or load jeo-tiler's numba kernels once, so that server starts measure start-up, not compilation."""
    t0 = time.time()
    subprocess.run([str(VENV_PY), "-c", "import algorithms; algorithms.warmup()"], check=True, cwd=REPO)
    return time.time() - t0


def ingest(home: Path, catalogs: list[str], allowed_roots: list[str] = ()) -> None:
    """`jeo ingest` each catalog into `home`; `allowed_roots`: folders outside the catalogs that hold their files."""
    env = dict(os.environ, JEO_HOME=str(home), JEO_INGEST_ALLOWED_ROOTS=",".join(allowed_roots))
    for catalog in catalogs:
        out = subprocess.run([str(JEO), "ingest", catalog], env=env, capture_output=True, text=True, cwd=REPO)
        if out.returncode:
            raise RuntimeError(f"jeo ingest {catalog} failed: {out.stderr or out.stdout}")
        log(f"  jeo ingest {catalog}: {out.stdout.strip()}")


def gdal_env() -> dict:
    try:
        sys.path.insert(0, str(REPO))
        from tiler.serve import GDAL_ENV

        return dict(GDAL_ENV)
    except Exception:  # noqa: BLE001 - older trees
        return dict(_GDAL_ENV_FALLBACK)


def setup(quick: bool, out: Path | None = None) -> Context:
    """Venv, data, numba cache, catalog: everything before the first measurement."""
    profile = Profile.make(quick)
    ensure_titiler_venv()
    synth = ensure_synthetic_data(profile)
    run_id = time.strftime("%Y%m%d-%H%M%S") + ("-quick" if quick else "")
    out = out or RESULTS_DIR / run_id
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    (work / "nodelay_uvicorn.py").write_text(NODELAY_WRAPPER)
    home = Path(tempfile.mkdtemp(prefix="jeo-bench-home-"))
    log(f"JEO_HOME {home}; ingesting the synthetic and the real data sets ...")
    ingest(home, [synth["catalog"], str(SHARED_DATA / "catalog.json")], [synth["data"]])  # bands in <data>/bands
    log(f"numba kernels compiled/loaded in {prewarm_numba():.1f} s")
    return Context(profile=profile, synth=synth, home=home, out=out, work=work, gdal_env=gdal_env())


# ----------------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerSpec:
    """How to start one server: command and environment (bench_server.py starts and stops it)."""

    name: str  # "jeo" or "titiler"
    cmd: str
    env: dict
    port: int
    workers: int = 1
    evict_dir: str | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def core_split() -> tuple[str | None, set[int] | None]:
    """(CPU list for the servers' `taskset -c`, CPUs of the load generator): the load generator gets a core of its
    own when at least 2 others remain for the servers (and taskset exists); (None, None) otherwise."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 3 or not shutil.which("taskset"):
        return None, None
    return ",".join(map(str, cores[:-1])), {cores[-1]}


def core_note(server_cpus: str | None, client_cpus: set[int] | None) -> str:
    if client_cpus is None:
        return f"load generator and servers share the {os.cpu_count()} cores (< 3: no core to spare)"
    return f"servers on CPUs {server_cpus}, load generator pinned to CPU {','.join(map(str, sorted(client_cpus)))}"


@contextmanager
def pinned(cpus: set[int] | None):
    """Run the block, and the threads it starts, on `cpus` only (no-op for None)."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def jeo_server(ctx: Context, workers: int, cache: Path | None = None, evict_dir: str | None = None,
               cpus: str | None = None) -> ServerSpec:
    """`jeo serve` (sets TCP_NODELAY and the GDAL env itself); the tile cache is off unless `cache` is given;
    on `cpus` (a `taskset -c` list) if given."""
    port = free_port()
    env = {"JEO_HOME": str(ctx.home)}
    if cache is None:
        env["JEO_CACHE_SIZE_MB"] = "0"
    else:
        env.update(JEO_CACHE_SIZE_MB="512", JEO_CACHE_DIR=str(cache))
    cmd = f"{JEO} serve --host 127.0.0.1 --port {port} --workers {workers}"
    return ServerSpec("jeo", f"taskset -c {cpus} {cmd}" if cpus else cmd, env, port, workers, evict_dir)


def titiler_server(ctx: Context, workers: int, evict_dir: str | None = None, cpus: str | None = None) -> ServerSpec:
    """titiler.application with uvicorn's httptools + uvloop (as `jeo serve`: both venvs have uvicorn[standard])
    and TCP_NODELAY, same GDAL env; on `cpus` if given."""
    port = free_port()
    py = TITILER_VENV / "bin" / "python"
    cmd = (f"{py} {ctx.work / 'nodelay_uvicorn.py'} titiler.application.main:app --host 127.0.0.1 --port {port} "
           f"--workers {workers} --http httptools --loop uvloop")
    env = dict(ctx.gdal_env, MALLOC_ARENA_MAX="2")
    return ServerSpec("titiler", f"taskset -c {cpus} {cmd}" if cpus else cmd, env, port, workers, evict_dir)


def bench(ctx: Context, server: ServerSpec, cases: dict[str, str], bounds, zooms: str, label: str,
          variables: dict | None = None, per_zoom: int | None = None, latency_max: int | None = None,
          concurrency: str | None = None, duration: int | None = None) -> dict:
    """Run bench_server.py over `cases` on ONE fresh server (page cache of `evict_dir` dropped before its start).

    The first case's first request is the first request of the fresh process and its cold pass runs on an
    evicted page cache; later cases reuse the server (a restart per case would cost ~10 s each here).
    Returns bench_server's JSON (plus `server_startup_s` on the first case)."""
    sys.path.insert(0, str(BENCH_DIR))
    import bench_server

    p = ctx.profile
    out = ctx.out / f"{label}.json"
    args = [
        "--base-url", server.base,
        "--bounds", ",".join(f"{v:.6f}" for v in bounds), "--zooms", zooms,
        "--per-zoom", str(per_zoom or p.per_zoom), "--latency-max", str(latency_max or p.latency_max),
        "--concurrency", concurrency or p.concurrency, "--duration", str(duration or p.duration),
        "--warmup", str(p.warmup), "--timeout", "120", "--label", label, "--out", str(out),
    ]
    for k, v in (variables or {}).items():
        args += ["--var", f"{k}={v}"]
    for name, template in cases.items():
        args += ["--case", f"{name}={template}"]
    shim = BENCH_SHIM.format(bench_dir=str(BENCH_DIR), settle_cap=p.settle_cap, startup_timeout=600)
    log(f"- {label}: {server.name}, {server.workers} worker(s), cases {', '.join(cases)}")
    t0 = time.time()
    evicted = bench_server.evict_page_cache(server.evict_dir) if server.evict_dir else 0
    try:
        with RunningServer(ctx, server, label) as running:
            proc = subprocess.run([sys.executable, "-c", shim, *args], capture_output=True, text=True, cwd=REPO)
    except RuntimeError as e:  # the server did not start
        log(f"  FAILED: {e}")
        return {"label": label, "failed": True, "cases": [], "error": str(e)}
    (ctx.work / f"{label}.stdout").write_text(proc.stdout + proc.stderr)
    if proc.returncode or not out.exists():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        log(f"  FAILED ({proc.returncode}) after {time.time() - t0:.0f} s:\n{tail}")
        return {"label": label, "failed": True, "cases": [], "error": tail}
    with open(out) as f:
        res = json.load(f)
    res["server_cmd"], res["server_env"] = server.cmd, server.env
    if res["cases"]:
        first = res["cases"][0]
        first["server_startup_s"] = round(running.startup_s, 2)
        first["evicted_files"] = evicted
        first["cold"]["note"] = "fresh server, page cache evicted" if evicted else "fresh server"
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    for c in res["cases"]:
        thr = " ".join(f"c{t['concurrency']}={t['rps']}/s p50={t['p50']}" for t in c["throughput"])
        errs = c["cold"].get("errors", 0) + c["warm"].get("errors", 0) + sum(t["errors"] for t in c["throughput"])
        log(f"    {c['name']}: first={c['first_request_ms']} ms warm p50={c['warm']['all'].get('p50')} {thr}"
            f"{' ERRORS=' + str(errs) + ' ' + str(c['cold'].get('status_counts')) if errs else ''}")
    log(f"  ({time.time() - t0:.0f} s, server start-up {running.startup_s:.1f} s)")
    return res


def bench_pair(ctx: Context, label: str, ours: ServerSpec, theirs: ServerSpec,
               cases: dict[str, tuple], bounds, zooms: str, variables: dict | None = None,
               per_zoom: int | None = None, latency_max: int | None = None, rounds: int | None = None,
               after=None, max_window: float | None = None, client_cpus: set[int] | None = None) -> dict:
    """jeo-tiler and titiler measured side by side, interleaved, with bench_server.py's own functions.

    Both servers are started fresh (page cache of their data dropped first) and stay up for all `cases`
    (name -> (jeo template, titiler template[, zooms]); None skips that server; a third element overrides
    `zooms` for that case). Per case: first request (only the
    first case is the first request of the process), cold pass (page cache dropped again before each
    server's pass), warm pass, then closed-loop throughput at each concurrency in alternating windows
    (jeo, titiler, titiler, jeo, …, `rounds` windows each), so that the background load of a shared machine
    hits both alike. `after(base_ours, base_theirs)` runs at the end while both servers are still up. With
    `client_cpus` the load generator's threads run on those CPUs only (see `core_split`).
    Returns {"ours": {"cases": [...]}, "theirs": {"cases": [...]}} in bench_server's format.
    """
    sys.path.insert(0, str(BENCH_DIR))
    import bench_server as B

    p = ctx.profile
    rounds = rounds or p.rounds
    variables = {k: urllib.parse.quote(str(v), safe="/:") for k, v in (variables or {}).items()}
    tile_lists = {z: B.tiles_for_bounds(bounds, B.parse_zooms(z), per_zoom or p.per_zoom, 1)
                  for z in {zooms, *(c[2] for c in cases.values() if len(c) > 2)}}
    tiles = tile_lists[zooms]
    concs = [int(c) for c in p.concurrency.split(",")]
    evict_dirs = sorted({d for d in (ours.evict_dir, theirs.evict_dir) if d})

    def evict():
        return sum(B.evict_page_cache(d) for d in evict_dirs)

    log(f"- {label}: jeo-tiler vs titiler, {ours.workers} worker(s), {len(tiles)} tiles z{zooms}, "
        f"cases {', '.join(n + (' (z' + c[2] + ')' if len(c) > 2 else '') for n, c in cases.items())}")
    t0 = time.time()
    result = {"ours": {"label": f"{label}-jeo", "cases": [], "server_cmd": ours.cmd, "server_env": ours.env},
              "theirs": {"label": f"{label}-titiler", "cases": [], "server_cmd": theirs.cmd, "server_env": theirs.env},
              "tiles": len(tiles), "zooms": zooms, "rounds": rounds}
    evict()
    servers = {"ours": RunningServer(ctx, ours, f"{label}-jeo"), "theirs": RunningServer(ctx, theirs, f"{label}-titiler")}
    started: dict[str, float] = {}
    try:
        for who, srv in servers.items():  # one after the other: start-up is measured, not shared
            srv.__enter__()
            started[who] = srv.startup_s
        for k, (name, spec) in enumerate(cases.items()):
            case_zooms = spec[2] if len(spec) > 2 else zooms
            tiles = tile_lists[case_zooms]
            nlat = min(latency_max or p.latency_max, len(tiles))
            entries = {}
            for who, template in zip(("ours", "theirs"), spec[:2]):
                if template is None:
                    continue
                entries[who] = dict(name=name, template=template, tiles=len(tiles), zooms=case_zooms,
                                    paths=[B.fill(template, t, variables) for t in tiles])
            for who, e in entries.items():
                base = servers[who].spec.base
                first = B.latency_pass(base, e["paths"][:1], 120, 600)
                e["first_request_ms"] = round(first[0]["ms"], 2) if first[0].get("ms") else None
                e["first_status"] = first[0]["status"]
                if k == 0:
                    e["server_startup_s"] = round(started[who], 2)
            for who, e in entries.items():
                e["evicted_files"] = evict()
                cold = B.latency_pass(servers[who].spec.base, e["paths"][1:nlat], 120, 600)
                e["cold"] = B.summarize_pass(cold, tiles[1:len(cold) + 1])
                e["cold"]["note"] = "page cache evicted" + (", fresh server" if k == 0 else "")
            for who, e in entries.items():
                warm = B.latency_pass(servers[who].spec.base, e["paths"][:nlat], 120, 600)
                e["warm"] = B.summarize_pass(warm, tiles[:len(warm)])
            for e in entries.values():
                e["throughput"] = []
            # one request's time, from the slower server's warm pass: sizes the windows of slow (composite) tiles
            t_req = max((e["warm"]["all"].get("p50") or 0) / 1000 for e in entries.values())
            for conc in concs:
                warmup, duration = window(p, t_req, conc, max_window=max_window)
                windows: dict[str, list] = {who: [] for who in entries}
                order = list(entries)
                for r in range(rounds):
                    for who in (order if r % 2 == 0 else order[::-1]):
                        with pinned(client_cpus):
                            windows[who].append(B.load_threads(servers[who].spec.base, entries[who]["paths"], conc,
                                                               warmup, duration, 120, 100000))
                for who, ws in windows.items():
                    entries[who]["throughput"].append(_merge_windows(ws, conc, warmup))
            for who, e in entries.items():
                e.pop("paths")
                result[who]["cases"].append(e)
            for who, e in entries.items():
                thr = " ".join(f"c{t['concurrency']}={t['rps']}/s p50={t['p50']}" for t in e["throughput"])
                errs = (e["cold"].get("errors", 0) + e["warm"].get("errors", 0)
                        + sum(t["errors"] for t in e["throughput"]))
                log(f"    {name} {'jeo-tiler' if who == 'ours' else 'titiler  '}: first={e['first_request_ms']} ms "
                    f"warm p50={e['warm']['all'].get('p50')} {thr}"
                    f"{' ERRORS=' + str(errs) + ' ' + str(e['cold'].get('status_counts')) if errs else ''}")
        if after is not None:
            result["after"] = after(servers["ours"].spec.base, servers["theirs"].spec.base)
    except RuntimeError as e:
        log(f"  FAILED: {e}")
        result["error"] = str(e)
    finally:
        for srv in servers.values():
            if srv.server.proc is not None:
                srv.__exit__(None, None, None)
    with open(ctx.out / f"{label}.json", "w") as f:
        json.dump(result, f, indent=1)
    log(f"  ({time.time() - t0:.0f} s; start-up jeo {started.get('ours', float('nan')):.1f} s, "
        f"titiler {started.get('theirs', float('nan')):.1f} s)")
    return result


def window(p: Profile, t_req: float, conc: int, cores: int = 2, max_window: float | None = None) -> tuple[float, float]:
    """Warm-up and measured seconds for one throughput window.

    At `conc` clients a request takes about L = max(t, conc·t/cores); the warm-up must cover one L (pipeline
    fill) and the window should hold at least `p.min_completions` completions (≈ duration·conc/L)."""
    latency = max(t_req, conc * t_req / cores)
    warmup = min(max(p.warmup, latency), 8.0)
    duration = min(max(p.duration, p.min_completions * latency / conc), max_window or p.max_window)
    return round(warmup, 1), round(duration, 1)


def _merge_windows(ws: list[dict], conc: int, warmup: float | None = None) -> dict:
    """Several measured windows of one server at one concurrency: total req/s, mean of the window percentiles."""
    import statistics

    secs = sum(w["seconds"] for w in ws)
    ok = sum(w["rps"] * w["seconds"] for w in ws)

    def mean(key):
        vals = [w[key] for w in ws if w.get(key) is not None]
        return round(statistics.fmean(vals), 2) if vals else None

    return dict(tool="python-threads (bench_server.load_threads), interleaved", concurrency=conc, windows=len(ws),
                warmup_s=warmup,
                seconds=secs, requests=sum(w["requests"] for w in ws), rps=round(ok / secs, 2) if secs else None,
                errors=sum(w["errors"] for w in ws), p50=mean("p50"), p95=mean("p95"), p99=mean("p99"),
                mean=mean("mean"), per_window=[dict(rps=w["rps"], p50=w["p50"], p95=w["p95"]) for w in ws])


def case_result(res: dict, name: str) -> dict | None:
    for c in res.get("cases", []):
        if c["name"] == name:
            return c
    return None


def tile_paths(bounds, zooms: str, per_zoom: int, seed: int = 1) -> list[tuple[int, int, int]]:
    """The tile list bench_server.py draws for these arguments (same function, same seed)."""
    sys.path.insert(0, str(BENCH_DIR))
    import bench_server

    return bench_server.tiles_for_bounds(bounds, bench_server.parse_zooms(zooms), per_zoom, seed)


class RunningServer:
    """A server started by us (for header probes), stopped by pid (bench_server.Server does the work)."""

    def __init__(self, ctx: Context, spec: ServerSpec, label: str):
        sys.path.insert(0, str(BENCH_DIR))
        import bench_server

        self.spec = spec
        self.server = bench_server.Server(spec.cmd, spec.env, spec.base, "/healthz",
                                          str(ctx.work / f"{label}.log"), startup_timeout=600)

    def __enter__(self):
        self.startup_s = self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop()


def get(base: str, path: str, timeout: float = 120) -> tuple[int, dict, bytes, float]:
    """One GET on a fresh connection: status, headers (lower-case), body, ms."""
    import http.client

    u = urllib.parse.urlsplit(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    t0 = time.perf_counter()
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    ms = (time.perf_counter() - t0) * 1000
    headers = {k.lower(): v for k, v in r.getheaders()}
    c.close()
    return r.status, headers, body, ms


def server_timing(header: str | None) -> dict[str, float]:
    """`catalog;dur=1.2, read;dur=3` → {"catalog": 1.2, "read": 3.0}."""
    out: dict[str, float] = {}
    for part in (header or "").split(","):
        name, _, rest = part.strip().partition(";")
        if name and "dur=" in rest:
            try:
                out[name] = out.get(name, 0.0) + float(rest.split("dur=")[1].split(";")[0])
            except ValueError:
                pass
    return out


def fill(template: str, tile, variables: dict) -> str:
    z, x, y = tile
    enc = {k: urllib.parse.quote(str(v), safe="/:") for k, v in variables.items()}
    return template.format(z=z, x=x, y=y, **enc)


# ----------------------------------------------------------------------------------------------- results


def add_row(ctx: Context, section: str, case: str, data: str, workers: int, ours: dict | None, theirs: dict | None,
            ours_label: str = "jeo-tiler", theirs_label: str = "titiler", note: str = "") -> None:
    """One table row per concurrency level from two bench_server case results."""
    for conc in [int(c) for c in ctx.profile.concurrency.split(",")]:
        def pick(c):
            if c is None:
                return None
            for t in c["throughput"]:
                if t["concurrency"] == conc:
                    return t
            return None

        a, b = pick(ours), pick(theirs)
        ctx.results.append(dict(
            section=section, case=case, data=data, workers=workers, clients=conc,
            ours=_metrics(a, ours), theirs=_metrics(b, theirs), ours_label=ours_label, theirs_label=theirs_label,
            note=note,
        ))


def _metrics(t: dict | None, case: dict | None) -> dict | None:
    if t is None or case is None:
        return None
    return dict(p50=t["p50"], p95=t["p95"], rps=t["rps"], errors=t["errors"], n=t.get("requests"),
                first_ms=case.get("first_request_ms"), startup_s=case.get("server_startup_s"),
                warm_p50=case["warm"]["all"].get("p50"), cold_p50=case["cold"]["all"].get("p50"))


def ratio(a, b) -> str:
    if a in (None, 0) or b in (None, 0):
        return "–"
    return f"{a / b:.2f}"


def fmt(v, digits=0) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    head = ("| case | data | workers | clients | jeo-tiler p50 / p95 ms | jeo-tiler req/s | titiler p50 / p95 ms "
            "| titiler req/s | p50 ratio (jeo/titiler) | req/s ratio (jeo/titiler) | responses in windows | note |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        a, b = r["ours"] or {}, r["theirs"] or {}
        lines.append(
            f"| {r['case']} | {r['data']} | {r['workers']} | {r['clients']} "
            f"| {fmt(a.get('p50'))} / {fmt(a.get('p95'))} | {fmt(a.get('rps'), 1)} "
            f"| {fmt(b.get('p50'))} / {fmt(b.get('p95'))} | {fmt(b.get('rps'), 1)} "
            f"| {ratio(a.get('p50'), b.get('p50'))} | {ratio(a.get('rps'), b.get('rps'))} "
            f"| {a.get('n', '–')} / {b.get('n', '–')} | {r.get('note', '')} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- issue 3


def synth_item(ctx: Context) -> tuple[str, str, str]:
    """The scene used for single-scene tiles: the first without a no-data wedge (id, item json, 4-band COG)."""
    manifest = ctx.synth["manifest"]
    scene = next((s for s in manifest["scenes"] if not s.get("nodata_fraction")), manifest["scenes"][0])
    item_json = next(p for p in ctx.synth["items"] if Path(p).stem == scene["name"])
    return scene["name"], item_json, scene["image"]


RGB_JEO = "/collections/{cid}/items/{item}/tiles/WebMercatorQuad/{z}/{x}/{y}.png?assets=red,green,blue&rescale=0,0.3"
NDVI_JEO = ("/collections/{cid}/items/{item}/tiles/WebMercatorQuad/{z}/{x}/{y}.png"
            "?expression=(nir-red)/(nir%2Bred)&rescale=-1,1&colormap_name=rdylgn")
RGB_TT_STAC = ("/stac/tiles/WebMercatorQuad/{z}/{x}/{y}.png?url={item_json}"
               "&assets=red&assets=green&assets=blue&rescale=0,3000")
NDVI_TT_STAC = ("/stac/tiles/WebMercatorQuad/{z}/{x}/{y}.png?url={item_json}"
                "&assets=red&assets=nir&expression=(b2-b1)/(b2%2Bb1)&rescale=-1,1&colormap_name=rdylgn")
RGB_TT_COG = "/cog/tiles/WebMercatorQuad/{z}/{x}/{y}.png?url={cog}&bidx=3&bidx=2&bidx=1&rescale=0,3000"
RGB_JEO_VISUAL = (f"/collections/{{cid}}/items/{{item}}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png?assets={VISUAL}"
                  f"&asset_bidx={VISUAL}|3,2,1&rescale=0,0.3")
NDVI_TT_COG = ("/cog/tiles/WebMercatorQuad/{z}/{x}/{y}.png?url={cog}"
               "&expression=(b4-b3)/(b4%2Bb3)&rescale=-1,1&colormap_name=rdylgn")


def pixel_check(tiles, pairs: dict[str, tuple[str, str]], variables: dict):
    """An `after` hook for bench_pair: decode a few tiles of each (jeo, titiler) template pair from both
    servers and compare the pixels (both must compute the same picture for the timings to mean anything)."""
    import warnings

    import numpy as np
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    def decode(body):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with MemoryFile(body) as m, m.open() as ds:
                return ds.read().astype(int)

    def check(base_ours: str, base_theirs: str) -> list[str]:
        report = []
        for label, (jeo_t, tt_t) in pairs.items():
            worst, worse_px, n, problems = 0, 0.0, 0, []
            for tile in tiles[:4]:
                s1, _, b1, _ = get(base_ours, fill(jeo_t, tile, variables))
                s2, _, b2, _ = get(base_theirs, fill(tt_t, tile, variables))
                if s1 != 200 or s2 != 200:
                    problems.append(f"{tile}: status {s1}/{s2}")
                    continue
                a, b = decode(b1), decode(b2)
                if a.shape != b.shape:
                    problems.append(f"{tile}: shape {a.shape}/{b.shape}")
                    continue
                d = np.abs(a - b)
                worst, worse_px, n = max(worst, int(d.max())), max(worse_px, float((d > 1).mean())), n + 1
            line = (f"{label}: {n} tiles, max |Δ| {worst} (8-bit), ≤ {worse_px * 100:.2f} % px differ by > 1"
                    + (f"; {'; '.join(problems)}" if problems else ""))
            log(f"    pixel check jeo-tiler vs titiler, {line}")
            report.append(line)
        return report

    return check


def run_single_scene(ctx: Context, workers_list=(1, 2), real: bool = True, with_cog: bool | None = None) -> dict:
    """Issue 3 (and the real-data single-scene rows of the all-in-one table)."""
    with_cog = (not ctx.profile.quick) if with_cog is None else with_cog
    item, item_json, cog = synth_item(ctx)
    cid = ctx.synth["collection"]
    bounds = ctx.synth["bounds"]
    zooms = "11-14" if (ctx.synth.get("size") or 4096) >= 4096 else "11-13"
    bands_dir = str(Path(ctx.synth["data"]) / "bands")
    variables = {"cid": cid, "item": item, "item_json": item_json, "cog": cog}
    raw = {}
    log(f"\n## single-scene tiles, synthetic {item} (z{zooms}), workers {workers_list}")
    check = pixel_check(tile_paths(bounds, zooms, ctx.profile.per_zoom),
                        {"true colour (/stac)": (RGB_JEO, RGB_TT_STAC), "NDVI (/stac)": (NDVI_JEO, NDVI_TT_STAC),
                         "true colour (/cog)": (RGB_JEO, RGB_TT_COG)}, variables)
    # the 1 → 2 worker rows come from these runs: the load generator gets a core of its own where possible
    server_cpus, client_cpus = core_split()
    log(f"  {core_note(server_cpus, client_cpus)}")
    for w in workers_list:
        cases = {"rgb": (RGB_JEO, RGB_TT_STAC)}
        if w == 1 or not ctx.profile.quick:
            cases["ndvi"] = (NDVI_JEO, NDVI_TT_STAC)
        if with_cog and w == 1:
            cases.update(rgb_cog=(None, RGB_TT_COG), ndvi_cog=(None, NDVI_TT_COG))
        # both folders are evicted before each cold pass: single-band COGs (jeo, /stac) and 4-band COGs (/cog)
        res = bench_pair(ctx, f"single-synth-w{w}", jeo_server(ctx, w, evict_dir=bands_dir, cpus=server_cpus),
                         titiler_server(ctx, w, evict_dir=str(Path(cog).parent), cpus=server_cpus),
                         cases, bounds, zooms, variables, after=check if w == workers_list[0] else None,
                         client_cpus=client_cpus)
        if "after" in res:
            ctx.checks = res["after"]
        raw[f"synth-w{w}"] = res
        for case, title in (("rgb", "single-COG true colour"), ("ndvi", "NDVI expression")):
            if not case_result(res["ours"], case):
                continue
            add_row(ctx, "single", title, "synthetic", w, case_result(res["ours"], case),
                    case_result(res["theirs"], case), note="titiler /stac, same single-band COGs")
            if case_result(res["theirs"], f"{case}_cog"):
                add_row(ctx, "single", title, "synthetic", w, case_result(res["ours"], case),
                        case_result(res["theirs"], f"{case}_cog"), note="titiler /cog, original 4-band COG")
    if real:
        raw.update(run_single_real(ctx))
    return raw


def run_visual(ctx: Context) -> dict:
    """True colour from ONE 4-band COG on both servers: jeo-tiler's multi-band asset (`assets=visual&asset_bidx=
    visual|3,2,1`, one read of the three bands) vs titiler's `/cog` (`bidx=3&bidx=2&bidx=1`), 1 worker."""
    item, _, cog = synth_item(ctx)
    bounds = ctx.synth["bounds"]
    zooms = "11-14" if (ctx.synth.get("size") or 4096) >= 4096 else "11-13"
    variables = {"cid": ctx.synth["collection"], "item": item, "cog": cog}
    log(f"\n## single-scene tiles from the 4-band COG, synthetic {item} (z{zooms})")
    check = pixel_check(tile_paths(bounds, zooms, ctx.profile.per_zoom),
                        {"true colour (visual asset vs /cog)": (RGB_JEO_VISUAL, RGB_TT_COG)}, variables)
    server_cpus, client_cpus = core_split()
    evict = str(Path(cog).parent)  # the 4-band COGs, for both servers
    res = bench_pair(ctx, "single-visual-w1", jeo_server(ctx, 1, evict_dir=evict, cpus=server_cpus),
                     titiler_server(ctx, 1, evict_dir=evict, cpus=server_cpus),
                     {"rgb_visual": (RGB_JEO_VISUAL, RGB_TT_COG)}, bounds, zooms, variables, after=check,
                     client_cpus=client_cpus)
    ctx.checks += res.get("after") or []
    add_row(ctx, "single", f"single-COG true colour, assets={VISUAL}", "synthetic", 1,
            case_result(res["ours"], "rgb_visual"), case_result(res["theirs"], "rgb_visual"),
            note="one 4-band COG on both: jeo multi-band asset vs titiler /cog")
    return {"visual": res}


REAL_COLLECTION = "sentinel-2-l2a-timeseries"
REAL_ITEM = "S2B_33TWM_20230813_0_L2A"  # orbit R122: covers the whole MGRS tile (no no-data wedge)


def real_item_bounds(item_json: Path, inset: float = 0.03) -> list[float]:
    with open(item_json) as f:
        bbox = json.load(f)["bbox"]
    dx, dy = (bbox[2] - bbox[0]) * inset, (bbox[3] - bbox[1]) * inset
    return [bbox[0] + dx, bbox[1] + dy, bbox[2] - dx, bbox[3] - dy]


def run_single_real(ctx: Context, workers: int = 1) -> dict:
    item_json = SHARED_DATA / REAL_COLLECTION / REAL_ITEM / f"{REAL_ITEM}.json"
    bounds = real_item_bounds(item_json)
    variables = {"cid": REAL_COLLECTION, "item": REAL_ITEM, "item_json": str(item_json)}
    log(f"\n## single-scene tiles, real {REAL_ITEM} (z9-11)")
    evict = str(item_json.parent)
    res = bench_pair(ctx, f"single-real-w{workers}", jeo_server(ctx, workers, evict_dir=evict),
                     titiler_server(ctx, workers, evict_dir=evict),
                     {"rgb": (RGB_JEO, RGB_TT_STAC)} if ctx.profile.quick else
                     {"rgb": (RGB_JEO, RGB_TT_STAC), "ndvi": (NDVI_JEO, NDVI_TT_STAC)}, bounds, "9-11", variables,
                     per_zoom=min(ctx.profile.per_zoom, 16))
    for case, title in (("rgb", "single-COG true colour"), ("ndvi", "NDVI expression")):
        if case_result(res["ours"], case):
            add_row(ctx, "single", title, "real S2 L2A 120 m", workers, case_result(res["ours"], case),
                    case_result(res["theirs"], case), note="titiler /stac, same item")
    return {"real": res}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 scenes of 2048² px, short windows")
    ap.add_argument("--no-real", action="store_true", help="skip the real /work/shared/data scene")
    a = ap.parse_args()
    ctx = setup(a.quick)
    run_single_scene(ctx, real=not a.no_real)
    table = markdown_table(ctx.results)
    (ctx.out / "single_scene.md").write_text(table + "\n")
    with open(ctx.out / "single_scene_rows.json", "w") as f:
        json.dump(ctx.results, f, indent=1)
    print("\n" + table)
    print(f"\nraw JSON and server logs: {ctx.out}")
    shutil.rmtree(ctx.home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
