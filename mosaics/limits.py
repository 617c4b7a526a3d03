"""Resource limits of a request, checked before anything is read, and a per-process memory budget.

One formula bounds the memory of every read (`MemoryEstimate`): tiles, points, previews, parts and export
chunks hold float32 values of every scene's bands read (recipe inputs, extra method bands and the mask)
plus the output bands, on the output grid grown by the buffer and the mask-dilation margin. A request
whose estimate exceeds `Limits.max_bytes` is refused (InvalidParameter naming the parameter to change);
the estimates of the requests being computed at once share a `MemoryBudget`: beyond it, requests queue
(first come, first served) for a few seconds and then get `Busy` (HTTP 503 with `Retry-After`).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mosaics.errors import InvalidParameter, JeoError
from mosaics.recipe import Recipe

BYTES_PER_VALUE = 4  # float32


class Busy(JeoError):
    """The process's memory budget stayed exhausted for the whole wait. HTTP 503 with `Retry-After`."""

    def __init__(self, needed: int, retry_after: int):
        self.retry_after = retry_after
        super().__init__(
            f"server busy: no memory budget for this request ({needed / 2**20:,.1f} MiB) within the wait; "
            f"retry in {retry_after} s"
        )


@dataclass(frozen=True)
class MemoryEstimate:
    """What one read holds at once: `(scenes × bands + outputs) × pixels × 4 bytes`.

    `bands` counts per scene every band read (recipe inputs, extra method bands, mask); `margin` is read on
    each side of the `width` × `height` grid (buffer, mask-dilation margin).
    """

    scenes: int
    bands: int
    outputs: int
    width: int
    height: int
    margin: float = 0

    @property
    def pixels(self) -> int:
        """Pixels of the grid grown by the margin."""
        return math.ceil(self.width + 2 * self.margin) * math.ceil(self.height + 2 * self.margin)

    @property
    def bytes(self) -> int:
        """The bound in bytes."""
        return (self.scenes * self.bands + self.outputs) * self.pixels * BYTES_PER_VALUE

    def __str__(self) -> str:
        grown = f" + {2 * self.margin:g} margin" if self.margin else ""
        return (
            f"({self.scenes} scene{'s' * (self.scenes != 1)} × {self.bands} bands + {self.outputs} outputs) × "
            f"({self.width}{grown}) × ({self.height}{grown}) px × {BYTES_PER_VALUE} B = {self.bytes / 2**20:,.1f} MiB"
        )


def check_memory(estimate: MemoryEstimate, limit: int, parameter: str) -> None:
    """InvalidParameter naming `parameter` when `estimate` exceeds `limit` bytes."""
    if estimate.bytes > limit:
        raise InvalidParameter(parameter, f"{estimate} exceeds the limit of {limit / 2**20:,.0f} MiB")


class MemoryBudget:
    """Bytes that the requests computed at once in this process may hold together; waiting is first in, first out.

    A request larger than the whole budget is let through alone.
    """

    def __init__(self, capacity: int, wait: float):
        self.capacity, self.wait = capacity, wait
        self._used = 0
        self._queue: deque[object] = deque()
        self._changed = threading.Condition()

    @property
    def used(self) -> int:
        """Bytes reserved now."""
        return self._used

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold `nbytes` of the budget; wait up to `wait` seconds in line for them, else raise `Busy`."""
        nbytes = min(nbytes, self.capacity)
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            if not self._changed.wait_for(
                lambda: self._queue[0] is ticket and self._used + nbytes <= self.capacity, timeout=self.wait
            ):
                self._queue.remove(ticket)
                self._changed.notify_all()
                raise Busy(nbytes, max(1, math.ceil(self.wait)))
            self._queue.popleft()
            self._used += nbytes
            self._changed.notify_all()  # the next in line may fit as well
        try:
            yield
        finally:
            with self._changed:
                self._used -= nbytes
                self._changed.notify_all()


@dataclass(frozen=True)
class Limits:
    """The caps of one request (from `JEO_MAX_*` / `JEO_REQUEST_*` settings) and the process's budget."""

    max_buffer: float
    max_padding: int
    max_tile_size: int
    max_image_size: int
    max_output_bands: int
    max_bytes: int
    budget: MemoryBudget | None = None

    def check_tile(self, tilesize: int, buffer: float | None = None, padding: int | None = None,
                   size_parameter: str = "tilesize") -> None:
        """Tile size (named `size_parameter`: `tilesize` or `scale`), `buffer` and `padding` within their caps."""
        if not 0 < tilesize <= self.max_tile_size:
            raise InvalidParameter(size_parameter, f"a tile of {tilesize} px is outside 1–{self.max_tile_size} px")
        if buffer is not None:
            if not 0 <= buffer <= self.max_buffer:
                raise InvalidParameter("buffer", f"{buffer:g} is outside 0–{self.max_buffer:g} px")
            if buffer * 2 != int(buffer * 2):
                raise InvalidParameter("buffer", f"{buffer:g} is not a multiple of 0.5")
        if padding is not None and not 0 <= padding <= self.max_padding:
            raise InvalidParameter("padding", f"{padding} is outside 0–{self.max_padding} px")

    def check_image(self, **sizes: int | None) -> None:
        """Image sizes (`width=`, `height=`, `max_size=`) within 1–`max_image_size` pixels."""
        for name, value in sizes.items():
            if value is not None and not 0 < value <= self.max_image_size:
                raise InvalidParameter(name, f"{value} px is outside 1–{self.max_image_size} px")

    def check_outputs(self, recipe: Recipe) -> None:
        """The recipe's output bands within `max_output_bands`."""
        count = len(recipe.descriptions)
        if count > self.max_output_bands:
            raise InvalidParameter(recipe.parameter, f"{count} output bands is above the limit of {self.max_output_bands}")

    @contextmanager
    def admit(self, estimate: MemoryEstimate, parameter: str) -> Iterator[None]:
        """Refuse an estimate above `max_bytes` (naming `parameter`), then hold it in the budget while computing."""
        check_memory(estimate, self.max_bytes, parameter)
        if self.budget is None:
            yield
        else:
            with self.budget.reserve(estimate.bytes):
                yield
