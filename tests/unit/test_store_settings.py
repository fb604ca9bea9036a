"""mount-s3's client flags as the S3 client sends them (requests captured before sending)."""

from __future__ import annotations

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from driver.connect import _pem_file, ca_bundle_file
from driver.options import OptionError
from driver.store.s3 import ClientSettings, S3Store

EMPTY_LIST = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>bkt</Name>'
              b"<KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>")


class _Response:
    def __init__(self) -> None:
        self.status_code = 200
        self.headers = {}
        self.content = EMPTY_LIST

    def stream(self):
        yield EMPTY_LIST


def capture(store: S3Store) -> list:
    sent: list = []

    def before_send(request, **_):
        sent.append(request)
        return AWSResponse(request.url, 200, {}, _Response())

    store._client.meta.events.register("before-send.s3", before_send)
    return sent


def text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def session() -> boto3.Session:
    return boto3.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
                         region_name="us-east-1")


def test_expected_owner_and_user_agent_prefix_are_on_every_request():
    store = S3Store("bkt", session(), region="us-east-1", settings=ClientSettings(
        expected_bucket_owner="123456789012", user_agent_prefix="my-app/1.0"))
    sent = capture(store)
    store.check_bucket()
    store.list_page("")
    assert len(sent) == 2
    for request in sent:
        headers = {key.lower(): text(value) for key, value in request.headers.items()}
        assert headers["x-amz-expected-bucket-owner"] == "123456789012"
        assert headers["user-agent"].startswith("my-app/1.0 ")
        # Signed: the owner header is part of what SigV4 covers.
        assert "x-amz-expected-bucket-owner" in headers["authorization"]


def test_no_sign_request_sends_no_signature():
    store = S3Store("bkt", boto3.Session(region_name="us-east-1"), region="us-east-1",
                    settings=ClientSettings(unsigned=True))
    sent = capture(store)
    store.check_bucket()
    assert "Authorization" not in sent[0].headers


@pytest.mark.parametrize(("settings", "host"), [
    (ClientSettings(accelerate=True), "bkt.s3-accelerate.amazonaws.com"),
    (ClientSettings(dual_stack=True), "bkt.s3.dualstack.us-east-1.amazonaws.com"),
])
def test_acceleration_and_dual_stack_endpoints(settings, host):
    store = S3Store("bkt", session(), region="us-east-1", settings=settings)
    sent = capture(store)
    store.check_bucket()
    assert sent[0].url.startswith(f"https://{host}/")


def test_bind_sets_the_socket_option_of_every_connection():
    import socket

    store = S3Store("bkt", session(), region="us-east-1",
                    settings=ClientSettings(bind_interface="lo"))
    options = store._client._endpoint.http_session._socket_options
    assert (socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo") in options


def test_ca_bundle_inline_pem_is_held_in_memory_not_on_disk(tmp_path, monkeypatch):
    import os
    import stat
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    path = ca_bundle_file(pem)
    assert path is not None and path.startswith("/proc/self/fd/")
    try:
        with open(path) as handle:  # what OpenSSL does with a cafile path
            assert handle.read() == pem
        assert os.readlink(path).startswith("/memfd:")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert list(tmp_path.iterdir()) == []
        assert ca_bundle_file(pem) == path  # one descriptor per bundle, not per store opened
    finally:
        os.close(int(path.rsplit("/", 1)[1]))
        _pem_file.cache_clear()
    with pytest.raises(OptionError) as caught:
        ca_bundle_file(str(tmp_path / "missing.pem"))
    assert caught.value.field == "ca-bundle"
