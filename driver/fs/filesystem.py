"""Filesystem semantics over an object store, independent of FUSE.

Directories are key prefixes: a directory exists when some key lies under it (implicit),
or locally after mkdir until a file is written beneath it. A name that is both an object
and a prefix is the directory (it shadows the file). Keys whose last component is not a
valid file name ("", ".", "..", too long, containing NUL) are hidden.

Metadata comes from HEAD and ListObjectsV2 (delimiter "/") and is trusted for
`metadata_ttl` seconds. Reads go through a per-handle `Prefetcher` pinned to the ETag seen
at open; writes through a per-handle `Upload`. All store calls run on worker threads
(`run_sync`), never on the event loop. With `--cache DIR` the prefetcher's fetches go
through the block cache (`fs/cache.py`), keyed by that same ETag: an object whose ETag is
re-confirmed at lookup/open (HEAD after `metadata_ttl`) is served from disk, a changed one
has a new ETag and is fetched afresh.

Opt-in semantics beyond mountpoint-s3's (each off by default, README "semantics"):
- `allow_rename`: a file is renamed by a server-side copy pinned to its ETag, then the
  old key is deleted, so the new name shows the whole object or nothing. A directory moves
  object by object (copy, then delete), at most `rename_dir_limit` objects, checked before
  anything moves; a failure stops the move with every object under exactly one of the two
  names (a copy whose source cannot be deleted is deleted again), and the log says how
  many moved. Inodes keep their numbers, and open readers follow the object to its new key
  when it is the version they pinned.
- `incremental_upload`: an O_APPEND open of an existing object starts an Upload whose
  committed content is that object; the first write makes it the first part(s) of a new
  upload (UploadPartCopy, or read back under 5 MiB) and close completes it atomically.
- `ignore_chmod`: chmod/chown are accepted and change nothing.

Bounded time: every store call is bounded by the store's own deadline (--request-timeout);
metadata calls (HEAD, LIST) have their own worker threads, so transfers stalled on a store
never delay `ls` or `stat`; statfs asks the store nothing. Memory: one `MemoryBudget` of
--memory-target MiB for all prefetchers and uploads of the mount.

`pyfuse3`-specific types live in `fuse.py`; this module raises `FsError(errno)` and
returns plain `Attributes`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import mimetypes
import os
import stat
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog
import trio

from driver import metrics
from driver.fs import threads
from driver.fs.buffers import Buffer, BufferPool
from driver.fs.cache import BlockCache, BlockWriter, CachedFetch, ObjectVersion, WriteBudget
from driver.fs.errors import FsError, from_store
from driver.fs.firstbytes import FirstBytes
from driver.fs.inodes import ROOT_INODE, Inode, InodeTable
from driver.fs.prefetch import FIRST_PART, MemoryBudget, Prefetcher
from driver.fs.upload import Upload
from driver.options import MINIMAL_TTL, MountOptions
from driver.store.base import ListPage, ObjectInfo, ObjectStore, StoreError, UploadOptions

log = structlog.get_logger()
NAME_MAX = 255
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2  # renameat2 flags (linux/fs.h)
MiB = 1024 * 1024
# A directory that fits in one LIST page is listed once per metadata TTL and its entries
# are looked up from that listing (rclone's directory cache, bounded to small directories).
LISTING_CACHE_MAX = 1000
# A lookup in a bigger directory lists a window of it from the name on, at least this many.
WINDOW_MIN = 16


@dataclass(eq=False)
class _WindowInFlight:
    """A window LIST of a directory read in order (`_list_window`), from the key `start`."""
    start: str
    done: trio.Event = field(default_factory=trio.Event)


def _just_before(key: str) -> str:
    """A string that sorts just before `key` (in code points, as in UTF-8 bytes): a LIST
    after it starts at `key`, after only the rare keys that are this string and more."""
    last = ord(key[-1])
    if last <= 1 or last == 0xE000:  # below would be NUL or a surrogate
        return key[:-1]
    return key[:-1] + chr(last - 1)


def _last_entry(page: ListPage) -> str:
    """The greatest key or common prefix on a LIST page, "" for an empty one."""
    return max(page.objects[-1].key if page.objects else "",
               page.prefixes[-1] if page.prefixes else "")


def valid_name(name: str) -> bool:
    return (name not in ("", ".", "..") and "\0" not in name and "/" not in name
            and len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX)


@dataclass(frozen=True, slots=True)
class Attributes:
    ino: int
    is_dir: bool
    size: int
    mtime: float
    mode: int
    uid: int
    gid: int
    timeout: float  # how long the kernel may cache this entry/attribute


@dataclass(frozen=True, slots=True)
class StatFs:
    block_size: int = 4096
    blocks: int = 2**40
    free_blocks: int = 2**40
    files: int = 2**32
    free_files: int = 2**32
    name_max: int = NAME_MAX


@dataclass(eq=False, slots=True)
class ReadPin:
    """The object version a reader reads: moved along when a rename moves that version."""

    key: str
    etag: str | None


@dataclass(eq=False)
class FileHandle:
    inode: Inode
    prefetcher: Prefetcher | None = None
    upload: Upload | None = None
    pin: ReadPin | None = None
    cache_writer: BlockWriter | None = None  # fills the cache as the file is written


@dataclass(eq=False)
class DirHandle:
    """A directory listing in progress; entry ids are positions in `entries` (stable)."""

    inode: Inode
    entries: list[tuple[str, Inode]] = field(default_factory=list)
    token: str | None = None
    started: bool = False
    done: bool = False
    held_files: list[ObjectInfo] = field(default_factory=list)  # may yet be shadowed
    emitted: set[str] = field(default_factory=set)
    ahead: PageAhead | None = None  # the next page, requested while this one is read
    generation: int = 0  # the directory's listing_generation when this listing began


@dataclass(eq=False)
class PageAhead:
    """A LIST started before the kernel asks for its entries (readdir streams pages)."""

    token: str
    done: trio.Event = field(default_factory=trio.Event)
    page: ListPage | None = None
    error: BaseException | None = None


class Filesystem:
    def __init__(self, store: ObjectStore, options: MountOptions, *,
                 memory_limit: int | None = None) -> None:
        self.store = store
        self.options = options
        self.inodes = InodeTable(options.prefix)
        self.uid = options.uid if options.uid is not None else os.getuid()
        self.gid = options.gid if options.gid is not None else os.getgid()
        self._limiter = trio.CapacityLimiter(options.max_threads)
        self._meta_limiter = trio.CapacityLimiter(4)  # HEAD/LIST never queue behind data
        self._handles: dict[int, FileHandle | DirHandle] = {}
        self._next_fh = 1
        self._negative: dict[tuple[int, str], float] = {}
        self._nursery: trio.Nursery | None = None
        self._first_bytes: FirstBytes | None = None  # set by attach
        self._loop_idle: Callable[[], bool]  # set by attach, with the nursery
        self.prefetch_parallel = max(1, min(4, options.max_threads // 2))
        self.budget = MemoryBudget(memory_limit or options.memory_target * 1024 * 1024)
        self.buffers = BufferPool(lambda: self.budget.limit - self.budget.used)
        self._readers = 0  # open read handles; the pool is emptied when none is left
        self.upload_options = UploadOptions(
            storage_class=options.storage_class, sse=options.sse,
            sse_kms_key_id=options.sse_kms_key_id,
            checksum=None if options.upload_checksums == "off" else options.upload_checksums)
        self._uploads: set[Upload] = set()
        self._listing_inflight: dict[int, trio.Event] = {}
        self._windows_inflight: dict[int, _WindowInFlight] = {}
        self.cache: BlockCache | None = None
        if options.cache:
            max_size = None if options.max_cache_size is None else options.max_cache_size * MiB
            self.cache = BlockCache(options.cache, max_size).open()
        self._cache_io = trio.CapacityLimiter(4)  # disk threads, apart from store threads
        self._cache_writes = WriteBudget(4 * options.read_part_size)

    # ------------------------------------------------------------------ plumbing

    def attach(self, nursery: trio.Nursery,
               loop_idle: Callable[[], bool] = lambda: False) -> None:
        """Background work (prefetch, part uploads) runs in this nursery. `loop_idle()`:
        no other request waits for the event loop now (short cache reads may then run on
        it); without one, every disk read goes to a worker thread."""
        self._nursery = nursery
        self._loop_idle = loop_idle
        get_first = getattr(self.store, "get_first_into", None)  # optional
        if get_first is not None and (self.cache is None or not self.cache.readable):
            # (with a block cache the first read goes through the cache's blocks instead)
            self._first_bytes = FirstBytes(get_first, self._store, nursery.start_soon,
                                           self.budget, self.buffers, FIRST_PART)

    async def run_sync(self, fn: Callable[..., Any], *args: Any,
                       limiter: trio.CapacityLimiter | None = None) -> Any:
        """`fn(*args)` on a worker thread: the data path's threads unless `limiter` says."""
        return await threads.run_sync(partial(fn, *args), limiter or self._limiter)

    async def _store(self, fn: Callable[..., Any], *args: Any,
                     limiter: trio.CapacityLimiter | None = None) -> Any:
        try:
            return await self.run_sync(fn, *args, limiter=limiter)
        except StoreError as exc:
            raise from_store(exc) from exc

    async def _head(self, key: str) -> ObjectInfo | None:
        return await self._store(self.store.head, key, limiter=self._meta_limiter)

    async def _list(self, prefix: str, delimiter: str | None, token: str | None,
                    max_keys: int = 1000, start_after: str | None = None) -> ListPage:
        return await self._store(self.store.list_page, prefix, delimiter, token, max_keys,
                                 start_after, limiter=self._meta_limiter)

    def _inode(self, ino: int) -> Inode:
        inode = self.inodes.get(ino)
        if inode is None:
            raise FsError(errno.ENOENT, f"no inode {ino}")
        return inode

    def _timeout(self) -> float:
        ttl = self.options.metadata_ttl
        return 86400.0 if math.isinf(ttl) else ttl

    def attributes(self, inode: Inode) -> Attributes:
        if inode.is_dir:
            mode = stat.S_IFDIR | self.options.dir_mode
        else:
            mode = stat.S_IFREG | self.options.file_mode
        if self.options.read_only:
            mode &= ~0o222
        size = inode.writer.size if isinstance(inode.writer, Upload) else inode.size
        return Attributes(inode.ino, inode.is_dir, size, inode.mtime, mode, self.uid, self.gid,
                          self._timeout())

    def _fresh(self, inode: Inode) -> bool:
        return inode.local or time.monotonic() - inode.validated < self.options.metadata_ttl

    def _check_writable(self) -> None:
        if self.options.read_only:
            raise FsError(errno.EROFS, "mounted read-only")

    # ------------------------------------------------------------------ metadata

    async def lookup(self, parent_ino: int, name: str) -> Attributes:
        parent = self._inode(parent_ino)
        if not parent.is_dir:
            raise FsError(errno.ENOTDIR)
        if not valid_name(name):
            raise FsError(errno.ENOENT if len(name) <= NAME_MAX else errno.ENAMETOOLONG)
        inode = await self._resolve(parent, name)
        inode.lookups += 1
        return self.attributes(inode)

    async def _resolve(self, parent: Inode, name: str, use_caches: bool = True) -> Inode:
        cached = self.inodes.child(parent.ino, name)
        if cached is not None and (self._fresh(cached) or cached.writer is not None):
            return cached
        if use_caches:
            negative_until = self._negative.get((parent.ino, name))
            if negative_until is not None and time.monotonic() < negative_until:
                raise FsError(errno.ENOENT)
            listing = await self._cached_listing(parent, guess=name)
            # Only positive answers come from a kept listing: a name it lacks may have been
            # created since, so that one is asked of the store.
            if listing is not None and name in listing:
                parent.listing_hits += 1
                return self._from_listing(parent, name, listing[name])
            if parent.too_big_to_cache_until > time.monotonic():
                window, settled = await self._list_window(parent, name)
                if name in window:
                    return self._from_listing(parent, name, window[name])
                if settled:
                    return self._not_found(parent, name, cached)
        key = parent.key + name
        head: ObjectInfo | None = None
        beneath: ListPage | None = None  # the first key under "name/", if any

        async def do_head() -> None:
            nonlocal head
            head = await self._head(key)

        async def do_list() -> None:
            nonlocal beneath
            beneath = await self._list(key + "/", "/", None, 1)

        try:
            async with trio.open_nursery() as race:
                race.start_soon(do_head)
                race.start_soon(do_list)
        except* FsError as group:  # both may fail alike (EACCES): report one, not EIO
            raise group.exceptions[0] from None
        if beneath is not None and (beneath.objects or beneath.prefixes):
            return self.inodes.upsert(parent, name, is_dir=True)
        if head is not None:
            return self.inodes.upsert(parent, name, is_dir=False, size=head.size,
                                      etag=head.etag, mtime=_timestamp(head))
        return self._not_found(parent, name, cached)

    def _from_listing(self, parent: Inode, name: str, info: object) -> Inode:
        if info is None:
            return self.inodes.upsert(parent, name, is_dir=True)
        assert isinstance(info, ObjectInfo)
        return self.inodes.upsert(parent, name, is_dir=False, size=info.size,
                                  etag=info.etag, mtime=_timestamp(info))

    async def _list_window(self, parent: Inode, name: str) -> tuple[Mapping[str, object], bool]:
        """A lookup in a directory too big to list whole: one LIST of its entries from
        `name` on, rather than a HEAD of the file and a LIST of "name/". The page is kept
        as the directory's listing, so the neighbours looked up next (a reader going through
        the directory in order) need no request of their own; it holds twice as many names
        as the last window answered, WINDOW_MIN to LISTING_CACHE_MAX, so random lookups
        list little. Returns the window and whether it settles `name`: it does when it
        reaches past "name/", and a name it lacks is then missing from the store."""
        key = parent.key + name
        ttl = min(self.options.metadata_ttl, MINIMAL_TTL)
        ahead = self._windows_inflight.get(parent.ino)
        if ahead is not None and ahead.start <= key:  # a reader in order: share its LIST
            await ahead.done.wait()
            listing = parent.listing
            if listing is not None and name in listing and \
                    time.monotonic() - parent.listed_at < ttl:
                parent.listing_hits += 1
                return listing, True
        size = min(LISTING_CACHE_MAX, max(WINDOW_MIN, 2 * parent.listing_hits))
        if size > WINDOW_MIN and ahead is None:
            ahead = self._windows_inflight[parent.ino] = _WindowInFlight(key)
        else:
            ahead = None
        generation, listed_at = parent.listing_generation, time.monotonic()
        try:
            page = await self._list(parent.key, "/", None, size, _just_before(key))
        finally:
            if ahead is not None:
                del self._windows_inflight[parent.ino]
                ahead.done.set()
        window = self._keep_window(parent, page, listed_at, generation)
        if window is None:  # the directory changed here meanwhile: ask HEAD and LIST
            return {}, False
        return window, page.next_token is None or _last_entry(page) >= key + "/"

    def _keep_window(self, parent: Inode, page: ListPage, listed_at: float, generation: int
                     ) -> dict[str, object] | None:
        """Keep one page of a directory too big to list whole as its listing, which then
        answers for the names in it (as `_keep_listing`). A file at the page's end is left
        out: a directory of its name, which would shadow it, may sort after the page."""
        if page.next_token is not None:
            last = _last_entry(page)
            page = ListPage([info for info in page.objects if info.key + "/" <= last],
                            page.prefixes, None)
        return self._keep_listing(parent, page, listed_at, generation)

    def _not_found(self, parent: Inode, name: str, cached: Inode | None) -> Inode:
        if cached is not None and cached.local:
            return cached
        if cached is not None:
            self.inodes.remove_name(cached)
        self._negative[(parent.ino, name)] = (time.monotonic()
                                              + self.options.effective_negative_ttl)
        if len(self._negative) > 100_000:
            self._negative.clear()
        raise FsError(errno.ENOENT)

    async def list_root_ahead(self) -> None:
        """List the root as the mount comes up, in the background: the first lookup of a
        program started right after the mount shares this LIST rather than wait for its
        own (a first byte of a file at the root costs one round trip less)."""
        with contextlib.suppress(FsError):
            await self._cached_listing(self._inode(ROOT_INODE))

    async def _cached_listing(self, parent: Inode, guess: str | None = None
                              ) -> dict[str, object] | None:
        """The parent's whole listing if it fits one page, from cache within the TTL.
        `guess`: the name a lookup waits for; if this call lists, it starts a GET of that
        name's first bytes beside the LIST (driver/fs/firstbytes.py).

        A listing lives at most MINIMAL_TTL even under longer TTLs (names already looked up
        keep their own TTL on their inodes) and only ever answers "this name exists"."""
        ttl = min(self.options.metadata_ttl, MINIMAL_TTL)
        if ttl <= 0:
            return None
        now = time.monotonic()
        if parent.listing is not None and now - parent.listed_at < ttl:
            return parent.listing
        if parent.too_big_to_cache_until > now:
            return None
        inflight = self._listing_inflight.get(parent.ino)
        if inflight is not None:  # another lookup is listing this directory: share it
            await inflight.wait()
            fresh = parent.listing is not None and time.monotonic() - parent.listed_at < ttl
            return parent.listing if fresh else None
        done = self._listing_inflight[parent.ino] = trio.Event()
        if guess is not None and self._first_bytes is not None:
            self._first_bytes.start(parent.key + guess)
        generation = parent.listing_generation
        try:
            page = await self._list(parent.key, "/", None, LISTING_CACHE_MAX)
        finally:
            del self._listing_inflight[parent.ino]
            done.set()
        if page.next_token is not None:  # too big: its first page becomes its window
            parent.too_big_to_cache_until = now + max(ttl, 60.0)
            return self._keep_window(parent, page, now, generation)
        return self._keep_listing(parent, page, now, generation)

    @staticmethod
    def _keep_listing(parent: Inode, page: ListPage, listed_at: float, generation: int
                      ) -> dict[str, object] | None:
        """Keep a directory's one and only LIST page as its listing (`_cached_listing`),
        unless the listing was dropped since `generation` (the directory's
        `listing_generation` when the LIST was sent): then the page may not know of a
        change made here meanwhile, and nothing is kept."""
        if parent.listing_generation != generation:
            return None
        listing: dict[str, object] = {}
        for info in page.objects:
            if valid_name(file_name := info.key[len(parent.key):]):
                listing[file_name] = info
        for prefix in page.prefixes:
            if valid_name(dir_name := prefix[len(parent.key):-1]):
                listing[dir_name] = None  # the directory shadows a file of the same name
        parent.listing, parent.listed_at, parent.listing_hits = listing, listed_at, 0
        return listing

    def _invalidate_listing(self, ino: int) -> None:
        inode = self.inodes.get(ino)
        if inode is not None:
            inode.drop_listing()

    async def getattr(self, ino: int) -> Attributes:
        inode = self._inode(ino)
        if not inode.is_dir and not self._fresh(inode) and inode.writer is None \
                and not inode.unlinked:
            info = await self._head(inode.key)
            if info is None:
                raise FsError(errno.ENOENT, f"{inode.key} no longer exists")
            inode.size, inode.etag, inode.mtime = info.size, info.etag, _timestamp(info)
            inode.validated = time.monotonic()
        return self.attributes(inode)

    def forget(self, items: list[tuple[int, int]]) -> None:
        for ino, count in items:
            self.inodes.forget(ino, count)

    async def setattr(self, ino: int, *, size: int | None = None, mode: int | None = None,
                      uid: int | None = None, gid: int | None = None,
                      times: bool = False) -> Attributes:
        inode = self._inode(ino)
        if mode is not None or uid is not None or gid is not None:
            if not self.options.ignore_chmod:
                log.debug("refused chmod/chown", key=inode.key)
                raise FsError(errno.EPERM, "permissions are fixed by mount options")
            log.debug("ignored chmod/chown", key=inode.key)  # --ignore-chmod
        if size is not None:
            self._check_writable()
            current = self.attributes(inode).size
            writer = inode.writer
            if size != current and not (size == 0 and isinstance(writer, Upload)
                                        and writer.size == 0):
                log.debug("refused truncate", key=inode.key, size=size)
                raise FsError(errno.EPERM, "truncate is only possible to the current size")
        if times:
            inode.mtime = time.time()  # not stored: objects keep their own Last-Modified
        return self.attributes(inode)

    def statfs(self) -> StatFs:
        return StatFs()

    # ------------------------------------------------------------------ directories

    async def opendir(self, ino: int) -> int:
        inode = self._inode(ino)
        if not inode.is_dir:
            raise FsError(errno.ENOTDIR)
        return self._new_handle(DirHandle(inode))

    async def readdir(self, fh: int, start: int) -> AsyncIterator[tuple[str, Attributes, int]]:
        """Yield (name, attributes, next id) from entry `start` on; ids are stable."""
        handle = self._handles.get(fh)
        if not isinstance(handle, DirHandle):
            raise FsError(errno.EBADF)
        if start == 0 and handle.started:  # rewinddir: list afresh
            handle.entries.clear()
            handle.emitted.clear()
            handle.token, handle.done, handle.started = None, False, False
            handle.ahead = None
        position = start
        while True:
            while position >= len(handle.entries) and not handle.done:
                await self._list_more(handle)
            if position >= len(handle.entries):
                return
            name, inode = handle.entries[position]
            position += 1
            yield name, self.attributes(inode), position

    def readdir_accepted(self, fh: int, entry_id: int) -> None:
        """The kernel took entry `entry_id - 1` (readdirplus): it now holds a lookup."""
        handle = self._handles.get(fh)
        if isinstance(handle, DirHandle):
            handle.entries[entry_id - 1][1].lookups += 1

    async def _list_more(self, handle: DirHandle) -> None:
        parent = handle.inode
        if not handle.started:
            handle.started = True
            handle.generation = parent.listing_generation
        ahead, handle.ahead = handle.ahead, None
        if ahead is not None and ahead.token == handle.token:
            await ahead.done.wait()
            if ahead.error is not None:
                raise ahead.error
            assert ahead.page is not None
            page = ahead.page
        else:
            listed_at = time.monotonic()
            page = await self._list(parent.key, "/", handle.token)
            if handle.token is None and page.next_token is None and \
                    len(page.objects) + len(page.prefixes) <= LISTING_CACHE_MAX:
                # The whole directory in one page: its listing, as a lookup would keep it
                # (the open of a file read next finds its neighbours there).
                self._keep_listing(parent, page, listed_at, handle.generation)
        handle.token = page.next_token
        if handle.token is not None and self._nursery is not None:
            # Request the next page now: the kernel takes this one in many small readdirs.
            handle.ahead = PageAhead(handle.token)
            self._nursery.start_soon(self._list_ahead, parent.key, handle.ahead)
        items: list[tuple[str, ObjectInfo | None]] = [(p, None) for p in page.prefixes]
        items += [(o.key, o) for o in page.objects]
        items.sort(key=lambda item: item[0])
        for key, info in items:
            # A held file can no longer be shadowed once the listing passes "name/".
            while handle.held_files and handle.held_files[0].key + "/" < key:
                self._emit_file(handle, handle.held_files.pop(0))
            name = key[len(parent.key):]
            if info is None:
                name = name[:-1]
                # The directory shadows a file of the same name; names such as "x-a"
                # sort between "x" and "x/", so the file is not necessarily the last held.
                handle.held_files = [f for f in handle.held_files if f.key != key[:-1]]
                if valid_name(name):
                    self._emit(handle, name, self._listed(
                        handle, self.inodes.upsert(parent, name, is_dir=True)))
            elif valid_name(name):
                handle.held_files.append(info)
        if handle.token is None:
            for info in handle.held_files:
                self._emit_file(handle, info)
            handle.held_files.clear()
            for child in self.inodes.children(parent.ino):
                if (child.local or child.writer is not None) and child.name not in \
                        handle.emitted and not child.unlinked:
                    self._emit(handle, child.name, child)
            handle.done = True

    async def _list_ahead(self, key: str, ahead: PageAhead) -> None:
        try:
            ahead.page = await self._list(key, "/", ahead.token)
        except Exception as exc:  # noqa: BLE001 - delivered to the readdir that wants the page
            ahead.error = exc
        finally:
            ahead.done.set()

    def _emit_file(self, handle: DirHandle, info: ObjectInfo) -> None:
        name = info.key[len(handle.inode.key):]
        if name in handle.emitted:
            return  # a directory of this name was listed already and shadows it
        current = self.inodes.child(handle.inode.ino, name)
        if current is not None and current.writer is not None:
            self._emit(handle, name, current)  # being written: show the local size
            return
        inode = self.inodes.upsert(handle.inode, name, is_dir=False, size=info.size,
                                   etag=info.etag, mtime=_timestamp(info))
        self._emit(handle, name, self._listed(handle, inode))

    @staticmethod
    def _listed(handle: DirHandle, inode: Inode) -> Inode:
        """An inode upserted from `handle`'s pages. If the directory changed here since the
        listing began, its pages may name what was deleted meanwhile: the next lookup asks
        the store before it trusts the entry."""
        if handle.inode.listing_generation != handle.generation:
            inode.validated = -math.inf
        return inode

    def _emit(self, handle: DirHandle, name: str, inode: Inode) -> None:
        if name in handle.emitted:
            return
        handle.emitted.add(name)
        handle.entries.append((name, inode))

    async def mkdir(self, parent_ino: int, name: str) -> Attributes:
        self._check_writable()
        parent = self._inode(parent_ino)
        if not valid_name(name):
            raise FsError(errno.EINVAL, f"invalid name {name!r}")
        existing = await self._maybe_resolve(parent, name)
        if existing is not None:
            raise FsError(errno.EEXIST)
        inode = self.inodes.upsert(parent, name, is_dir=True, local=True)
        inode.lookups += 1
        self._invalidate_listing(parent.ino)
        return self.attributes(inode)

    async def _maybe_resolve(self, parent: Inode, name: str) -> Inode | None:
        """Before a mutation: ask the store itself, not the lookup caches."""
        self._negative.pop((parent.ino, name), None)
        try:
            return await self._resolve(parent, name, use_caches=False)
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    async def rmdir(self, parent_ino: int, name: str) -> None:
        self._check_writable()
        parent = self._inode(parent_ino)
        inode = self.inodes.child(parent.ino, name) or await self._maybe_resolve(parent, name)
        if inode is None:
            raise FsError(errno.ENOENT)
        if not inode.is_dir:
            raise FsError(errno.ENOTDIR)
        if any(not child.unlinked for child in self.inodes.children(inode.ino)
               if child.local or child.writer is not None):
            raise FsError(errno.ENOTEMPTY)
        page = await self._list(inode.key, "/", None, 1)
        if page.objects or page.prefixes:
            raise FsError(errno.ENOTEMPTY, f"{inode.key} has objects under it")
        if not inode.local:
            raise FsError(errno.ENOENT)
        self.inodes.remove_name(inode)
        self._invalidate_listing(parent.ino)

    # ------------------------------------------------------------------ files

    def _new_handle(self, handle: FileHandle | DirHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        handle.inode.open_handles += 1
        if isinstance(handle, FileHandle):
            (metrics.OPEN_WRITE if handle.upload is not None else metrics.OPEN_READ).inc()
        return fh

    async def open(self, ino: int, flags: int) -> int:
        inode = self._inode(ino)
        if inode.is_dir:
            raise FsError(errno.EISDIR)
        accmode = flags & os.O_ACCMODE
        if accmode == os.O_RDONLY:
            if inode.writer is not None:
                raise FsError(errno.EBUSY, f"{inode.key} is being written")
            if not self._fresh(inode) or inode.etag is None:
                info = await self._head(inode.key)
                if info is None:
                    raise FsError(errno.ENOENT, f"{inode.key} no longer exists")
                inode.size, inode.etag, inode.mtime = info.size, info.etag, _timestamp(info)
                inode.validated = time.monotonic()
            pin = ReadPin(inode.key, inode.etag)
            if self._first_bytes is not None:  # a reader going through the directory?
                parent = self.inodes.get(inode.parent)
                if parent is not None and parent.listing is not None:
                    self._first_bytes.opened(parent.key, parent.listing, inode.name,
                                             self._readers)
            return self._new_handle(FileHandle(inode, prefetcher=self._prefetcher(inode, pin),
                                               pin=pin))
        self._check_writable()
        if accmode == os.O_RDWR:
            log.debug("refused O_RDWR open", key=inode.key)
            raise FsError(errno.EPERM, "files are opened either for reading or for writing")
        if inode.writer is not None:
            log.debug("refused second writer", key=inode.key)
            raise FsError(errno.EPERM, f"{inode.key} is already open for writing")
        if flags & os.O_APPEND and not flags & os.O_TRUNC and self.options.incremental_upload:
            return self._new_handle(FileHandle(inode, upload=await self._start_append(inode)))
        if not flags & os.O_TRUNC or not self.options.allow_overwrite:
            log.debug("refused overwrite", key=inode.key, truncate=bool(flags & os.O_TRUNC))
            raise FsError(errno.EPERM, "overwriting needs --allow-overwrite and O_TRUNC")
        return self._new_handle(self._write_handle(inode))

    def _prefetcher(self, inode: Inode, pin: ReadPin) -> Prefetcher:
        assert self._nursery is not None
        get_into = getattr(self.store, "get_range_into", None)  # optional (S3Store has it)

        first_bytes = self._first_bytes

        async def fetch(start: int, end: int) -> bytes | Buffer:
            # The pin is read at each request: a rename may have moved it.
            if start == 0 and first_bytes is not None:
                guessed = await first_bytes.take(pin.key, pin.etag, end)
                if guessed is not None:
                    return guessed
            if get_into is None:
                return await self._store(self.store.get_range, pin.key, start, end, pin.etag)
            buffer = self.buffers.take(end - start)
            await self._store(get_into, pin.key, start, end, pin.etag, memoryview(buffer))
            return buffer

        self._readers += 1
        source: Callable[[int, int], Any] = fetch
        align = 1
        if self.cache is not None and self.cache.readable and pin.etag:
            version = ObjectVersion(self.store.bucket, pin.key, pin.etag, inode.size)
            source = CachedFetch(self.cache, version, fetch, self._nursery.start_soon,
                                 self._cache_io, self._cache_writes, self._loop_idle,
                                 buffers=self.buffers)
            align = self.cache.block_size
        return Prefetcher(source, inode.size, self._nursery.start_soon, self.budget,
                          part_size=self.options.read_part_size,
                          max_parallel=self.prefetch_parallel,
                          recycle=self.buffers.give, align=align,
                          budget_timeout=self.options.request_timeout)

    def _write_handle(self, inode: Inode) -> FileHandle:
        writer = None
        if self.cache is not None and self.cache.writable:
            writer = BlockWriter(self.cache, self.store.bucket, inode.key, self._cache_io,
                                 self._cache_writes)
        return FileHandle(inode, upload=self._start_upload(inode), cache_writer=writer)

    def _start_upload(self, inode: Inode) -> Upload:
        assert self._nursery is not None
        options = self.upload_options
        if self.options.infer_content_type:
            options = dataclasses.replace(options,
                                          content_type=mimetypes.guess_type(inode.name)[0])
        upload = Upload(self.store, inode.key, options, run_sync=self.run_sync,
                        part_size=self.options.write_part_size, budget=self.budget,
                        budget_timeout=self.options.request_timeout)
        upload.attach(self._nursery)
        inode.writer = upload
        self._uploads.add(upload)
        metrics.UPLOADS_IN_FLIGHT.inc()
        return upload

    async def _start_append(self, inode: Inode) -> Upload:
        """--incremental-upload: the object as it is now is the upload's committed start;
        the Upload copies it in as its first part(s) at the first write."""
        info = await self._head(inode.key)
        if info is None:
            raise FsError(errno.ENOENT, f"{inode.key} no longer exists")
        inode.size, inode.etag, inode.mtime = info.size, info.etag, _timestamp(info)
        inode.validated = time.monotonic()
        upload = self._start_upload(inode)
        upload.resume(info.size, info.etag)
        log.debug("append to existing object", key=inode.key, size=info.size)
        return upload

    async def create(self, parent_ino: int, name: str, flags: int) -> tuple[int, Attributes]:
        self._check_writable()
        parent = self._inode(parent_ino)
        if not parent.is_dir:
            raise FsError(errno.ENOTDIR)
        if not valid_name(name):
            raise FsError(errno.EINVAL, f"invalid name {name!r}")
        existing = await self._maybe_resolve(parent, name)
        if existing is not None:
            if existing.is_dir:
                raise FsError(errno.EISDIR)
            if flags & os.O_EXCL:
                raise FsError(errno.EEXIST)
            appending = flags & os.O_APPEND and self.options.incremental_upload
            fh = await self.open(existing.ino, flags | os.O_TRUNC
                                 if self.options.allow_overwrite and not appending else flags)
            existing.lookups += 1
            return fh, self.attributes(existing)
        inode = self.inodes.upsert(parent, name, is_dir=False, local=True)
        fh = self._new_handle(self._write_handle(inode))
        inode.lookups += 1
        return fh, self.attributes(inode)

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        handle = self._handles.get(fh)
        if not isinstance(handle, FileHandle) or handle.prefetcher is None:
            raise FsError(errno.EBADF)
        try:
            return await handle.prefetcher.read(offset, size)
        except FsError as exc:
            if exc.errno == errno.EIO:
                log.error("read failed", key=handle.inode.key, error=str(exc))
            raise

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self._handles.get(fh)
        if not isinstance(handle, FileHandle) or handle.upload is None:
            raise FsError(errno.EBADF)
        try:
            written = await handle.upload.write(offset, data)
        except FsError as exc:
            log.debug("write refused", key=handle.inode.key, error=str(exc))
            raise
        if handle.cache_writer is not None:
            await handle.cache_writer.write(offset, data)
        return written

    async def flush(self, fh: int) -> None:
        """close(): complete the upload and report its error."""
        handle = self._handles.get(fh)
        if isinstance(handle, FileHandle) and handle.upload is not None:
            await self._commit(handle)

    async def fsync(self, fh: int) -> None:
        await self.flush(fh)

    async def _commit(self, handle: FileHandle) -> None:
        upload = handle.upload
        assert upload is not None
        try:
            etag = await upload.commit()
        except FsError as exc:
            log.error("upload failed", key=upload.key, error=str(exc))
            raise
        inode = handle.inode
        inode.size, inode.etag, inode.mtime = upload.size, etag, time.time()
        inode.validated = time.monotonic()
        self._mark_parents_remote(inode)

    def _mark_parents_remote(self, inode: Inode) -> None:
        """Once an object exists beneath them, mkdir'd directories are real prefixes; the
        cached listings that did not know them are dropped."""
        self._invalidate_listing(inode.parent)
        parent = self.inodes.get(inode.parent)
        while parent is not None and parent.ino != ROOT_INODE and parent.local:
            parent.local = False
            parent.validated = time.monotonic()
            self._invalidate_listing(parent.parent)
            parent = self.inodes.get(parent.parent)

    def _mark_parents_maybe_gone(self, directory: Inode) -> None:
        """An object beneath `directory` is gone: a directory that is only a prefix ends
        with its last object, so it and such ancestors are asked of the store again on
        their next lookup, whatever the metadata TTL (a mkdir'd one stays, and so do its
        ancestors)."""
        while directory.ino != ROOT_INODE and not directory.local:
            directory.validated = -math.inf  # stale even under an infinite TTL
            self._invalidate_listing(directory.parent)  # which names it among its own
            parent = self.inodes.get(directory.parent)
            if parent is None:
                return
            directory = parent

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        if isinstance(handle, FileHandle):
            (metrics.OPEN_WRITE if handle.upload is not None else metrics.OPEN_READ).dec()
            if handle.prefetcher is not None:
                handle.prefetcher.close()
                self._readers -= 1
                if not self._readers:
                    self.buffers.clear()  # idle: the memory goes back to the OS
            upload = handle.upload
            if upload is not None:
                try:
                    if upload.dirty and not upload.aborted:
                        await self._commit(handle)  # released without a flush (rare)
                except FsError:
                    pass  # already logged; the upload was aborted
                finally:
                    if upload.dirty:
                        await upload.abort()
                    if handle.cache_writer is not None:
                        if upload.etag is not None and not upload.dirty:
                            await handle.cache_writer.finish(upload.etag, upload.size)
                        else:
                            await handle.cache_writer.discard()
                    handle.inode.writer = None
                    handle.inode.local = False
                    if upload in self._uploads:
                        self._uploads.discard(upload)
                        metrics.UPLOADS_IN_FLIGHT.dec()
                    if upload.etag is None:  # nothing was ever committed
                        self.inodes.remove_name(handle.inode)
        self.inodes.release(handle.inode)

    async def releasedir(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is not None:
            self.inodes.release(handle.inode)

    async def unlink(self, parent_ino: int, name: str) -> None:
        self._check_writable()
        if not self.options.allow_delete:
            log.debug("refused unlink", name=name)
            raise FsError(errno.EPERM, "deleting needs --allow-delete")
        parent = self._inode(parent_ino)
        inode = await self._maybe_resolve(parent, name)
        if inode is None:
            raise FsError(errno.ENOENT)
        if inode.is_dir:
            raise FsError(errno.EISDIR)
        if inode.writer is not None:
            raise FsError(errno.EBUSY, f"{inode.key} is being written")
        await self._store(self.store.delete, inode.key)
        self.inodes.remove_name(inode)
        self._invalidate_listing(parent.ino)
        self._mark_parents_maybe_gone(parent)

    # ------------------------------------------------------------------ rename

    async def rename(self, old_parent_ino: int, old_name: str, new_parent_ino: int,
                     new_name: str, flags: int = 0) -> None:
        """--allow-rename: server-side copy, then delete (see the module docstring)."""
        if not self.options.allow_rename:
            await self.refuse("rename")
        self._check_writable()
        if flags & RENAME_EXCHANGE or flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise FsError(errno.EINVAL, "only plain renames are possible on a bucket")
        old_parent, new_parent = self._inode(old_parent_ino), self._inode(new_parent_ino)
        if not new_parent.is_dir:
            raise FsError(errno.ENOTDIR)
        if not valid_name(new_name):
            raise FsError(errno.EINVAL, f"invalid name {new_name!r}")
        source = await self._maybe_resolve(old_parent, old_name)
        if source is None:
            raise FsError(errno.ENOENT)
        if old_parent.ino == new_parent.ino and old_name == new_name:
            return
        target = await self._maybe_resolve(new_parent, new_name)
        if target is not None and flags & RENAME_NOREPLACE:
            raise FsError(errno.EEXIST)
        if source.is_dir:
            moved = await self._rename_dir(source, new_parent, new_name, target)
        else:
            await self._rename_file(source, new_parent, new_name, target)
            moved = True
        self._negative.pop((new_parent.ino, new_name), None)
        self._invalidate_listing(old_parent.ino)
        self._mark_parents_maybe_gone(old_parent)
        if moved:
            self._mark_parents_remote(source)  # also drops the new parent's listing
        self._invalidate_listing(new_parent.ino)

    async def _rename_file(self, source: Inode, new_parent: Inode, new_name: str,
                           target: Inode | None) -> None:
        if source.writer is not None:
            raise FsError(errno.EBUSY, f"{source.key} is being written")
        if target is not None:
            if target.is_dir:
                raise FsError(errno.EISDIR)
            if target.writer is not None:
                raise FsError(errno.EBUSY, f"{target.key} is being written")
            if not self.options.allow_overwrite:
                log.debug("refused rename onto an existing file", key=target.key)
                raise FsError(errno.EPERM, "renaming onto a file needs --allow-overwrite")
        assert source.etag is not None  # _maybe_resolve asked the store
        info = ObjectInfo(source.key, source.size, source.etag)
        dest_key = new_parent.key + new_name
        moved = await self._move_object(info, dest_key, replacing=target is not None)
        if moved is None:
            raise FsError(errno.EIO, f"rename of {source.key} to {dest_key} failed")
        self._repin({info.key: (dest_key, info.etag, moved)})
        self.inodes.move(source, new_parent, new_name)
        source.etag, source.validated = moved, time.monotonic()

    async def _move_object(self, info: ObjectInfo, dest_key: str,
                           replacing: bool = False) -> str | None:
        """Copy, then delete the source: the new ETag, or None when nothing moved (the
        object is then under its old name only, or, when a copy replaced an existing file
        and the source cannot be deleted, under both; the log says which)."""
        try:
            etag = await self.run_sync(self.store.copy, info, dest_key, self.upload_options)
        except StoreError as exc:
            log.error("rename: copy failed; the object stays under its old name",
                      key=info.key, dest=dest_key, error=str(exc))
            return None
        try:
            await self.run_sync(self.store.delete, info.key)
        except StoreError as exc:
            if replacing:  # the copy replaced a file: deleting it would lose that file too
                log.error("rename: the source could not be deleted; it is under both names",
                          key=info.key, dest=dest_key, error=str(exc))
                return None
            try:
                await self.run_sync(self.store.delete, dest_key)
            except StoreError as undo:
                log.error("rename: the source could not be deleted, nor the copy; the "
                          "object is under both names", key=info.key, dest=dest_key,
                          error=str(exc), undo_error=str(undo))
                return None
            log.error("rename: the source could not be deleted; the copy was removed and "
                      "the object stays under its old name", key=info.key, dest=dest_key,
                      error=str(exc))
            return None
        return str(etag)

    async def _rename_dir(self, source: Inode, new_parent: Inode, new_name: str,
                          target: Inode | None) -> bool:
        """Move every object beneath; True when any object moved (False: a local dir)."""
        dest_key = new_parent.key + new_name + "/"
        if dest_key.startswith(source.key):
            raise FsError(errno.EINVAL, "cannot move a directory into itself")
        if target is not None:
            if not target.is_dir:
                raise FsError(errno.ENOTDIR)
            if any(not child.unlinked for child in self.inodes.children(target.ino)
                   if child.local or child.writer is not None):
                raise FsError(errno.ENOTEMPTY)
            page = await self._list(target.key, "/", None, 1)
            if page.objects or page.prefixes:
                raise FsError(errno.ENOTEMPTY, f"{target.key} has objects under it")
        if any(inode.writer is not None for inode in self.inodes.descendants(source)):
            raise FsError(errno.EBUSY, f"a file under {source.key} is being written")
        limit = self.options.rename_dir_limit
        objects: list[ObjectInfo] = []
        token: str | None = None
        while True:  # every object beneath, counted before anything moves
            page = await self._list(source.key, None, token)
            objects += page.objects
            if len(objects) > limit:
                log.error("rename: directory has more objects than --rename-dir-limit; "
                          "nothing moved", key=source.key, limit=limit)
                raise FsError(errno.E2BIG, f"{source.key} has more than {limit} objects")
            token = page.next_token
            if token is None:
                break
        moves: dict[str, tuple[str, str, str]] = {}
        for number, info in enumerate(objects):
            new_key = dest_key + info.key[len(source.key):]
            etag = await self._move_object(info, new_key)
            if etag is None:
                log.error("rename: directory move stopped; every object is under exactly "
                          "one name", key=source.key, dest=dest_key, moved=number,
                          remaining=len(objects) - number)
                self._repin(moves)
                self._forget_subtree(source)
                raise FsError(errno.EIO, f"rename of {source.key} stopped after {number} of "
                              f"{len(objects)} objects")
            moves[info.key] = (new_key, info.etag, etag)
        self._repin(moves)
        old_key = source.key
        self.inodes.move(source, new_parent, new_name)
        new_etags = {new: etag for new, _, etag in moves.values()}
        for inode in self.inodes.descendants(source):
            if inode.key in new_etags:
                inode.etag = new_etags[inode.key]
        log.info("renamed directory", key=old_key, dest=dest_key, objects=len(objects))
        return bool(objects)

    def _repin(self, moves: dict[str, tuple[str, str | None, str]]) -> None:
        """Open readers of a moved version follow it: {old key: (new key, etag, new etag)}."""
        for handle in self._handles.values():
            if isinstance(handle, FileHandle) and handle.pin is not None:
                moved = moves.get(handle.pin.key)
                if moved is not None and moved[1] == handle.pin.etag:
                    handle.pin.key, handle.pin.etag = moved[0], moved[2]

    def _forget_subtree(self, directory: Inode) -> None:
        """After a partial move, what the inodes say is stale: ask the store again."""
        directory.validated = -math.inf  # stale even under an infinite TTL
        directory.drop_listing()
        for inode in self.inodes.descendants(directory):
            inode.validated = -math.inf
            inode.drop_listing()

    async def refuse(self, operation: str, code: int = errno.ENOTSUP) -> None:
        """rename, symlink, link and the like: not possible on an object store."""
        log.debug("refused operation", operation=operation)
        raise FsError(code, f"{operation} is not supported on a bucket")

    async def shutdown(self) -> None:
        """Abort uploads whose writer never closed: a partial object is never created."""
        for upload in list(self._uploads):
            if upload.dirty and not upload.aborted:
                log.error("upload abandoned at shutdown", key=upload.key, size=upload.size)
                await upload.abort()
        if self.cache is not None:
            with trio.move_on_after(30):  # blocks fetched just before unmount
                await self._cache_writes.wait_idle()
            await trio.to_thread.run_sync(self.cache.close)  # disk I/O: off the loop


def _timestamp(info: ObjectInfo) -> float:
    return info.last_modified.timestamp() if info.last_modified else time.time()
