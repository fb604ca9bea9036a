"""Streaming uploads of files written sequentially.

The first write starts nothing; once `part_size` bytes are buffered a multipart upload is
created and each full part is sent in the background while the writer continues. At most
`max_inflight` parts are in flight: a writer that outruns the store waits (back-pressure)
instead of growing the buffer. `commit()` (close or fsync) sends the tail and completes the
upload, or, for a file smaller than one part, PUTs it in one request. Any failure aborts
the multipart upload, so the bucket never holds a partial object or an orphaned upload.

A writer may continue after fsync: the committed object becomes the first part(s) of a new
multipart upload (UploadPartCopy pinned to its ETag; a tail under 5 MiB is read back).
An append (`resume`) starts the same way from an object that already exists.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from driver import metrics
from driver.fs.errors import FsError
from driver.store.base import ObjectStore, PartResult, StoreError, UploadOptions

log = structlog.get_logger()
MiB = 1024 * 1024
MIN_PART = 5 * MiB  # S3's minimum size of every part but the last
MAX_COPY_PART = 5 * 1024 * MiB
RunSync = Callable[..., Awaitable[Any]]
# Bytes held: accepted from the writer and not yet sent, put, or dropped by an abort.
_HELD, _PARTS = metrics.MEMORY_UPLOAD, metrics.UPLOAD_PARTS_IN_FLIGHT


class Upload:
    def __init__(self, store: ObjectStore, key: str, options: UploadOptions, *,
                 run_sync: RunSync, part_size: int = 8 * MiB, max_inflight: int = 4) -> None:
        self.store = store
        self.key = key
        self.options = options
        self._run_sync = run_sync  # runs a blocking store call on a worker thread
        self.part_size = part_size
        self.size = 0  # bytes accepted from the writer
        self.etag: str | None = None  # of the last committed version
        self.committed_size = 0
        # What the writer sent since the last part, as it came (pyfuse3's own bytes): a part is
        # assembled with one join, the only copy between the kernel's data and the request.
        self._chunks: list[bytes | memoryview] = []
        self._buffered = 0
        self._upload_id: str | None = None
        self._parts: list[PartResult] = []
        self._next_part = 1
        self._slots = trio.Semaphore(max_inflight)
        self._inflight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._error: BaseException | None = None
        self._nursery: trio.Nursery | None = None
        self.aborted = False
        self._failure_counted = False

    @property
    def dirty(self) -> bool:
        return self.size != self.committed_size or self.etag is None

    def attach(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def resume(self, size: int, etag: str) -> None:
        """Start from an existing object (append): it counts as committed content, which
        the first write turns into the first part(s) of a new upload."""
        self.size = self.committed_size = size
        self.etag = etag

    async def _check(self) -> None:
        """Raise EIO once anything has failed, aborting the upload the first time."""
        if self._error is not None and not self.aborted:
            await self.abort()
        if self.aborted:
            reason = f": {self._error}" if self._error is not None else " and was aborted"
            raise FsError(errno.EIO, f"upload of {self.key} failed{reason}")

    async def write(self, offset: int, data: bytes) -> int:
        await self._check()
        if offset != self.size:
            # The file can no longer be what the writer meant: fail the upload as a whole.
            error = FsError(errno.EINVAL, f"out-of-order write to {self.key}: offset "
                            f"{offset}, expected {self.size}")
            self._error = error
            await self.abort()
            raise error
        if self.etag is not None and not self.dirty and self.size > 0:
            await self._reopen_committed()
        self.size += len(data)
        view = memoryview(data)
        while self._buffered + len(view) >= self.part_size:
            room = self.part_size - self._buffered
            self._chunks.append(view[:room])
            _HELD.inc(room)  # counted piece by piece: a failed send leaves no stale count
            view = view[room:]
            await self._send(self._take())
        if view:
            self._chunks.append(view)
            self._buffered += len(view)
            _HELD.inc(len(view))
        return len(data)

    def _take(self) -> bytes:
        """Everything buffered, as one bytes object (the one copy of a part)."""
        chunks = self._chunks
        self._chunks, self._buffered = [], 0
        if len(chunks) == 1:
            only = chunks[0]
            if isinstance(only, memoryview) and isinstance(only.obj, bytes) \
                    and len(only) == len(only.obj):
                return only.obj  # one whole write of exactly a part: no copy at all
        return b"".join(chunks)

    async def _ensure_upload(self) -> str:
        if self._upload_id is None:
            self._upload_id = await self._store_call(self.store.create_upload, self.key,
                                                     self.options)
        return self._upload_id

    async def _store_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await self._run_sync(fn, *args)
        except StoreError as exc:
            self._error = exc
            await self.abort()
            raise FsError(errno.EIO, f"upload of {self.key} failed: {exc}") from exc

    async def _send(self, chunk: bytes) -> None:
        """Send `chunk` (counted in the bytes held until sent) as the next part."""
        try:
            upload_id = await self._ensure_upload()
            number = self._next_part
            self._next_part += 1
            await self._slots.acquire()  # back-pressure: wait for a free slot
            try:
                await self._check()
            except BaseException:
                self._slots.release()
                raise
        except BaseException:
            _HELD.dec(len(chunk))
            raise
        _PARTS.inc()
        self._inflight += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        assert self._nursery is not None
        self._nursery.start_soon(self._send_part, upload_id, number, chunk)

    async def _send_part(self, upload_id: str, number: int, chunk: bytes) -> None:
        try:
            result = await self._run_sync(self.store.upload_part, self.key, upload_id, number,
                                          chunk, self.options)
            self._parts.append(result)
        except BaseException as exc:  # noqa: BLE001 - reported to the writer
            if self._error is None:
                self._error = exc
                log.error("upload part failed", key=self.key, part=number, error=str(exc))
        finally:
            _PARTS.dec()
            _HELD.dec(len(chunk))
            self._inflight -= 1
            self._slots.release()
            if self._inflight == 0:
                self._idle.set()

    async def commit(self) -> str:
        """Make everything written so far the object's content; return its ETag."""
        was_dirty = self.dirty
        try:
            etag = await self._commit()
        except FsError:
            if not self._failure_counted:
                self._failure_counted = True
                metrics.UPLOADS_FAILED.inc()
            raise
        if was_dirty:
            metrics.UPLOADS_OK.inc()
        return etag

    async def _commit(self) -> str:
        await self._check()
        if not self.dirty:
            assert self.etag is not None
            return self.etag
        if self._upload_id is None:
            data = self._take()
            try:
                self.etag = await self._store_call(self.store.put, self.key, data,
                                                   self.options)
            finally:
                _HELD.dec(len(data))
        else:
            if self._buffered or not self._parts and self._inflight == 0:
                await self._send(self._take())
            await self._idle.wait()
            await self._check()
            parts = sorted(self._parts, key=lambda part: part.number)
            self.etag = await self._store_call(self.store.complete_upload, self.key,
                                               self._upload_id, parts)
            self._upload_id = None
            self._parts = []
            self._next_part = 1
        self.committed_size = self.size
        log.debug("upload committed", key=self.key, size=self.size)
        return self.etag

    async def _reopen_committed(self) -> None:
        """Continue after fsync: the committed object becomes the start of a new upload."""
        assert self.etag is not None
        size, etag = self.committed_size, self.etag
        if size < MIN_PART:
            data = await self._store_call(self.store.get_range, self.key, 0, size, etag)
            self._chunks.insert(0, data)
            self._buffered += len(data)
            _HELD.inc(len(data))
            return
        upload_id = await self._ensure_upload()
        pieces = -(-size // MAX_COPY_PART)
        step = -(-size // pieces)
        for start in range(0, size, step):
            number = self._next_part
            self._next_part += 1
            result = await self._store_call(self.store.upload_part_copy, self.key, upload_id,
                                            number, self.key, start, min(size, start + step),
                                            etag)
            self._parts.append(result)

    async def abort(self) -> None:
        """Abandon the upload; nothing partial stays in the bucket."""
        if self.aborted:
            return
        self.aborted = True
        upload_id, self._upload_id = self._upload_id, None
        _HELD.dec(self._buffered)
        self._chunks, self._buffered = [], 0
        if upload_id is None:
            return
        with trio.CancelScope(shield=True):
            await self._idle.wait()
            try:
                await self._run_sync(self.store.abort_upload, self.key, upload_id)
            except StoreError as exc:
                log.error("abort of multipart upload failed", key=self.key, error=str(exc))
