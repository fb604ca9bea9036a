"""Filesystem errors, and the one table from store errors to errno."""

from __future__ import annotations

import errno

from driver.store import base as store


class FsError(Exception):
    """An operation failed with `errno`; the adapter turns it into a FUSE reply."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"{errno.errorcode.get(code, code)}: {reason}" if reason else
                         errno.errorcode.get(code, str(code)))
        self.errno = code


# Order matters only for subclasses; every StoreError subclass is listed.
STORE_ERRNO: dict[type[store.StoreError], int] = {
    store.NotFound: errno.ENOENT,
    store.BucketNotFound: errno.ENOENT,
    store.AccessDenied: errno.EACCES,
    store.PreconditionFailed: errno.EIO,  # the object changed under an open file
    store.EndpointUnreachable: errno.EIO,
    store.InvalidRequest: errno.EIO,
    store.IncompleteResponse: errno.EIO,  # the retries ran out mid-body
    store.StoreError: errno.EIO,
}


def from_store(exc: store.StoreError) -> FsError:
    for kind in type(exc).__mro__:
        if kind in STORE_ERRNO:
            error = FsError(STORE_ERRNO[kind], str(exc))
            error.__cause__ = exc
            return error
    raise AssertionError(f"unmapped store error {type(exc).__name__}")  # pragma: no cover
