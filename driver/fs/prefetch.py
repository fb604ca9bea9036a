"""Per-open-file prefetching of an object with parallel ranged GETs.

Design (after mountpoint-s3's prefetcher): a read at the position the stream expects keeps
the stream going and doubles the read-ahead window, up to `part_size * max_parallel`; the
window is covered by requests of up to `part_size` bytes that run in parallel. A read far
from the stream resets it to a small first request, so random readers do not pay for
sequential read-ahead. Parts already read are kept for `keep_behind` bytes below the highest
offset read, because the kernel's read-ahead requests arrive somewhat out of order. Every
byte a prefetcher holds is charged to the mount's `MemoryBudget` (driver/fs/memory.py):
read-ahead only when it fits, the bytes a read waits on by waiting for room; a prefetcher
gives back its idle parts (`shed`) when another reader or a writer is waiting. With a
block cache (`align` = its block size) a stream's parts end on block boundaries, so no two
fetch the same block; a random reader's part is just its read, of which the cache reads
only the sectors it needs (and fetches a missing block whole).
"""

from __future__ import annotations

import errno
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from driver import metrics
from driver.fs.buffers import PartData, views
from driver.fs.errors import FsError
from driver.fs.memory import BudgetTimeout, MemoryBudget

__all__ = ["FIRST_PART", "FIRST_REQUEST", "MemoryBudget", "Prefetcher"]

MiB = 1024 * 1024
FIRST_REQUEST = 1 * MiB + 128 * 1024  # enough for the kernel's first 1 MiB read
FIRST_PART = 128 * 1024  # a fresh stream's first GET when its first read is small


@dataclass(eq=False)
class _Part:
    start: int
    end: int
    done: trio.Event = field(default_factory=trio.Event)
    data: PartData = b""
    error: BaseException | None = None
    dropped: bool = False


_FETCHED, _USED, _RESETS = (metrics.PREFETCH_BYTES, metrics.PREFETCH_USED_BYTES,
                            metrics.PREFETCH_RESETS)
Fetch = Callable[[int, int], Awaitable[PartData]]


