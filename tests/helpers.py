"""Test helpers: mount a bucket through the real CLI and take it down cleanly."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from driver.devservers import SeaweedS3, wait_until
from driver.mounts import mountinfo


@dataclass
class MountProcess:
    path: Path
    pid: int
    log_file: Path

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def process(self) -> psutil.Process:
        return psutil.Process(self.pid)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def close(self) -> None:
        mountinfo.unmount(str(self.path))
        if psutil.pid_exists(self.pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(self.pid).wait(60)


def _holds_dev_fuse(pid: int) -> bool:
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/fuse":
                    return True
    return False


def server_pid(target: Path) -> int:
    """The PID of the `cloudbucket-csi mount` server of `target` (tests only: the command
    line names the target, and the server holds /dev/fuse)."""
    target_text = str(target)
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "mount" in cmdline and target_text in cmdline and _holds_dev_fuse(proc.pid):
            return proc.pid
    raise LookupError(f"no FUSE server for {target}")


def mount_bucket(server: SeaweedS3, bucket: str, target: Path, *flags: str,
                 env: dict[str, str] | None = None, log_file: Path) -> MountProcess:
    full_env = {**os.environ, **server.credential_env(), **(env or {})}
    args = [sys.executable, "-m", "driver", "mount", bucket, str(target),
            f"--endpoint-url={server.endpoint}", f"--log-file={log_file}", *flags]
    result = subprocess.run(args, env=full_env, capture_output=True, text=True, timeout=120,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"mount failed: {result.stderr.strip()}")
    wait_until(lambda: mountinfo.find(str(target)) is not None, 10, f"mount at {target}")
    return MountProcess(target, server_pid(target), log_file)


def sha256_file(path: Path | str, block: int = 4 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()
