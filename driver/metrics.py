"""Every Prometheus metric of the driver, defined once, and the servers that expose them.

Two registries, because two kinds of process count different things:
- `FUSE_REGISTRY`: what one FUSE server (one mount) does: filesystem operations, store
  requests, prefetching and cache, memory, uploads, credential refreshes, plus its process
  metrics (RSS, CPU). A FUSE server serves it on a per-mount UNIX socket
  (`serve_metrics_unix`) or, for `cloudbucket-csi mount --metrics-address`, on TCP
  (`serve_metrics_tcp`). Its samples carry no volume labels: the process is the volume.
- `PLUGIN_REGISTRY`: what the node plugin, the supervisor and the controller do: FUSE
  server deaths and restarts, credential hand-overs, provisioning calls.

The node plugin serves one `/metrics` (`serve_plugin_metrics`): a `MountsCollector` asks a
callable for the live mounts as `(socket path, labels)`, scrapes each socket, adds the
labels (`volume_id`, `bucket`, `pod_namespace`, `pod_name`) to every sample and merges the
families with its own registry's. A volume's samples vanish with it: an unpublished volume
is no longer listed, so it is no longer scraped. Counters of interest for Kubernetes
Events (upload failures, credential refresh failures, memory target reached) are compared
between scrapes and handed to an `on_increase` callback (the node plugin's EventRecorder).

Hot paths never look labels up: every child a hot path touches is bound once (`bound`
dicts, `FsOpMetrics`), so a counted call costs one lock and one add. Setting
CLOUDBUCKET_METRICS=off before the FUSE server starts removes the per-operation wrappers
and the store hooks altogether (for measuring what metrics cost).
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import http.server
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)
from prometheus_client.core import Metric
from prometheus_client.exposition import MetricsHandler
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

ENABLED = os.environ.get("CLOUDBUCKET_METRICS", "on").lower() not in ("off", "0", "false")
# `_created` series double every counter's output and nobody graphs them.
prometheus_client.disable_created_metrics()

MOUNT_LABELS = ("volume_id", "bucket", "pod_namespace", "pod_name")
# Seconds: FUSE requests answered from memory take ~50 us, store requests up to a minute.
FS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
              0.5, 1, 2.5, 5, 10, 30)
STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                 60)

FUSE_REGISTRY = CollectorRegistry(auto_describe=True)
PLUGIN_REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=FUSE_REGISTRY)
ProcessCollector(registry=PLUGIN_REGISTRY)


def _fuse(kind: type, name: str, doc: str, labels: Iterable[str] = (), **kw: Any) -> Any:
    return kind(f"cloudbucket_{name}", doc, list(labels), registry=FUSE_REGISTRY, **kw)


def _plugin(kind: type, name: str, doc: str, labels: Iterable[str] = (), **kw: Any) -> Any:
    return kind(f"cloudbucket_{name}", doc, list(labels), registry=PLUGIN_REGISTRY, **kw)


# -- filesystem (driver/fs/fuse.py wraps every operation) ------------------------------------
FS_OPERATIONS = _fuse(Counter, "fs_operations", "FUSE operations answered, by operation and "
                      "outcome (ok or the errno name returned)", ("op", "outcome"))
FS_OPERATION_SECONDS = _fuse(Histogram, "fs_operation_seconds", "Time to answer a FUSE "
                             "operation", ("op",), buckets=FS_BUCKETS)
FS_READ_BYTES = _fuse(Counter, "fs_read_bytes", "Bytes returned to FUSE reads")
FS_WRITTEN_BYTES = _fuse(Counter, "fs_written_bytes", "Bytes accepted from FUSE writes")
FS_OPEN_FILES = _fuse(Gauge, "fs_open_files", "Open file handles, by mode (read, write)",
                      ("mode",))

# -- store (driver/store/observe.py hooks each backend's HTTP request path) -----------------
STORE_REQUESTS = _fuse(Counter, "store_requests", "HTTP requests to the object store (every "
                       "attempt), by operation and status class (2xx..5xx, or error when no "
                       "response came)", ("op", "status"))
STORE_REQUEST_SECONDS = _fuse(Histogram, "store_request_seconds", "Time from sending a "
                              "store request to its response headers", ("op",),
                              buckets=STORE_BUCKETS)
STORE_RETRIES = _fuse(Counter, "store_retries", "Store requests that were retries of a failed "
                      "attempt", ("op",))
STORE_RECEIVED_BYTES = _fuse(Counter, "store_received_bytes", "Response body bytes announced "
                             "by the store (Content-Length)", ("op",))
STORE_SENT_BYTES = _fuse(Counter, "store_sent_bytes", "Request body bytes sent to the store",
                         ("op",))

# -- prefetch and cache (driver/fs/prefetch.py; the block cache calls the CACHE_* objects) --
PREFETCH_BYTES = _fuse(Counter, "prefetch_bytes", "Bytes the prefetcher fetched from the store")
PREFETCH_USED_BYTES = _fuse(Counter, "prefetch_used_bytes", "Prefetched bytes returned to "
                            "readers (less than fetched when read-ahead was wasted)")
PREFETCH_RESETS = _fuse(Counter, "prefetch_resets", "Read streams restarted by a seek (random "
                        "reads reset often)")
CACHE_HITS = _fuse(Counter, "cache_hits", "Block cache lookups answered from the cache")
CACHE_MISSES = _fuse(Counter, "cache_misses", "Block cache lookups that went to the store")
CACHE_EVICTIONS = _fuse(Counter, "cache_evictions", "Blocks evicted from the cache")
CACHE_BYTES = _fuse(Gauge, "cache_bytes", "Bytes held by the block cache")
CACHE_LIMIT_BYTES = _fuse(Gauge, "cache_limit_bytes", "Size limit of the block cache")

# -- memory and uploads (driver/fs/prefetch.MemoryBudget, driver/fs/upload.py) ------------
MEMORY_BYTES = _fuse(Gauge, "memory_bytes", "Bytes of file data held, by use (prefetch, "
                     "upload)", ("use",))
MEMORY_TARGET_BYTES = _fuse(Gauge, "memory_target_bytes", "The prefetch memory target")
MEMORY_TARGET_REACHED = _fuse(Counter, "memory_target_reached", "Read-ahead requests held back "
                              "because the memory target was reached")
UPLOADS_IN_FLIGHT = _fuse(Gauge, "uploads_in_flight", "Files being written (open uploads)")
UPLOAD_PARTS_IN_FLIGHT = _fuse(Gauge, "upload_parts_in_flight", "Multipart upload parts "
                               "being sent")
UPLOADS = _fuse(Counter, "uploads", "Uploads finished at close or fsync, by outcome (ok, "
                "failed)", ("outcome",))

# -- credentials inside the FUSE server (driver/credentials/web_identity.py) ---------------
CREDENTIAL_REFRESHES = _fuse(Counter, "credential_refreshes", "Credential refreshes attempted "
                             "(STS exchanges of the pod token, Google token refreshes), "
                             "failed ones included")
CREDENTIAL_REFRESH_FAILURES = _fuse(Counter, "credential_refresh_failures", "Credential "
                                    "refreshes refused or failed")

# -- node plugin, supervisor, controller ------------------------------------------------------
FUSE_SERVER_DEATHS = _plugin(Counter, "fuse_server_deaths", "FUSE servers that died while "
                             "their volume was published, by cause", ("cause",))
FUSE_SERVER_RESTARTS = _plugin(Counter, "fuse_server_restarts", "FUSE servers restarted by "
                               "the supervisor")
CREDENTIAL_HANDOVERS = _plugin(Counter, "credential_handovers", "Refreshed credentials or pod "
                               "tokens handed to a live mount (republish), by outcome",
                               ("outcome",))
CSI_REQUESTS = _plugin(Counter, "csi_requests", "CSI calls answered (provisioning: "
                       "CreateVolume, DeleteVolume; node: NodePublishVolume...), by method and "
                       "gRPC code (OK, INVALID_ARGUMENT, ...)", ("method", "code"))
CSI_REQUEST_SECONDS = _plugin(Histogram, "csi_request_seconds", "Time to answer a CSI call",
                              ("method",), buckets=STORE_BUCKETS)
# Names of the gauges the MountsCollector computes itself at each scrape.
MOUNTS_NAME = "cloudbucket_mounts"
SCRAPE_UP_NAME = "cloudbucket_mount_scrape_up"


def store_request_counts() -> dict[str, dict[str, int]]:
    """{op: {status class: requests}} so far, from STORE_REQUESTS (for --log-metrics)."""
    counts: dict[str, dict[str, int]] = {}
    for family in STORE_REQUESTS.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                by_status = counts.setdefault(sample.labels["op"], {})
                by_status[sample.labels["status"]] = int(sample.value)
    return counts


def errno_name(code: int) -> str:
    return errno.errorcode.get(code, f"E{code}")


# -- pre-bound children for the hot paths ------------------------------------------------------

@dataclass(slots=True)
class FsOpMetrics:
    """The children one FUSE operation touches: bound once, at class definition."""

    op: str
    ok: Any
    seconds: Any

    @classmethod
    def of(cls, op: str) -> FsOpMetrics:
        return cls(op, FS_OPERATIONS.labels(op, "ok"), FS_OPERATION_SECONDS.labels(op))

    def failed(self, code: int) -> None:
        FS_OPERATIONS.labels(self.op, errno_name(code)).inc()  # rare: a lookup is fine


class Bound:
    """Children of a labelled metric bound on first use, then a dict lookup per call."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child


