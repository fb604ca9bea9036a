"""Google Cloud Storage through its native JSON API (google-cloud-storage).

Versions: a GCS object's `generation` changes on every write, so it plays the part of the
S3 ETag. `ObjectInfo.etag` is the generation as a decimal string, and a ranged read pinned
to it uses `ifGenerationMatch` (HTTP 412 -> PreconditionFailed when the object changed).

Multipart uploads: GCS has none. They are built from composed temporary objects, which
keeps the filesystem's contract (parts in parallel and in any order, nothing visible under
the final name until complete, abort leaves nothing):
- `create_upload` writes a marker `/.cloudbucket-uploads/<id>/upload` whose metadata
  names the final key (so `list_uploads` can find abandoned uploads);
- each part is an object `/.cloudbucket-uploads/<id>/<number>`; `upload_part_copy` of a
  whole object composes it server-side into the part (so an append is compose of the old
  object and the new bytes), and of a range downloads it pinned to the source generation
  and uploads it (GCS has no server-side ranged copy);
- `complete_upload` composes the parts (32 sources per compose call, so more parts are
  composed in rounds into intermediates) into the final key, then deletes the temporaries;
- `abort_upload` deletes the temporaries.
The temporary names start with "/": at a mount's root they list as a directory named ""
(hidden by the filesystem, which never shows invalid names), and under a key prefix they
are outside the mount altogether.

Retries are ours (`driver/store/retry.py`; the library's are off, `retry=None`), bounded
by the mount's request timeout. Every call here is idempotent or made so: creating the
marker or a part rewrites the same name; deleting what is gone is done; the final compose
is conditional on the generation the key had before (0: absent), so a retry after a lost
reply fails its precondition, and the compose counts as done exactly when the key now
holds a newer object of the expected size and component count (`_reconcile_compose`).
A ranged read cut mid-body resumes from the first missing byte, pinned to the generation.
Every client error is translated in `_translate`, the one table for this backend.
`copy` (rename) is a rewrite pinned to the source generation, repeated while GCS asks for
more rounds (large objects, other storage classes).
"""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import google.api_core.exceptions as gexc
import google.auth.credentials
import google.auth.exceptions
import requests
import structlog
import urllib3.exceptions
from google.api_core.client_options import ClientOptions
from google.cloud import storage

