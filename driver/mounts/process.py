"""FUSE servers as separate processes: the node plugin's real `Mounter`.

Each published target gets its own `python -m driver mount BUCKET TARGET ... --foreground`
process, started in a new session so that the node plugin can die, restart and re-adopt it
without the mount going down. The server reports readiness (or one line saying why it
failed) through the CLOUDBUCKET_READY_FD pipe, so `start` returns only once the mount is
live, and maps the failure line to a `MountFailed` kind. Credentials never reach argv: they
go to a 0600 file in a 0700 directory under the state dir, passed by path. Servers are
identified by PID plus the kernel's start time of that PID, never by scanning cmdlines.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from driver.credentials.source import Credentials
from driver.mounts import mountinfo
from driver.mounts.base import (
    FailureKind,
    Health,
    MountFailed,
    ServerInfo,
    TargetState,
)
from driver.mounts.state import private_dir, target_key, write_atomically
from driver.volume import VolumeSpec

log = structlog.get_logger()

READY_FD_ENV = "CLOUDBUCKET_READY_FD"  # the protocol of driver/cli.py
CREDENTIALS_FILE_ENV = "CLOUDBUCKET_CREDENTIALS_FILE"
ERROR_PREFIX = "cloudbucket-csi: error: "

# The beginnings of the one-line errors `cloudbucket-csi mount` reports (cli.py's
# describe_store_error and _check_mountpoint), and what kind of failure each one is.
_FAILURE_PREFIXES: tuple[tuple[str, FailureKind], ...] = (
    ("access to bucket ", "access_denied"),
    ("cannot read credentials file", "access_denied"),
    ("bucket ", "bucket_not_found"),  # "bucket X does not exist"
    ("cannot reach the endpoint", "unreachable"),
    ("mountpoint ", "busy"),
)


def classify(message: str) -> FailureKind:
    text = message.removeprefix(ERROR_PREFIX)
    for prefix, kind in _FAILURE_PREFIXES:
        if text.startswith(prefix):
            if kind == "bucket_not_found" and not text.endswith("does not exist"):
                continue
            return kind
    return "failed"


def process_start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot) of `pid`, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is fields[0]
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _reap(pid: int) -> None:
    """Collect `pid`'s exit status if it is our child (a zombie otherwise looks alive)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def server_alive(server: ServerInfo) -> bool:
    _reap(server.pid)
    return process_start_time(server.pid) == server.start_time


