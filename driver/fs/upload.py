"""Streaming uploads of files written sequentially.

The first write starts nothing; once `part_size` bytes are buffered a multipart upload is
created and each full part is sent in the background while the writer continues. At most
`max_inflight` parts are in flight: a writer that outruns the store waits (back-pressure)
instead of growing the buffer. `commit()` (close or fsync) sends the tail and completes the
upload, or, for a file smaller than one part, PUTs it in one request. Any failure aborts
the multipart upload, so the bucket never holds a partial object or an orphaned upload;
once a multipart write is over (completed or aborted) the store is asked to reconcile the
uploads its retried requests may have started for the key (`reconcile_uploads`).

Memory: buffered bytes are charged to the mount's `MemoryBudget` in 1 MiB steps before
they are taken, and a part keeps its charge until its upload ends; a writer waits for room
(up to the budget timeout, then EIO) instead of growing past the mount's memory target.

A writer may continue after fsync: the committed object becomes the first part(s) of a new
multipart upload (UploadPartCopy pinned to its ETag; a tail under 5 MiB is read back).
An append (`resume`) starts the same way from an object that already exists.
"""

from __future__ import annotations

import errno
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from driver import metrics
from driver.fs.errors import FsError
from driver.fs.memory import BudgetTimeout, MemoryBudget
from driver.store.base import (
    ObjectStore,
    PartResult,
    StoreError,
    UploadOptions,
    payload_size,
)

log = structlog.get_logger()
MiB = 1024 * 1024
MIN_PART = 5 * MiB  # S3's minimum size of every part but the last
MAX_COPY_PART = 5 * 1024 * MiB
CHARGE_STEP = 1 * MiB  # the budget is charged in steps of this, not per write call
RunSync = Callable[..., Awaitable[Any]]
# Bytes held: accepted from the writer and not yet sent, put, or dropped by an abort.
_HELD, _PARTS = metrics.MEMORY_UPLOAD, metrics.UPLOAD_PARTS_IN_FLIGHT


