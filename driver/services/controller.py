"""CSI Controller: dynamic provisioning of one key prefix per PVC inside a bucket.

A StorageClass names a bucket (and the same attributes a PV would carry). CreateVolume
hands out `<keyPrefix><pv-name>/` in that bucket: it validates the parameters through
`driver.volume`, checks that the bucket exists and the provisioner's credentials may list
it, and returns a volume whose context is the PV attributes with the full prefix. Nothing is
written to the bucket, so nothing can be left half-created. DeleteVolume removes every
object (and pending multipart upload) under the prefix. The id encodes the location
(`volume_id.py`), so the controller keeps no state. Every other controller RPC is
UNIMPLEMENTED (the generated base class says so; the interceptor keeps the code).
"""

from __future__ import annotations

import json
import re

import grpc
import structlog

from driver.connect import open_store
from driver.csi import csi_pb2, csi_pb2_grpc
from driver.services import capabilities, volume_id
from driver.services.errors import (
    CsiError,
    from_store_error,
    from_volume_error,
    invalid,
    require,
)
from driver.services.locks import KeyedLocks
from driver.store.base import BucketNotFound, StoreError
from driver.volume import (
    ATTR_PREFIX,
    ATTR_ROLE_ARN,
    KUBE_PREFIX,
    STS_AUDIENCE,
    TOKENS_KEY,
    Credentials,
    MountOptions,
    VolumeError,
    VolumeSpec,
    parse_secrets,
    volume_spec,
)

log = structlog.get_logger()

PV_NAME_KEY = "csi.storage.k8s.io/pv/name"
# A PV name becomes one path segment of the prefix: keep it to what Kubernetes names use.
_PV_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


def _store_credentials(secrets: dict[str, str], provider: str) -> Credentials:
    """The provisioner's credentials: its secret, else the driver's own identity."""
    try:
        return parse_secrets(secrets, provider) or Credentials()
    except VolumeError as exc:
        raise from_volume_error(exc) from None


