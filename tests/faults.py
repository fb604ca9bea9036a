"""A seeded fault-injecting HTTP proxy for tests, in front of SeaweedFS or fake-gcs-server.

Each client connection is served by one thread, one request at a time (the stores'
clients do not pipeline): the request is read whole (Content-Length or chunked body;
`Expect: 100-continue` is answered by the proxy), then a fault is chosen for it, then,
unless the fault says otherwise, it is forwarded on a fresh upstream connection
(`Connection: close`) and the whole reply is read before it is relayed byte for byte.
Reading the reply first is what lets the proxy drop a reply the store has already acted
on, the fault that non-idempotent retries must survive.

Faults (`FAULTS`): "503" (SlowDown / Service Unavailable) and "500" answered by the proxy
without forwarding; "reset-before" (connection reset, request never forwarded);
"reset-after" (forwarded, the store answered, the reply is dropped and the connection
reset); "cut" (forwarded, the reply's head and half its body are relayed, then reset);
"stall" (forwarded, the reply held back until the client gives up or `stall_seconds`
pass). Choice: with probability `rate` per request matching `match`, one of `kinds`, from
`random.Random(seed)`; `once(pattern, fault)` queues a fault for the next request whose
request line matches, for targeted tests; `reject_matching` answers 500 to every match.
"""

from __future__ import annotations

import contextlib
import random
import re
import select
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from driver.devservers import LOOPBACK

FAULTS = ("503", "500", "reset-before", "reset-after", "cut", "stall")
_S3_ERROR = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code>'
             b"<Message>injected fault</Message></Error>")
_GCS_ERROR = b'{"error": {"code": %d, "message": "injected fault", "errors": []}}'
_STATUS = {"503": (503, b"Service Unavailable", b"SlowDown"),
           "500": (500, b"Internal Server Error", b"InternalError")}


def s3_error_body(fault: str = "500") -> bytes:
    """The body the proxy answers an S3 request with for `fault` ("500" or "503")."""
    return _S3_ERROR % _STATUS[fault][2]


@dataclass
class Injected:
    request_line: str
    fault: str


class _Closed(Exception):
    """The client closed its connection."""


class FaultProxy:
    def __init__(self, upstream_port: int, *, seed: int = 0, rate: float = 0.0,
                 kinds: tuple[str, ...] = FAULTS, flavor: str = "s3",
                 stall_seconds: float = 30.0,
                 match: Callable[[str], bool] = lambda request_line: True) -> None:
        self.upstream_port = upstream_port
        self.rate = rate
        self.kinds = kinds
        self.flavor = flavor  # "s3" (XML errors) or "gcs" (JSON errors)
        self.stall_seconds = stall_seconds
        self.match = match
        self.reject: Callable[[str], bool] = lambda request_line: False
        self.rejected = 0
        self.requests: list[str] = []  # every request line seen, faulted ones included
        self.injected: list[Injected] = []
        self._queued: list[tuple[re.Pattern[str], str]] = []
        self._random = random.Random(seed)
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(item.fault for item in self.injected)

    def reject_matching(self, pattern: str) -> None:
        regex = re.compile(pattern)
        self.reject = lambda line: bool(regex.search(line))

    def once(self, pattern: str, fault: str) -> None:
        """The next request whose request line matches `pattern` gets `fault`."""
        assert fault in FAULTS, fault
        with self._lock:
            self._queued.append((re.compile(pattern), fault))

    def set_rate(self, rate: float) -> None:
        self.rate = rate

    def reseed(self, seed: int) -> None:
        with self._lock:
            self._random.seed(seed)

    # -- plumbing ---------------------------------------------------------------------------

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _choose(self, request_line: str) -> str | None:
        with self._lock:
            self.requests.append(request_line)
            for index, (pattern, fault) in enumerate(self._queued):
                if pattern.search(request_line):
                    del self._queued[index]
                    self.injected.append(Injected(request_line, fault))
                    return fault
            if self.reject(request_line):
                self.rejected += 1
                return "reject"
            if self.rate and self.match(request_line) and self._random.random() < self.rate:
                fault = self._random.choice(self.kinds)
                self.injected.append(Injected(request_line, fault))
                return fault
        return None

    def _serve(self, client: socket.socket) -> None:
        reader = _Reader(client)
        try:
            while not self._closed.is_set():
                head = reader.until(b"\r\n\r\n")
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                headers = _headers(head)
                if headers.get("expect", "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = reader.body(headers)
                fault = self._choose(request_line)
                if fault == "reject":
                    self._answer_error(client, "500", close=True)
                    return
                if fault in ("503", "500"):
                    self._answer_error(client, fault, close=False)
                    continue
                if fault == "reset-before":
                    _reset(client)
                    return
                reply = self._forward(head, body)
                if fault == "reset-after":
                    _reset(client)
                    return
                if fault == "cut":
                    split = reply.find(b"\r\n\r\n") + 4
                    client.sendall(reply[: split + (len(reply) - split) // 2])
                    _reset(client)
                    return
                if fault == "stall":
                    select.select([client], [], [], self.stall_seconds)
                    _reset(client)
                    return
                client.sendall(reply)
                reply_head = reply.split(b"\r\n\r\n", 1)[0]
                if _headers(reply_head).get("connection", "").lower() == "close" or \
                        headers.get("connection", "").lower() == "close":
                    return
        except (_Closed, OSError):
            return
        finally:
            self._forget(client)

    def _forward(self, head: bytes, body: bytes) -> bytes:
        """Send the request upstream on a fresh connection; return the whole reply."""
        lines = [line for line in head.split(b"\r\n")
                 if not line.lower().startswith((b"connection:", b"expect:"))]
        lines.append(b"Connection: close")
        upstream = socket.create_connection((LOOPBACK, self.upstream_port))
        self._track(upstream)
        try:
            upstream.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            pieces = []
            while data := upstream.recv(1 << 16):
                pieces.append(data)
        finally:
            self._forget(upstream)
        reply = b"".join(pieces)
        if b"\r\n\r\n" not in reply:
            raise OSError("upstream closed without a reply")
        # The client keeps its connection: the reply must carry its own length.
        split = reply.index(b"\r\n\r\n")
        reply_headers = _headers(reply[:split])
        if "content-length" not in reply_headers and \
                reply_headers.get("transfer-encoding", "").lower() != "chunked":
            status = int(reply.split(b" ", 2)[1])
            extra = b"" if status in (204, 304) or head.startswith(b"HEAD ") else \
                b"\r\nContent-Length: " + str(len(reply) - split - 4).encode()
            reply = reply[:split] + extra + reply[split:]
        return reply

    def _answer_error(self, client: socket.socket, fault: str, close: bool) -> None:
        status, reason, code = _STATUS[fault]
        if self.flavor == "gcs":
            body, kind = _GCS_ERROR % status, b"application/json"
        else:
            body, kind = s3_error_body(fault), b"application/xml"
        client.sendall(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s"
                       % (status, reason, kind, len(body),
                          b"Connection: close\r\n" if close else b"", body))

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() below
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _headers(head: bytes) -> dict[str, str]:
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a dropped connection looks."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Reader:
    """Buffered reads of an HTTP request from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def _fill(self) -> None:
        data = self._sock.recv(1 << 16)
        if not data:
            raise _Closed
        self._buffer += data

    def until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(marker, 1)
        return head

    def exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def body(self, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            raw = []
            while True:
                size_line = self.until(b"\r\n")
                raw.append(size_line + b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                raw.append(self.exactly(size + 2))
                if size == 0:
                    return b"".join(raw)
        return self.exactly(int(headers.get("content-length", "0") or 0))
