"""A local block cache of object data on the node's disk (`--cache DIR --max-cache-size MiB`).

Design: an object version (bucket, key, ETag or GCS generation, size) is cut into fixed
`block_size` blocks; block `i` lives in one file named by a hash of the version and `i`,
`v2/blocks/<aa>/<version-hash>_<i>`. Each file starts with a header (magic, length, block
index, version hash, and a CRC32C for each of the block's SECTORS sectors): a read takes only
the sectors it needs (a random 256 KiB read of a 1 MiB block reads a quarter of it) and
verifies each one it takes against those CRCs. A block that fails is deleted and reported
as a miss, never served, so a torn or bit-rotted file costs one refetch. The CRCs of blocks
this process wrote or has verified are kept in memory (KNOWN_BLOCKS of them), so reading
such a block again skips its header: one disk read instead of two.
A block is written to a temporary file and renamed into place, so a reader sees a whole
block or none (no fsync: after a crash the checksum, not the journal, catches a torn file).

The size limit is shared by every process using the directory (two mounts of one volume on
a node): a `usage` counter is updated under an flock, bytes are reserved before a block is
written, and when the limit would be passed the directory is scanned and the least
recently used blocks (by mtime, bumped on every hit) are deleted until a tenth of the limit
is free. A file that vanishes under a scan, a read or a delete is simply a miss. Any write
error (ENOSPC, EACCES, EROFS...) turns the cache off for writes with one warning; reads
still work, from blocks already cached or from the store.

`BlockCache` methods are synchronous and do disk I/O: the filesystem calls them on worker
threads (`CachedFetch` for reads, `BlockWriter` for files written through the mount), but
for short reads while the event loop is idle (see `CachedFetch`). Freshness is not decided
here: a
version's ETag is confirmed by the filesystem (lookup/open HEAD after `--metadata-ttl`),
and a changed object has a new ETag, hence new block names; old blocks age out by LRU.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

import crc32c
import structlog
import trio

from driver.fs.buffers import Blocks, Buffer, BufferPool
from driver.fs.threads import run_sync

log = structlog.get_logger()
MiB = 1024 * 1024
BLOCK_SIZE = 1 * MiB
_MAGIC = b"CBK2"
SECTORS = 16  # checksummed pieces per block: what a partial read verifies
_CRCS_SIZE = 4 * SECTORS  # a little-endian uint32 CRC32C per sector
_HEADER = struct.Struct(f"<4sIQ32s{_CRCS_SIZE}s")  # magic, length, index, version hash, CRCs
HEADER_SIZE = _HEADER.size
LAYOUT = "v2"
OLD_LAYOUTS = ("v1",)  # whole-block checksums: removed when a cache directory is opened
LAST_USED = ".last-used"  # touched when a mount starts and stops using the directory
RESERVED_PREFIX = "put-"  # temporary files whose bytes are reserved in the usage count
STALE_TMP_SECONDS = 600.0
# Keep this much of the disk free when no --max-cache-size is given (mountpoint-s3's rule).
MIN_FREE_FRACTION = 0.05
# Blocks whose sector CRCs this process keeps after writing or verifying their header (about
# 400 bytes each with the path: 3 MiB when full): a read of one skips the header, which was a
# second disk read.
KNOWN_BLOCKS = 8192
# A hit bumps its block's mtime (the LRU order all mounts of the directory share) at most this
# often per process: the utime was one more system call and a dirtied inode on every read.
LRU_BUMP_SECONDS = 30.0
# A cached read of at most this many bytes may run on the event loop (see CachedFetch).
LOOP_READ_LIMIT = BLOCK_SIZE
# A cached read of at least this many bytes goes into a pooled buffer (a stream's parts):
# the fresh `bytes` of a shorter one comes from malloc's heap, memory touched already, while
# a pooled buffer that size is a zero-filled bytearray whenever none is free (random reads).
POOLED_READ_MIN = 2 * MiB


@dataclass(frozen=True, slots=True)
class ObjectVersion:
    """One immutable version of an object: what a block's name and header are bound to."""

    bucket: str
    key: str
    etag: str
    size: int
    # Computed once, in __post_init__: every block read names its file by it.
    digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = "\0".join((self.bucket, self.key, self.etag, str(self.size)))
        digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()
        object.__setattr__(self, "digest", digest)


