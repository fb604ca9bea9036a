"""The server's one interceptor over a real unix socket: error translation and request logs
that never carry secrets."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from structlog.testing import capture_logs

from driver.csi import csi_pb2, csi_pb2_grpc
from driver.server import CsiInterceptor, build_server, socket_path
from driver.services.errors import CsiError


class Servicer(csi_pb2_grpc.NodeServicer):
    def NodePublishVolume(self, request, context):
        if request.volume_id == "coded":
            raise CsiError(grpc.StatusCode.NOT_FOUND, "bucketName: bucket b does not exist")
        if request.volume_id == "crash":
            raise KeyError("boom")
        return csi_pb2.NodePublishVolumeResponse()


@pytest.fixture
def channel() -> Iterator[grpc.Channel]:
    from concurrent import futures

    workdir = Path(tempfile.mkdtemp(prefix="csi-unit-", dir="/tmp"))
    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[CsiInterceptor()])
    csi_pb2_grpc.add_NodeServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"unix://{workdir}/s.sock")
    server.start()
    with grpc.insecure_channel(f"unix://{workdir}/s.sock") as chan:
        yield chan
    server.stop(None).wait()
    (workdir / "s.sock").unlink(missing_ok=True)
    workdir.rmdir()


def _publish(channel: grpc.Channel, volume_id: str) -> grpc.RpcError | None:
    request = csi_pb2.NodePublishVolumeRequest(
        volume_id=volume_id, target_path="/t",
        volume_context={"csi.storage.k8s.io/serviceAccount.tokens": "TOKEN-VALUE"},
        secrets={"AWS_SECRET_ACCESS_KEY": "SECRET-VALUE"})
    try:
        csi_pb2_grpc.NodeStub(channel).NodePublishVolume(request)
    except grpc.RpcError as exc:
        return exc
    return None


def test_errors_become_statuses_and_requests_are_logged(channel: grpc.Channel) -> None:
    with capture_logs() as logs:
        assert _publish(channel, "ok") is None
        coded = _publish(channel, "coded")
        crash = _publish(channel, "crash")
        stage = None
        try:
            csi_pb2_grpc.NodeStub(channel).NodeStageVolume(csi_pb2.NodeStageVolumeRequest())
        except grpc.RpcError as exc:
            stage = exc
    assert coded is not None and coded.code() == grpc.StatusCode.NOT_FOUND
    assert coded.details() == "bucketName: bucket b does not exist"
    assert crash is not None and crash.code() == grpc.StatusCode.INTERNAL
    assert "KeyError" in crash.details()
    assert stage is not None and stage.code() == grpc.StatusCode.UNIMPLEMENTED
    requests = [e for e in logs if e["event"] == "grpc request"]
    assert [(e["method"], e.get("volume_id"), e["code"]) for e in requests] == [
        ("NodePublishVolume", "ok", "OK"), ("NodePublishVolume", "coded", "NOT_FOUND"),
        ("NodePublishVolume", "crash", "INTERNAL"), ("NodeStageVolume", None, "UNIMPLEMENTED")]
    assert all(isinstance(e["duration_ms"], float) for e in requests)
    assert any(e["event"] == "unexpected error" and e.get("exc_info") for e in logs)
    assert "SECRET-VALUE" not in repr(logs) and "TOKEN-VALUE" not in repr(logs)


def test_socket_path_accepts_only_absolute_unix_endpoints() -> None:
    assert socket_path("unix:///csi/csi.sock") == "/csi/csi.sock"
    assert socket_path("unix:/csi/csi.sock") == "/csi/csi.sock"
    for bad in ("tcp://127.0.0.1:1", "unix://relative.sock", "/csi/csi.sock"):
        with pytest.raises(ValueError):
            socket_path(bad)


def test_build_server_replaces_a_stale_socket(tmp_path: Path) -> None:
    import socket as sockets

    workdir = Path(tempfile.mkdtemp(prefix="csi-unit-", dir="/tmp"))
    path = workdir / "csi.sock"
    stale = sockets.socket(sockets.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, as after a SIGKILL
    csi = build_server("controller", str(path))
    csi.server.start()
    with grpc.insecure_channel(f"unix://{path}") as chan:
        info = csi_pb2_grpc.IdentityStub(chan).GetPluginInfo(csi_pb2.GetPluginInfoRequest())
    assert info.name == "cloudbucket.csi.io"
    csi.stop(1)
    assert not path.exists()
    workdir.rmdir()
