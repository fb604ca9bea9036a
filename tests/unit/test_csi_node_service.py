"""NodeService logic over an in-memory Mounter: validation, idempotency, locking, recovery
and failure cleanup. (The real mounter is proven in tests/integration/test_csi_node.py.)"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from driver.credentials.source import Credentials
from driver.csi import csi_pb2
from driver.failures import Failure, FailureError, FailureKind
from driver.mounts.protocol import MountRequest, ServerStatus
from driver.mounts.state import StateStore
from driver.services.errors import CsiError
from driver.services.node import NodeService

Mode = csi_pb2.VolumeCapability.AccessMode.Mode


class FakeMounter:
    """Records calls; `fail` makes the next mount fail; `dead` marks targets as dead."""

    def __init__(self) -> None:
        self.mounted: dict[str, int] = {}  # target -> pid
        self.started: list[tuple[str, MountRequest]] = []
        self.credentials: dict[str, Credentials] = {}
        self.stopped: list[str] = []
        self.dead: set[str] = set()
        self.fail: FailureError | None = None
        self.gate: threading.Event | None = None
        self._next_pid = 1000

    def mount(self, request: MountRequest) -> ServerStatus:
        self._next_pid += 1
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        self.started.append((request.target, request))
        self.mounted[request.target] = self._next_pid
        self.credentials[request.target] = request.credentials
        return self.check(request.target)

    def check(self, target: str) -> ServerStatus:
        if target not in self.mounted:
            raise FailureError(Failure(FailureKind.NOT_MOUNTED, f"nothing at {target}"))
        ok = target not in self.dead
        return ServerStatus(target=target, volume_id="?", ok=ok,
                            message="fine" if ok else "ENOTCONN: server gone",
                            pid=self.mounted[target])

    def update_credentials(self, target: str, credentials: Credentials) -> None:
        assert target in self.mounted
        self.credentials[target] = credentials

    def unmount(self, target: str, terminate: bool = False) -> None:
        self.stopped.append(target)
        self.mounted.pop(target, None)
        self.dead.discard(target)


@pytest.fixture
def mounter() -> FakeMounter:
    return FakeMounter()


@pytest.fixture
def node(tmp_path: Path, mounter: FakeMounter) -> NodeService:
    return NodeService("node-1", StateStore(tmp_path / "state"), mounter)


def _request(target: Path, volume_id: str = "vol-1", mode: int = Mode.SINGLE_NODE_WRITER,
             readonly: bool = False, secret: str = "s") -> csi_pb2.NodePublishVolumeRequest:
    return csi_pb2.NodePublishVolumeRequest(
        volume_id=volume_id, target_path=str(target), readonly=readonly,
        volume_capability=csi_pb2.VolumeCapability(
            mount=csi_pb2.VolumeCapability.MountVolume(mount_flags=["allow-delete"]),
            access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode)),
        volume_context={"bucketName": "bucket", "keyPrefix": "data/"},
        secrets={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": secret})


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(CsiError) as error:
        call()
    return error.value.code, error.value.message


def test_publish_builds_the_spec_and_records_it(node: NodeService, mounter: FakeMounter,
                                                tmp_path: Path) -> None:
    target = tmp_path / "t"
    node.NodePublishVolume(_request(target, readonly=True), None)
    [(started_target, spec)] = mounter.started
    assert started_target == str(target) and target.is_dir()
    assert spec.bucket == "bucket" and spec.options.prefix == "data/"
    assert spec.options.read_only and spec.options.allow_delete
    assert spec.credentials.access_key_id == "k" and spec.volume_id == "vol-1"
    record = node.state.get(str(target))
    assert record is not None and record.phase == "ready"
    assert record.options["read_only"] is True


def test_provisioner_bookkeeping_attributes_are_ignored(node: NodeService,
                                                        mounter: FakeMounter,
                                                        tmp_path: Path) -> None:
    request = _request(tmp_path / "t")
    request.volume_context["storage.kubernetes.io/csiProvisionerIdentity"] = "123-csi"
    request.volume_context["csi.storage.k8s.io/pod.name"] = "web-0"
    request.volume_context["csi.storage.k8s.io/pod.namespace"] = "shop"
    node.NodePublishVolume(request, None)
    [(_, mount)] = mounter.started
    assert mount.labels == {"pod_name": "web-0", "pod_namespace": "shop"}


def test_compatible_repeat_rewrites_credentials_without_remounting(
        node: NodeService, mounter: FakeMounter, tmp_path: Path) -> None:
    target = tmp_path / "t"
    node.NodePublishVolume(_request(target), None)
    node.NodePublishVolume(_request(target, secret="rotated"), None)
    assert len(mounter.started) == 1
    assert mounter.credentials[str(target)].secret_access_key == "rotated"


def test_incompatible_repeat_is_already_exists(node: NodeService, tmp_path: Path) -> None:
    target = tmp_path / "t"
    node.NodePublishVolume(_request(target), None)
    code, message = _code(lambda: node.NodePublishVolume(_request(target, readonly=True), None))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "readonly" in message
    code, message = _code(lambda: node.NodePublishVolume(
        _request(target, mode=Mode.MULTI_NODE_MULTI_WRITER), None))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "access_mode" in message
    code, message = _code(lambda: node.NodePublishVolume(_request(target, "vol-2"), None))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "vol-1" in message


def test_republish_over_a_dead_mount_remounts(node: NodeService, mounter: FakeMounter,
                                              tmp_path: Path) -> None:
    target = tmp_path / "t"
    node.NodePublishVolume(_request(target), None)
    mounter.dead.add(str(target))
    node.NodePublishVolume(_request(target), None)
    assert len(mounter.started) == 2 and mounter.stopped == [str(target)]


def test_failed_start_leaves_nothing_behind(node: NodeService, mounter: FakeMounter,
                                            tmp_path: Path) -> None:
    target = tmp_path / "t"
    for kind, code in ((FailureKind.ACCESS_DENIED, grpc.StatusCode.PERMISSION_DENIED),
                       (FailureKind.BUCKET_NOT_FOUND, grpc.StatusCode.NOT_FOUND),
                       (FailureKind.UNREACHABLE, grpc.StatusCode.UNAVAILABLE),
                       (FailureKind.INVALID_OPTION, grpc.StatusCode.INVALID_ARGUMENT),
                       (FailureKind.BUSY, grpc.StatusCode.FAILED_PRECONDITION),
                       (FailureKind.TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED),
                       (FailureKind.FAILED, grpc.StatusCode.INTERNAL)):
        for wording in (f"reason {kind}", f"completely different words {kind}"):
            mounter.fail = FailureError(Failure(kind, wording))
            got, message = _code(lambda: node.NodePublishVolume(_request(target), None))
            assert got == code and wording in message and "bucket" in message
            assert not target.exists() and node.state.all() == []
    mounter.fail = FailureError(Failure(FailureKind.ACCESS_DENIED, "denied"))
    _, message = _code(lambda: node.NodePublishVolume(_request(target), None))
    assert "AWS_ACCESS_KEY_ID" in message  # names where the refused credentials came from


def test_single_node_single_writer_is_exclusive(node: NodeService, tmp_path: Path) -> None:
    node.NodePublishVolume(_request(tmp_path / "a", mode=Mode.SINGLE_NODE_SINGLE_WRITER), None)
    code, _ = _code(lambda: node.NodePublishVolume(
        _request(tmp_path / "b", mode=Mode.SINGLE_NODE_SINGLE_WRITER), None))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    node.NodePublishVolume(_request(tmp_path / "c", "vol-2", Mode.SINGLE_NODE_MULTI_WRITER),
                           None)
    node.NodePublishVolume(_request(tmp_path / "d", "vol-2", Mode.SINGLE_NODE_MULTI_WRITER),
                           None)


def test_concurrent_publishes_of_one_target_start_one_server(
        node: NodeService, mounter: FakeMounter, tmp_path: Path) -> None:
    mounter.gate = threading.Event()
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            node.NodePublishVolume(_request(tmp_path / "t"), None)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(5)]
    for thread in threads:
        thread.start()
    mounter.gate.set()
    for thread in threads:
        thread.join(10)
    assert errors == [] and len(mounter.started) == 1
    assert len(node._locks) == 0  # lock entries are dropped once nobody holds them


def test_unpublish_is_idempotent_and_checks_the_volume(node: NodeService,
                                                       mounter: FakeMounter,
                                                       tmp_path: Path) -> None:
    target = tmp_path / "t"
    node.NodePublishVolume(_request(target), None)
    code, _ = _code(lambda: node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
        volume_id="vol-2", target_path=str(target)), None))
    assert code == grpc.StatusCode.NOT_FOUND
    for _ in range(2):
        node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
            volume_id="vol-1", target_path=str(target)), None)
    assert not target.exists() and node.state.all() == []


def test_stats_report_honest_usage_and_condition(node: NodeService, mounter: FakeMounter,
                                                 tmp_path: Path) -> None:
    from driver.services import legacy

    target = tmp_path / "t"
    node.NodePublishVolume(_request(target), None)
    request = csi_pb2.NodeGetVolumeStatsRequest(volume_id="vol-1", volume_path=str(target))
    response = node.NodeGetVolumeStats(request, None)
    [usage] = response.usage
    assert usage.unit == csi_pb2.VolumeUsage.BYTES and usage.total == usage.used == 0
    assert legacy.volume_condition(response) == (False, "fine")
    mounter.dead.add(str(target))
    assert legacy.volume_condition(node.NodeGetVolumeStats(request, None)) == (
        True, "ENOTCONN: server gone")
    health = node.NodeGetVolumeHealth(csi_pb2.NodeGetVolumeHealthRequest(volume_id="vol-1"),
                                      None)
    assert [e.status for e in health.volume_health.health_statuses] == [csi_pb2.INACCESSIBLE]
    code, _ = _code(lambda: node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(
        volume_id="vol-1", volume_path="some/path"), None))
    assert code == grpc.StatusCode.NOT_FOUND


def test_recover_adopts_live_mounts_and_cleans_stale_ones(tmp_path: Path,
                                                         mounter: FakeMounter) -> None:
    first = NodeService("n", StateStore(tmp_path / "state"), mounter)
    first.NodePublishVolume(_request(tmp_path / "live"), None)
    first.NodePublishVolume(_request(tmp_path / "dead", "vol-2"), None)
    mounter.dead.add(str(tmp_path / "dead"))
    # A new process: the state is read back from disk.
    second = NodeService("n", StateStore(tmp_path / "state"), mounter)
    assert second.recover() == (1, 1)
    assert [r.target for r in second.state.all()] == [str(tmp_path / "live")]
    assert mounter.stopped == [str(tmp_path / "dead")]


def test_validation_names_the_field(node: NodeService, tmp_path: Path) -> None:
    cases = {
        "volume_id": _request(tmp_path / "t", volume_id=""),
        "target_path": csi_pb2.NodePublishVolumeRequest(volume_id="v"),
        "volume_capability is required": csi_pb2.NodePublishVolumeRequest(
            volume_id="v", target_path=str(tmp_path)),
    }
    for needle, request in cases.items():
        code, message = _code(lambda r=request: node.NodePublishVolume(r, None))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in message