class Prefetcher:
    def __init__(self, fetch: Fetch, size: int, spawn: Callable[..., None],
                 budget: MemoryBudget, part_size: int = 16 * MiB, max_parallel: int = 4,
                 keep_behind: int = 32 * MiB,
                 recycle: Callable[[PartData], None] | None = None,
                 align: int = 1, budget_timeout: float = math.inf) -> None:
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
        self._stream = 0  # counts resets: a read of an older stream must not move this one
        self._closed = False
        self._budget_timeout = budget_timeout
        self._active: list[tuple[int, int]] = []  # ranges of reads in progress: never shed
        self.requests = 0
        budget.register(self)

    async def read(self, offset: int, length: int) -> memoryview | bytes:
        length = min(length, self.size - offset)
        if length <= 0:
            return b""
        end = offset + length
        span = (offset, end)
        self._active.append(span)
        try:
            return await self._read(offset, end)
        finally:
            self._active.remove(span)

    async def _read(self, offset: int, end: int) -> memoryview | bytes:
        length = end - offset
        for _ in range(64):  # a concurrent read may move the stream while this one waits
            self._position(offset, end)
            own = await self._request_needed(offset, end)
            if self._covered_until(offset) >= end:
                break
            if own is not None:  # the next round may wait: start it for whoever needs it
                self._spawn(self._run, own)
        else:
            raise FsError(errno.EIO, "concurrent reads kept moving the stream")
        self._schedule(end)
        stream = self._stream
        # Only the parts this read needs: a waiting read that held every part would keep
        # the buffers of parts evicted meanwhile from being reused (half came fresh). Taken
        # now: a concurrent read may reset the stream (drop them) while this one waits.
        needed = [p for p in self._parts if p.end > offset and p.start < end]
        if own is not None:
            # Fetched by this read's own task: it waits on the part anyway, and a task of
            # the part's own cost a spawn and two wake-ups per read (same-run A/B, cached
            # random 256 KiB re-reads: 5% less server CPU a read). Nothing ran since the
            # part was added, so no other read has seen it unstarted; a read waiting on it
            # meanwhile sees its result, or its error if this read is cancelled.
            await self._run(own)
        pieces: list[memoryview] = []
        for part in needed:
            await part.done.wait()
            if part.error is not None:
                self._reset(self._next)  # the next read starts a fresh stream
                raise part.error
            lo, hi = max(offset, part.start) - part.start, min(end, part.end) - part.start
            pieces.extend(views(part.data, lo, hi))  # no copy; pyfuse3 takes buffers
        _USED.inc(length)
        # The kernel sends reads concurrently (its own read-ahead among them): when another
        # read restarted the stream while this one waited, this one's end says nothing of
        # where the new stream is, and counting it would request everything up to there.
        if stream == self._stream:
            self._highest = max(self._highest, end)
            self._evict()
            self._schedule(self._highest)
        data = pieces[0] if len(pieces) == 1 else memoryview(b"".join(pieces))
        if len(data) != length:  # pragma: no cover - a bug; never return short or mixed bytes
            raise AssertionError(f"prefetcher assembled {len(data)} of {length} bytes")
        return data

    def _position(self, offset: int, end: int) -> None:
        """Keep, move or restart the stream for a read of [offset, end)."""
        reach = self._covered_until(offset)
        if reach < end and self._parts and self._stream_start <= reach < self._next and \
                reach >= self._parts[0].start - self.part_size:
            # A hole that a short skip left inside the stream, or just before its first part
            # (the parts before it were evicted or shed): the kernel's concurrent
            # read-ahead requests arrive out of order, so the skipped bytes are usually
            # asked for a moment later. Fill the hole; restarting would refetch the stream
            # (four readers sharing the budget fetched 1.19x what they read).
            self._fill_hole(reach, max(end, reach + self._window))
        elif reach == offset and offset != self._next:
            if self._parts and self._next < offset <= self._next + self.part_size:
                self._next = offset  # a short skip forward: keep the stream, leave a hole
            else:
                _RESETS.inc()
                self._reset(offset)
        elif offset >= self._highest >= self._stream_start + self._window:
            # The reader consumed a whole window in order: widen it. Counting consumed
            # bytes, not reads, keeps the kernel's own read-ahead after a random read
            # from inflating the window.
            self._window = min(max(self._window * 2, FIRST_REQUEST), self.max_window)

    async def _request_needed(self, offset: int, need_until: int) -> _Part | None:
        """Request the parts up to `need_until`, waiting for budget for them. The last part
        added is returned unstarted, for the caller to run before its next checkpoint; the
        others are started here."""
        own: _Part | None = None
        while not self._closed and self._next < need_until:
            if own is not None:  # about to add another (and maybe wait): start this one
                self._spawn(self._run, own)
                own = None
            start = self._next
            size = self._part_size_at(need_until)
            if size <= 0:
                return None
            if self._next > offset and not self._budget.try_reserve(size):
                # This read holds its first bytes already: waiting while holding them
                # could deadlock, so take just the rest of the read (at most one read's
                # length over the budget, until it is evicted).
                size = self._aligned(need_until - self._next)
                self._budget.try_reserve(size, force=True)
            elif self._next <= offset and not self._budget.try_reserve(size):
                self._evict(floor=offset)  # what lies behind this read goes first
                try:
                    await self._budget.reserve(size, self._budget_timeout, asker=self)
                except BudgetTimeout as exc:
                    raise FsError(errno.EIO, str(exc)) from exc
                if self._closed:
                    self._budget.release(size)
                    return None
                if self._next != start:  # the stream moved meanwhile: place it again
                    self._position(offset, need_until)
                    if self._covered_until(offset) >= need_until:
                        self._budget.release(size)
                        return None
                    fit = min(size, self.size - self._next)  # and use the grant there
                    self._budget.release(size - fit)
                    size = fit
            own = self._add_part(size, spawn=False)
        return own

    def _part_size_at(self, need_until: int) -> int:
        size = min(self.part_size, self._window, self.size - self._next)
        if not self._parts and need_until - self._next < FIRST_PART:
            # A fresh stream's first read is small (the kernel starts with 16 KiB): answer
            # it from a small GET and fetch the rest of the window behind it, rather than
            # make the first byte wait for all of it (time to first byte).
            size = min(size, FIRST_PART)
        if need_until > self._next:  # the reader waits on these bytes: one request
            size = max(size, min(need_until - self._next, self.part_size))
        return self._aligned(min(size, self.size - self._next))

    def _aligned(self, size: int) -> int:
        if self.align > 1 and self._window:  # a stream's part ends on a cache block boundary
            size = min(-(-(self._next + size) // self.align) * self.align,
                       self.size) - self._next
        return size

    def _add_part(self, size: int, spawn: bool = True) -> _Part:
        part = _Part(self._next, self._next + size)
        self._parts.append(part)
        self._next = part.end
        self.requests += 1
        if spawn:
            self._spawn(self._run, part)
        return part

    def _fill_hole(self, start: int, until: int) -> None:
        """Request [start, until) of the gap before the next part (at most that gap): a
        stream's window fills the whole gap at once, a random reader's only what it asks."""
        index = next(i for i, part in enumerate(self._parts) if part.start > start)
        part = _Part(start, min(until, self._parts[index].start))
        self._budget.try_reserve(part.end - part.start, force=True)  # a read waits on it
        self._parts.insert(index, part)
        self.requests += 1
        self._spawn(self._run, part)

    def shed(self) -> None:
        """Another reservation waits: give back parts no read needs now. First those
        behind the highest byte read, then finished read-ahead from the far end (the
        stream goes on from there); parts still downloading are left to finish."""
        low = min((start for start, _ in self._active), default=self._highest)
        high = max((end for _, end in self._active), default=self._highest)
        while self._parts and self._parts[0].end <= min(self._highest, low):
            self._drop(self._parts.pop(0))
        while self._parts and self._parts[-1].done.is_set() and \
                self._parts[-1].start >= max(self._highest, high):
            part = self._parts.pop()
            self._drop(part)
            self._next = part.start

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
        self._stream += 1
        # A stream that starts mid-file may be a random reader: fetch only what is asked
        # until a second read in order shows a stream (then the window starts to grow).
        self._window = FIRST_REQUEST if offset == 0 else 0

    def _schedule(self, need_until: int) -> None:
        """Request read-ahead parts while the budget has room (never waits)."""
        if self._closed:
            return
        target = min(self.size, max(need_until, self._highest + self._window))
        while self._next < target:
            size = self._part_size_at(need_until)
            if size <= 0 or not self._budget.try_reserve(size):
                return
            self._add_part(size)

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
            elif self._budget.starved():
                self.shed()  # read-ahead that just arrived is the first to go

    def _evict(self, floor: int | None = None) -> None:
        floor = self._highest - self.keep_behind if floor is None else floor
        while self._parts and self._parts[0].end <= floor:
            self._drop(self._parts.pop(0))

    def close(self) -> None:
        self._closed = True
        self._reset(0)
