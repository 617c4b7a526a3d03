"""Package-level rules of algorithms/: numba options, warm-up, no I/O imports."""

from __future__ import annotations

import ast
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from numba.core.registry import CPUDispatcher

import algorithms
from algorithms import composite, corrections, expression, indices, masks, statistics

MODULES = (composite, corrections, expression, indices, masks, statistics)
DISPATCHERS = [(m.__name__, name, obj) for m in MODULES for name, obj in vars(m).items()
               if isinstance(obj, CPUDispatcher)]


def test_there_are_kernels():
    assert len(DISPATCHERS) >= 15


@pytest.mark.parametrize(("module", "name", "kernel"), DISPATCHERS, ids=[f"{m}.{n}" for m, n, _ in DISPATCHERS])
def test_kernels_are_cached_and_release_the_gil(module, name, kernel):
    assert kernel.targetoptions.get("nogil") is True
    assert type(kernel._cache).__name__ == "FunctionCache", "cache=True missing"
    if module == "algorithms.composite" and name.endswith("_kernel"):
        assert kernel.targetoptions.get("parallel") is True


def test_warmup_runs():
    algorithms.warmup()


def test_concurrent_calls_from_threads_agree_with_serial_ones():
    """The server calls kernels from several threads at once (nogil, thread-safe numba layer)."""
    rng = np.random.default_rng(7)
    jobs = [(rng.integers(0, 5000, (6, 3, 64, 64), dtype=np.uint16), rng.random((6, 64, 64)) < 0.6)
            for _ in range(8)]
    kernels = (composite.median, composite.medoid, composite.geomedian, composite.first_valid)
    serial = [[k(s, v) for k in kernels] for s, v in jobs]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda job: [k(*job) for k in kernels], jobs))
    for a, b in zip(serial, threaded, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


def test_no_io_or_eval_in_the_package():
    """Pure functions: no file, network or process modules, no eval/exec."""
    forbidden_modules = {"os", "io", "pathlib", "socket", "subprocess", "urllib", "requests", "rasterio", "httpx"}
    for path in Path(algorithms.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & forbidden_modules, path
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in forbidden_modules, path
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec", "open", "compile"), path
