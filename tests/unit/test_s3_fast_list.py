"""The fast ListObjectsV2 parser, alone and inside botocore's pipeline (responses are served
by a `before-send` handler, so signing, retries and error parsing are botocore's own)."""

from __future__ import annotations

from datetime import UTC, datetime

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from driver.store.base import AccessDenied, BucketNotFound, PartResult, StoreError
from driver.store.s3 import S3Store, _parse_list

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


def _result(entries: str, truncated: bool = False, token: str | None = None,
            encoded: bool = True, ns: str = NS) -> bytes:
    extra = f"<NextContinuationToken>{token}</NextContinuationToken>" if token else ""
    encoding = "<EncodingType>url</EncodingType>" if encoded else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult {ns}><Name>b</Name>'
            f"<Prefix>p/</Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>"
            f"<Delimiter>/</Delimiter>{encoding}"
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{entries}{extra}"
            "</ListBucketResult>").encode()


def _entry(key: str, size: int = 3, etag: str = "&quot;abc&quot;") -> str:
    return (f"<Contents><Key>{key}</Key><LastModified>2026-11-30T10:20:30.000Z</LastModified>"
            f"<ETag>{etag}</ETag><Size>{size}</Size><StorageClass>STANDARD</StorageClass>"
            "</Contents>")


def test_parses_objects_prefixes_and_metadata() -> None:
    page = _parse_list(_result(_entry("p/a%26b%3C%C3%A9+x") + _entry("p/plain", 7)
                               + "<CommonPrefixes><Prefix>p/d%20ir/</Prefix></CommonPrefixes>"))
    assert page is not None
    assert [o.key for o in page.objects] == ["p/a&b<\u00e9 x", "p/plain"]
    assert page.objects[1].size == 7 and page.objects[0].etag == '"abc"'
    assert page.objects[0].last_modified == datetime(2026, 11, 30, 10, 20, 30, tzinfo=UTC)
    assert page.prefixes == ["p/d ir/"] and page.next_token is None


def test_xml_escaped_keys_without_url_encoding_are_not_decoded_twice() -> None:
    page = _parse_list(_result(_entry("p/a&amp;b&lt;c%41+d") + _entry("p/\u65e5\u672c"),
                               encoded=False, ns=""))
    assert page is not None
    assert [o.key for o in page.objects] == ["p/a&b<c%41+d", "p/\u65e5\u672c"]


def test_truncated_page_carries_its_token() -> None:
    page = _parse_list(_result(_entry("p/a"), truncated=True, token="tok/en=="))
    assert page is not None and page.next_token == "tok/en=="
    assert _parse_list(_result(_entry("p/a"), truncated=True)) is None  # botocore decides


@pytest.mark.parametrize("body", [
    b"<Error><Code>InternalError</Code><Message>x</Message></Error>",
    b"<ListBucketResult><Contents><Key>trunc",
    b"<ListAllMyBucketsResult/>",
])
def test_anything_but_a_list_result_is_left_to_botocore(body: bytes) -> None:
    assert _parse_list(body) is None


class FakeServer:
    """Answers every request from a queue of (status, body); records what was sent."""

    def __init__(self, *responses: tuple[int, bytes]) -> None:
        self.responses = list(responses)
        self.requests: list = []

    def __call__(self, request, **_: object) -> AWSResponse:
        self.requests.append(request)
        status, body = self.responses.pop(0)
        return AWSResponse(request.url, status, {"Content-Type": "application/xml"},
                           _Raw(body))


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, *_: object, **__: object):
        yield self.body

    def read(self, amount: int | None = None, *_: object) -> bytes:
        amount = len(self.body) if amount is None else amount
        body, self.body = self.body[:amount], self.body[amount:]
        return body

    def readinto(self, buffer: memoryview) -> int:
        data = self.read(min(len(buffer), 100_000))  # short reads, as sockets give them
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.body = b""


def _store(server: FakeServer, **kwargs: object) -> S3Store:
    session = boto3.Session(aws_access_key_id="k", aws_secret_access_key="s")
    store = S3Store("b", session, endpoint_url="http://127.0.0.1:9", region="us-east-1",
                    path_style=True, **kwargs)
    store._client.meta.events.register("before-send.s3.*", server)
    return store


def test_pipeline_signs_and_returns_the_fast_page() -> None:
    server = FakeServer((200, _result(_entry("p/x%2By"), truncated=True, token="t1")))
    page = _store(server, requester_pays=True).list_page("p/")
    assert [o.key for o in page.objects] == ["p/x+y"] and page.next_token == "t1"
    request = server.requests[0]
    assert "Authorization" in request.headers
    assert request.headers["x-amz-request-payer"] in (b"requester", "requester")
    assert "encoding-type=url" in request.url


def test_a_200_with_an_embedded_error_is_retried_by_botocore() -> None:
    error = b"<Error><Code>InternalError</Code><Message>busy</Message></Error>"
    server = FakeServer((200, error), (200, _result(_entry("p/a"))))
    page = _store(server).list_page("p/")
    assert [o.key for o in page.objects] == ["p/a"]
    assert len(server.requests) == 2


def test_a_truncated_body_is_retried_then_reported() -> None:
    server = FakeServer(*[(200, b"<ListBucketResult><Contents><Ke")] * 5)
    with pytest.raises(StoreError):
        _store(server).list_page("p/")
    assert len(server.requests) == 5  # standard mode: the first attempt and 4 retries


@pytest.mark.parametrize(("status", "code", "kind"), [
    (404, "NoSuchBucket", BucketNotFound), (403, "AccessDenied", AccessDenied)])
def test_errors_keep_their_types(status: int, code: str, kind: type) -> None:
    body = f"<Error><Code>{code}</Code><Message>no</Message></Error>".encode()
    with pytest.raises(kind):
        _store(FakeServer((status, body))).list_page("p/")


def test_other_operations_keep_botocores_200_error_check() -> None:
    error = b"<Error><Code>InternalError</Code><Message>busy</Message></Error>"
    done = (b"<CompleteMultipartUploadResult><ETag>&quot;e-2&quot;</ETag>"
            b"</CompleteMultipartUploadResult>")
    server = FakeServer((200, error), (200, done))
    etag = _store(server).complete_upload("k", "upload", [PartResult(1, '"p"')])
    assert etag == '"e-2"'
    assert len(server.requests) == 2  # the embedded error was seen and retried
