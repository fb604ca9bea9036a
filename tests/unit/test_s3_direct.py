"""GetObject/HeadObject sent without botocore's client pipeline (`s3._Direct`): what goes on
the wire is what the client would send, and failures mean what they meant through it."""

from __future__ import annotations

import base64
import hashlib

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from driver.store.base import AccessDenied, NotFound, PartResult, PreconditionFailed, UploadOptions
from driver.store.retry import Timeouts
from driver.store.s3 import ClientSettings, S3Store, crc32c_b64
from tests.unit.test_s3_fast_list import _Raw
from tests.unit.test_store_settings import session, text


class Server:
    """Answers from a queue of (status, headers, body) and records every request."""

    def __init__(self, *answers: tuple[int, dict[str, str], bytes]) -> None:
        self.answers = list(answers)
        self.requests: list = []

    def __call__(self, request, **_: object) -> AWSResponse:
        self.requests.append(request)
        status, headers, body = self.answers.pop(0)
        return AWSResponse(request.url, status, {"Content-Length": str(len(body)), **headers},
                           _Raw(body))

    def headers(self, index: int) -> dict[str, str]:
        return {k.lower(): text(v) for k, v in self.requests[index].headers.items()}


def _store(server: Server, **kwargs) -> S3Store:
    store = S3Store("bkt", session(), region="eu-west-3",
                    timeouts=Timeouts(total=5, base_delay=0.001), **kwargs)
    assert store._direct is not None
    store._client.meta.events.register("before-send.s3", server)
    return store


def _error(code: str) -> bytes:
    return f"<Error><Code>{code}</Code><Message>m</Message></Error>".encode()


