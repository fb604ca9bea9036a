"""S3 (and S3-compatible: R2, GCS-HMAC, SeaweedFS, MinIO) through boto3/botocore.

botocore does signing; retries are ours (`driver/store/retry.py`, botocore's are off) so
that every retried request that is not idempotent is reconciled here (see
`driver/store/base.py` for the rules, and the `_reconcile_*` methods below). Ranged GETs
resume from the first missing byte, pinned to the ETag of the first answer. Errors are
translated into the store's error family in `_translate`, the one place that does.
Checksums of whole responses are off (`when_required`): ranged GETs are pinned by ETag
instead, and uploads carry an explicit CRC32C per part when --upload-checksums=crc32c.

The hot requests (GetObject, HeadObject, ListObjectsV2) skip botocore's client pipeline:
`_Direct` signs them with botocore's `S3SigV4Auth` and sends them on the client's own HTTP
session (half the CPU per request; see its docstring). A listing's body is parsed by
`_parse_list` (ElementTree's C parser, far cheaper than botocore's shape-driven one); an
error document or a cut body inside a 200 is retried by its code. Keys are requested
url-encoded (`encoding-type=url`, as botocore does by default) and decoded with botocore's
own function. When the direct path cannot be set up (`_Direct.probe` found something it does
not speak) these requests go through the client, whose ListObjectsV2 200 bodies are still
parsed by `_parse_list` in a `before-parse` handler that hands botocore an empty body, so
neither its parser nor its 200-error check (`_looks_like_special_case_error`, which parses
every body a second time; `_before_parse` runs it for every other response) walks the
1,000 entries again.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import http.client
import socket
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import boto3
import botocore.exceptions
import botocore.handlers
import crc32c
import structlog
from botocore import UNSIGNED
from botocore.auth import UNSIGNED_PAYLOAD, S3SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.compat import unquote_str
from botocore.config import Config
from botocore.hooks import first_non_none_response
from botocore.utils import parse_timestamp, percent_encode, percent_encode_sequence

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
    payload_size,
    pieces,
)
from driver.store.http import Connections
from driver.store.observe import instrument_s3
from driver.store.retry import Attempts, Retrier, SuspectUploads, Timeouts

log = structlog.get_logger()
T = TypeVar("T")
_RETRY_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
    "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequests", "BadDigest",
    "RequestTimeTooSkewed", "IncompleteBody",
}


def retryable(exc: BaseException) -> bool:
    """A failed attempt worth repeating: throttling, 5xx, a connection or body cut."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return code in _RETRY_CODES or status >= 500 or status == 429
    return isinstance(exc, botocore.exceptions.HTTPClientError
                      | botocore.exceptions.ConnectionError
                      | botocore.exceptions.IncompleteReadError
                      | botocore.exceptions.ResponseStreamingError
                      | IncompleteResponse)
MiB = 1024 * 1024
MAX_COPY = 5 * 1024 * MiB  # CopyObject's limit; larger objects are copied part by part
COPY_PART = 1024 * MiB  # part size of a multipart copy (at most 10,000 parts: 10 TiB)

_ACCESS_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AuthorizationHeaderMalformed",
    "InvalidClientTokenId", "UnrecognizedClientException", "403", "Forbidden",
}
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchUpload", "404", "NotFound"}


