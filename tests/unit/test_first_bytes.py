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
from driver.fs.firstbytes import FirstBytes
from driver.fs.memory import MemoryBudget

SIZE = 128 * 1024
OBJECTS = {"dir/a": (b"a" * 4096, '"etag-a"'), "dir/big": (bytes(range(256)) * 2048, '"etag-b"')}


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
