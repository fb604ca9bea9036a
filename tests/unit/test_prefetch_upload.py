"""Prefetcher and Upload logic against an in-memory store (unit level; SeaweedFS proves them)."""

from __future__ import annotations

import errno
import random
from collections.abc import Callable
from functools import partial

import pytest
import trio
import trio.testing

from driver.fs.errors import FsError
from driver.fs.prefetch import MemoryBudget, Prefetcher
from driver.fs.upload import Upload
from driver.store.base import PreconditionFailed, StoreError, UploadOptions
from tests.memstore import MemoryStore

MiB = 1024 * 1024


async def _run_sync(fn, *args):
    return await trio.to_thread.run_sync(partial(fn, *args))


def _prefetcher(nursery, store, key, budget, **kwargs):
    data = store.objects[key]
    etag = store.head(key).etag

    async def fetch(start: int, end: int) -> bytes:
        return await _run_sync(store.get_range, key, start, end, etag)

    return Prefetcher(fetch, len(data), nursery.start_soon, budget, **kwargs)


def _record_fetches(pre: Prefetcher, fetched: list[tuple[int, int]],
                    hold: Callable[[int], trio.Event | None]) -> None:
    """Wrap `pre`'s fetch: record each (start, end), and first wait on `hold(start)`."""
    inner = pre._fetch

    async def recorded(start: int, end: int):
        fetched.append((start, end))
        event = hold(start)
        if event is not None:
            await event.wait()
        return await inner(start, end)

    pre._fetch = recorded


def test_sequential_read_grows_window_and_stays_in_budget():
    store = MemoryStore()
    store.objects["k"] = random.Random(1).randbytes(100 * MiB + 3)
    budget = MemoryBudget(64 * MiB)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            pre = _prefetcher(nursery, store, "k", budget, part_size=8 * MiB, max_parallel=4,
                              keep_behind=8 * MiB)
            out = bytearray()
            offset = 0
            while chunk := await pre.read(offset, MiB):
                out += chunk
                offset += len(chunk)
                assert budget.used <= budget.limit + 8 * MiB
            assert bytes(out) == store.objects["k"]
            # Doubling windows of up to 8 MiB: far fewer requests than 1 MiB reads.
            assert pre.requests < 30
            pre.close()
            assert budget.used == 0

    trio.run(main)


def test_random_reads_are_exact_and_small():
    store = MemoryStore()
    store.objects["k"] = random.Random(2).randbytes(50 * MiB)
    budget = MemoryBudget(64 * MiB)
    fetched = [0]
    asked = [0]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            pre = _prefetcher(nursery, store, "k", budget, part_size=8 * MiB)
            inner = pre._fetch

            async def counting(start: int, end: int) -> bytes:
                fetched[0] += end - start
                return await inner(start, end)

            pre._fetch = counting
            rng = random.Random(5)
            for _ in range(200):
                offset = rng.randrange(1, 50 * MiB)
                length = rng.choice([1, 4096, 256 * 1024, 2 * MiB])
                got = await pre.read(offset, length)
                asked[0] += len(got)
                assert bytes(got) == store.objects["k"][offset:offset + length]
            pre.close()

    trio.run(main)
    # A random reader gets what it asks for, not sequential read-ahead.
    assert fetched[0] <= asked[0] * 1.1


def test_changed_object_raises_precondition_failed():
    store = MemoryStore()
    store.objects["k"] = b"a" * (40 * MiB)
    budget = MemoryBudget(64 * MiB)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            pre = _prefetcher(nursery, store, "k", budget, part_size=8 * MiB, max_parallel=1)
            assert await pre.read(0, 10) == b"a" * 10
            store.objects["k"] = b"b" * (40 * MiB)
            with pytest.raises(PreconditionFailed):
                await pre.read(30 * MiB, 10)
            pre.close()

    trio.run(main)


def _upload(store, nursery, part_size=5 * MiB, key="f"):
    upload = Upload(store, key, UploadOptions(), run_sync=_run_sync, part_size=part_size,
                    max_inflight=2)
    upload.attach(nursery)
    return upload


@pytest.mark.parametrize("size", [0, 1, 5 * MiB, 5 * MiB + 1, 17 * MiB])
def test_upload_sizes(size):
    store = MemoryStore()
    data = random.Random(size).randbytes(size)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            upload = _upload(store, nursery)
            for offset in range(0, size, 300_000):
                await upload.write(offset, data[offset:offset + 300_000])
            await upload.commit()

    trio.run(main)
    assert store.objects["f"] == data
    assert not store.uploads
    assert ("put" in store.calls) == (size < 5 * MiB)


