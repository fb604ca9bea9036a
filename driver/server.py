"""The CSI gRPC server: `cloudbucket-csi serve --mode node|controller|all`.

One unix socket serves Identity, the grpc health service, and Node and/or Controller. One
interceptor is the only place errors become statuses: `CsiError` keeps its code, the
generated "not implemented" base methods become UNIMPLEMENTED, and anything else becomes
INTERNAL with the traceback logged. The same interceptor writes one structured log line
per request (method, volume id, target, duration, result code); it never looks at the
request's secrets or volume context. Probe and health checks log at debug level only.

SIGTERM/SIGINT: health goes NOT_SERVING, the server stops accepting calls, in-flight calls
get a grace period, and the process exits 0. FUSE servers are separate processes in their
own sessions and keep serving.
"""

from __future__ import annotations

import argparse
import os
import signal
import stat
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from driver import metrics
from driver.csi import csi_pb2_grpc
from driver.services.errors import CsiError

log = structlog.get_logger()
MOUNTER_SOCKET_ENV = "CLOUDBUCKET_MOUNTER_SOCKET"  # set by the chart: the mounter daemon

GRACE_SECONDS = 30.0
QUIET_METHODS = frozenset({"Probe", "Check", "Watch", "GetPluginInfo",
                           "GetPluginCapabilities", "NodeGetCapabilities",
                           "ControllerGetCapabilities", "NodeGetInfo",
                           # kubelet polls these for every volume every minute
                           "NodeGetVolumeStats", "NodeGetVolumeHealth"})
# Request fields safe to log: identifiers and paths. Secrets, volume_context (it carries
# service-account tokens), parameters and mount flags are never read here.
LOGGED_FIELDS = ("volume_id", "target_path", "volume_path", "name")


def _fields(request: Any) -> dict[str, str]:
    out = {}
    for name in LOGGED_FIELDS:
        value = getattr(request, name, None)
        if isinstance(value, str) and value:
            out[name] = value
    return out


class CsiInterceptor(grpc.ServerInterceptor):
    """Error translation and request logging for every unary call."""

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.monotonic()
            code, message = grpc.StatusCode.OK, ""
            try:
                return inner(request, context)
            except CsiError as exc:
                code, message = exc.code, exc.message
            except NotImplementedError:
                code, message = (grpc.StatusCode.UNIMPLEMENTED,
                                 f"{method} is not implemented by cloudbucket.csi.io")
            except Exception as exc:  # noqa: BLE001 - the one place that catches everything
                code = grpc.StatusCode.INTERNAL
                message = f"internal error in {method}: {type(exc).__name__}: {exc}"
                log.exception("unexpected error", method=method, **_fields(request))
            finally:
                metrics.CSI_REQUESTS.labels(method, code.name).inc()
                metrics.CSI_REQUEST_SECONDS.labels(method).observe(time.monotonic() - started)
                level = "debug" if method in QUIET_METHODS and code is grpc.StatusCode.OK \
                    else "info" if code is grpc.StatusCode.OK else "warning"
                getattr(log, level)("grpc request", method=method, code=code.name,
                                    duration_ms=round((time.monotonic() - started) * 1000, 1),
                                    **_fields(request),
                                    **({"error": message} if message else {}))
            context.abort(code, message)

        return grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def socket_path(endpoint: str) -> str:
    """The filesystem path of a `unix:///abs/path` (or `unix:/abs/path`) endpoint."""
    scheme = "unix://" if endpoint.startswith("unix://") else "unix:"
    path = endpoint[len(scheme):] if endpoint.startswith(scheme) else ""
    if path.startswith("/") and not path.startswith("//"):
        return path
    raise ValueError(f"--endpoint must be unix:///absolute/path, got {endpoint!r}")


@dataclass
class CsiServer:
    server: grpc.Server
    health: health.HealthServicer
    socket: str
    node: Any = None
    closers: list[Callable[[], None]] = field(default_factory=list)

    def stop(self, grace: float = GRACE_SECONDS) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        for close in reversed(self.closers):  # mounts keep serving
            close()
        if os.path.exists(self.socket) and stat.S_ISSOCK(os.stat(self.socket).st_mode):
            os.unlink(self.socket)


