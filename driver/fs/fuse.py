"""The pyfuse3 adapter: FUSE requests in, `Filesystem` calls, FUSE replies out.

Nothing here decides semantics; it converts types and turns `FsError` into `FUSEError`.
Every operation is wrapped once by `measured` (driver/metrics.py counts it by outcome and
times it); reads and writes also count their bytes here, where the kernel sees them.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import wraps
from typing import Any, TypeVar

import pyfuse3
import structlog

from driver import metrics
from driver.fs.errors import FsError
from driver.fs.filesystem import Attributes, Filesystem

log = structlog.get_logger()
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _entry(attrs: Attributes) -> pyfuse3.EntryAttributes:
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = attrs.ino
    entry.generation = 0
    entry.entry_timeout = attrs.timeout
    entry.attr_timeout = attrs.timeout
    entry.st_mode = attrs.mode
    entry.st_nlink = 2 if attrs.is_dir else 1
    entry.st_uid = attrs.uid
    entry.st_gid = attrs.gid
    entry.st_rdev = 0
    entry.st_size = attrs.size
    entry.st_blksize = 1024 * 1024
    entry.st_blocks = (attrs.size + 511) // 512
    ns = int(attrs.mtime * 1e9)
    entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = ns
    return entry


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


class _Translate:
    """Context manager: FsError -> FUSEError; anything else -> EIO with a logged traceback."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> bool:
        if exc is None or isinstance(exc, pyfuse3.FUSEError):
            return False
        if isinstance(exc, FsError):
            raise pyfuse3.FUSEError(exc.errno) from exc
        if isinstance(exc, Exception):
            log.exception("filesystem operation failed unexpectedly")
            raise pyfuse3.FUSEError(errno.EIO) from exc
        return False


translate = _Translate()


def measured(op: str) -> Callable[[F], F]:
    """Count and time one FUSE operation (outcome: ok or the errno name replied)."""
    def wrap(fn: F) -> F:
        if not metrics.ENABLED:
            return fn
        counted = metrics.FsOpMetrics.of(op)
        ok, seconds, clock = counted.ok, counted.seconds, time.perf_counter

        @wraps(fn)
        async def instrumented(*args: Any) -> Any:
            start = clock()
            try:
                result = await fn(*args)
            except pyfuse3.FUSEError as exc:
                seconds.observe(clock() - start)
                counted.failed(exc.errno)
                raise
            seconds.observe(clock() - start)
            ok.inc()
            return result

        return instrumented  # type: ignore[return-value]
    return wrap


_READ_BYTES = metrics.FS_READ_BYTES
_WRITTEN_BYTES = metrics.FS_WRITTEN_BYTES


class FuseOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False  # the kernel would reorder writes
    enable_acl = False

    def __init__(self, fs: Filesystem, direct_io: bool = False) -> None:
        super().__init__()
        self.fs = fs
        self.direct_io = direct_io

    @measured("lookup")
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        with translate:
            return _entry(await self.fs.lookup(parent_inode, _name(name)))

    @measured("getattr")
    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        with translate:
            return _entry(await self.fs.getattr(inode))

    @measured("setattr")
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        with translate:
            return _entry(await self.fs.setattr(
                inode,
                size=attr.st_size if fields.update_size else None,
                mode=attr.st_mode if fields.update_mode else None,
                uid=attr.st_uid if fields.update_uid else None,
                gid=attr.st_gid if fields.update_gid else None,
                times=bool(fields.update_atime or fields.update_mtime),
            ))

    def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        try:
            self.fs.forget(list(inode_list))
        except Exception:  # never raise from forget
            log.exception("forget failed")

    @measured("statfs")
    async def statfs(self, ctx: Any) -> Any:
        stats = self.fs.statfs()
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = stats.block_size
        data.f_blocks, data.f_bfree, data.f_bavail = (stats.blocks, stats.free_blocks,
                                                      stats.free_blocks)
        data.f_files, data.f_ffree, data.f_favail = (stats.files, stats.free_files,
                                                     stats.free_files)
        data.f_namemax = stats.name_max
        return data

    @measured("opendir")
    async def opendir(self, inode: int, ctx: Any) -> int:
        with translate:
            return await self.fs.opendir(inode)

    @measured("readdir")
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        with translate:
            async for name, attrs, next_id in self.fs.readdir(fh, start_id):
                if not pyfuse3.readdir_reply(token, os.fsencode(name), _entry(attrs), next_id):
                    break
                self.fs.readdir_accepted(fh, next_id)

    @measured("releasedir")
    async def releasedir(self, fh: int) -> None:
        with translate:
            await self.fs.releasedir(fh)

    @measured("open")
    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        with translate:
            fh = await self.fs.open(inode, flags)
        return pyfuse3.FileInfo(fh=fh, direct_io=self.direct_io, keep_cache=False)

    @measured("create")
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> Any:
        with translate:
            fh, attrs = await self.fs.create(parent_inode, _name(name), flags)
        return pyfuse3.FileInfo(fh=fh, direct_io=self.direct_io), _entry(attrs)

    @measured("read")
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        with translate:
            data = await self.fs.read(fh, off, size)
        _READ_BYTES.inc(len(data))
        return data

    @measured("write")
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        with translate:
            written = await self.fs.write(fh, off, buf)
        _WRITTEN_BYTES.inc(written)
        return written

    @measured("flush")
    async def flush(self, fh: int) -> None:
        with translate:
            await self.fs.flush(fh)

    @measured("fsync")
    async def fsync(self, fh: int, datasync: bool) -> None:
        with translate:
            await self.fs.fsync(fh)

    @measured("release")
    async def release(self, fh: int) -> None:
        with translate:
            await self.fs.release(fh)

    @measured("mkdir")
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        with translate:
            return _entry(await self.fs.mkdir(parent_inode, _name(name)))

    @measured("rmdir")
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        with translate:
            await self.fs.rmdir(parent_inode, _name(name))

    @measured("unlink")
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        with translate:
            await self.fs.unlink(parent_inode, _name(name))

    @measured("rename")
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        with translate:
            await self.fs.rename(parent_inode_old, _name(name_old), parent_inode_new,
                                 _name(name_new), flags)

    @measured("symlink")
    async def symlink(self, *args: Any) -> Any:
        with translate:
            await self.fs.refuse("symlink", errno.EPERM)

    @measured("link")
    async def link(self, *args: Any) -> Any:
        with translate:
            await self.fs.refuse("link", errno.EPERM)

    @measured("mknod")
    async def mknod(self, *args: Any) -> Any:
        with translate:
            await self.fs.refuse("mknod", errno.EPERM)

    @measured("setxattr")
    async def setxattr(self, *args: Any) -> None:
        with translate:
            await self.fs.refuse("setxattr")
