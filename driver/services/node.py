"""CSI Node: publish a volume as a live per-pod FUSE mount at kubelet's target path.

This servicer only translates: it validates the request (naming the bad field), builds a
`VolumeSpec` through `driver.volume`, consults the on-disk record of what it published
(`mounts.state`) for idempotency, and asks the supervisor (through a `Mounter`: the
`SupervisorClient`) to start, check or stop servers. Supervisor failures arrive as typed
kinds; `_FAILURE_CODES` is the one table from kinds to gRPC codes.
Idempotency is "read the recorded state, return early": a compatible repeat of a publish
succeeds without remounting (and rewrites the credentials file, which is how a republish
with a fresh service-account token refreshes a live mount); an incompatible one is
ALREADY_EXISTS. Unpublishing what is not there succeeds.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Mapping
from typing import Literal

import grpc
import structlog

from driver.credentials.source import Credentials
from driver.csi import csi_pb2, csi_pb2_grpc
from driver.failures import FailureError, FailureKind
from driver.mounts.base import Mounter
from driver.mounts.protocol import MountRequest
from driver.mounts.state import MountRecord, StateStore
from driver.services import capabilities, legacy
from driver.services.errors import CsiError, from_volume_error, invalid, require
from driver.services.locks import KeyedLocks
from driver.volume import (
    CacheSettings,
    VolumeError,
    VolumeSpec,
    is_ephemeral,
    prune_cache_dirs,
    volume_spec,
    with_cache_dir,
)

log = structlog.get_logger()
PROVISIONER_KEY_PREFIX = "storage.kubernetes.io/"

POD_NAMESPACE_KEY = "csi.storage.k8s.io/pod.namespace"
POD_NAME_KEY = "csi.storage.k8s.io/pod.name"

# The one table from supervisor failure kinds to gRPC codes.
_FAILURE_CODES: dict[FailureKind, grpc.StatusCode] = {
    FailureKind.ACCESS_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    FailureKind.BUCKET_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    FailureKind.UNREACHABLE: grpc.StatusCode.UNAVAILABLE,
    FailureKind.INVALID_OPTION: grpc.StatusCode.INVALID_ARGUMENT,
    FailureKind.BUSY: grpc.StatusCode.FAILED_PRECONDITION,
    FailureKind.PENDING: grpc.StatusCode.UNAVAILABLE,
    FailureKind.NOT_MOUNTED: grpc.StatusCode.NOT_FOUND,
    FailureKind.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    FailureKind.FAILED: grpc.StatusCode.INTERNAL,
}


def csi_error(exc: FailureError, what: str) -> CsiError:
    return CsiError(_FAILURE_CODES[exc.kind], f"{what}: {exc.message}")


def remove_target_dir(target: str) -> None:
    """rmdir the target path; gone already is fine, anything else is the caller's error."""
    try:
        os.rmdir(target)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            os.unlink(target)
        else:
            raise


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

    labels: dict[str, str] = dataclasses.field(default_factory=dict)

    def record(self, phase: Literal["starting", "ready"]) -> MountRecord:
        return MountRecord(
            target=self.target, volume_id=self.volume_id, bucket=self.spec.bucket,
            options=self.spec.options.changed(), credentials_kind=self.spec.credentials.kind,
            role_arn=self.spec.credentials.role_arn, access_mode=self.access_mode,
            ephemeral=self.ephemeral, phase=phase,
        )

    def request(self) -> MountRequest:
        return MountRequest(volume_id=self.volume_id, target=self.target,
                            bucket=self.spec.bucket, options=self.spec.options,
                            credentials=self.spec.credentials, labels=self.labels)


def _differences(record: MountRecord, wanted: MountRecord) -> list[str]:
    """Names of what differs between a recorded publish and a new request."""
    diffs = []
    if record.bucket != wanted.bucket:
        diffs.append("volumeAttributes.bucketName")
    for name in sorted(set(record.options) | set(wanted.options)):
        if record.options.get(name) != wanted.options.get(name):
            diffs.append("readonly" if name == "read_only"
                         else f"mount option {name.replace('_', '-')}")
    if (record.credentials_kind, record.role_arn) != (wanted.credentials_kind,
                                                      wanted.role_arn):
        diffs.append("credentials source (secret vs roleArn)")
    if record.access_mode != wanted.access_mode:
        diffs.append("volume_capability.access_mode")
    return diffs


