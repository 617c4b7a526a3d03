#!/usr/bin/env python3
"""Cost growth: composite tile p50 at 5, 10, 20 and 40 scenes, jeo-tiler and titiler, and the slope (issue 14).

Data: a 40-scene synthetic set of its own (../shared/bench/make_data.py, `/tmp/jeo-benchdata-growth`:
40 × 2048² px; --quick `/tmp/jeo-benchdata-growth-quick`: 40 × 1024² px; generated once), converted to STAC as
collection `bench-growth`. For N scenes: jeo-tiler `method=median` with the cloud masks and `max_items=N`
(the N newest scenes), titiler's MosaicJSON median over the same N newest 4-band COGs (one MosaicJSON per N,
written with cogeo-mosaic in the titiler venv). Both servers side by side (`tiles.bench_pair`: fresh servers,
cold and warm passes, throughput windows alternating at 1 client) on the same tile list (z12-13).

Reported: p50 per N for both and their ratio, and the least-squares slope of p50 over N (ms per added scene)
of each server with the ratio of the slopes.

    .venv/bin/python benchmarks/growth.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import composites as C  # noqa: E402
import tiles as T  # noqa: E402

COUNTS = (5, 10, 20, 40)
COLLECTION = "bench-growth"
DATA = Path("/tmp/jeo-benchdata-growth")
QUICK_DATA = Path("/tmp/jeo-benchdata-growth-quick")


def mosaics(ctx: T.Context, synth: dict) -> dict[int, str]:
    """One MosaicJSON per scene count N over the N newest scenes' 4-band COGs."""
    scenes = sorted(synth["manifest"]["scenes"], key=lambda s: s["date"])
    out = {}
    for n in COUNTS:
        out[n] = str(ctx.work / f"growth_mosaic_{n}.json")
        C.write_mosaic(Path(out[n]), [s["image"] for s in scenes[-n:]])
    return out


def slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else None


def run(ctx: T.Context, workers: int = 1, data: Path | None = None, size: int | None = None) -> dict:
    """Ingest the growth set (default: DATA, or QUICK_DATA for quick runs) into ctx.home, run the pairs, add one
    row per N and one for the slopes."""
    quick = ctx.profile.quick
    synth = T.ensure_synthetic_data(ctx.profile, data=data or (QUICK_DATA if quick else DATA), scenes=max(COUNTS),
                                    size=size or (1024 if quick else 2048), collection=COLLECTION)
    T.ingest(ctx.home, [synth["catalog"]], [synth["data"]])
    paths = mosaics(ctx, synth)
    variables = {"cid": COLLECTION, **{f"mosaic{n}": path for n, path in paths.items()}}
    jeo = C.jeo_t("median").replace("max_items=20", "max_items={n}")
    cases = {f"n{n}": (jeo.replace("{n}", str(n)), C.tt_t("median").replace("{mosaic}", f"{{mosaic{n}}}"))
             for n in COUNTS}
    zooms = "12-13"
    T.log(f"\n## cost growth: composite median at {', '.join(map(str, COUNTS))} scenes (z{zooms})")
    one_client = dataclasses.replace(ctx, profile=dataclasses.replace(ctx.profile, concurrency="1"))
    data = Path(synth["data"])
    res = T.bench_pair(one_client, f"growth-w{workers}", T.jeo_server(ctx, workers, evict_dir=str(data / "bands")),
                       T.titiler_server(ctx, workers, evict_dir=str(data)), cases, synth["bounds"], zooms, variables,
                       per_zoom=6 if quick else 12, latency_max=4 if quick else 8, rounds=ctx.profile.composite_rounds,
                       max_window=ctx.profile.composite_max_window)
    points: dict[str, list[tuple[int, float]]] = {"ours": [], "theirs": []}
    for n in COUNTS:
        ours, theirs = T.case_result(res["ours"], f"n{n}"), T.case_result(res["theirs"], f"n{n}")
        T.add_row(one_client, "growth", f"composite median, {n} scenes (jeo: cloud masks)", f"synthetic z{zooms}",
                  workers, ours, theirs, note="titiler: MosaicJSON over the same newest scenes")
        for who, case in (("ours", ours), ("theirs", theirs)):
            if case and case["throughput"][0].get("p50"):
                points[who].append((n, case["throughput"][0]["p50"]))
    slopes = {who: slope(p) for who, p in points.items()}
    ratio = T.ratio(slopes["ours"], slopes["theirs"])
    note = (f"ms per added scene (least squares over {', '.join(map(str, COUNTS))}): jeo "
            f"{T.fmt(slopes['ours'], 1)}, titiler {T.fmt(slopes['theirs'], 1)}; slope ratio {ratio}")
    ctx.results.append(dict(section="growth", case="cost growth per scene (slope of p50)", data=f"synthetic z{zooms}",
                            workers=workers, clients=1, ours=None, theirs=None, note=note))
    T.log(f"    {note}")
    return dict(ours=res["ours"], theirs=res["theirs"], slopes=slopes, points=points)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="40 scenes of 1024² px, short windows")
    a = ap.parse_args()
    ctx = T.setup(a.quick)
    try:
        raw = run(ctx)
    finally:
        T.shutil.rmtree(ctx.home, ignore_errors=True)
    (ctx.out / "growth.json").write_text(json.dumps(dict(rows=ctx.results, slopes=raw["slopes"]), indent=1))
    print("\n" + T.markdown_table(ctx.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
