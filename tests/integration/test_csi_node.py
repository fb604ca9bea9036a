"""The CSI node plugin over a real unix socket, with real FUSE mounts of a real SeaweedFS.

Each test starts `cloudbucket-csi serve --mode all` as a process and talks to it with the
generated stubs, the way kubelet does.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2

from driver.csi import csi_pb2
from driver.devservers import SeaweedS3, free_port, wait_until
from driver.mounts import mountinfo
from driver.mounts.state import target_key
from driver.services import legacy
from driver.volume import TOKENS_KEY
from tests.integration.csi_support import (
    CsiProcess,
    Mode,
    capability,
    csi_server,
    publish_request,
    secrets,
    volume_context,
)

pytestmark = [pytest.mark.fuse, pytest.mark.root]


@pytest.fixture
def server() -> Iterator[CsiProcess]:
    with csi_server("all") as process:
        yield process


@pytest.fixture(scope="module")
def shared_server() -> Iterator[CsiProcess]:
    """One server for the tests that leave nothing behind (the bad-input table)."""
    with csi_server("all") as process:
        yield process


def _target(server: CsiProcess, name: str = "target") -> Path:
    # kubelet creates the parent of the target path; the plugin creates the target itself.
    parent = server.workdir / "pods" / name
    parent.mkdir(parents=True, exist_ok=True)
    return parent / "mount"


def _pid(server: CsiProcess, target: Path) -> int:
    return server.server_pid(target)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # exited meanwhile
        return []


def _stats(server: CsiProcess, volume_id: str, target: Path) -> tuple[bool, str]:
    response = server.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(
        volume_id=volume_id, volume_path=str(target)))
    assert [u.unit for u in response.usage] == [csi_pb2.VolumeUsage.BYTES]
    condition = legacy.volume_condition(response)
    assert condition is not None
    return condition


def _unpublish(server: CsiProcess, target: Path, volume_id: str = "vol-1") -> None:
    server.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
        volume_id=volume_id, target_path=str(target)))


def _assert_clean(server: CsiProcess, target: Path) -> None:
    """Nothing mounted, no record, no target directory, no credentials file left."""
    assert mountinfo.find(str(target)) is None
    assert not target.exists()
    assert [r for r in server.records() if r["target"] == str(target)] == []
    key = target_key(str(target))
    assert not (server.supervisor_dir / "servers" / key).exists()
    assert not (server.supervisor_dir / "logs" / f"{key}.log").exists()
    assert [s for s in server.servers() if s["target"] == str(target)] == []


def test_publish_write_read_unpublish(server: CsiProcess, seaweed: SeaweedS3, s3,
                                      bucket: str) -> None:
    target = _target(server)
    server.node.NodePublishVolume(publish_request(seaweed, bucket, target))
    entry = mountinfo.find(str(target))
    assert entry is not None and entry.fstype == "fuse.cloudbucket"
    (target / "hello.txt").write_bytes(b"hello from a pod\n")
    assert (target / "hello.txt").read_bytes() == b"hello from a pod\n"
    body = s3.get_object(Bucket=bucket, Key="hello.txt")["Body"].read()
    assert body == b"hello from a pod\n"
    assert _stats(server, "vol-1", target) == (False, f"mounted, served by pid "
                                                      f"{_pid(server, target)}")
    pid = _pid(server, target)
    _unpublish(server, target)
    _assert_clean(server, target)
    assert not _running(pid)
    # Unpublishing again (kubelet retry) succeeds.
    _unpublish(server, target)


def test_written_file_is_uploaded_before_unpublish_returns(server: CsiProcess,
                                                          seaweed: SeaweedS3, s3,
                                                          bucket: str) -> None:
    target = _target(server)
    server.node.NodePublishVolume(publish_request(seaweed, bucket, target))
    data = os.urandom(3 * 1024 * 1024)
    with open(target / "big.bin", "wb") as handle:
        handle.write(data)
    _unpublish(server, target)
    assert s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == data


def test_two_targets_of_one_volume_are_independent(server: CsiProcess, seaweed: SeaweedS3,
                                                   bucket: str) -> None:
    first, second = _target(server, "pod-a"), _target(server, "pod-b")
    for target in (first, second):
        server.node.NodePublishVolume(publish_request(
            seaweed, bucket, target, mode=Mode.MULTI_NODE_MULTI_WRITER))
    assert _pid(server, first) != _pid(server, second)
    (first / "shared.txt").write_text("written through pod-a")
    assert (second / "shared.txt").read_text() == "written through pod-a"
    _unpublish(server, first)
    assert mountinfo.find(str(first)) is None
    assert (second / "shared.txt").read_text() == "written through pod-a"
    assert _stats(server, "vol-1", second)[0] is False
    _unpublish(server, second)
    _assert_clean(server, second)


def test_repeated_publish_succeeds_and_conflicting_one_fails(server: CsiProcess,
                                                            seaweed: SeaweedS3,
                                                            bucket: str) -> None:
    target = _target(server)
    request = publish_request(seaweed, bucket, target)
    server.node.NodePublishVolume(request)
    pid = _pid(server, target)
    server.node.NodePublishVolume(request)
    assert _pid(server, target) == pid  # no remount

    conflicting = publish_request(seaweed, bucket, target, readonly=True)
    with pytest.raises(grpc.RpcError) as error:
        server.node.NodePublishVolume(conflicting)
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "readonly" in error.value.details()

    other_volume = publish_request(seaweed, bucket, target, volume_id="vol-2")
    with pytest.raises(grpc.RpcError) as error:
        server.node.NodePublishVolume(other_volume)
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "vol-1" in error.value.details()
    assert _pid(server, target) == pid
    _unpublish(server, target)
    _assert_clean(server, target)


def test_republish_rewrites_the_credentials_file_without_remounting(
        server: CsiProcess, seaweed: SeaweedS3, bucket: str) -> None:
    target = _target(server)
    server.node.NodePublishVolume(publish_request(seaweed, bucket, target))
    pid = _pid(server, target)
    credentials = server.supervisor_dir / "servers" / target_key(str(target)) / \
        "credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(credentials.parent.stat().st_mode) == 0o700
    assert credentials.stat().st_uid == psutil.Process(pid).uids().real != 0
    assert json.loads(credentials.read_text())["session_token"] == ""
    rotated = {**secrets(seaweed), "AWS_SESSION_TOKEN": "rotated-session-token"}
    server.node.NodePublishVolume(publish_request(seaweed, bucket, target, secret=rotated))
    assert json.loads(credentials.read_text())["session_token"] == "rotated-session-token"
    assert _pid(server, target) == pid
    assert "rotated-session-token" not in server.log()
    _unpublish(server, target)
    _assert_clean(server, target)


def test_concurrent_publishes_of_one_volume_are_serialized(server: CsiProcess,
                                                           seaweed: SeaweedS3,
                                                           bucket: str) -> None:
    target = _target(server)
    request = publish_request(seaweed, bucket, target)
    errors: list[Exception] = []

    def publish() -> None:
        try:
            server.node.NodePublishVolume(request)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert len([m for m in mountinfo.read() if m.target == str(target)]) == 1
    starts = [e for e in server.log_events() if e.get("event") == "FUSE server ready"]
    assert len(starts) == 1
    _unpublish(server, target)
    _assert_clean(server, target)


def test_readonly_publish_refuses_writes(server: CsiProcess, seaweed: SeaweedS3, s3,
                                         bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="existing.txt", Body=b"data")
    target = _target(server)
    server.node.NodePublishVolume(publish_request(
        seaweed, bucket, target, mode=Mode.MULTI_NODE_READER_ONLY))
    assert (target / "existing.txt").read_bytes() == b"data"
    with pytest.raises(OSError) as error:
        (target / "new.txt").write_text("nope")
    assert error.value.errno == errno.EROFS
    _unpublish(server, target)
    _assert_clean(server, target)


def test_node_plugin_sigkill_and_restart_keeps_mounts(server: CsiProcess,
                                                      seaweed: SeaweedS3, s3,
                                                      bucket: str) -> None:
    target = _target(server)
    server.node.NodePublishVolume(publish_request(seaweed, bucket, target))
    pid = _pid(server, target)
    # Its own session: the plugin's signals do not reach it.
    assert os.getsid(pid) not in (os.getsid(server.process.pid), os.getsid(0))
    server.kill()
    assert psutil.pid_exists(pid)
    (target / "while-plugin-down.txt").write_text("still serving")
    assert s3.get_object(Bucket=bucket, Key="while-plugin-down.txt")["Body"].read() == \
        b"still serving"
    server.start()
    recovered = [e for e in server.log_events() if e.get("event") == "node state recovered"]
    assert recovered[-1]["adopted"] == 1 and recovered[-1]["cleaned"] == 0
    assert _stats(server, "vol-1", target)[0] is False
    server.node.NodePublishVolume(publish_request(seaweed, bucket, target))
    assert _pid(server, target) == pid
    _unpublish(server, target)
    _assert_clean(server, target)
    wait_until(lambda: not psutil.pid_exists(pid), 30, "the adopted FUSE server to exit")


def test_sigterm_exits_zero_and_mounts_keep_serving(server: CsiProcess, seaweed: SeaweedS3,
                                                    bucket: str) -> None:
    target = _target(server)
    server.node.NodePublishVolume(publish_request(seaweed, bucket, target))
    assert server.terminate() == 0
    assert not server.socket.exists()
    (target / "after-sigterm.txt").write_text("ok")
    assert (target / "after-sigterm.txt").read_text() == "ok"
    server.start()
    _unpublish(server, target)
    _assert_clean(server, target)


def test_killed_fuse_server_is_reported_abnormal(server: CsiProcess, seaweed: SeaweedS3,
                                                 bucket: str) -> None:
    target = _target(server)
    server.node.NodePublishVolume(publish_request(seaweed, bucket, target))
    pid = _pid(server, target)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not mountinfo.is_alive(str(target)), 30, "the mount to die")
    abnormal, message = _stats(server, "vol-1", target)
    assert abnormal is True
    assert "ENOTCONN" in message and str(pid) in message
    health = server.node.NodeGetVolumeHealth(csi_pb2.NodeGetVolumeHealthRequest(
        volume_id="vol-1"))
    [entry] = health.volume_health.health_statuses
    assert entry.status == csi_pb2.INACCESSIBLE and str(target) in entry.message
    # A republish heals the target: the dead mount is replaced by a live one.
    server.node.NodePublishVolume(publish_request(seaweed, bucket, target))
    assert _pid(server, target) != pid
    assert _stats(server, "vol-1", target)[0] is False
    os.kill(_pid(server, target), signal.SIGKILL)
    wait_until(lambda: not mountinfo.is_alive(str(target)), 30, "the mount to die again")
    _unpublish(server, target)  # unpublish of a dead mount works too
    _assert_clean(server, target)


def test_restart_cleans_up_stale_mounts(server: CsiProcess, seaweed: SeaweedS3,
                                        bucket: str) -> None:
    live, dead = _target(server, "live"), _target(server, "dead")
    server.node.NodePublishVolume(publish_request(seaweed, bucket, live))
    server.node.NodePublishVolume(publish_request(seaweed, bucket, dead, volume_id="vol-2"))
    server.kill()
    os.kill(_pid(server, dead), signal.SIGKILL)
    wait_until(lambda: not mountinfo.is_alive(str(dead)), 30, "the mount to die")
    server.start()
    recovered = [e for e in server.log_events() if e.get("event") == "node state recovered"]
    assert recovered[-1]["adopted"] == 1 and recovered[-1]["cleaned"] == 1
    assert mountinfo.find(str(dead)) is None  # no ENOTCONN mount left behind
    assert [r["target"] for r in server.records()] == [str(live)]
    _unpublish(server, dead, "vol-2")
    _assert_clean(server, dead)
    _unpublish(server, live)
    _assert_clean(server, live)


def test_inline_ephemeral_volume(server: CsiProcess, seaweed: SeaweedS3, s3,
                                 bucket: str) -> None:
    target = _target(server)
    context = volume_context(seaweed, bucket, keyPrefix="inline/", **{
        "csi.storage.k8s.io/ephemeral": "true",
        "csi.storage.k8s.io/pod.name": "web-0",
        "csi.storage.k8s.io/pod.namespace": "default",
    })
    server.node.NodePublishVolume(publish_request(
        seaweed, bucket, target, volume_id="csi-0123456789abcdef", context=context))
    (target / "note.txt").write_text("inline")
    assert s3.get_object(Bucket=bucket, Key="inline/note.txt")["Body"].read() == b"inline"
    assert server.records()[0]["ephemeral"] is True
    _unpublish(server, target, "csi-0123456789abcdef")
    _assert_clean(server, target)


def test_request_logs_are_structured_and_never_hold_secrets(server: CsiProcess,
                                                            seaweed: SeaweedS3,
                                                            bucket: str) -> None:
    target = _target(server)
    token = "eyJhbGciOiJSUzI1NiJ9.secret-service-account-token.sig"
    context = volume_context(seaweed, bucket, **{
        TOKENS_KEY: json.dumps({"sts.amazonaws.com": {"token": token}})})
    server.node.NodePublishVolume(publish_request(seaweed, bucket, target, context=context))
    fuse_server = psutil.Process(_pid(server, target))
    argv = fuse_server.cmdline()
    assert not [arg for arg in argv if seaweed.secret_key in arg or token in arg]
    environ = Path(f"/proc/{fuse_server.pid}/environ").read_bytes()
    assert seaweed.secret_key.encode() not in environ and token.encode() not in environ
    _unpublish(server, target)
    events = [e for e in server.log_events() if e.get("event") == "grpc request"]
    publish = [e for e in events if e["method"] == "NodePublishVolume"]
    assert publish and publish[0]["volume_id"] == "vol-1"
    assert publish[0]["target_path"] == str(target)
    assert publish[0]["code"] == "OK" and publish[0]["duration_ms"] > 0
    log_text = server.log()
    for secret in (seaweed.secret_key, seaweed.access_key, token):
        assert secret not in log_text
    check = server.health.Check(health_pb2.HealthCheckRequest(service="csi.v1.Node"))
    assert check.status == health_pb2.HealthCheckResponse.SERVING


# --- bad input: every case gets its code and a message naming what is wrong -------------

def _case(**changes: object):
    return changes


BAD_PUBLISHES = {
    "no volume id": (_case(volume_id=""), grpc.StatusCode.INVALID_ARGUMENT, "volume_id"),
    "no target path": (_case(target_path=""), grpc.StatusCode.INVALID_ARGUMENT,
                       "target_path"),
    "relative target": (_case(target_path="pods/x/mount"), grpc.StatusCode.INVALID_ARGUMENT,
                        "target_path"),
    "no capability": (_case(capability=None), grpc.StatusCode.INVALID_ARGUMENT,
                      "volume_capability"),
    "block volume": (_case(capability=capability(block=True)),
                     grpc.StatusCode.INVALID_ARGUMENT, "volume_capability.block"),
    "unsupported access mode": (_case(capability=capability(Mode.MULTI_NODE_SINGLE_WRITER)),
                                grpc.StatusCode.INVALID_ARGUMENT,
                                "volume_capability.access_mode"),
    "no bucketName": (_case(context={}), grpc.StatusCode.INVALID_ARGUMENT, "bucketName"),
    "invalid bucketName": (_case(context={"bucketName": "Not_A_Bucket"}),
                           grpc.StatusCode.INVALID_ARGUMENT, "bucketName"),
    "keyPrefix without slash": (_case(context={"keyPrefix": "data"}),
                                grpc.StatusCode.INVALID_ARGUMENT, "volumeAttributes.keyPrefix"),
    "unknown attribute": (_case(context={"bukcetName": "x"}), grpc.StatusCode.INVALID_ARGUMENT,
                          "volumeAttributes.bukcetName"),
    "bad endpointUrl": (_case(context={"endpointUrl": "ftp://x"}),
                        grpc.StatusCode.INVALID_ARGUMENT, "volumeAttributes.endpointUrl"),
    "bad provider": (_case(context={"provider": "azure"}), grpc.StatusCode.INVALID_ARGUMENT,
                     "volumeAttributes.provider"),
    "unknown mount option": (_case(flags=("allow-everything",)),
                             grpc.StatusCode.INVALID_ARGUMENT, "allow-everything"),
    "bad uid option": (_case(flags=("uid=-5",)), grpc.StatusCode.INVALID_ARGUMENT, "uid"),
    "missing secret key": (_case(secret={"AWS_ACCESS_KEY_ID": "k"}),
                           grpc.StatusCode.INVALID_ARGUMENT, "AWS_SECRET_ACCESS_KEY"),
    "unknown secret key": (_case(secret={"AWS_KEY": "k"}), grpc.StatusCode.INVALID_ARGUMENT,
                           "secret key AWS_KEY"),
    "roleArn without token": (_case(context={"roleArn": "arn:aws:iam::1:role/r"}, secret={}),
                              grpc.StatusCode.INVALID_ARGUMENT, TOKENS_KEY),
    "malformed roleArn": (_case(context={"roleArn": "role/r", TOKENS_KEY: "{}"}, secret={}),
                          grpc.StatusCode.INVALID_ARGUMENT, "volumeAttributes.roleArn"),
    "wrong secret": (_case(secret={"AWS_ACCESS_KEY_ID": "cloudbucket-test-key",
                                   "AWS_SECRET_ACCESS_KEY": "wrong"}),
                     grpc.StatusCode.PERMISSION_DENIED, "AWS_ACCESS_KEY_ID"),
    "missing bucket": (_case(context={"bucketName": "no-such-bucket-here"}),
                       grpc.StatusCode.NOT_FOUND, "no-such-bucket-here"),
    "unreachable endpoint": (_case(context={"endpointUrl": "UNREACHABLE"}),
                             grpc.StatusCode.UNAVAILABLE, "cannot reach the endpoint"),
}


@pytest.mark.parametrize("case", list(BAD_PUBLISHES), ids=list(BAD_PUBLISHES))
def test_bad_publish_gets_its_code_and_names_the_field(shared_server: CsiProcess,
                                                       seaweed: SeaweedS3, bucket: str,
                                                       case: str) -> None:
    server = shared_server
    changes, code, needle = BAD_PUBLISHES[case]
    target = _target(server)
    context = volume_context(seaweed, bucket)
    for key, value in dict(changes.get("context", {"bucketName": bucket})).items():
        if value == "UNREACHABLE":
            value = f"http://127.0.0.1:{free_port()}"
        context[key] = value
    if changes.get("context") == {}:
        context.pop("bucketName")
    request = publish_request(seaweed, bucket, target, context=context,
                              flags=changes.get("flags", ()),  # type: ignore[arg-type]
                              secret=changes.get("secret"))  # type: ignore[arg-type]
    if "volume_id" in changes:
        request.volume_id = changes["volume_id"]  # type: ignore[assignment]
    if "target_path" in changes:
        request.target_path = changes["target_path"]  # type: ignore[assignment]
    if "capability" in changes:
        request.ClearField("volume_capability")
        if changes["capability"] is not None:
            request.volume_capability.CopyFrom(changes["capability"])
    with pytest.raises(grpc.RpcError) as error:
        server.node.NodePublishVolume(request, timeout=120)
    assert error.value.code() == code, error.value.details()
    assert needle in error.value.details()
    assert seaweed.secret_key not in error.value.details()
    _assert_clean(server, target)
    assert server.records() == []
    assert not [p for p in psutil.Process(os.getpid()).children(recursive=True)
                if _running(p.pid) and "--foreground" in _cmdline(p)]


def test_stats_and_unpublish_of_unknown_volumes(server: CsiProcess, seaweed: SeaweedS3,
                                                bucket: str) -> None:
    target = _target(server)
    with pytest.raises(grpc.RpcError) as error:
        _stats(server, "vol-1", target)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "vol-1" in error.value.details()
    server.node.NodePublishVolume(publish_request(seaweed, bucket, target))
    with pytest.raises(grpc.RpcError) as error:
        _unpublish(server, target, "vol-other")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "vol-other" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        _stats(server, "vol-other", target)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    _unpublish(server, target)
    _assert_clean(server, target)


def test_single_writer_volume_cannot_be_published_twice(server: CsiProcess,
                                                        seaweed: SeaweedS3,
                                                        bucket: str) -> None:
    first, second = _target(server, "a"), _target(server, "b")
    server.node.NodePublishVolume(publish_request(
        seaweed, bucket, first, mode=Mode.SINGLE_NODE_SINGLE_WRITER))
    with pytest.raises(grpc.RpcError) as error:
        server.node.NodePublishVolume(publish_request(
            seaweed, bucket, second, mode=Mode.SINGLE_NODE_SINGLE_WRITER))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "SINGLE_NODE_SINGLE_WRITER" in error.value.details()
    _assert_clean(server, second)
    _unpublish(server, first)
    _assert_clean(server, first)
