"""The clients a benchmark compares: our mount, s3fs-fuse, rclone mount, and raw boto3.

Every FUSE client mounts the same SeaweedFS bucket at a fresh directory and exposes the PID
of the process that serves FUSE requests, so the harness can measure that process. Each
mount is taken down with `fusermount3 -u`, and the harness then waits for the server to
exit, so no run leaves a mount or a process behind. Credentials go through files (0600) or
the environment, never argv.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from driver.devservers import SeaweedS3, wait_until
from driver.mounts import mountinfo
from tests.helpers import mount_bucket

OURS = "cloudbucket"
RAW = "boto3"
PEERS = ("s3fs", "rclone")
MOUNT_TIMEOUT = 60.0


@dataclass
class Mounted:
    """A live mount: where it is, the PID serving it, and how long mounting took."""

    path: Path
    pid: int
    mount_seconds: float
    log_file: Path
    process: subprocess.Popen[bytes] | None = None  # set when we started the server directly


def _tail(path: Path, chars: int = 1500) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-chars:].strip()
    return ""


def _first_line(args: list[str], env: dict[str, str] | None = None) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30, env=env,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _wait_exit(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Wait for a FUSE server to exit after its unmount; kill it if it will not."""
    try:
        if proc is not None:
            proc.wait(timeout)
        elif psutil.pid_exists(pid):
            psutil.Process(pid).wait(timeout)
    except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            os.kill(pid, signal.SIGKILL)
        if proc is not None:
            proc.wait()
    except psutil.NoSuchProcess:
        pass


def unmount(mounted: Mounted, timeout: float = 120) -> None:
    mountinfo.unmount(str(mounted.path), timeout=timeout)
    _wait_exit(mounted.pid, mounted.process, timeout)


def _wait_live(target: Path, proc: subprocess.Popen[bytes], log_file: Path,
               timeout: float = MOUNT_TIMEOUT) -> None:
    def live() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"mount exited with {proc.returncode}: {_tail(log_file)}")
        if mountinfo.find(str(target)) is None:
            return False
        return mountinfo.is_alive(str(target))

    wait_until(live, timeout, f"mount at {target}")


class Client:
    """Base: a name, whether it is usable here, and its version."""

    name: str = ""
    is_mount: bool = True

    def unavailable(self) -> str | None:
        """None when the client can run here, else why not."""
        return None

    def version(self) -> str:
        return "unknown"

    @contextlib.contextmanager
    def mounted(self, target: Path) -> Iterator[Mounted]:
        mounted = self.mount(target)
        try:
            yield mounted
        finally:
            unmount(mounted)

    def mount(self, target: Path) -> Mounted:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass
class Cloudbucket(Client):
    """This project's mount through its CLI (background mode: returns once live)."""

    server: SeaweedS3
    bucket: str
    workdir: Path
    flags: tuple[str, ...] = ()
    name: str = OURS
    _count: int = 0

    def version(self) -> str:
        from driver import __version__

        return f"cloudbucket-csi {__version__}"

    count_requests: bool = False  # run tests.perf.instrumented: store calls are counted
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the server
    _variants: dict[tuple[str, ...], Cloudbucket] = field(default_factory=dict, repr=False)

    log_prefix: str = "cloudbucket"

    def counts_file(self, mounted: Mounted) -> Path:
        return mounted.log_file.with_suffix(".counts.json")

    def with_flags(self, extra: tuple[str, ...]) -> Cloudbucket:
        """The same client with more mount flags (a workload's own, e.g. --direct-io)."""
        cached = self._variants.get(extra)
        if cached is None:
            tag = "".join(c if c.isalnum() else "-" for c in "".join(extra)).strip("-")
            cached = self._variants[extra] = dataclasses.replace(
                self, flags=self.flags + extra, log_prefix=f"{self.log_prefix}-{tag}",
                _count=0, _variants={})
        return cached

    def mount(self, target: Path) -> Mounted:
        self._count += 1
        log_file = self.workdir / f"{self.log_prefix}-{self._count}.log"
        if self.count_requests:
            return self._mount_instrumented(target, log_file)
        started = time.perf_counter()
        # mount_bucket runs `python -m driver mount ... --endpoint-url` with the keys in env
        # and returns once the CLI has exited 0 (= the mount answers).
        process = mount_bucket(self.server, self.bucket, target, *self.flags,
                               env=self.env, log_file=log_file)
        elapsed = time.perf_counter() - started
        return Mounted(target, process.pid, elapsed, log_file)

    def _mount_instrumented(self, target: Path, log_file: Path) -> Mounted:
        env = {**os.environ, **self.server.credential_env(), **self.env,
               "CLOUDBUCKET_BENCH_COUNTS": str(log_file.with_suffix(".counts.json"))}
        args = [sys.executable, "-m", "tests.perf.instrumented", "mount", self.bucket,
                str(target), f"--endpoint-url={self.server.endpoint}", *self.flags,
                "--foreground"]
        return _spawn_mount(args, target, log_file, env=env)


