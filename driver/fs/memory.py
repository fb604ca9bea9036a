"""One memory budget per mount (`--memory-target`), shared by every reader and writer.

Prefetched read parts and buffered or in-flight write parts are charged here before their
bytes exist. Two kinds of reservation:
- speculative (`try_reserve`): read-ahead; granted only when it fits and nobody waits, so
  read-ahead never starves anyone;
- needed (`reserve`): bytes a reader waits on or a writer buffers; waits, first-come
  first-served, until the budget has room. While someone waits, every registered holder is
  asked to `shed()` what it holds only speculatively (prefetched parts no read is using),
  so an idle open file never keeps the others waiting.
A single reservation larger than the whole budget is granted once nothing else is held,
so nothing waits for ever on a budget that can never fit it.

Waiting is bounded: `reserve(..., timeout)` raises `BudgetTimeout` after `timeout`
seconds (the mount's request timeout), so a program that keeps more files half-written
than the budget holds gets an error instead of hanging.
"""

from __future__ import annotations

import math
import weakref
from collections import deque
from typing import Protocol

import trio

from driver import metrics


class Sheddable(Protocol):
    def shed(self) -> None:
        """Give back what is held only speculatively."""


class BudgetTimeout(Exception):
    """The budget had no room for a needed reservation within the timeout."""


class MemoryBudget:
    """Bytes of part data the mount may hold: `limit`; `used` now; `peak` ever."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.waits = 0  # how many needed reservations had to wait (for tests and logs)
        self._waiters: deque[tuple[int, trio.Event, bool]] = deque()
        self._holders: weakref.WeakSet[Sheddable] = weakref.WeakSet()
        metrics.MEMORY_TARGET_BYTES.set(limit)

    def register(self, holder: Sheddable) -> None:
        self._holders.add(holder)

    def _fits(self, size: int) -> bool:
        return self.used + size <= self.limit or self.used == 0

    def _take(self, size: int, prefetch: bool) -> None:
        self.used += size
        self.peak = max(self.peak, self.used)
        if prefetch:  # uploads count their own bytes (MEMORY_UPLOAD)
            metrics.MEMORY_PREFETCH.inc(size)

    def try_reserve(self, size: int, force: bool = False, prefetch: bool = True) -> bool:
        """Speculative: take `size` now if it fits and nobody waits (`force`: always)."""
        if not force and (self._waiters or not self._fits(size)):
            metrics.MEMORY_TARGET_REACHED.inc()
            return False
        self._take(size, prefetch)
        return True

    async def reserve(self, size: int, timeout: float = math.inf,
                      asker: Sheddable | None = None, prefetch: bool = True) -> None:
        """Needed: take `size`, waiting for room (FIFO) up to `timeout` seconds; the other
        holders than `asker` are asked to shed meanwhile."""
        if not self._waiters and self._fits(size):
            self._take(size, prefetch)
            return
        self.waits += 1
        entry = (size, trio.Event(), prefetch)
        self._waiters.append(entry)
        self._shed(asker)
        self._wake()
        try:
            with trio.move_on_after(timeout) as scope:
                await entry[1].wait()
        except BaseException:
            self._withdraw(entry)
            raise
        if scope.cancelled_caught:
            self._withdraw(entry)
            raise BudgetTimeout(f"no room for {size} bytes in a {self.limit}-byte budget "
                                f"within {timeout:.0f}s")

    def starved(self) -> bool:
        """Someone waits for room that is not there."""
        return bool(self._waiters) and not self._fits(self._waiters[0][0])

    def _withdraw(self, entry: tuple[int, trio.Event, bool]) -> None:
        if entry[1].is_set():
            self.release(entry[0], entry[2])  # granted just as we gave up: give it back
        else:
            self._waiters.remove(entry)
            self._wake()

    def _shed(self, asker: Sheddable | None) -> None:
        for holder in list(self._holders):
            if not self._waiters or self._fits(self._waiters[0][0]):
                return
            if holder is not asker:
                holder.shed()

    def _wake(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            size, event, prefetch = self._waiters.popleft()
            self._take(size, prefetch)
            event.set()

    def release(self, size: int, prefetch: bool = True) -> None:
        self.used -= size
        if prefetch:
            metrics.MEMORY_PREFETCH.dec(size)
        assert self.used >= 0, "released more than was reserved"
        self._wake()
