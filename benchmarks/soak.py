"""Memory soak: RSS of a jeo-tiler worker over many composite requests on varied tiles (issue 7).

    python benchmarks/soak.py [--requests 5000] [--warmup 500] [--data ../shared/data]

Starts `jeo serve` (one worker, tile cache off so every request computes) on a loopback port with the
real Sentinel-2 time series, sends composite requests cycling over tiles, methods and zooms, and prints
the worker's RSS after the warm-up and at the end, and the growth in percent (target ≤ 10 %).
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import morecantile

ROOT = Path(__file__).resolve().parents[1]
COLLECTION = "sentinel-2-l2a-timeseries"
METHODS = ("median", "first", "max_ndvi", "mean", "percentile&p=75", "medoid")


def rss_mib(pid: int) -> float:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def urls() -> itertools.cycle:
    """Composite tile URLs over 33TWM at zooms 9–12, cycling through methods."""
    tms = morecantile.tms.get("WebMercatorQuad")
    tiles = [t for z in (9, 10, 11, 12) for t in tms.tiles(15.05, 46.0, 16.35, 46.9, [z])]
    combos = [
        f"/collections/{COLLECTION}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png?assets=red,green,blue"
        f"&rescale=0,0.3&cloud_mask=scl&method={method}"
        for t, method in zip(tiles, itertools.cycle(METHODS))
    ]
    return itertools.cycle(combos)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="jeo-soak-"))
    env = {**os.environ, "JEO_HOME": str(home), "JEO_CACHE_SIZE_MB": "0"}
    subprocess.run([sys.executable, "-m", "tiler.cli", "ingest", args.data], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tiler.cli", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            for _ in range(600):
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            targets = urls()
            errors = 0
            start = time.perf_counter()
            for n in range(args.warmup + args.requests):
                if n == args.warmup:
                    after_warmup = rss_mib(server.pid)
                    print(f"after {args.warmup} warm-up requests: RSS {after_warmup:.1f} MiB", flush=True)
                errors += client.get(next(targets)).status_code >= 500
                if n > args.warmup and (n - args.warmup) % 1000 == 0:
                    print(f"  {n - args.warmup} requests: RSS {rss_mib(server.pid):.1f} MiB", flush=True)
            final = rss_mib(server.pid)
            elapsed = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)
    growth = (final - after_warmup) / after_warmup * 100
    print(f"after {args.requests} more requests: RSS {final:.1f} MiB; growth {growth:+.1f} % (target ≤ 10 %); "
          f"{errors} 5xx; {(args.warmup + args.requests) / elapsed:.1f} req/s")


if __name__ == "__main__":
    main()
