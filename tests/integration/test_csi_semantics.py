"""The opt-in semantics as PersistentVolume mountOptions, through the CSI node plugin and
its supervisor (real FUSE servers on SeaweedFS), checked in the bucket."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from driver.csi import csi_pb2
from driver.devservers import SeaweedS3
from tests.integration.csi_support import CsiProcess, csi_server, publish_request

pytestmark = [pytest.mark.fuse, pytest.mark.root]


@pytest.fixture
def server() -> Iterator[CsiProcess]:
    with csi_server("all") as process:
        yield process


def test_mount_options_allow_rename_incremental_upload_ignore_chmod(
        server: CsiProcess, seaweed: SeaweedS3, s3, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"first\n")
    parent = server.workdir / "pods" / "semantics"
    parent.mkdir(parents=True)
    target = parent / "mount"
    flags = ("allow-rename", "incremental-upload", "ignore-chmod")
    server.node.NodePublishVolume(publish_request(seaweed, bucket, target, flags=flags))
    try:
        with open(target / "a.txt", "ab") as out:
            out.write(b"second\n")
        os.rename(target / "a.txt", target / "b.txt")
        os.chmod(target / "b.txt", 0o600)  # accepted, changes nothing
        assert (target / "b.txt").stat().st_mode & 0o777 == 0o644
    finally:
        server.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
            volume_id="vol-1", target_path=str(target)))
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", ())]
    assert keys == ["b.txt"]
    assert s3.get_object(Bucket=bucket, Key="b.txt")["Body"].read() == b"first\nsecond\n"