MEMORY_PREFETCH = MEMORY_BYTES.labels("prefetch")
MEMORY_UPLOAD = MEMORY_BYTES.labels("upload")
OPEN_READ = FS_OPEN_FILES.labels("read")
OPEN_WRITE = FS_OPEN_FILES.labels("write")
UPLOADS_OK = UPLOADS.labels("ok")
UPLOADS_FAILED = UPLOADS.labels("failed")


# -- serving a registry ------------------------------------------------------------------------

class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _handler(registry: CollectorRegistry) -> type[http.server.BaseHTTPRequestHandler]:
    base = MetricsHandler.factory(registry)

    class Handler(base):  # type: ignore[misc, valid-type]
        def address_string(self) -> str:  # a UNIX peer has no (host, port)
            return "unix"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            return None

    return Handler


@dataclass
class MetricsServer:
    """A running /metrics server; `close()` stops it (and removes its socket file)."""

    server: socketserver.BaseServer
    thread: threading.Thread
    address: str
    stopped: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()
        if self.address.startswith("/"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)


def serve_metrics_unix(path: str, registry: CollectorRegistry = FUSE_REGISTRY) -> MetricsServer:
    """Serve `registry` as Prometheus text over HTTP on a UNIX socket at `path` (mode 0600:
    only the node plugin, running as root, reads it). Replaces a stale socket file."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    old = os.umask(0o177)
    try:
        server = _UnixHTTPServer(path, _handler(registry))
    finally:
        os.umask(old)
    thread = threading.Thread(target=server.serve_forever, name="metrics-unix", daemon=True)
    thread.start()
    return MetricsServer(server, thread, path)


def serve_metrics_tcp(host: str, port: int,
                      registry: CollectorRegistry = FUSE_REGISTRY) -> MetricsServer:
    """Serve `registry` on http://host:port/metrics (port 0: any free port)."""
    server, thread = prometheus_client.start_http_server(port, addr=host, registry=registry)
    bound = server.server_address
    return MetricsServer(server, thread, f"{bound[0]}:{bound[1]}")


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:PORT) -> (host, port); ValueError when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port out of range")
    return host.strip("[]"), int(port)


