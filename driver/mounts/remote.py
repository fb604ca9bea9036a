"""A `Mounter` that delegates to the per-node mounter daemon (driver/mounts/mounter.py).

When the node plugin runs with CLOUDBUCKET_MOUNTER_SOCKET set (the Helm chart does this when
its mounter DaemonSet is enabled), FUSE servers are started by that long-lived daemon rather
than by the node plugin, so restarting or upgrading the node plugin's container cannot take
mounts down. The daemon's mount call returns once the mount is live, or fails with the same
one-line errors as `cloudbucket-csi mount`, which are classified here the same way. The
daemon owns the server processes, so records carry no PID (0): health is judged from
/proc/self/mountinfo and a stat of the target with a timeout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from driver.credentials.source import Credentials
from driver.mounts import mountinfo
from driver.mounts.base import Health, MountFailed, ServerInfo, TargetState
from driver.mounts.mounter import MounterClient, MounterError
from driver.mounts.process import classify, probe_mount
from driver.volume import VolumeSpec

MOUNTER_SOCKET_ENV = "CLOUDBUCKET_MOUNTER_SOCKET"
_REMOTE = ServerInfo(pid=0, start_time=0, credentials_file="", log_file="")


class RemoteMounter:
    def __init__(self, socket_path: str, probe_timeout: float = 5) -> None:
        self._client = MounterClient(socket_path)
        self.probe_timeout = probe_timeout

    def start(self, spec: VolumeSpec, target: str,
              spawned: Callable[[ServerInfo], None]) -> ServerInfo:
        spawned(_REMOTE)
        try:
            self._client.mount(spec.bucket, target, spec.options.to_args(),
                               spec.credentials.to_json())
        except MounterError as exc:
            with contextlib.suppress(MounterError):
                self._client.unmount(target)  # leave nothing mounted after a failure
            message = str(exc)
            kind = "unreachable" if "is not reachable" in message else classify(message)
            raise MountFailed(kind, message) from None
        return _REMOTE

    def check(self, server: ServerInfo, target: str) -> Health:
        if mountinfo.find(target) is None:
            return Health(False, f"nothing is mounted at {target}")
        answers, why = probe_mount(target, self.probe_timeout)
        return Health(answers, "mounted, served by the mounter daemon" if answers else why)

    def update_credentials(self, server: ServerInfo, target: str,
                           credentials: Credentials) -> None:
        try:
            self._client.update_credentials(target, credentials.to_json())
        except MounterError as exc:
            raise MountFailed("failed", str(exc)) from None

    def stop(self, server: ServerInfo | None, target: str, terminate: bool = False) -> None:
        try:
            self._client.unmount(target)
        except MounterError as exc:
            raise MountFailed("busy", f"cannot unmount {target}: {exc}") from None

    def target_state(self, target: str) -> TargetState:
        entry = mountinfo.find(target)
        if entry is None:
            return TargetState.EMPTY
        return TargetState.OURS if entry.fstype == mountinfo.FSTYPE else TargetState.FOREIGN