def _translate(exc: Exception, what: str) -> StoreError:
    """Map a botocore exception to a StoreError; the one exhaustive table for S3."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if exc.operation_name.startswith("AssumeRole"):
            # The default chain's STS exchange (IRSA on the driver) failed: the identity
            # was refused. Its message may quote the token, so only the code is kept.
            return AccessDenied(f"{what}: STS refused the driver's identity ({code})")
        message = f"{what}: {code or status} {error.get('Message', '')}".strip()
        if code == "NoSuchBucket":
            return BucketNotFound(message)
        if code in _ACCESS_CODES or status == 403:
            return AccessDenied(message)
        if code in ("PreconditionFailed", "412") or status == 412:
            return PreconditionFailed(message)
        if code in _NOT_FOUND_CODES or status == 404:
            return NotFound(message)
        if code == "NoCredentialsError":
            return AccessDenied(message)
        if status is not None and 400 <= status < 500:
            return InvalidRequest(message)
        return StoreError(message)
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.
                  PartialCredentialsError):
        return AccessDenied(f"{what}: no credentials found")
    if isinstance(exc, botocore.exceptions.CredentialRetrievalError):
        return AccessDenied(f"{what}: could not obtain credentials ({type(exc).__name__})")
    if isinstance(exc, botocore.exceptions.EndpointConnectionError
                  | botocore.exceptions.ConnectTimeoutError
                  | botocore.exceptions.ReadTimeoutError
                  | botocore.exceptions.ConnectionClosedError):
        return EndpointUnreachable(f"{what}: {exc}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return StoreError(f"{what}: {exc}")
    return StoreError(f"{what}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _translate(exc, what) from exc


def _info(key: str, size: int, etag: str, modified: Any) -> ObjectInfo:
    return ObjectInfo(key=key, size=int(size), etag=etag, last_modified=modified)


READINTO_CHUNK = 256 * 1024


def _read_into(body: Any, out: memoryview, filled: int) -> Iterator[int]:
    """Read `body` into out[filled:] until it ends or `out` is full, yielding each count;
    closes it. In slices: where urllib3 reads (`_Body` without http.client beneath, or the
    client's own StreamingBody) it reads a readinto's whole length into a temporary first,
    and a small one is recycled by malloc where a 16 MiB one would be mapped."""
    try:
        while filled < len(out):
            count = body.readinto(out[filled:filled + READINTO_CHUNK])
            if not count:
                return
            filled += count
            yield count
    finally:
        body.close()


class _Body:
    """A GET's body read from the socket straight into the caller's buffer.

    urllib3's `readinto` reads each slice into a temporary `bytes` and copies it over (15% of
    the FUSE server's GIL samples on a cold sequential read, the copy under the GIL);
    the `http.client` response beneath it (urllib3 keeps it as `_fp`) fills the buffer with
    `recv_into`, the GIL released. Should a urllib3 release not have it, urllib3 reads.
    Failures are botocore's, as `StreamingBody` raises them: `ReadTimeoutError` for a
    socket timeout, `ResponseStreamingError` for a cut (both retried).
    """

    def __init__(self, raw: Any, url: str) -> None:
        self._raw = raw  # urllib3's HTTPResponse (botocore asks it not to decode)
        fp = getattr(raw, "_fp", None)
        self._fp = fp if isinstance(fp, http.client.HTTPResponse) else None
        self._url = url

    def readinto(self, out: memoryview) -> int:
        if self._fp is None:
            return int(self._raw.readinto(out))
        try:
            return self._fp.readinto(out)
        except TimeoutError as exc:
            raise botocore.exceptions.ReadTimeoutError(endpoint_url=self._url,
                                                       error=exc) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise botocore.exceptions.ResponseStreamingError(error=exc) from exc

    def close(self) -> None:
        if self._fp is not None and self._fp.isclosed():
            self._raw.release_conn()  # read to its end: the connection serves the next GET
        self._raw.close()  # otherwise it is dropped with the unread rest


_PAGE = "CloudbucketListPage"  # where the handler leaves the parsed page in the response


def _timestamp(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)  # S3's ISO 8601 ("...T12:00:00.000Z"), in C
    except ValueError:
        return parse_timestamp(text)  # anything else botocore accepts


def _decode(value: str) -> str:
    # botocore decodes EncodingType=url with unquote_plus; skip it when nothing is encoded.
    return unquote_str(value) if "%" in value or "+" in value else value


def _parse_list(body: bytes) -> ListPage | None:
    """A ListObjectsV2 result body as a ListPage; None when it is not one (botocore decides)."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None
    tag = root.tag
    ns = tag[:tag.index("}") + 1] if tag.startswith("{") else ""
    if tag != ns + "ListBucketResult":
        return None
    contents, common, key_tag, size_tag = ns + "Contents", ns + "CommonPrefixes", \
        ns + "Key", ns + "Size"
    etag_tag, modified_tag, prefix_tag = ns + "ETag", ns + "LastModified", ns + "Prefix"
    encoded = root.findtext(ns + "EncodingType") == "url"
    objects: list[ObjectInfo] = []
    prefixes: list[str] = []
    for child in root:
        if child.tag == contents:
            key = child.findtext(key_tag) or ""
            modified = child.findtext(modified_tag)
            objects.append(ObjectInfo(
                _decode(key) if encoded else key, int(child.findtext(size_tag) or 0),
                child.findtext(etag_tag) or "", _timestamp(modified) if modified else None))
        elif child.tag == common:
            prefix = child.findtext(prefix_tag) or ""
            prefixes.append(_decode(prefix) if encoded else prefix)
    truncated = (root.findtext(ns + "IsTruncated") or "").strip().lower() == "true"
    token = root.findtext(ns + "NextContinuationToken") if truncated else None
    if truncated and not token:
        return None  # a truncated page without a token: botocore's parser reports it
    return ListPage(objects, prefixes, token)


# botocore's check for S3 errors embedded in 200 responses parses every body once more. It is
# registered first on "before-parse.s3.*", ahead of any handler we could add, so on our
# client it is replaced by `_before_parse`, which runs it for everything but the list pages
# it has parsed itself.
_check_200_error: Callable[..., None] | None = getattr(botocore.handlers, "_handle_200_error",
                                                       None)


def _before_parse(operation_model: Any, response_dict: dict[str, Any],
                  customized_response_dict: dict[str, Any], **kwargs: Any) -> None:
    """before-parse.s3.*: parse a ListObjectsV2 200 body here and hide it from botocore."""
    body = response_dict.get("body")
    if operation_model.name == "ListObjectsV2" and response_dict.get("status_code") == 200 \
            and isinstance(body, bytes) and body:
        page = _parse_list(body)
        if page is not None:
            customized_response_dict[_PAGE] = page
            response_dict["body"] = b""
            return
    if _check_200_error is not None:
        _check_200_error(operation_model=operation_model, response_dict=response_dict,
                         customized_response_dict=customized_response_dict, **kwargs)


def _install_fast_list(client: Any) -> None:
    events = client.meta.events  # this client's own copy of the session's handlers
    if _check_200_error is not None:
        events.unregister("before-parse.s3.*", _check_200_error)
    events.register_first("before-parse.s3.*", _before_parse)


@dataclass(frozen=True)
class ClientSettings:
    """mount-s3's client flags, as the S3 client applies them."""

    unsigned: bool = False  # --no-sign-request: anonymous requests
    ca_bundle: str | None = None  # PEM file: the CAs trusted for the endpoint's TLS
    expected_bucket_owner: str | None = None  # sent as x-amz-expected-bucket-owner
    user_agent_prefix: str | None = None
    accelerate: bool = False
    dual_stack: bool = False
    bind_interface: str | None = None  # SO_BINDTODEVICE on every connection


def client_config(max_pool: int, path_style: bool, timeouts: Timeouts | None = None,
                  settings: ClientSettings | None = None) -> Config:
    settings = settings or ClientSettings()
    timeouts = timeouts or Timeouts()
    s3: dict[str, Any] = {"addressing_style": "path" if path_style else "auto"}
    if settings.accelerate:
        s3["use_accelerate_endpoint"] = True
    extra: dict[str, Any] = {}
    if settings.unsigned:
        extra["signature_version"] = UNSIGNED
    if settings.dual_stack:
        extra["use_dualstack_endpoint"] = True
    return Config(
        max_pool_connections=max_pool,
        s3=s3,
        retries={"mode": "standard", "total_max_attempts": 1},  # retries are ours
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
        tcp_keepalive=True,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        **extra,
    )


def _apply_settings(client: Any, settings: ClientSettings) -> None:
    """What botocore's Config cannot say: headers on every request, a bound interface."""
    owner, prefix = settings.expected_bucket_owner, settings.user_agent_prefix
    if owner or prefix:
        def add_headers(request: Any, **_: Any) -> None:
            if owner:
                request.headers["x-amz-expected-bucket-owner"] = owner
            if prefix:
                agent = request.headers.get("User-Agent", "")
                agent = agent.decode() if isinstance(agent, bytes) else agent
                request.headers["User-Agent"] = f"{prefix} {agent}".strip()

        # before-sign: the headers are part of what SigV4 signs (and sent unsigned too).
        client.meta.events.register("before-sign.s3", add_headers)
    if settings.bind_interface:
        # botocore has no public knob for socket options; its URLLib3Session keeps them
        # in `_socket_options`, applied to every new connection of every pool.
        session = getattr(getattr(client, "_endpoint", None), "http_session", None)
        options = getattr(session, "_socket_options", None)
        if not isinstance(options, list):
            raise InvalidRequest("bind: this botocore cannot bind connections to an "
                                 "interface")
        options.append((socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                        settings.bind_interface.encode()))


def detect_region(session: boto3.Session, bucket: str, endpoint_url: str | None,
                  config: Config) -> str | None:
    """The bucket's region from HeadBucket's x-amz-bucket-region (also sent with a 301)."""
    client = session.client("s3", region_name="us-east-1", endpoint_url=endpoint_url,
                            config=config)
    instrument_s3(client)
    try:
        response = client.head_bucket(Bucket=bucket)
        headers = response["ResponseMetadata"]["HTTPHeaders"]
    except botocore.exceptions.ClientError as exc:
        headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        if "x-amz-bucket-region" not in headers:
            raise _translate(exc, f"bucket {bucket}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise _translate(exc, f"bucket {bucket}") from exc
    return headers.get("x-amz-bucket-region")


_CHECKSUM_HEADER = "x-amz-checksum-crc32c"


class _PiecewiseSigV4Auth(S3SigV4Auth):
    """botocore's S3 signer, hashing a body given as pieces (hashlib releases the GIL on
    each) rather than as one buffer or file. Its rule for the payload hash is kept: over
    https with a checksum header the payload is UNSIGNED-PAYLOAD (TLS and the CRC32C protect
    it); otherwise it is signed, since over plain http only the signature stops a changed
    body."""

    def payload(self, request: AWSRequest) -> str:
        body = request.body
        if not isinstance(body, list):
            return str(super().payload(request))  # no body, or botocore's own kinds
        if request.url.startswith("https") and _CHECKSUM_HEADER in request.headers:
            return UNSIGNED_PAYLOAD
        digest = hashlib.sha256()
        for piece in body:
            digest.update(piece)
        return digest.hexdigest()


class _Direct:
    """GetObject, HeadObject, ListObjectsV2 without botocore's client pipeline, on its parts.

    Why: a profile of small-file reads put ~55% of the FUSE server's samples in botocore's
    per-request pipeline (parameter validation, endpoint rules, the handler chain, response
    parsing): ~1.1 ms of CPU per 4 KiB GET on the test machine, against ~0.55 ms for the same
    request signed by botocore's `S3SigV4Auth` and sent on the client's own `URLLib3Session`.
    So what a user configures still applies as botocore does it: the endpoint, addressing
    style, region and the headers the client adds (User-Agent prefix, expected bucket owner,
    requester pays) are read once from a HeadObject the client builds for a probe key and
    never sends; TLS, CA bundle, proxies, pool size, timeouts and a bound interface are the
    session's settings. GET, HEAD and LIST go on connections made from them
    (`driver/store/http.py`, 40% less CPU per request than the session's urllib3 pool),
    unless the session would use a proxy or a client certificate. The client's
    `before-send` / `response-received` events are emitted for each request (the store
    metrics and the unit tests' stub servers hang on them), and a failure
    is raised as the `ClientError` botocore would raise, so `_translate` and `retryable`
    remain the one error table. The listing's URL and query encoding are botocore's too (a
    probe ListObjectsV2, never sent).
    UploadPart goes this way too, for its body: the client turns a part into a file object
    and copies it twice more (reading it back in 1 MiB pieces to hash it, and in 128 KiB
    pieces to send it; 23% of the FUSE server's GIL samples on a 1 GiB write, with the join
    of the writes into one part another 24%). Here the part is sent as the writes that made
    it and hashed piece by piece (`_PiecewiseSigV4Auth`), so the bytes pyfuse3 handed over
    are the ones the socket sends. Everything else (PUT, create/complete, copy, delete) stays on
    the client: those requests are few per byte moved.
    """

    PROBE_KEY = "cloudbucket-csi-probe"
    _STATIC_HEADERS = ("User-Agent", "x-amz-expected-bucket-owner", "x-amz-request-payer")

    def __init__(self, client: Any, prefix: str, list_url: str, headers: dict[str, str],
                 region: str | None) -> None:
        self._events = client.meta.events
        self._http = client._endpoint.http_session
        self._credentials = client._request_signer._credentials
        self._prefix = prefix  # + the url-encoded key: an object's URL
        self._list_url = list_url  # the bucket's URL for ListObjectsV2, without a query
        self._headers = headers
        self._region = region  # None: unsigned (--no-sign-request)
        # GET, HEAD and LIST on connections of our own (driver/store/http.py: less CPU per
        # request than the session); None: the session sends them too (e.g. via a proxy).
        self._connections = Connections.of(self._http, prefix)

    @classmethod
    def probe(cls, client: Any, bucket: str, payer: dict[str, str]) -> _Direct | None:
        """Read what the client would send; None (keep the client) when anything is odd."""
        seen: dict[str, tuple[str, dict[str, Any]]] = {}

        def capture(request: Any, event_name: str, **_: Any) -> AWSResponse:
            seen[event_name.rsplit(".", 1)[-1]] = (request.url, dict(request.headers))
            return AWSResponse(request.url, 200, {"Content-Length": "0", "ETag": '"p"'},
                               _EmptyBody())

        events = client.meta.events
        events.register_first("before-send.s3", capture, unique_id="cb-probe")
        try:
            client.head_object(Bucket=bucket, Key=cls.PROBE_KEY, **payer)
            with contextlib.suppress(botocore.exceptions.BotoCoreError):
                client.list_objects_v2(Bucket=bucket, MaxKeys=1, **payer)  # parses b""
            url, sent = seen["HeadObject"]
            if not url.endswith("/" + cls.PROBE_KEY) or "?" in url:
                return None
            headers = {name: _text(value) for name, value in sent.items()
                       if name in cls._STATIC_HEADERS}
            auth = _text(sent.get("Authorization", ""))
            region = None
            if auth:
                scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
                if not auth.startswith("AWS4-HMAC-SHA256 ") or \
                        scope[3:] != ["s3", "aws4_request"]:
                    return None  # a signer this path does not speak (e.g. SigV4a)
                region = scope[2]
            list_url = seen["ListObjectsV2"][0].split("?", 1)[0] if "ListObjectsV2" in seen \
                else ""
            direct = cls(client, url[:-len(cls.PROBE_KEY)], list_url, headers, region)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, KeyError,
                IndexError, AttributeError):
            return None
        finally:
            events.unregister("before-send.s3", unique_id="cb-probe")
        return direct  # region None: the client signs nothing (--no-sign-request)

    @property
    def lists(self) -> bool:
        return bool(self._list_url)

    def list(self, params: dict[str, str]) -> bytes:
        """One ListObjectsV2 attempt: the body of a 200 (parsed by `_parse_list`)."""
        url = f"{self._list_url}?{percent_encode_sequence({'list-type': '2', **params})}"
        return self.send("ListObjectsV2", "GET", "", {}, url=url).content

    def upload_part(self, key: str, upload_id: str, number: int, data: Payload,
                    checksum: str | None) -> str:
        """One UploadPart attempt; the part's ETag."""
        query = percent_encode_sequence({"partNumber": str(number), "uploadId": upload_id})
        headers = {"Content-Length": str(payload_size(data))}
        if checksum is not None:
            headers[_CHECKSUM_HEADER] = checksum
        body = list(pieces(data))
        url = f"{self._prefix}{percent_encode(key, safe='/~')}?{query}"
        return str(self.send("UploadPart", "PUT", key, headers, url=url, body=body)
                   .headers["ETag"])

    def send(self, op: str, method: str, key: str, headers: dict[str, str],
             url: str | None = None, body: list[bytes | memoryview] | None = None
             ) -> AWSResponse:
        """One attempt; the response of a 2xx, else the ClientError botocore would raise.
        `body`: sent piece by piece (urllib3 sends an iterable as it is; Content-Length is
        in `headers`)."""
        # stream_output: the session leaves an object's body to the caller's readinto (and
        # reads any other itself, which gives its connection back to the pool).
        request = AWSRequest(method, url or self._prefix + percent_encode(key, safe="/~"),
                             headers={**self._headers, **headers}, data=body,
                             stream_output=op == "GetObject")
        if self._region is not None:
            _PiecewiseSigV4Auth(self._credentials.get_frozen_credentials(), "s3",
                                self._region).add_auth(request)
        prepared = request.prepare()
        response = None
        try:
            response = first_non_none_response(
                self._events.emit(f"before-send.s3.{op}", request=prepared))
            if response is None and body is None and self._connections is not None:
                response = self._connections.send(method, prepared.url, prepared.headers,
                                                  stream=op == "GetObject")
            elif response is None:
                response = self._http.send(prepared)
        finally:
            received = None if response is None else {
                "status_code": response.status_code, "headers": response.headers}
            self._events.emit(f"response-received.s3.{op}", exception=None,
                              response_dict=received, parsed_response=None, context={})
        if response.status_code >= 300:
            raise self._error(op, method, response)
        return response

    @staticmethod
    def _error(op: str, method: str, response: AWSResponse) -> botocore.exceptions.ClientError:
        body = b"" if method == "HEAD" else response.content
        code, message = _error_code(body)
        return botocore.exceptions.ClientError(
            {"Error": {"Code": code or str(response.status_code), "Message": message},
             "ResponseMetadata": {"HTTPStatusCode": response.status_code,
                                  "HTTPHeaders": dict(response.headers)}}, op)

    @staticmethod
    def error_in(body: bytes, op: str) -> Exception:
        """What a 200 whose body is not the expected result means: an S3 error document
        (S3 may send one with 200: retried by its code) or a body cut short (retried)."""
        code, message = _error_code(body)
        if code:
            return botocore.exceptions.ClientError(
                {"Error": {"Code": code, "Message": message},
                 "ResponseMetadata": {"HTTPStatusCode": 200}}, op)
        return IncompleteResponse(f"{op}: the response body is not a complete result")


def _error_code(body: bytes) -> tuple[str, str]:
    """(Code, Message) of an S3 error document; empty strings when it is not one."""
    with contextlib.suppress(ElementTree.ParseError):
        if body:
            root = ElementTree.fromstring(body)
            if root.tag.rsplit("}", 1)[-1] == "Error":
                return root.findtext("Code") or "", root.findtext("Message") or ""
    return "", ""


class _EmptyBody:
    def stream(self, *_: object, **__: object) -> Iterator[bytes]:
        yield b""

    def read(self, *_: object) -> bytes:
        return b""


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class S3Store:
    """An ObjectStore over one S3 bucket."""

    def __init__(self, bucket: str, session: boto3.Session, *, endpoint_url: str | None = None,
                 region: str | None = None, path_style: bool = False,
                 requester_pays: bool = False, max_pool: int = 16,
                 settings: ClientSettings | None = None,
                 timeouts: Timeouts | None = None) -> None:
        self.bucket = bucket
        settings = settings or ClientSettings()
        self.timeouts = timeouts or Timeouts()
        self._retrier = Retrier(self.timeouts, retryable)
        self._config = client_config(max_pool, path_style, self.timeouts, settings=settings)
        self._session = session
        self._endpoint_url = endpoint_url
        verify: str | None = settings.ca_bundle
        if region is None and endpoint_url is None:
            region = detect_region(session, bucket, None, self._config)
        self.region = region or "us-east-1"
        self._client = session.client("s3", region_name=self.region, endpoint_url=endpoint_url,
                                      config=self._config, verify=verify)
        _install_fast_list(self._client)
        _apply_settings(self._client, settings)
        self._payer: dict[str, str] = {"RequestPayer": "requester"} if requester_pays else {}
        self._direct = _Direct.probe(self._client, bucket, self._payer)  # before metrics hooks
        instrument_s3(self._client)
        # key -> earliest time.time() a create of it was retried or failed (see
        # reconcile_uploads).
        self._suspects = SuspectUploads()

    def _call(self, what: str, fn: Callable[..., T], attempts: Attempts | None = None,
              **kwargs: Any) -> T:
        with _translated(what):
            return self._retrier.call(lambda: fn(Bucket=self.bucket, **kwargs), attempts)

    def check_bucket(self) -> str | None:
        # ListObjectsV2 proves both that the bucket exists and that we may list it.
        self._call(f"bucket {self.bucket}", self._client.list_objects_v2, MaxKeys=1,
                   **self._payer)
        return self.region

    def head(self, key: str) -> ObjectInfo | None:
        try:
            if self._direct is None:
                response = self._call(f"HEAD {key}", self._client.head_object, Key=key,
                                      **self._payer)
                return _info(key, response["ContentLength"], response["ETag"],
                             response.get("LastModified"))
            direct = self._direct
            with _translated(f"HEAD {key}"):
                answer = self._retrier.call(lambda: direct.send("HeadObject", "HEAD", key, {}))
        except NotFound:
            return None
        headers = answer.headers
        modified = headers.get("Last-Modified")
        return _info(key, int(headers.get("Content-Length", 0)), headers.get("ETag", ""),
                     parse_timestamp(modified) if modified else None)

    def list_page(self, prefix: str, delimiter: str | None = "/", token: str | None = None,
                  max_keys: int = 1000, start_after: str | None = None) -> ListPage:
        # (botocore's name, the query's name, value); EncodingType given explicitly, so
        # botocore too leaves decoding to `_parse_list`.
        asked = [("Prefix", "prefix", prefix), ("MaxKeys", "max-keys", max_keys),
                 ("EncodingType", "encoding-type", "url"), ("Delimiter", "delimiter", delimiter),
                 ("ContinuationToken", "continuation-token", token),
                 ("StartAfter", "start-after", start_after)]
        asked = [(name, query, value) for name, query, value in asked
                 if value or name in ("Prefix", "MaxKeys")]
        kwargs: dict[str, Any] = {name: value for name, _, value in asked} | self._payer
        if self._direct is not None and self._direct.lists:
            params = {query: str(value) for _, query, value in asked}
            direct = self._direct

            def attempt() -> ListPage:
                body = direct.list(params)
                listed = _parse_list(body)
                if listed is None:  # an error inside a 200, or a cut or truncated page
                    raise _Direct.error_in(body, "ListObjectsV2")
                return listed

            with _translated(f"LIST {prefix}"):
                return self._retrier.call(attempt)
        response = self._call(f"LIST {prefix}", self._client.list_objects_v2, **kwargs)
        page = response.get(_PAGE)
        if isinstance(page, ListPage):
            return page
        # botocore parsed it (a body `_parse_list` declined); keys are still url-encoded.
        encoded = response.get("EncodingType") == "url"

        def decode(value: str) -> str:
            return _decode(value) if encoded else value

        objects = [
            _info(decode(item["Key"]), item["Size"], item.get("ETag", ""),
                  item.get("LastModified"))
            for item in response.get("Contents", ())
        ]
        prefixes = [decode(item["Prefix"]) for item in response.get("CommonPrefixes", ())]
        next_token = response.get("NextContinuationToken") if response.get("IsTruncated") \
            else None
        return ListPage(objects, prefixes, next_token)

    def _get(self, key: str, start: int, end: int, etag: str | None) -> dict[str, Any]:
        if self._direct is not None:
            headers = {"Range": f"bytes={start}-{end - 1}"}
            if etag:
                headers["If-Match"] = etag
            answer = self._direct.send("GetObject", "GET", key, headers)
            response: dict[str, Any] = {"ETag": answer.headers.get("ETag"),
                                        "Body": _Body(answer.raw, answer.url)}
        else:
            kwargs: dict[str, Any] = {"Key": key, "Range": f"bytes={start}-{end - 1}",
                                      **self._payer}
            if etag:
                kwargs["IfMatch"] = etag
            response = self._client.get_object(Bucket=self.bucket, **kwargs)
        # Some stores ignore If-Match on ranged GETs; the response ETag is checked too.
        if etag and response.get("ETag") and response["ETag"] != etag:
            response["Body"].close()
            raise PreconditionFailed(f"GET {key}: object changed since open")
        return response

    def get_range(self, key: str, start: int, end: int, etag: str | None) -> bytes:
        if end <= start:
            return b""
        out = bytearray(end - start)
        self.get_range_into(key, start, end, etag, memoryview(out))
        return bytes(out) if len(out) < READINTO_CHUNK else out  # type: ignore[return-value]

    def get_range_into(self, key: str, start: int, end: int, etag: str | None,
                       out: memoryview) -> None:
        """Bytes [start, end) of `key` into `out` (a buffer of end - start bytes). A GET
        cut mid-body resumes from the first missing byte, pinned to the ETag of the first
        answer, until the operation's deadline."""
        if end <= start:
            return
        filled = 0
        pinned = etag

        def attempt() -> None:
            nonlocal filled, pinned
            response = self._get(key, start + filled, end, pinned)
            pinned = pinned or response.get("ETag")
            for count in _read_into(response["Body"], out, filled):
                filled += count  # kept per slice: a cut resumes from here
            if filled < end - start:
                raise IncompleteResponse(f"GET {key}: body ended at {start + filled} of {end}")

        with _translated(f"GET {key}"):
            self._retrier.call(attempt)

    def get_first_into(self, key: str, out: memoryview) -> tuple[int, str | None]:
        """Up to len(out) first bytes of `key` into `out`, in one attempt (a guess made
        before the key is known to be a file: never retried); how many, and its ETag."""
        with _translated(f"GET {key}"):
            response = self._get(key, 0, len(out), None)
            filled = sum(_read_into(response["Body"], out, 0))
        return filled, response.get("ETag")

    def _object_kwargs(self, options: UploadOptions) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(self._payer)
        if options.storage_class:
            kwargs["StorageClass"] = options.storage_class
        if options.sse:
            kwargs["ServerSideEncryption"] = options.sse
        if options.sse_kms_key_id:
            kwargs["SSEKMSKeyId"] = options.sse_kms_key_id
        if options.checksum == "crc32c":
            kwargs["ChecksumAlgorithm"] = "CRC32C"
        if options.content_type:
            kwargs["ContentType"] = options.content_type
        return kwargs

    def put(self, key: str, data: bytes, options: UploadOptions) -> str:
        kwargs = self._object_kwargs(options)
        if options.checksum == "crc32c":
            kwargs.pop("ChecksumAlgorithm")
            kwargs["ChecksumCRC32C"] = crc32c_b64(data)
        response = self._call(f"PUT {key}", self._client.put_object, Key=key, Body=data,
                              **kwargs)
        return str(response["ETag"])

    def create_upload(self, key: str, options: UploadOptions) -> str:
        began = time.time()
        attempts = Attempts()
        try:
            response = self._call(f"CreateMultipartUpload {key}",
                                  self._client.create_multipart_upload, attempts, Key=key,
                                  **self._object_kwargs(options))
        except StoreError:
            self._suspects.mark(key, began)  # an attempt may have created an upload
            raise
        if attempts.count > 1:
            self._suspects.mark(key, began)  # an earlier attempt may have created one too
        return str(response["UploadId"])

    def reconcile_uploads(self, key: str, since: float) -> int:
        """Abort `key`'s uploads initiated since `since` if one of its creates was retried."""
        return self._suspects.reconcile(key, since, self._uploads_of, self.abort_upload)

    def _uploads_of(self, key: str) -> list[tuple[str, str, Any]]:
        found: list[tuple[str, str, Any]] = []
        kwargs: dict[str, Any] = {"Prefix": key}
        while True:
            response = self._call(f"ListMultipartUploads {key}",
                                  self._client.list_multipart_uploads, **kwargs)
            found += [(item["Key"], item["UploadId"], item.get("Initiated"))
                      for item in response.get("Uploads", ())]
            if not response.get("IsTruncated"):
                return found
            kwargs.update(KeyMarker=response.get("NextKeyMarker", ""),
                          UploadIdMarker=response.get("NextUploadIdMarker", ""))

    def upload_part(self, key: str, upload_id: str, number: int, data: Payload,
                    options: UploadOptions) -> PartResult:
        checksum = crc32c_b64(data) if options.checksum == "crc32c" else None
        what = f"UploadPart {key} #{number}"
        direct = self._direct
        if direct is not None:
            with _translated(what):
                etag = self._retrier.call(
                    lambda: direct.upload_part(key, upload_id, number, data, checksum))
            return PartResult(number, etag, checksum, payload_size(data))
        kwargs: dict[str, Any] = dict(self._payer)
        if checksum is not None:
            kwargs["ChecksumCRC32C"] = checksum
        body = joined(data)
        response = self._call(what, self._client.upload_part, Key=key, UploadId=upload_id,
                              PartNumber=number,
                              Body=bytes(body) if isinstance(body, memoryview) else body,
                              **kwargs)
        return PartResult(number, str(response["ETag"]), checksum, len(body))

    def upload_part_copy(self, key: str, upload_id: str, number: int, source_key: str,
                         start: int, end: int, source_etag: str) -> PartResult:
        response = self._call(
            f"UploadPartCopy {key} #{number}", self._client.upload_part_copy, Key=key,
            UploadId=upload_id, PartNumber=number,
            CopySource={"Bucket": self.bucket, "Key": source_key},
            CopySourceRange=f"bytes={start}-{end - 1}", CopySourceIfMatch=source_etag,
            **self._payer,
        )
        result = response["CopyPartResult"]
        # With a checksummed upload the copied part's checksum must be listed at completion.
        return PartResult(number, str(result["ETag"]), result.get("ChecksumCRC32C"),
                          end - start)

    def complete_upload(self, key: str, upload_id: str, parts: Sequence[PartResult]) -> str:
        listed = []
        for part in parts:
            entry: dict[str, Any] = {"PartNumber": part.number, "ETag": part.etag}
            if part.checksum_crc32c:
                entry["ChecksumCRC32C"] = part.checksum_crc32c
            listed.append(entry)
        try:
            response = self._call(f"CompleteMultipartUpload {key}",
                                  self._client.complete_multipart_upload, Key=key,
                                  UploadId=upload_id, MultipartUpload={"Parts": listed},
                                  **self._payer)
        except StoreError:
            # NoSuchUpload on a retry, or no answer within the deadline: an attempt may
            # have completed the upload. It did exactly when the object is the one these
            # parts make (same ETag, or same size and part count).
            if (etag := self._reconcile_complete(key, parts)) is not None:
                log.info("complete of a multipart upload reconciled", key=key)
                return etag
            raise
        return str(response["ETag"])

    def _reconcile_complete(self, key: str, parts: Sequence[PartResult]) -> str | None:
        """The object's ETag if it is the object `parts` complete to, else None."""
        try:
            head = self._call(f"HEAD {key}", self._client.head_object, Key=key,
                              **self._payer)
        except StoreError:
            return None
        etag = str(head.get("ETag", ""))
        expected = multipart_etag(parts)
        if expected is not None:
            return etag if etag == expected else None
        # Part ETags are not MD5s (SSE-KMS): compare the size and the number of parts.
        size = sum(part.size or 0 for part in parts)
        if any(part.size is None for part in parts) or head.get("ContentLength") != size:
            return None
        try:
            first = self._call(f"HEAD {key}", self._client.head_object, Key=key,
                               PartNumber=1, **self._payer)
        except StoreError:
            return None
        return etag if first.get("PartsCount") == len(parts) else None

    def abort_upload(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(NotFound):
            self._call(f"AbortMultipartUpload {key}", self._client.abort_multipart_upload,
                       Key=key, UploadId=upload_id, **self._payer)

    def list_uploads(self, prefix: str) -> list[tuple[str, str]]:
        response = self._call(f"ListMultipartUploads {prefix}",
                              self._client.list_multipart_uploads, Prefix=prefix)
        return [(item["Key"], item["UploadId"]) for item in response.get("Uploads", ())]

    def copy(self, source: ObjectInfo, dest_key: str, options: UploadOptions) -> str:
        if source.size > MAX_COPY:
            return self._copy_multipart(source, dest_key, options)
        kwargs = self._object_kwargs(options)
        kwargs.pop("ChecksumAlgorithm", None)  # a server-side copy moves no bytes of ours
        if "ContentType" in kwargs:
            kwargs["MetadataDirective"] = "REPLACE"
        response = self._call(f"CopyObject {source.key} -> {dest_key}",
                              self._client.copy_object, Key=dest_key,
                              CopySource={"Bucket": self.bucket, "Key": source.key},
                              CopySourceIfMatch=source.etag, **kwargs)
        return _quoted(str(response["CopyObjectResult"]["ETag"]))

    def _copy_multipart(self, source: ObjectInfo, dest_key: str, options: UploadOptions) -> str:
        """Above 5 GiB: UploadPartCopy ranges of the source into a multipart upload, so the
        destination appears only at completion; any failure aborts it."""
        upload_id = self.create_upload(dest_key, options)
        try:
            parts = [
                self.upload_part_copy(dest_key, upload_id, number, source.key, start,
                                      min(source.size, start + COPY_PART), source.etag)
                for number, start in enumerate(range(0, source.size, COPY_PART), start=1)
            ]
            return self.complete_upload(dest_key, upload_id, parts)
        except BaseException:
            self.abort_upload(dest_key, upload_id)
            raise

    def delete(self, key: str) -> None:
        with contextlib.suppress(NotFound):  # gone already (a retry after a lost reply)
            self._call(f"DELETE {key}", self._client.delete_object, Key=key, **self._payer)

    def delete_prefix(self, prefix: str) -> int:
        deleted = 0
        token: str | None = None
        while True:
            page = self.list_page(prefix, delimiter=None, token=token)
            keys = [{"Key": info.key} for info in page.objects]
            if keys:
                response = self._call(f"DeleteObjects {prefix}", self._client.delete_objects,
                                      Delete={"Objects": keys, "Quiet": True}, **self._payer)
                if response.get("Errors"):
                    first = response["Errors"][0]
                    raise StoreError(f"DeleteObjects {prefix}: {first.get('Code')} on "
                                     f"{first.get('Key')}")
                deleted += len(keys)
            token = page.next_token
            if token is None:
                return deleted


def multipart_etag(parts: Sequence[PartResult]) -> str | None:
    """S3's ETag of a completed multipart upload: MD5 of the parts' binary MD5s, "-N";
    None when a part ETag is not an MD5 (SSE-KMS, some S3-compatible stores)."""
    digests = []
    for part in sorted(parts, key=lambda item: item.number):
        text = part.etag.strip('"')
        if len(text) != 32:
            return None
        try:
            digests.append(binascii.unhexlify(text))
        except binascii.Error:
            return None
    return f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'  # noqa: S324


def _quoted(etag: str) -> str:
    """ETags as HEAD/GET send them, in quotes (some stores leave them off CopyObject's)."""
    return etag if etag.startswith(('"', 'W/"')) else f'"{etag}"'


def crc32c_b64(data: Payload) -> str:
    crc = 0
    for piece in pieces(data):
        crc = crc32c.crc32c(piece, value=crc)  # any buffer, no copy
    return base64.b64encode(crc.to_bytes(4, "big")).decode()
