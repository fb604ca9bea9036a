"""CSI Node: publish a volume as a live per-pod FUSE mount at kubelet's target path.

This servicer only translates: it validates the request (naming the bad field), builds a
`VolumeSpec` through `driver.volume`, consults the on-disk record of what it published
(`mounts.state`) for idempotency, and asks a `Mounter` to start, check or stop servers.
Idempotency is "read the recorded state, return early": a compatible repeat of a publish
succeeds without remounting (and rewrites the credentials file, which is how a republish
with a fresh service-account token refreshes a live mount); an incompatible one is
ALREADY_EXISTS. Unpublishing what is not there succeeds.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Literal

import grpc
import structlog

from driver.credentials.source import Credentials
from driver.csi import csi_pb2, csi_pb2_grpc
from driver.mounts.base import Mounter, MountFailed, ServerInfo, TargetState
from driver.mounts.process import remove_target_dir
from driver.mounts.state import MountRecord, StateStore
from driver.services import capabilities, legacy
from driver.services.errors import CsiError, from_volume_error, invalid, require
from driver.services.locks import KeyedLocks
from driver.volume import VolumeError, VolumeSpec, is_ephemeral, volume_spec

log = structlog.get_logger()
PROVISIONER_KEY_PREFIX = "storage.kubernetes.io/"

_FAILURE_CODES = {
    "access_denied": grpc.StatusCode.PERMISSION_DENIED,
    "bucket_not_found": grpc.StatusCode.NOT_FOUND,
    "unreachable": grpc.StatusCode.UNAVAILABLE,
    "busy": grpc.StatusCode.FAILED_PRECONDITION,
    "timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "failed": grpc.StatusCode.INTERNAL,
}


def _csi_error(exc: MountFailed, what: str) -> CsiError:
    return CsiError(_FAILURE_CODES[exc.kind], f"{what}: {exc.message}")


def credentials_source(credentials: Credentials) -> str:
    """Where a mount's credentials came from, for error messages (names keys, not values)."""
    return {
        "static": "the nodePublishSecretRef keys AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                  "(or GOOGLE_ACCESS_KEY_ID/GOOGLE_ACCESS_KEY_SECRET)",
        "web_identity": f"volumeAttributes.roleArn {credentials.role_arn}",
        "gcs_service_account": "the secret key GOOGLE_APPLICATION_CREDENTIALS_JSON",
    }.get(credentials.kind, "the driver's own identity (no secret, no roleArn)")


def normalize_path(path: str, field: str) -> str:
    if not os.path.isabs(path):
        raise invalid(f"{field} must be an absolute path, got {path!r}")
    return os.path.normpath(path)


@dataclasses.dataclass(frozen=True)
class _Wanted:
    """What a publish request asks for, in the form it is recorded and compared."""

    volume_id: str
    target: str
    spec: VolumeSpec
    access_mode: str
    ephemeral: bool

    def record(self, server: ServerInfo | None,
               phase: Literal["starting", "ready"]) -> MountRecord:
        return MountRecord(
            target=self.target, volume_id=self.volume_id, bucket=self.spec.bucket,
            options=_option_map(self.spec), credentials_kind=self.spec.credentials.kind,
            role_arn=self.spec.credentials.role_arn, access_mode=self.access_mode,
            ephemeral=self.ephemeral, phase=phase, server=server,
        )


def _option_map(spec: VolumeSpec) -> dict[str, str]:
    result = {}
    for arg in spec.options.to_args():
        name, _, value = arg.removeprefix("--").partition("=")
        result[name] = value or "true"
    return result


def _differences(record: MountRecord, wanted: MountRecord) -> list[str]:
    """Names of what differs between a recorded publish and a new request."""
    diffs = []
    if record.bucket != wanted.bucket:
        diffs.append("volumeAttributes.bucketName")
    for name in sorted(set(record.options) | set(wanted.options)):
        if record.options.get(name) != wanted.options.get(name):
            diffs.append("readonly" if name == "read-only" else f"mount option {name}")
    if (record.credentials_kind, record.role_arn) != (wanted.credentials_kind,
                                                      wanted.role_arn):
        diffs.append("credentials source (secret vs roleArn)")
    if record.access_mode != wanted.access_mode:
        diffs.append("volume_capability.access_mode")
    return diffs


