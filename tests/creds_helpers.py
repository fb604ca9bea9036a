"""Helpers for credential tests: mount through the CLI with a 0600 credentials file.

The node plugin's contract is reproduced here: `Credentials.to_json()` goes into a 0600
file inside a 0700 directory, the server gets only the file's path, and a republish
replaces the file atomically (temp file + rename). The server's environment is stripped of
AWS_*/GOOGLE_* variables so only the file can authenticate it.

No secret may reach a log: every secret and token a test hands out is remembered, and the
`mounts` fixture scans each log file and CLI stderr of its own mounts at teardown for every
secret remembered so far. Each test checks its own logs, so the proof does not depend on
which tests ran before it (the scan once ran last, by file name, over everyone's logs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from driver.cli import exit_status
from driver.credentials.source import Credentials
from driver.devservers import wait_until
from driver.failures import FailureKind
from driver.mounts import mountinfo
from tests.helpers import MountProcess, server_pid

# Every secret and token a test hands out is recorded here, for the log scans.
SECRETS_SEEN: set[str] = set()


def remember(*values: str) -> None:
    SECRETS_SEEN.update(value for value in values if value)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AWS_ACCESS", "AWS_SECRET", "AWS_SESSION", "AWS_ROLE",
                                  "AWS_WEB_IDENTITY", "AWS_PROFILE", "GOOGLE_APPLICATION",
                                  "STORAGE_EMULATOR_HOST"))}
    # No instance-metadata lookups for a refused default chain (there is no IMDS here).
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env.update(extra or {})
    return env


def write_credentials(path: Path, credentials: Credentials) -> None:
    """Write (or atomically replace, like a republish) a 0600 credentials file."""
    remember(credentials.access_key_id, credentials.secret_access_key,
             credentials.session_token, credentials.web_identity_token,
             credentials.gcs_credentials_json)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(credentials.to_json())
    os.replace(temp, path)


@dataclass
class CredMounts:
    """Mounts made by one test with credentials files; `close()` unmounts them all."""

    root: Path
    mounts: list[MountProcess] = field(default_factory=list)
    # Every log file and stderr copy these mounts produced, for the leak scan.
    logs: list[Path] = field(default_factory=list)
    count: int = 0

    def _paths(self) -> tuple[Path, Path, Path]:
        self.count += 1
        target = self.root / f"mnt{self.count}"
        target.mkdir()
        secrets_dir = self.root / f"creds{self.count}"
        log_file = self.root / f"mount{self.count}.log"
        self.logs.append(log_file)
        return target, secrets_dir / "credentials.json", log_file

    def run(self, bucket: str, credentials: Credentials | None, flags: Iterable[str] = (),
            env: dict[str, str] | None = None
            ) -> tuple[subprocess.CompletedProcess[str], Path, Path, Path]:
        target, cred_file, log_file = self._paths()
        args = [sys.executable, "-m", "driver", "mount", bucket, str(target),
                f"--log-file={log_file}", *flags]
        if credentials is not None:
            write_credentials(cred_file, credentials)
            args.append(f"--credentials-file={cred_file}")
        result = subprocess.run(args, env=clean_env(env), capture_output=True, text=True,
                                timeout=120, check=False)
        stderr_copy = self.root / f"stderr{self.count}.txt"
        stderr_copy.write_text(result.stdout + result.stderr)
        self.logs.append(stderr_copy)
        return result, target, cred_file, log_file

    def mount(self, bucket: str, credentials: Credentials | None, flags: Iterable[str] = (),
              env: dict[str, str] | None = None) -> tuple[MountProcess, Path]:
        """A live mount (or an AssertionError with the CLI's message); returns the mount
        and its credentials file (to republish into)."""
        result, target, cred_file, log_file = self.run(bucket, credentials, flags, env)
        assert result.returncode == 0, result.stderr
        wait_until(lambda: mountinfo.find(str(target)) is not None, 10, f"mount at {target}")
        process = MountProcess(target, server_pid(target), log_file)
        self.mounts.append(process)
        return process, cred_file

    def refused(self, bucket: str, credentials: Credentials | None,
                flags: Iterable[str] = (), env: dict[str, str] | None = None,
                kind: FailureKind = FailureKind.ACCESS_DENIED) -> str:
        """Assert the mount is refused with one line, the exit status of `kind`, and
        nothing left mounted."""
        result, target, _, _ = self.run(bucket, credentials, flags, env)
        assert result.returncode == exit_status(kind), result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cloudbucket-csi: error: "), lines
        assert mountinfo.find(str(target)) is None
        assert not _servers_for(target), "a mount server was left running"
        return lines[0]

    def close(self) -> None:
        while self.mounts:  # idempotent: a test may stop its mounts before teardown does
            self.mounts.pop().close()


def find_leaks(paths: Iterable[Path], secrets_seen: Iterable[str]) -> list[str]:
    """`file: secr...` for each remembered secret found in a file (JSON-escaped too)."""
    leaks = []
    for path in paths:
        if not path.exists():
            continue
        text = path.read_text(errors="replace")
        for secret in secrets_seen:
            # A JSON-escaped copy (as structlog's JSON renderer writes it) counts too.
            if secret in text or json.dumps(secret)[1:-1] in text:
                leaks.append(f"{path.name}: {secret[:4]}...")
    return leaks


def long_secrets() -> set[str]:
    """The remembered secrets long enough not to match by chance."""
    return {value for value in SECRETS_SEEN if len(value) >= 8}


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[CredMounts]:
    """Mounts with credentials files; at teardown they are stopped (their logs flushed) and
    every log they wrote is scanned for every secret remembered so far."""
    manager = CredMounts(tmp_path)
    yield manager
    manager.close()
    assert find_leaks(manager.logs, long_secrets()) == [], "a secret reached a log"


def _servers_for(target: Path) -> list[int]:
    try:
        return [server_pid(target)]
    except LookupError:
        return []
