"""The benchmark workloads (issue 7): what each one does through a mount and through boto3.

Each workload reads or writes objects that `seed` put in the bucket, measures the wall time
of the part a user waits for, checks that it moved the bytes it should (a fast wrong answer
must not pass), and returns one `RunResult`. The harness supplies a fresh mount, a dropped
page cache and the resource monitor around every call.

Object layout in the bench bucket:
  big/obj-0 .. big/obj-3    `size` bytes of random data (sequential, random, first byte)
  list/f-00000 ..           `list_count` tiny objects (ls, ls -l)
  small/f-0000 ..           `small_count` objects of 4 KiB (small-file reads)
  w-<client>-<n>.bin        written by the write workload, deleted after each run

The cache workloads (group "cache") mount with `--cache DIR` and read the same data twice
on one mount: a first pass that starts from an empty cache directory, then, once every
block is on disk and the page cache is dropped, the measured second pass. Each records the
first pass and the speed-up in its sample.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driver.devservers import wait_until
from driver.fs.cache import LAYOUT
from tests.perf.clients import OURS

MiB = 1024 * 1024
GiB = 1024 * MiB
SMALL_SIZE = 4096
RANDOM_BLOCK = 256 * 1024
READ_BLOCK = MiB


@dataclass
class Context:
    """What every workload needs to know about this benchmark run."""

    bucket: str
    size: int  # bytes of each big object
    duration: float  # seconds of the random-read workload
    list_count: int
    small_count: int
    source_file: Path  # local random data for the write workload
    raw: Any  # clients.Raw
    seq: int = 0  # counter for unique keys

    def next_key(self, client: str) -> str:
        self.seq += 1
        return f"w-{client}-{self.seq}.bin"


@dataclass
class RunResult:
    value: float  # the workload's figure, in its unit
    seconds: float  # wall time measured
    bytes: int = 0  # payload bytes moved (0 for metadata workloads)
    ops: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class CheckFailed(AssertionError):
    """A workload saw wrong data (size, count): the figure would be meaningless."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def _throughput(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6  # MB/s (decimal, like dd and the reference trials)


@dataclass
class Workload:
    name: str
    group: str
    unit: str  # "MB/s" or "s"
    description: str
    needs: frozenset[str] = frozenset()
    raw: bool = True  # has a boto3 equivalent
    fresh_mount: bool = True
    mount_flags: tuple[str, ...] = ()  # extra flags for our mount in this workload
    peers: frozenset[str] | None = None  # the only other clients measured (None: all)

    @property
    def higher_is_better(self) -> bool:
        return self.unit != "s"

    def run_mount(self, ctx: Context, root: Path, client: str) -> RunResult:
        raise NotImplementedError

    def run_raw(self, ctx: Context) -> RunResult:
        raise NotImplementedError


def big_key(index: int) -> str:
    return f"big/obj-{index}"


def list_key(index: int) -> str:
    return f"list/f-{index:05d}"


def small_key(index: int) -> str:
    return f"small/f-{index:04d}"


def read_file(path: Path) -> int:
    """Read a whole file with 1 MiB reads into one reused buffer; return the byte count."""
    buffer = bytearray(READ_BLOCK)
    total = 0
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            total += count
    return total


def get_object(client: Any, bucket: str, key: str, byte_range: str | None = None) -> int:
    kwargs = {"Range": byte_range} if byte_range else {}
    body = client.get_object(Bucket=bucket, Key=key, **kwargs)["Body"]
    total = 0
    while chunk := body.read(READ_BLOCK):
        total += len(chunk)
    return total


def _parallel(count: int, fn: Callable[[int], int], items: int) -> int:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return sum(pool.map(fn, range(items)))


# ---------------------------------------------------------------------------------------
# Reads of big objects


