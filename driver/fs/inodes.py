"""The inode table: inode numbers for keys and prefixes, with kernel lookup counts.

An inode is created when the kernel first learns a name (lookup, readdirplus, create,
mkdir) and dropped only when the kernel forgets it (its lookup count reaches zero) and no
handle holds it, never at unlink. `(parent, name) -> ino` keeps numbers stable while the
kernel remembers them, so `ls -l` and an open file agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

ROOT_INODE = 1  # pyfuse3.ROOT_INODE


@dataclass(eq=False, slots=True)
class Inode:
    ino: int
    parent: int
    name: str
    key: str  # a file's object key, or a directory's prefix ending in "/" ("" for the root)
    is_dir: bool
    size: int = 0
    etag: str | None = None
    mtime: float = field(default_factory=time.time)
    validated: float = 0.0  # time.monotonic() when the store last confirmed this metadata
    local: bool = False  # mkdir'd directory not yet in the store, or a file being written
    lookups: int = 0
    open_handles: int = 0
    unlinked: bool = False
    writer: object | None = None  # the Upload writing this file, if any
    # A directory's whole listing (name -> object, or None for a subdirectory), kept for
    # the metadata TTL so lookups of its entries need no request of their own; for a
    # directory too big to list whole, the window of it listed last.
    listing: dict[str, object] | None = None
    listed_at: float = 0.0
    listing_hits: int = 0  # lookups the listing answered since it was kept
    too_big_to_cache_until: float = 0.0
    # Bumped whenever the listing is dropped: a LIST answered after a change here in the
    # meantime may not know of it, so it is not kept.
    listing_generation: int = 0

    def drop_listing(self) -> None:
        self.listing = None
        self.listing_generation += 1


class InodeTable:
    def __init__(self, root_prefix: str) -> None:
        self._next = ROOT_INODE + 1
        root = Inode(ROOT_INODE, ROOT_INODE, "", root_prefix, is_dir=True, lookups=1)
        root.validated = float("inf")
        self._by_ino: dict[int, Inode] = {ROOT_INODE: root}
        self._by_child: dict[tuple[int, str], int] = {}

    def __len__(self) -> int:
        return len(self._by_ino)

    def get(self, ino: int) -> Inode | None:
        return self._by_ino.get(ino)

    def child(self, parent: int, name: str) -> Inode | None:
        ino = self._by_child.get((parent, name))
        return None if ino is None else self._by_ino.get(ino)

    def children(self, parent: int) -> list[Inode]:
        return [self._by_ino[ino] for (p, _), ino in self._by_child.items()
                if p == parent and ino in self._by_ino]

    def upsert(self, parent: Inode, name: str, *, is_dir: bool, size: int = 0,
               etag: str | None = None, mtime: float | None = None,
               local: bool = False) -> Inode:
        """The inode for `parent/name` with fresh metadata; a new one if the kind changed."""
        key = parent.key + name + ("/" if is_dir else "")
        current = self.child(parent.ino, name)
        if current is not None and current.is_dir == is_dir and current.key == key:
            inode = current
            if not inode.local or local:
                inode.size, inode.etag = size, etag
                if mtime is not None:
                    inode.mtime = mtime
            inode.local = inode.local or local
        else:
            if current is not None:
                self._detach(current)
            inode = Inode(self._next, parent.ino, name, key, is_dir, size, etag,
                          mtime if mtime is not None else time.time(), local=local)
            self._next += 1
            self._by_ino[inode.ino] = inode
            self._by_child[(parent.ino, name)] = inode.ino
        inode.validated = time.monotonic()
        return inode

    def _detach(self, inode: Inode) -> None:
        """Unlink the name; the inode itself lives on until forgotten and closed."""
        if self._by_child.get((inode.parent, inode.name)) == inode.ino:
            del self._by_child[(inode.parent, inode.name)]
        inode.unlinked = True
        self._maybe_drop(inode)

    def remove_name(self, inode: Inode) -> None:
        self._detach(inode)

    def move(self, inode: Inode, new_parent: Inode, new_name: str) -> None:
        """Rename: the inode keeps its number (open files and the kernel's references stay
        valid) under its new name; a directory's descendants get their new keys."""
        replaced = self.child(new_parent.ino, new_name)
        if replaced is not None and replaced is not inode:
            self._detach(replaced)
        if self._by_child.get((inode.parent, inode.name)) == inode.ino:
            del self._by_child[(inode.parent, inode.name)]
        old_key = inode.key
        inode.parent, inode.name = new_parent.ino, new_name
        inode.key = new_parent.key + new_name + ("/" if inode.is_dir else "")
        inode.drop_listing()
        self._by_child[(new_parent.ino, new_name)] = inode.ino
        if inode.is_dir:
            for other in self._by_ino.values():
                if other is not inode and other.key.startswith(old_key) and \
                        other.ino != ROOT_INODE:
                    other.key = inode.key + other.key[len(old_key):]
                    other.drop_listing()

    def descendants(self, inode: Inode) -> list[Inode]:
        """Every known inode beneath a directory (by key: keys under its prefix)."""
        return [other for other in self._by_ino.values()
                if other is not inode and other.ino != ROOT_INODE
                and other.key.startswith(inode.key)]

    def forget(self, ino: int, count: int) -> None:
        inode = self._by_ino.get(ino)
        if inode is None or ino == ROOT_INODE:
            return  # never raise from forget
        inode.lookups = max(0, inode.lookups - count)
        self._maybe_drop(inode)

    def release(self, inode: Inode) -> None:
        inode.open_handles -= 1
        self._maybe_drop(inode)

    def _maybe_drop(self, inode: Inode) -> None:
        if inode.ino == ROOT_INODE or inode.lookups > 0 or inode.open_handles > 0:
            return
        if inode.local and not inode.unlinked:
            return  # a mkdir'd directory exists only here: keep it until rmdir
        self._by_ino.pop(inode.ino, None)
        if self._by_child.get((inode.parent, inode.name)) == inode.ino:
            del self._by_child[(inode.parent, inode.name)]
