"""Reusable part buffers for the prefetcher, so a GiB read does not map 64 fresh buffers.

Every fresh 16 MiB `bytes` is a new mmap (glibc's threshold is kept at 1 MiB so memory goes
back to the OS) whose pages fault in one by one as the socket data is copied in; on this
machine that costs more CPU than the copy itself. A `BufferPool` keeps buffers of dropped
parts and hands them to the next GET of the same size, which fills them with `readinto`.
A fresh buffer of 2 MiB or more is an anonymous mmap: a `bytearray` that size is
zero-filled under the GIL (14% of the FUSE server's GIL samples on a cold sequential read),
while an mmap's pages are zeroed by the kernel when the socket's `recv_into` first touches
them, with the GIL released. It asks for transparent huge pages too (fewer faults where the
kernel grants them; the test machine's does not: its AnonHugePages stay 0).

A buffer is reused only when nothing else refers to it: the part that held it, a reader's
memoryview slice, or pyfuse3 replying with such a slice all hold references, and the pool
checks the reference count before handing a buffer out (CPython counts every view's hold
on its object). So giving a buffer back early is always safe; it is just not reused yet.
The pool holds at most what `room()` allows (the memory budget's unused part) and is emptied when
no file is open for reading.
"""

from __future__ import annotations

import bisect
import itertools
import mmap
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

# getrefcount(free[i]) when only the free list holds the buffer: the list's reference and
# getrefcount's own argument.
_UNSHARED = 2
_HUGE_PAGE = 2 * 1024 * 1024
Buffer = bytearray | mmap.mmap


def fresh_buffer(size: int) -> Buffer:
    """`size` writable bytes, zero until written, touched by no one yet."""
    if size < _HUGE_PAGE:
        return bytearray(size)  # malloc's arenas recycle these; a mapping would cost more
    buffer = mmap.mmap(-1, size)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux; where THP is off it is a harmless hint
        buffer.madvise(mmap.MADV_HUGEPAGE)
    return buffer


class BufferPool:
    """`room()`: how many bytes the free lists may hold now. The mount passes what its
    memory budget has left, so part data in use plus buffers kept for reuse stay within
    the memory target (with four readers a fixed limit let RSS pass it by 120 MiB)."""

    def __init__(self, room: int | Callable[[], int]) -> None:
        self.room: Callable[[], int] = room if callable(room) else (lambda: room)
        self.held = 0  # bytes in the free lists
        self.reused = 0  # buffers handed out again (for tests and diagnostics)
        self._free: dict[int, list[Buffer]] = {}

    def take(self, size: int) -> Buffer:
        """A buffer of exactly `size` bytes (contents undefined)."""
        free = self._free.get(size)
        if free:
            for index in range(len(free)):
                if sys.getrefcount(free[index]) == _UNSHARED:
                    self.held -= size
                    self.reused += 1
                    return free.pop(index)
        self._trim(self.room())  # a fresh buffer is coming: what no longer fits goes back
        return fresh_buffer(size)

    def _trim(self, room: int, keep: int | None = None) -> None:
        """Drop free buffers, but those of size `keep`, until at most `room` bytes are held."""
        for size in [size for size in self._free if size != keep]:
            free = self._free[size]
            while free and self.held > room:
                free.pop()
                self.held -= size
            if not free:
                del self._free[size]

    def give(self, buffer: object) -> None:
        """Offer a part's buffer for reuse (ignored unless it came from `take`).

        When the pool is full, buffers of other sizes make way for it: the size just given
        back is the one a stream's next part will ask for, while sizes left over from a
        stream's start or a hole filled in it (15 MiB, 3 MiB...) are seldom asked for again.
        Kept, they filled the room and the stream's own 16 MiB buffers were refused: half the
        parts of a cached sequential read were fresh buffers, a page fault per 4 KiB.
        """
        if not isinstance(buffer, Buffer) or not len(buffer):
            return
        size, room = len(buffer), self.room()
        if self.held + size > room:
            self._trim(room - size, keep=size)
            if self.held + size > room:
                return  # over the limit: let it go back to the OS
        self._free.setdefault(size, []).append(buffer)
        self.held += size

    def clear(self) -> None:
        self._free.clear()
        self.held = 0


@dataclass(frozen=True, slots=True)
class Blocks:
    """Fetched bytes kept as the consecutive pieces they came in (cache blocks, the sectors
    read of one, a GET's slice) rather than one joined buffer.

    Joining a 16 MiB part of cached blocks was a fifth of the FUSE thread's time on a cached
    read; kept apart, a read is a slice of the one piece it falls in (the kernel's reads
    are block-aligned in a sequential stream) and only a read across a boundary is copied.
    """

    pieces: tuple[memoryview, ...]
    starts: tuple[int, ...]  # where each piece begins in the data
    length: int

    @classmethod
    def of(cls, pieces: Iterable[bytes | bytearray | memoryview]) -> Blocks:
        views = tuple(memoryview(piece) for piece in pieces)
        starts = tuple(itertools.accumulate((len(view) for view in views[:-1]), initial=0))
        return cls(views, starts, sum(len(view) for view in views))

    def __len__(self) -> int:
        return self.length

    def views(self, lo: int, hi: int) -> Iterator[memoryview]:
        """Zero-copy views covering data[lo:hi], in order."""
        hi = min(hi, self.length)
        index = bisect.bisect_right(self.starts, lo) - 1
        while index < len(self.pieces) and self.starts[index] < hi:
            base = self.starts[index]
            yield self.pieces[index][max(lo, base) - base:hi - base]
            index += 1


PartData = bytes | Buffer | memoryview | Blocks  # what a fetch of a part returns


def views(data: PartData, lo: int, hi: int) -> Iterator[memoryview]:
    """data[lo:hi] as zero-copy views, whatever holds the data."""
    if isinstance(data, Blocks):
        yield from data.views(lo, hi)
    else:
        yield memoryview(data)[lo:hi]
