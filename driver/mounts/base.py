"""The narrow interface between the CSI node service and the supervisor.

The node servicer translates CSI; the supervisor (supervisor.py) does processes and
mounts. `SupervisorClient` is what the node service holds: the same four calls over the
supervisor's socket, whether the supervisor runs in the node plugin's process or as the
chart's mounter daemon. Failures are `FailureError`s carrying a `FailureKind`.
"""

from __future__ import annotations

from typing import Protocol

from driver.credentials.source import Credentials
from driver.mounts.protocol import MountRequest, ServerStatus


class Mounter(Protocol):
    def mount(self, request: MountRequest) -> ServerStatus:
        """Serve `request.bucket` at `request.target` (an existing directory); return once
        the mount is live. A compatible repeat of a live mount refreshes its credentials and
        returns. Raises FailureError, leaving nothing mounted, no process, no files."""

    def check(self, target: str) -> ServerStatus:
        """Whether the server of `target` is alive and its mount answers (with why not);
        FailureError(NOT_MOUNTED) when no server was started there."""

    def update_credentials(self, target: str, credentials: Credentials) -> None:
        """Atomically rewrite a live server's credentials file (it re-reads it on refresh)."""

    def list(self, probe: bool = True) -> list[ServerStatus]:
        """Every server the supervisor records (without `probe`: from its records alone)."""

    def unmount(self, target: str, terminate: bool = False) -> None:
        """Unmount `target`, wait for its server to finish pending uploads and exit, remove
        its files. With `terminate`, a server that does not exit is signalled. Idempotent;
        refuses (BUSY) a filesystem this driver did not mount."""