def test_a_get_carries_what_the_client_would_sign_and_send():
    server = Server((206, {"ETag": '"e1"'}, b"bcd"))
    store = _store(server, requester_pays=True, settings=ClientSettings(
        expected_bucket_owner="123456789012", user_agent_prefix="my-app/1.0"))
    assert store.get_range("dir/a b+c~é", 1, 4, '"e1"') == b"bcd"
    request = server.requests[0]
    # Virtual-hosted style in the bucket's region, the key encoded as botocore encodes it.
    assert request.url == "https://bkt.s3.eu-west-3.amazonaws.com/dir/a%20b%2Bc~%C3%A9"
    headers = server.headers(0)
    assert headers["range"] == "bytes=1-3" and headers["if-match"] == '"e1"'
    assert headers["x-amz-request-payer"] == "requester"
    assert headers["x-amz-expected-bucket-owner"] == "123456789012"
    assert headers["user-agent"].startswith("my-app/1.0 ")
    auth = headers["authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-3/s3/aws4_request" in auth
    for signed in ("host", "range", "if-match", "x-amz-expected-bucket-owner",
                   "x-amz-request-payer", "x-amz-date"):
        assert signed in auth.split("SignedHeaders=")[1].split(",")[0]


def test_head_reads_size_etag_and_date_and_a_404_is_absent():
    server = Server((200, {"ETag": '"e2"', "Content-Length": "42",
                           "Last-Modified": "Tue, 01 Dec 2026 10:00:00 GMT"}, b""),
                    (404, {}, b""))
    store = _store(server)
    info = store.head("k")
    assert info is not None and (info.size, info.etag) == (42, '"e2"')
    assert info.last_modified is not None and info.last_modified.year == 2026
    assert store.head("missing") is None
    assert [r.method for r in server.requests] == ["HEAD", "HEAD"]


@pytest.mark.parametrize(("status", "code", "error"), [
    (404, "NoSuchKey", NotFound), (403, "AccessDenied", AccessDenied),
    (403, "SignatureDoesNotMatch", AccessDenied), (412, "PreconditionFailed",
                                                    PreconditionFailed),
])
def test_get_failures_keep_their_meaning(status, code, error):
    store = _store(Server((status, {}, _error(code))))
    with pytest.raises(error, match=code):
        store.get_range("k", 0, 10, None)


def test_throttling_and_5xx_are_retried():
    server = Server((503, {}, _error("SlowDown")), (500, {}, _error("InternalError")),
                    (206, {"ETag": '"e"'}, b"ok"))
    assert _store(server).get_range("k", 0, 2, None) == b"ok"
    assert len(server.requests) == 3


def test_no_sign_request_sends_no_signature_on_the_direct_path_either():
    server = Server((206, {"ETag": '"e"'}, b"x"))
    store = S3Store("bkt", boto3.Session(region_name="us-east-1"), region="us-east-1",
                    settings=ClientSettings(unsigned=True))
    assert store._direct is not None
    store._client.meta.events.register("before-send.s3", server)
    assert store.get_range("k", 0, 1, None) == b"x"
    assert "authorization" not in server.headers(0)


def test_path_style_custom_endpoint():
    server = Server((206, {"ETag": '"e"'}, b"x"))
    store = S3Store("bkt", session(), endpoint_url="http://127.0.0.1:9", region="us-east-1",
                    path_style=True)
    store._client.meta.events.register("before-send.s3", server)
    store.get_range("a/b", 0, 1, None)
    assert server.requests[0].url == "http://127.0.0.1:9/bkt/a/b"


def test_a_listing_is_a_signed_get_of_the_bucket_url_with_botocores_query():
    page = (b"<ListBucketResult><Contents><Key>p/a%2Bb</Key><Size>3</Size><ETag>\"e\"</ETag>"
            b"</Contents><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
            b"<NextContinuationToken>t 2</NextContinuationToken></ListBucketResult>")
    server = Server((200, {}, page))
    store = S3Store("bkt", session(), endpoint_url="http://127.0.0.1:9", region="us-east-1",
                    path_style=True)
    store._client.meta.events.register("before-send.s3", server)
    listed = store.list_page("p/ x", token="t 1", max_keys=7)
    assert [o.key for o in listed.objects] == ["p/a+b"] and listed.next_token == "t 2"
    url = server.requests[0].url
    assert url.startswith("http://127.0.0.1:9/bkt?")
    query = dict(item.split("=", 1) for item in url.split("?", 1)[1].split("&"))
    assert query == {"list-type": "2", "prefix": "p%2F%20x", "max-keys": "7",
                     "encoding-type": "url", "delimiter": "%2F", "continuation-token": "t%201"}
    assert "AWS4-HMAC-SHA256" in server.headers(0)["authorization"]


PIECES = [b"ab", memoryview(b"zcdef")[1:], b"x"]  # writes as Upload hands them over


def test_the_crc32c_of_pieces_is_the_standard_check_value_of_their_bytes():
    # 0xE3069283 is CRC-32C's published check value for "123456789" (RFC 3720, B.4).
    expected = base64.b64encode(bytes.fromhex("e3069283")).decode()
    assert crc32c_b64(b"123456789") == expected
    assert crc32c_b64([b"12", memoryview(b"x3456789")[1:5], bytearray(b"789")]) == expected


def test_a_part_is_sent_as_its_pieces_with_its_checksum_and_unsigned_only_over_tls():
    server = Server((200, {"ETag": '"p3"'}, b""))
    store = _store(server)
    result = store.upload_part("dir/k", "up 1", 3, PIECES, UploadOptions(checksum="crc32c"))
    assert result == PartResult(3, '"p3"', crc32c_b64(b"abcdefx"), 7)
    request = server.requests[0]
    assert request.method == "PUT"
    assert request.url == ("https://bkt.s3.eu-west-3.amazonaws.com/dir/k"
                           "?partNumber=3&uploadId=up%201")
    assert [bytes(piece) for piece in request.body] == [b"ab", b"cdef", b"x"]  # not joined
    headers = server.headers(0)
    assert headers["content-length"] == "7"
    assert headers["x-amz-checksum-crc32c"] == crc32c_b64(b"abcdefx")
    assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"  # TLS + CRC32C, as botocore
    assert "x-amz-content-sha256" in headers["authorization"]


@pytest.mark.parametrize("endpoint, checksum", [("http://127.0.0.1:9", "crc32c"),
                                                 (None, None)])
def test_a_part_is_signed_with_the_hash_of_its_pieces_over_http_or_without_a_checksum(
        endpoint, checksum):
    server = Server((200, {"ETag": '"p1"'}, b""))
    store = _store(server, endpoint_url=endpoint) if endpoint else _store(server)
    store.upload_part("k", "u", 1, PIECES, UploadOptions(checksum=checksum))
    headers = server.headers(0)
    assert headers["x-amz-content-sha256"] == hashlib.sha256(b"abcdefx").hexdigest()
    assert ("x-amz-checksum-crc32c" in headers) == (checksum is not None)


def test_a_part_upload_is_retried_and_its_failures_keep_their_meaning():
    server = Server((500, {}, _error("InternalError")), (200, {"ETag": '"p"'}, b""))
    store = _store(server)
    assert store.upload_part("k", "u", 1, PIECES, UploadOptions()).etag == '"p"'
    assert len(server.requests) == 2
    assert [bytes(p) for p in server.requests[1].body] == [b"ab", b"cdef", b"x"]  # resent whole
    with pytest.raises(NotFound, match="NoSuchUpload"):
        _store(Server((404, {}, _error("NoSuchUpload")))).upload_part(
            "k", "u", 1, PIECES, UploadOptions())
