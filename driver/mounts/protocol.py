"""The supervisor's wire protocol: typed, versioned JSON messages over a unix socket.

Two boundaries use it:
- node plugin -> supervisor (a root-only 0600 socket): one request per connection, one
  reply. Requests are the dataclasses below, sent as `{"version", "op", ...fields}`;
  replies are `{"version", "ok": true, ...}` or `{"version", "ok": false, "failure":
  {"kind", "message"}}`, the failure built from the exception's class (driver/failures.py).
- supervisor -> zygote -> FUSE server: a `ServerRequest` with the /dev/fuse descriptor
  beside it as SCM_RIGHTS. It names the credentials file, never the secrets themselves.

Nothing here is argv: a message is parsed once, into its dataclass, and a field of the
wrong type is refused by name. A peer speaking another `VERSION` is refused, not guessed at.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from driver.credentials.source import Credentials
from driver.failures import Failure, FailureError, FailureKind
from driver.options import MountOptions, OptionError

VERSION = 1
MAX_MESSAGE = 1 << 20
# Names inside a server's own directory (its descriptor travels with the ServerRequest).
CREDENTIALS_FILE = "credentials.json"
METRICS_SOCKET = "metrics.sock"


class ProtocolError(FailureError):
    """A malformed or incompatible message: an invalid request."""

    def __init__(self, message: str) -> None:
        super().__init__(Failure(FailureKind.INVALID_OPTION, message))


def _typed(cls: type, data: Mapping[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check plain fields against their annotated types (str, int, bool, dict)."""
    simple = {"str": str, "int": int, "bool": bool, "dict[str, str]": dict,
              "str | None": (str, type(None)), "int | None": (int, type(None))}
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{cls.__name__}: field {f.name} is missing")
            continue
        value = data[f.name]
        expected = simple.get(str(f.type))
        if expected is not None and (not isinstance(value, expected) or
                                     (expected is int and isinstance(value, bool))):
            raise ProtocolError(f"{cls.__name__}: field {f.name} must be {f.type}")
        out[f.name] = value
    return out


# ------------------------------------------------------------------- node plugin requests


@dataclass(frozen=True)
class MountRequest:
    op: ClassVar[str] = "mount"
    volume_id: str
    target: str
    bucket: str
    options: MountOptions
    credentials: Credentials = field(repr=False)
    labels: dict[str, str] = field(default_factory=dict)  # pod namespace/name, for metrics


@dataclass(frozen=True)
class UnmountRequest:
    op: ClassVar[str] = "unmount"
    target: str
    terminate: bool = False  # signal a server that does not exit after the unmount


@dataclass(frozen=True)
class CheckRequest:
    op: ClassVar[str] = "check"
    target: str


@dataclass(frozen=True)
class UpdateCredentialsRequest:
    op: ClassVar[str] = "update_credentials"
    target: str
    credentials: Credentials = field(repr=False)


@dataclass(frozen=True)
class ListRequest:
    op: ClassVar[str] = "list"
    probe: bool = True  # stat each mount (health); False: from the records alone


@dataclass(frozen=True)
class PingRequest:
    op: ClassVar[str] = "ping"


Request = (MountRequest | UnmountRequest | CheckRequest | UpdateCredentialsRequest |
           ListRequest | PingRequest)
REQUESTS: dict[str, type] = {cls.op: cls for cls in (
    MountRequest, UnmountRequest, CheckRequest, UpdateCredentialsRequest, ListRequest,
    PingRequest)}


def encode_request(request: Request) -> dict[str, Any]:
    data: dict[str, Any] = {"version": VERSION, "op": request.op}
    for f in dataclasses.fields(request):
        value = getattr(request, f.name)
        if isinstance(value, MountOptions):
            value = value.to_dict()
        elif isinstance(value, Credentials):
            value = dataclasses.asdict(value)
        data[f.name] = value
    return data


