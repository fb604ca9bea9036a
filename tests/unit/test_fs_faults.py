"""The filesystem's write and read paths under countdown failures, and the memory budget.

FailingStore (tests/failstore.py) fails the k-th call of one store operation, before or
after it took effect; MemoryStore holds the bucket. After every write the bucket holds the
whole object or nothing, and never a pending upload. The budget tests assert on memory
(bytes reserved), never on time.
"""

from __future__ import annotations

import errno
import random
from functools import partial

import pytest
import trio

from driver.fs.errors import FsError
from driver.fs.memory import BudgetTimeout, MemoryBudget
from driver.fs.prefetch import Prefetcher
from driver.fs.upload import Upload
from driver.store.base import UploadOptions
from tests.failstore import FailingStore, FailurePlan
from tests.memstore import MemoryStore

MiB = 1024 * 1024
PART = 5 * MiB


async def _run_sync(fn, *args):
    return await trio.to_thread.run_sync(partial(fn, *args))


async def _write_file(store, nursery, key: str, data: bytes, budget=None,
                      chunk: int = 256 * 1024) -> str:
    upload = Upload(store, key, UploadOptions(), run_sync=_run_sync, part_size=PART,
                    budget=budget)
    upload.attach(nursery)
    try:
        for offset in range(0, len(data), chunk):
            await upload.write(offset, data[offset:offset + chunk])
        return await upload.commit()
    except FsError:
        await upload.abort()
        raise


@pytest.mark.parametrize(("kind", "k", "after"), [
    ("create_upload", 1, False), ("create_upload", 1, True),
    ("upload_part", 1, False), ("upload_part", 2, True),
    ("complete_upload", 1, False),
    ("put", 1, False),
])
def test_a_failed_write_leaves_no_object_and_no_upload(kind, k, after):
    memory = MemoryStore()
    store = FailingStore(memory, FailurePlan().fail(kind, k, after=after))
    size = 3 * PART + 17 if kind != "put" else 1000
    data = random.Random(k).randbytes(size)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            with pytest.raises(FsError) as caught:
                await _write_file(store, nursery, "f", data)
            assert caught.value.errno == errno.EIO

    trio.run(main)
    assert memory.objects == {}
    assert memory.uploads == {}  # a create that took effect was reconciled away


def test_complete_after_effect_is_reported_and_leaves_no_upload():
    # A store whose CompleteMultipartUpload took effect but errs anyway: the Upload reports
    # EIO (the store's own reconcile, tested in test_store_retries, is what recognises it).
    memory = MemoryStore()
    store = FailingStore(memory, FailurePlan().fail("complete_upload", 1, after=True))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            with pytest.raises(FsError):
                await _write_file(store, nursery, "f", b"x" * (2 * PART))

    trio.run(main)
    assert memory.uploads == {}


def test_a_write_without_faults_is_byte_exact():
    memory = MemoryStore()
    data = random.Random(3).randbytes(3 * PART + 5)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await _write_file(FailingStore(memory), nursery, "f", data)

    trio.run(main)
    assert memory.objects["f"] == data
    assert memory.uploads == {}


def test_read_failure_is_eio_and_the_next_read_recovers():
    memory = MemoryStore()
    data = random.Random(4).randbytes(6 * MiB)
    memory.objects["k"] = data
    store = FailingStore(memory, FailurePlan().fail("get_range", 1))
    budget = MemoryBudget(32 * MiB)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            etag = memory.head("k").etag

            async def fetch(start: int, end: int) -> bytes:
                from driver.fs.errors import from_store
                from driver.store.base import StoreError
                try:
                    return await _run_sync(store.get_range, "k", start, end, etag)
                except StoreError as exc:
                    raise from_store(exc) from exc

            reader = Prefetcher(fetch, len(data), nursery.start_soon, budget, part_size=PART)
            with pytest.raises(FsError) as caught:
                await reader.read(0, MiB)
            assert caught.value.errno == errno.EIO
            got = bytearray()
            while len(got) < len(data):
                got += await reader.read(len(got), MiB)
            assert bytes(got) == data
            reader.close()

    trio.run(main)
    assert budget.used == 0


def _reader(nursery, memory, key, budget, **kwargs) -> Prefetcher:
    etag = memory.head(key).etag

    async def fetch(start: int, end: int) -> bytes:
        return await _run_sync(memory.get_range, key, start, end, etag)

    return Prefetcher(fetch, len(memory.objects[key]), nursery.start_soon, budget, **kwargs)


def test_readers_and_writers_share_one_budget_and_never_exceed_it():
    memory = MemoryStore()
    limit = 24 * MiB
    budget = MemoryBudget(limit)
    rng = random.Random(5)
    for index in range(6):
        memory.objects[f"r{index}"] = rng.randbytes(20 * MiB)
    payloads = {f"w{index}": rng.randbytes(2 * PART + index) for index in range(4)}
    peaks: list[int] = []

    async def read_all(key: str) -> None:
        reader = _reader(nursery_ref[0], memory, key, budget, part_size=PART, max_parallel=4)
        got = bytearray()
        size = len(memory.objects[key])
        while len(got) < size:
            got += await reader.read(len(got), MiB)
            peaks.append(budget.used)
        reader.close()
        assert bytes(got) == memory.objects[key]

    async def write(key: str, data: bytes) -> None:
        await _write_file(memory, nursery_ref[0], key, data, budget=budget, chunk=128 * 1024)
        peaks.append(budget.used)

    nursery_ref: list[trio.Nursery] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery_ref.append(nursery)
            async with trio.open_nursery() as clients:
                for index in range(6):
                    clients.start_soon(read_all, f"r{index}")
                for key, data in payloads.items():
                    clients.start_soon(write, key, data)

    trio.run(main)
    # Readers shared it (not a full window each): the only excess allowed is the rest of
    # a read that straddles two parts, at most one read (1 MiB) per reader.
    slack = 6 * MiB
    assert max(peaks) <= limit + slack
    assert budget.peak <= limit + slack
    assert budget.waits > 0  # and someone had to wait for it, rather than fail
    assert budget.used == 0
    for key, data in payloads.items():
        assert memory.objects[key] == data
    assert memory.uploads == {}


def test_an_idle_reader_gives_its_read_ahead_to_a_waiting_writer():
    memory = MemoryStore()
    memory.objects["big"] = random.Random(6).randbytes(40 * MiB)
    budget = MemoryBudget(16 * MiB)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            reader = _reader(nursery, memory, "big", budget, part_size=8 * MiB, max_parallel=2)
            await reader.read(0, MiB)
            for offset in range(MiB, 8 * MiB, MiB):  # grow the window, then go idle
                await reader.read(offset, MiB)
            with trio.fail_after(30):  # a guard against a hang, not a timing target
                await _write_file(memory, nursery, "w", b"w" * (2 * PART), budget=budget)
            reader.close()

    trio.run(main)
    assert memory.objects["w"] == b"w" * (2 * PART)
    assert budget.peak <= 16 * MiB + MiB


def test_a_reservation_that_can_never_fit_times_out():
    budget = MemoryBudget(4 * MiB)

    async def main() -> None:
        await budget.reserve(3 * MiB)
        with pytest.raises(BudgetTimeout):
            await budget.reserve(2 * MiB, timeout=0.05)
        assert budget.used == 3 * MiB  # the one that gave up holds nothing
        budget.release(3 * MiB)
        await budget.reserve(8 * MiB)  # bigger than the whole budget: granted when empty
        assert budget.used == 8 * MiB

    trio.run(main)
