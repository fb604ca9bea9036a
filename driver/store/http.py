"""HTTP/1.1 for the S3 direct path's GET, HEAD and LIST: one kept-alive connection per thread.

Why not botocore's `URLLib3Session`: timed in one process against SeaweedFS (500 4 KiB GETs,
medians of 5 interleaved rounds), a GET signed by botocore and sent through the session cost
557 us of CPU, the same signed request on an `http.client` connection 324 us; the session's
proxy lookup, urllib3's pool, its `Retry`/`Timeout` objects and response wrapper made the
difference. With eight parallel readers of small files the FUSE server's GIL is the limit,
so that CPU is the readers' time.

What a user configures still applies: a connection is made from the session's own settings
(`verify` and its CA bundle, the socket options, among them TCP keepalive and a bound
interface, the connect and read timeouts). A session that would use a proxy or a client
certificate is not served here (`Connections.of` is None and the session sends). Failures
are raised as the botocore exceptions `URLLib3Session.send` raises for them, so retries
(`retryable`) and their meaning (`_translate`) stay one table. A kept-alive connection that
the server closed while it was idle is replaced and the request sent again once: only
idempotent requests come here.
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
import threading
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import botocore.exceptions
from botocore.awsrequest import AWSResponse
from botocore.httpsession import create_urllib3_context, get_cert_path
from urllib3.util.connection import create_connection
from urllib3.util.timeout import Timeout

__all__ = ["Connections"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
# What a kept-alive connection closed by the server while idle fails with on its next use.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
          ConnectionAbortedError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


_MAX_LINE = 65536  # http.client's limits on a header line and on the header count
_MAX_HEADERS = 100


class _Response(http.client.HTTPResponse):
    """http.client's response, its header block split by a loop into a dict of lowercased
    names (a repeated header's values joined by ", ", as urllib3 gives them to botocore).

    http.client hands the block to `email.parser`: 42 us of CPU a response, with the copy
    into botocore's headers, where this takes 13 (a GET of 4 KiB with SeaweedFS's 11
    headers, both timed in one process, 5 interleaved rounds); with eight readers of small
    files the FUSE server's GIL is the limit. The body is read by http.client as before
    (length, chunked, close)."""

    def begin(self) -> None:
        if self.headers is not None:
            return  # begun already
        while True:
            version, status, reason = self._read_status()
            if status != http.client.CONTINUE:
                break
            _header_lines(self.fp)  # a 100 Continue's headers
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        headers: dict[str, str] = {}
        last = ""
        for line in _header_lines(self.fp):
            text = line.decode("iso-8859-1")
            if text[0] in " \t" and last:  # an obsolete folded continuation line
                headers[last] = f"{headers[last]} {text.strip()}"
                continue
            name, colon, value = text.partition(":")
            if not colon:
                continue  # not a header (email.parser would put it aside as a defect too)
            last = name.strip().lower()
            value = value.strip()
            headers[last] = f"{headers[last]}, {value}" if last in headers else value
        self.headers = self.msg = headers  # type: ignore[assignment]

        self.chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        self.chunk_left = None
        connection = headers.get("connection", "").lower()
        if self.version == 11:
            self.will_close = "close" in connection
        else:  # HTTP/1.0 keeps a connection only when it says so
            self.will_close = not ("keep-alive" in headers or "keep-alive" in connection)
        self.length = None
        length = headers.get("content-length")
        if length and not self.chunked:
            with contextlib.suppress(ValueError):
                self.length = int(length)
            if self.length is not None and self.length < 0:
                self.length = None  # nonsense: read to the close, as http.client does
        if status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED) or \
                100 <= status < 200 or self._method == "HEAD":
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True  # the body ends when the server closes


def _header_lines(fp: Any) -> list[bytes]:
    """The lines of a header block, up to the blank line that ends it."""
    lines: list[bytes] = []
    while True:
        line = fp.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            return lines
        lines.append(line)
        if len(lines) > _MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {_MAX_HEADERS} headers")


class _Connection(http.client.HTTPConnection):
    """`http.client`'s connection, its socket made the way urllib3 makes it for botocore."""

    response_class = _Response

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None,
                 options: list[tuple[int, int, Any]], connect_timeout: float | None,
                 read_timeout: float | None) -> None:
        super().__init__(host, port, timeout=read_timeout)
        self._tls = tls
        self._options = options
        self._connect_timeout = connect_timeout
        self.response: _Response | None = None  # the last one

    def connect(self) -> None:
        sock = create_connection((self.host, self.port), self._connect_timeout,
                                 socket_options=self._options)
        try:
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(self.timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _Stream:
    """A GetObject body left on its connection for the caller to read (`_Body`)."""

    def __init__(self, response: http.client.HTTPResponse, connection: _Connection) -> None:
        self._fp = response  # `_Body` reads this http.client response itself
        self._connection = connection

    def readinto(self, out: memoryview) -> int:
        return self._fp.readinto(out)

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._fp.read()

    def release_conn(self) -> None:
        """Read to its end: the connection serves the thread's next request."""

    def close(self) -> None:
        if not self._fp.isclosed():  # the unread rest would be read as the next response
            self._connection.close()
        self._fp.close()


class _Read:
    """A body read whole (HEAD, LIST, error responses), as AWSResponse.content reads it."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


class Connections:
    """Requests on one connection per (thread, scheme, host): worker threads never share."""

    def __init__(self, tls: ssl.SSLContext | None, options: list[tuple[int, int, Any]],
                 connect_timeout: float | None, read_timeout: float | None) -> None:
        self._tls = tls  # for an https endpoint; None: plain http only
        self._options = list(options)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._local = threading.local()

    @classmethod
    def of(cls, session: Any, url: str) -> Connections | None:
        """Connections made as `session` (a botocore URLLib3Session) would make them for
        `url`; None when it would use a proxy or a client certificate, or when it is not a
        session this module knows (then the session sends)."""
        try:
            if session._proxy_config.proxy_url_for(url) or session._cert_file:
                return None
            timeout = session._timeout
            if isinstance(timeout, Timeout):
                connect, read = timeout.connect_timeout, timeout.read_timeout
            else:
                connect = read = timeout
            options = session._socket_options
            verify = session._verify
        except AttributeError:
            return None
        if not isinstance(options, list) or not (_seconds(connect) and _seconds(read)):
            return None
        https = urlsplit(url).scheme.lower() == "https"
        return cls(_tls_context(verify) if https else None, options, connect, read)

    def _connection(self, scheme: str, host: str, port: int) -> _Connection:
        connections: dict[tuple[str, str, int], _Connection] | None = \
            getattr(self._local, "connections", None)
        if connections is None:
            connections = self._local.connections = {}
        connection = connections.get((scheme, host, port))
        if connection is None:
            connection = _Connection(host, port, self._tls, self._options,
                                     self._connect_timeout, self._read_timeout)
            connections[(scheme, host, port)] = connection
        return connection

    def send(self, method: str, url: str, headers: Mapping[str, str | bytes],
             stream: bool = False) -> AWSResponse:
        """One request; its response (a body read whole unless `stream`)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname or \
                (scheme == "https") != (self._tls is not None):
            raise botocore.exceptions.EndpointConnectionError(endpoint_url=url)
        port = parts.port or _DEFAULT_PORTS[scheme]
        # The Host header botocore signed: the port only when it is not the scheme's own.
        host = parts.netloc.rsplit("@", 1)[-1]
        if parts.port == _DEFAULT_PORTS[scheme]:
            host = host.rsplit(":", 1)[0]
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection = self._connection(scheme, parts.hostname, port)
        if connection.response is not None and not connection.response.isclosed():
            connection.close()  # a body left unread: this connection cannot go on
        return self._exchange(connection, url, method, target, host, headers, stream,
                              retry_stale=True)

    def _exchange(self, connection: _Connection, url: str, method: str, target: str,
                  host: str, headers: Mapping[str, str | bytes], stream: bool,
                  retry_stale: bool) -> AWSResponse:
        if connection.sock is None:
            self._connect(connection, url)
            retry_stale = False  # a fresh connection's failure is the server's answer
        try:
            connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            connection.putheader("Host", host)
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            connection.response = response
            if not stream:
                return AWSResponse(url, response.status, response.msg, _Read(response.read()))
            return AWSResponse(url, response.status, response.msg, _Stream(response, connection))
        except BaseException as exc:
            connection.close()
            if retry_stale and isinstance(exc, _STALE):
                # Closed by the server while idle: once more, on a new connection.
                return self._exchange(connection, url, method, target, host, headers, stream,
                                      retry_stale=False)
            failure = _failure(exc, url)
            if failure is None:
                raise
            raise failure from exc

    @staticmethod
    def _connect(connection: _Connection, url: str) -> None:
        try:
            connection.connect()
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise botocore.exceptions.SSLError(endpoint_url=url, error=exc) from exc
        except TimeoutError as exc:
            raise botocore.exceptions.ConnectTimeoutError(endpoint_url=url, error=exc) from exc
        except OSError as exc:  # refused, unreachable, no such host
            raise botocore.exceptions.EndpointConnectionError(endpoint_url=url,
                                                              error=exc) from exc


def _seconds(timeout: object) -> bool:
    """A timeout this module can give a socket: None (none) or a number of seconds."""
    return timeout is None or isinstance(timeout, int | float)


def _tls_context(verify: bool | str) -> ssl.SSLContext:
    """The TLS context botocore builds for `verify` (True, False or a CA bundle path)."""
    context = create_urllib3_context()  # botocore's TLS defaults
    if verify:
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = True
        cert_path = get_cert_path(verify)
        if cert_path:
            context.load_verify_locations(cafile=cert_path)
    else:  # verify=False: what botocore sends with CERT_NONE
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _failure(exc: BaseException, url: str) -> Exception | None:
    """A failure after the connection was made, as URLLib3Session.send would raise it."""
    if isinstance(exc, ssl.SSLError):
        return botocore.exceptions.SSLError(endpoint_url=url, error=exc)
    if isinstance(exc, TimeoutError):
        return botocore.exceptions.ReadTimeoutError(endpoint_url=url, error=exc)
    if isinstance(exc, OSError | http.client.HTTPException):
        return botocore.exceptions.ConnectionClosedError(endpoint_url=url, error=exc)
    return None  # not the network's (KeyboardInterrupt, a bug): raised as it is
