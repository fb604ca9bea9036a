"""An in-memory ObjectStore for unit tests, with fault injection. Never a proof of S3.

tests/integration/test_store_conformance.py holds it to the same contract as the real
backends, so a unit test over it means what it would mean over S3 or GCS.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import threading
import time
from collections.abc import Callable, Sequence

from driver.store.base import (
    BucketNotFound,
    ListPage,
    NotFound,
    ObjectInfo,
    PartResult,
    Payload,
    PreconditionFailed,
    StoreError,
    UploadOptions,
    joined,
)


class MemoryStore:
    def __init__(self, bucket: str = "mem") -> None:
        self.bucket = bucket
        self.objects: dict[str, bytes] = {}
        self.uploads: dict[str, tuple[str, dict[int, bytes]]] = {}
        self.initiated: dict[str, float] = {}  # upload id -> time.time() it was created
        self.calls: list[str] = []
        self.fail: Callable[[str], bool] = lambda op: False
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def _op(self, name: str) -> None:
        with self._lock:
            self.calls.append(name)
        if self.fail(name):
            raise StoreError(f"injected failure in {name}")

    @staticmethod
    @functools.lru_cache(maxsize=64)  # bytes cache their hash: repeated ETags are cheap
    def _etag(data: bytes) -> str:
        return '"' + hashlib.md5(data).hexdigest() + '"'  # noqa: S324 - an ETag, not security

    def check_bucket(self) -> str | None:
        self._op("check_bucket")
        if self.bucket == "missing":
            raise BucketNotFound("no bucket")
        return "mem-region"

    def head(self, key: str) -> ObjectInfo | None:
        self._op("head")
        data = self.objects.get(key)
        return None if data is None else ObjectInfo(key, len(data), self._etag(data))

    def list_page(self, prefix: str, delimiter: str | None = "/", token: str | None = None,
                  max_keys: int = 1000, start_after: str | None = None) -> ListPage:
        self._op("list")
        entries: list[tuple[str, ObjectInfo | None]] = []
        seen_prefixes: set[str] = set()
        for key in sorted(self.objects):
            if not key.startswith(prefix) or (start_after is not None and key <= start_after):
                continue
            rest = key[len(prefix):]
            if delimiter and delimiter in rest:
                common = prefix + rest.split(delimiter, 1)[0] + delimiter
                if common not in seen_prefixes:
                    seen_prefixes.add(common)
                    entries.append((common, None))
            else:
                data = self.objects[key]
                entries.append((key, ObjectInfo(key, len(data), self._etag(data))))
        start = int(token or 0)
        page = entries[start:start + max_keys]
        next_token = str(start + max_keys) if start + max_keys < len(entries) else None
        return ListPage([info for _, info in page if info is not None],
                        [key for key, info in page if info is None], next_token)

    def get_range(self, key: str, start: int, end: int, etag: str | None) -> bytes:
        self._op("get")
        data = self.objects.get(key)
        if data is None:
            raise NotFound(key)
        if etag and self._etag(data) != etag:
            raise PreconditionFailed(key)
        if end > len(data):  # as the real stores: a short read is an error, never returned
            raise StoreError(f"GET {key}: short read ({len(data) - start} of {end - start})")
        return data[start:end]

    def get_range_into(self, key: str, start: int, end: int, etag: str | None,
                       out: memoryview) -> None:
        data = self.get_range(key, start, end, etag)
        if len(data) != len(out):
            raise StoreError(f"short read of {key}")
        out[:] = data

    def get_first_into(self, key: str, out: memoryview) -> tuple[int, str | None]:
        self._op("get")
        data = self.objects.get(key)
        if data is None:
            raise NotFound(key)
        count = min(len(out), len(data))
        out[:count] = data[:count]
        return count, self._etag(data)

    def put(self, key: str, data: bytes, options: UploadOptions) -> str:
        self._op("put")
        self.objects[key] = bytes(data)
        return self._etag(data)

    def create_upload(self, key: str, options: UploadOptions) -> str:
        self._op("create_upload")
        upload_id = str(next(self._ids))
        self.uploads[upload_id] = (key, {})
        self.initiated[upload_id] = time.time()
        return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, data: Payload,
                    options: UploadOptions) -> PartResult:
        self._op("upload_part")
        body = bytes(joined(data))
        self.uploads[upload_id][1][number] = body
        return PartResult(number, self._etag(body))

    def upload_part_copy(self, key: str, upload_id: str, number: int, source_key: str,
                         start: int, end: int, source_etag: str) -> PartResult:
        self._op("upload_part_copy")
        data = self.get_range(source_key, start, end, source_etag)
        self.uploads[upload_id][1][number] = data
        return PartResult(number, self._etag(data))

    def complete_upload(self, key: str, upload_id: str, parts: Sequence[PartResult]) -> str:
        self._op("complete_upload")
        _, stored = self.uploads.pop(upload_id)
        data = b"".join(stored[part.number] for part in parts)
        self.objects[key] = data
        return self._etag(data)

    def abort_upload(self, key: str, upload_id: str) -> None:
        self._op("abort_upload")
        self.uploads.pop(upload_id, None)

    def list_uploads(self, prefix: str) -> list[tuple[str, str]]:
        return [(key, upload_id) for upload_id, (key, _) in self.uploads.items()
                if key.startswith(prefix)]

    def reconcile_uploads(self, key: str, since: float) -> int:
        """Abort every upload of `key` created since `since`. Like S3Store without a fault
        it is no request, so it is not recorded in `calls`."""
        strays = [upload_id for upload_id, (upload_key, _) in list(self.uploads.items())
                  if upload_key == key and self.initiated.get(upload_id, 0) >= since]
        for upload_id in strays:
            self.uploads.pop(upload_id, None)
        return len(strays)
    def copy(self, source: ObjectInfo, dest_key: str, options: UploadOptions) -> str:
        self._op("copy")
        data = self.objects.get(source.key)
        if data is None:
            raise NotFound(source.key)
        if self._etag(data) != source.etag:
            raise PreconditionFailed(source.key)
        self.objects[dest_key] = data
        return self._etag(data)

    def delete(self, key: str) -> None:
        self._op("delete")
        self.objects.pop(key, None)

    def delete_prefix(self, prefix: str) -> int:
        keys = [key for key in self.objects if key.startswith(prefix)]
        for key in keys:
            del self.objects[key]
        return len(keys)