class NodeService(csi_pb2_grpc.NodeServicer):
    def __init__(self, node_id: str, state: StateStore, mounter: Mounter,
                 supervisor_metrics: str | None = None) -> None:
        self.node_id = node_id
        self.state = state
        self.mounter = mounter
        self._supervisor_metrics = supervisor_metrics  # the daemon's own /metrics socket
        self._cache = CacheSettings.from_env(os.environ)  # the chart's node.cache* values
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
            healthy, reason = self._health(record, quiet=True)
            if healthy:
                adopted += 1
                log.info("adopted mount", target=record.target, volume_id=record.volume_id)
                continue
            log.warning("cleaning up stale mount", target=record.target,
                        volume_id=record.volume_id, reason=reason)
            try:
                self.mounter.unmount(record.target, terminate=True)
            except FailureError as exc:
                log.error("could not clean up stale mount", target=record.target,
                          error=exc.message)
                continue
            self.state.delete(record.target)
            cleaned += 1
        self._prune_caches()
        return adopted, cleaned

    def _prune_caches(self) -> None:
        """Caches of volumes gone from this node (after the retention grace) are removed."""
        if not self._cache.root:
            return
        live = [record.options.get("cache") for record in self.state.all()]
        try:
            removed = prune_cache_dirs(self._cache.root, live, self._cache.retention)
        except OSError as exc:
            log.warning("cannot prune caches", root=self._cache.root, error=str(exc))
            return
        if removed:
            log.info("removed caches of volumes gone from this node", count=len(removed))

    def metrics_sources(self) -> list[tuple[str, dict[str, str]]]:
        """(metrics socket, labels) of every published mount, for the node's /metrics; plus
        the supervisor daemon's own socket (no labels) when it runs apart."""
        try:
            servers = self.mounter.list(probe=False)
        except FailureError as exc:
            log.warning("cannot list mounts for metrics", error=exc.message)
            servers = []
        sources = [(server.metrics_socket, {"volume_id": server.volume_id,
                                            "bucket": server.bucket, **server.labels})
                   for server in servers if server.metrics_socket]
        if self._supervisor_metrics:
            sources.append((self._supervisor_metrics, {}))
        return sources

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
            spec = with_cache_dir(spec, volume_id, self._cache)
        except VolumeError as exc:
            raise from_volume_error(exc) from None
        labels = {name: context_map[key] for name, key in
                  (("pod_namespace", POD_NAMESPACE_KEY), ("pod_name", POD_NAME_KEY))
                  if context_map.get(key)}
        wanted = _Wanted(volume_id, target, spec, capabilities.mode_name(mode),
                         is_ephemeral(context_map), labels)
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
            diffs = _differences(record, wanted.record("ready"))
            if diffs:
                raise CsiError(grpc.StatusCode.ALREADY_EXISTS,
                               f"volume {volume_id} is already published at {target} with a "
                               f"different {', '.join(diffs)}")
            healthy, reason = self._health(record, quiet=True)
            if healthy:
                # Compatible repeat (kubelet retry, or a republish with a fresh token):
                # nothing to mount, but the credentials may be new.
                try:
                    self.mounter.update_credentials(target, wanted.spec.credentials)
                except FailureError as exc:
                    raise csi_error(exc, f"refreshing the credentials of {target}") from None
                return
            log.warning("republishing over a dead mount", target=target, volume_id=volume_id,
                        reason=reason)
            self._stop(record, terminate=True)
        self._check_single_writer(wanted)
        created = not os.path.isdir(target)
        try:
            os.makedirs(target, exist_ok=True)
        except OSError as exc:
            raise CsiError(grpc.StatusCode.INTERNAL,
                           f"target_path {target}: cannot create it: {exc.strerror}") from None
        self.state.put(wanted.record("starting"))
        try:
            self.mounter.mount(wanted.request())
        except FailureError as exc:
            self.state.delete(target)
            if created:
                remove_target_dir(target)
            what = f"mounting bucket {wanted.spec.bucket} at {target}"
            if exc.kind is FailureKind.ACCESS_DENIED:
                what += f" with {credentials_source(wanted.spec.credentials)}"
            raise csi_error(exc, what) from None
        except BaseException:
            self.state.delete(target)
            if created:
                remove_target_dir(target)
            raise
        self.state.put(wanted.record("ready"))

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
            else:  # not recorded: whatever of ours is mounted there goes (foreign: refused)
                try:
                    self.mounter.unmount(target, terminate=True)
                except FailureError as exc:
                    raise csi_error(exc, f"unpublishing {target}") from None
            try:
                remove_target_dir(target)
            except OSError as exc:
                raise CsiError(grpc.StatusCode.INTERNAL,
                               f"target_path {target}: cannot remove it after unmounting: "
                               f"{exc.strerror}") from None
        self._prune_caches()
        return csi_pb2.NodeUnpublishVolumeResponse()

    def _stop(self, record: MountRecord, terminate: bool = False) -> None:
        try:
            self.mounter.unmount(record.target, terminate=terminate)
        except FailureError as exc:
            raise csi_error(exc, f"unpublishing {record.target}") from None
        self.state.delete(record.target)

    # -- stats and health ----------------------------------------------------------------

    def _health(self, record: MountRecord, quiet: bool = False) -> tuple[bool, str]:
        """(healthy, message) for one published target."""
        if record.phase != "ready":
            return False, "the volume is still being published"
        try:
            status = self.mounter.check(record.target)
        except FailureError as exc:
            healthy, message = False, exc.message
        else:
            healthy, message = status.ok, status.message
        if not healthy and not quiet:  # an abnormal volume is worth a warning
            log.warning("volume abnormal", volume_id=record.volume_id, target=record.target,
                        reason=message)
        return healthy, message

    def NodeGetVolumeStats(self, request: csi_pb2.NodeGetVolumeStatsRequest,
                           context: grpc.ServicerContext,
                           ) -> csi_pb2.NodeGetVolumeStatsResponse:
        volume_id = require(request.volume_id, "volume_id")
        path = require(request.volume_path, "volume_path")
        record = self.state.get(os.path.normpath(path)) if os.path.isabs(path) else None
        if record is None or record.volume_id != volume_id:
            raise CsiError(grpc.StatusCode.NOT_FOUND,
                           f"volume {volume_id} is not published at volume_path {path}")
        healthy, message = self._health(record)
        abnormal = not healthy
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
            healthy, message = self._health(record)
            if not healthy:
                problems.append(f"{record.target}: {message}")
        statuses = [csi_pb2.VolumeHealth.VolumeHealthEntry(
            status=csi_pb2.INACCESSIBLE, reason="MountNotServing",
            message="; ".join(problems))] if problems else []
        return csi_pb2.NodeGetVolumeHealthResponse(volume_health=csi_pb2.VolumeHealth(
            volume_id=volume_id, health_statuses=statuses))
