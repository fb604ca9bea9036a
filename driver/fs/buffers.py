"""Reusable part buffers for the prefetcher, so a GiB read does not map 64 fresh buffers.

Every fresh 16 MiB `bytes` is a new mmap (glibc's threshold is kept at 1 MiB so memory goes
back to the OS) whose pages fault in one by one as the socket data is copied in; on this
machine that costs more CPU than the copy itself. A `BufferPool` keeps buffers of dropped
parts and hands them to the next GET of the same size, which fills them with `readinto`.

A buffer is reused only when nothing else refers to it: the part that held it, a reader's
memoryview slice, or pyfuse3 replying with such a slice all hold references, and the pool
checks the reference count before handing a buffer out (CPython counts every view's hold
on its object). So giving a buffer back early is always safe; it is just not reused yet.
The pool holds at most `limit` bytes and is emptied when no file is open for reading.
"""

from __future__ import annotations

import sys

# getrefcount(free[i]) when only the free list holds the buffer: the list's reference and
# getrefcount's own argument.
_UNSHARED = 2


class BufferPool:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0  # bytes in the free lists
        self.reused = 0  # buffers handed out again (for tests and diagnostics)
        self._free: dict[int, list[bytearray]] = {}

    def take(self, size: int) -> bytearray:
        """A buffer of exactly `size` bytes (contents undefined)."""
        free = self._free.get(size)
        if free:
            for index in range(len(free)):
                if sys.getrefcount(free[index]) == _UNSHARED:
                    self.held -= size
                    self.reused += 1
                    return free.pop(index)
        return bytearray(size)

    def give(self, buffer: object) -> None:
        """Offer a part's buffer for reuse (ignored unless it came from `take`)."""
        if not isinstance(buffer, bytearray) or not buffer:
            return
        if self.held + len(buffer) > self.limit:
            return  # over the limit: let it go back to the OS
        self._free.setdefault(len(buffer), []).append(buffer)
        self.held += len(buffer)

    def clear(self) -> None:
        self._free.clear()
        self.held = 0
