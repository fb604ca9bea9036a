"""The mounter: a long-lived per-node process that owns the FUSE servers.

Why it exists: a FUSE mount lives only as long as the process serving it. If the node plugin
ran the FUSE servers, every restart or upgrade of its container would kill them and leave pods
with "Transport endpoint is not connected". So FUSE servers run here instead, in a container
that ordinary upgrades do not restart (its DaemonSet is `updateStrategy: OnDelete`), and the
node plugin, which is restarted freely, only *asks* for mounts over a unix socket.

Protocol: one JSON request per connection on a 0600 unix socket, one JSON reply.
  {"op": "ping"}                                           -> {"ok": true, "pid": N}
  {"op": "mount", "bucket", "target", "flags": [...], "credentials": <Credentials JSON|null>}
  {"op": "update_credentials", "target", "credentials"}    (rewrites the 0600 file in place)
  {"op": "unmount", "target"}                              -> {"ok": true, "unmounted": bool}
  {"op": "list"}                                           -> {"ok": true, "mounts": [...]}
Failures reply {"ok": false, "error": "<one line>"}; secrets never appear in replies or logs.

A mount is `cloudbucket-csi mount` in background mode (it returns once the mount is live),
so each FUSE server is its own process in its own session: the mounter process itself can be
restarted too (it finds its mounts again in /proc/self/mountinfo). It is a child subreaper,
so FUSE servers that exit are reaped here rather than left as zombies when it is PID 1.
Credentials travel in the request and are written to a 0600 file per target (never argv).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from driver.mounts import mountinfo

log = structlog.get_logger()
MAX_REQUEST = 1 << 20
MOUNT_TIMEOUT = 120.0
# Flags the mounter sets itself; a client may not choose them.
RESERVED_FLAGS = ("--foreground", "-f", "--credentials-file", "--log-file")
PR_SET_CHILD_SUBREAPER = 36


class MounterError(Exception):
    """A refused or failed request; the message is one line, safe to show and log."""


# ---------------------------------------------------------------------------- client side


@dataclass(frozen=True)
class MounterClient:
    """What the node plugin uses: one short connection per request."""

    socket_path: str
    timeout: float = MOUNT_TIMEOUT + 30

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                raise MounterError(f"mounter at {self.socket_path} is not reachable: "
                                   f"{exc.strerror or exc}") from None
            sock.sendall(json.dumps(request).encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            data = _read_all(sock)
        reply = json.loads(data or b"{}")
        if not reply.get("ok"):
            raise MounterError(reply.get("error") or "mounter gave no answer")
        return reply

    def ping(self) -> int:
        return int(self.call({"op": "ping"})["pid"])

    def mount(self, bucket: str, target: str, flags: list[str],
              credentials_json: str | None = None) -> None:
        self.call({"op": "mount", "bucket": bucket, "target": target, "flags": flags,
                   "credentials": credentials_json})

    def update_credentials(self, target: str, credentials_json: str) -> None:
        self.call({"op": "update_credentials", "target": target,
                   "credentials": credentials_json})

    def unmount(self, target: str) -> bool:
        return bool(self.call({"op": "unmount", "target": target})["unmounted"])

    def list(self) -> list[dict[str, str]]:
        return list(self.call({"op": "list"})["mounts"])


def _read_all(sock: socket.socket) -> bytes:
    chunks, size = [], 0
    while chunk := sock.recv(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_REQUEST:
            raise MounterError("message too large")
    return b"".join(chunks)


# ---------------------------------------------------------------------------- server side


@dataclass
class Mounter:
    """Starts, lists and stops FUSE servers for targets under `allowed_root`."""

    state_dir: Path
    allowed_root: Path
    python: str = sys.executable
    # One lock per target: guards the check-mount-then-start sequence and its state files.
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)
    # PIDs of `mount` commands we are waiting for ourselves; the reaper leaves them alone.
    _own_children: set[int] = field(default_factory=set)
    _children_guard: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.allowed_root = Path(os.path.realpath(self.allowed_root))
        for sub in ("credentials", "logs"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)

    def _lock(self, target: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(target, threading.Lock())

    def check_target(self, target: str) -> str:
        if not isinstance(target, str) or not os.path.isabs(target):
            raise MounterError(f"target {target!r} must be an absolute path")
        # The parent is resolved (kubelet creates the target itself; it may be a dead mount).
        parent = os.path.realpath(os.path.dirname(os.path.normpath(target)))
        resolved = os.path.join(parent, os.path.basename(os.path.normpath(target)))
        if not resolved.startswith(str(self.allowed_root) + os.sep):
            raise MounterError(f"target {target} is outside {self.allowed_root}")
        return resolved

    def _key(self, target: str) -> str:
        return hashlib.sha256(target.encode()).hexdigest()[:24]

    def credentials_path(self, target: str) -> Path:
        return self.state_dir / "credentials" / f"{self._key(target)}.json"

    def _write_credentials(self, target: str, credentials_json: str) -> Path:
        # Atomic 0600 replace: a live FUSE server re-reading it never sees half a file.
        path = self.credentials_path(target)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(credentials_json)
        os.replace(tmp, path)
        return path

    def mount(self, bucket: str, target: str, flags: list[str],
              credentials_json: str | None) -> None:
        target = self.check_target(target)
        canonical = canonical_flags(flags)
        if not isinstance(bucket, str) or not bucket:
            raise MounterError("bucket is required")
        with self._lock(target):
            if mountinfo.find(target, mountinfo.FSTYPE) is not None:
                if mountinfo.is_alive(target):
                    log.info("already mounted", target=target)
                    return
                mountinfo.unmount(target)  # a dead mount from a crashed server: replace it
            argv = [self.python, "-m", "driver", "mount", bucket, target, *canonical,
                    f"--log-file={self.state_dir / 'logs' / (self._key(target) + '.log')}"]
            if credentials_json:
                path = self._write_credentials(target, credentials_json)
                argv.append(f"--credentials-file={path}")
            log.info("mounting", bucket=bucket, target=target, flags=canonical)
            with self._children_guard:
                child = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                self._own_children.add(child.pid)
            try:
                _, stderr = child.communicate(timeout=MOUNT_TIMEOUT)
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()
                raise MounterError(f"mount of {target} did not become live in "
                                   f"{MOUNT_TIMEOUT:.0f}s") from None
            finally:
                with self._children_guard:
                    self._own_children.discard(child.pid)
            if child.returncode != 0:
                self.credentials_path(target).unlink(missing_ok=True)
                lines = stderr.decode(errors="replace").strip().splitlines()
                message = lines[-1] if lines else f"mount exited with {child.returncode}"
                raise MounterError(message.removeprefix("cloudbucket-csi: error: "))
        log.info("mounted", target=target)

    def update_credentials(self, target: str, credentials_json: str) -> None:
        target = self.check_target(target)
        with self._lock(target):
            if mountinfo.find(target, mountinfo.FSTYPE) is None:
                raise MounterError(f"{target} is not mounted")
            self._write_credentials(target, credentials_json)

    def unmount(self, target: str) -> bool:
        target = self.check_target(target)
        with self._lock(target):
            unmounted = False
            if mountinfo.find(target, mountinfo.FSTYPE) is not None:
                unmounted = mountinfo.unmount(target)
            self.credentials_path(target).unlink(missing_ok=True)
        log.info("unmounted", target=target, was_mounted=unmounted)
        return unmounted

    def list(self) -> list[dict[str, str]]:
        prefix = str(self.allowed_root) + os.sep
        return [{"target": entry.target, "source": entry.source}
                for entry in mountinfo.read()
                if entry.fstype == mountinfo.FSTYPE and entry.target.startswith(prefix)]

    def reap(self) -> None:
        """Collect exited FUSE servers re-parented to us (we are a subreaper)."""
        with self._children_guard:
            own = set(self._own_children)
        for pid in zombie_children():
            if pid not in own:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "mount":
            self.mount(request.get("bucket", ""), request.get("target", ""),
                       request.get("flags") or [], request.get("credentials"))
            return {"ok": True}
        if op == "update_credentials":
            self.update_credentials(request.get("target", ""), request.get("credentials", ""))
            return {"ok": True}
        if op == "unmount":
            return {"ok": True, "unmounted": self.unmount(request.get("target", ""))}
        if op == "list":
            return {"ok": True, "mounts": self.list()}
        raise MounterError(f"unknown op {op!r}")


def zombie_children(proc: str = "/proc") -> list[int]:
    """PIDs of this process's children that have exited and wait to be reaped."""
    me, found = os.getpid(), []
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        if fields[0] == "Z" and int(fields[1]) == me:
            found.append(int(entry.name))
    return found


