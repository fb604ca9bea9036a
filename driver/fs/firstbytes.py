"""A GET of an object's first bytes, started by the lookup that has to list its directory.

Why: opening a file in a directory not listed yet costs two round trips before its first
byte, the directory's LIST (the lookup) and then the first GET (the read). The lookup that
starts a directory's listing starts a GET of the name's first `FIRST_PART` bytes beside it,
before it knows whether the name is a file; the first read of the file at offset 0 takes
those bytes if the listing's ETag is the GET's and they cover what it asks, and otherwise
fetches as it would have. One lookup a directory per listing speculates, so the guess costs
at most one GET a directory per listing TTL (a 404 when the name is a directory or missing).

A reader that goes through a directory's files in order (`cat dir/*`, tar, grep -r, a
loader reading shards one after another) waits for one round trip per file. When a file
opened for reading is the one after a file of the same listing opened lately, the next
`AHEAD` files' first bytes are guessed too (`FirstBytes.opened`): their names, sizes and
ETags are the listing's, so those GETs are not blind, and each later open only tops the
window up. A reader that jumps around starts none, and neither do `AHEAD` or more files open
for reading at once: such readers keep that many requests in flight themselves, and the
guesses only added work (8 threads reading 1,000 small files ran 4% slower with them,
same-run A/B, 5 interleaved rounds).

Bytes nobody takes within `keep_for` seconds are given back, and at most `most` guesses are
held at once; each is charged to the mount's memory budget while it is held, and only
started when the budget has room.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from driver.fs.buffers import Buffer, BufferPool
from driver.fs.errors import FsError
from driver.fs.memory import MemoryBudget
from driver.store.base import ObjectInfo

__all__ = ["AHEAD", "FirstBytes"]

log = structlog.get_logger()

GetFirst = Callable[[str, memoryview], Any]  # the store's get_first_into
AHEAD = 4  # files guessed ahead of a reader going through a directory in order
_ORDERS = 16  # directories whose recent opens are remembered


@dataclass(eq=False)
class _Guess:
    key: str
    buffer: Buffer
    done: trio.Event = field(default_factory=trio.Event)
    count: int = 0  # bytes received; 0 when the GET failed
    etag: str | None = None
    # The wait for its expiry, ended when it is taken: until then the waiting task refers
    # to the guess, and so to its buffer, which the pool cannot hand out again meanwhile.
    expiry: trio.CancelScope = field(default_factory=trio.CancelScope)


class _ReadOrder:
    """The files of one directory listing, in its order, and which of them were opened."""

    def __init__(self, listing: Mapping[str, object]) -> None:
        self.listing = listing
        self.names = [name for name, info in listing.items()
                      if isinstance(info, ObjectInfo) and info.size > 0]
        self._position = {name: at for at, name in enumerate(self.names)}
        self._opened: deque[int] = deque(maxlen=2 * AHEAD)
        self._guessed = -1  # the last position guessed ahead

    def ahead_of(self, name: str) -> list[str]:
        """`name` was opened: the files to guess, when it follows a file opened lately."""
        at = self._position.get(name)
        if at is None:
            return []
        follows = at - 1 in self._opened
        self._opened.append(at)
        if not follows:
            return []
        first = max(at + 1, self._guessed + 1)
        return [self.names[p] for p in range(first, min(at + 1 + AHEAD, len(self.names)))
                if p not in self._opened]

    def guessed(self, name: str) -> None:
        self._guessed = max(self._guessed, self._position[name])


class FirstBytes:
    def __init__(self, get_first: GetFirst,
                 run: Callable[..., Awaitable[Any]], spawn: Callable[..., None],
                 budget: MemoryBudget, buffers: BufferPool, size: int,
                 keep_for: float = 5.0, most: int = 2 * AHEAD) -> None:
        self._get_first = get_first
        self._run_store = run  # runs a store call in a worker thread (raises FsError)
        self._spawn = spawn
        self._budget = budget
        self._buffers = buffers
        self.size = size
        self.keep_for = keep_for
        self.most = most
        self._guesses: dict[str, _Guess] = {}
        self._orders: OrderedDict[str, _ReadOrder] = OrderedDict()  # by directory prefix

    def start(self, key: str) -> bool:
        """Start a GET of `key`'s first bytes, unless one is held or there is no room;
        whether a guess of it is held now."""
        if key in self._guesses:
            return True
        if len(self._guesses) >= self.most or not self._budget.try_reserve(self.size):
            return False
        guess = self._guesses[key] = _Guess(key, self._buffers.take(self.size))
        self._spawn(self._fetch, guess)
        return True

    def opened(self, directory: str, listing: Mapping[str, object], name: str,
               readers: int) -> None:
        """`name` of `listing`, the listing of the prefix `directory`, was opened for
        reading while `readers` other files were open for reading: if it follows a file of
        that listing opened lately, guess the next ones."""
        if readers >= AHEAD:
            return
        order = self._orders.get(directory)
        if order is None or order.listing is not listing:  # new, or listed again since
            order = self._orders[directory] = _ReadOrder(listing)
            if len(self._orders) > _ORDERS:
                self._orders.popitem(last=False)
        self._orders.move_to_end(directory)
        for ahead in order.ahead_of(name):
            if not self.start(directory + ahead):
                break
            order.guessed(ahead)

    async def take(self, key: str, etag: str | None, length: int) -> Buffer | bytes | None:
        """The first `length` bytes of `key` at `etag`, if a guess holds them; else None
        (and the guess is gone either way)."""
        guess = self._guesses.pop(key, None)
        if guess is None:
            return None
        guess.expiry.cancel()
        await guess.done.wait()
        self._budget.release(self.size)  # the caller's part has its own reservation
        if etag is None or guess.etag != etag or guess.count < length:
            self._buffers.give(guess.buffer)
            return None
        if length == len(guess.buffer):
            return guess.buffer
        # A small file: its bytes copied out, so the part holds only what it reserved and
        # the buffer goes back to the pool rather than riding along in a view.
        data = bytes(memoryview(guess.buffer)[:length])
        self._buffers.give(guess.buffer)
        return data

    async def _fetch(self, guess: _Guess) -> None:
        try:
            guess.count, guess.etag = await self._run_store(
                self._get_first, guess.key, memoryview(guess.buffer))
        except FsError:  # a wrong guess (404: a directory, a missing name) or a failure
            guess.count = 0  # the read fetches for itself
        except Exception:  # a bug: seen in the log, but no reason to end the mount
            log.exception("first-bytes guess failed", key=guess.key)
            guess.count = 0
        finally:
            guess.done.set()
        if guess.count:
            with guess.expiry:
                await trio.sleep(self.keep_for)  # an expiry, not a wait for anything
        if self._guesses.get(guess.key) is guess:  # nobody took it: give it back
            del self._guesses[guess.key]
            self._budget.release(self.size)
            self._buffers.give(guess.buffer)
