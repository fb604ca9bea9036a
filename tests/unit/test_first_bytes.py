"""FirstBytes: a guessed GET of an object's first bytes is taken only when it is right, and
its buffer and budget come back on every path (SeaweedFS proves the request counts:
tests/integration/test_request_counts.py)."""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

from driver.fs.buffers import BufferPool
from driver.fs.errors import FsError
from driver.fs.firstbytes import AHEAD, FirstBytes
from driver.fs.memory import MemoryBudget
from driver.store.base import ObjectInfo

SIZE = 128 * 1024
OBJECTS = {"dir/a": (b"a" * 4096, '"etag-a"'), "dir/big": (bytes(range(256)) * 2048, '"etag-b"')}
OBJECTS |= {f"seq/f-{i}": (bytes([i]) * 100, f'"etag-{i}"') for i in range(10)}


def _get_first(key: str, out: memoryview) -> tuple[int, str | None]:
    if key not in OBJECTS:
        raise KeyError(key)
    data, etag = OBJECTS[key]
    count = min(len(out), len(data))
    out[:count] = data[:count]
    return count, etag


async def _run(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except KeyError as exc:
        raise FsError(errno.ENOENT, "no such key") from exc


def _with_first_bytes(
        test: Callable[[FirstBytes, MemoryBudget, BufferPool], Awaitable[None]],
        budget_size: int = 1024 * 1024, **kwargs: Any) -> None:
    budget = MemoryBudget(budget_size)
    pool = BufferPool(budget_size)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            first = FirstBytes(_get_first, _run, nursery.start_soon, budget, pool, SIZE,
                               **kwargs)
            await test(first, budget, pool)
            nursery.cancel_scope.cancel()  # guesses still kept wait out their expiry

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_right_guess_gives_exactly_the_bytes_asked_and_its_budget_back():
    async def test(first: FirstBytes, budget: MemoryBudget, pool: BufferPool) -> None:
        first.start("dir/a")
        first.start("dir/big")
        assert budget.used == 2 * SIZE
        small = await first.take("dir/a", '"etag-a"', 4096)
        assert small is not None and bytes(small) == OBJECTS["dir/a"][0]
        assert len(small) == 4096 and pool.held == SIZE  # copied out, its buffer pooled
        big = await first.take("dir/big", '"etag-b"', SIZE)
        assert big is not None and bytes(big) == OBJECTS["dir/big"][0][:SIZE]
        assert budget.used == 0  # the reader's part holds its own reservation
        assert await first.take("dir/a", '"etag-a"', 4096) is None  # taken once

    _with_first_bytes(test)


def test_a_wrong_guess_is_refused_and_given_back():
    async def test(first: FirstBytes, budget: MemoryBudget, _: BufferPool) -> None:
        first.start("dir/a")
        assert await first.take("dir/a", '"another"', 4096) is None  # changed since
        first.start("dir/big")
        assert await first.take("dir/big", '"etag-b"', SIZE + 1) is None  # asks for more
        first.start("dir/a")
        assert await first.take("dir/a", None, 4096) is None  # no ETag to pin it to
        assert budget.used == 0

    _with_first_bytes(test)


def test_a_guess_nobody_takes_or_that_fails_is_given_back():
    async def test(first: FirstBytes, budget: MemoryBudget, _: BufferPool) -> None:
        first.start("dir/missing")
        first.start("dir/a")
        await trio.testing.wait_all_tasks_blocked()
        assert budget.used == SIZE  # the 404 is gone at once, the right guess kept
        await trio.sleep(first.keep_for + 1)
        assert budget.used == 0
        assert await first.take("dir/a", '"etag-a"', 4096) is None

    _with_first_bytes(test)


def test_guesses_start_only_within_their_number_and_the_budget():
    async def test(first: FirstBytes, budget: MemoryBudget, _: BufferPool) -> None:
        for key in ("dir/a", "dir/a", "dir/big", "dir/x", "dir/y"):
            first.start(key)
        assert budget.used == 2 * SIZE  # one per key, at most `most`
        assert budget.try_reserve(budget.limit - budget.used)  # a reader holds the rest
        first.start("dir/z")
        assert budget.used == budget.limit

    _with_first_bytes(test, most=2)


def test_a_taken_guess_frees_its_buffer_for_the_next_at_once():
    """Taking a guess ends its expiry: the pool hands its buffer out again right away, not
    5 s later (a reader of 1,000 small files mapped a fresh buffer for each)."""
    async def test(first: FirstBytes, budget: MemoryBudget, pool: BufferPool) -> None:
        first.start("dir/a")
        assert await first.take("dir/a", '"etag-a"', 4096) is not None
        await trio.testing.wait_all_tasks_blocked()
        pool.take(SIZE)
        assert pool.reused == 1

    _with_first_bytes(test)


def _seq_listing() -> dict[str, object]:
    listing: dict[str, object] = {f"f-{i}": ObjectInfo(f"seq/f-{i}", 100, f'"etag-{i}"')
                                  for i in range(10)}
    listing["sub"] = None  # a directory: never guessed
    return listing


def test_opens_in_listing_order_guess_the_next_files_and_stop_at_the_end():
    async def test(first: FirstBytes, budget: MemoryBudget, _: BufferPool) -> None:
        listing = _seq_listing()
        first.opened("seq/", listing, "f-0", 0)
        assert budget.used == 0  # one open is no order yet
        first.opened("seq/", listing, "f-1", 0)  # follows f-0
        assert budget.used == AHEAD * SIZE  # f-2 .. f-5
        for i in range(2, 10):
            assert await first.take(f"seq/f-{i}", f'"etag-{i}"', 100) == bytes([i]) * 100
            first.opened("seq/", listing, f"f-{i}", 0)  # tops the window up, to f-9 at most
        assert budget.used == 0  # nothing guessed past the last file

    _with_first_bytes(test)


def test_readers_that_keep_ahead_files_open_themselves_get_no_guesses():
    async def test(first: FirstBytes, budget: MemoryBudget, _: BufferPool) -> None:
        listing = _seq_listing()
        first.opened("seq/", listing, "f-0", AHEAD - 1)
        first.opened("seq/", listing, "f-1", AHEAD)  # follows f-0, but AHEAD others are open
        assert budget.used == 0  # (and such an open is not even noted)
        first.opened("seq/", listing, "f-2", AHEAD - 1)
        assert budget.used == 0
        first.opened("seq/", listing, "f-3", AHEAD - 1)  # follows f-2, and fewer are open
        assert budget.used == AHEAD * SIZE

    _with_first_bytes(test)


def test_opens_out_of_order_or_of_a_new_listing_guess_nothing():
    async def test(first: FirstBytes, budget: MemoryBudget, _: BufferPool) -> None:
        listing = _seq_listing()
        for i in (9, 8, 7, 3, 5):
            first.opened("seq/", listing, f"f-{i}", 0)
        assert budget.used == 0
        first.opened("seq/", _seq_listing(), "f-4", 0)  # listed again: f-3's open is forgotten
        assert budget.used == 0
        first.opened("seq/", listing, "sub", 0)  # not a file of the listing
        assert budget.used == 0

    _with_first_bytes(test)