def _open_block(path: str) -> int:
    """A block file opened for reading without an atime update (a read would otherwise
    dirty the inode of a block just written); EPERM when another user owns it."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOATIME)
    except PermissionError as exc:
        if exc.errno != errno.EPERM:
            raise
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


@dataclass(slots=True)
class _Known:
    crcs: bytes  # packed, as in the header (a last, short block's may be shorter)
    bumped: float  # time.monotonic() when this process last set the block's mtime


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    written: int = 0
    evicted: int = 0


class BlockCache:
    def __init__(self, directory: str | os.PathLike[str], max_size: int | None,
                 block_size: int = BLOCK_SIZE) -> None:
        self.root = os.fspath(directory)
        self.max_size = max_size  # bytes; None: keep MIN_FREE_FRACTION of the disk free
        self.block_size = block_size
        self.sector_size = -(-block_size // SECTORS)
        self.base = os.path.join(self.root, LAYOUT)
        self.blocks_dir = os.path.join(self.base, "blocks")
        self.tmp_dir = os.path.join(self.base, "tmp")
        self.readable = False
        self.writable = False
        self.stats = CacheStats()
        self._lock = threading.Lock()  # flock does not exclude threads sharing one fd
        self._lock_fd = -1
        self._usage_fd = -1
        self._warned = False
        # Sector CRCs of blocks whose header was written or verified here, by block path. A
        # block's name is bound to its version and index, so any file of that name holds the
        # same bytes: data read against these CRCs is as checked as against its header.
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._known_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> BlockCache:
        """Create the directory (0700) or adopt an existing one; never raises."""
        try:
            for path in (self.root, self.base, self.blocks_dir, self.tmp_dir):
                os.makedirs(path, mode=0o700, exist_ok=True)
                if os.stat(path).st_mode & 0o077:
                    os.chmod(path, 0o700)
            self._lock_fd = os.open(os.path.join(self.base, "lock"),
                                    os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._usage_fd = os.open(os.path.join(self.base, "usage"),
                                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self.readable = True
            self._touch_last_used()
            self._remove_stale_tmp()
            for old in OLD_LAYOUTS:  # its bytes are not in the usage count: not evicted
                shutil.rmtree(os.path.join(self.root, old), ignore_errors=True)
            with self._locked():
                self._write_usage(self._scan()[0])  # recount: a crash may have left it off
            self.writable = True
        except OSError as exc:
            self._degrade("cannot use the cache directory", exc)
        return self

    def close(self) -> None:
        if self.readable:
            self._touch_last_used()
        for fd in (self._lock_fd, self._usage_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._lock_fd = self._usage_fd = -1
        self.readable = self.writable = False

    def _degrade(self, what: str, exc: OSError) -> None:
        self.writable = False
        if not self._warned:
            self._warned = True
            log.warning(f"{what}: reads continue without caching new data",
                        cache_dir=self.root, error=exc.strerror or str(exc),
                        errno=errno.errorcode.get(exc.errno or 0, ""))

    def _touch_last_used(self) -> None:
        path = os.path.join(self.root, LAST_USED)
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            os.utime(path)

    def _remove_stale_tmp(self) -> None:
        cutoff = time.time() - STALE_TMP_SECONDS
        with os.scandir(self.tmp_dir) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)

    # ------------------------------------------------------------------ blocks

    def block_count(self, version: ObjectVersion) -> int:
        return -(-version.size // self.block_size)

    def block_length(self, version: ObjectVersion, index: int) -> int:
        return max(0, min(self.block_size, version.size - index * self.block_size))

    def path(self, version: ObjectVersion, index: int) -> str:
        name = version.digest.hex()
        return os.path.join(self.blocks_dir, name[:2], f"{name}_{index}")

    def get(self, version: ObjectVersion, index: int) -> memoryview | None:
        """The whole block if cached and intact; a damaged block is deleted."""
        wanted = (index, 0, self.block_length(version, index))
        return self.read_blocks(version, (wanted,)).get(index)

    def read_blocks(self, version: ObjectVersion, wanted: Iterable[tuple[int, int, int]],
                    into: memoryview | None = None) -> dict[int, memoryview]:
        """Bytes [lo, hi) of each cached block (index, lo, hi) in `wanted` that is intact
        in the sectors holding them; a damaged block is deleted.

        With `into` (as long as the wanted ranges together), they are read into it one after
        the other, each at its place even when blocks before it are missing, and each block
        found is a view of it. Every `lo` must then start a sector and every `hi` end one
        or the block. A pooled buffer is memory touched already: a fresh 1 MiB `bytes` per
        block (os.pread) was a fresh mapping, one page fault per 4 KiB.

        Every file is opened and its range (with its header, unless this process knows the
        block's CRCs already) handed to the kernel's read-ahead (POSIX_FADV_WILLNEED) before
        the first is read, so the disk sees all their reads at once rather than one block at
        a time: on this project's test machine that doubles a cold 16-block read.
        """
        if not self.readable:
            return {}
        opened: list[tuple[int, int, int, int, str, int, _Known | None]] = []
        found: dict[int, memoryview] = {}
        sector = self.sector_size
        at, total = 0, 0  # where each wanted range goes in `into`; their sum
        try:
            for index, lo, hi in wanted:
                at, total = total, total + hi - lo
                path = self.path(version, index)
                try:
                    fd = _open_block(path)
                except OSError:  # absent or evicted under us: a miss
                    self.stats.misses += 1
                    self.forget(path)
                    continue
                known = self._known_block(path)
                opened.append((index, lo, hi, at, path, fd, known))
                data_at = HEADER_SIZE + lo // sector * sector  # the first sector wanted
                ranges = [(data_at, HEADER_SIZE + hi - data_at)]
                if known is None:  # the header too, in one range with the data when adjacent
                    ranges = ([(0, HEADER_SIZE + hi)] if data_at == HEADER_SIZE
                              else [(0, HEADER_SIZE), *ranges])
                with contextlib.suppress(OSError):
                    for offset, length in ranges:
                        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
            if into is not None and len(into) != total:
                raise ValueError(f"a buffer of {len(into)} bytes for {total} wanted")
            for index, lo, hi, at, path, fd, known in opened:
                first = lo // sector
                end = min(-(-hi // sector) * sector, self.block_length(version, index))
                target = None
                if into is not None:
                    if lo != first * sector or hi != end:
                        raise ValueError(f"block {index} range {lo}-{hi} is not whole sectors")
                    target = into[at:at + hi - lo]
                data = self._read_sectors(version, index, path, fd, first, end, known, target)
                if data is not None:
                    found[index] = data[lo - first * sector:hi - first * sector]
        finally:
            for *_, fd, _ in opened:
                os.close(fd)
        return found

    def _read_sectors(self, version: ObjectVersion, index: int, path: str, fd: int,
                      first: int, end: int, known: _Known | None,
                      into: memoryview | None = None) -> memoryview | None:
        """The data from sector `first` to byte `end` of a block (read into `into` when
        given, which is that long), each sector verified against the `known` CRCs or, when
        this process has none, the block's header."""
        sector = self.sector_size
        at, length = HEADER_SIZE + first * sector, end - first * sector
        try:
            header: bytes | bytearray | None
            if into is not None and known is None and first == 0:  # both in one system call
                header = bytearray(HEADER_SIZE)
                data = into[:max(0, os.preadv(fd, [header, into], 0) - HEADER_SIZE)]
            else:
                header = None if known else os.pread(fd, HEADER_SIZE, 0)
                data = (memoryview(os.pread(fd, length, at)) if into is None
                        else into[:os.preadv(fd, [into], at)])
        except OSError:  # unreadable: a miss
            self.stats.misses += 1
            return None
        crcs = known.crcs if known else self._header_crcs(header or b"", version, index)
        sums = self.packed_crcs(data) if len(data) == length else None
        if crcs is None or sums != crcs[4 * first:4 * first + len(sums or b"")]:
            self.stats.corrupt += 1
            log.warning("dropping a damaged cache block", cache_dir=self.root, block=path)
            self.forget(path)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        now = time.monotonic()
        if known is None or now - known.bumped >= LRU_BUMP_SECONDS:
            with contextlib.suppress(OSError):
                os.utime(fd)  # LRU: a hit makes the block young
            self._remember(path, crcs, now)
        self.stats.hits += 1
        return data

    def _header_crcs(self, header: bytes | bytearray, version: ObjectVersion,
                     index: int) -> bytes | None:
        """The packed sector CRCs of a header that names this block of `version`, else None."""
        if len(header) < HEADER_SIZE:
            return None
        magic, length, stored_index, digest, crcs = _HEADER.unpack(header)
        if magic != _MAGIC or stored_index != index or digest != version.digest \
                or length != self.block_length(version, index):
            return None
        return crcs  # type: ignore[no-any-return]

    def _known_block(self, path: str) -> _Known | None:
        with self._known_lock:
            known = self._known.get(path)
            if known is not None:
                self._known.move_to_end(path)
            return known

    def _remember(self, path: str, crcs: bytes, bumped: float) -> None:
        """Keep a block's CRCs; `bumped`: when its mtime was last set (written or hit)."""
        with self._known_lock:
            self._known[path] = _Known(crcs, bumped)
            self._known.move_to_end(path)
            if len(self._known) > KNOWN_BLOCKS:
                self._known.popitem(last=False)

    def forget(self, path: str) -> None:
        with self._known_lock:
            self._known.pop(path, None)

    def packed_crcs(self, data: memoryview | bytes) -> bytes:
        """The CRC32C of each sector of `data` (which starts on a sector boundary), packed
        as in a block's header."""
        view, sector = memoryview(data), self.sector_size
        sums = [crc32c.crc32c(view[at:at + sector]) for at in range(0, len(view), sector)]
        return struct.pack(f"<{len(sums)}I", *sums)

    def header(self, version: ObjectVersion, index: int, crcs: bytes) -> bytes:
        """The header of block `index` of `version`, whose sectors have these packed CRCs."""
        return _HEADER.pack(_MAGIC, self.block_length(version, index), index, version.digest,
                            crcs.ljust(_CRCS_SIZE, b"\0"))

    def placed(self, path: str, crcs: bytes) -> None:
        """A block with these CRCs was renamed into place at `path` by this process."""
        self.stats.written += 1
        self._remember(path, crcs, time.monotonic())

    def put(self, version: ObjectVersion, index: int, data: bytes | memoryview) -> bool:
        """Store a block atomically; False when it was not stored (full, off, present)."""
        if not self.writable or len(data) != self.block_length(version, index):
            return False
        path = self.path(version, index)
        if os.path.exists(path):
            return False  # another reader (or mount) cached it first
        size = HEADER_SIZE + len(data)
        tmp = None
        reserved = False
        try:
            # The temporary file exists before its bytes are reserved, so a scan by another
            # thread or mount counts the reservation (as a RESERVED_PREFIX file).
            fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix=RESERVED_PREFIX)  # 0600
            with open(fd, "wb") as out:
                if not self._reserve(size, pending=True):
                    return False
                reserved = True
                crcs = self.packed_crcs(data)
                out.write(self.header(version, index, crcs))
                out.write(data)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            os.replace(tmp, path)
            tmp = None
            self.placed(path, crcs)
            return True
        except OSError as exc:
            if reserved:
                self._release(size)
            self._degrade("cannot write to the cache directory", exc)
            return False
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    # ------------------------------------------------------------------ size accounting

    @contextlib.contextmanager
    def _locked(self):  # type: ignore[no-untyped-def]
        with self._lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _read_usage(self) -> int:
        raw = os.pread(self._usage_fd, 8, 0)
        return struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0

    def _write_usage(self, value: int) -> None:
        os.pwrite(self._usage_fd, struct.pack("<Q", max(0, value)), 0)

    def _reserve(self, size: int, pending: bool = False) -> bool:
        """Count `size` more bytes if they fit (evicting to make room). `pending`: the caller
        already holds a RESERVED_PREFIX temporary file, which a scan counts as a block."""
        with self._locked():
            used = self._read_usage()
            if not self._fits(used + size):
                used = self._evict(size)
                if pending:
                    used -= HEADER_SIZE + self.block_size
                if not self._fits(used + size):
                    return False
            self._write_usage(used + size)
            return True

    def _release(self, size: int) -> None:
        with contextlib.suppress(OSError), self._locked():
            self._write_usage(self._read_usage() - size)

    def _fits(self, total: int) -> bool:
        if self.max_size is not None:
            return total <= self.max_size
        disk = os.statvfs(self.root)
        return disk.f_bavail * disk.f_frsize > disk.f_blocks * disk.f_frsize * MIN_FREE_FRACTION

    def _slack(self, size: int) -> int:
        """How much to free beyond `size`, so eviction does not rescan on every write."""
        if self.max_size is not None:
            return size + self.max_size // 10
        disk = os.statvfs(self.root)
        return size + int(disk.f_blocks * disk.f_frsize * MIN_FREE_FRACTION)

    def _scan(self) -> tuple[int, list[tuple[float, int, str]]]:
        """(total bytes, [(mtime, size, path)]) of every block file; vanishing files skipped.

        The total includes blocks being written (a full block for each reserved temporary
        file, which may be in any process). Temporary files are listed before blocks: one
        renamed in between is counted twice, never missed."""
        total, files = 0, []
        with contextlib.suppress(OSError), os.scandir(self.tmp_dir) as pending:
            total += sum(HEADER_SIZE + self.block_size for entry in pending
                         if entry.name.startswith(RESERVED_PREFIX))
        with os.scandir(self.blocks_dir) as fans:
            for fan in fans:
                try:
                    entries = list(os.scandir(fan.path))
                except OSError:
                    continue
                for entry in entries:
                    try:
                        info = entry.stat()
                    except OSError:
                        continue
                    total += info.st_size
                    files.append((info.st_mtime, info.st_size, entry.path))
        return total, files

    def _evict(self, size: int) -> int:
        """Delete least recently used blocks to make room; returns the bytes still used.
        Called with the lock held."""
        total, files = self._scan()
        files.sort()
        if self.max_size is not None:
            goal = max(0, self.max_size - self._slack(size) + size)
            while files and total > goal:
                total = self._unlink(files.pop(0), total)
        else:
            freed, need = 0, self._slack(size)
            while files and not self._fits(total) and freed < need:
                before = total
                total = self._unlink(files.pop(0), total)
                freed += before - total
        return total

    def _unlink(self, item: tuple[float, int, str], total: int) -> int:
        _, size, path = item
        self.forget(path)
        with contextlib.suppress(FileNotFoundError):  # another mount evicted it first
            os.unlink(path)
        self.stats.evicted += 1
        return total - size


