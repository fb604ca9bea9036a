"""A loopback HTTP proxy in front of a real S3 server that can reject chosen requests.

Requests are parsed only as far as needed to find their boundaries (request line, headers,
Content-Length body); responses are relayed byte for byte. While `reject` matches a
request line, the proxy answers 500 InternalError itself and closes that connection.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable

from driver.devservers import LOOPBACK

_ERROR_BODY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
               b"<Message>injected fault</Message></Error>")


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.reject: Callable[[str], bool] = lambda request_line: False
        self.rejected = 0
        self.requests: list[str] = []  # every request line seen, rejected ones included
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def reject_matching(self, pattern: str) -> None:
        regex = re.compile(pattern)
        self.reject = lambda line: bool(regex.search(line))

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((LOOPBACK, self.upstream_port))
            self._track(client)
            self._track(upstream)
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                sink.sendall(data)
        self._close_pair(source, sink)

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = client.recv(1 << 16)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                with self._lock:
                    self.requests.append(request_line)
                if self.reject(request_line):
                    self.rejected += 1
                    client.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: "
                                   b"application/xml\r\nConnection: close\r\nContent-Length: "
                                   + str(len(_ERROR_BODY)).encode() + b"\r\n\r\n" + _ERROR_BODY)
                    return
                upstream.sendall(head + b"\r\n\r\n")
                match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                remaining = int(match.group(1)) if match else 0
                while remaining:
                    if not buffer:
                        buffer = client.recv(min(remaining, 1 << 16))
                        if not buffer:
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

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
