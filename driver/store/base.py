"""The ObjectStore interface every backend implements, and the errors it may raise.

Methods are synchronous and thread-safe: the filesystem calls them from worker threads,
never from the FUSE event loop. Each backend translates its client's errors into the
`StoreError` family below in one place, keeping the original as `__cause__`, and owns
its retry rules (`driver/store/retry.py`: bounded in time, with a deadline per call).

Retries and side effects: a call retried after its reply was lost may already have taken
effect. Each store reconciles that in one place (its `_reconcile_*` methods): a retried
CreateMultipartUpload may have left a second upload, which `reconcile_uploads` aborts
once the write is over; a CompleteMultipartUpload that fails (NoSuchUpload on a retry, or
any final error) is a success exactly when the object now is the one those parts make; a
retried delete or abort that finds nothing is done; a retried part (upload or copy)
simply replaces the same part number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class StoreError(Exception):
    """Base of every error a store raises. Messages never contain credentials."""


class NotFound(StoreError):
    """The object (or upload) does not exist."""


class BucketNotFound(StoreError):
    """The bucket does not exist."""


class AccessDenied(StoreError):
    """The store refused the credentials or the request (403, bad signature, expired)."""


class PreconditionFailed(StoreError):
    """The object changed: its ETag no longer matches the one pinned at open."""


class EndpointUnreachable(StoreError):
    """No connection to the endpoint (DNS, refused, timed out)."""


class InvalidRequest(StoreError):
    """The store rejected the request as malformed (e.g. part too small)."""


class IncompleteResponse(StoreError):
    """A response ended before the bytes asked for, or is not a whole result. Both stores
    retry it (a GET resumes from the first missing byte); when the attempts run out it is
    the operation's error as it stands."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: datetime | None = None


@dataclass(frozen=True, slots=True)
class ListPage:
    objects: Sequence[ObjectInfo]
    prefixes: Sequence[str]  # common prefixes, each ending in the delimiter
    next_token: str | None  # None when this is the last page


@dataclass(frozen=True, slots=True)
class UploadOptions:
    storage_class: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    checksum: str | None = None  # "crc32c" or None
    content_type: str | None = None  # None: the store's default (binary)


Payload = bytes | memoryview | Sequence[bytes | memoryview]
"""A part's bytes; a sequence holds the writes that made it, in order, never joined where the
store can send them as they are (S3's direct path; a join is an 8 MiB copy per part)."""


def pieces(data: Payload) -> Sequence[bytes | memoryview]:
    """The payload as a sequence of buffers, whichever form it came in."""
    return (data,) if isinstance(data, bytes | memoryview) else data


def payload_size(data: Payload) -> int:
    return sum(map(len, pieces(data)))


def joined(data: Payload) -> bytes | memoryview:
    """The payload as one buffer (a copy only when it is several)."""
    parts = pieces(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


@dataclass(frozen=True, slots=True)
class PartResult:
    number: int
    etag: str
    checksum_crc32c: str | None = None
    size: int | None = None  # bytes in the part, to recognise a completed object


class ObjectStore(Protocol):
    bucket: str

    def check_bucket(self) -> str | None:
        """Verify the bucket exists and the credentials may list it; return its region."""

    def head(self, key: str) -> ObjectInfo | None:
        """Metadata of `key`, or None when it does not exist."""

    def list_page(self, prefix: str, delimiter: str | None = "/", token: str | None = None,
                  max_keys: int = 1000, start_after: str | None = None) -> ListPage:
        """One page of keys under `prefix`, grouped at `delimiter`."""

    def get_range(self, key: str, start: int, end: int, etag: str | None) -> bytes:
        """Bytes [start, end) of `key`; PreconditionFailed when its ETag is not `etag`."""

    # Optional, not part of the protocol: `get_range_into(key, start, end, etag, out)` fills
    # the caller's buffer instead (S3Store has it); the filesystem then pools part buffers.
    # Optional too: `get_first_into(key, out) -> (count, etag)`, up to len(out) first bytes
    # of an object of unknown size in one attempt (S3Store and GcsStore have it); with it
    # the filesystem guesses a file's first bytes (driver/fs/firstbytes.py).

    def put(self, key: str, data: bytes, options: UploadOptions) -> str:
        """Write a whole object in one request; return its ETag."""

    def create_upload(self, key: str, options: UploadOptions) -> str:
        """Start a multipart upload; return its id."""

    def upload_part(self, key: str, upload_id: str, number: int, data: Payload,
                    options: UploadOptions) -> PartResult: ...

    def upload_part_copy(self, key: str, upload_id: str, number: int, source_key: str,
                         start: int, end: int, source_etag: str) -> PartResult:
        """Copy bytes [start, end) of `source_key` (pinned to `source_etag`) as a part."""

    def complete_upload(self, key: str, upload_id: str, parts: Sequence[PartResult]) -> str:
        """Finish a multipart upload; return the new object's ETag."""

    def abort_upload(self, key: str, upload_id: str) -> None: ...

    def list_uploads(self, prefix: str) -> list[tuple[str, str]]:
        """Pending multipart uploads under `prefix` as (key, upload id)."""

    def reconcile_uploads(self, key: str, since: float) -> int:
        """After a write of `key` ends (completed or aborted): abort uploads of `key` that
        its retried requests may have started since `since` (time.time()); return how many.
        Costs no request unless a create of `key` was retried or failed."""

    def copy(self, source: ObjectInfo, dest_key: str, options: UploadOptions) -> str:
        """Server-side copy of `source` (pinned to its ETag: PreconditionFailed when it
        changed) to `dest_key`, which appears whole or not at all; return the new ETag."""

    def delete(self, key: str) -> None:
        """Delete `key`; a key already gone (also after a retry) is done, not an error."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; return how many."""