class ControllerService(csi_pb2_grpc.ControllerServicer):
    def __init__(self) -> None:
        # Serializes CreateVolume calls for one name and DeleteVolume calls for one id, so a
        # retry racing the original cannot interleave a create with a delete.
        self._locks = KeyedLocks()

    def ControllerGetCapabilities(self, request: csi_pb2.ControllerGetCapabilitiesRequest,
                                  context: grpc.ServicerContext,
                                  ) -> csi_pb2.ControllerGetCapabilitiesResponse:
        RPC = csi_pb2.ControllerServiceCapability.RPC
        kinds = (RPC.CREATE_DELETE_VOLUME, RPC.SINGLE_NODE_MULTI_WRITER)
        return csi_pb2.ControllerGetCapabilitiesResponse(capabilities=[
            csi_pb2.ControllerServiceCapability(rpc=RPC(type=kind)) for kind in kinds])

    # -- create --------------------------------------------------------------------------

    def CreateVolume(self, request: csi_pb2.CreateVolumeRequest,
                     context: grpc.ServicerContext) -> csi_pb2.CreateVolumeResponse:
        name = require(request.name, "name")
        capabilities.check_all(list(request.volume_capabilities), "volume_capabilities")
        if request.HasField("volume_content_source"):
            raise invalid("volume_content_source: snapshots and clones are not supported")
        parameters = dict(request.parameters)
        pv_name = parameters.get(PV_NAME_KEY) or name
        if not _PV_NAME_RE.match(pv_name):
            field = f"parameters.{PV_NAME_KEY}" if PV_NAME_KEY in parameters else "name"
            raise invalid(f"{field}: {pv_name!r} cannot be a key prefix segment (letters, "
                          "digits, '.', '_' and '-' only)")
        attributes = {key: value for key, value in parameters.items()
                      if not key.startswith(KUBE_PREFIX)}
        attributes[ATTR_PREFIX] = f"{attributes.get(ATTR_PREFIX, '')}{pv_name}/"
        spec = self._validate(attributes)
        credentials = _store_credentials(dict(request.secrets), spec.options.provider)
        with self._locks.hold(f"name:{name}"):
            self._check_bucket(spec.bucket, spec.options, credentials)
        new_id = volume_id.encode(attributes)
        log.info("volume provisioned", volume_id=new_id, bucket=spec.bucket,
                 prefix=spec.options.prefix)
        # capacity_bytes 0: a prefix has no capacity ("unknown" in CSI terms).
        return csi_pb2.CreateVolumeResponse(volume=csi_pb2.Volume(
            volume_id=new_id, capacity_bytes=0, volume_context=attributes))

    @staticmethod
    def _validate(attributes: dict[str, str]) -> VolumeSpec:
        """Validate StorageClass parameters the way the node will read the volume context.

        The controller has no pod token; a roleArn volume is checked with a placeholder
        token that is never used for anything but this validation.
        """
        checked = dict(attributes)
        if checked.get(ATTR_ROLE_ARN):
            checked[TOKENS_KEY] = json.dumps({STS_AUDIENCE: {"token": "validation-only"}})
        try:
            return volume_spec(checked)
        except VolumeError as exc:
            message = str(exc).replace("volumeAttributes.", "parameters.")
            raise invalid(message) from None

    @staticmethod
    def _check_bucket(bucket: str, options: MountOptions, credentials: Credentials) -> None:
        try:
            open_store(bucket, options, credentials).check_bucket()
        except StoreError as exc:
            raise from_store_error(exc, bucket, "parameters.bucketName") from None

    # -- delete --------------------------------------------------------------------------

    def DeleteVolume(self, request: csi_pb2.DeleteVolumeRequest,
                     context: grpc.ServicerContext) -> csi_pb2.DeleteVolumeResponse:
        vid = require(request.volume_id, "volume_id")
        location = volume_id.decode(vid)
        if location is None:
            log.info("delete of a volume id this driver did not make: nothing to do",
                     volume_id=vid)
            return csi_pb2.DeleteVolumeResponse()
        credentials = _store_credentials(dict(request.secrets), location.options.provider)
        with self._locks.hold(f"id:{vid}"):
            try:
                store = open_store(location.bucket, location.options, credentials)
                for key, upload_id in store.list_uploads(location.prefix):
                    store.abort_upload(key, upload_id)
                deleted = store.delete_prefix(location.prefix)
            except BucketNotFound:
                log.info("bucket already gone", volume_id=vid, bucket=location.bucket)
                return csi_pb2.DeleteVolumeResponse()
            except StoreError as exc:
                raise from_store_error(exc, location.bucket, "volume_id") from None
        log.info("volume deleted", volume_id=vid, objects=deleted)
        return csi_pb2.DeleteVolumeResponse()

    # -- validate ------------------------------------------------------------------------

    def ValidateVolumeCapabilities(self, request: csi_pb2.ValidateVolumeCapabilitiesRequest,
                                   context: grpc.ServicerContext,
                                   ) -> csi_pb2.ValidateVolumeCapabilitiesResponse:
        vid = require(request.volume_id, "volume_id")
        if not request.volume_capabilities:
            raise invalid("volume_capabilities is required")
        location = volume_id.decode(vid)
        if location is None:
            raise CsiError(grpc.StatusCode.NOT_FOUND,
                           f"volume_id {vid} is not a volume of this driver")
        credentials = _store_credentials(dict(request.secrets), location.options.provider)
        try:
            open_store(location.bucket, location.options, credentials).check_bucket()
        except StoreError as exc:
            raise from_store_error(exc, location.bucket, "volume_id") from None
        for index, capability in enumerate(request.volume_capabilities):
            reason = capabilities.problem(capability, f"volume_capabilities[{index}]")
            if reason is not None:
                return csi_pb2.ValidateVolumeCapabilitiesResponse(message=reason)
        return csi_pb2.ValidateVolumeCapabilitiesResponse(
            confirmed=csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
                volume_context=request.volume_context,
                volume_capabilities=request.volume_capabilities,
                parameters=request.parameters,
            ))
