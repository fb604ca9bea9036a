"""S3 (and S3-compatible: R2, GCS-HMAC, SeaweedFS, MinIO) through boto3/botocore.

botocore does signing and retries (standard mode); this module only maps requests and
translates errors into the store's error family, in `_translate`, the one place that does.
Checksums of whole responses are off (`when_required`): ranged GETs are pinned by ETag
instead, and uploads carry an explicit CRC32C per part when --upload-checksums=crc32c.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import boto3
import botocore.exceptions
from botocore.config import Config

from driver.store.base import (
    AccessDenied,
    BucketNotFound,
    EndpointUnreachable,
    InvalidRequest,
    ListPage,
    NotFound,
    ObjectInfo,
    PartResult,
    PreconditionFailed,
    StoreError,
    UploadOptions,
)
from driver.store.observe import instrument_s3

T = TypeVar("T")

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


def client_config(max_pool: int, path_style: bool, connect_timeout: float = 5) -> Config:
    return Config(
        max_pool_connections=max_pool,
        s3={"addressing_style": "path" if path_style else "auto"},
        retries={"mode": "standard", "max_attempts": 4},
        connect_timeout=connect_timeout,
        read_timeout=60,
        tcp_keepalive=True,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


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


class S3Store:
    """An ObjectStore over one S3 bucket."""

    def __init__(self, bucket: str, session: boto3.Session, *, endpoint_url: str | None = None,
                 region: str | None = None, path_style: bool = False,
                 requester_pays: bool = False, max_pool: int = 16) -> None:
        self.bucket = bucket
        self._config = client_config(max_pool, path_style)
        self._session = session
        self._endpoint_url = endpoint_url
        if region is None and endpoint_url is None:
            region = detect_region(session, bucket, None, self._config)
        self.region = region or "us-east-1"
        self._client = session.client("s3", region_name=self.region, endpoint_url=endpoint_url,
                                      config=self._config)
        instrument_s3(self._client)
        self._payer: dict[str, str] = {"RequestPayer": "requester"} if requester_pays else {}

    def _call(self, what: str, fn: Callable[..., T], **kwargs: Any) -> T:
        with _translated(what):
            return fn(Bucket=self.bucket, **kwargs)

    def check_bucket(self) -> str | None:
        # ListObjectsV2 proves both that the bucket exists and that we may list it.
        self._call(f"bucket {self.bucket}", self._client.list_objects_v2, MaxKeys=1,
                   **self._payer)
        return self.region

    def head(self, key: str) -> ObjectInfo | None:
        try:
            response = self._call(f"HEAD {key}", self._client.head_object, Key=key,
                                  **self._payer)
        except NotFound:
            return None
        return _info(key, response["ContentLength"], response["ETag"],
                     response.get("LastModified"))

    def list_page(self, prefix: str, delimiter: str | None = "/", token: str | None = None,
                  max_keys: int = 1000, start_after: str | None = None) -> ListPage:
        kwargs: dict[str, Any] = {"Prefix": prefix, "MaxKeys": max_keys, **self._payer}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            kwargs["ContinuationToken"] = token
        if start_after:
            kwargs["StartAfter"] = start_after
        response = self._call(f"LIST {prefix}", self._client.list_objects_v2, **kwargs)
        objects = [
            _info(item["Key"], item["Size"], item.get("ETag", ""), item.get("LastModified"))
            for item in response.get("Contents", ())
        ]
        prefixes = [item["Prefix"] for item in response.get("CommonPrefixes", ())]
        next_token = response.get("NextContinuationToken") if response.get("IsTruncated") \
            else None
        return ListPage(objects, prefixes, next_token)

    def get_range(self, key: str, start: int, end: int, etag: str | None) -> bytes:
        if end <= start:
            return b""
        kwargs: dict[str, Any] = {"Key": key, "Range": f"bytes={start}-{end - 1}", **self._payer}
        if etag:
            kwargs["IfMatch"] = etag
        with _translated(f"GET {key}"):
            response = self._client.get_object(Bucket=self.bucket, **kwargs)
            body = response["Body"]
            try:
                data = body.read()
            finally:
                body.close()
        # Some stores ignore If-Match on ranged GETs; the response ETag is checked too.
        if etag and response.get("ETag") and response["ETag"] != etag:
            raise PreconditionFailed(f"GET {key}: object changed since open")
        if len(data) != end - start:
            raise StoreError(f"GET {key}: short read ({len(data)} of {end - start} bytes)")
        return data

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
        response = self._call(f"CreateMultipartUpload {key}",
                              self._client.create_multipart_upload, Key=key,
                              **self._object_kwargs(options))
        return str(response["UploadId"])

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes | memoryview,
                    options: UploadOptions) -> PartResult:
        kwargs: dict[str, Any] = dict(self._payer)
        checksum = None
        if options.checksum == "crc32c":
            checksum = kwargs["ChecksumCRC32C"] = crc32c_b64(data)
        response = self._call(f"UploadPart {key} #{number}", self._client.upload_part,
                              Key=key, UploadId=upload_id, PartNumber=number,
                              Body=bytes(data) if isinstance(data, memoryview) else data,
                              **kwargs)
        return PartResult(number, str(response["ETag"]), checksum)

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
        return PartResult(number, str(result["ETag"]), result.get("ChecksumCRC32C"))

    def complete_upload(self, key: str, upload_id: str, parts: Sequence[PartResult]) -> str:
        listed = []
        for part in parts:
            entry: dict[str, Any] = {"PartNumber": part.number, "ETag": part.etag}
            if part.checksum_crc32c:
                entry["ChecksumCRC32C"] = part.checksum_crc32c
            listed.append(entry)
        response = self._call(f"CompleteMultipartUpload {key}",
                              self._client.complete_multipart_upload, Key=key,
                              UploadId=upload_id, MultipartUpload={"Parts": listed},
                              **self._payer)
        return str(response["ETag"])

    def abort_upload(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(NotFound):
            self._call(f"AbortMultipartUpload {key}", self._client.abort_multipart_upload,
                       Key=key, UploadId=upload_id, **self._payer)

    def list_uploads(self, prefix: str) -> list[tuple[str, str]]:
        response = self._call(f"ListMultipartUploads {prefix}",
                              self._client.list_multipart_uploads, Prefix=prefix)
        return [(item["Key"], item["UploadId"]) for item in response.get("Uploads", ())]

    def delete(self, key: str) -> None:
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


def crc32c_b64(data: bytes | memoryview) -> str:
    import google_crc32c  # a dependency of google-cloud-storage; C implementation

    return base64.b64encode(google_crc32c.value(bytes(data)).to_bytes(4, "big")).decode()