class SeqRead(Workload):
    def __init__(self, readers: int, direct_io: bool = False) -> None:
        name = "seq_read" if readers == 1 else f"seq_read_{readers}"
        how = f"{readers} reader(s) on {readers} object(s)"
        if readers > 1:
            how += f"; raw = {readers} concurrent single-GET streams"
        if direct_io:
            name += "_dio"
            how += "; our mount with --direct-io, against raw only"
        super().__init__(name, "read", "MB/s", f"cold sequential read, {how}",
                         needs=frozenset({f"big{readers}"}),
                         mount_flags=("--direct-io",) if direct_io else (),
                         peers=frozenset({"boto3"}) if direct_io else None)
        self.readers = readers

    def _run(self, read_one: Callable[[int], int], ctx: Context) -> RunResult:
        started = time.perf_counter()
        total = _parallel(self.readers, read_one, self.readers)
        seconds = time.perf_counter() - started
        _check(total == ctx.size * self.readers,
               f"read {total} bytes, expected {ctx.size * self.readers}")
        return RunResult(_throughput(total, seconds), seconds, total, self.readers)

    def run_mount(self, ctx: Context, root: Path, client: str) -> RunResult:
        return self._run(lambda i: read_file(root / big_key(i)), ctx)

    def run_raw(self, ctx: Context) -> RunResult:
        client = ctx.raw.client
        return self._run(lambda i: get_object(client, ctx.bucket, big_key(i)), ctx)


class RandRead(Workload):
    """256 KiB reads at random aligned offsets for `duration` seconds, no block twice."""

    def __init__(self) -> None:
        super().__init__("rand_read", "read", "MB/s",
                         "random 256 KiB reads in one big object for a fixed duration",
                         needs=frozenset({"big1"}))

    @staticmethod
    def _offsets(size: int, seed: int) -> list[int]:
        offsets = list(range(0, max(size - RANDOM_BLOCK, 0) + 1, RANDOM_BLOCK))
        random.Random(seed).shuffle(offsets)
        return offsets

    def _run(self, ctx: Context, read_at: Callable[[int], int]) -> RunResult:
        offsets = self._offsets(ctx.size, 7)
        total = ops = 0
        started = time.perf_counter()
        deadline = started + ctx.duration
        # Stop at the deadline or once every block has been read: a block read twice could
        # come from the page cache and flatter the client.
        while time.perf_counter() < deadline and ops < len(offsets):
            offset = offsets[ops]
            count = read_at(offset)
            _check(count == min(RANDOM_BLOCK, ctx.size - offset),
                   f"short read {count} at {offset}")
            total += count
            ops += 1
        seconds = time.perf_counter() - started
        return RunResult(_throughput(total, seconds), seconds, total, ops,
                         {"iops": ops / seconds})

    def run_mount(self, ctx: Context, root: Path, client: str) -> RunResult:
        fd = os.open(root / big_key(0), os.O_RDONLY)
        try:
            return self._run(ctx, lambda off: len(os.pread(fd, RANDOM_BLOCK, off)))
        finally:
            os.close(fd)

    def run_raw(self, ctx: Context) -> RunResult:
        client = ctx.raw.client
        return self._run(ctx, lambda off: get_object(
            client, ctx.bucket, big_key(0), f"bytes={off}-{off + RANDOM_BLOCK - 1}"))


class FirstByte(Workload):
    def __init__(self) -> None:
        super().__init__("ttfb", "read", "s",
                         "time to first byte of a big object (open + read 1 byte, fresh mount); "
                         "raw = a fresh client's ranged GET of 1 byte",
                         needs=frozenset({"big1"}))

    def run_mount(self, ctx: Context, root: Path, client: str) -> RunResult:
        started = time.perf_counter()
        with open(root / big_key(0), "rb", buffering=0) as handle:
            data = handle.read(1)
        seconds = time.perf_counter() - started
        _check(len(data) == 1, "no first byte")
        return RunResult(seconds, seconds, 1, 1)

    def run_raw(self, ctx: Context) -> RunResult:
        client = ctx.raw.new_client()  # a cold client: its first request connects
        started = time.perf_counter()
        count = get_object(client, ctx.bucket, big_key(0), "bytes=0-0")
        seconds = time.perf_counter() - started
        _check(count == 1, "no first byte")
        return RunResult(seconds, seconds, 1, 1)


# ---------------------------------------------------------------------------------------
# Writes


def write_part_size() -> int:
    """Our mount's default multipart part size: boto3 is given the same."""
    from driver.options import MountOptions

    return MountOptions().write_part_size


