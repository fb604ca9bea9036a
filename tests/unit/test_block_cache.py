"""The block cache (driver/fs/cache.py) on a real directory, and its prefetcher hook against
an in-memory store. The integration tests prove the same through a real mount."""

from __future__ import annotations

import errno
import os
import random
import stat
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from driver.fs import cache as cache_module
from driver.fs.buffers import BufferPool
from driver.fs.cache import (
    HEADER_SIZE,
    LAYOUT,
    SECTORS,
    BlockCache,
    CachedFetch,
    ObjectVersion,
    WriteBudget,
)
from driver.fs.filesystem import Filesystem
from driver.fs.prefetch import MemoryBudget, Prefetcher
from driver.options import MountOptions
from tests.memstore import MemoryStore

KiB = 1024
BS = 64 * KiB  # small blocks keep the tests fast


def _version(size: int, etag: str = '"e1"', key: str = "k") -> ObjectVersion:
    return ObjectVersion("b", key, etag, size)


def _cache(path: Path, max_size: int | None = None) -> BlockCache:
    return BlockCache(path, max_size, block_size=BS).open()


def _block_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / LAYOUT / "blocks").rglob("*") if p.is_file())


def _dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in _block_files(root))


def test_put_get_round_trip_with_private_modes(tmp_path: Path) -> None:
    root = tmp_path / "c"
    cache = _cache(root)
    version = _version(BS + 10)
    tail = os.urandom(10)
    assert cache.put(version, 1, tail)
    assert bytes(cache.get(version, 1) or b"") == tail
    assert cache.get(version, 0) is None  # never written
    assert cache.get(_version(BS + 10, etag='"e2"'), 1) is None  # another version
    assert not cache.put(version, 0, b"short")  # a block of the wrong length is refused
    for directory in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(files) >= 4  # the block, lock, usage, .last-used
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_existing_loose_directory_is_made_private(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    _cache(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


# The cache that wrote a block keeps its CRCs and reads it without the header; another
# (a remount, a second mount of the volume) reads the header first. Both check the data.
@pytest.mark.parametrize(("where", "reader"), [
    ("data", "writer"), ("truncated", "writer"),
    ("data", "remount"), ("crc", "remount"), ("index", "remount"), ("truncated", "remount"),
])
def test_damaged_block_is_dropped_not_served(tmp_path: Path, where: str, reader: str) -> None:
    writer = _cache(tmp_path)
    version = _version(BS)
    data = os.urandom(BS)
    assert writer.put(version, 0, data)
    cache = writer if reader == "writer" else _cache(tmp_path)
    (block,) = _block_files(tmp_path)
    raw = bytearray(block.read_bytes())
    if where == "data":
        raw[HEADER_SIZE + 1234] ^= 0x01
    elif where == "crc":
        raw[HEADER_SIZE - 4 * SECTORS + 1] ^= 0x80  # the first sector's CRC
    elif where == "index":
        raw[12] = 7
    else:
        raw = raw[:-1]
    block.write_bytes(bytes(raw))
    with capture_logs() as logs:
        assert cache.get(version, 0) is None
    assert not block.exists()
    assert cache.stats.corrupt == 1
    assert any("damaged" in entry["event"] for entry in logs)
    assert cache.put(version, 0, data)  # refetched data can be cached again
    assert bytes(cache.get(version, 0) or b"") == data


def test_known_crcs_spare_the_header_read_but_the_data_is_still_checked(tmp_path: Path) -> None:
    writer = _cache(tmp_path)
    version = _version(BS)
    data = os.urandom(BS)
    assert writer.put(version, 0, data)
    (block,) = _block_files(tmp_path)
    raw = bytearray(block.read_bytes())
    raw[12] = 7  # the header now names block 7
    block.write_bytes(bytes(raw))
    # The writer knows what it wrote: the bytes it serves are the bytes it wrote.
    assert bytes(writer.get(version, 0) or b"") == data
    with capture_logs():
        assert _cache(tmp_path).get(version, 0) is None  # read through the header: dropped
    assert writer.put(version, 0, data)
    (block,) = _block_files(tmp_path)
    raw = bytearray(block.read_bytes())
    raw[HEADER_SIZE + 5] ^= 0x01
    block.write_bytes(bytes(raw))
    with capture_logs():
        assert writer.get(version, 0) is None  # the known CRCs catch damaged data
    assert not block.exists() and writer.stats.corrupt == 1


def test_only_known_blocks_most_recently_used_are_remembered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "KNOWN_BLOCKS", 2)
    cache = _cache(tmp_path)
    version = _version(3 * BS)
    for index in range(3):
        assert cache.put(version, index, os.urandom(BS))
    for index in (0, 2):  # block 0 forgotten when block 2 was written
        path = Path(cache.path(version, index))
        raw = bytearray(path.read_bytes())
        raw[12] = 7  # a header naming another block
        path.write_bytes(bytes(raw))
    with capture_logs():
        assert cache.get(version, 0) is None  # read through its header: dropped
    assert cache.get(version, 2) is not None  # still known: its header is not read


def test_a_partial_read_takes_and_verifies_only_the_sectors_it_covers(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    sector = cache.sector_size
    version = _version(BS)
    data = os.urandom(BS)
    assert cache.put(version, 0, data)
    lo, hi = 3 * sector + 10, 5 * sector + 7  # sectors 3, 4 and 5
    part = cache.read_blocks(version, [(0, lo, hi)])[0]
    assert bytes(part) == data[lo:hi] and len(part.obj) == 3 * sector  # read: 3 sectors
    (block,) = _block_files(tmp_path)
    raw = bytearray(block.read_bytes())
    raw[HEADER_SIZE + 9 * sector] ^= 0x01  # damage sector 9, outside the range
    block.write_bytes(bytes(raw))
    assert bytes(cache.read_blocks(version, [(0, lo, hi)])[0]) == data[lo:hi]
    with capture_logs():
        assert cache.read_blocks(version, [(0, lo, 9 * sector + 1)]) == {}  # takes sector 9
    assert not block.exists() and cache.stats.corrupt == 1


@pytest.mark.parametrize("known", [False, True])
def test_whole_sectors_are_read_into_a_given_buffer_and_verified(
        tmp_path: Path, known: bool) -> None:
    cache = _cache(tmp_path)
    sector = cache.sector_size
    version = _version(2 * BS + 100)
    data = os.urandom(version.size)
    for index in range(3):
        assert cache.put(version, index, data[index * BS:(index + 1) * BS])
    if not known:
        cache = _cache(tmp_path)  # a new process: the CRCs come from each block's header
    wanted = [(0, 2 * sector, BS), (1, 0, BS), (2, 0, 100)]  # the last block ends at 100
    into = bytearray(os.urandom(2 * BS - 2 * sector + 100))  # contents undefined, as a pool's
    found = cache.read_blocks(version, wanted, into=memoryview(into))
    assert sorted(found) == [0, 1, 2]
    assert all(view.obj is into for view in found.values())  # no copy of its own
    assert bytes(into) == data[2 * sector:]
    blocks = {int(path.name.rsplit("_", 1)[1]): path for path in _block_files(tmp_path)}
    raw = bytearray(blocks[1].read_bytes())
    raw[HEADER_SIZE + 5] ^= 0x01
    blocks[1].write_bytes(bytes(raw))
    blocks[0].unlink()
    into[:] = bytes(len(into))
    with capture_logs():
        found = cache.read_blocks(version, wanted, into=memoryview(into))
    assert sorted(found) == [2] and cache.stats.corrupt == 1 and not blocks[1].exists()
    assert bytes(found[2]) == data[2 * BS:] and found[2].obj is into
    assert bytes(into[-100:]) == data[2 * BS:]  # at its place after the missing ones
    with pytest.raises(ValueError, match="block 2 range 10-"):
        cache.read_blocks(version, [(2, 10, 100)], into=memoryview(into)[:90])
    with pytest.raises(ValueError, match="a buffer of 90 bytes for 100 wanted"):
        cache.read_blocks(version, [(2, 0, 100)], into=memoryview(into)[:90])


def test_a_cache_directory_of_the_old_layout_is_removed(tmp_path: Path) -> None:
    old = tmp_path / "v1" / "blocks" / "ab"
    old.mkdir(parents=True)
    (old / "block_0").write_bytes(b"x" * 100)
    cache = _cache(tmp_path)
    assert not (tmp_path / "v1").exists() and cache.writable


def test_block_renamed_to_another_name_is_not_served(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    one, two = _version(BS, key="one"), _version(BS, key="two")
    assert cache.put(one, 0, os.urandom(BS))
    target = Path(cache.path(two, 0))
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(cache.path(one, 0), target)
    assert cache.get(two, 0) is None  # its header names another object version


def test_lru_eviction_keeps_the_directory_under_the_limit(tmp_path: Path) -> None:
    limit = 8 * (BS + HEADER_SIZE)
    cache = _cache(tmp_path, limit)
    version = _version(40 * BS)
    blocks = {i: os.urandom(BS) for i in range(40)}
    assert cache.put(version, 0, blocks[0])
    for i in range(1, 40):
        cache.get(version, 0)  # keep block 0 young
        # mtime resolution: make each new block strictly younger than the one before
        os.utime(cache.path(version, 0), (time.time() + i, time.time() + i))
        assert cache.put(version, i, blocks[i])
        assert _dir_bytes(tmp_path) <= limit
    assert bytes(cache.get(version, 0) or b"") == blocks[0]
    assert cache.get(version, 1) is None  # the oldest unused went first
    assert cache.stats.evicted >= 30


def test_a_hit_bumps_the_lru_mtime_at_most_every_lru_bump_seconds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _cache(tmp_path)
    version = _version(BS)
    assert cache.put(version, 0, os.urandom(BS))
    path = cache.path(version, 0)
    old = time.time() - 3600
    os.utime(path, (old, old))
    assert cache.get(version, 0) is not None
    assert os.stat(path).st_mtime == pytest.approx(old)  # written here moments ago: left
    assert _cache(tmp_path).get(version, 0) is not None  # another mount's first hit bumps
    assert os.stat(path).st_mtime > old + 3000
    os.utime(path, (old, old))
    monkeypatch.setattr(cache_module, "LRU_BUMP_SECONDS", 0.0)
    assert cache.get(version, 0) is not None
    assert os.stat(path).st_mtime > old + 3000


def test_two_caches_on_one_directory_share_the_limit(tmp_path: Path) -> None:
    limit = 6 * (BS + HEADER_SIZE)
    first, second = _cache(tmp_path, limit), _cache(tmp_path, limit)
    version = _version(30 * BS)
    for i in range(30):
        (first if i % 2 else second).put(version, i, os.urandom(BS))
        assert _dir_bytes(tmp_path) <= limit
    shared = _version(BS, key="shared")
    data = os.urandom(BS)
    assert first.put(shared, 0, data)
    assert bytes(second.get(shared, 0) or b"") == data  # one mount's block serves the other


def test_eviction_tolerates_files_vanishing(tmp_path: Path, monkeypatch) -> None:
    limit = 4 * (BS + HEADER_SIZE)
    cache, other = _cache(tmp_path, limit), _cache(tmp_path, limit)
    version = _version(20 * BS)
    for i in range(4):
        assert cache.put(version, i, os.urandom(BS))
    real_scan = cache._scan

    def scan_then_race():  # another mount evicts everything right after our scan
        result = real_scan()
        for block in _block_files(tmp_path):
            block.unlink()
        return result

    monkeypatch.setattr(cache, "_scan", scan_then_race)
    assert cache.put(version, 10, os.urandom(BS))
    assert other.get(version, 0) is None  # vanished: a miss, not an error
    assert other.put(version, 11, os.urandom(BS))


def test_unwritable_directory_degrades_with_one_warning(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with capture_logs() as logs:
        cache = _cache(blocker / "cache")
        version = _version(BS)
        for _ in range(3):
            assert not cache.put(version, 0, os.urandom(BS))
            assert cache.get(version, 0) is None
    assert not cache.writable
    assert [entry["log_level"] for entry in logs] == ["warning"]


def test_enospc_degrades_with_one_warning_and_releases_the_reservation(
        tmp_path: Path, monkeypatch) -> None:
    cache = _cache(tmp_path, 100 * BS)
    version = _version(4 * BS)
    kept = os.urandom(BS)
    assert cache.put(version, 0, kept)
    used = cache._read_usage()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with capture_logs() as logs:
        for i in range(1, 4):
            assert not cache.put(version, i, os.urandom(BS))
    assert len([e for e in logs if e["log_level"] == "warning"]) == 1
    assert logs[0]["errno"] == "ENOSPC"
    assert cache._read_usage() == used
    assert bytes(cache.get(version, 0) or b"") == kept  # what is cached is still served


def test_open_removes_stale_temporary_files_and_recounts(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    version = _version(BS)
    assert cache.put(version, 0, os.urandom(BS))
    stale = tmp_path / LAYOUT / "tmp" / "tmpstale"
    stale.write_bytes(b"torn")
    old = time.time() - 2 * cache_module.STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    os.pwrite(cache._usage_fd, (10**9).to_bytes(8, "little"), 0)  # a counter gone wrong
    reopened = _cache(tmp_path)
    assert not stale.exists()
    assert reopened._read_usage() == BS + HEADER_SIZE


# --------------------------------------------------------------------- CachedFetch


def _reader(nursery, store: MemoryStore, cache: BlockCache, key: str,
            loop_idle: bool = False, buffers: BufferPool | None = None) -> Prefetcher:
    data = store.objects[key]
    etag = store.head(key).etag
    version = ObjectVersion(store.bucket, key, etag, len(data))

    async def fetch(start: int, end: int) -> bytes:
        store.calls.append(f"range {start} {end}")
        return await trio.to_thread.run_sync(partial(store.get_range, key, start, end, etag))

    source = CachedFetch(cache, version, fetch, nursery.start_soon, trio.CapacityLimiter(2),
                         WriteBudget(64 * BS), lambda: loop_idle, buffers=buffers)
    return Prefetcher(source, len(data), nursery.start_soon, MemoryBudget(64 * BS),
                      part_size=4 * BS, max_parallel=2, align=BS,
                      recycle=None if buffers is None else buffers.give)


async def _read_all(reader: Prefetcher, size: int, step: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        out += await reader.read(len(out), step)
    return bytes(out)


def _ranges(store: MemoryStore) -> list[tuple[int, int]]:
    return [tuple(map(int, c.split()[1:])) for c in store.calls if c.startswith("range")]


def test_second_sequential_pass_makes_no_get(tmp_path: Path) -> None:
    store = MemoryStore()
    size = 37 * BS + 123
    store.objects["k"] = random.Random(1).randbytes(size)
    cache = _cache(tmp_path)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            first = _reader(nursery, store, cache, "k")
            assert await _read_all(first, size, 3 * BS + 5) == store.objects["k"]
            first.close()
        got = _ranges(store)
        # Parts end on block boundaries, so no byte was fetched twice.
        assert sum(end - start for start, end in got) == size
        store.calls.clear()
        async with trio.open_nursery() as nursery:
            second = _reader(nursery, store, cache, "k")
            assert await _read_all(second, size, 3 * BS + 5) == store.objects["k"]
            second.close()
        assert _ranges(store) == []
        assert store.calls.count("get") == 0

    trio.run(main)


def test_cached_parts_come_in_pooled_buffers_that_are_used_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "POOLED_READ_MIN", 2 * BS)  # the parts here are 4 blocks
    store = MemoryStore()
    size = 37 * BS + 123  # a short last block: a part may end at the object's end
    store.objects["k"] = data = random.Random(5).randbytes(size)
    cache = _cache(tmp_path)
    pool = BufferPool(64 * BS)

    reused: list[int] = []  # pool.reused after each pass
    taken: list[int] = []  # buffers taken by the end of each pass
    takes: list[int] = []
    take, threads = pool.take, set()

    def counted_take(size: int):  # type: ignore[no-untyped-def]
        takes.append(size)
        threads.add(threading.get_ident())
        return take(size)

    pool.take = counted_take  # type: ignore[method-assign]

    async def main() -> None:
        for _ in range(3):  # cold, then twice from the cache
            async with trio.open_nursery() as nursery:
                reader = _reader(nursery, store, cache, "k", buffers=pool)
                assert await _read_all(reader, size, BS) == data
                reader.close()
            # The nursery waited for the blocks stored in the background.
            assert cache.stats.written == 38
            reused.append(pool.reused)
            taken.append(len(takes))

    trio.run(main)
    assert sum(end - start for start, end in _ranges(store)) == size  # the cold pass only
    # Each cached pass reads its 10 parts into pooled buffers; the first one's are fresh
    # (its window grows, so part sizes differ), the second's are mostly buffers given back
    # by parts before them.
    assert taken[2] - taken[1] == 10 and min(takes) >= 2 * BS
    assert threads == {threading.get_ident()}  # the pool is not thread-safe: the loop's only
    assert reused[2] - reused[1] >= 8


def test_a_miss_gives_its_buffer_back_for_the_fetch_to_take(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "POOLED_READ_MIN", BS)
    size = 4 * BS
    data = random.Random(6).randbytes(size)
    cache = _cache(tmp_path)
    version = _version(size)
    pool = BufferPool(64 * BS)

    async def fetch(start: int, end: int) -> bytearray:  # as the mount's: into a pooled buffer
        buffer = pool.take(end - start)
        buffer[:] = data[start:end]
        return buffer

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            source = CachedFetch(cache, version, fetch, nursery.start_soon,
                                 trio.CapacityLimiter(2), WriteBudget(64 * BS), lambda: False,
                                 buffers=pool)
            got = await source(0, size)
            assert bytes(got) == data
        assert pool.reused == 1  # the fetch took the buffer the cache read did not fill

    trio.run(main)


def test_only_missing_blocks_are_fetched(tmp_path: Path) -> None:
    store = MemoryStore()
    size = 10 * BS
    store.objects["k"] = data = random.Random(2).randbytes(size)
    cache = _cache(tmp_path)
    version = ObjectVersion(store.bucket, "k", store.head("k").etag, size)
    for index in (0, 1, 4, 5, 6, 9):
        cache.put(version, index, data[index * BS:(index + 1) * BS])

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            reader = _reader(nursery, store, cache, "k")
            assert await _read_all(reader, size, size) == data
            reader.close()

    trio.run(main)
    # Parts are 4 blocks: [0, 4) misses 2-3, [4, 8) misses 7, [8, 10) misses 8.
    assert sorted(_ranges(store)) == [(2 * BS, 4 * BS), (7 * BS, 8 * BS), (8 * BS, 9 * BS)]


def test_random_reads_fill_and_use_whole_blocks(tmp_path: Path) -> None:
    store = MemoryStore()
    size = 64 * BS
    store.objects["k"] = data = random.Random(3).randbytes(size)
    cache = _cache(tmp_path)
    offsets = random.Random(4).sample(range(0, size - 20 * KiB), 40)

    async def main() -> None:
        for _ in range(2):
            async with trio.open_nursery() as nursery:
                reader = _reader(nursery, store, cache, "k")
                for offset in offsets:
                    assert bytes(await reader.read(offset, 20 * KiB)) == \
                        data[offset:offset + 20 * KiB]
                reader.close()

    store.calls.clear()
    read = cache.read_blocks
    taken: list[int] = []

    def counted(version: ObjectVersion, wanted: list[tuple[int, int, int]]) -> dict:
        taken.extend(hi - lo for _, lo, hi in wanted)
        return read(version, wanted)

    cache.read_blocks = counted  # type: ignore[method-assign]
    trio.run(main)
    fetched = _ranges(store)
    assert all(start % BS == 0 for start, _ in fetched)
    blocks_touched = {o // BS for o in offsets} | {(o + 20 * KiB - 1) // BS for o in offsets}
    # The second pass came from disk: no more bytes than the blocks the first pass touched,
    # and of a cached block only what a read asked for (and the kernel-free reader here
    # asks 20 KiB at a time).
    assert sum(end - start for start, end in fetched) <= len(blocks_touched) * BS
    assert taken and max(taken) <= 20 * KiB


def test_reads_into_a_block_being_fetched_wait_for_it_and_make_no_second_get(
        tmp_path: Path) -> None:
    store = MemoryStore()
    size = 8 * BS
    store.objects["k"] = data = random.Random(6).randbytes(size)
    cache = _cache(tmp_path)
    offsets = [3 * BS + 1000, 3 * BS + 30 * KiB, 3 * BS + 2 * KiB, 3 * BS + 50 * KiB]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            reader = _reader(nursery, store, cache, "k")  # one open file, concurrent reads
            got: dict[int, bytes] = {}

            async def read_at(offset: int) -> None:
                got[offset] = bytes(await reader.read(offset, 4 * KiB))

            async with trio.open_nursery() as reads:
                for offset in offsets:
                    reads.start_soon(read_at, offset)
            reader.close()
        for offset in offsets:
            assert got[offset] == data[offset:offset + 4 * KiB]

    trio.run(main)
    # Block 3 is fetched once; the rest waited for it. (Which read comes first is trio's
    # choice: one that follows another in order may add read-ahead of the next blocks.)
    fetched = sorted(_ranges(store))
    assert sum(start <= 3 * BS < end for start, end in fetched) == 1
    assert all(end <= start for (_, end), (start, _) in zip(fetched, fetched[1:], strict=False))


# --------------------------------------------------------------------- Filesystem


def test_new_filesystem_on_the_same_dir_reads_from_cache_and_sees_changes(
        tmp_path: Path) -> None:
    store = MemoryStore()
    size = 3 * 1024 * KiB + 7
    store.objects["dir/obj"] = old = random.Random(5).randbytes(size)
    options = MountOptions(cache=str(tmp_path / "cache"), metadata_ttl=0.0)

    async def read_once() -> bytes:
        fs = Filesystem(store, options)
        async with trio.open_nursery() as nursery:
            fs.attach(nursery)
            directory = await fs.lookup(1, "dir")
            attrs = await fs.lookup(directory.ino, "obj")
            fh = await fs.open(attrs.ino, os.O_RDONLY)
            out = bytearray()
            while chunk := await fs.read(fh, len(out), 1024 * KiB):
                out += chunk
            await fs.release(fh)
            await fs.shutdown()
            nursery.cancel_scope.cancel()
        return bytes(out)

    assert trio.run(read_once) == old
    store.calls.clear()
    assert trio.run(read_once) == old  # a "remount": blocks found, ETag confirmed by HEAD
    assert "get" not in store.calls and "head" in store.calls
    new = bytes(b ^ 0xFF for b in old[:100]) + old[100:]  # same size, new ETag
    store.objects["dir/obj"] = new
    store.calls.clear()
    assert trio.run(read_once) == new
    assert "get" in store.calls


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_claim_hands_the_tree_over_and_release_locks_it(tmp_path: Path) -> None:
    from driver.fs.cache import claim_cache_dir, release_cache_dir

    root = tmp_path / "c"
    cache = _cache(root)
    assert cache.put(_version(BS), 0, os.urandom(BS))
    outside = tmp_path / "outside"
    outside.write_text("not ours")
    os.symlink(outside, root / LAYOUT / "link")
    claim_cache_dir(str(root), 70000, 70000)
    for path in [root, *root.rglob("*")]:
        assert path.lstat().st_uid == 70000 and path.lstat().st_gid == 70000, path
    assert outside.stat().st_uid == 0  # a symlink is never followed
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    release_cache_dir(str(root))
    assert root.stat().st_uid == 0 and stat.S_IMODE(root.stat().st_mode) == 0o700
    claim_cache_dir(str(root), 70001, 70001)  # a new server UID gets it all back
    assert all(p.lstat().st_uid == 70001 for p in [root, *root.rglob("*")])
    release_cache_dir(str(tmp_path / "absent"))  # nothing there: fine
    with pytest.raises(NotADirectoryError):
        claim_cache_dir(str(outside), 70000, 70000)


@pytest.mark.parametrize("size", [3 * 1024 * KiB + 5, 20 * 1024 * KiB])  # one PUT; multipart
def test_written_files_populate_the_cache(tmp_path: Path, size: int) -> None:
    store = MemoryStore()
    data = random.Random(size).randbytes(size)
    options = MountOptions(cache=str(tmp_path / "cache"), write_part_size=8 * 1024 * KiB)

    async def write_then_read() -> bytes:
        fs = Filesystem(store, options)
        async with trio.open_nursery() as nursery:
            fs.attach(nursery)
            fh, attrs = await fs.create(1, "new.bin", os.O_WRONLY | os.O_CREAT)
            for start in range(0, size, 700 * KiB):  # writes that do not align with blocks
                await fs.write(fh, start, data[start:start + 700 * KiB])
            await fs.flush(fh)
            await fs.release(fh)
            store.calls.clear()
            fh = await fs.open(attrs.ino, os.O_RDONLY)
            out = bytearray()
            while chunk := await fs.read(fh, len(out), 1024 * KiB):
                out += chunk
            await fs.release(fh)
            await fs.shutdown()
            nursery.cancel_scope.cancel()
        return bytes(out)

    assert trio.run(write_then_read) == data
    assert "get" not in store.calls


def test_an_aborted_write_names_no_block(tmp_path: Path) -> None:
    store = MemoryStore()
    options = MountOptions(cache=str(tmp_path / "cache"))
    store.fail = lambda op: op == "put"

    async def main() -> None:
        fs = Filesystem(store, options)
        async with trio.open_nursery() as nursery:
            fs.attach(nursery)
            fh, _ = await fs.create(1, "bad.bin", os.O_WRONLY | os.O_CREAT)
            await fs.write(fh, 0, os.urandom(2 * 1024 * KiB + 1))
            with pytest.raises(Exception):  # noqa: B017 - the upload's own error
                await fs.flush(fh)
            await fs.release(fh)
            await fs.shutdown()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert _block_files(tmp_path / "cache") == []
    assert list((tmp_path / "cache" / LAYOUT / "tmp").iterdir()) == []


@pytest.mark.parametrize("idle", [True, False])
def test_short_cached_reads_run_on_the_loop_only_when_no_request_waits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, idle: bool) -> None:
    store = MemoryStore()
    size = 4 * BS
    store.objects["k"] = random.Random(7).randbytes(size)
    cache = _cache(tmp_path)
    version = ObjectVersion(store.bucket, "k", store.head("k").etag, size)
    for index in range(4):
        assert cache.put(version, index, store.objects["k"][index * BS:(index + 1) * BS])
    loop_thread = threading.get_ident()
    threads: list[tuple[int, bool]] = []  # (bytes asked, ran on the loop's thread)
    read_blocks = cache.read_blocks

    def recording(version: ObjectVersion, wanted):  # type: ignore[no-untyped-def]
        wanted = list(wanted)
        threads.append((sum(hi - lo for _, lo, hi in wanted),
                        threading.get_ident() == loop_thread))
        return read_blocks(version, wanted)

    monkeypatch.setattr(cache, "read_blocks", recording)
    monkeypatch.setattr(cache_module, "LOOP_READ_LIMIT", 2 * BS)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            reader = _reader(nursery, store, cache, "k", loop_idle=idle)
            offset = BS + 4096  # mid-file: a random reader, each read one request
            assert await reader.read(offset, BS) == store.objects["k"][offset:offset + BS]
            reader.close()
            whole = _reader(nursery, store, cache, "k", loop_idle=idle)  # over the limit
            assert await whole.read(0, size) == store.objects["k"]
            whole.close()

    trio.run(main)
    assert _ranges(store) == []  # all from the cache
    assert threads[0] == (BS, idle)
    longer = [on_loop for asked, on_loop in threads if asked > 2 * BS]
    assert longer and not any(longer)  # a longer read always goes to a worker
