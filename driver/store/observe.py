"""Store request metrics, hooked into each backend's HTTP request path (one place each).

S3: botocore emits `before-send` before every attempt and `response-received` after it
(also when no response came), on the client's own event emitter; retries are the
attempts after the first (`context["retries"]["attempt"]`). Operation names are botocore's
(GetObject, PutObject, ListObjectsV2, ...). A store call and all its attempts run on one
worker thread, so the start time of the current attempt is kept in a thread-local.

GCS: google-cloud-storage sends through a requests session; its `response` hook sees every
HTTP response with the time to its headers (`elapsed`). Operations are named after the
JSON API methods (objects.get, objects.get_media, objects.list, objects.insert,
objects.compose, objects.delete). google-api-core's retries are invisible to the session,
so a request is counted as a retry when the previous request on the same thread was the
same operation and failed with a retryable status (408, 429, 5xx).

Bytes: request bodies by their Content-Length; responses by the Content-Length they
announce (a body cut short is still counted whole; HEAD responses count none).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from driver import metrics
from driver.store.retry import current_attempt

_local = threading.local()
_requests = metrics.Bound(metrics.STORE_REQUESTS)
_seconds = metrics.Bound(metrics.STORE_REQUEST_SECONDS)
_retries = metrics.Bound(metrics.STORE_RETRIES)
_received = metrics.Bound(metrics.STORE_RECEIVED_BYTES)
_sent = metrics.Bound(metrics.STORE_SENT_BYTES)
_STATUS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
_RETRYABLE = {408, 429, 500, 502, 503, 504}


def _status(code: int | None) -> str:
    return "error" if code is None else _STATUS.get(code // 100, "error")


def _length(headers: Any) -> int:
    try:
        return int(headers.get("Content-Length") or headers.get("content-length") or 0)
    except (TypeError, ValueError):
        return 0


def _count(op: str, status_code: int | None, seconds: float, sent: int, received: int,
           retry: bool) -> None:
    _requests(op, _status(status_code)).inc()
    _seconds(op).observe(seconds)
    if retry:
        _retries(op).inc()
    if sent:
        _sent(op).inc(sent)
    if received:
        _received(op).inc(received)


# -- S3 (botocore) -----------------------------------------------------------------------------

def _s3_before_send(request: Any, **kwargs: Any) -> None:
    _local.s3 = (time.perf_counter(), _length(request.headers), request.method == "HEAD")


def _s3_response_received(event_name: str, response_dict: dict[str, Any] | None,
                          context: dict[str, Any], **kwargs: Any) -> None:
    started = getattr(_local, "s3", None)
    _local.s3 = None
    if started is None:  # answered without being sent (a stub): nothing went to the store
        return
    op = event_name.rsplit(".", 1)[-1]
    # Retries are ours (store/retry.py); botocore's own count stays 1.
    attempt = max(context.get("retries", {}).get("attempt", 1), current_attempt())
    status = received = None
    if response_dict is not None:
        status = response_dict.get("status_code")
        # A HEAD response announces the object's length but carries no body.
        received = 0 if started[2] else _length(response_dict.get("headers") or {})
    _count(op, status, time.perf_counter() - started[0], started[1], received or 0,
           attempt > 1)


def instrument_s3(client: Any) -> None:
    """Count every request `client` sends (its own copy of the session's event handlers)."""
    if not metrics.ENABLED:
        return
    events = client.meta.events
    events.register("before-send.s3.*", _s3_before_send, unique_id="cloudbucket-metrics-send")
    events.register("response-received.s3.*", _s3_response_received,
                    unique_id="cloudbucket-metrics-received")


# -- GCS (requests) ----------------------------------------------------------------------------

_OBJECT = re.compile(r"^(?:/download|/upload)?/storage/v1/b/[^/]+/o(?P<object>/[^/]+)?"
                     r"(?P<compose>/compose)?$")


def gcs_operation(method: str, url: str) -> str:
    """The JSON API method a request calls, e.g. GET .../o/key?alt=media -> objects.get_media."""
    parts = urlsplit(url)
    match = _OBJECT.match(parts.path)
    if match is None:
        return "buckets.get" if re.match(r"^/storage/v1/b/[^/]+$", parts.path) else \
            f"{method} other"
    if match.group("compose"):
        return "objects.compose"
    if match.group("object") is None:
        return "objects.insert" if method == "POST" else "objects.list"
    if method == "DELETE":
        return "objects.delete"
    if method == "GET":
        return "objects.get_media" if "alt=media" in parts.query else "objects.get"
    return f"objects.{method.lower()}"


def _gcs_response(response: Any, *args: Any, **kwargs: Any) -> None:
    request = response.request
    op = gcs_operation(request.method, request.url)
    previous = getattr(_local, "gcs_failed", None)
    retry = previous == op
    _local.gcs_failed = op if response.status_code in _RETRYABLE else None
    received = 0 if request.method == "HEAD" else _length(response.headers)
    _count(op, response.status_code, response.elapsed.total_seconds(),
           _length(request.headers), received, retry)


def instrument_gcs(session: Any) -> None:
    """Count every request that goes through `session` (the storage client's transport)."""
    if not metrics.ENABLED:
        return
    hooks = session.hooks.setdefault("response", [])
    if _gcs_response not in hooks:
        hooks.append(_gcs_response)