def test_upload_failure_aborts_and_reports_eio():
    store = MemoryStore()
    store.fail = lambda op: op == "upload_part" and store.calls.count("upload_part") == 2

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            upload = _upload(store, nursery)
            with pytest.raises(FsError) as caught:
                for i in range(8):
                    await upload.write(i * MiB * 2, b"x" * 2 * MiB)
                await upload.commit()
            assert caught.value.errno == errno.EIO

    trio.run(main)
    assert "f" not in store.objects
    assert not store.uploads and "abort_upload" in store.calls


def test_out_of_order_write_is_einval_and_abandons_upload():
    store = MemoryStore()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            upload = _upload(store, nursery)
            await upload.write(0, b"x" * 6 * MiB)
            with pytest.raises(FsError) as caught:
                await upload.write(10, b"y")
            assert caught.value.errno == errno.EINVAL
            with pytest.raises(FsError):
                await upload.commit()

    trio.run(main)
    assert not store.objects and not store.uploads


@pytest.mark.parametrize("first", [10, 6 * MiB])
def test_write_after_commit_continues_the_object(first):
    store = MemoryStore()
    a, b = b"a" * first, b"b" * (6 * MiB)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            upload = _upload(store, nursery)
            await upload.write(0, a)
            await upload.commit()
            assert store.objects["f"] == a
            await upload.write(len(a), b)
            await upload.commit()

    trio.run(main)
    assert store.objects["f"] == a + b
    assert ("upload_part_copy" in store.calls) == (first >= 5 * MiB)


def test_store_errors_map_to_errno():
    from driver.fs.errors import from_store
    from driver.store.base import AccessDenied, NotFound

    assert from_store(NotFound("x")).errno == errno.ENOENT
    assert from_store(AccessDenied("x")).errno == errno.EACCES
    assert from_store(PreconditionFailed("x")).errno == errno.EIO
    assert from_store(StoreError("x")).errno == errno.EIO


def test_concurrent_readers_resetting_each_other_get_exact_bytes():
    """The kernel sends read-ahead requests concurrently; a reset by one read must not
    spoil the part another read is waiting on."""
    store = MemoryStore()
    store.objects["k"] = random.Random(9).randbytes(64 * MiB)
    budget = MemoryBudget(32 * MiB)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            pre = _prefetcher(nursery, store, "k", budget, part_size=8 * MiB)

            async def reader(seed: int) -> None:
                rng = random.Random(seed)
                for _ in range(60):
                    offset = rng.randrange(0, 63 * MiB)
                    length = rng.choice([4096, 256 * 1024, MiB])
                    got = await pre.read(offset, length)
                    assert bytes(got) == store.objects["k"][offset:offset + length]

            async with trio.open_nursery() as readers:
                for seed in range(4):
                    readers.start_soon(reader, seed)
            pre.close()

    trio.run(main)


def test_a_read_cancelled_while_it_fetches_its_own_part_leaves_no_read_waiting():
    """A read runs the part it waits on in its own task: if that read is cancelled, a read
    waiting on the same part gets an error rather than waiting forever, the part's budget
    comes back, and the next read fetches the bytes afresh."""
    store = MemoryStore()
    store.objects["k"] = random.Random(4).randbytes(16 * MiB)
    budget = MemoryBudget(32 * MiB)
    fetched: list[tuple[int, int]] = []
    gate = trio.Event()
    offset, length = 5 * MiB, 256 * 1024

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            pre = _prefetcher(nursery, store, "k", budget, part_size=8 * MiB)
            _record_fetches(pre, fetched, lambda start: gate if not gate.is_set() else None)
            outcome: list[BaseException | bytes] = []

            async def first(scope_box: list[trio.CancelScope]) -> None:
                with trio.CancelScope() as scope:
                    scope_box.append(scope)
                    await pre.read(offset, length)

            async def second() -> None:
                try:
                    outcome.append(bytes(await pre.read(offset, length)))
                except OSError as exc:
                    outcome.append(exc)

            with trio.fail_after(10):
                box: list[trio.CancelScope] = []
                async with trio.open_nursery() as readers:
                    readers.start_soon(first, box)
                    await trio.testing.wait_all_tasks_blocked()
                    assert fetched == [(offset, offset + length)]  # the first read's own GET
                    readers.start_soon(second)
                    await trio.testing.wait_all_tasks_blocked()
                    box[0].cancel()
                assert len(outcome) == 1 and isinstance(outcome[0], OSError)
                gate.set()
                got = await pre.read(offset, length)
                assert bytes(got) == store.objects["k"][offset:offset + length]
            pre.close()
        assert budget.used == 0  # once every fetch has ended, read-ahead dropped by close too

    trio.run(main)