class Upload:
    def __init__(self, store: ObjectStore, key: str, options: UploadOptions, *,
                 run_sync: RunSync, part_size: int = 8 * MiB, max_inflight: int = 4,
                 budget: MemoryBudget | None = None,
                 budget_timeout: float = math.inf) -> None:
        self.store = store
        self.key = key
        self.options = options
        self._run_sync = run_sync  # runs a blocking store call on a worker thread
        self.part_size = part_size
        self.size = 0  # bytes accepted from the writer
        self.etag: str | None = None  # of the last committed version
        self.committed_size = 0
        # What the writer sent since the last part, as it came (pyfuse3's own bytes): a part is
        # handed to the store as these pieces, which S3 sends as they are (no join copy).
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
        self._budget = budget
        self._budget_timeout = budget_timeout
        self._charged = 0  # budget bytes held for the buffered chunks
        self._since: float | None = None  # when this multipart cycle began (time.time())
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
        view = memoryview(data)
        while view:
            room = min(self._charged, self.part_size) - self._buffered
            if room <= 0:
                await self._charge_next()
                continue
            piece, view = view[:room], view[room:]
            self._chunks.append(piece)
            self._buffered += len(piece)
            self.size += len(piece)
            _HELD.inc(len(piece))  # counted piece by piece: a failed send leaves no stale count
            if self._buffered >= self.part_size:
                await self._send(self._take())
        return len(data)

    async def _charge_next(self) -> None:
        """Hold budget for more buffer, waiting for room. A writer waits holding at most
        its first MiB: a small file charges 1 MiB, one that outgrows it the rest of a
        part, and each later part is charged whole while the previous one is in flight
        (in-flight parts always end, so waiting writers cannot hold each other up)."""
        if self._budget is None:
            self._charged = self.part_size
            return
        if self._charged == 0:
            step = self.part_size if self.size >= self.part_size else \
                min(CHARGE_STEP, self.part_size)
        else:
            step = self.part_size - self._charged
        try:
            await self._budget.reserve(step, self._budget_timeout, prefetch=False)
        except BudgetTimeout as exc:
            raise FsError(errno.EIO, f"write to {self.key}: {exc}") from exc
        self._charged += step

    def _uncharge(self, size: int) -> None:
        """Give back `size` bytes of the buffer's charge (all of it: size=-1)."""
        size = self._charged if size < 0 else min(size, self._charged)
        self._charged -= size
        if self._budget is not None:
            self._budget.release(size, prefetch=False)

    def _take(self) -> list[bytes | memoryview]:
        """Everything buffered, as the writes that brought it."""
        chunks = self._chunks
        self._chunks, self._buffered = [], 0
        return chunks

    async def _ensure_upload(self) -> str:
        if self._upload_id is None:
            if self._since is None:
                self._since = time.time()
            self._upload_id = await self._store_call(self.store.create_upload, self.key,
                                                     self.options)
        return self._upload_id

    async def _reconcile(self) -> None:
        """The multipart cycle is over: abort uploads that retried creates left behind."""
        since, self._since = self._since, None
        if since is None:
            return
        with trio.CancelScope(shield=True):
            try:
                count = await self._run_sync(self.store.reconcile_uploads, self.key, since)
            except StoreError as exc:
                log.error("could not reconcile multipart uploads", key=self.key,
                          error=str(exc))
                return
        if count:
            log.info("aborted uploads left by retried requests", key=self.key, count=count)

    async def _store_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await self._run_sync(fn, *args)
        except StoreError as exc:
            self._error = exc
            await self.abort()
            raise FsError(errno.EIO, f"upload of {self.key} failed: {exc}") from exc

    async def _send(self, part: list[bytes | memoryview]) -> None:
        """Send `part` (just cut from the buffer) as the next part; its charge moves to it."""
        size = payload_size(part)
        charge = min(size, self._charged)
        self._charged -= charge
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
            _HELD.dec(size)
            if self._budget is not None:
                self._budget.release(charge, prefetch=False)
            raise
        _PARTS.inc()
        self._inflight += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        assert self._nursery is not None
        self._nursery.start_soon(self._send_part, upload_id, number, part, size, charge)

    async def _send_part(self, upload_id: str, number: int, part: list[bytes | memoryview],
                         size: int, charge: int = 0) -> None:
        try:
            result = await self._run_sync(self.store.upload_part, self.key, upload_id, number,
                                          part, self.options)
            self._parts.append(result)
        except BaseException as exc:  # noqa: BLE001 - reported to the writer
            if self._error is None:
                self._error = exc
                log.error("upload part failed", key=self.key, part=number, error=str(exc))
        finally:
            if self._budget is not None and charge:
                self._budget.release(charge, prefetch=False)
            _PARTS.dec()
            _HELD.dec(size)
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
            data = b"".join(self._take())  # small (under a part): one PutObject
            try:
                self.etag = await self._store_call(self.store.put, self.key, data,
                                                   self.options)
            finally:
                _HELD.dec(len(data))
                del data
                self._uncharge(-1)
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
            self._uncharge(-1)
            await self._reconcile()
        self.committed_size = self.size
        log.debug("upload committed", key=self.key, size=self.size)
        return self.etag

    async def _reopen_committed(self) -> None:
        """Continue after fsync: the committed object becomes the start of a new upload."""
        assert self.etag is not None
        size, etag = self.committed_size, self.etag
        if size < MIN_PART:
            if self._budget is not None:
                try:
                    await self._budget.reserve(size, self._budget_timeout, prefetch=False)
                except BudgetTimeout as exc:
                    raise FsError(errno.EIO, f"write to {self.key}: {exc}") from exc
            self._charged += size
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
        self._uncharge(-1)
        if upload_id is not None:
            with trio.CancelScope(shield=True):
                await self._idle.wait()
                try:
                    await self._run_sync(self.store.abort_upload, self.key, upload_id)
                except StoreError as exc:
                    log.error("abort of multipart upload failed", key=self.key,
                              error=str(exc))
        await self._reconcile()
