#!/usr/bin/env python3
"""Viewport fill: the neighbouring composite tiles of one map view over 6 connections, as a browser loads them (issue 14).

A map view of 4 × 3 tiles at z12 (z13 for --quick's smaller scenes: the first zoom at which a view fits) inside
the synthetic set: its 12 median composite tiles are requested over 6 keep-alive connections (a browser's
per-host limit), each connection taking the next tile of the view when its previous one arrived, in row order.
Measured: the time from the first request to the last tile's last byte ("time to last tile") and to the first
tile, per fill.

jeo-tiler `method=median` with the cloud masks (tile cache off) and titiler's MosaicJSON median (no masks) run
side by side: both servers started fresh, one warm-up fill each, then `rounds` fills alternating
jeo, titiler, titiler, jeo, … over different views, so that both get the same views and background load.

    .venv/bin/python benchmarks/viewport.py [--quick]
"""

from __future__ import annotations

import argparse
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import composites as C  # noqa: E402
import tiles as T  # noqa: E402

CONNECTIONS = 6
COLUMNS, ROWS = 4, 3


def views(bounds, count: int, zoom: int = 12) -> tuple[int, list[list[tuple[int, int, int]]]]:
    """The first zoom from `zoom` on at which a view of COLUMNS × ROWS whole tiles fits inside `bounds`, and
    `count` different views there (tiles in row order)."""
    sys.path.insert(0, str(T.BENCH_DIR))
    import bench_server as B

    x0, y0 = B.lonlat_to_tile(bounds[0], bounds[3], zoom)
    x1, y1 = B.lonlat_to_tile(bounds[2], bounds[1], zoom)
    x0, y0 = x0 + 1, y0 + 1  # whole tiles only: skip the partly covered first row and column
    if x1 - x0 < COLUMNS or y1 - y0 < ROWS:
        if zoom >= 18:
            raise ValueError(f"no {COLUMNS} × {ROWS} view of whole tiles fits in {bounds}")
        return views(bounds, count, zoom + 1)
    origins = [(x, y) for y in range(y0, y1 - ROWS + 1) for x in range(x0, x1 - COLUMNS + 1)]
    step = max(1, len(origins) // count)
    return zoom, [[(zoom, x + i, y + j) for j in range(ROWS) for i in range(COLUMNS)]
                  for x, y in origins[::step][:count]]


def fill(base: str, paths: list[str], connections: int = CONNECTIONS) -> dict:
    """Request `paths` over `connections` keep-alive connections; first and last tile times in ms."""
    sys.path.insert(0, str(T.BENCH_DIR))
    import bench_server as B

    todo: queue.Queue = queue.Queue()
    for path in paths:
        todo.put(path)
    done: list[tuple[float, int]] = []
    lock = threading.Lock()
    start = time.perf_counter()

    def worker():
        conn = B.Conn(base, 120)
        try:
            while True:
                try:
                    path = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    status = conn.get(path)[0]
                except OSError:
                    status = -1
                with lock:
                    done.append(((time.perf_counter() - start) * 1000, status))
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    times = sorted(t for t, _ in done)
    return dict(first_ms=round(times[0], 1), last_ms=round(times[-1], 1),
                errors=sum(1 for _, status in done if status != 200))


def run(ctx: T.Context, workers: int = 1, rounds: int | None = None) -> dict:
    """Fills of the same views on jeo-tiler and titiler, interleaved; adds one row to ctx.results."""
    p = ctx.profile
    rounds = rounds or (3 if p.quick else 6)
    zoom, blocks = views(ctx.synth["bounds"], rounds + 1)
    variables = {"cid": ctx.synth["collection"], "mosaic": ctx.synth["mosaic"]}
    templates = {"ours": C.jeo_t("median"), "theirs": C.tt_t("median")}
    T.log(f"\n## viewport fill: {COLUMNS}×{ROWS} composite tiles at z{zoom} over {CONNECTIONS} connections, "
          f"{rounds} views")
    specs = {"ours": T.jeo_server(ctx, workers), "theirs": T.titiler_server(ctx, workers)}
    servers = {who: T.RunningServer(ctx, spec, f"viewport-{who}") for who, spec in specs.items()}
    fills: dict[str, list[dict]] = {"ours": [], "theirs": []}
    try:
        for server in servers.values():
            server.__enter__()
        for who, server in servers.items():  # warm-up: GDAL, numba, page cache of the first view
            fill(server.spec.base, [T.fill(templates[who], t, variables) for t in blocks[0]])
        for r, block in enumerate(blocks[1:]):
            order = ["ours", "theirs"] if r % 2 == 0 else ["theirs", "ours"]
            for who in order:
                result = fill(servers[who].spec.base, [T.fill(templates[who], t, variables) for t in block])
                fills[who].append(result)
                T.log(f"    view {r + 1} {'jeo-tiler' if who == 'ours' else 'titiler  '}: first tile "
                      f"{result['first_ms']} ms, last tile {result['last_ms']} ms"
                      f"{', errors ' + str(result['errors']) if result['errors'] else ''}")
    finally:
        for server in servers.values():
            if server.server.proc is not None:
                server.__exit__(None, None, None)

    def metrics(results: list[dict]) -> dict:
        last = [r["last_ms"] for r in results]
        p50 = statistics.median(last)
        return dict(p50=p50, p95=max(last), rps=round(len(blocks[0]) / (p50 / 1000), 2), n=len(results),
                    first_tile_p50=statistics.median(r["first_ms"] for r in results),
                    errors=sum(r["errors"] for r in results))

    ours, theirs = metrics(fills["ours"]), metrics(fills["theirs"])
    ctx.results.append(dict(
        section="viewport", case=f"viewport fill: {COLUMNS}×{ROWS} composite median tiles, {CONNECTIONS} connections "
        "(p50 / worst ms to the last tile; req/s = tiles per second)", data=f"synthetic z{zoom}", workers=workers,
        clients=CONNECTIONS, ours=ours, theirs=theirs,
        note=f"first tile p50 {T.fmt(ours['first_tile_p50'])} vs {T.fmt(theirs['first_tile_p50'])} ms; "
             f"errors {ours['errors']} / {theirs['errors']}; target ≤ 0.3× titiler (issue 14)"))
    return dict(zoom=zoom, views=blocks, ours=fills["ours"], theirs=fills["theirs"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 scenes of 2048² px (z13 views), 3 views")
    ap.add_argument("--rounds", type=int, default=None, help="views measured per server")
    a = ap.parse_args()
    ctx = T.setup(a.quick)
    try:
        run(ctx, rounds=a.rounds)
    finally:
        T.shutil.rmtree(ctx.home, ignore_errors=True)
    print("\n" + T.markdown_table(ctx.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