def claim_cache_dir(path: str, uid: int, gid: int) -> None:
    """Hand a cache directory (created 0700 if absent) and everything in it to `uid:gid`.

    The supervisor (root) calls this before it starts a FUSE server that runs as its own
    UID; servers of one cache directory share one UID (they share one volume and one
    credentials identity, so nothing is lost). The tree is walked only when its top is not
    yet owned by `uid`, and the top is changed last, so an interrupted claim is redone.
    Symlinks are never followed."""
    with contextlib.suppress(FileExistsError):  # a file there is refused just below
        os.makedirs(path, mode=0o700, exist_ok=True)
    top = os.lstat(path)
    if not stat.S_ISDIR(top.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "cache directory is not a directory", path)
    if top.st_uid == uid and top.st_gid == gid and stat.S_IMODE(top.st_mode) == 0o700:
        return
    for directory, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(directory, name), uid, gid)
    os.chown(path, uid, gid, follow_symlinks=False)
    os.chmod(path, 0o700, follow_symlinks=False)


def release_cache_dir(path: str) -> None:
    """Lock a cache directory no server uses any more: owned by root, 0700, so whoever is
    given its last server's UID next cannot read it. `claim_cache_dir` opens it again."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(path).st_mode):
            os.chown(path, 0, 0, follow_symlinks=False)
            os.chmod(path, 0o700, follow_symlinks=False)


class CachedFetch:
    """A `Prefetcher` fetch function that serves cached blocks and GETs only the gaps.

    Of a cached block only the sectors the request covers are read from disk (a random
    reader's request is just its read). Each run of missing blocks is one ranged GET of
    whole blocks through `fetch`, and the new blocks are written to the cache in the
    background; a request for a block this file is already fetching or storing waits for
    it and reads it from the cache, rather than GET it again. Pending writes are bounded
    (`WriteBudget`): when the disk falls behind, fetches wait for it rather than skip
    blocks or pile up memory.

    A request of at most LOOP_READ_LIMIT bytes reads the cache on the calling (event loop)
    thread when `loop_idle()` says no other request waits for the loop: a random 256 KiB
    re-read spent more in the two thread hand-offs (wake-ups, the GIL) than on the disk.
    When requests are waiting, the read goes to a worker as before, so parallel readers
    still keep several disk reads in flight.
    """

    def __init__(self, cache: BlockCache, version: ObjectVersion,
                 fetch: Callable[[int, int], Awaitable[bytes | bytearray]],
                 spawn: Callable[..., None],
                 io_limiter: trio.CapacityLimiter, writes: WriteBudget,
                 loop_idle: Callable[[], bool],
                 buffers: BufferPool | None = None) -> None:
        self.cache = cache
        self.version = version
        self._fetch = fetch
        self._spawn = spawn
        self._limiter = io_limiter
        self._writes = writes
        self._loop_idle = loop_idle
        self._buffers = buffers  # where whole-sector reads of cached blocks are read into
        self._busy: dict[int, trio.Event] = {}  # blocks being read, fetched or stored

    async def __call__(self, start: int, end: int) -> bytes | Buffer | memoryview | Blocks:
        bs = self.cache.block_size
        first, last = start // bs, (end - 1) // bs
        wanted = [(i, max(start - i * bs, 0), min(end - i * bs, bs))
                  for i in range(first, last + 1)]
        while busy := [self._busy[i] for i in range(first, last + 1) if i in self._busy]:
            await busy[0].wait()
        # Claimed before the cache is read, so no other request of this file can find one
        # missing and fetch it meanwhile; the cached ones are released as soon as they are read.
        claimed = range(first, last + 1)
        for index in claimed:
            self._busy[index] = trio.Event()
        released: set[int] = set()  # claims ended here or handed to the block's store
        sector = self.cache.sector_size
        read = partial(self.cache.read_blocks, self.version, wanted)
        pool, buffer = self._buffers, None  # taken here: the pool is the loop's, not a worker's
        if pool is not None and end - start >= POOLED_READ_MIN \
                and start % sector == 0 and (end % sector == 0 or end == self.version.size):
            buffer = pool.take(end - start)
            read = partial(read, into=memoryview(buffer))
        try:
            if end - start <= LOOP_READ_LIMIT and self._loop_idle():
                cached = read()
            else:
                cached = await run_sync(read, self._limiter)
            self._done(cached)
            released.update(cached)
            if buffer is not None and len(cached) == len(claimed):
                return buffer  # all of it from the cache: the part recycles the buffer
            if pool is not None and buffer is not None and not cached:
                # Nothing was read into it: back to the pool, and no reference left here (the
                # partial's view, this name) that would make the fetch below take a fresh one.
                del read
                pool.give(buffer)
                buffer = None
            pieces: list[bytes | memoryview] = []
            index = first
            while index <= last:
                if index in cached:
                    pieces.append(cached[index])
                    index += 1
                    continue
                run_end = index
                while run_end + 1 <= last and run_end + 1 not in cached:
                    run_end += 1
                lo, hi = index * bs, min((run_end + 1) * bs, self.version.size)
                raw = await self._fetch(lo, hi)
                data = memoryview(raw)
                if len(data) != hi - lo:
                    raise OSError(errno.EIO, f"store returned {len(data)} of {hi - lo} bytes")
                fresh = {i: data[(i - index) * bs:(i - index + 1) * bs]
                         for i in range(index, run_end + 1)}
                if await self._store_later(fresh, hi - lo):
                    released.update(fresh)
                if lo == start and hi == end:
                    return raw  # the whole request was one GET: no copy (a pooled buffer stays one)
                pieces.append(data[max(start, lo) - lo:min(end, hi) - lo])
                index = run_end + 1
        finally:
            self._done(i for i in claimed if i not in released)
        return pieces[0] if len(pieces) == 1 else Blocks.of(pieces)

    def _done(self, indexes: Iterable[int]) -> None:
        for index in list(indexes):
            if (busy := self._busy.pop(index, None)) is not None:
                busy.set()

    async def _store_later(self, blocks: dict[int, memoryview], size: int) -> bool:
        """Write `blocks` to the cache in the background; False when the cache takes none."""
        if not self.cache.writable:
            return False
        await self._writes.take(size)  # back-pressure: a slow disk slows the cold read
        self._spawn(self._store, blocks, size)
        return True

    async def _store(self, blocks: dict[int, memoryview], size: int) -> None:
        try:
            await run_sync(partial(self._put_blocks, blocks), self._limiter)
        finally:
            self._writes.give_back(size)
            self._done(blocks)

    def _put_blocks(self, blocks: dict[int, memoryview]) -> None:
        for index, data in blocks.items():
            self.cache.put(self.version, index, data)


class BlockWriter:
    """Caches an object as it is written through the mount (sequential writes only).

    Each full block is staged on a worker thread in a temporary file: header space, then
    the data, whose CRC32C is taken at once. The object's ETag is only known once its
    upload is committed, so `finish()` (at release, after the last commit) writes the
    headers and renames the blocks into place; `discard()` removes them. A write that is
    not where the last one ended, or any disk error, turns this writer off (no block of a
    wrong object is ever named).
    """

    def __init__(self, cache: BlockCache, bucket: str, key: str,
                 io_limiter: trio.CapacityLimiter, writes: WriteBudget) -> None:
        self.cache = cache
        self.bucket = bucket
        self.key = key
        self._limiter = io_limiter
        self._writes = writes
        self._pending = bytearray()
        self._size = 0  # bytes seen
        self._staged: list[tuple[int, str, int, bytes]] = []  # index, tmp, length, CRCs
        self._next_index = 0
        self.active = cache.writable

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        if not self.active:
            return
        if offset != self._size:
            await self.discard()
            return
        self._size += len(data)
        self._pending += data
        bs = self.cache.block_size
        while len(self._pending) >= bs:
            block = bytes(self._pending[:bs])
            del self._pending[:bs]
            await self._stage(block)

    async def _stage(self, block: bytes) -> None:
        index = self._next_index  # blocks arrive in order
        self._next_index += 1
        await self._writes.take(len(block))
        try:
            staged = await run_sync(partial(self._stage_sync, index, block), self._limiter)
        finally:
            self._writes.give_back(len(block))
        if staged is None:
            await self.discard()
        else:
            self._staged.append(staged)

    def _stage_sync(self, index: int, block: bytes) -> tuple[int, str, int, bytes] | None:
        try:
            fd, tmp = tempfile.mkstemp(dir=self.cache.tmp_dir, prefix="stage-")  # 0600
            with open(fd, "wb") as out:
                out.seek(HEADER_SIZE)
                out.write(block)
        except OSError as exc:
            self.cache._degrade("cannot write to the cache directory", exc)
            return None
        return index, tmp, len(block), self.cache.packed_crcs(block)

    async def finish(self, etag: str, size: int) -> None:
        """The upload committed `size` bytes as `etag`: name the staged blocks after it."""
        if not self.active or size != self._size:
            await self.discard()
            return
        if self._pending:
            await self._stage(bytes(self._pending))
            self._pending.clear()
        if not self.active:
            return
        version = ObjectVersion(self.bucket, self.key, etag, size)
        staged, self._staged = self._staged, []
        self.active = False
        await run_sync(partial(self._name_blocks, version, staged), self._limiter)

    def _name_blocks(self, version: ObjectVersion,
                     staged: list[tuple[int, str, int, bytes]]) -> None:
        for position, (index, tmp, length, crcs) in enumerate(staged):
            try:
                if not self.cache.writable or not self.cache._reserve(HEADER_SIZE + length):
                    raise OSError(errno.ENOSPC, "cache full")
                header = self.cache.header(version, index, crcs)
                fd = os.open(tmp, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.pwrite(fd, header, 0)
                finally:
                    os.close(fd)
                path = self.cache.path(version, index)
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                os.replace(tmp, path)
                self.cache.placed(path, crcs)
            except OSError:
                for _, leftover, _, _ in staged[position:]:
                    with contextlib.suppress(OSError):
                        os.unlink(leftover)
                return

    async def discard(self) -> None:
        self.active = False
        staged, self._staged = self._staged, []
        self._pending.clear()
        if staged:
            await run_sync(partial(self._unlink_all, staged), self._limiter)

    @staticmethod
    def _unlink_all(staged: list[tuple[int, str, int, bytes]]) -> None:
        for _, tmp, _, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


class WriteBudget:
    """Bytes of fetched data waiting to be written to the cache, for the whole mount."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending = 0
        self._room = trio.Event()  # set (and replaced) whenever bytes are given back
        self._idle = trio.Event()
        self._idle.set()

    async def take(self, size: int) -> None:
        """Wait until `size` more bytes may be pending (one request always may)."""
        while self.pending and self.pending + size > self.limit:
            await self._room.wait()
        if not self.pending:
            self._idle = trio.Event()
        self.pending += size

    def give_back(self, size: int) -> None:
        self.pending -= size
        self._room.set()
        self._room = trio.Event()
        if not self.pending:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Until every block handed over has been written (at unmount)."""
        await self._idle.wait()