def test_a_read_finishing_after_a_reset_does_not_drag_the_new_stream_forward():
    """Found by tracing the random-read benchmark (9x the bytes read were fetched): the
    kernel's concurrent reads finish out of order; one of an abandoned stream ending at 40
    MiB once made a new stream at 1 MiB request everything up to 40 MiB."""
    store = MemoryStore()
    store.objects["k"] = random.Random(3).randbytes(64 * MiB)
    budget = MemoryBudget(128 * MiB)
    released = trio.Event()
    fetched: list[tuple[int, int]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            pre = _prefetcher(nursery, store, "k", budget, part_size=8 * MiB)
            # The old stream's read waits until the new one began.
            _record_fetches(pre, fetched, lambda start: released if start == 40 * MiB else None)

            async def old_read() -> None:
                got = await pre.read(40 * MiB, 256 * 1024)
                assert bytes(got) == store.objects["k"][40 * MiB:40 * MiB + 256 * 1024]

            async with trio.open_nursery() as readers:
                readers.start_soon(old_read)
                await trio.testing.wait_all_tasks_blocked()
                got = await pre.read(MiB, 256 * 1024)  # a random read elsewhere: a reset
                assert bytes(got) == store.objects["k"][MiB:MiB + 256 * 1024]
                released.set()
            await trio.testing.wait_all_tasks_blocked()
            pre.close()

    trio.run(main)
    assert sum(end - start for start, end in fetched) == 2 * 256 * 1024, fetched


def test_reads_arriving_out_of_order_fill_the_hole_instead_of_restarting():
    """The kernel's read-ahead requests are concurrent and arrive out of order (traced:
    ..., 10, 14, 15, 16, 17, 11 MiB while nothing had arrived yet); the late one used to
    find a hole, restart the stream and refetch what was already on its way."""
    store = MemoryStore()
    size = 40 * MiB
    store.objects["k"] = data = random.Random(4).randbytes(size)
    budget = MemoryBudget(128 * MiB)
    fetched: list[tuple[int, int]] = []
    arrived = trio.Event()
    order = [*range(0, 11), 14, 15, 16, 17, 11, 12, 13, *range(18, 40)]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            pre = _prefetcher(nursery, store, "k", budget, part_size=8 * MiB)
            # Nothing comes back until every read was sent.
            _record_fetches(pre, fetched, lambda start: arrived)
            stream = pre._stream

            async def read(index: int) -> None:
                got = await pre.read(index * MiB, MiB)
                assert bytes(got) == data[index * MiB:(index + 1) * MiB]

            async with trio.open_nursery() as kernel:
                for index in order[:18]:
                    kernel.start_soon(read, index)
                    await trio.testing.wait_all_tasks_blocked()
                assert pre._stream == stream  # never restarted
                arrived.set()
            for index in order[18:]:
                await read(index)
            assert pre._stream == stream
            pre.close()

    trio.run(main)
    assert sum(end - start for start, end in fetched) == size, sorted(fetched)


def test_a_late_read_just_before_the_first_kept_part_fills_the_gap_instead_of_restarting():
    """Four readers sharing the budget fetched 1.19x what they read: parts shed for another
    reader or evicted behind the reader left a gap before the first kept part, and the
    kernel's late read-ahead request into that gap restarted the stream (traced: a read at
    22 MiB with parts only at [29, 45) MiB)."""
    store = MemoryStore()
    store.objects["k"] = data = random.Random(6).randbytes(32 * MiB)
    budget = MemoryBudget(128 * MiB)
    fetched: list[tuple[int, int]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            pre = _prefetcher(nursery, store, "k", budget, part_size=2 * MiB, keep_behind=0)
            _record_fetches(pre, fetched, lambda start: None)

            async def read(offset: int) -> None:
                got = await pre.read(offset, MiB)
                assert bytes(got) == data[offset:offset + MiB]

            for index in range(8):
                await read(index * MiB)
            await trio.testing.wait_all_tasks_blocked()
            pre.shed()  # another reader waits: the far read-ahead goes
            gap = pre._next
            stream = pre._stream
            await read(gap + MiB)  # the kernel's reads arrive out of order
            assert pre._parts[0].start > gap  # everything before it evicted
            await trio.testing.wait_all_tasks_blocked()  # its read-ahead is on its way
            fetched.clear()
            ahead = pre._next
            await read(gap)  # the late one
            assert pre._stream == stream, "restarted"
            # The gap, and read-ahead beyond what was already requested: nothing twice.
            assert fetched[-1] == (gap, gap + MiB), fetched
            assert all(start >= ahead for start, _ in fetched[:-1]), fetched
            pre.close()

    trio.run(main)