class SeqWrite(Workload):
    def __init__(self) -> None:
        super().__init__("seq_write", "write", "MB/s",
                         "sequential write of a big file with fsync (dd bs=1M conv=fsync); "
                         "raw = boto3 upload_file with our default part size "
                         f"({write_part_size() // MiB} MiB)",
                         needs=frozenset({"source"}))

    def _verify(self, ctx: Context, key: str, wait: float) -> float:
        """Seconds until the object showed up with the right size (after the timed part)."""
        client = ctx.raw.client
        started = time.perf_counter()

        def present() -> bool:
            try:
                return client.head_object(Bucket=ctx.bucket, Key=key)["ContentLength"] \
                    == ctx.size
            except client.exceptions.ClientError:
                return False

        try:
            wait_until(present, wait, f"{key} with {ctx.size} bytes")
        finally:
            client.delete_object(Bucket=ctx.bucket, Key=key)
        return time.perf_counter() - started

    def run_mount(self, ctx: Context, root: Path, client: str) -> RunResult:
        key = ctx.next_key(client)
        args = ["dd", f"if={ctx.source_file}", f"of={root / key}", "bs=1M", "conv=fsync",
                "status=none"]
        started = time.perf_counter()
        result = subprocess.run(args, capture_output=True, text=True, check=False,
                                timeout=max(600, ctx.size / MiB))
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            self._cleanup(ctx, key)
            raise CheckFailed(f"dd failed ({result.returncode}): {result.stderr.strip()}")
        visible = self._verify(ctx, key, 60)
        return RunResult(_throughput(ctx.size, seconds), seconds, ctx.size, 1,
                         {"visible_after_s": visible})

    def run_raw(self, ctx: Context) -> RunResult:
        from boto3.s3.transfer import TransferConfig

        key = ctx.next_key("boto3")
        part = write_part_size()
        config = TransferConfig(multipart_threshold=part, multipart_chunksize=part)
        started = time.perf_counter()
        ctx.raw.client.upload_file(str(ctx.source_file), ctx.bucket, key, Config=config)
        seconds = time.perf_counter() - started
        self._verify(ctx, key, 10)
        return RunResult(_throughput(ctx.size, seconds), seconds, ctx.size, 1)

    @staticmethod
    def _cleanup(ctx: Context, key: str) -> None:
        with contextlib.suppress(Exception):  # best effort after a failed run
            ctx.raw.client.delete_object(Bucket=ctx.bucket, Key=key)


# ---------------------------------------------------------------------------------------
# Metadata and small files


class Listing(Workload):
    def __init__(self, long: bool) -> None:
        super().__init__("ls_l" if long else "ls", "meta", "s",
                         f"`ls{' -l' if long else ''}` of a directory of many objects "
                         "(fresh mount); raw = boto3's paginated list_objects_v2 with delimiter",
                         needs=frozenset({"list"}))
        self.long = long

    def run_mount(self, ctx: Context, root: Path, client: str) -> RunResult:
        args = ["ls", "-l", str(root / "list")] if self.long else ["ls", str(root / "list")]
        started = time.perf_counter()
        result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=600,
                                env={**os.environ, "LC_ALL": "C"})
        seconds = time.perf_counter() - started
        _check(result.returncode == 0, f"ls failed: {result.stderr.strip()[:300]}")
        lines = [line for line in result.stdout.splitlines() if line.startswith("-")] \
            if self.long else result.stdout.splitlines()
        _check(len(lines) == ctx.list_count, f"ls saw {len(lines)} of {ctx.list_count}")
        return RunResult(seconds, seconds, 0, len(lines))

    def run_raw(self, ctx: Context) -> RunResult:
        client = ctx.raw.client
        started = time.perf_counter()
        count = 0
        for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=ctx.bucket, Prefix="list/", Delimiter="/"):
            count += len(page.get("Contents", ()))
        seconds = time.perf_counter() - started
        _check(count == ctx.list_count, f"listed {count} of {ctx.list_count}")
        return RunResult(seconds, seconds, 0, count)


