"""The node plugin with CLOUDBUCKET_MOUNTER_SOCKET set (the chart's mounter DaemonSet): the
daemon owns the FUSE servers; the CSI contract seen over the socket is the same."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from driver.csi import csi_pb2
from driver.devservers import SeaweedS3, wait_until
from driver.mounts import mountinfo
from driver.mounts.mounter import MounterClient, MounterError
from driver.services import legacy
from tests.integration.csi_support import CsiProcess, csi_server, publish_request

pytestmark = [pytest.mark.fuse, pytest.mark.root]


@pytest.fixture
def daemon_and_server(tmp_path: Path) -> Iterator[tuple[Path, CsiProcess]]:
    """(pods directory the daemon may mount under, CSI server using the daemon)."""
    workdir = Path(tempfile.mkdtemp(prefix="csi-mounter-", dir="/tmp"))  # short socket path
    mounter_socket = workdir / "mounter.sock"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "driver.mounts.mounter", f"--socket={mounter_socket}",
         f"--state-dir={workdir / 'mounter-state'}", f"--allowed-root={workdir / 'pods'}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "mounter.log", "wb"))  # noqa: SIM115

    def answers() -> bool:
        with contextlib.suppress(MounterError):
            return MounterClient(str(mounter_socket), timeout=2).ping() == daemon.pid
        return False

    try:
        wait_until(answers, 30, "the mounter daemon")
        with csi_server("all", env={"CLOUDBUCKET_MOUNTER_SOCKET": str(mounter_socket)}) \
                as server:
            yield workdir / "pods", server
    finally:
        daemon.terminate()
        daemon.wait(30)
        for entry in mountinfo.read():
            if entry.target.startswith(str(workdir)):
                mountinfo.unmount(entry.target)
        shutil.rmtree(workdir, ignore_errors=True)


def test_publish_through_the_mounter_daemon(daemon_and_server, seaweed: SeaweedS3, s3,
                                            bucket: str) -> None:
    pods, server = daemon_and_server
    target = pods / "p" / "mount"
    target.parent.mkdir(parents=True)
    request = publish_request(seaweed, bucket, target)
    server.node.NodePublishVolume(request)
    (target / "via-daemon.txt").write_text("owned by the mounter")
    assert s3.get_object(Bucket=bucket, Key="via-daemon.txt")["Body"].read() == \
        b"owned by the mounter"
    stats = server.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(
        volume_id="vol-1", volume_path=str(target)))
    assert legacy.volume_condition(stats) == (False, "mounted, served by the mounter daemon")
    server.node.NodePublishVolume(request)  # idempotent repeat

    server.kill()  # the node plugin dies; the daemon keeps the mount
    assert (target / "via-daemon.txt").read_text() == "owned by the mounter"
    server.start()
    recovered = [e for e in server.log_events() if e.get("event") == "node state recovered"]
    assert recovered[-1]["adopted"] == 1

    server.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
        volume_id="vol-1", target_path=str(target)))
    assert mountinfo.find(str(target)) is None and not target.exists()
    assert server.records() == []


def test_daemon_errors_keep_their_codes(daemon_and_server, seaweed: SeaweedS3,
                                        bucket: str) -> None:
    pods, server = daemon_and_server
    target = pods / "p" / "mount"
    target.parent.mkdir(parents=True)
    request = publish_request(seaweed, bucket, target, context={
        "bucketName": "no-such-bucket-here", "endpointUrl": seaweed.endpoint})
    with pytest.raises(grpc.RpcError) as error:
        server.node.NodePublishVolume(request)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-bucket-here" in error.value.details()
    assert mountinfo.find(str(target)) is None and not target.exists()
    assert server.records() == []
