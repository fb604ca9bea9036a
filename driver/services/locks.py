"""Named locks: one mutex per key (a volume id, a target path), created on demand."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class KeyedLocks:
    """`with locks.hold("a", "b"):` holds the lock of every key, taken in the order given.

    Entries are reference-counted and dropped when nobody holds or waits for them, so the
    table does not grow with every volume ever seen. Callers must always pass keys in the
    same order of kinds (volume id before target path) so two calls cannot deadlock.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()  # guards _locks and the reference counts
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    def _acquire_entry(self, key: str) -> threading.Lock:
        with self._guard:
            lock, users = self._locks.get(key, (None, 0))
            if lock is None:
                lock = threading.Lock()
            self._locks[key] = (lock, users + 1)
            return lock

    def _release_entry(self, key: str) -> None:
        with self._guard:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    @contextmanager
    def hold(self, *keys: str) -> Iterator[None]:
        taken: list[tuple[str, threading.Lock]] = []
        try:
            for key in dict.fromkeys(keys):  # a key given twice is held once
                lock = self._acquire_entry(key)
                lock.acquire()
                taken.append((key, lock))
            yield
        finally:
            for key, lock in reversed(taken):
                lock.release()
                self._release_entry(key)

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)