class SmallFiles(Workload):
    def __init__(self, parallel: int) -> None:
        name = "small_seq" if parallel == 1 else f"small_par{parallel}"
        how = "sequentially" if parallel == 1 else f"with {parallel} threads"
        super().__init__(name, "small", "s", f"read many 4 KiB files {how} (fresh mount)",
                         needs=frozenset({"small"}))
        self.parallel = parallel

    def _run(self, ctx: Context, read_one: Callable[[int], int]) -> RunResult:
        started = time.perf_counter()
        total = _parallel(self.parallel, read_one, ctx.small_count)
        seconds = time.perf_counter() - started
        _check(total == ctx.small_count * SMALL_SIZE,
               f"read {total} bytes, expected {ctx.small_count * SMALL_SIZE}")
        return RunResult(seconds, seconds, total, ctx.small_count,
                         {"files_per_s": ctx.small_count / seconds})

    def run_mount(self, ctx: Context, root: Path, client: str) -> RunResult:
        def read_one(index: int) -> int:
            with open(root / small_key(index), "rb") as handle:
                return len(handle.read())

        return self._run(ctx, read_one)

    def run_raw(self, ctx: Context) -> RunResult:
        client = ctx.raw.client
        return self._run(ctx, lambda i: get_object(client, ctx.bucket, small_key(i)))


# ---------------------------------------------------------------------------------------
# The local block cache (issue 14): second passes served from the node's disk


def bench_cache_dir(name: str) -> Path:
    """A cache directory for one workload of this bench process, removed at exit."""
    path = Path(tempfile.gettempdir()) / f"cloudbucket-bench-cache-{os.getpid()}-{name}"
    atexit.register(shutil.rmtree, path, True)
    return path


def clear_cache_blocks(cache: Path) -> None:
    """Empty the cache of its blocks (the mount tolerates blocks vanishing: misses)."""
    blocks = cache / LAYOUT / "blocks"
    with contextlib.suppress(FileNotFoundError):
        for fan in os.scandir(blocks):
            shutil.rmtree(fan.path, ignore_errors=True)


def cached_block_files(cache: Path) -> int:
    blocks = cache / LAYOUT / "blocks"
    count = 0
    with contextlib.suppress(FileNotFoundError):
        for fan in os.scandir(blocks):
            with contextlib.suppress(FileNotFoundError):
                count += sum(1 for _ in os.scandir(fan.path))
    return count


def drop_page_cache() -> bool:
    """Drop the page cache between the two passes (root only); False when not possible."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


class _CacheWorkload(Workload):
    """Two passes on one mount with --cache; the figure is the second pass."""

    def __init__(self, name: str, unit: str, description: str, needs: frozenset[str]) -> None:
        self.cache = bench_cache_dir(name)
        super().__init__(name, "cache", unit, description, needs=needs,
                         mount_flags=(f"--cache={self.cache}",),
                         peers=frozenset({"boto3"}))  # peers have no cache of ours to fill

    def _second_pass_ready(self, blocks: int) -> bool:
        """Wait until the first pass's blocks are on disk, then drop the page cache."""
        wait_until(lambda: cached_block_files(self.cache) >= blocks, 300,
                   f"{blocks} blocks in the cache")
        return drop_page_cache()

    def _speedup(self, first: RunResult, second: RunResult, dropped: bool) -> RunResult:
        speedup = (second.value / first.value if self.higher_is_better
                   else first.value / second.value)
        second.extra.update(first_value=first.value, first_seconds=first.seconds,
                            speedup=speedup, page_cache_dropped=dropped)
        return second


