"""The one supervisor, run as the chart runs it: a daemon the node plugin talks to.

Proves what issue 11 promises: mounts outlive the node plugin (a read running while the
plugin is SIGKILLed completes byte-exact), a FUSE server's death is reported with its cause
within 2 s and the target heals on republish, servers run with no capabilities as distinct
UIDs that cannot read each other's credentials, no secret reaches a server's argv or
environment, and a server that never becomes ready is a TIMEOUT leaving nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from driver.credentials.source import Credentials
from driver.csi import csi_pb2
from driver.devservers import LOOPBACK, SeaweedS3, wait_until
from driver.failures import FailureError, FailureKind
from driver.mounts import mountinfo, privileges
from driver.mounts.protocol import MountRequest
from driver.mounts.state import target_key
from driver.mounts.supervisor import Supervisor, SupervisorClient
from driver.options import MountOptions
from driver.services import legacy
from tests.integration.csi_support import CsiProcess, csi_server, publish_request

pytestmark = [pytest.mark.fuse, pytest.mark.root]

MiB = 1024 * 1024


@contextlib.contextmanager
def supervisor_daemon(workdir: Path) -> Iterator[SupervisorClient]:
    socket_path = workdir / "supervisor.sock"
    log = open(workdir / "supervisor.log", "wb")  # noqa: SIM115
    daemon = subprocess.Popen(
        [sys.executable, "-m", "driver", "supervisor", f"--socket={socket_path}",
         f"--state-dir={workdir / 'supervisor'}", f"--allowed-root={workdir / 'pods'}"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    client = SupervisorClient(str(socket_path), timeout=120)

    def answers() -> bool:
        with contextlib.suppress(FailureError):
            return client.ping()["pid"] == daemon.pid
        return False

    try:
        wait_until(answers, 30, "the supervisor daemon")
        yield client
    finally:
        daemon.terminate()
        daemon.wait(30)
        log.close()


@pytest.fixture
def daemon_and_server() -> Iterator[tuple[Path, SupervisorClient, CsiProcess]]:
    """(pods dir, supervisor client, node plugin using the supervisor daemon)."""
    workdir = Path(tempfile.mkdtemp(prefix="csi-sup-", dir="/tmp"))  # short socket paths
    (workdir / "pods").mkdir()
    try:
        with supervisor_daemon(workdir) as client, csi_server(
                "node", env={"CLOUDBUCKET_MOUNTER_SOCKET": client.socket_path}) as server:
            yield workdir / "pods", client, server
    finally:
        for entry in reversed(mountinfo.read()):
            if entry.target.startswith(str(workdir)):
                with contextlib.suppress(Exception):
                    mountinfo.unmount(entry.target)
        records = workdir / "supervisor" / "records"
        for record in records.glob("*.json") if records.exists() else ():
            with contextlib.suppress(Exception):
                psutil.Process(json.loads(record.read_text())["pid"]).kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _target(pods: Path, name: str = "p") -> Path:
    (pods / name).mkdir(exist_ok=True)
    return pods / name / "mount"


def _condition(server: CsiProcess, target: Path, volume_id: str = "vol-1"
               ) -> tuple[bool, str]:
    response = server.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(
        volume_id=volume_id, volume_path=str(target)))
    condition = legacy.volume_condition(response)
    assert condition is not None
    return condition


def _unpublish(server: CsiProcess, target: Path, volume_id: str = "vol-1") -> None:
    server.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
        volume_id=volume_id, target_path=str(target)))


def test_a_read_survives_sigkill_of_the_node_plugin(daemon_and_server, seaweed: SeaweedS3,
                                                    s3, bucket: str) -> None:
    pods, client, server = daemon_and_server
    body = os.urandom(64 * MiB)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=body)
    target = _target(pods)
    server.node.NodePublishVolume(publish_request(seaweed, bucket, target))
    digest: list[str] = []
    started = threading.Event()

    def read() -> None:
        hasher = hashlib.sha256()
        with open(target / "big.bin", "rb", buffering=0) as handle:
            hasher.update(handle.read(MiB))
            started.set()
            while chunk := handle.read(MiB):
                hasher.update(chunk)
        digest.append(hasher.hexdigest())

    reader = threading.Thread(target=read)
    reader.start()
    assert started.wait(30)
    server.kill()  # the node plugin dies mid-read; the supervisor daemon keeps the mount
    reader.join(120)
    assert digest == [hashlib.sha256(body).hexdigest()]
    server.start()
    recovered = [e for e in server.log_events() if e.get("event") == "node state recovered"]
    assert recovered[-1]["adopted"] == 1
    _unpublish(server, target)
    assert mountinfo.find(str(target)) is None and not target.exists()
    assert client.list() == []


def test_a_dead_fuse_server_is_reported_at_once_and_the_target_heals(
        daemon_and_server, seaweed: SeaweedS3, s3, bucket: str) -> None:
    pods, client, server = daemon_and_server
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"alpha")
    target = _target(pods)
    server.node.NodePublishVolume(publish_request(seaweed, bucket, target))
    [status] = client.list()
    os.kill(status.pid, signal.SIGKILL)
    # Within 2 s: abnormal, with the cause.
    wait_until(lambda: _condition(server, target)[0], 2, "the volume to be reported abnormal")
    abnormal, message = _condition(server, target)
    assert abnormal and "killed by SIGKILL" in message and str(status.pid) in message
    with pytest.raises(OSError) as dead:
        os.listdir(target)
    assert dead.value.errno == 107  # ENOTCONN at once, no hang
    _unpublish(server, target)
    assert mountinfo.find(str(target)) is None and not target.exists()
    server.node.NodePublishVolume(publish_request(seaweed, bucket, target))
    assert (target / "a.txt").read_bytes() == b"alpha"
    assert _condition(server, target)[0] is False
    _unpublish(server, target)


def test_servers_are_unprivileged_distinct_and_hold_no_secret_in_argv_or_environ(
        daemon_and_server, seaweed: SeaweedS3, s3, bucket: str) -> None:
    pods, client, server = daemon_and_server
    first, second = _target(pods, "a"), _target(pods, "b")
    server.node.NodePublishVolume(publish_request(seaweed, bucket, first))
    server.node.NodePublishVolume(publish_request(seaweed, bucket, second, volume_id="vol-2",
                                                  flags=("uid=1234", "gid=4321")))
    statuses = {Path(s.target): s for s in client.list()}
    uids = set()
    for status in statuses.values():
        caps = privileges.capabilities(status.pid)
        assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == caps["CapAmb"] == 0
        process = psutil.Process(status.pid)
        assert process.uids().real == process.uids().effective == status.uid
        assert status.uid in privileges.UID_RANGE
        uids.add(status.uid)
        argv = " ".join(process.cmdline())
        environ = Path(f"/proc/{status.pid}/environ").read_bytes()
        for secret in (seaweed.secret_key, seaweed.access_key):
            assert secret not in argv and secret.encode() not in environ
    assert len(uids) == 2
    # The files still show the mount's --uid/--gid (or the mounter's own identity).
    (second / "f.txt").write_text("x")
    assert (second / "f.txt").stat().st_uid == 1234 and (second / "f.txt").stat().st_gid == 4321
    assert first.stat().st_uid == os.getuid()
    # Neither server can open the other's credentials file (run as the first one's UID).
    servers = pods.parent / "supervisor" / "servers"
    own = statuses[first]
    other = servers / target_key(str(second)) / "credentials.json"
    mine = servers / target_key(str(first)) / "credentials.json"
    probe = (f"import os, sys; os.setgid({own.uid}); os.setuid({own.uid})\n"
             "for p in sys.argv[1:]:\n"
             "    try: open(p).read(); print('read', p)\n"
             "    except PermissionError: print('denied', p)\n")
    result = subprocess.run([sys.executable, "-c", probe, str(other)], capture_output=True,
                            text=True, check=True)
    assert result.stdout.split() == ["denied", str(other)]
    assert mine.stat().st_uid == own.uid and oct(mine.stat().st_mode & 0o777) == "0o600"
    _unpublish(server, first)
    _unpublish(server, second, "vol-2")


def test_bad_bucket_keeps_its_code_through_the_daemon(daemon_and_server, seaweed: SeaweedS3,
                                                      bucket: str) -> None:
    pods, client, server = daemon_and_server
    target = _target(pods)
    request = publish_request(seaweed, bucket, target, context={
        "bucketName": "no-such-bucket-here", "endpointUrl": seaweed.endpoint})
    with pytest.raises(grpc.RpcError) as error:
        server.node.NodePublishVolume(request)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-bucket-here" in error.value.details()
    assert mountinfo.find(str(target)) is None and not target.exists()
    assert client.list() == [] and server.records() == []


def test_a_server_that_never_gets_ready_is_a_timeout_leaving_nothing(tmp_path: Path) -> None:
    silent = socket.create_server((LOOPBACK, 0))  # accepts, never answers
    state = Path(tempfile.mkdtemp(prefix="sup-", dir="/tmp"))
    supervisor = Supervisor(state, ready_timeout=3)
    target = tmp_path / "mnt"
    target.mkdir()
    try:
        request = MountRequest(
            volume_id="v", target=str(target), bucket="some-bucket",
            options=MountOptions(endpoint_url=f"http://{LOOPBACK}:{silent.getsockname()[1]}"),
            credentials=Credentials(kind="static", access_key_id="k", secret_access_key="s"))
        with pytest.raises(FailureError) as failed:
            SupervisorClient.in_process(supervisor).mount(request)
        assert failed.value.kind is FailureKind.TIMEOUT
        assert mountinfo.find(str(target)) is None
        assert supervisor.records() == []
        assert list((state / "servers").iterdir()) == []
        # No server left: forked servers carry the zygote's command line.
        assert not [p for p in psutil.Process().children(recursive=True)
                    if p.pid != supervisor._zygote.pid and p.status() != psutil.STATUS_ZOMBIE
                    and "driver.mounts.zygote" in p.cmdline()]
    finally:
        supervisor.close()
        silent.close()
        shutil.rmtree(state, ignore_errors=True)


def test_a_dead_zygote_is_recreated_and_live_servers_are_untouched(
        seaweed: SeaweedS3, s3, bucket: str, tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="z.txt", Body=b"zygote")
    state = Path(tempfile.mkdtemp(prefix="sup-", dir="/tmp"))
    supervisor = Supervisor(state)
    client = SupervisorClient.in_process(supervisor)
    env = seaweed.credential_env()
    credentials = Credentials(kind="static", access_key_id=env["AWS_ACCESS_KEY_ID"],
                              secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    targets = [tmp_path / "a", tmp_path / "b"]
    try:
        for index, target in enumerate(targets):
            target.mkdir()
            if index == 1:  # the zygote dies between two mounts
                supervisor._zygote.ensure()
                old = supervisor._zygote.pid
                assert old is not None
                os.kill(old, signal.SIGKILL)
                wait_until(lambda pid=old: not psutil.pid_exists(pid) or
                           psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 10,
                           "the zygote to die")
            client.mount(MountRequest(volume_id=f"v{index}", target=str(target),
                                      bucket=bucket,
                                      options=MountOptions(endpoint_url=seaweed.endpoint),
                                      credentials=credentials))
        assert supervisor._zygote.pid != old
        for target in targets:  # the first server never depended on the old zygote
            assert (target / "z.txt").read_bytes() == b"zygote"
    finally:
        for target in targets:
            with contextlib.suppress(FailureError):
                client.unmount(str(target))
        supervisor.close()
        shutil.rmtree(state, ignore_errors=True)
    assert all(mountinfo.find(str(t)) is None for t in targets)
