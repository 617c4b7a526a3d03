#!/usr/bin/env python3
"""Load: concurrent clients on a mix of composite, single-scene, WMTS and cached tiles (issue 11).

    .venv/bin/python benchmarks/load.py                                  # acceptance run: 32 clients, 60 s
    .venv/bin/python benchmarks/load.py --clients 8 --duration 10        # smoke run

Starts `jeo serve --workers N` (tile cache on, fresh JEO_HOME, real data of ../shared/data) on a loopback
port, warms it (every class once, the cached tiles), then runs a closed loop for `--duration` seconds: each
client keeps one keep-alive connection and sends requests back to back, drawing each request's class with
the weights of `--mix`:

* composite: `/collections/sentinel-2-l2a-timeseries/tiles/WebMercatorQuad/{z}/{x}/{y}.png`, median with the
  SCL mask, z 9-12; `rescale` drawn per request, so the tile cache does not answer;
* single: item tiles of the 5 dates, true colour, z 10-13, `rescale` drawn likewise;
* wmts: GetTile of the single-scene WMTS layers of the time series (every preset and date the capabilities
  list), z 9-13, half RESTful, half KVP (these may repeat, so some are cache hits: reported);
* cached: 16 composite tiles requested during the warm-up, so answered from the tile cache.

Reported (printed, and as JSON with `--out`): requests and errors by HTTP status per class and overall
(transport errors count as status -1), p50/p95/p99 latency and the p99/p50 ratio per class and overall,
throughput, the share of `X-Cache: hit` per class, and the RSS of the server's processes sampled every
0.5 s (start, max, end; per worker and summed). Acceptance (issue 11): 0 errors, p99 <= 10 x p50, bounded
worker RSS. The tile lists come from bench_server.py (same function and seed as the other benchmarks); the
server is started and stopped by pid by bench_server.Server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import rss_mib  # noqa: E402
from tiles import BENCH_DIR, SHARED_DATA, VENV_PY, free_port, ingest  # noqa: E402

sys.path.insert(0, str(BENCH_DIR))
import bench_server  # noqa: E402

COLLECTION = "sentinel-2-l2a-timeseries"
ITEMS = ("S2B_33TWM_20230810_0_L2A", "S2B_33TWM_20230813_0_L2A", "S2A_33TWM_20230815_0_L2A",
         "S2A_33TWM_20230818_0_L2A", "S2B_33TWM_20230820_0_L2A")  # fmt: skip
BOUNDS = (15.35, 46.05, 16.3, 46.85)  # inside tile 33TWM, east of the no-data wedge of 10/15/20 August
CLASSES = ("composite", "single", "wmts", "cached")
OWS, WMTS = "{http://www.opengis.net/ows/1.1}", "{http://www.opengis.net/wmts/1.0}"


class Client:
    """One keep-alive HTTP/1.1 connection; GET returns status, X-Cache and milliseconds (status -1: no answer)."""

    def __init__(self, base: str, timeout: float):
        parts = urllib.parse.urlsplit(base)
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self.connection: http.client.HTTPConnection | None = None

    def get(self, path: str) -> tuple[int, str, float]:
        start = time.perf_counter()
        try:
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.connection.request("GET", path)
            response = self.connection.getresponse()
            response.read()
            return response.status, response.getheader("X-Cache", ""), (time.perf_counter() - start) * 1000
        except (http.client.HTTPException, OSError):
            self.close()
            return -1, "", (time.perf_counter() - start) * 1000

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


@dataclass
class Requests:
    """Draws request paths per class; the WMTS layers and dates come from the server's capabilities."""

    wmts_layers: list[tuple[str, str]]  # (layer, time)
    rng: random.Random = field(default_factory=lambda: random.Random(11))

    def __post_init__(self):
        self.composite_tiles = bench_server.tiles_for_bounds(BOUNDS, range(9, 13), 200, seed=1)
        self.single_tiles = bench_server.tiles_for_bounds(BOUNDS, range(10, 14), 200, seed=1)
        self.wmts_tiles = bench_server.tiles_for_bounds(BOUNDS, range(9, 14), 200, seed=1)
        self.cached = [composite_path(t, "0,0.3") for t in self.composite_tiles[:16]]

    def rescale(self) -> str:
        return f"0,{self.rng.uniform(0.25, 0.4):.4f}"

    def path(self, kind: str) -> str:
        if kind == "composite":
            return composite_path(self.rng.choice(self.composite_tiles), self.rescale())
        if kind == "single":
            z, x, y = self.rng.choice(self.single_tiles)
            return (f"/collections/{COLLECTION}/items/{self.rng.choice(ITEMS)}/tiles/WebMercatorQuad/{z}/{x}/{y}.png"
                    f"?assets=red,green,blue&rescale={self.rescale()}")
        if kind == "wmts":
            (z, x, y), (layer, when) = self.rng.choice(self.wmts_tiles), self.rng.choice(self.wmts_layers)
            if self.rng.random() < 0.5:
                return f"/wmts/1.0.0/{layer}/default/{when}/WebMercatorQuad/{z}/{y}/{x}.png"
            return "/wmts?" + urllib.parse.urlencode({
                "SERVICE": "WMTS", "REQUEST": "GetTile", "VERSION": "1.0.0", "LAYER": layer, "STYLE": "default",
                "TILEMATRIXSET": "WebMercatorQuad", "TILEMATRIX": z, "TILEROW": y, "TILECOL": x,
                "FORMAT": "image/png", "TIME": when,
            })
        return self.rng.choice(self.cached)