def decode_request(data: Any) -> Request:
    if not isinstance(data, dict):
        raise ProtocolError("a request must be a JSON object")
    if data.get("version") != VERSION:
        raise ProtocolError(f"protocol version {data.get('version')!r} is not {VERSION}")
    cls = REQUESTS.get(data.get("op"))  # type: ignore[arg-type]
    if cls is None:
        raise ProtocolError(f"unknown op {data.get('op')!r}")
    values = _typed(cls, data, skip=("options", "credentials"))
    if "options" in {f.name for f in dataclasses.fields(cls)}:
        try:
            values["options"] = MountOptions.from_dict(_object(data, "options"))
        except (OptionError, TypeError) as exc:
            raise ProtocolError(f"options: {exc}") from None
    if "credentials" in {f.name for f in dataclasses.fields(cls)}:
        values["credentials"] = _credentials(_object(data, "credentials"))
    return cls(**values)  # type: ignore[no-any-return]


def _object(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    if not isinstance(value, dict):
        raise ProtocolError(f"field {name} must be an object")
    return value


def _credentials(data: dict[str, Any]) -> Credentials:
    known = {f.name for f in dataclasses.fields(Credentials)}
    unknown = set(data) - known
    if unknown:
        raise ProtocolError(f"credentials: unknown fields {sorted(unknown)}")
    try:
        return Credentials(**data)
    except TypeError:
        raise ProtocolError("credentials: bad fields") from None


# ------------------------------------------------------------------------------ replies


@dataclass(frozen=True)
class ServerStatus:
    """What the supervisor knows about one target's FUSE server (no secrets)."""

    target: str
    volume_id: str
    ok: bool
    message: str
    pid: int = 0
    uid: int = 0
    bucket: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # pod_namespace, pod_name
    metrics_socket: str = ""  # where the server serves its /metrics (a unix socket)


def ok_reply(**fields: Any) -> dict[str, Any]:
    return {"version": VERSION, "ok": True, **fields}


def failure_reply(failure: Failure) -> dict[str, Any]:
    return {"version": VERSION, "ok": False, "failure": failure.to_dict()}


def parse_reply(data: Any) -> dict[str, Any]:
    """The reply's fields; raises FailureError for a failure reply."""
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ProtocolError("the supervisor answered with another protocol version")
    if not data.get("ok"):
        failure = data.get("failure")
        raise FailureError(Failure.from_dict(failure if isinstance(failure, dict) else {}))
    return data


def status_from(data: Any) -> ServerStatus:
    if not isinstance(data, dict):
        raise ProtocolError("status must be an object")
    return ServerStatus(**_typed(ServerStatus, data))


# --------------------------------------------------------------------------- transport


def send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    if len(data) > MAX_MESSAGE:
        raise ProtocolError("message too large")
    sock.sendall(data + b"\n")


def recv_message(sock: socket.socket) -> Any:
    """One newline-terminated JSON message (None at end of stream)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_MESSAGE:
            raise ProtocolError("message too large")
        if chunk.endswith(b"\n"):
            break
    data = b"".join(chunks)
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        raise ProtocolError("a message is not JSON") from None


# ------------------------------------------------------------ supervisor -> FUSE server


@dataclass(frozen=True)
class ServerRequest:
    """What a forked FUSE server is told. Beside it travel the /dev/fuse descriptor, its
    readiness pipe, its log and its own directory (CREDENTIALS_FILE, METRICS_SOCKET)."""

    volume_id: str
    target: str  # for logs only: the server serves the descriptor it was given
    bucket: str
    options: MountOptions
    uid: int  # the server's own identity, from the reserved range
    gid: int

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["options"] = self.options.to_dict()
        return {"version": VERSION, **data}

    @classmethod
    def from_dict(cls, data: Any) -> ServerRequest:
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ProtocolError("server request of another protocol version")
        values = _typed(cls, data, skip=("options",))
        try:
            values["options"] = MountOptions.from_dict(_object(data, "options"))
        except (OptionError, TypeError) as exc:
            raise ProtocolError(f"options: {exc}") from None
        return cls(**values)