def canonical_flags(flags: list[str]) -> list[str]:
    """Validate `cloudbucket-csi mount` option flags and return them in canonical form."""
    from driver.cli import add_option_arguments, options_from_namespace
    from driver.options import OptionError as VolumeError

    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise MounterError("flags must be a list of strings")
    for flag in flags:
        if flag.split("=", 1)[0] in RESERVED_FLAGS:
            raise MounterError(f"flag {flag.split('=', 1)[0]} is set by the mounter")
    parser = _FlagParser(prog="mount", add_help=False, allow_abbrev=False)
    add_option_arguments(parser)
    try:
        namespace = parser.parse_args(flags)
        return options_from_namespace(namespace).to_args()
    except VolumeError as exc:
        raise MounterError(f"invalid option --{exc}") from None


class _FlagParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise MounterError(message)


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        try:
            request = json.loads(_read_all(self.request) or b"{}")
            if not isinstance(request, dict):
                raise MounterError("request must be a JSON object")
            reply = self.server.mounter.handle(request)
        except MounterError as exc:
            reply = {"ok": False, "error": str(exc)}
        except (ValueError, TypeError) as exc:
            reply = {"ok": False, "error": f"bad request: {type(exc).__name__}"}
        except Exception as exc:  # one line to the client, the traceback in our log
            log.exception("request failed")
            reply = {"ok": False, "error": f"internal error: {type(exc).__name__}"}
        with contextlib.suppress(OSError):
            self.request.sendall(json.dumps(reply).encode())


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, mounter: Mounter) -> None:
        self.mounter = mounter
        super().__init__(path, _Handler)


