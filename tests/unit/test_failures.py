"""Failure kinds: from the exception's class to the gRPC code and the CLI exit status, in
one table each; rewording a message changes no code."""

from __future__ import annotations

import grpc
import pytest

from driver.cli import exit_status
from driver.credentials.gcs import GcsCredentialsError
from driver.credentials.source import CredentialsError
from driver.failures import Failure, FailureError, FailureKind, kind_of, parse_report
from driver.fuseserver import failure_for
from driver.mounts.protocol import failure_reply, parse_reply
from driver.options import MountOptions, OptionError
from driver.services.node import _FAILURE_CODES, csi_error
from driver.store import base as store

CASES = [
    (store.AccessDenied("403 AccessDenied"), FailureKind.ACCESS_DENIED,
     grpc.StatusCode.PERMISSION_DENIED, 3),
    (CredentialsError("web_identity needs a role"), FailureKind.ACCESS_DENIED,
     grpc.StatusCode.PERMISSION_DENIED, 3),
    (GcsCredentialsError("unsupported type"), FailureKind.ACCESS_DENIED,
     grpc.StatusCode.PERMISSION_DENIED, 3),
    (store.BucketNotFound("NoSuchBucket"), FailureKind.BUCKET_NOT_FOUND,
     grpc.StatusCode.NOT_FOUND, 4),
    (store.EndpointUnreachable("refused"), FailureKind.UNREACHABLE,
     grpc.StatusCode.UNAVAILABLE, 5),
    (OptionError("uid", "not a number"), FailureKind.INVALID_OPTION,
     grpc.StatusCode.INVALID_ARGUMENT, 2),
    (TimeoutError("slow"), FailureKind.TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED, 7),
    (store.StoreError("500 InternalError"), FailureKind.FAILED, grpc.StatusCode.INTERNAL, 1),
    (RuntimeError("anything else"), FailureKind.FAILED, grpc.StatusCode.INTERNAL, 1),
]


@pytest.mark.parametrize(("exc", "kind", "code", "status"), CASES)
def test_each_kind_reaches_its_grpc_code_and_exit_status(exc, kind, code, status) -> None:
    failure = failure_for(exc, "bucket", MountOptions())
    assert failure.kind is kind_of(exc) is kind
    # Across the supervisor's wire (JSON) and the node service's one table.
    with pytest.raises(FailureError) as raised:
        parse_reply(failure_reply(failure))
    assert raised.value.kind is kind
    assert csi_error(raised.value, "mounting").code is code
    assert exit_status(kind) == status


@pytest.mark.parametrize(("exc", "kind", "code", "status"), CASES)
def test_rewording_a_message_changes_no_code(exc, kind, code, status) -> None:
    for words in ("", "ACCESS DENIED does not exist is not reachable", "mountpoint x busy"):
        reworded = OptionError(words, words) if isinstance(exc, OptionError) \
            else type(exc)(words)
        failure = failure_for(reworded, "bucket", MountOptions())
        assert failure.kind is kind
        assert csi_error(FailureError(Failure(kind, words)), "x").code is code


def test_every_kind_has_a_grpc_code_and_unknown_kinds_are_failures() -> None:
    assert set(_FAILURE_CODES) == set(FailureKind)
    assert Failure.from_dict({"kind": "from-a-newer-peer", "message": "m"}).kind is \
        FailureKind.FAILED


def test_the_readiness_report_round_trips() -> None:
    import os

    from driver.failures import pipe_reporter

    for failure in (None, Failure(FailureKind.BUCKET_NOT_FOUND, "bucket b does not exist")):
        read_fd, write_fd = os.pipe()
        pipe_reporter(write_fd)(failure)
        with os.fdopen(read_fd, "rb") as pipe:
            assert parse_report(pipe.read()) == failure
    assert parse_report(b"").kind is FailureKind.FAILED  # died before reporting
