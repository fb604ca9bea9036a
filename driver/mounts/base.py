"""The narrow interface between the CSI node service and the FUSE servers it supervises.

The node servicer translates CSI; a `Mounter` does processes and mounts: start a FUSE server
for a `VolumeSpec` at a target (returning once the mount is live), check whether a recorded
server still serves its target (used for volume health and to adopt mounts after a restart),
refresh a live mount's credentials file, and stop (unmount, let pending uploads finish).
`process.FuseProcessMounter` is the real one; unit tests use an in-memory fake.
(driver/mounts/mounter.py is a different thing: the optional per-node mounter daemon.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Literal, Protocol

from driver.credentials.source import Credentials
from driver.volume import VolumeSpec


@dataclass(frozen=True)
class ServerInfo:
    """What is recorded about one running FUSE server (no secrets: only file paths)."""

    pid: int
    start_time: int  # /proc/<pid>/stat starttime: a reused PID is not mistaken for ours
    credentials_file: str
    log_file: str


FailureKind = Literal["access_denied", "bucket_not_found", "unreachable", "busy", "timeout",
                      "failed"]


class MountFailed(Exception):
    """A server could not be started or stopped; `kind` says what kind of failure it was."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class TargetState(Enum):
    EMPTY = "empty"  # nothing mounted at the target
    OURS = "ours"  # a cloudbucket FUSE mount (live or dead)
    FOREIGN = "foreign"  # some other filesystem


@dataclass(frozen=True)
class Health:
    ok: bool
    message: str


class Mounter(Protocol):
    def start(self, spec: VolumeSpec, target: str,
              spawned: Callable[[ServerInfo], None]) -> ServerInfo:
        """Start a server for `spec` at `target` (an existing directory); return once the
        mount is live. `spawned` is called with the new server's info as soon as it exists,
        before it is ready, so the caller can record it. Raises MountFailed, leaving
        nothing mounted and no process or credentials file behind."""

    def check(self, server: ServerInfo, target: str) -> Health:
        """Whether `server` is alive and its mount at `target` answers."""

    def update_credentials(self, server: ServerInfo, target: str,
                           credentials: Credentials) -> None:
        """Atomically rewrite a live server's credentials file (it re-reads it on refresh)."""

    def stop(self, server: ServerInfo | None, target: str, terminate: bool = False) -> None:
        """Unmount `target`, wait for `server` to finish pending uploads and exit, and remove
        its files. With `terminate`, a server that does not exit is signalled. Idempotent."""

    def target_state(self, target: str) -> TargetState:
        """What is mounted at `target`, without touching the mount itself."""
