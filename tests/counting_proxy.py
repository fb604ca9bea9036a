"""A loopback HTTP proxy in front of a real S3 server that counts the requests it relays.

Requests are framed just enough to see each one (request line, headers, a Content-Length
or chunked body) and forwarded verbatim, Host header included, so SigV4 still verifies;
responses are relayed byte for byte. `object_gets()` counts GETs of objects (ranged reads),
apart from ListObjects GETs of the bucket itself, so a test can say "this read made no GET".
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections import Counter
from urllib.parse import parse_qs, urlsplit

from driver.devservers import LOOPBACK


class CountingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: list[str] = []  # request lines, in arrival order
        self._lock = threading.Lock()
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    # ------------------------------------------------------------------ counting

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def kinds(self) -> Counter[str]:
        """Requests by kind: "GET object", "GET list", "HEAD", "PUT", "POST", "DELETE"."""
        with self._lock:
            lines = list(self.requests)
        return Counter(_kind(line) for line in lines)

    def object_gets(self) -> int:
        return self.kinds()["GET object"]

    # ------------------------------------------------------------------ relaying

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((LOOPBACK, self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                sink.sendall(data)
        self._close_pair(source, sink)

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        buffer = b""

        def fill() -> bool:
            nonlocal buffer
            data = client.recv(1 << 16)
            buffer += data
            return bool(data)

        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    if not fill():
                        return
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                with self._lock:
                    self.requests.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
                upstream.sendall(head + b"\r\n\r\n")
                if re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
                    while True:  # relay chunks up to and including the last (size 0)
                        while b"\r\n" not in buffer:
                            if not fill():
                                return
                        size_line, _, _ = buffer.partition(b"\r\n")
                        size = int(size_line.split(b";")[0], 16)
                        need = len(size_line) + 2 + size + 2
                        while len(buffer) < need:
                            if not fill():
                                return
                        upstream.sendall(buffer[:need])
                        buffer = buffer[need:]
                        if size == 0:
                            break
                    continue
                match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                remaining = int(match.group(1)) if match else 0
                while remaining:
                    if not buffer and not fill():
                        return
                    piece, buffer = buffer[:remaining], buffer[remaining:]
                    upstream.sendall(piece)
                    remaining -= len(piece)
        except OSError:
            return
        finally:
            self._close_pair(client, upstream)

    def _close_pair(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
        self._thread.join(5)

    def __enter__(self) -> CountingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kind(request_line: str) -> str:
    method, _, rest = request_line.partition(" ")
    target = rest.rsplit(" ", 1)[0]
    if method != "GET":
        return method
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    # Path style: /bucket/key is an object; /bucket (or ?list-type, ?uploads...) is not.
    segments = parts.path.strip("/").split("/", 1)
    if len(segments) == 2 and segments[1] and not query.keys() & {"list-type", "uploads",
                                                                   "uploadId", "location"}:
        return "GET object"
    return "GET list"