def serve(socket_path: str, mounter: Mounter) -> None:
    """Listen on `socket_path` (0600) until SIGTERM/SIGINT. Mounts stay up when it stops."""
    Path(socket_path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)  # a stale socket from a previous mounter process
    old_umask = os.umask(0o177)
    try:
        server = _Server(socket_path, mounter)
    finally:
        os.umask(old_umask)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("stopping; mounts stay up", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, name="mounter-socket", daemon=True)
    thread.start()
    log.info("mounter listening", socket=socket_path, adopted=len(mounter.list()))
    while not stop.wait(1.0):
        mounter.reap()
    server.shutdown()
    server.server_close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)


def _become_subreaper() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m driver.mounts.mounter",
                                     description="Own the FUSE servers of this node.")
    parser.add_argument("--socket", required=True, help="unix socket to listen on")
    parser.add_argument("--state-dir", required=True, help="credential files and logs")
    parser.add_argument("--allowed-root", required=True,
                        help="only targets below this directory are mounted")
    parser.add_argument("--log-level", default=os.environ.get("CLOUDBUCKET_LOG_LEVEL", "info"))
    args = parser.parse_args(argv)
    from driver import log as driver_log

    driver_log.configure(args.log_level)
    _become_subreaper()
    serve(args.socket, Mounter(Path(args.state_dir), Path(args.allowed_root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
