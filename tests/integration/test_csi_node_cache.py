"""The node cache through the CSI path: `volumeAttributes.cache: node` on a real
`serve --mode node` puts a volume's blocks under the node's cache root (one directory per
volume and identity), a republish after unpublish finds them, and the directory is pruned
once no record uses it and its retention has passed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from driver.csi import csi_pb2
from driver.devservers import SeaweedS3
from tests.integration.csi_support import csi_server, publish_request, volume_context

pytestmark = [pytest.mark.fuse, pytest.mark.root]
MiB = 1024 * 1024


def _block_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]


def test_cache_node_attribute_caches_under_the_node_root_and_is_pruned(
        seaweed: SeaweedS3, s3, bucket: str) -> None:
    body = os.urandom(3 * MiB + 11)
    s3.put_object(Bucket=bucket, Key="w.bin", Body=body)
    root = Path(tempfile.mkdtemp(prefix="cache-root-", dir="/tmp"))
    os.chmod(root, 0o755)  # traversable by the servers' UIDs, as the chart's hostPath
    env = {"CLOUDBUCKET_CACHE_ROOT": str(root), "CLOUDBUCKET_CACHE_RETENTION_SECONDS": "0"}
    try:
        with csi_server("node", env=env) as server:
            target = server.workdir / "pods" / "p" / "mount"
            target.parent.mkdir(parents=True)
            request = publish_request(seaweed, bucket, target, flags=("direct-io",),
                                      context=volume_context(seaweed, bucket, cache="node"))
            server.node.NodePublishVolume(request, timeout=60)
            assert (target / "w.bin").read_bytes() == body
            [directory] = [p for p in root.iterdir() if p.is_dir()]
            assert _block_files(directory), "no block was cached"
            [record] = server.records()
            assert record["options"]["cache"] == str(directory)
            server.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
                volume_id="vol-1", target_path=str(target)), timeout=60)
            # Retention 0: nothing uses it any more, so it is gone.
            assert not directory.exists()
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_cache_node_without_a_cache_root_is_invalid_argument(seaweed: SeaweedS3,
                                                             bucket: str) -> None:
    import grpc

    with csi_server("node") as server:
        target = server.workdir / "pods" / "p" / "mount"
        target.parent.mkdir(parents=True)
        request = publish_request(seaweed, bucket, target,
                                  context=volume_context(seaweed, bucket, cache="node"))
        with pytest.raises(grpc.RpcError) as error:
            server.node.NodePublishVolume(request, timeout=60)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cache" in error.value.details()
        assert not Path(target).exists() and server.records() == []
