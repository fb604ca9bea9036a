"""The supervisor: the one place that starts, watches and stops FUSE servers.

For each mount request it checks the target, opens /dev/fuse and mounts it at the target
itself (it holds CAP_SYS_ADMIN), writes the mount's credentials to a 0600 file owned by the
server's own UID, and asks the warm zygote (zygote.py) to fork a server that serves the
descriptor as that UID with no capabilities. It returns once the server reported ready and
the mount answered a stat, having raised the mount's read-ahead; or it undoes everything
(no mount, no process, no credentials file) and raises a typed `FailureError`.

Servers end up as children of the supervisor (a child subreaper; the zygote double-forks),
so a death is seen at once: a watcher thread polls one pidfd per server, collects the exit
status (code, signal, and whether the OOM killer ran) and marks the server dead, logged with
its volume id. Readers of a dead mount get ENOTCONN from the kernel at once; `check` reports
the cause; `unmount` of a dead target succeeds. Servers outlive the supervisor: records
(pid + kernel start time, never a cmdline scan) let a new supervisor adopt them; their exit
is then still seen at once through the pidfd, though its status belongs to someone else.

`SupervisorServer` serves the typed protocol (protocol.py) on a 0600 unix socket, and
`SupervisorClient` is how the node plugin talks to it, in-process or as the chart's daemon.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import select
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from driver import metrics
from driver.credentials.source import Credentials
from driver.events import EventRecorder, PodRef
from driver.failures import Failure, FailureError, FailureKind, kind_of
from driver.mounts import fdpass, mountinfo, privileges
from driver.mounts.protocol import (
    CREDENTIALS_FILE,
    METRICS_SOCKET,
    CheckRequest,
    ListRequest,
    MountRequest,
    PingRequest,
    ProtocolError,
    Request,
    ServerRequest,
    ServerStatus,
    UnmountRequest,
    UpdateCredentialsRequest,
    decode_request,
    encode_request,
    failure_reply,
    ok_reply,
    parse_reply,
    recv_message,
    send_message,
    status_from,
)
from driver.mounts.state import private_dir, target_key, write_atomically

log = structlog.get_logger()

# Never in a server's environment: secrets reach a server only through its own 0600 file.
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
              "AWS_SECURITY_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS_JSON",
              "CLOUDBUCKET_MOUNTER_SOCKET")
# How long a Check waits for the death watcher to report why a gone server died.
DEATH_REPORT_WAIT = 2.0


def failure(kind: FailureKind, message: str) -> FailureError:
    return FailureError(Failure(kind, message))


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ServerRecord:
    """What the supervisor keeps on disk about one server (no secrets: file paths only)."""

    target: str
    volume_id: str
    bucket: str
    pid: int
    start_time: int  # /proc/<pid>/stat starttime: a reused PID is not mistaken for ours
    uid: int
    gid: int
    phase: str = "starting"  # starting | ready
    labels: dict[str, str] = field(default_factory=dict)
    cache: str | None = None  # the server's --cache directory (owned by its UID while used)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ServerRecord:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})


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


def _oom_kills() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    return -1


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


# ------------------------------------------------------------------------------ zygote


class Zygote:
    """The warm process that forks servers; re-created when it has died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {name: value for name, value in os.environ.items() if name not in SECRET_ENV}
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "driver.mounts.zygote", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd="/")
        finally:
            theirs.close()
        ours.settimeout(120)
        if recv_message(ours) != {"ready": True}:
            ours.close()
            raise failure(FailureKind.FAILED, "the zygote did not start")
        ours.settimeout(None)
        self._control = ours
        log.info("zygote ready", pid=self._process.pid)

    def ensure(self) -> None:
        """Start the zygote now (normally it starts with the first mount)."""
        with self._lock:
            if self._control is None:
                self._start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def spawn(self, request: ServerRequest, fds: list[int]) -> int:
        with self._lock:
            for attempt in (1, 2):
                if self._control is None or (self._process and self._process.poll() is not None):
                    self._close()
                    self._start()
                assert self._control is not None
                try:
                    socket.send_fds(self._control, [json.dumps(request.to_dict()).encode()],
                                    fds)
                    reply = recv_message(self._control)
                except OSError:
                    reply = None
                if reply is None:  # the zygote died: start another and try once more
                    log.warning("zygote gone; starting a new one", attempt=attempt)
                    self._close()
                    continue
                if "pid" in reply:
                    return int(reply["pid"])
                raise failure(FailureKind.FAILED, f"the zygote could not fork a server: "
                              f"{reply.get('error')}")
        raise failure(FailureKind.FAILED, "the zygote keeps dying")

    def _close(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            self._process = None

    def close(self) -> None:
        with self._lock:
            self._close()


# ------------------------------------------------------------------------ death watch


@dataclass(frozen=True)
class Death:
    """Why a server exited: for people, and as a short metric label (exit:N, signal:X, oom)."""

    message: str
    label: str


@dataclass
class _Watched:
    record: ServerRecord
    pidfd: int
    oom_before: int


class _Deaths:
    """Why each dead server is gone, shared by the death-watch thread and request threads.

    A Check can see a server's process gone (a zombie) a moment before the watcher has reaped
    it and recorded the cause; `cause(target, wait)` waits that moment out on a condition.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._causes: dict[str, str] = {}  # target -> why its server is gone
        self._stopping: set[str] = set()  # targets being unmounted on purpose

    def record(self, target: str, cause: str) -> bool:
        """Note a death; False (nothing noted) when the target is being stopped on purpose."""
        with self._changed:
            if target in self._stopping:
                return False
            self._causes[target] = cause
            self._changed.notify_all()
            return True

    def cause(self, target: str, wait: float = 0.0) -> str | None:
        with self._changed:
            self._changed.wait_for(lambda: target in self._causes, timeout=wait)
            return self._causes.get(target)

    def forget(self, target: str) -> None:
        with self._changed:
            self._causes.pop(target, None)

    def __contains__(self, target: str) -> bool:
        with self._changed:
            return target in self._causes

    def __len__(self) -> int:
        with self._changed:
            return len(self._causes)

    @contextlib.contextmanager
    def stopping(self, target: str) -> Iterator[None]:
        with self._changed:
            self._stopping.add(target)
        try:
            yield
        finally:
            with self._changed:
                self._stopping.discard(target)


class DeathWatch:
    """One thread polling a pidfd per server; `on_exit(record, death)` when one exits."""

    def __init__(self, on_exit: Callable[[ServerRecord, Death], None]) -> None:
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._watched: dict[int, _Watched] = {}  # pidfd -> server
        self._wake_read, self._wake_write = os.pipe()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="death-watch", daemon=True)
        self._thread.start()

    def watch(self, record: ServerRecord) -> bool:
        """Start watching; False when the process is already gone."""
        try:
            pidfd = os.pidfd_open(record.pid)
        except ProcessLookupError:
            return False
        if process_start_time(record.pid) != record.start_time and not self._is_zombie_child(
                record.pid):
            os.close(pidfd)
            return False
        with self._lock:
            self._watched[pidfd] = _Watched(record, pidfd, _oom_kills())
        os.write(self._wake_write, b"w")
        return True

    @staticmethod
    def _is_zombie_child(pid: int) -> bool:
        with contextlib.suppress(OSError):
            return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] == "Z"
        return False

    def forget(self, pid: int) -> None:
        with self._lock:
            for pidfd, watched in list(self._watched.items()):
                if watched.record.pid == pid:
                    del self._watched[pidfd]
                    os.close(pidfd)
        os.write(self._wake_write, b"w")

    def _run(self) -> None:
        while not self._closed:
            with self._lock:
                fds = list(self._watched)
            poller = select.poll()
            poller.register(self._wake_read, select.POLLIN)
            for fd in fds:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll():
                if fd == self._wake_read:
                    os.read(self._wake_read, 4096)
                    continue
                with self._lock:
                    watched = self._watched.pop(fd, None)
                if watched is None:
                    continue
                cause = self._cause(watched)
                os.close(fd)
                try:
                    self._on_exit(watched.record, cause)
                except Exception:  # noqa: BLE001 - the watcher must keep watching
                    log.exception("death handler failed", pid=watched.record.pid)

    @staticmethod
    def _cause(watched: _Watched) -> Death:
        try:
            info = os.waitid(os.P_PIDFD, watched.pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return Death("exited (not a child of this supervisor: exit status unknown)",
                         "unknown")
        if info is None:
            return Death("exited", "unknown")
        if info.si_code == os.CLD_EXITED:
            return Death(f"exited with status {info.si_status}", f"exit:{info.si_status}")
        name = signal.Signals(info.si_status).name if info.si_status in \
            signal.Signals._value2member_map_ else str(info.si_status)
        cause, label = f"killed by {name}", f"signal:{name}"
        if info.si_status == signal.SIGKILL and _oom_kills() > watched.oom_before >= 0:
            cause, label = cause + " (the kernel's OOM killer ran: out of memory)", "oom"
        if info.si_code == os.CLD_DUMPED:
            cause += " (core dumped)"
        return Death(cause, label)

    def close(self) -> None:
        self._closed = True
        os.write(self._wake_write, b"w")
        self._thread.join(5)
        with self._lock:
            for fd in self._watched:
                os.close(fd)
            self._watched.clear()


# -------------------------------------------------------------------------- supervisor


class Supervisor:
    """Starts, checks, refreshes and stops FUSE servers for targets (under `allowed_root`)."""

    def __init__(self, state_dir: Path, allowed_root: Path | None = None,
                 ready_timeout: float = 60, stop_timeout: float = 100,
                 probe_timeout: float = 5, events: EventRecorder | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.allowed_root = Path(os.path.realpath(allowed_root)) if allowed_root else None
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.probe_timeout = probe_timeout
        self._events = events
        self._records_dir = private_dir(self.state_dir / "records")
        self._logs_dir = private_dir(self.state_dir / "logs")
        self._servers_dir = self.state_dir / "servers"  # one dir per server, owned by it
        self._servers_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self._servers_dir, 0o711)  # traversable, not listable
        # One lock per target: guards check-then-mount/unmount and its files.
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._deaths = _Deaths()
        self._zygote = Zygote()
        with contextlib.suppress(OSError):
            privileges.become_subreaper()
        self._watch = DeathWatch(self._died)
        self._adopt()
        # Warm the zygote in the background: the first mount should not pay for imports.
        threading.Thread(target=self._warm_zygote, name="zygote-start", daemon=True).start()

    def _warm_zygote(self) -> None:
        try:
            self._zygote.ensure()
        except Exception:  # noqa: BLE001 - the next mount tries again and reports it
            log.exception("zygote failed to start")

    # -- records -------------------------------------------------------------------------

    def _record_path(self, target: str) -> Path:
        return self._records_dir / f"{target_key(target)}.json"

    def _server_dir(self, target: str) -> Path:
        return self._servers_dir / target_key(target)

    def credentials_path(self, target: str) -> Path:
        return self._server_dir(target) / CREDENTIALS_FILE

    def metrics_socket(self, target: str) -> Path:
        return self._server_dir(target) / METRICS_SOCKET

    def log_path(self, target: str) -> Path:
        return self._logs_dir / f"{target_key(target)}.log"

    def _get(self, target: str) -> ServerRecord | None:
        try:
            record = ServerRecord.from_json(self._record_path(target).read_text())
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            log.warning("unreadable server record", target=target, error=type(exc).__name__)
            return None
        return record if record.target == target else None

    def _put(self, record: ServerRecord) -> None:
        write_atomically(self._record_path(record.target), record.to_json())

    def records(self) -> list[ServerRecord]:
        found = []
        for path in sorted(self._records_dir.glob("*.json")):
            with contextlib.suppress(OSError, ValueError, TypeError):
                found.append(ServerRecord.from_json(path.read_text()))
        return found

    def _adopt(self) -> None:
        adopted = 0
        for record in self.records():
            if self._watch.watch(record):
                adopted += 1
            else:
                self._deaths.record(record.target, "exited while no supervisor was running "
                                    "(exit status unknown)")
        log.info("supervisor started", adopted=adopted, dead=len(self._deaths))

    def _died(self, record: ServerRecord, death: Death) -> None:
        current = self._get(record.target)
        if current is None or current.pid != record.pid or \
                not self._deaths.record(record.target, death.message):
            return  # stopped on purpose
        log.error("FUSE server died", volume_id=record.volume_id, target=record.target,
                  pid=record.pid, cause=death.message,
                  log_file=str(self.log_path(record.target)))
        metrics.FUSE_SERVER_DEATHS.labels(death.label).inc()
        pod = PodRef.from_labels(record.labels)
        if self._events is not None and pod is not None:
            self._events.fuse_server_died(pod, record.volume_id, death.message,
                                          restarting=False)

    @contextlib.contextmanager
    def _target_lock(self, target: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(target, threading.Lock())
        with lock:
            yield

    def _check_target(self, target: str) -> str:
        if not os.path.isabs(target):
            raise failure(FailureKind.INVALID_OPTION, f"target {target!r} must be an absolute "
                          "path")
        parent = os.path.realpath(os.path.dirname(os.path.normpath(target)))
        resolved = os.path.join(parent, os.path.basename(os.path.normpath(target)))
        if self.allowed_root and not resolved.startswith(str(self.allowed_root) + os.sep):
            raise failure(FailureKind.INVALID_OPTION,
                          f"target {target} is outside {self.allowed_root}")
        return resolved

    def _alive(self, record: ServerRecord) -> bool:
        return record.target not in self._deaths and \
            process_start_time(record.pid) == record.start_time

    def _free_uid(self) -> int:
        used = {record.uid for record in self.records()}
        for uid in privileges.UID_RANGE:
            if uid not in used:
                return uid
        raise failure(FailureKind.FAILED, "no free server UID left in the reserved range")

    # -- mount ---------------------------------------------------------------------------

    def mount(self, request: MountRequest) -> ServerStatus:
        target = self._check_target(request.target)
        with self._target_lock(target):
            record = self._get(target)
            if record is not None:
                if record.volume_id != request.volume_id:
                    raise failure(FailureKind.BUSY, f"{target} already serves volume "
                                  f"{record.volume_id}")
                if self._alive(record) and record.phase == "ready":
                    self._hand_over(target, request.credentials, record.uid)
                    return self._status(record)
                restarting = record.target in self._deaths
                self._stop(record, target, terminate=True)
                if restarting:  # republish over a dead mount: counted once it serves again
                    status = self._start_checked(target, request)
                    metrics.FUSE_SERVER_RESTARTS.inc()
                    return status
            entry = mountinfo.find(target)
            if entry is not None:
                if entry.fstype != mountinfo.FSTYPE:
                    raise failure(FailureKind.BUSY, f"{target} already has a filesystem "
                                  "mounted that this driver did not mount")
                mountinfo.unmount(target)  # a dead mount nobody records: replace it
            return self._start_checked(target, request)

    def _start_checked(self, target: str, request: MountRequest) -> ServerStatus:
        if not os.path.isdir(target):
            raise failure(FailureKind.INVALID_OPTION, f"target {target} is not a directory")
        return self._start(target, request)

    def _hand_over(self, target: str, credentials: Credentials, uid: int) -> None:
        try:
            self._write_credentials(target, credentials, uid)
        except OSError:
            metrics.CREDENTIAL_HANDOVERS.labels("failed").inc()
            raise
        metrics.CREDENTIAL_HANDOVERS.labels("ok").inc()

    def _cache_uid(self, cache: str | None) -> int | None:
        """The UID of a live server of the same cache directory: one volume and one
        credentials identity, so sharing its UID gives nothing away, and the blocks stay
        readable by both."""
        if cache is None:
            return None
        for record in self.records():
            if record.cache == cache and self._alive(record):
                return record.uid
        return None

    def _release_cache(self, cache: str | None, target: str) -> None:
        """Lock the cache directory of a server that is gone, unless another uses it."""
        if cache is None:
            return
        from driver.fs.cache import release_cache_dir

        if not any(other.cache == cache and other.target != target
                   for other in self.records()):
            with contextlib.suppress(OSError):
                release_cache_dir(cache)

    def _start(self, target: str, request: MountRequest) -> ServerStatus:
        options = request.options
        uid = self._cache_uid(options.cache) or self._free_uid()
        if options.cache is not None:
            from driver.fs.cache import claim_cache_dir

            try:
                claim_cache_dir(options.cache, uid, uid)
            except OSError as exc:  # the server warns once and reads uncached
                log.warning("cannot prepare the cache directory", cache_dir=options.cache,
                            error=exc.strerror)
        if options.uid is None or options.gid is None:  # files show the mounter's identity
            options = dataclasses.replace(options,
                                          uid=os.getuid() if options.uid is None else options.uid,
                                          gid=os.getgid() if options.gid is None else options.gid)
        server_dir = self._server_dir(target)
        server_dir.mkdir(exist_ok=True)
        os.chown(server_dir, uid, uid)
        os.chmod(server_dir, 0o700)
        self._write_credentials(target, request.credentials, uid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.metrics_socket(target))
        fsname = f"cloudbucket:{request.bucket}/{options.prefix}"
        try:
            fuse_fd = fdpass.mount_fuse(target, fsname, read_only=options.read_only,
                                        allow_other=options.allow_other or options.allow_root)
        except OSError as exc:
            self._remove_files(target)
            kind = FailureKind.BUSY if exc.errno == errno.EBUSY else FailureKind.FAILED
            raise failure(kind, f"cannot mount at {target}: {exc.strerror}") from None
        server_request = ServerRequest(
            volume_id=request.volume_id, target=target, bucket=request.bucket,
            options=options, uid=uid, gid=uid)
        ready_read, ready_write = os.pipe()
        log_fd = os.open(self.log_path(target), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        dir_fd = os.open(server_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            pid = self._zygote.spawn(server_request, [fuse_fd, ready_write, log_fd, dir_fd])
        except BaseException:
            os.close(ready_read)
            self._undo(target, None)
            self._release_cache(options.cache, target)
            raise
        finally:  # the server holds the descriptor now: if it dies, the mount dies with it
            for fd in (fuse_fd, ready_write, log_fd, dir_fd):
                os.close(fd)
        record = ServerRecord(target=target, volume_id=request.volume_id, bucket=request.bucket,
                              pid=pid, start_time=process_start_time(pid) or 0, uid=uid, gid=uid,
                              labels=dict(request.labels), cache=options.cache)
        self._deaths.forget(target)
        self._put(record)
        self._watch.watch(record)
        try:
            self._await_ready(record, ready_read)
        except BaseException:
            self._undo(target, record)
            raise
        record = dataclasses.replace(record, phase="ready")
        self._put(record)
        log.info("FUSE server ready", volume_id=request.volume_id, target=target, pid=pid,
                 uid=uid, bucket=request.bucket)
        return self._status(record)

    def _await_ready(self, record: ServerRecord, ready_read: int) -> None:
        from driver.failures import parse_report

        chunks: list[bytes] = []
        deadline = time.monotonic() + self.ready_timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise failure(FailureKind.TIMEOUT, f"the FUSE server (pid {record.pid}) "
                                  f"was not ready within {self.ready_timeout:.0f}s")
                readable, _, _ = select.select([ready_read], [], [], min(remaining, 1.0))
                if not readable:
                    continue
                chunk = os.read(ready_read, 65536)
                if not chunk or chunk.endswith(b"\n"):
                    chunks.append(chunk)
                    break
                chunks.append(chunk)
        finally:
            os.close(ready_read)
        reported = parse_report(b"".join(chunks))
        if reported is not None:
            raise FailureError(reported)
        answers, why = probe_mount(record.target, self.probe_timeout)
        if not answers:
            raise failure(FailureKind.TIMEOUT, f"the mount at {record.target} is not live: {why}")
        entry = mountinfo.find(record.target)
        if entry is not None:  # after FUSE INIT, which resets it
            from driver.fs.mount import raise_read_ahead

            raise_read_ahead(entry.device)

    def _undo(self, target: str, record: ServerRecord | None) -> None:
        """Leave nothing behind after a failed start: no process, mount or files."""
        if record is not None:
            self._watch.forget(record.pid)
            self._kill(record)
            self._release_cache(record.cache, target)
            self._record_path(target).unlink(missing_ok=True)
        with contextlib.suppress(OSError, TimeoutError):
            mountinfo.unmount(target)
        self._remove_files(target)
        self._deaths.forget(target)

    def _kill(self, record: ServerRecord) -> None:
        if process_start_time(record.pid) == record.start_time:
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
        self._wait_exit(record, 10)

    def _remove_files(self, target: str) -> None:
        server_dir = self._server_dir(target)
        for name in ("credentials.json", "metrics.sock"):
            (server_dir / name).unlink(missing_ok=True)
        for leftover in server_dir.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError, OSError):
            server_dir.rmdir()
        self.log_path(target).unlink(missing_ok=True)

    def _write_credentials(self, target: str, credentials: Credentials, uid: int) -> None:
        write_atomically(self.credentials_path(target), _handover(credentials).to_json(),
                         mode=0o600, owner=(uid, uid))

    # -- check / refresh -----------------------------------------------------------------

    def _status(self, record: ServerRecord, probe: bool = True) -> ServerStatus:
        if probe:
            ok, message = self._health(record)
        else:  # from the records alone (a metrics scrape must not stat every mount)
            ok = self._alive(record) and record.phase == "ready"
            message = "" if ok else self._deaths.cause(record.target) or "not serving"
        return ServerStatus(target=record.target, volume_id=record.volume_id, ok=ok,
                            message=message, pid=record.pid, uid=record.uid,
                            bucket=record.bucket, labels=dict(record.labels),
                            metrics_socket=str(self.metrics_socket(record.target)))

    def _health(self, record: ServerRecord) -> tuple[bool, str]:
        gone = process_start_time(record.pid) != record.start_time
        # A gone process's cause comes from the death watcher, which may be a moment behind.
        death = self._deaths.cause(record.target, wait=DEATH_REPORT_WAIT if gone else 0.0)
        if death is not None:
            return False, (f"the FUSE server (pid {record.pid}) {death}; the mount answers "
                           "ENOTCONN until the volume is unpublished and published again")
        if gone:
            return False, f"the FUSE server (pid {record.pid}) is gone"
        if record.phase != "ready":
            return False, "the FUSE server is still starting"
        if mountinfo.find(record.target) is None:
            return False, f"nothing is mounted at {record.target}"
        answers, why = probe_mount(record.target, self.probe_timeout)
        return (True, f"mounted, served by pid {record.pid}") if answers else (False, why)

    def check(self, target: str) -> ServerStatus:
        target = self._check_target(target)
        record = self._get(target)
        if record is None:
            raise failure(FailureKind.NOT_MOUNTED, f"no FUSE server serves {target}")
        return self._status(record)

    def update_credentials(self, target: str, credentials: Credentials) -> None:
        target = self._check_target(target)
        with self._target_lock(target):
            record = self._get(target)
            if record is None:
                raise failure(FailureKind.NOT_MOUNTED, f"no FUSE server serves {target}")
            self._hand_over(target, credentials, record.uid)

    def list(self, probe: bool = True) -> list[ServerStatus]:
        return [self._status(record, probe) for record in self.records()]

    # -- unmount -------------------------------------------------------------------------

    def unmount(self, target: str, terminate: bool = False) -> None:
        target = self._check_target(target)
        with self._target_lock(target):
            record = self._get(target)
            entry = mountinfo.find(target)
            if record is None and entry is not None and entry.fstype != mountinfo.FSTYPE:
                raise failure(FailureKind.BUSY, f"{target} has a filesystem mounted that this "
                              "driver did not mount; not touching it")
            self._stop(record, target, terminate)

    def _stop(self, record: ServerRecord | None, target: str, terminate: bool) -> None:
        with self._deaths.stopping(target):
            self._stop_server(record, target, terminate)

    def _stop_server(self, record: ServerRecord | None, target: str, terminate: bool) -> None:
        if mountinfo.find(target) is not None:
            try:
                mountinfo.unmount(target, timeout=self.stop_timeout)
            except (OSError, TimeoutError) as exc:
                raise failure(FailureKind.PENDING, f"cannot unmount {target}: {exc}") from None
        if record is not None and process_start_time(record.pid) == record.start_time:
            grace = 5.0 if terminate else self.stop_timeout
            if not self._wait_exit(record, grace):
                if not terminate:
                    raise failure(FailureKind.PENDING, f"{target} is unmounted but its FUSE "
                                  f"server (pid {record.pid}) is still finishing uploads after "
                                  f"{grace:.0f}s; retry later")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(record.pid, signal.SIGTERM)
                if not self._wait_exit(record, 10):
                    self._kill(record)
        if record is not None:
            self._watch.forget(record.pid)
            self._release_cache(record.cache, target)
            self._record_path(target).unlink(missing_ok=True)
        self._remove_files(target)
        self._deaths.forget(target)

    @staticmethod
    def _wait_exit(record: ServerRecord, timeout: float) -> bool:
        """Wait on the server's pidfd (reaping it when it is our child)."""
        try:
            pidfd = os.pidfd_open(record.pid)
        except ProcessLookupError:
            return True
        try:
            if process_start_time(record.pid) not in (record.start_time, None):
                return True  # the PID belongs to someone else now
            ready, _, _ = select.select([pidfd], [], [], timeout)
            if not ready:
                return False
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
            return True
        finally:
            os.close(pidfd)

    # -- lifecycle and dispatch ----------------------------------------------------------

    def close(self) -> None:
        """Stop watching and end the zygote; the mounts keep serving."""
        self._watch.close()
        self._zygote.close()
        with contextlib.suppress(OSError):  # later orphans are not ours to reap
            privileges.become_subreaper(False)

    def handle(self, request: Request) -> dict[str, Any]:
        if isinstance(request, MountRequest):
            return ok_reply(status=dataclasses.asdict(self.mount(request)))
        if isinstance(request, UnmountRequest):
            self.unmount(request.target, request.terminate)
            return ok_reply()
        if isinstance(request, CheckRequest):
            return ok_reply(status=dataclasses.asdict(self.check(request.target)))
        if isinstance(request, UpdateCredentialsRequest):
            self.update_credentials(request.target, request.credentials)
            return ok_reply()
        if isinstance(request, ListRequest):
            return ok_reply(servers=[dataclasses.asdict(s) for s in self.list(request.probe)])
        if isinstance(request, PingRequest):
            return ok_reply(pid=os.getpid(), zygote_pid=self._zygote.pid)
        raise ProtocolError(f"unhandled request {type(request).__name__}")


def _handover(credentials: Credentials) -> Credentials:
    """The driver's own identity, when it is keys in our environment, travels in the
    mount's 0600 file: servers never inherit secrets through their environment."""
    if credentials.kind != "default" or credentials.access_key_id:
        return credentials
    key_id = os.environ.get("AWS_ACCESS_KEY_ID", "")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    if not (key_id and secret):
        return credentials
    return dataclasses.replace(credentials, access_key_id=key_id, secret_access_key=secret,
                               session_token=os.environ.get("AWS_SESSION_TOKEN", ""))


# --------------------------------------------------------------------- socket server


def answer(supervisor: Supervisor, message: Any) -> dict[str, Any]:
    """One message in, one reply out: the socket server and the in-process client both
    go through here, so both speak exactly the protocol."""
    try:
        return supervisor.handle(decode_request(message))
    except FailureError as exc:
        return failure_reply(exc.failure)
    except Exception as exc:  # noqa: BLE001 - one typed reply, the traceback in our log
        log.exception("supervisor request failed")
        return failure_reply(Failure(kind_of(exc), f"internal error: "
                                     f"{type(exc).__name__}: {exc}"))


class _Handler(socketserver.BaseRequestHandler):
    server: SupervisorServer

    def handle(self) -> None:
        try:
            message = recv_message(self.request)
        except ProtocolError as exc:
            reply = failure_reply(exc.failure)
        else:
            reply = answer(self.server.supervisor, message)
        with contextlib.suppress(OSError):
            send_message(self.request, reply)


class SupervisorServer(socketserver.ThreadingUnixStreamServer):
    """The supervisor's 0600 unix socket; one request per connection."""

    daemon_threads = True

    def __init__(self, path: str, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.path = path
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket from a previous process
        old_umask = os.umask(0o177)
        try:
            super().__init__(path, _Handler)
        finally:
            os.umask(old_umask)
        self._thread = threading.Thread(target=self.serve_forever, name="supervisor-socket",
                                        daemon=True)

    def start(self) -> SupervisorServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class SupervisorClient:
    """How the node plugin asks the supervisor for mounts: over its socket (one connection
    per request), or, in-process, by handing the same JSON to `answer`."""

    def __init__(self, socket_path: str | None = None, timeout: float = 300,
                 local: Supervisor | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._local = local

    @classmethod
    def in_process(cls, supervisor: Supervisor) -> SupervisorClient:
        return cls(local=supervisor)

    def call(self, request: Request) -> dict[str, Any]:
        message = encode_request(request)
        if self._local is not None:  # the JSON round trip keeps it honest
            return parse_reply(json.loads(json.dumps(answer(self._local,
                                                            json.loads(json.dumps(message))))))
        assert self.socket_path is not None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                raise failure(FailureKind.UNREACHABLE, f"the supervisor at {self.socket_path} "
                              f"is not reachable: {exc.strerror or exc}") from None
            try:
                send_message(sock, message)
                reply = recv_message(sock)
            except TimeoutError:
                raise failure(FailureKind.TIMEOUT, f"the supervisor did not answer within "
                              f"{self.timeout:.0f}s") from None
            except OSError as exc:
                raise failure(FailureKind.UNREACHABLE, f"the supervisor at "
                              f"{self.socket_path} went away: {exc}") from None
        if reply is None:
            raise failure(FailureKind.UNREACHABLE, "the supervisor closed the connection "
                          "without answering")
        return parse_reply(reply)

    def mount(self, request: MountRequest) -> ServerStatus:
        return status_from(self.call(request)["status"])

    def unmount(self, target: str, terminate: bool = False) -> None:
        self.call(UnmountRequest(target=target, terminate=terminate))

    def check(self, target: str) -> ServerStatus:
        return status_from(self.call(CheckRequest(target=target))["status"])

    def update_credentials(self, target: str, credentials: Credentials) -> None:
        self.call(UpdateCredentialsRequest(target=target, credentials=credentials))

    def list(self, probe: bool = True) -> list[ServerStatus]:
        return [status_from(item) for item in self.call(ListRequest(probe=probe))["servers"]]

    def ping(self) -> dict[str, Any]:
        return self.call(PingRequest())


def run_daemon(socket_path: str, state_dir: Path, allowed_root: Path | None) -> int:
    """The chart's mounter container: serve until SIGTERM/SIGINT; mounts stay up."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("stopping; mounts stay up", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    from driver.events import event_recorder

    supervisor = Supervisor(state_dir, allowed_root, events=event_recorder())
    server = SupervisorServer(socket_path, supervisor).start()
    # The supervisor's own counters (deaths, restarts, hand-overs), for the node plugin's
    # /metrics to merge in (driver/server.py).
    metrics_server = metrics.serve_metrics_unix(metrics_socket_of(socket_path),
                                                metrics.PLUGIN_REGISTRY)
    log.info("supervisor listening", socket=socket_path)
    stop.wait()
    metrics_server.close()
    server.close()
    supervisor.close()
    return 0


def metrics_socket_of(socket_path: str) -> str:
    """Where a supervisor daemon serves its own metrics, beside its control socket."""
    return f"{socket_path}.metrics"
