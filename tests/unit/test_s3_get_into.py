"""S3Store.get_range_into: fills the caller's buffer, pinned to the ETag, never short."""

from __future__ import annotations

import pytest
from botocore.awsrequest import AWSResponse

from driver.store.base import PreconditionFailed, StoreError
from tests.unit.test_s3_fast_list import _Raw, _store


class RangeServer:
    def __init__(self, body: bytes, etag: str = '"e1"', short: int = 0) -> None:
        self.body, self.etag, self.short = body, etag, short
        self.headers: list[dict] = []

    def __call__(self, request, **_: object) -> AWSResponse:
        self.headers.append(dict(request.headers))
        byte_range = request.headers["Range"]  # bytes from botocore's client, str direct
        byte_range = byte_range.decode() if isinstance(byte_range, bytes) else byte_range
        first, last = byte_range.removeprefix("bytes=").split("-")
        data = self.body[int(first):int(last) + 1]
        data = data[:len(data) - self.short]
        return AWSResponse(request.url, 206, {"ETag": self.etag,
                                              "Content-Length": str(len(data))}, _Raw(data))


def test_fills_the_buffer_exactly_with_if_match() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: several readinto slices
    server = RangeServer(body)
    out = bytearray(700_001)
    _store(server).get_range_into("k", 5, 700_006, '"e1"', memoryview(out))
    assert out == body[5:700_006]
    assert server.headers[0]["If-Match"] in (b'"e1"', '"e1"')


def test_a_changed_object_or_a_short_body_is_an_error() -> None:
    with pytest.raises(PreconditionFailed):
        _store(RangeServer(b"x" * 100, etag='"other"')).get_range_into(
            "k", 0, 10, '"e1"', memoryview(bytearray(10)))
    with pytest.raises(StoreError):
        _store(RangeServer(b"x" * 100, short=3)).get_range_into(
            "k", 0, 10, '"e1"', memoryview(bytearray(10)))
