"""mosaics.limits: the memory bound, the caps and the per-process memory budget."""

from __future__ import annotations

import threading
import time

import pytest

from mosaics.errors import InvalidParameter
from mosaics.limits import Busy, Limits, MemoryBudget, MemoryEstimate, check_memory
from mosaics.recipe import Recipe

LIMITS = Limits(max_buffer=64, max_padding=64, max_tile_size=1024, max_image_size=4096, max_output_bands=16,
                max_bytes=512 * 2**20)


def test_estimate_counts_scenes_bands_outputs_and_margins():
    # 20 scenes × (4 bands + mask) + 3 outputs, a 256 px tile with a 2 px buffer and 3 px dilation on each side
    estimate = MemoryEstimate(scenes=20, bands=5, outputs=3, width=256, height=256, margin=5)
    assert estimate.pixels == 266 * 266
    assert estimate.bytes == (20 * 5 + 3) * 266 * 266 * 4
    assert "20 scenes × 5 bands + 3 outputs" in str(estimate)


def test_memory_above_the_limit_names_the_parameter_and_the_limit():
    estimate = MemoryEstimate(scenes=100, bands=7, outputs=16, width=1024, height=1024, margin=114)
    with pytest.raises(InvalidParameter) as raised:
        check_memory(estimate, 512 * 2**20, "max_items")
    assert raised.value.parameter == "max_items"
    assert "512 MiB" in str(raised.value) and "4,281.4 MiB" in str(raised.value)
    check_memory(MemoryEstimate(1, 3, 3, 256, 256), 512 * 2**20, "assets")


@pytest.mark.parametrize(
    "call,parameter",
    [
        (lambda: LIMITS.check_tile(2048), "tilesize"),
        (lambda: LIMITS.check_tile(2048, size_parameter="scale"), "scale"),
        (lambda: LIMITS.check_tile(256, buffer=1000), "buffer"),
        (lambda: LIMITS.check_tile(256, buffer=0.3), "buffer"),
        (lambda: LIMITS.check_tile(256, padding=65), "padding"),
        (lambda: LIMITS.check_image(width=4097), "width"),
        (lambda: LIMITS.check_image(height=0), "height"),
        (lambda: LIMITS.check_image(max_size=-1), "max_size"),
        (lambda: LIMITS.check_outputs(Recipe(expression=";".join(["B04"] * 17))), "expression"),
        (lambda: LIMITS.check_outputs(Recipe(assets=("B04",) * 17)), "assets"),
    ],
)
def test_caps_name_the_parameter(call, parameter):
    with pytest.raises(InvalidParameter) as raised:
        call()
    assert raised.value.parameter == parameter


def test_caps_allow_what_is_within_them():
    LIMITS.check_tile(1024, buffer=64, padding=64)
    LIMITS.check_tile(256, buffer=0.5)
    LIMITS.check_image(width=4096, height=1, max_size=None)
    LIMITS.check_outputs(Recipe(expression=";".join(["B04"] * 16)))


def _hold(budget: MemoryBudget, nbytes: int, entered: threading.Event, release: threading.Event) -> threading.Thread:
    def run():
        with budget.reserve(nbytes):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=run)
    thread.start()
    assert entered.wait(10)
    return thread


def test_budget_refuses_after_the_wait_and_frees_on_exit():
    budget = MemoryBudget(capacity=100, wait=0.2)
    release = threading.Event()
    holder = _hold(budget, 80, threading.Event(), release)
    with budget.reserve(20):  # fits beside it
        assert budget.used == 100
    started = time.monotonic()
    with pytest.raises(Busy) as raised:
        with budget.reserve(30):
            pass
    assert time.monotonic() - started >= 0.2
    assert raised.value.retry_after == 1
    release.set()
    holder.join()
    assert budget.used == 0
    with budget.reserve(100):
        assert budget.used == 100


def test_budget_queues_first_in_first_out():
    """A waiting large request is not overtaken by small ones that would fit."""
    budget = MemoryBudget(capacity=100, wait=10)
    release = threading.Event()
    holder = _hold(budget, 60, threading.Event(), release)
    order: list[str] = []

    def request(name: str, nbytes: int) -> threading.Thread:
        def run():
            with budget.reserve(nbytes):
                order.append(name)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    large = request("large", 90)
    time.sleep(0.2)
    small = request("small", 10)  # would fit now, but waits behind "large"
    time.sleep(0.2)
    assert order == []
    release.set()
    for thread in (holder, large, small):
        thread.join(10)
    assert order == ["large", "small"]


def test_a_request_larger_than_the_budget_runs_alone():
    budget = MemoryBudget(capacity=100, wait=0.1)
    with budget.reserve(10**12):
        assert budget.used == 100
        with pytest.raises(Busy):
            with budget.reserve(1):
                pass
