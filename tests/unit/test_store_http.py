"""The direct path's connections (`driver/store/http.py`) against a scripted loopback server:
kept alive, replaced when the server closed them while idle, and failing as botocore's
session fails (the exception types `retryable` and `_translate` read)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import botocore.exceptions
import pytest
from botocore.httpsession import URLLib3Session

from driver.store.http import Connections

OK = b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: "e"\r\n\r\nhello'
CLOSE = b""  # a reply that closes the connection at once, before the next request


class Server:
    """Answers each request on a connection by the next of `script`'s replies for that
    connection: bytes to send, None to close the connection without answering the request
    read, CLOSE to close it while it is idle. Out of replies, it keeps the connection open
    and answers nothing."""

    def __init__(self, *script: list[bytes | None]) -> None:
        self.script = list(script)  # one list of replies per connection, in accept order
        self.requests: list[bytes] = []
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            replies = self.script[self.connections] if self.connections < len(self.script) \
                else []
            self.connections += 1
            self._open.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn, list(replies)),
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, replies: list[bytes | None]) -> None:
        with conn:
            for reply in replies:
                if reply is CLOSE:
                    return
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    request += chunk
                self.requests.append(request)
                if reply is None:
                    return
                conn.sendall(reply)
            with contextlib.suppress(OSError):  # until the client closes it
                while conn.recv(65536):
                    pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self._listener.close()
        for conn in self._open:  # a client's kept-alive connection: end the server's side
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._accepting.join(5)
        for thread in self._threads:
            thread.join(5)

    def url(self, path: str = "/bkt/key") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def serve() -> Iterator:
    servers: list[Server] = []

    def start(*script: list[bytes | None]) -> Server:
        servers.append(Server(*script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def connections(read_timeout: float = 5.0) -> Connections:
    return Connections(None, [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)], 2.0, read_timeout)


def test_requests_of_one_thread_share_one_kept_alive_connection(serve):
    server = serve([OK, OK, OK])
    pool = connections()
    for _ in range(3):
        response = pool.send("GET", server.url("/bkt/a%20b?x=1"), {"Range": "bytes=0-4"})
        assert (response.status_code, response.content) == (200, b"hello")
        assert response.headers["etag"] == '"e"'
    assert server.connections == 1
    first = server.requests[0].decode()
    assert first.startswith("GET /bkt/a%20b?x=1 HTTP/1.1\r\n")
    # The Host botocore signs: with the port, since it is not http's own.
    assert f"\r\nHost: 127.0.0.1:{server.port}\r\n" in first
    assert "\r\nRange: bytes=0-4\r\n" in first


def test_a_connection_the_server_closed_while_idle_is_replaced_once(serve):
    server = serve([OK, CLOSE], [OK])  # the first connection ends after one answer
    pool = connections()
    assert pool.send("GET", server.url(), {}).content == b"hello"
    assert pool.send("GET", server.url(), {}).content == b"hello"
    assert server.connections == 2


def test_a_fresh_connection_closed_before_an_answer_is_not_sent_again(serve):
    server = serve([None])
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        connections().send("GET", server.url(), {})
    assert len(server.requests) == 1


def test_a_body_left_unread_closes_its_connection_and_the_next_request_gets_a_new_one(serve):
    big = b"HTTP/1.1 206 Partial\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000
    server = serve([big], [OK])
    pool = connections()
    stream = pool.send("GET", server.url(), {}, stream=True)
    buffer = memoryview(bytearray(10))
    assert stream.raw.readinto(buffer) == 10
    stream.raw.close()
    assert pool.send("GET", server.url(), {}).content == b"hello"
    assert server.connections == 2


def test_no_answer_within_the_read_timeout_is_botocores_read_timeout(serve):
    server = serve([])  # reads the request, never answers
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        connections(read_timeout=0.2).send("GET", server.url(), {})


def test_nothing_listening_is_botocores_endpoint_connection_error():
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed at once: nothing listens there
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        connections().send("GET", f"http://127.0.0.1:{port}/k", {})


def test_a_session_with_a_proxy_or_a_client_certificate_sends_itself():
    url = "https://127.0.0.1:9/bkt/k"
    assert Connections.of(URLLib3Session(), url) is not None
    assert Connections.of(URLLib3Session(proxies={"https": "http://127.0.0.1:1"}), url) is None
    assert Connections.of(URLLib3Session(client_cert="/nonexistent.pem"), url) is None


def test_a_scheme_other_than_the_endpoints_is_refused_before_it_connects(serve):
    server = serve([OK])
    https = Connections.of(URLLib3Session(), server.url().replace("http:", "https:"))
    assert https is not None  # made for an https endpoint: never speaks plain http
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        https.send("GET", server.url(), {})
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        connections().send("GET", server.url().replace("http:", "https:"), {})
    assert server.connections == 0


def test_headers_are_split_as_urllib3_gives_them_to_botocore(serve):
    reply = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Amz-Meta-Tag: a\r\n"
             b"x-amz-meta-tag: b\r\nX-Folded: one\r\n two\r\nETag:\"e\"\r\n\r\nhello")
    server = serve([reply, OK])
    pool = connections()
    response = pool.send("GET", server.url(), {})
    assert response.content == b"hello"
    assert response.headers["x-amz-meta-tag"] == "a, b"  # repeated: joined, as urllib3 does
    assert response.headers["X-Folded"] == "one two"
    assert response.headers["etag"] == '"e"'
    assert pool.send("GET", server.url(), {}).content == b"hello"  # kept alive
    assert server.connections == 1


def test_chunked_bodies_and_the_ends_of_connections_follow_http(serve):
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n")
    old = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"  # 1.0: closes after it
    kept = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello"
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
    server = serve([chunked, old], [kept, closing], [OK])
    pool = connections()
    for _ in range(5):
        assert pool.send("GET", server.url(), {}).content == b"hello"
    assert server.connections == 3


def test_a_header_block_too_long_is_a_closed_connection_not_a_hang(serve):
    reply = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n"
    server = serve([reply])
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        connections().send("GET", server.url(), {})