def composite_path(tile: tuple[int, int, int], rescale: str) -> str:
    z, x, y = tile
    return (f"/collections/{COLLECTION}/tiles/WebMercatorQuad/{z}/{x}/{y}.png?assets=red,green,blue"
            f"&rescale={rescale}&method=median&cloud_mask=scl")


def single_scene_layers(client: Client) -> list[tuple[str, str]]:
    """(layer, time) of every single-scene WMTS layer of the time series, from GetCapabilities."""
    connection = http.client.HTTPConnection(client.host, client.port, timeout=client.timeout)
    connection.request("GET", "/wmts/1.0.0/WMTSCapabilities.xml")
    root = ET.fromstring(connection.getresponse().read())
    connection.close()
    found = []
    for layer in root.iter(f"{WMTS}Layer"):
        name = layer.findtext(f"{OWS}Identifier")
        times = [v.text for v in layer.iter(f"{WMTS}Value")]
        if name.startswith(f"{COLLECTION}.") and times and not any("--" in t for t in times):
            found += [(name, t) for t in times]
    return found


def worker_pids(pid: int, workers: int) -> list[int]:
    """The processes that answer requests: `pid` itself, or with several workers the children uvicorn's
    supervisor spawned (not its multiprocessing resource tracker)."""
    if workers == 1:
        return [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = []
    for child in children:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
        except OSError:
            continue
    return found


class RssSampler(threading.Thread):
    """Samples the RSS (MiB) of the server's worker processes every `interval` seconds."""

    def __init__(self, pid: int, workers: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.workers, self.interval = pid, workers, interval
        self.samples: list[dict[int, float]] = []
        self.stopping = threading.Event()

    def sample(self) -> dict[int, float]:
        values = {}
        for pid in worker_pids(self.pid, self.workers):
            try:
                values[pid] = rss_mib(pid)
            except (OSError, RuntimeError):
                pass
        return values

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.samples.append(self.sample())

    def summary(self) -> dict:
        totals = [sum(s.values()) for s in self.samples if s]
        per_worker = defaultdict(list)
        for sample in self.samples:
            for pid, value in sample.items():
                per_worker[pid].append(value)

        def describe(v: list[float]) -> dict:
            half = len(v) // 2
            return {"start": round(v[0], 1), "max": round(max(v), 1), "end": round(v[-1], 1),
                    "max_first_half": round(max(v[:half] or v), 1), "max_second_half": round(max(v[half:]), 1)}

        return {"samples": len(totals), "total_mib": describe(totals) if totals else None,
                "workers_mib": {str(pid): describe(v) for pid, v in per_worker.items()}}


def run_load(base: str, requests: Requests, weights: list[float], clients: int, duration: float, timeout: float):
    """Closed loop: `clients` threads for `duration` s. Returns [(class, status, x_cache, ms, in_window, path)]."""
    lock, records = threading.Lock(), []
    start = time.perf_counter()
    end = start + duration

    def client_loop(seed: int) -> None:
        rng, client = random.Random(seed), Client(base, timeout)
        while time.perf_counter() < end:
            kind = rng.choices(CLASSES, weights)[0]
            with lock:
                path = requests.path(kind)
            status, cache, ms = client.get(path)
            with lock:
                records.append((kind, status, cache, ms, time.perf_counter() <= end, path))
        client.close()

    threads = [threading.Thread(target=client_loop, args=(seed,), daemon=True) for seed in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration + timeout + 30)
    return records


def stats(records: list[tuple], duration: float) -> dict:
    """Counts by status, latency percentiles of the 200s within the window, throughput, X-Cache hits."""
    window = [r for r in records if r[4]]
    ok = [r[3] for r in window if r[1] == 200]
    p50, p95, p99 = (bench_server.pct(ok, p) for p in (50, 95, 99))
    statuses = Counter(r[1] for r in records)
    return {
        "requests": len(window), "drained_after_window": len(records) - len(window),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": sum(v for k, v in statuses.items() if k != 200),
        "p50_ms": p50 and round(p50, 1), "p95_ms": p95 and round(p95, 1), "p99_ms": p99 and round(p99, 1),
        "p99_over_p50": round(p99 / p50, 2) if p50 else None,
        "req_per_s": round(len(ok) / duration, 2),
        "cache_hit_share": round(sum(r[2] == "hit" for r in window) / len(window), 3) if window else None,
        "error_examples": sorted({f"{r[1]} {r[5]}" for r in records if r[1] != 200})[:5],
    }


def report(result: dict) -> str:
    rows = ["| class | requests | errors (by status) | p50 ms | p95 ms | p99 ms | p99/p50 | req/s | X-Cache hit |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, s in (*result["classes"].items(), ("all", result["overall"])):
        errors = ", ".join(f"{k}: {v}" for k, v in s["statuses"].items() if k != "200") or "0"
        rows.append(f"| {name} | {s['requests']} | {errors} | {s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} | "
                    f"{s['p99_over_p50']} | {s['req_per_s']} | {s['cache_hit_share']} |")
    rss = result["rss"]
    total = rss["total_mib"] or {}
    rows.append("")
    rows.append(f"worker RSS (MiB, summed over {len(rss['workers_mib'])} process(es), {rss['samples']} samples): "
                f"start {total.get('start')}, max {total.get('max')}, end {total.get('end')}; max in the first half "
                f"{total.get('max_first_half')}, in the second half {total.get('max_second_half')}")
    for pid, values in rss["workers_mib"].items():
        rows.append(f"  pid {pid}: start {values['start']}, max {values['max']}, end {values['end']}")
    rows += [f"error: {example}" for example in result["overall"]["error_examples"]]
    overall = result["overall"]
    worst = max((s["p99_over_p50"] or 0 for s in result["classes"].values()), default=0)
    rows.append("")
    rows.append(f"acceptance: errors {overall['errors']} (target 0); p99/p50 overall {overall['p99_over_p50']}, "
                f"worst class {worst} (target <= 10); RSS end/start {total.get('end', 0) / (total.get('start') or 1):.2f}, "
                f"max second half / first half {total.get('max_second_half', 0) / (total.get('max_first_half') or 1):.2f} "
                "(bounded: close to 1)")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--workers", type=int, default=2, help="`jeo serve --workers`")
    parser.add_argument("--mix", default="composite=1,single=2,wmts=1,cached=1",
                        help="relative weights of the request classes")
    parser.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (s)")
    parser.add_argument("--data", default=str(SHARED_DATA / "catalog.json"))
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    mix = dict(part.split("=") for part in args.mix.split(","))
    weights = [float(mix.get(name, 0)) for name in CLASSES]

    home = Path(tempfile.mkdtemp(prefix="jeo-load-"))
    ingest(home, [args.data])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    bench_server.check_loopback(base)
    server = bench_server.Server(f"{VENV_PY} -m tiler.cli serve --port {port} --workers {args.workers}",
                                 {"JEO_HOME": str(home)}, base, "/healthz", str(home / "server.log"), startup_timeout=600)
    print(f"jeo serve --workers {args.workers}: started in {server.start():.1f} s (JEO_HOME {home})", flush=True)
    try:
        client = Client(base, args.timeout)
        requests = Requests(single_scene_layers(client))
        warm = [requests.path(kind) for kind in CLASSES[:3] for _ in range(2 * args.workers)] + requests.cached
        failed = [(path, status) for path in warm if (status := client.get(path)[0]) != 200]
        client.close()
        if failed:
            print(f"warm-up failed: {failed[:5]}", file=sys.stderr)
            return 1
        sampler = RssSampler(server.proc.pid, args.workers)
        sampler.samples.append(sampler.sample())
        sampler.start()
        print(f"{args.clients} clients for {args.duration:g} s, mix {args.mix} ...", flush=True)
        records = run_load(base, requests, weights, args.clients, args.duration, args.timeout)
        sampler.stopping.set()
        sampler.join()
        sampler.samples.append(sampler.sample())
    finally:
        server.stop()
    shutil.rmtree(home)
    result = {
        "clients": args.clients, "duration_s": args.duration, "workers": args.workers, "mix": mix,
        "classes": {name: stats([r for r in records if r[0] == name], args.duration) for name in CLASSES if mix.get(name)},
        "overall": stats(records, args.duration),
        "rss": sampler.summary(),
    }
    print(report(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