class NodeService(csi_pb2_grpc.NodeServicer):
    def __init__(self, node_id: str, state: StateStore, mounter: Mounter) -> None:
        self.node_id = node_id
        self.state = state
        self.mounter = mounter
        # Serializes every call that touches one volume id, and separately one target path
        # (two volumes must not race for the same path). Always taken volume first, then
        # target, so two calls can never wait on each other in a cycle.
        self._locks = KeyedLocks()

    # -- startup -------------------------------------------------------------------------

    def recover(self) -> tuple[int, int]:
        """Adopt recorded servers that still serve their target; clean up the others.

        Returns (adopted, cleaned). A stale record (server dead, mount gone or dead, start
        interrupted) is taken down completely: the dead mount is unmounted so the path no
        longer answers ENOTCONN, a leftover server is stopped, the credentials file and the
        record are removed. Kubelet's next publish then mounts afresh.
        """
        adopted = cleaned = 0
        for record in self.state.all():
            health = None
            if record.server is not None and record.phase == "ready":
                health = self.mounter.check(record.server, record.target)
            if health is not None and health.ok:
                adopted += 1
                log.info("adopted mount", target=record.target, volume_id=record.volume_id,
                         pid=record.server.pid if record.server else None)
                continue
            reason = health.message if health else f"publish interrupted ({record.phase})"
            log.warning("cleaning up stale mount", target=record.target,
                        volume_id=record.volume_id, reason=reason)
            try:
                self.mounter.stop(record.server, record.target, terminate=True)
            except MountFailed as exc:
                log.error("could not clean up stale mount", target=record.target,
                          error=exc.message)
                continue
            self.state.delete(record.target)
            cleaned += 1
        return adopted, cleaned

    # -- info ----------------------------------------------------------------------------

    def NodeGetInfo(self, request: csi_pb2.NodeGetInfoRequest,
                    context: grpc.ServicerContext) -> csi_pb2.NodeGetInfoResponse:
        return csi_pb2.NodeGetInfoResponse(node_id=self.node_id)

    def NodeGetCapabilities(self, request: csi_pb2.NodeGetCapabilitiesRequest,
                            context: grpc.ServicerContext,
                            ) -> csi_pb2.NodeGetCapabilitiesResponse:
        RPC = csi_pb2.NodeServiceCapability.RPC
        kinds = (RPC.GET_VOLUME_STATS, RPC.GET_VOLUME_HEALTH, RPC.SINGLE_NODE_MULTI_WRITER,
                 legacy.VOLUME_CONDITION_CAPABILITY)
        return csi_pb2.NodeGetCapabilitiesResponse(capabilities=[
            csi_pb2.NodeServiceCapability(rpc=RPC(type=kind)) for kind in kinds])

    # -- publish -------------------------------------------------------------------------

    def NodePublishVolume(self, request: csi_pb2.NodePublishVolumeRequest,
                          context: grpc.ServicerContext) -> csi_pb2.NodePublishVolumeResponse:
        volume_id = require(request.volume_id, "volume_id")
        target = normalize_path(require(request.target_path, "target_path"), "target_path")
        if not request.HasField("volume_capability"):
            raise invalid("volume_capability is required")
        capabilities.check(request.volume_capability, "volume_capability")
        mode = request.volume_capability.access_mode.mode
        readonly = request.readonly or mode in capabilities.READ_ONLY_MODES
        # external-provisioner adds `storage.kubernetes.io/csiProvisionerIdentity` to the
        # attributes of every PV it creates; it is bookkeeping, not a volume attribute.
        context_map: Mapping[str, str] = {
            key: value for key, value in request.volume_context.items()
            if not key.startswith(PROVISIONER_KEY_PREFIX)}
        try:
            spec = volume_spec(context_map, list(request.volume_capability.mount.mount_flags),
                               dict(request.secrets), readonly)
        except VolumeError as exc:
            raise from_volume_error(exc) from None
        wanted = _Wanted(volume_id, target, spec, capabilities.mode_name(mode),
                         is_ephemeral(context_map))
        with self._locks.hold(f"volume:{volume_id}", f"target:{target}"):
            self._publish(wanted)
        return csi_pb2.NodePublishVolumeResponse()

    def _publish(self, wanted: _Wanted) -> None:
        target, volume_id = wanted.target, wanted.volume_id
        record = self.state.get(target)
        if record is not None:
            if record.volume_id != volume_id:
                raise CsiError(grpc.StatusCode.ALREADY_EXISTS,
                               f"target_path {target} already has volume {record.volume_id} "
                               f"published; cannot publish volume {volume_id} there")
            diffs = _differences(record, wanted.record(None, "ready"))
            if diffs:
                raise CsiError(grpc.StatusCode.ALREADY_EXISTS,
                               f"volume {volume_id} is already published at {target} with a "
                               f"different {', '.join(diffs)}")
            health = (self.mounter.check(record.server, target) if record.server
                      else None)
            if health is not None and health.ok:
                # Compatible repeat (kubelet retry, or a republish with a fresh token):
                # nothing to mount, but the credentials may be new.
                self.mounter.update_credentials(record.server, target,
                                                wanted.spec.credentials)
                return
            log.warning("republishing over a dead mount", target=target, volume_id=volume_id,
                        reason=health.message if health else "publish was interrupted")
            self._stop(record, terminate=True)
        else:
            state = self.mounter.target_state(target)
            if state is TargetState.FOREIGN:
                raise CsiError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"target_path {target} already has a filesystem mounted that "
                               "this driver did not mount")
            if state is TargetState.OURS:  # left by a publish interrupted before recording
                self.mounter.stop(None, target, terminate=True)
        self._check_single_writer(wanted)
        created = not os.path.isdir(target)
        try:
            os.makedirs(target, exist_ok=True)
        except OSError as exc:
            raise CsiError(grpc.StatusCode.INTERNAL,
                           f"target_path {target}: cannot create it: {exc.strerror}") from None
        try:
            server = self.mounter.start(
                wanted.spec, target,
                spawned=lambda server: self.state.put(wanted.record(server, "starting")))
        except MountFailed as exc:
            self.state.delete(target)
            if created:
                remove_target_dir(target)
            what = f"mounting bucket {wanted.spec.bucket} at {target}"
            if exc.kind == "access_denied":
                what += f" with {credentials_source(wanted.spec.credentials)}"
            raise _csi_error(exc, what) from None
        except BaseException:
            self.state.delete(target)
            if created:
                remove_target_dir(target)
            raise
        self.state.put(wanted.record(server, "ready"))

    def _check_single_writer(self, wanted: _Wanted) -> None:
        """SINGLE_NODE_SINGLE_WRITER: published at one target at a time on this node."""
        single = capabilities.mode_name(capabilities.Mode.SINGLE_NODE_SINGLE_WRITER)
        for other in self.state.all():
            if other.volume_id != wanted.volume_id or other.target == wanted.target:
                continue
            if single in (wanted.access_mode, other.access_mode):
                raise CsiError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"volume {wanted.volume_id} is already published at "
                               f"{other.target} and volume_capability.access_mode "
                               f"{single} allows only one target")

    # -- unpublish -----------------------------------------------------------------------

    def NodeUnpublishVolume(self, request: csi_pb2.NodeUnpublishVolumeRequest,
                            context: grpc.ServicerContext,
                            ) -> csi_pb2.NodeUnpublishVolumeResponse:
        volume_id = require(request.volume_id, "volume_id")
        target = normalize_path(require(request.target_path, "target_path"), "target_path")
        with self._locks.hold(f"volume:{volume_id}", f"target:{target}"):
            record = self.state.get(target)
            if record is not None and record.volume_id != volume_id:
                raise CsiError(grpc.StatusCode.NOT_FOUND,
                               f"volume_id {volume_id} is not published at target_path "
                               f"{target} (volume {record.volume_id} is)")
            if record is not None:
                self._stop(record)
            else:
                state = self.mounter.target_state(target)
                if state is TargetState.FOREIGN:
                    raise CsiError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"target_path {target} has a filesystem mounted that this "
                                   "driver did not mount; not touching it")
                if state is TargetState.OURS:
                    self._stop_unrecorded(target)
            try:
                remove_target_dir(target)
            except OSError as exc:
                raise CsiError(grpc.StatusCode.INTERNAL,
                               f"target_path {target}: cannot remove it after unmounting: "
                               f"{exc.strerror}") from None
        return csi_pb2.NodeUnpublishVolumeResponse()

    def _stop(self, record: MountRecord, terminate: bool = False) -> None:
        try:
            self.mounter.stop(record.server, record.target, terminate=terminate)
        except MountFailed as exc:
            code = (grpc.StatusCode.UNAVAILABLE if exc.kind == "busy"
                    else _FAILURE_CODES[exc.kind])
            raise CsiError(code, f"unpublishing {record.target}: {exc.message}") from None
        self.state.delete(record.target)

    def _stop_unrecorded(self, target: str) -> None:
        try:
            self.mounter.stop(None, target, terminate=True)
        except MountFailed as exc:
            raise CsiError(grpc.StatusCode.UNAVAILABLE,
                           f"unpublishing {target}: {exc.message}") from None

    # -- stats and health ----------------------------------------------------------------

    def _health(self, record: MountRecord) -> tuple[bool, str]:
        """(abnormal, message) for one published target."""
        if record.server is None or record.phase != "ready":
            return True, "the volume is still being published"
        health = self.mounter.check(record.server, record.target)
        if not health.ok:  # stats calls log quietly; an abnormal volume is worth a warning
            log.warning("volume abnormal", volume_id=record.volume_id, target=record.target,
                        reason=health.message)
        return not health.ok, health.message

    def NodeGetVolumeStats(self, request: csi_pb2.NodeGetVolumeStatsRequest,
                           context: grpc.ServicerContext,
                           ) -> csi_pb2.NodeGetVolumeStatsResponse:
        volume_id = require(request.volume_id, "volume_id")
        path = require(request.volume_path, "volume_path")
        record = self.state.get(os.path.normpath(path)) if os.path.isabs(path) else None
        if record is None or record.volume_id != volume_id:
            raise CsiError(grpc.StatusCode.NOT_FOUND,
                           f"volume {volume_id} is not published at volume_path {path}")
        abnormal, message = self._health(record)
        # A bucket has no size or free space to report: one BYTES entry with no numbers is
        # the honest answer (every number is OPTIONAL and 0 means unknown in CSI).
        response = csi_pb2.NodeGetVolumeStatsResponse(
            usage=[csi_pb2.VolumeUsage(unit=csi_pb2.VolumeUsage.BYTES)])
        legacy.add_volume_condition(response, abnormal, message)
        return response

    def NodeGetVolumeHealth(self, request: csi_pb2.NodeGetVolumeHealthRequest,
                            context: grpc.ServicerContext,
                            ) -> csi_pb2.NodeGetVolumeHealthResponse:
        volume_id = require(request.volume_id, "volume_id")
        path = request.volume_publish_path
        if path:
            record = self.state.get(normalize_path(path, "volume_publish_path"))
            records = [record] if record is not None and record.volume_id == volume_id else []
        else:
            records = [r for r in self.state.all() if r.volume_id == volume_id]
        if not records:
            where = f"at volume_publish_path {path}" if path else "on this node"
            raise CsiError(grpc.StatusCode.NOT_FOUND,
                           f"volume {volume_id} is not published {where}")
        # One entry at most: the spec forbids two entries with the same (status, reason).
        problems = []
        for record in records:
            abnormal, message = self._health(record)
            if abnormal:
                problems.append(f"{record.target}: {message}")
        statuses = [csi_pb2.VolumeHealth.VolumeHealthEntry(
            status=csi_pb2.INACCESSIBLE, reason="MountNotServing",
            message="; ".join(problems))] if problems else []
        return csi_pb2.NodeGetVolumeHealthResponse(volume_health=csi_pb2.VolumeHealth(
            volume_id=volume_id, health_statuses=statuses))
