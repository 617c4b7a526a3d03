"""Benchmark of the algorithms/ kernels (not a test): ``python benchmarks/kernels.py``.

A T × B × H × W uint16 stack (default 20 × 4 × 512², reflectance-like DN with some bright
"cloud" outliers) with 40 % of the observations masked. For each kernel: best-of-``--repeat``
wall time and throughput in Mpx/s (output pixels H·W per second) with 1 thread and with all
numba threads, next to numpy.ma.median, numpy.nanmedian and rio-tiler's MedianMethod. Then the
time a fresh process needs to import the package and make its first call, with a warm numba
cache, and the same for a trivial cached numba function (numba's own floor).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import numba
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from algorithms import composite  # noqa: E402

KERNELS = {
    "first_valid": lambda s, v, score: composite.first_valid(s, v, return_index=True),
    "max_score": lambda s, v, score: composite.max_score(s, v, score, return_index=True),
    "median": lambda s, v, score: composite.median(s, v),
    "percentile(90)": lambda s, v, score: composite.percentile(s, v, 90),
    "mean": lambda s, v, score: composite.mean(s, v),
    "medoid": lambda s, v, score: composite.medoid(s, v, return_index=True),
    "geomedian": lambda s, v, score: composite.geomedian(s, v),
    "count": lambda s, v, score: composite.count(v),
}


def make_stack(t: int, b: int, size: int, masked: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.integers(300, 4000, (1, b, size, size))
    stack = base + rng.normal(0, 150, (t, b, size, size))
    stack += 3000 * (rng.random((t, 1, size, size)) < 0.2)  # bright outliers, like clouds
    valid = rng.random((t, size, size)) >= masked
    score = rng.random((t, size, size)).astype(np.float32)
    return stack.clip(1, 65535).astype(np.uint16), valid, score


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def rio_tiler_median(stack, valid):
    from rio_tiler.mosaic.methods.defaults import MedianMethod

    method = MedianMethod()
    for t in range(stack.shape[0]):
        mask = np.broadcast_to(~valid[t], stack.shape[1:])
        method.feed(np.ma.MaskedArray(stack[t], mask=mask))
    return method.data


def fresh_process(code: str, env: dict[str, str] | None = None) -> float:
    """Run ``code`` twice in new interpreters (the first fills the cache); return the second's
    printed time."""
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=ROOT, env=env, check=True)
    return float(out.stdout.split()[-1])


STARTUP = textwrap.dedent("""
    import time
    start = time.perf_counter()
    import numpy as np
    from algorithms import composite
    s = np.ones((2, 2, 4, 4), np.uint16); v = np.ones((2, 4, 4), bool)
    composite.{kernel}(s, v)
    print(time.perf_counter() - start)
""")

FLOOR = textwrap.dedent("""
    import time
    start = time.perf_counter()
    import numpy as np
    import trivial
    trivial.f(np.ones(3))
    print(time.perf_counter() - start)
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dates", type=int, default=20)
    parser.add_argument("--bands", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--masked", type=float, default=0.4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    stack, valid, score = make_stack(args.dates, args.bands, args.size, args.masked)
    mpx = args.size**2 / 1e6
    threads = numba.config.NUMBA_NUM_THREADS
    print(f"stack {stack.shape} {stack.dtype}, {100 * (~valid).mean():.0f} % masked; "
          f"numba {numba.__version__}, threading layer after first call below, {threads} threads; "
          f"best of {args.repeat}\n")

    rows = {}
    for name, kernel in KERNELS.items():
        kernel(stack[..., :8, :8], valid[..., :8, :8], score[..., :8, :8])  # compile / load
        timings = []
        for n in (1, threads):
            numba.set_num_threads(n)
            timings.append(best_time(lambda k=kernel: k(stack, valid, score), args.repeat))
        rows[name] = timings
    numba.set_num_threads(threads)

    masked = np.ma.MaskedArray(stack, mask=np.broadcast_to(~valid[:, None], stack.shape))
    with_nan = np.where(valid[:, None], stack.astype(np.float32), np.float32(np.nan))
    baselines = {"numpy.ma.median": lambda: np.ma.median(masked, axis=0)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        baselines["numpy.nanmedian"] = lambda: np.nanmedian(with_nan, axis=0)
        try:
            import rio_tiler  # noqa: F401

            baselines["rio-tiler MedianMethod"] = lambda: rio_tiler_median(stack, valid)
        except ImportError:
            pass
        base = {name: best_time(fn, max(1, args.repeat - 1)) for name, fn in baselines.items()}
    reference = base["numpy.ma.median"]

    print(f"threading layer: {numba.threading_layer()}")
    header = f"{'kernel':<24}{'1 thread s':>11}{'Mpx/s':>8}{f'{threads} threads s':>14}{'Mpx/s':>8}"
    print(header + f"{'vs ma.median':>14}")
    print("-" * (len(header) + 14))
    for name, (one, many) in rows.items():
        print(f"{name:<24}{one:>11.3f}{mpx / one:>8.1f}{many:>14.3f}{mpx / many:>8.1f}"
              f"{reference / many:>13.1f}x")
    for name, seconds in base.items():
        print(f"{name:<24}{seconds:>11.3f}{mpx / seconds:>8.2f}{'(numpy, 1 thread)':>22}"
              f"{reference / seconds:>13.1f}x")

    print("\nfresh process, warm numba cache: import + first call (uint16 4×4 stack)")
    startup = {k: fresh_process(STARTUP.format(kernel=k)) for k in ("median", "geomedian", "medoid")}
    for kernel, seconds in startup.items():
        print(f"  algorithms.composite.{kernel:<12}{seconds:6.3f} s")
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "trivial.py").write_text(
            "from numba import njit\n\n@njit(cache=True)\ndef f(x):\n    return x.sum()\n")
        env = {**os.environ, "PYTHONPATH": tmp}
        floor = fresh_process(FLOOR, env)
    print(f"  trivial cached @njit (numba floor) {floor:6.3f} s")

    median_speedup = reference / rows["median"][1]
    print("\ntargets (this machine, all threads):")
    print(f"  median ≥ 10× numpy.ma.median: {median_speedup:.0f}× "
          f"{'OK' if median_speedup >= 10 else 'MISSED'}")
    geo = rows["geomedian"][1]
    print(f"  geomedian {args.dates}×{args.bands}×{args.size}² ≤ 1 s: {geo:.2f} s {'OK' if geo <= 1 else 'MISSED'}")
    first = startup["median"]
    print(f"  warm-cache import + first call ≤ 0.5 s: {first:.2f} s {'OK' if first <= 0.5 else 'MISSED'}"
          f" (numba alone: {floor:.2f} s)")


if __name__ == "__main__":
    main()
