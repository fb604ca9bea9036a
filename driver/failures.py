"""Failure kinds: what went wrong, as data that crosses every process boundary.

A FUSE server that cannot start, or a supervisor request that fails, reports a `Failure`
(`{kind, message}`): the kind comes from the exception's class through `KINDS`, the one
table from exceptions to kinds; the message is for people only. Each boundary has one
table from kinds to its own codes: `driver/services/node.py` (gRPC status codes) and
`driver/cli.py` (the one-line error of `cloudbucket-csi mount`). Nothing ever decides what
a failure means from its wording.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from driver.credentials.source import CredentialsError
from driver.options import OptionError
from driver.store import base as store


class FailureKind(StrEnum):
    ACCESS_DENIED = "access_denied"  # credentials refused, or unusable
    BUCKET_NOT_FOUND = "bucket_not_found"
    UNREACHABLE = "unreachable"  # endpoint (or the supervisor) cannot be reached
    INVALID_OPTION = "invalid_option"  # a request or option the server refuses
    BUSY = "busy"  # the target is in use: something else is mounted there
    PENDING = "pending"  # unmounted, but the server is still finishing uploads: retry
    NOT_MOUNTED = "not_mounted"  # no server serves that target
    TIMEOUT = "timeout"  # a server did not become ready in time
    FAILED = "failed"  # anything else


# Exception class -> kind. Checked in order with isinstance, so subclasses come first.
KINDS: tuple[tuple[type[BaseException], FailureKind], ...] = (
    (store.BucketNotFound, FailureKind.BUCKET_NOT_FOUND),
    (store.AccessDenied, FailureKind.ACCESS_DENIED),
    (CredentialsError, FailureKind.ACCESS_DENIED),
    (store.EndpointUnreachable, FailureKind.UNREACHABLE),
    (store.InvalidRequest, FailureKind.INVALID_OPTION),
    (OptionError, FailureKind.INVALID_OPTION),
    (TimeoutError, FailureKind.TIMEOUT),
)


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "message": self.message}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Failure:
        try:
            kind = FailureKind(data.get("kind"))
        except ValueError:  # a newer peer's kind we do not know: still a failure
            kind = FailureKind.FAILED
        return cls(kind, str(data.get("message", "")))


def kind_of(exc: BaseException) -> FailureKind:
    for cls, kind in KINDS:
        if isinstance(exc, cls):
            return kind
    return FailureKind.FAILED


class FailureError(Exception):
    """A `Failure` raised: what the supervisor's clients see."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure

    @property
    def kind(self) -> FailureKind:
        return self.failure.kind

    @property
    def message(self) -> str:
        return self.failure.message


# A server's one report (ready, or why not) through a pipe, read by whoever started it.


def pipe_reporter(fd: int) -> Callable[[Failure | None], None]:
    """Report through a pipe as one JSON line: {"ready": true} or {"failure": {...}}."""
    state = {"fd": fd}

    def report(failure: Failure | None) -> None:
        if state["fd"] < 0:
            return
        message = {"ready": True} if failure is None else {"failure": failure.to_dict()}
        try:
            os.write(state["fd"], json.dumps(message).encode() + b"\n")
        finally:
            os.close(state["fd"])
            state["fd"] = -1

    return report


def parse_report(data: bytes) -> Failure | None:
    """The inverse of `pipe_reporter`: None for ready; a Failure otherwise (EOF included)."""
    text = data.decode(errors="replace").strip()
    if not text:
        return Failure(FailureKind.FAILED, "the FUSE server exited before reporting")
    try:
        message = json.loads(text)
    except ValueError:
        return Failure(FailureKind.FAILED, "the FUSE server sent an unreadable report")
    if isinstance(message, dict) and message.get("ready") is True:
        return None
    failure = message.get("failure") if isinstance(message, dict) else None
    return Failure.from_dict(failure if isinstance(failure, dict) else {})
