"""`serve --metrics-address`: the controller's provisioning calls counted by method and code.

(The node plugin's per-mount aggregation is tested in test_metrics_aggregator.py over real
FUSE servers' sockets; the end-to-end NodePublish/NodeUnpublish test comes with the
supervisor, which lists the mounts.)
"""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driver.csi import csi_pb2
from driver.devservers import LOOPBACK, free_port
from tests.integration.csi_support import Mode, capability, csi_server, secrets


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
