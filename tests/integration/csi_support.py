"""Helpers for the CSI integration tests: run `cloudbucket-csi serve` as a real process on
a unix socket, talk to it with the generated stubs, and make sure nothing is left behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driver.csi import csi_pb2, csi_pb2_grpc
from driver.devservers import SeaweedS3, wait_until
from driver.mounts import mountinfo

Mode = csi_pb2.VolumeCapability.AccessMode.Mode


def capability(mode: int = Mode.SINGLE_NODE_WRITER, flags: tuple[str, ...] = (),
               block: bool = False) -> csi_pb2.VolumeCapability:
    cap = csi_pb2.VolumeCapability(access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode))
    if block:
        cap.block.SetInParent()
    else:
        cap.mount.mount_flags.extend(flags)
    return cap


@dataclass
class CsiProcess:
    """A `cloudbucket-csi serve` process; `state_dir` and the socket outlive restarts."""

    workdir: Path
    mode: str = "all"
    node_id: str = "test-node"
    env: dict[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    _channel: grpc.Channel | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "csi.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict]:
        events = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    def start(self) -> CsiProcess:
        env = {**os.environ, "CLOUDBUCKET_LOG_FORMAT": "json", **self.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "driver", "serve", f"--mode={self.mode}",
                 f"--endpoint={self.endpoint}", f"--node-id={self.node_id}",
                 f"--state-dir={self.state_dir}", "--log-level=debug", *self.extra_args],
                env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self._channel = grpc.insecure_channel(self.endpoint)
        wait_until(self._serving, 30, f"CSI server on {self.socket}")
        return self

    def _serving(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"server exited {self.process.returncode}: {self.log()[-3000:]}")
        try:
            response = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        except grpc.RpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self._channel)

    @property
    def identity(self) -> csi_pb2_grpc.IdentityStub:
        return csi_pb2_grpc.IdentityStub(self._channel)

    @property
    def node(self) -> csi_pb2_grpc.NodeStub:
        return csi_pb2_grpc.NodeStub(self._channel)

    @property
    def controller(self) -> csi_pb2_grpc.ControllerStub:
        return csi_pb2_grpc.ControllerStub(self._channel)

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait: the graceful shutdown path. Returns the exit status."""
        assert self.process is not None
        self.close_channel()
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout)
        self.process = None
        return status

    def kill(self) -> None:
        """SIGKILL: the node plugin dies without any cleanup."""
        assert self.process is not None
        self.close_channel()
        self.process.kill()
        self.process.wait(30)
        self.process = None

    def records(self) -> list[dict]:
        directory = self.state_dir / "volumes"
        if not directory.exists():
            return []
        return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]

    @property
    def supervisor_dir(self) -> Path:
        return self.state_dir / "supervisor"

    def servers(self) -> list[dict]:
        """The supervisor's records of its FUSE servers (pid, uid, target...)."""
        directory = self.supervisor_dir / "records"
        if not directory.exists():
            return []
        return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]

    def server_pid(self, target: Path) -> int:
        [server] = [s for s in self.servers() if s["target"] == str(target)]
        return int(server["pid"])

    def cleanup(self) -> None:
        """Safety net: stop the server, unmount whatever it left, stop its FUSE servers."""
        if self.process is not None:
            self.kill()
        for record in self.records():
            with contextlib.suppress(Exception):
                mountinfo.unmount(record["target"], timeout=30)
        for server in self.servers():
            if server.get("pid") and psutil.pid_exists(server["pid"]):
                with contextlib.suppress(psutil.Error):
                    proc = psutil.Process(server["pid"])
                    proc.terminate()
                    proc.wait(30)
        for entry in mountinfo.read():
            if entry.target.startswith(str(self.workdir)):
                with contextlib.suppress(Exception):
                    mountinfo.unmount(entry.target, timeout=30)


@contextlib.contextmanager
def csi_server(mode: str = "all", **kwargs: object) -> Iterator[CsiProcess]:
    # A short directory: unix socket paths are limited to 107 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="csi-", dir="/tmp"))
    server = CsiProcess(workdir, mode=mode, **kwargs)  # type: ignore[arg-type]
    try:
        yield server.start()
    finally:
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


def volume_context(seaweed: SeaweedS3, bucket: str, **extra: str) -> dict[str, str]:
    return {"bucketName": bucket, "endpointUrl": seaweed.endpoint, **extra}


def secrets(seaweed: SeaweedS3) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": seaweed.access_key,
            "AWS_SECRET_ACCESS_KEY": seaweed.secret_key}


def publish_request(seaweed: SeaweedS3, bucket: str, target: Path, volume_id: str = "vol-1",
                    mode: int = Mode.SINGLE_NODE_WRITER, flags: tuple[str, ...] = (),
                    readonly: bool = False, context: dict[str, str] | None = None,
                    secret: dict[str, str] | None = None,
                    ) -> csi_pb2.NodePublishVolumeRequest:
    return csi_pb2.NodePublishVolumeRequest(
        volume_id=volume_id, target_path=str(target),
        volume_capability=capability(mode, flags), readonly=readonly,
        volume_context=context if context is not None else volume_context(seaweed, bucket),
        secrets=secret if secret is not None else secrets(seaweed))