def build_server(mode: str, socket: str, node_id: str = "", state_dir: str | Path = "",
                 max_workers: int = 32) -> CsiServer:
    """Create (and for node mode, recover) the servicers and bind the socket; not started."""
    from driver.services.identity import IdentityService

    serve_node = mode in ("node", "all")
    serve_controller = mode in ("controller", "all")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers,
                                                    thread_name_prefix="csi"),
                         interceptors=[CsiInterceptor()])
    node = None
    closers: list[Callable[[], None]] = []  # last first, when the server stops
    if serve_node:
        from driver.mounts.state import StateStore
        from driver.mounts.supervisor import Supervisor, SupervisorClient, metrics_socket_of
        from driver.services.node import NodeService

        state_path = Path(state_dir)
        # With the chart's mounter daemon, the supervisor runs there and owns the FUSE
        # servers; otherwise it runs in this process. Either way the node service reaches
        # it through its socket and the same typed protocol.
        mounter_socket = os.environ.get(MOUNTER_SOCKET_ENV)
        if mounter_socket:
            client = SupervisorClient(mounter_socket)
        else:
            from driver.events import event_recorder

            supervisor = Supervisor(state_path / "supervisor", events=event_recorder(node_id))
            closers.append(supervisor.close)
            client = SupervisorClient.in_process(supervisor)
        log.info("supervisor", socket=mounter_socket or "in-process")
        node = NodeService(node_id, StateStore(state_path / "volumes"), client,
                           supervisor_metrics=metrics_socket_of(mounter_socket)
                           if mounter_socket else None)
        adopted, cleaned = node.recover()
        log.info("node state recovered", adopted=adopted, cleaned=cleaned)
        csi_pb2_grpc.add_NodeServicer_to_server(node, server)
    if serve_controller:
        from driver.services.controller import ControllerService

        csi_pb2_grpc.add_ControllerServicer_to_server(ControllerService(), server)
    # Probe: a node plugin is only useful where FUSE is available.
    ready = (lambda: os.path.exists("/dev/fuse")) if serve_node else (lambda: True)
    csi_pb2_grpc.add_IdentityServicer_to_server(IdentityService(serve_controller, ready),
                                                server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = ["", "csi.v1.Identity"]
    services += ["csi.v1.Node"] if serve_node else []
    services += ["csi.v1.Controller"] if serve_controller else []
    for name in services:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    Path(socket).parent.mkdir(parents=True, exist_ok=True)
    if os.path.exists(socket) and stat.S_ISSOCK(os.stat(socket).st_mode):
        os.unlink(socket)  # left by a previous run that was killed
    server.add_insecure_port(f"unix://{socket}")
    return CsiServer(server, health_servicer, socket, node, closers)


class ServeError(ValueError):
    """A configuration `serve` cannot start with (the CLI prints it as one line)."""


def _serve_metrics(args: argparse.Namespace, node: Any) -> metrics.MetricsServer:
    """/metrics of this plugin: CSI calls, the supervisor's counters, and (node) every live
    mount's samples labelled with its volume id, bucket and pod. The live mounts are the
    supervisor's records, so a volume's samples are gone once it is unpublished."""
    from driver.events import event_recorder, increase_reporter

    try:
        host, port = metrics.parse_address(args.metrics_address)
    except ValueError as exc:
        raise ServeError(f"invalid option --metrics-address: {exc}") from None
    recorder = event_recorder(args.node_id) if node is not None else None
    try:
        return metrics.serve_plugin_metrics(
            host, port, list_mounts=node.metrics_sources if node is not None else None,
            on_increase=increase_reporter(recorder) if recorder else None,
            poll_interval=30 if recorder else None)
    except OSError as exc:
        raise ServeError(f"cannot serve metrics on {args.metrics_address}: "
                         f"{exc.strerror or exc}") from None


def run_server(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; return the exit status."""
    if args.mode in ("node", "all") and not args.node_id:
        raise ServeError("--node-id (or NODE_ID) is required for --mode node and all")
    try:
        socket = socket_path(args.endpoint)
    except ValueError as exc:
        raise ServeError(str(exc)) from None
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("shutting down on signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    csi = build_server(args.mode, socket, args.node_id, args.state_dir)
    metrics_server = _serve_metrics(args, csi.node) if args.metrics_address else None
    csi.server.start()
    log.info("serving", mode=args.mode, endpoint=args.endpoint, node_id=args.node_id,
             state_dir=args.state_dir)
    while not stop.wait(1.0):
        pass
    csi.stop(GRACE_SECONDS)
    if metrics_server is not None:
        metrics_server.close()
    log.info("stopped")
    return 0
