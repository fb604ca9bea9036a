"""Per-open-file prefetching of an object with parallel ranged GETs.

Design (after mountpoint-s3's prefetcher): a read at the position the stream expects keeps
the stream going and doubles the read-ahead window, up to `part_size * max_parallel`; the
window is covered by requests of up to `part_size` bytes that run in parallel. A read far
from the stream resets it to a small first request, so random readers do not pay for
sequential read-ahead. Parts already read are kept for `keep_behind` bytes below the highest
offset read, because the kernel's read-ahead requests arrive somewhat out of order. Every
byte a prefetcher holds is charged to a `MemoryBudget` shared by the whole mount. With a
block cache (`align` = its block size) parts end on block boundaries, so no two parts
fetch the same block.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from driver import metrics

MiB = 1024 * 1024
FIRST_REQUEST = 1 * MiB + 128 * 1024  # enough for the kernel's first 1 MiB read


class MemoryBudget:
    """Bytes of prefetched data the mount may hold; a file may always hold one part."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        metrics.MEMORY_TARGET_BYTES.set(limit)

    def try_reserve(self, size: int, force: bool = False) -> bool:
        if not force and self.used + size > self.limit:
            metrics.MEMORY_TARGET_REACHED.inc()
            return False
        self.used += size
        self.peak = max(self.peak, self.used)
        metrics.MEMORY_PREFETCH.inc(size)
        return True

    def release(self, size: int) -> None:
        self.used -= size
        metrics.MEMORY_PREFETCH.dec(size)


@dataclass(eq=False)
class _Part:
    start: int
    end: int
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | bytearray | memoryview = b""
    error: BaseException | None = None
    dropped: bool = False


_FETCHED, _USED, _RESETS = (metrics.PREFETCH_BYTES, metrics.PREFETCH_USED_BYTES,
                            metrics.PREFETCH_RESETS)
Fetch = Callable[[int, int], Awaitable[bytes | bytearray | memoryview]]


class Prefetcher:
    def __init__(self, fetch: Fetch, size: int, spawn: Callable[..., None],
                 budget: MemoryBudget, part_size: int = 16 * MiB, max_parallel: int = 4,
                 keep_behind: int = 32 * MiB,
                 recycle: Callable[[bytes | bytearray | memoryview], None] | None = None,
                 align: int = 1) -> None:
        self._fetch = fetch
        self._recycle = recycle  # takes the data of dropped parts (a BufferPool's give)
        self.align = align
        self._spawn = spawn  # nursery.start_soon of a nursery that outlives this file
        self._budget = budget
        self.size = size
        self.part_size = part_size
        self.max_window = part_size * max_parallel
        self.keep_behind = keep_behind
        self._parts: list[_Part] = []  # sorted, contiguous from _parts[0].start to _next
        self._next = 0  # where the next request starts
        self._window = FIRST_REQUEST
        self._highest = 0  # highest offset read so far in this stream
        self._stream_start = 0
        self._closed = False
        self.requests = 0

    async def read(self, offset: int, length: int) -> memoryview | bytes:
        length = min(length, self.size - offset)
        if length <= 0:
            return b""
        end = offset + length
        reach = self._covered_until(offset)
        if reach == offset and offset != self._next:
            if self._parts and self._next < offset <= self._next + self.part_size:
                self._next = offset  # a short skip forward: keep the stream, leave a hole
            else:
                _RESETS.inc()
                self._reset(offset)
        elif reach < end and reach != self._next:
            _RESETS.inc()
            self._reset(offset)  # a hole inside the range: start over here
        elif offset >= self._highest >= self._stream_start + self._window:
            # The reader consumed a whole window in order: widen it. Counting consumed
            # bytes, not reads, keeps the kernel's own read-ahead after a random read
            # from inflating the window.
            self._window = min(max(self._window * 2, FIRST_REQUEST), self.max_window)
        self._schedule(end)
        pieces: list[memoryview] = []
        for part in list(self._parts):
            if part.end <= offset or part.start >= end:
                continue
            await part.done.wait()
            if part.error is not None:
                self._reset(self._next)  # the next read starts a fresh stream
                raise part.error
            lo, hi = max(offset, part.start) - part.start, min(end, part.end) - part.start
            pieces.append(memoryview(part.data)[lo:hi])  # no copy; pyfuse3 takes buffers
        _USED.inc(length)
        self._highest = max(self._highest, end)
        self._evict()
        self._schedule(self._highest)
        data = pieces[0] if len(pieces) == 1 else memoryview(b"".join(pieces))
        if len(data) != length:  # pragma: no cover - a bug; never return short or mixed bytes
            raise AssertionError(f"prefetcher assembled {len(data)} of {length} bytes")
        return data

    def _covered_until(self, offset: int) -> int:
        """The end of the contiguous run of requested parts that contains `offset`."""
        reach = offset
        for part in self._parts:
            if part.start <= reach < part.end:
                reach = part.end
            elif part.start > reach:
                break
        return reach

    def _drop(self, part: _Part) -> None:
        """Forget a part; it stops counting once its GET is no longer running. Its data is
        left alone: a concurrent read may still be waiting on it and will slice it."""
        if part.done.is_set():
            self._budget.release(part.end - part.start)
            if self._recycle is not None:
                self._recycle(part.data)
        else:
            part.dropped = True  # _run releases it when the download ends

    def _reset(self, offset: int) -> None:
        for part in self._parts:
            self._drop(part)
        self._parts.clear()
        self._next = self._highest = self._stream_start = offset
        # A stream that starts mid-file may be a random reader: fetch only what is asked
        # until a second read in order shows a stream (then the window starts to grow).
        self._window = FIRST_REQUEST if offset == 0 else 0

    def _schedule(self, need_until: int) -> None:
        """Request parts until `need_until` and the window ahead of the reader are covered."""
        if self._closed:
            return
        target = min(self.size, max(need_until, self._highest + self._window))
        while self._next < target:
            size = min(self.part_size, self._window, self.size - self._next)
            if need_until > self._next:  # the reader waits on these bytes: one request
                size = max(size, min(need_until - self._next, self.part_size))
            size = min(size, self.size - self._next)
            if self.align > 1:  # end on a cache block boundary
                size = min(-(-(self._next + size) // self.align) * self.align,
                           self.size) - self._next
            if size <= 0:
                return
            if not self._budget.try_reserve(size, force=self._next < need_until):
                return
            part = _Part(self._next, self._next + size)
            self._parts.append(part)
            self._next = part.end
            self.requests += 1
            self._spawn(self._run, part)

    async def _run(self, part: _Part) -> None:
        try:
            part.data = await self._fetch(part.start, part.end)
            _FETCHED.inc(len(part.data))
        except trio.Cancelled:
            part.error = OSError("prefetch cancelled")
            raise
        except BaseException as exc:  # noqa: BLE001 - delivered to the reader
            part.error = exc
        finally:
            part.done.set()
            if part.dropped:
                self._budget.release(part.end - part.start)
                if self._recycle is not None:
                    self._recycle(part.data)

    def _evict(self) -> None:
        floor = self._highest - self.keep_behind
        while self._parts and self._parts[0].end <= floor:
            self._drop(self._parts.pop(0))

    def close(self) -> None:
        self._closed = True
        self._reset(0)