@dataclass
class S3fs(Client):
    server: SeaweedS3
    bucket: str
    workdir: Path
    name: str = "s3fs"
    _count: int = 0

    def unavailable(self) -> str | None:
        return None if shutil.which("s3fs") else "s3fs not installed (make install-peers)"

    def version(self) -> str:
        return _first_line(["s3fs", "--version"])

    def _passwd(self) -> Path:
        path = self.workdir / "s3fs.passwd"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{self.server.access_key}:{self.server.secret_key}\n")
        return path

    def mount(self, target: Path) -> Mounted:
        self._count += 1
        log_file = self.workdir / f"s3fs-{self._count}.log"
        options = ",".join([f"url={self.server.endpoint}", "use_path_request_style",
                            f"passwd_file={self._passwd()}"])
        args = ["s3fs", self.bucket, str(target), "-f", "-o", options]
        return _spawn_mount(args, target, log_file)


@dataclass
class Rclone(Client):
    server: SeaweedS3
    bucket: str
    workdir: Path
    name: str = "rclone"
    _count: int = 0

    def unavailable(self) -> str | None:
        return None if shutil.which("rclone") else "rclone not installed (make install-peers)"

    def _env(self) -> dict[str, str]:
        # rclone refuses to start with the sandbox's AWS_CA_BUNDLE (LoadCustomCABundleError).
        return {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}

    def version(self) -> str:
        return _first_line(["rclone", "version"], env=self._env())

    def _config(self) -> Path:
        path = self.workdir / "rclone.conf"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(
                    "[bench]\ntype = s3\nprovider = SeaweedFS\nenv_auth = false\n"
                    f"access_key_id = {self.server.access_key}\n"
                    f"secret_access_key = {self.server.secret_key}\n"
                    f"endpoint = {self.server.endpoint}\nregion = us-east-1\n"
                    "force_path_style = true\n")
        return path

    def mount(self, target: Path) -> Mounted:
        self._count += 1
        log_file = self.workdir / f"rclone-{self._count}.log"
        args = ["rclone", "mount", f"bench:{self.bucket}", str(target),
                "--config", str(self._config()), "--vfs-cache-mode", "off",
                "--log-level", "NOTICE"]
        return _spawn_mount(args, target, log_file, env=self._env())


def _spawn_mount(args: list[str], target: Path, log_file: Path,
                 env: dict[str, str] | None = None) -> Mounted:
    """Start a FUSE client in the foreground, in its own session; wait until it is live."""
    started = time.perf_counter()
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_live(target, proc, log_file)
    except BaseException:
        _abandon(target, proc)
        raise
    return Mounted(target, proc.pid, time.perf_counter() - started, log_file, proc)


def _abandon(target: Path, proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(Exception):
        mountinfo.unmount(str(target), timeout=30)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Raw(Client):
    """boto3 straight to the store: the ceiling a FUSE client is compared with."""

    server: SeaweedS3
    bucket: str
    name: str = RAW
    is_mount: bool = False
    _client: object = field(default=None, repr=False)

    def version(self) -> str:
        import boto3

        return f"boto3 {boto3.__version__}"

    @property
    def client(self):  # -> botocore S3 client, shared by threads (boto3 clients are)
        if self._client is None:
            self._client = self.new_client()
        return self._client

    def new_client(self):
        # The tests' client: path style, checksums only when required, so the raw figure
        # is the fastest boto3 can go, not slowed down by CRC work.
        return self.server.client()


def python_version() -> str:
    return f"Python {sys.version.split()[0]}"
