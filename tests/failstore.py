"""Countdown failures for unit tests, after mountpoint-s3's failure_client.rs.

Two wrappers, both driven by a `FailurePlan` ("fail the k-th call of this kind, before or
after it took effect"):
- `FailingStore` wraps any ObjectStore (usually tests/memstore.py's MemoryStore) and
  raises `StoreError` from chosen calls: for the filesystem's upload and read paths;
- `FakeS3Client` is a botocore-shaped S3 client over an in-memory bucket with the same
  failures in botocore's own exception types (500, SlowDown, connection reset, a body cut
  mid-way): `S3Store` runs over it unchanged, so its retry and reconcile rules are tested
  exactly as they run against S3. Never a proof of S3 itself.

"After it took effect" is the lost reply: the operation is applied, then the caller sees
an error, as when a connection drops after the store answered.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import botocore.exceptions

from driver.store.base import StoreError


@dataclass
class _Rule:
    kind: str
    calls: set[int]  # which calls of this kind fail (1-based)
    after: bool  # the operation takes effect first (a lost reply)
    error: str  # "500", "SlowDown", "reset", "cut" (bodies only), "NoSuchUpload"...


@dataclass
class FailurePlan:
    rules: list[_Rule] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, kind: str, k: int | range | set[int] = 1, *, after: bool = False,
             error: str = "500") -> FailurePlan:
        """Fail call(s) `k` (1-based; a range or set for several) of `kind`."""
        calls = {k} if isinstance(k, int) else set(k)
        self.rules.append(_Rule(kind, calls, after, error))
        return self

    def fail_always(self, kind: str, *, after: bool = False, error: str = "500") -> FailurePlan:
        return self.fail(kind, range(1, 10_000), after=after, error=error)

    def next(self, kind: str) -> _Rule | None:
        """Count a call of `kind`; the rule that makes it fail, if any."""
        with self.lock:
            number = self.counts[kind] = self.counts.get(kind, 0) + 1
        for rule in self.rules:
            if rule.kind == kind and number in rule.calls:
                return rule
        return None


class FailingStore:
    """An ObjectStore whose chosen calls fail; every other call goes to `inner`."""

    def __init__(self, inner: Any, plan: FailurePlan | None = None) -> None:
        self.inner = inner
        self.plan = plan or FailurePlan()
        self.bucket = inner.bucket

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target) or name.startswith("_"):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            rule = self.plan.next(name)
            if rule is not None and not rule.after:
                raise StoreError(f"injected failure before {name}")
            result = target(*args, **kwargs)
            if rule is not None:
                raise StoreError(f"injected failure after {name} took effect")
            return result

        call.__name__ = name
        return call


# ---------------------------------------------------------------------------------------
# A botocore-shaped S3 client


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'  # noqa: S324 - an ETag


def client_error(code: str, status: int, operation: str) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "injected"},
         "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


class _CutBody:
    """A StreamingBody that delivers `keep` bytes, then fails as a cut connection."""

    def __init__(self, data: bytes, keep: int | None) -> None:
        self._data = data
        self._keep = keep
        self._offset = 0

    def iter_chunks(self, chunk_size: int = 1024) -> Iterator[bytes]:
        limit = len(self._data) if self._keep is None else self._keep
        for offset in range(0, limit, chunk_size):
            yield self._data[offset:min(offset + chunk_size, limit)]
        if self._keep is not None:
            raise botocore.exceptions.ResponseStreamingError(error="connection cut")

    def readinto(self, buffer: memoryview) -> int:
        limit = len(self._data) if self._keep is None else self._keep
        if self._offset >= limit:
            if self._keep is not None:
                raise botocore.exceptions.ResponseStreamingError(error="connection cut")
            return 0
        count = min(len(buffer), limit - self._offset)
        buffer[:count] = self._data[self._offset:self._offset + count]
        self._offset += count
        return count

    def close(self) -> None:
        pass


@dataclass
class FakeObject:
    data: bytes
    etag: str
    parts: int | None = None


class _Events:
    """The handler registry S3Store and its metrics hook into; nothing is ever emitted."""

    def register(self, *args: Any, **kwargs: Any) -> None:
        pass

    register_first = register_last = unregister = register


@dataclass
class _Meta:
    events: _Events = field(default_factory=_Events)


class FakeS3Client:
    """The S3 calls S3Store makes, over dictionaries; `plan` decides which ones fail.

    `part_etags="md5"` gives parts MD5 ETags (as S3 without SSE-KMS); "opaque" gives
    non-MD5 ones (SSE-KMS), so completion is recognised by size and part count instead.
    """

    def __init__(self, plan: FailurePlan | None = None, part_etags: str = "md5",
                 missing_delete: str = "404") -> None:
        self.plan = plan or FailurePlan()
        self.objects: dict[str, FakeObject] = {}
        self.uploads: dict[str, tuple[str, datetime, dict[int, tuple[bytes, str]]]] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.part_etags = part_etags
        self.missing_delete = missing_delete  # "404" (some stores) or "204" (AWS)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.meta = _Meta()

    # -- fault plumbing -------------------------------------------------------------------

    def _run(self, operation: str, kwargs: dict[str, Any], apply: Callable[[], Any]) -> Any:
        with self._lock:
            self.requests.append((operation, dict(kwargs)))
        rule = self.plan.next(operation)
        if rule is not None and not rule.after and rule.error != "cut":
            raise self._error(rule.error, operation)
        result = apply()
        if rule is not None and rule.error == "cut":
            return result  # the caller cuts the body itself
        if rule is not None:
            raise self._error(rule.error, operation)
        return result

    @staticmethod
    def _error(kind: str, operation: str) -> Exception:
        if kind == "reset":
            return botocore.exceptions.ConnectionClosedError(endpoint_url="http://fake")
        if kind == "timeout":
            return botocore.exceptions.ReadTimeoutError(endpoint_url="http://fake")
        if kind == "SlowDown":
            return client_error("SlowDown", 503, operation)
        if kind == "NoSuchUpload":
            return client_error("NoSuchUpload", 404, operation)
        return client_error("InternalError", 500, operation)

    def calls(self, operation: str) -> list[dict[str, Any]]:
        return [kwargs for name, kwargs in self.requests if name == operation]

    # -- the S3 API ------------------------------------------------------------------------

    def head_object(self, Bucket: str, Key: str, PartNumber: int | None = None,  # noqa: N803
                    **_: Any) -> dict[str, Any]:
        def apply() -> dict[str, Any]:
            obj = self.objects.get(Key)
            if obj is None:
                raise client_error("404", 404, "HeadObject")
            response: dict[str, Any] = {"ContentLength": len(obj.data), "ETag": obj.etag}
            if PartNumber is not None and obj.parts:
                response["PartsCount"] = obj.parts
            return response

        return self._run("HeadObject", {"Key": Key, "PartNumber": PartNumber}, apply)

    def get_object(self, Bucket: str, Key: str, Range: str, IfMatch: str | None = None,  # noqa: N803
                   **_: Any) -> dict[str, Any]:
        def apply() -> dict[str, Any]:
            obj = self.objects.get(Key)
            if obj is None:
                raise client_error("NoSuchKey", 404, "GetObject")
            if IfMatch is not None and IfMatch != obj.etag:
                raise client_error("PreconditionFailed", 412, "GetObject")
            first, last = (int(x) for x in Range.removeprefix("bytes=").split("-"))
            return {"ETag": obj.etag, "Data": obj.data[first:last + 1]}

        kwargs = {"Key": Key, "Range": Range, "IfMatch": IfMatch}
        rule_before = self.plan.counts.get("GetObject", 0)
        response = self._run("GetObject", kwargs, apply)
        cut = self._cut_rule("GetObject", rule_before + 1)
        data = response.pop("Data")
        response["Body"] = _CutBody(data, len(data) // 2 if cut else None)
        return response

    def _cut_rule(self, kind: str, number: int) -> bool:
        return any(rule.kind == kind and number in rule.calls and rule.error == "cut"
                   for rule in self.plan.rules)

    def put_object(self, Bucket: str, Key: str, Body: bytes, **_: Any) -> dict[str, Any]:  # noqa: N803
        def apply() -> dict[str, Any]:
            self.objects[Key] = FakeObject(bytes(Body), _etag(bytes(Body)))
            return {"ETag": self.objects[Key].etag}

        return self._run("PutObject", {"Key": Key}, apply)

    def create_multipart_upload(self, Bucket: str, Key: str, **_: Any) -> dict[str, Any]:  # noqa: N803
        def apply() -> dict[str, Any]:
            upload_id = f"u{next(self._ids)}"
            self.uploads[upload_id] = (Key, datetime.now(UTC), {})
            return {"UploadId": upload_id}

        return self._run("CreateMultipartUpload", {"Key": Key}, apply)

    def _part_etag(self, data: bytes) -> str:
        if self.part_etags == "md5":
            return _etag(data)
        return '"kms-' + hashlib.sha1(data).hexdigest() + '"'  # noqa: S324

    def upload_part(self, Bucket: str, Key: str, UploadId: str, PartNumber: int,  # noqa: N803
                    Body: bytes, **_: Any) -> dict[str, Any]:
        def apply() -> dict[str, Any]:
            if UploadId not in self.uploads:
                raise client_error("NoSuchUpload", 404, "UploadPart")
            etag = self._part_etag(bytes(Body))
            self.uploads[UploadId][2][PartNumber] = (bytes(Body), etag)
            return {"ETag": etag}

        return self._run("UploadPart", {"Key": Key, "PartNumber": PartNumber}, apply)

    def upload_part_copy(self, Bucket: str, Key: str, UploadId: str, PartNumber: int,  # noqa: N803
                         CopySource: dict[str, str], CopySourceRange: str,  # noqa: N803
                         CopySourceIfMatch: str, **_: Any) -> dict[str, Any]:  # noqa: N803
        def apply() -> dict[str, Any]:
            source = self.objects.get(CopySource["Key"])
            if source is None or source.etag != CopySourceIfMatch:
                raise client_error("PreconditionFailed", 412, "UploadPartCopy")
            first, last = (int(x) for x in CopySourceRange.removeprefix("bytes=").split("-"))
            data = source.data[first:last + 1]
            etag = self._part_etag(data)
            self.uploads[UploadId][2][PartNumber] = (data, etag)
            return {"CopyPartResult": {"ETag": etag}}

        return self._run("UploadPartCopy", {"Key": Key, "PartNumber": PartNumber}, apply)

    def complete_multipart_upload(self, Bucket: str, Key: str, UploadId: str,  # noqa: N803
                                  MultipartUpload: dict[str, Any], **_: Any) -> dict[str, Any]:  # noqa: N803
        def apply() -> dict[str, Any]:
            if UploadId not in self.uploads:
                raise client_error("NoSuchUpload", 404, "CompleteMultipartUpload")
            _, _, stored = self.uploads[UploadId]
            listed = MultipartUpload["Parts"]
            if any(stored.get(p["PartNumber"], (b"", None))[1] != p["ETag"] for p in listed):
                raise client_error("InvalidPart", 400, "CompleteMultipartUpload")
            data = b"".join(stored[p["PartNumber"]][0] for p in listed)
            digest = hashlib.md5(b"".join(  # noqa: S324
                bytes.fromhex(stored[p["PartNumber"]][1].strip('"')) for p in listed)) \
                if self.part_etags == "md5" else hashlib.sha1(data)  # noqa: S324
            etag = f'"{digest.hexdigest()}-{len(listed)}"'
            self.objects[Key] = FakeObject(data, etag, len(listed))
            del self.uploads[UploadId]
            return {"ETag": etag}

        return self._run("CompleteMultipartUpload", {"Key": Key, "UploadId": UploadId}, apply)

    def abort_multipart_upload(self, Bucket: str, Key: str, UploadId: str,  # noqa: N803
                               **_: Any) -> dict[str, Any]:
        def apply() -> dict[str, Any]:
            if self.uploads.pop(UploadId, None) is None:
                raise client_error("NoSuchUpload", 404, "AbortMultipartUpload")
            return {}

        return self._run("AbortMultipartUpload", {"Key": Key, "UploadId": UploadId}, apply)

    def list_multipart_uploads(self, Bucket: str, Prefix: str = "",  # noqa: N803
                               **_: Any) -> dict[str, Any]:
        def apply() -> dict[str, Any]:
            return {"Uploads": [{"Key": key, "UploadId": upload_id, "Initiated": initiated}
                                for upload_id, (key, initiated, _) in self.uploads.items()
                                if key.startswith(Prefix)], "IsTruncated": False}

        return self._run("ListMultipartUploads", {"Prefix": Prefix}, apply)

    def delete_object(self, Bucket: str, Key: str, **_: Any) -> dict[str, Any]:  # noqa: N803
        def apply() -> dict[str, Any]:
            if self.objects.pop(Key, None) is None and self.missing_delete == "404":
                raise client_error("NoSuchKey", 404, "DeleteObject")
            return {}

        return self._run("DeleteObject", {"Key": Key}, apply)

    def list_objects_v2(self, Bucket: str, Prefix: str = "", **_: Any) -> dict[str, Any]:  # noqa: N803
        def apply() -> dict[str, Any]:
            return {"Contents": [{"Key": key, "Size": len(obj.data), "ETag": obj.etag}
                                 for key, obj in sorted(self.objects.items())
                                 if key.startswith(Prefix)], "IsTruncated": False}

        return self._run("ListObjectsV2", {"Prefix": Prefix}, apply)


class FakeSession:
    """What S3Store asks of a boto3 session: a client."""

    def __init__(self, client: FakeS3Client) -> None:
        self._client = client

    def client(self, *args: Any, **kwargs: Any) -> FakeS3Client:
        return self._client