# -- the node plugin's aggregation of per-mount sockets ---------------------------------------

class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def scrape_unix(path: str, timeout: float = 2.0) -> str:
    """The Prometheus text a FUSE server serves on its socket."""
    connection = _UnixConnection(path, timeout)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"metrics socket {path} answered HTTP {response.status}")
        return body.decode()
    finally:
        connection.close()


MountLister = Callable[[], Iterable[tuple[str, Mapping[str, str]]]]
# Called with (mount labels, metric sample name, increase since the previous scrape).
IncreaseCallback = Callable[[Mapping[str, str], str, float], None]
WATCHED = ("cloudbucket_uploads_total", "cloudbucket_credential_refresh_failures_total",
           "cloudbucket_memory_target_reached_total")


class MountsCollector(Collector):
    """Re-exposes every live mount's samples with its labels, plus `own` (the node plugin's
    registry) and two gauges it computes: `cloudbucket_mounts` and, per mount,
    `cloudbucket_mount_scrape_up` (0 when its socket did not answer)."""

    def __init__(self, list_mounts: MountLister, own: CollectorRegistry | None = PLUGIN_REGISTRY,
                 on_increase: IncreaseCallback | None = None, timeout: float = 2.0) -> None:
        self._list_mounts = list_mounts
        self._own = own
        self._on_increase = on_increase
        self._timeout = timeout
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()  # one scrape at a time keeps `_last` consistent

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._collect()

    def _collect(self) -> list[Metric]:
        families: dict[str, Metric] = {}
        mounts = list(self._list_mounts())
        up = Metric(SCRAPE_UP_NAME, "1 when the mount's FUSE server answered the last scrape",
                    "gauge")
        seen: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for socket_path, labels in mounts:
            # An entry without a volume_id is a source of node-level samples (the supervisor
            # daemon's own counters): merged as they are, neither counted nor labelled.
            is_mount = bool(labels.get("volume_id"))
            extra = {name: str(labels.get(name, "")) for name in MOUNT_LABELS} if is_mount \
                else {}
            try:
                text = scrape_unix(socket_path, self._timeout)
            except (OSError, http.client.HTTPException):
                if is_mount:
                    up.add_sample(SCRAPE_UP_NAME, extra, 0)
                continue
            if is_mount:
                up.add_sample(SCRAPE_UP_NAME, extra, 1)
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation,
                                                            family.type, family.unit)
                elif merged.type != family.type:
                    continue  # two servers of different versions disagree: keep the first
                for sample in family.samples:
                    sample_labels = {**sample.labels, **extra}
                    merged.samples.append(sample._replace(labels=sample_labels))
                    if sample.name in WATCHED:
                        seen[(sample.name, tuple(sorted(sample_labels.items())))] = sample.value
        self._report_increases(seen)
        if self._own is not None:
            for family in self._own.collect():
                merged = families.get(family.name)
                if merged is None:
                    families[family.name] = family
                elif merged.type == family.type:
                    merged.samples.extend(family.samples)
        count = Metric(MOUNTS_NAME, "Live mounts on this node", "gauge")
        count.add_sample(MOUNTS_NAME, {}, sum(1 for _, labels in mounts
                                              if labels.get("volume_id")))
        return [count, up, *families.values()]

    def _report_increases(self, seen: dict[tuple[str, tuple[tuple[str, str], ...]], float]
                          ) -> None:
        previous, self._last = self._last, seen
        if self._on_increase is None:
            return
        for key, value in seen.items():
            before = previous.get(key)
            # A new mount starts from zero; a restarted server (value fell) starts again.
            base = 0.0 if before is None or value < before else before
            if value > base:
                name, labels = key
                # A broken callback must not stop scrapes.
                with contextlib.suppress(Exception):
                    self._on_increase(dict(labels), name, value - base)


def serve_plugin_metrics(host: str, port: int, list_mounts: MountLister | None = None,
                         on_increase: IncreaseCallback | None = None,
                         poll_interval: float | None = None) -> MetricsServer:
    """The node plugin's (or controller's) /metrics: its own registry, and with
    `list_mounts` every live mount's samples. With `poll_interval`, a background thread also
    scrapes that often, so Events for watched counters do not wait for Prometheus."""
    registry = CollectorRegistry(auto_describe=False)
    collector = MountsCollector(list_mounts or (lambda: ()), PLUGIN_REGISTRY, on_increase)
    registry.register(collector)
    served = serve_metrics_tcp(host, port, registry)
    if poll_interval and on_increase is not None:
        def poll() -> None:
            while not served.stopped.wait(poll_interval):
                with contextlib.suppress(Exception):
                    list(collector.collect())

        threading.Thread(target=poll, name="metrics-poll", daemon=True).start()
    return served
