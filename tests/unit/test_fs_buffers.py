"""Pooled part buffers: reused only when nothing refers to them, bytes exact under reuse."""

from __future__ import annotations

import mmap
import os
import random

import trio

from driver.fs.buffers import Blocks, BufferPool, views
from driver.fs.filesystem import Filesystem
from driver.fs.inodes import ROOT_INODE
from driver.options import MountOptions
from tests.memstore import MemoryStore

MiB = 1024 * 1024


def test_blocks_slice_like_the_joined_bytes_and_copy_nothing_within_a_piece() -> None:
    rng = random.Random(5)
    pieces = [rng.randbytes(size) for size in (863, 1000, 1000, 1000, 37, 400)]
    joined = b"".join(pieces)
    data = Blocks.of(pieces)
    assert len(data) == len(joined)
    for _ in range(300):
        lo = rng.randrange(len(joined))
        hi = rng.randrange(lo + 1, len(joined) + 1)
        assert b"".join(views(data, lo, hi)) == joined[lo:hi]
    [inside] = views(data, 863 + 10, 863 + 500)  # within piece 1
    assert inside.obj is pieces[1] and bytes(inside) == pieces[1][10:500]
    assert [bytes(v) for v in views(data, 3860, 3900 + 10)] == [pieces[3][-3:], pieces[4],
                                                               pieces[5][:10]]
    assert [bytes(v) for v in views(b"abcdef", 1, 4)] == [b"bcd"]


def test_a_free_buffer_is_reused_and_a_viewed_one_is_not() -> None:
    pool = BufferPool(10 * MiB)
    first = pool.take(MiB)
    view = memoryview(first)[10:20]  # e.g. a slice pyfuse3 has not replied with yet
    pool.give(first)
    del first
    second = pool.take(MiB)
    assert second is not view.obj and pool.reused == 0  # still viewed: a new buffer
    view.release()
    third = pool.take(MiB)
    assert pool.reused == 1 and pool.held == 0
    assert len(third) == MiB and len(second) == MiB


def test_a_large_buffer_is_a_mapping_zero_until_written_and_reused_the_same_way() -> None:
    pool = BufferPool(64 * MiB)
    first = pool.take(16 * MiB)
    assert isinstance(first, mmap.mmap) and len(first) == 16 * MiB
    assert first[:4096] == bytes(4096) and first[-1] == 0
    memoryview(first)[5:8] = b"abc"  # what readinto does
    view = memoryview(first)[:10]
    pool.give(first)
    del first
    assert pool.take(16 * MiB) is not view.obj and pool.reused == 0
    viewed = id(view.obj)
    view.release()
    assert id(pool.take(16 * MiB)) == viewed and pool.reused == 1
    assert isinstance(pool.take(MiB), bytearray)  # small ones stay with malloc


def test_limit_sizes_and_clear() -> None:
    pool = BufferPool(3 * MiB)
    for _ in range(5):
        pool.give(bytearray(MiB))
    assert pool.held == 3 * MiB  # the rest went back to the OS
    pool.give(b"immutable")  # not from take: ignored
    assert len(pool.take(2 * MiB)) == 2 * MiB and pool.reused == 0  # no buffer that size
    pool.clear()
    assert pool.held == 0 and pool.take(MiB) is not None and pool.reused == 0


def test_a_full_pool_drops_other_sizes_for_the_size_given_back() -> None:
    pool = BufferPool(4 * MiB)
    odd = [bytearray(MiB + 4096), bytearray(MiB + 8192)]  # a stream's first, odd-sized parts
    for buffer in odd:
        pool.give(buffer)
    del buffer
    given = set()
    for _ in range(2):
        buffer = bytearray(2 * MiB)
        given.add(id(buffer))
        pool.give(buffer)
        del buffer  # the pool's reference is then the only one: reusable
    assert pool.held == 4 * MiB  # both odd ones made way; none of the 2 MiB ones did
    pool.give(bytearray(2 * MiB))  # full of its own size: refused, not swapped
    assert pool.held == 4 * MiB
    assert {id(pool.take(2 * MiB)), id(pool.take(2 * MiB))} == given
    assert pool.reused == 2 and pool.held == 0


def _read_all(store: MemoryStore, readers: int, part: int) -> tuple[list[bytes], int]:
    options = MountOptions(read_part_size=part)
    results: list[bytes] = [b""] * readers
    reused = 0

    async def main() -> None:
        nonlocal reused
        async with trio.open_nursery() as nursery:
            fs = Filesystem(store, options)
            fs.attach(nursery)

            async def read(index: int) -> None:
                attrs = await fs.lookup(ROOT_INODE, f"obj-{index % 2}")
                fh = await fs.open(attrs.ino, os.O_RDONLY)
                rng = random.Random(index)
                chunks, offset = [], 0
                while offset < attrs.size:
                    size = rng.choice([4096, 128 * 1024, MiB, 3 * MiB + 1])
                    data = await fs.read(fh, offset, size)
                    chunks.append(bytes(data))
                    offset += len(data)
                    await trio.sleep(0)  # let the other readers in between
                await fs.release(fh)
                results[index] = b"".join(chunks)

            async with trio.open_nursery() as readers_nursery:
                for index in range(readers):
                    readers_nursery.start_soon(read, index)
            reused = fs.buffers.reused
            assert fs.buffers.held == 0  # emptied once no file is open
            nursery.cancel_scope.cancel()

    trio.run(main)
    return results, reused


def test_reads_through_reused_buffers_are_exact() -> None:
    store = MemoryStore()
    store.objects["obj-0"] = random.Random(1).randbytes(40 * MiB + 5)
    store.objects["obj-1"] = random.Random(2).randbytes(25 * MiB + 7)
    results, _ = _read_all(store, readers=4, part=5 * MiB)
    for index, data in enumerate(results):
        assert data == store.objects[f"obj-{index % 2}"], index


def test_a_long_sequential_read_reuses_buffers() -> None:
    # One reader well past the 32 MiB kept behind: dropped parts' buffers come back.
    store = MemoryStore()
    store.objects["obj-0"] = random.Random(3).randbytes(100 * MiB + 3)
    results, reused = _read_all(store, readers=1, part=5 * MiB)
    assert results[0] == store.objects["obj-0"]
    assert reused > 0  # the point of the pool: parts did reuse buffers
