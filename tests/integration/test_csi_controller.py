"""The CSI controller (dynamic provisioning) and identity over a real unix socket, against a
real SeaweedFS: a prefix per PVC, published by the node plugin, deleted with its objects."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from driver.csi import csi_pb2
from driver.devservers import SeaweedS3
from driver.services import volume_id
from tests.integration.csi_support import (
    CsiProcess,
    Mode,
    capability,
    csi_server,
    publish_request,
    secrets,
)

pytestmark = [pytest.mark.fuse, pytest.mark.root]


@pytest.fixture(scope="module")
def server() -> Iterator[CsiProcess]:
    with csi_server("all") as process:
        yield process


def _create(server: CsiProcess, seaweed: SeaweedS3, bucket: str, name: str = "req-1",
            **parameters: str) -> csi_pb2.CreateVolumeResponse:
    params = {"bucketName": bucket, "endpointUrl": seaweed.endpoint, **parameters}
    return server.controller.CreateVolume(csi_pb2.CreateVolumeRequest(
        name=name, volume_capabilities=[capability(Mode.MULTI_NODE_MULTI_WRITER)],
        parameters=params, secrets=secrets(seaweed)))


def test_dynamic_volume_lifecycle(server: CsiProcess, seaweed: SeaweedS3, s3,
                                  bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="pvs/other-pv/keep.txt", Body=b"not ours")
    response = _create(server, seaweed, bucket, keyPrefix="pvs/", **{
        "csi.storage.k8s.io/pv/name": "pvc-1234", "csi.storage.k8s.io/pvc/name": "data"})
    volume = response.volume
    assert volume.volume_context["keyPrefix"] == "pvs/pvc-1234/"
    assert "csi.storage.k8s.io/pvc/name" not in volume.volume_context
    location = volume_id.decode(volume.volume_id)
    assert location is not None and location.bucket == bucket
    assert location.prefix == "pvs/pvc-1234/"
    # The same request again (a provisioner retry) gives the same volume.
    again = _create(server, seaweed, bucket, keyPrefix="pvs/", **{
        "csi.storage.k8s.io/pv/name": "pvc-1234"})
    assert again.volume.volume_id == volume.volume_id

    target = server.workdir / "pods" / "p1" / "mount"
    target.parent.mkdir(parents=True)
    server.node.NodePublishVolume(publish_request(
        seaweed, bucket, target, volume_id=volume.volume_id,
        context=dict(volume.volume_context)))
    (target / "data.txt").write_text("in the pvc prefix")
    server.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
        volume_id=volume.volume_id, target_path=str(target)))
    assert s3.get_object(Bucket=bucket, Key="pvs/pvc-1234/data.txt")["Body"].read() == \
        b"in the pvc prefix"

    validated = server.controller.ValidateVolumeCapabilities(
        csi_pb2.ValidateVolumeCapabilitiesRequest(
            volume_id=volume.volume_id, volume_capabilities=[capability()],
            secrets=secrets(seaweed)))
    assert list(validated.confirmed.volume_capabilities) == [capability()]
    refused = server.controller.ValidateVolumeCapabilities(
        csi_pb2.ValidateVolumeCapabilitiesRequest(
            volume_id=volume.volume_id, volume_capabilities=[capability(block=True)],
            secrets=secrets(seaweed)))
    assert not refused.HasField("confirmed") and "block" in refused.message

    server.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(
        volume_id=volume.volume_id, secrets=secrets(seaweed)))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["pvs/other-pv/keep.txt"]
    server.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(  # idempotent
        volume_id=volume.volume_id, secrets=secrets(seaweed)))


BAD_CREATES = {
    "no name": ({"name": ""}, grpc.StatusCode.INVALID_ARGUMENT, "name"),
    "no capabilities": ({"caps": []}, grpc.StatusCode.INVALID_ARGUMENT,
                        "volume_capabilities"),
    "block": ({"caps": [capability(block=True)]}, grpc.StatusCode.INVALID_ARGUMENT,
              "volume_capabilities[0].block"),
    "single writer across nodes": ({"caps": [capability(Mode.MULTI_NODE_SINGLE_WRITER)]},
                                   grpc.StatusCode.INVALID_ARGUMENT,
                                   "volume_capabilities[0].access_mode"),
    "no bucketName": ({"params": {"bucketName": ""}}, grpc.StatusCode.INVALID_ARGUMENT,
                      "bucketName"),
    "bad keyPrefix": ({"params": {"keyPrefix": "/abs/"}}, grpc.StatusCode.INVALID_ARGUMENT,
                      "parameters.keyPrefix"),
    "unknown parameter": ({"params": {"bucket": "x"}}, grpc.StatusCode.INVALID_ARGUMENT,
                          "parameters.bucket"),
    "bad mountOptions": ({"params": {"mountOptions": "uid=abc"}},
                         grpc.StatusCode.INVALID_ARGUMENT, "uid"),
    "bad pv name": ({"params": {"csi.storage.k8s.io/pv/name": "../escape"}},
                    grpc.StatusCode.INVALID_ARGUMENT, "csi.storage.k8s.io/pv/name"),
    "missing secret key": ({"secret": {"AWS_ACCESS_KEY_ID": "k"}},
                           grpc.StatusCode.INVALID_ARGUMENT, "AWS_SECRET_ACCESS_KEY"),
    "wrong secret": ({"secret": {"AWS_ACCESS_KEY_ID": "cloudbucket-test-key",
                                 "AWS_SECRET_ACCESS_KEY": "wrong"}},
                     grpc.StatusCode.PERMISSION_DENIED, "access to bucket"),
    "missing bucket": ({"params": {"bucketName": "no-such-bucket-here"}},
                       grpc.StatusCode.NOT_FOUND, "no-such-bucket-here"),
}


@pytest.mark.parametrize("case", list(BAD_CREATES), ids=list(BAD_CREATES))
def test_bad_create_gets_its_code_and_names_the_field(server: CsiProcess, seaweed: SeaweedS3,
                                                      s3, bucket: str, case: str) -> None:
    changes, code, needle = BAD_CREATES[case]
    params = {"bucketName": bucket, "endpointUrl": seaweed.endpoint,
              **changes.get("params", {})}  # type: ignore[dict-item]
    if not params["bucketName"]:
        del params["bucketName"]
    request = csi_pb2.CreateVolumeRequest(
        name=changes.get("name", "req-bad"),  # type: ignore[arg-type]
        volume_capabilities=changes.get("caps", [capability()]),  # type: ignore[arg-type]
        parameters=params,
        secrets=changes.get("secret", secrets(seaweed)))  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as error:
        server.controller.CreateVolume(request, timeout=60)
    assert error.value.code() == code, error.value.details()
    assert needle in error.value.details()
    assert seaweed.secret_key not in error.value.details()
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0  # nothing half-made


def test_controller_errors_and_unimplemented(server: CsiProcess, seaweed: SeaweedS3) -> None:
    with pytest.raises(grpc.RpcError) as error:
        server.controller.ValidateVolumeCapabilities(csi_pb2.ValidateVolumeCapabilitiesRequest(
            volume_id="pvc-not-ours", volume_capabilities=[capability()]))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    gone = volume_id.encode({"bucketName": "no-such-bucket-here", "keyPrefix": "x/",
                             "endpointUrl": seaweed.endpoint})
    with pytest.raises(grpc.RpcError) as error:
        server.controller.ValidateVolumeCapabilities(csi_pb2.ValidateVolumeCapabilitiesRequest(
            volume_id=gone, volume_capabilities=[capability()], secrets=secrets(seaweed)))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    server.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-not-ours"))
    server.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(
        volume_id=gone, secrets=secrets(seaweed)))  # bucket gone: nothing left to delete
    with pytest.raises(grpc.RpcError) as error:
        server.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id="v", node_id="n"))
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "ControllerPublishVolume" in error.value.details()
    caps = server.controller.ControllerGetCapabilities(
        csi_pb2.ControllerGetCapabilitiesRequest())
    RPC = csi_pb2.ControllerServiceCapability.RPC
    assert {c.rpc.type for c in caps.capabilities} == {RPC.CREATE_DELETE_VOLUME,
                                                       RPC.SINGLE_NODE_MULTI_WRITER}


def test_identity(server: CsiProcess) -> None:
    from driver import __version__

    info = server.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
    assert (info.name, info.vendor_version) == ("cloudbucket.csi.io", __version__)
    assert server.identity.Probe(csi_pb2.ProbeRequest()).ready.value is True
    caps = server.identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest())
    assert [c.service.type for c in caps.capabilities] == [
        csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE]


def test_node_mode_serves_no_controller() -> None:
    with csi_server("node") as node_only:
        caps = node_only.identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest())
        assert list(caps.capabilities) == []
        with pytest.raises(grpc.RpcError) as error:
            node_only.controller.CreateVolume(csi_pb2.CreateVolumeRequest(name="x"))
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert node_only.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()).node_id == "test-node"
        assert node_only.terminate() == 0


def test_controller_mode_serves_no_node() -> None:
    with csi_server("controller", node_id="") as controller_only:
        with pytest.raises(grpc.RpcError) as error:
            controller_only.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest())
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert not (controller_only.state_dir / "volumes").exists()