def probe_mount(target: str, timeout: float) -> tuple[bool, str]:
    """stat() the mount in a helper thread: a hung server must not hang the caller."""
    result: list[tuple[bool, str]] = []

    def probe() -> None:
        try:
            alive = mountinfo.is_alive(target)
            result.append((alive, "" if alive else "transport endpoint is not connected "
                           "(ENOTCONN): the FUSE server is gone"))
        except OSError as exc:
            result.append((False, f"stat failed: {os.strerror(exc.errno or 0)}"))

    thread = threading.Thread(target=probe, name=f"probe {target}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        return False, f"the mount did not answer a stat within {timeout:.0f}s"
    return result[0]


class FuseProcessMounter:
    """Starts, checks and stops `cloudbucket-csi mount --foreground` server processes."""

    def __init__(self, state_dir: Path, ready_timeout: float = 100, stop_timeout: float = 100,
                 probe_timeout: float = 5, python: str = sys.executable) -> None:
        self._credentials_dir = private_dir(state_dir / "credentials")
        self._log_dir = private_dir(state_dir / "logs")
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.probe_timeout = probe_timeout
        self._python = python

    # -- start ---------------------------------------------------------------------------

    def start(self, spec: VolumeSpec, target: str,
              spawned: Callable[[ServerInfo], None]) -> ServerInfo:
        key = target_key(target)
        credentials_file = self._credentials_dir / f"{key}.json"
        log_file = self._log_dir / f"{key}.log"
        write_atomically(credentials_file, spec.credentials.to_json(), mode=0o600)
        argv = [self._python, "-m", "driver", "mount", spec.bucket, target,
                *spec.options.to_args(), "--foreground",
                f"--credentials-file={credentials_file}", f"--log-file={log_file}"]
        read_fd, write_fd = os.pipe()
        env = {name: value for name, value in os.environ.items()
               if name not in (CREDENTIALS_FILE_ENV, READY_FD_ENV)}
        env[READY_FD_ENV] = str(write_fd)
        try:
            with open(log_file, "ab") as log_handle:
                # A new session: the server outlives this process and its signals.
                process = subprocess.Popen(
                    argv, env=env, pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
                    stdout=log_handle, stderr=log_handle, start_new_session=True, cwd="/")
        except BaseException:
            os.close(read_fd)
            credentials_file.unlink(missing_ok=True)
            raise
        finally:
            os.close(write_fd)
        start_time = process_start_time(process.pid)
        server = ServerInfo(pid=process.pid, start_time=start_time or 0,
                            credentials_file=str(credentials_file), log_file=str(log_file))
        try:
            spawned(server)
            message = self._read_ready(read_fd, process)
        except BaseException:
            self._abandon(process, target, server)
            raise
        if message == "ready":
            log.info("fuse server ready", target=target, pid=process.pid, bucket=spec.bucket)
            return server
        if not message:
            message = self._last_error(log_file) or \
                f"mount server exited with status {process.poll()}"
        message = message.removeprefix(ERROR_PREFIX)
        self._abandon(process, target, server)
        raise MountFailed(classify(message), message)

    def _read_ready(self, read_fd: int, process: subprocess.Popen[bytes]) -> str:
        """The server's one readiness line: "ready", an error, or "" if it died silently."""
        chunks: list[bytes] = []
        deadline = time.monotonic() + self.ready_timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise MountFailed("timeout", f"the mount server (pid {process.pid}) was "
                                      f"not ready within {self.ready_timeout:.0f}s")
                readable, _, _ = select.select([read_fd], [], [], min(remaining, 1.0))
                if not readable:
                    continue
                chunk = os.read(read_fd, 4096)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(read_fd)
        return b"".join(chunks).decode(errors="replace").strip()

    @staticmethod
    def _last_error(log_file: Path) -> str:
        with contextlib.suppress(OSError):
            for line in reversed(log_file.read_text(errors="replace").splitlines()):
                if line.startswith(ERROR_PREFIX):
                    return line
        return ""

    def _abandon(self, process: subprocess.Popen[bytes], target: str,
                 server: ServerInfo) -> None:
        """Undo a failed start: no process, no mount, no credentials or log file (the
        failure's one line travels in the error instead)."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if mountinfo.find(target) is not None:
            mountinfo.unmount(target)
        Path(server.credentials_file).unlink(missing_ok=True)
        Path(server.log_file).unlink(missing_ok=True)

    # -- check / update ------------------------------------------------------------------

    def check(self, server: ServerInfo, target: str) -> Health:
        entry = mountinfo.find(target)
        alive = server_alive(server)
        if entry is None:
            state = "is still running" if alive else "has exited"
            return Health(False, f"nothing is mounted at {target} (FUSE server pid "
                          f"{server.pid} {state})")
        if not alive:
            return Health(False, f"the FUSE server (pid {server.pid}) is gone: the mount "
                          "answers ENOTCONN (transport endpoint is not connected)")
        answers, why = probe_mount(target, self.probe_timeout)
        if not answers:
            return Health(False, why)
        return Health(True, f"mounted, served by pid {server.pid}")

    def update_credentials(self, server: ServerInfo, target: str,
                           credentials: Credentials) -> None:
        write_atomically(Path(server.credentials_file), credentials.to_json(), mode=0o600)

    def target_state(self, target: str) -> TargetState:
        entry = mountinfo.find(target)
        if entry is None:
            return TargetState.EMPTY
        return TargetState.OURS if entry.fstype == mountinfo.FSTYPE else TargetState.FOREIGN

    # -- stop ----------------------------------------------------------------------------

    def stop(self, server: ServerInfo | None, target: str, terminate: bool = False) -> None:
        if mountinfo.find(target) is not None:
            try:
                mountinfo.unmount(target, timeout=self.stop_timeout)
            except (OSError, TimeoutError) as exc:
                raise MountFailed("busy", f"cannot unmount {target}: {exc}") from exc
        if server is not None and server_alive(server):
            grace = 5.0 if terminate else self.stop_timeout
            if not self._wait_exit(server, grace):
                if not terminate:
                    raise MountFailed("busy", f"{target} is unmounted but its FUSE server "
                                      f"(pid {server.pid}) is still finishing uploads after "
                                      f"{grace:.0f}s; retry later")
                self._signal(server, signal.SIGTERM)
                if not self._wait_exit(server, 10):
                    self._signal(server, signal.SIGKILL)
                    self._wait_exit(server, 10)
        if server is not None:
            Path(server.credentials_file).unlink(missing_ok=True)
            Path(server.log_file).unlink(missing_ok=True)

    @staticmethod
    def _wait_exit(server: ServerInfo, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        delay = 0.01
        while server_alive(server):
            if time.monotonic() > deadline:
                return False
            time.sleep(delay)  # polling a PID we do not own: there is nothing to wait on
            delay = min(delay * 2, 0.2)
        return True

    @staticmethod
    def _signal(server: ServerInfo, signum: int) -> None:
        if server_alive(server):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(server.pid, signum)


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