from driver.store.base import (
    AccessDenied,
    BucketNotFound,
    EndpointUnreachable,
    IncompleteResponse,
    InvalidRequest,
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
from driver.store.observe import instrument_gcs
from driver.store.retry import Attempts, Retrier, SuspectUploads, Timeouts

log = structlog.get_logger()
T = TypeVar("T")
UPLOADS = "/.cloudbucket-uploads/"
COMPOSE_LIMIT = 32  # sources per compose request


def retryable(exc: BaseException) -> bool:
    """A failed attempt worth repeating: throttling, 5xx, a connection or body cut."""
    if isinstance(exc, gexc.GoogleAPICallError):
        return isinstance(exc, gexc.TooManyRequests | gexc.ServerError) or exc.code == 408
    return isinstance(exc, requests.ConnectionError | requests.Timeout |
                      requests.exceptions.ChunkedEncodingError |
                      google.auth.exceptions.TransportError | urllib3.exceptions.HTTPError |
                      ConnectionError | IncompleteResponse)


def _translate(exc: BaseException, what: str) -> StoreError:
    """Map a google-cloud-storage / google-auth / requests error to a StoreError."""
    if isinstance(exc, gexc.GoogleAPICallError):
        message = f"{what}: {exc.code} {getattr(exc, 'message', '')}".strip()
        if isinstance(exc, gexc.NotFound):  # check_bucket tells a missing bucket apart
            return NotFound(message)
        if isinstance(exc, gexc.Forbidden | gexc.Unauthorized):
            return AccessDenied(message)
        if isinstance(exc, gexc.PreconditionFailed):
            return PreconditionFailed(message)
        if isinstance(exc, gexc.ClientError) and not isinstance(exc, gexc.TooManyRequests):
            return InvalidRequest(message)
        return StoreError(message)
    if isinstance(exc, google.auth.exceptions.TransportError | requests.ConnectionError |
                  requests.Timeout | urllib3.exceptions.HTTPError | ConnectionError):
        return EndpointUnreachable(f"{what}: {type(exc).__name__}")
    if isinstance(exc, google.auth.exceptions.DefaultCredentialsError):
        return AccessDenied(f"{what}: no Google credentials found")
    if isinstance(exc, google.auth.exceptions.GoogleAuthError):
        # RefreshError, OAuthError...: the token endpoint refused the key or the pod token.
        # Never echo its response (it may quote the assertion or token).
        log.error("Google credentials refused: requests fail with EACCES until valid "
                  "credentials arrive", what=what, error=type(exc).__name__)
        return AccessDenied(f"{what}: Google credentials refused ({type(exc).__name__})")
    return StoreError(f"{what}: {type(exc).__name__}: {exc}")


_ERRORS = (gexc.GoogleAPICallError, google.auth.exceptions.GoogleAuthError,
           requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError)


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except _ERRORS as exc:
        raise _translate(exc, what) from exc


def _info(blob: storage.Blob) -> ObjectInfo:
    return ObjectInfo(key=blob.name, size=int(blob.size or 0), etag=str(blob.generation),
                      last_modified=blob.updated)


def _generation(etag: str) -> int:
    try:
        return int(etag)
    except ValueError:
        raise InvalidRequest(f"{etag!r} is not a GCS generation") from None


class GcsStore:
    """An ObjectStore over one GCS bucket."""

    def __init__(self, bucket: str, credentials: google.auth.credentials.Credentials,
                 project: str | None = None, *, endpoint_url: str | None = None,
                 max_pool: int = 16, ca_bundle: str | None = None,
                 user_agent_prefix: str | None = None,
                 timeouts: Timeouts | None = None) -> None:
        """`credentials` are google-auth's (built by driver/connect.py); they refresh
        themselves, re-reading the mount's credentials file where that applies."""
        self.bucket = bucket
        self.timeouts = timeouts or Timeouts()
        self._timeout = (self.timeouts.connect, self.timeouts.read)
        self._retrier = Retrier(self.timeouts, retryable)
        self._suspects = SuspectUploads()
        options = ClientOptions(api_endpoint=endpoint_url) if endpoint_url else None
        client_info = None
        if user_agent_prefix:
            from google.api_core.client_info import ClientInfo

            client_info = ClientInfo(user_agent=user_agent_prefix)
        with _translated(f"bucket {bucket}"):
            self._client = storage.Client(project=project or "<none>", credentials=credentials,
                                          client_options=options, client_info=client_info)
        if ca_bundle:
            self._client._http.verify = ca_bundle  # a requests.Session: trust these CAs
        # One HTTP connection per worker thread, as for S3.
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max_pool)
        self._client._http.mount("https://", adapter)
        self._client._http.mount("http://", adapter)
        instrument_gcs(self._client._http)
        self._bucket = self._client.bucket(bucket)

    def _call(self, what: str, fn: Callable[..., T], *args: Any,
              attempts: Attempts | None = None, **kwargs: Any) -> T:
        """One store call with our retries and timeouts (the library's retries are off)."""
        kwargs.setdefault("timeout", self._timeout)
        kwargs.setdefault("retry", None)
        with _translated(what):
            return self._retrier.call(lambda: fn(*args, **kwargs), attempts)

    def check_bucket(self) -> str | None:
        # Listing one key proves the bucket exists and the credentials may list it.
        try:
            self.list_page("", None, None, 1)
        except NotFound as exc:
            raise BucketNotFound(f"bucket {self.bucket} does not exist") from exc
        return None

    def head(self, key: str) -> ObjectInfo | None:
        blob = self._call(f"HEAD {key}", self._bucket.get_blob, key)
        return None if blob is None else _info(blob)

    def list_page(self, prefix: str, delimiter: str | None = "/", token: str | None = None,
                  max_keys: int = 1000, start_after: str | None = None) -> ListPage:
        kwargs: dict[str, Any] = {"prefix": prefix or None, "delimiter": delimiter,
                                  "page_token": token, "page_size": max_keys,
                                  "timeout": self._timeout, "retry": None}
        if start_after:
            kwargs["start_offset"] = start_after + "\x00"  # start_offset is inclusive

        def one_page() -> ListPage:
            iterator = self._client.list_blobs(self._bucket, **kwargs)
            page = next(iterator.pages, None)
            objects = [_info(blob) for blob in page] if page is not None else []
            prefixes = sorted(page.prefixes) if page is not None else []
            return ListPage(objects, prefixes, iterator.next_page_token or None)

        with _translated(f"LIST {prefix}"):
            return self._retrier.call(one_page)

    def _download(self, blob: storage.Blob, sink: io.BytesIO, start: int, end: int,
                  **precondition: Any) -> None:
        """One media download of bytes [start, end) into `sink`, as stored (no decoding,
        no checksum of a part), unretried: the caller decides what to retry."""
        blob.download_to_file(sink, start=start, end=end - 1, raw_download=True,
                              checksum=None, timeout=self._timeout, retry=None,
                              **precondition)

    def get_first_into(self, key: str, out: memoryview) -> tuple[int, str | None]:
        """Up to len(out) first bytes of `key` into `out`, in one attempt (a guess made
        before the key is known to be a file: never retried); how many, and its ETag."""
        sink = io.BytesIO()
        blob = self._bucket.blob(key)
        with _translated(f"GET {key}"):
            self._download(blob, sink, 0, len(out))
        count = min(sink.tell(), len(out))
        out[:count] = sink.getbuffer()[:count]
        return count, None if blob.generation is None else str(blob.generation)

    def get_range(self, key: str, start: int, end: int, etag: str | None) -> bytes:
        """Bytes [start, end): a read cut mid-body resumes from the first missing byte,
        pinned to the generation (the one asked for, else the first answer's)."""
        if end <= start:
            return b""
        sink = io.BytesIO()
        generation = _generation(etag) if etag else None

        def attempt() -> None:
            nonlocal generation
            got = sink.tell()
            blob = self._bucket.blob(key)
            kwargs: dict[str, Any] = {}
            if generation is not None:
                kwargs["if_generation_match"] = generation
            try:
                self._download(blob, sink, start + got, end, **kwargs)
            finally:
                if generation is None and blob.generation is not None:
                    generation = int(blob.generation)
                elif generation is None and sink.tell() > got:
                    sink.seek(0)  # bytes of an unknown generation: start over, pinned next
                    sink.truncate()
            # Some servers (fake-gcs-server) ignore ifGenerationMatch on media downloads;
            # the generation the response carries (x-goog-generation) is checked too.
            if generation is not None and blob.generation is not None and \
                    int(blob.generation) != generation:
                raise PreconditionFailed(f"GET {key}: object changed since open")
            if sink.tell() < end - start:
                raise IncompleteResponse(
                    f"GET {key}: body ended at {start + sink.tell()} of {end}")

        with _translated(f"GET {key}"):
            self._retrier.call(attempt)
        data = sink.getvalue()
        if len(data) != end - start:
            raise StoreError(f"GET {key}: read {len(data)} of {end - start} bytes")
        return data

    def _upload(self, key: str, data: bytes | memoryview, options: UploadOptions | None,
                metadata: dict[str, str] | None = None) -> storage.Blob:
        blob = self._bucket.blob(key)
        if options is not None and options.storage_class:
            blob.storage_class = options.storage_class
        if options is not None and options.sse_kms_key_id:
            blob.kms_key_name = options.sse_kms_key_id
        if metadata:
            blob.metadata = metadata
        checksum = "crc32c" if options is not None and options.checksum == "crc32c" else None
        content_type = options.content_type if options is not None else None
        self._call(f"PUT {key}", blob.upload_from_string, bytes(data),
                   content_type=content_type or "application/octet-stream", checksum=checksum)
        return blob

    def put(self, key: str, data: bytes, options: UploadOptions) -> str:
        return str(self._upload(key, data, options).generation)

    # -- multipart uploads from composed temporary objects --------------------------------

    @staticmethod
    def _part_name(upload_id: str, number: int | str) -> str:
        return f"{UPLOADS}{upload_id}/{number:05d}" if isinstance(number, int) else \
            f"{UPLOADS}{upload_id}/{number}"

    def create_upload(self, key: str, options: UploadOptions) -> str:
        upload_id = uuid.uuid4().hex
        meta = {"key": key, "storage-class": options.storage_class or "",
                "kms-key": options.sse_kms_key_id or "",
                "content-type": options.content_type or ""}
        began = time.time()
        try:  # a retry rewrites the same marker: nothing to reconcile on success
            self._upload(self._part_name(upload_id, "upload"), b"", None, metadata=meta)
        except StoreError:
            self._suspects.mark(key, began)  # a failed attempt may have written the marker
            raise
        return upload_id

    def reconcile_uploads(self, key: str, since: float) -> int:
        """Abort `key`'s uploads created since `since` if a create of `key` failed."""
        return self._suspects.reconcile(key, since, self._markers, self.abort_upload)

    def upload_part(self, key: str, upload_id: str, number: int, data: Payload,
                    options: UploadOptions) -> PartResult:
        body = joined(data)
        blob = self._upload(self._part_name(upload_id, number), body, options)
        return PartResult(number, str(blob.generation), blob.crc32c, len(body))

    def upload_part_copy(self, key: str, upload_id: str, number: int, source_key: str,
                         start: int, end: int, source_etag: str) -> PartResult:
        if start == 0:
            source = self._call(f"HEAD {source_key}", self._bucket.get_blob, source_key)
            if source is None:
                raise NotFound(f"{source_key} does not exist")
            if str(source.generation) != source_etag:
                raise PreconditionFailed(f"{source_key} changed")
            if int(source.size or 0) == end:  # the whole object: compose it server-side
                part = self._bucket.blob(self._part_name(upload_id, number))
                pinned = self._bucket.blob(source_key, generation=source.generation)
                self._call(f"compose {key}", part.compose, [pinned])  # same name on retry
                return PartResult(number, str(part.generation), size=end)
        data = self.get_range(source_key, start, end, source_etag)
        blob = self._upload(self._part_name(upload_id, number), data, None)
        return PartResult(number, str(blob.generation), size=len(data))

    def _marker(self, upload_id: str) -> storage.Blob:
        blob = self._call(f"upload {upload_id}", self._bucket.get_blob,
                          self._part_name(upload_id, "upload"))
        if blob is None:
            raise NotFound(f"upload {upload_id} does not exist")
        return blob

    def complete_upload(self, key: str, upload_id: str, parts: Sequence[PartResult]) -> str:
        marker = self._marker(upload_id)
        meta = marker.metadata or {}
        ordered = sorted(parts, key=lambda part: part.number)
        sources = [self._bucket.blob(self._part_name(upload_id, part.number),
                                     generation=_generation(part.etag)) for part in ordered]
        intermediates = 0
        while len(sources) > COMPOSE_LIMIT:  # compose in rounds of at most 32 sources
            grouped = []
            for index in range(0, len(sources), COMPOSE_LIMIT):
                intermediates += 1
                target = self._bucket.blob(self._part_name(upload_id, f"c{intermediates:05d}"))
                # A retry recomposes the same sources into the same temporary name.
                self._call(f"compose {key}", target.compose,
                           sources[index:index + COMPOSE_LIMIT])
                grouped.append(target)
            sources = grouped
        final = self._bucket.blob(key)
        final.content_type = meta.get("content-type") or "application/octet-stream"
        if meta.get("storage-class"):
            final.storage_class = meta["storage-class"]
        if meta.get("kms-key"):
            final.kms_key_name = meta["kms-key"]
        if not sources:  # an upload with no parts is an empty object
            generation = self.put(key, b"", UploadOptions())
        else:
            generation = self._compose_final(key, final, sources, ordered)
        self._delete_temporaries(upload_id)
        return generation

    def _compose_final(self, key: str, final: storage.Blob, sources: list[storage.Blob],
                       parts: Sequence[PartResult]) -> str:
        before = self.head(key)
        prior = int(before.etag) if before is not None else 0
        attempts = Attempts()
        try:
            self._call(f"compose {key}", final.compose, sources, attempts=attempts,
                       if_generation_match=prior)
        except StoreError:
            generation = self._reconcile_compose(key, prior, parts)
            if generation is None:
                raise
            log.info("compose of a multipart upload reconciled", key=key)
            return generation
        return str(final.generation)

    def _reconcile_compose(self, key: str, prior: int,
                           parts: Sequence[PartResult]) -> str | None:
        """The key's generation if a lost attempt composed it, else None: a newer
        generation than `prior`, of the parts' total size and component count."""
        try:
            blob = self._call(f"HEAD {key}", self._bucket.get_blob, key)
        except StoreError:
            return None
        if blob is None or int(blob.generation or 0) <= prior:
            return None
        size = sum(part.size or 0 for part in parts)
        if any(part.size is None for part in parts) or int(blob.size or 0) != size:
            return None
        # Composing composites adds up their counts; each part is one component.
        if blob.component_count is not None and blob.component_count != len(parts):
            return None
        return str(blob.generation)

    def _delete_temporaries(self, upload_id: str) -> None:
        page_token: str | None = None
        while True:
            page = self.list_page(f"{UPLOADS}{upload_id}/", None, page_token)
            for info in page.objects:
                with contextlib.suppress(NotFound):
                    self.delete(info.key)
            page_token = page.next_token
            if page_token is None:
                return

    def abort_upload(self, key: str, upload_id: str) -> None:
        self._delete_temporaries(upload_id)

    def list_uploads(self, prefix: str) -> list[tuple[str, str]]:
        return [(key, upload_id) for key, upload_id, _ in self._markers(prefix)]

    def _markers(self, prefix: str) -> list[tuple[str, str, Any]]:
        """(key, upload id, time created) of every upload marker for keys under prefix."""
        found: list[tuple[str, str, Any]] = []
        page_token: str | None = None
        while True:
            def one_page(token: str | None = page_token) -> tuple[list[Any], str | None]:
                iterator = self._client.list_blobs(self._bucket, prefix=UPLOADS,
                                                   page_token=token, timeout=self._timeout,
                                                   retry=None)
                page = next(iterator.pages, None)
                return list(page or ()), iterator.next_page_token

            with _translated(f"ListUploads {prefix}"):
                blobs, page_token = self._retrier.call(one_page)
            for blob in blobs:
                key = (blob.metadata or {}).get("key", "")
                if blob.name.endswith("/upload") and key.startswith(prefix):
                    found.append((key, blob.name[len(UPLOADS):].split("/", 1)[0],
                                  blob.time_created))
            if not page_token:
                return found

    def copy(self, source: ObjectInfo, dest_key: str, options: UploadOptions) -> str:
        pinned = self._bucket.blob(source.key, generation=_generation(source.etag))
        dest = self._bucket.blob(dest_key)
        if options.storage_class:
            dest.storage_class = options.storage_class
        if options.content_type:
            dest.content_type = options.content_type
        token: str | None = None
        with _translated(f"rewrite {source.key} -> {dest_key}"):
            while True:  # GCS may need several rounds for a large object
                token, _, _ = dest.rewrite(pinned, token=token,
                                           if_source_generation_match=_generation(source.etag),
                                           timeout=self._timeout)
                if token is None:
                    return str(dest.generation)

    def delete(self, key: str) -> None:
        with contextlib.suppress(NotFound):  # S3 deletes are idempotent; keep that
            self._call(f"DELETE {key}", self._bucket.delete_blob, key)

    def delete_prefix(self, prefix: str) -> int:
        deleted = 0
        token: str | None = None
        while True:
            page = self.list_page(prefix, delimiter=None, token=token)
            for info in page.objects:
                self.delete(info.key)
                deleted += 1
            token = page.next_token
            if token is None:
                return deleted