class CacheSeqRead(_CacheWorkload):
    def __init__(self) -> None:
        super().__init__("cache_seq_read", "MB/s",
                         "second sequential read of a big object from the --cache directory "
                         "(page cache dropped); first_value = the cold first read; "
                         "raw = one single-stream GET", frozenset({"big1"}))

    def _read(self, ctx: Context, root: Path) -> RunResult:
        started = time.perf_counter()
        total = read_file(root / big_key(0))
        seconds = time.perf_counter() - started
        _check(total == ctx.size, f"read {total} bytes, expected {ctx.size}")
        return RunResult(_throughput(total, seconds), seconds, total, 1)

    def run_mount(self, ctx: Context, root: Path, client: str) -> RunResult:
        clear_cache_blocks(self.cache)
        try:
            first = self._read(ctx, root)
            if not client.startswith(OURS):  # a peer: no cache of ours to wait for
                return self._speedup(first, self._read(ctx, root), drop_page_cache())
            dropped = self._second_pass_ready(-(-ctx.size // MiB))
            return self._speedup(first, self._read(ctx, root), dropped)
        finally:
            clear_cache_blocks(self.cache)

    def run_raw(self, ctx: Context) -> RunResult:
        return SeqRead(1).run_raw(ctx)


class CacheRandRead(_CacheWorkload):
    """The random 256 KiB reads of `rand_read`, then the same offsets again from the cache."""

    def __init__(self) -> None:
        super().__init__("cache_rand_read", "MB/s",
                         "random 256 KiB reads of a cached big object (page cache dropped): "
                         "the offsets a first pass read in the fixed duration, read again; "
                         "first_value = that first pass (filling the cache); compare with "
                         "rand_read for an uncached mount", frozenset({"big1"}))

    @staticmethod
    def _read(ctx: Context, root: Path, offsets: list[int], deadline: float | None
              ) -> tuple[RunResult, list[int]]:
        fd = os.open(root / big_key(0), os.O_RDONLY)
        done: list[int] = []
        total = 0
        try:
            started = time.perf_counter()
            for offset in offsets:
                if deadline is not None and time.perf_counter() >= deadline:
                    break
                count = len(os.pread(fd, RANDOM_BLOCK, offset))
                _check(count == min(RANDOM_BLOCK, ctx.size - offset),
                       f"short read {count} at {offset}")
                total += count
                done.append(offset)
            seconds = time.perf_counter() - started
        finally:
            os.close(fd)
        return RunResult(_throughput(total, seconds), seconds, total, len(done),
                         {"iops": len(done) / seconds}), done

    def run_mount(self, ctx: Context, root: Path, client: str) -> RunResult:
        clear_cache_blocks(self.cache)
        try:
            offsets = RandRead._offsets(ctx.size, 11)
            first, done = self._read(ctx, root, offsets, time.perf_counter() + ctx.duration)
            if client.startswith(OURS):
                touched = {o // MiB for o in done} | {(o + RANDOM_BLOCK - 1) // MiB
                                                      for o in done}
                dropped = self._second_pass_ready(len(touched))
            else:
                dropped = drop_page_cache()
            second, _ = self._read(ctx, root, done, None)
            return self._speedup(first, second, dropped)
        finally:
            clear_cache_blocks(self.cache)

    def run_raw(self, ctx: Context) -> RunResult:
        return RandRead().run_raw(ctx)


class CacheSmallFiles(_CacheWorkload):
    def __init__(self) -> None:
        super().__init__("cache_small", "s",
                         "re-read of many 4 KiB files from the --cache directory (page cache "
                         "dropped), one reader; first_value = the first pass",
                         frozenset({"small"}))

    def _read(self, ctx: Context, root: Path) -> RunResult:
        started = time.perf_counter()
        total = 0
        for index in range(ctx.small_count):
            with open(root / small_key(index), "rb") as handle:
                total += len(handle.read())
        seconds = time.perf_counter() - started
        _check(total == ctx.small_count * SMALL_SIZE,
               f"read {total} bytes, expected {ctx.small_count * SMALL_SIZE}")
        return RunResult(seconds, seconds, total, ctx.small_count,
                         {"files_per_s": ctx.small_count / seconds})

    def run_mount(self, ctx: Context, root: Path, client: str) -> RunResult:
        clear_cache_blocks(self.cache)
        try:
            first = self._read(ctx, root)
            dropped = (self._second_pass_ready(ctx.small_count) if client.startswith(OURS)
                       else drop_page_cache())
            return self._speedup(first, self._read(ctx, root), dropped)
        finally:
            clear_cache_blocks(self.cache)

    def run_raw(self, ctx: Context) -> RunResult:
        return SmallFiles(1).run_raw(ctx)


class MountTime(Workload):
    """The harness times the mount itself; this class only names and labels it."""

    def __init__(self, label: str) -> None:
        super().__init__("mount_time", "meta", "s", label, raw=False)


def all_workloads(mount_label: str) -> list[Workload]:
    return [SeqRead(1), SeqRead(1, direct_io=True), SeqRead(4), RandRead(), FirstByte(),
            SeqWrite(), Listing(False), Listing(True), SmallFiles(1), SmallFiles(8),
            MountTime(mount_label), CacheSeqRead(), CacheRandRead(), CacheSmallFiles()]


GROUPS = ("read", "write", "meta", "small", "cache")
