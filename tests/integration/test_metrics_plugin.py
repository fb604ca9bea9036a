"""`serve --metrics-address`: the controller's provisioning calls counted by method and
code; the node plugin's /metrics labels each live mount's samples with its volume and pod,
drops them at NodeUnpublishVolume, and counts FUSE server deaths by cause.
"""

from __future__ import annotations

import os
import signal
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driver.csi import csi_pb2
from driver.devservers import LOOPBACK, free_port, wait_until
from tests.integration.csi_support import (
    Mode,
    capability,
    csi_server,
    publish_request,
    secrets,
)


def scrape(address: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_provisioning_counted_by_method_and_code(seaweed, bucket) -> None:
    address = f"{LOOPBACK}:{free_port()}"
    with csi_server("controller", node_id="",
                    extra_args=(f"--metrics-address={address}",)) as server:
        request = csi_pb2.CreateVolumeRequest(
            name="pvc-metrics", volume_capabilities=[capability(Mode.MULTI_NODE_MULTI_WRITER)],
            parameters={"bucketName": bucket, "endpointUrl": seaweed.endpoint},
            secrets=secrets(seaweed))
        created = server.controller.CreateVolume(request, timeout=60)
        server.controller.CreateVolume(request, timeout=60)  # a provisioner retry
        bad = csi_pb2.CreateVolumeRequest(name="pvc-bad", volume_capabilities=[
            capability(Mode.MULTI_NODE_MULTI_WRITER)], parameters={})
        with pytest.raises(grpc.RpcError) as refused:
            server.controller.CreateVolume(bad, timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        server.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(
            volume_id=created.volume.volume_id, secrets=secrets(seaweed)), timeout=60)
        page = scrape(address)

    def calls(method: str, code: str) -> float:
        return page.get(("cloudbucket_csi_requests_total",
                         (("code", code), ("method", method))), 0.0)

    assert calls("CreateVolume", "OK") == 2
    assert calls("CreateVolume", "INVALID_ARGUMENT") == 1
    assert calls("DeleteVolume", "OK") == 1
    assert page[("cloudbucket_csi_request_seconds_count", (("method", "CreateVolume"),))] == 3
    # No mount lister on a controller: zero live mounts, and no FUSE-server families.
    assert page[("cloudbucket_mounts", ())] == 0
    assert not any(name.startswith("cloudbucket_fs_") for name, _ in page)



@pytest.mark.fuse
@pytest.mark.root
def test_node_metrics_follow_the_published_volume(seaweed, s3, bucket) -> None:
    body = os.urandom(3 * 1024 * 1024 + 5)
    s3.put_object(Bucket=bucket, Key="m.bin", Body=body)
    address = f"{LOOPBACK}:{free_port()}"
    with csi_server("node", extra_args=(f"--metrics-address={address}",)) as server:
        target = server.workdir / "pods" / "p" / "mount"
        target.parent.mkdir(parents=True)
        request = publish_request(seaweed, bucket, target, volume_id="vol-m")
        request.volume_context["csi.storage.k8s.io/pod.namespace"] = "shop"
        request.volume_context["csi.storage.k8s.io/pod.name"] = "web-0"
        server.node.NodePublishVolume(request, timeout=60)
        with open(target / "m.bin", "rb", buffering=0) as handle:
            assert handle.read() == body
        labels = (("bucket", bucket), ("pod_name", "web-0"), ("pod_namespace", "shop"),
                  ("volume_id", "vol-m"))
        page = scrape(address)
        # The page cache may read ahead past EOF; FUSE answers only the object's bytes.
        assert page[("cloudbucket_fs_read_bytes_total", labels)] == len(body)
        assert page[("cloudbucket_mounts", ())] == 1
        server.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
            volume_id="vol-m", target_path=str(target)), timeout=60)
        page = scrape(address)
        assert page[("cloudbucket_mounts", ())] == 0
        assert not [key for key in page if ("volume_id", "vol-m") in key[1]]
        # A FUSE server that dies is counted by cause.
        server.node.NodePublishVolume(request, timeout=60)
        os.kill(server.server_pid(target), signal.SIGKILL)
        wait_until(lambda: scrape(address).get(
            ("cloudbucket_fuse_server_deaths_total", (("cause", "signal:SIGKILL"),)), 0) == 1,
            10, "the death to be counted")
        server.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
            volume_id="vol-m", target_path=str(target)), timeout=60)
        assert not Path(target).exists()
