"""No secret or token in any log, argv or environment of a mount server.

Every credential test's own logs are scanned at its teardown (the `mounts` fixture in
tests/creds_helpers.py), so no test depends on running after another. This module runs a
debug-level scenario that touches every path a secret travels (a good role mount, a
republish, a refused token, wrong static keys, a refused GCS key), checks argv and
environment of the live server, and proves the scan itself finds a planted leak.
"""

from __future__ import annotations

import json
import secrets
import uuid
from pathlib import Path

import psutil
import pytest

from driver.credentials.source import Credentials
from driver.devservers import FakeGcs
from tests.creds_helpers import (
    CredMounts,
    find_leaks,
    long_secrets,
    remember,
    write_credentials,
)
from tests.oidc_issuer import new_rsa_key, private_pem
from tests.sts_fixtures import Env


def _process_text(pid: int) -> str:
    """argv and environment of a process, as one string."""
    proc = psutil.Process(pid)
    return "\0".join(proc.cmdline()) + "\0" + "\0".join(
        f"{key}={value}" for key, value in proc.environ().items())


def _scenario(env: Env, fake: FakeGcs, gcs_bucket: str, mounts: CredMounts) -> None:
    token = env.issuer.token()
    live, cred_file = mounts.mount(env.allowed, env.role_credentials(token),
                                   env.flags("--debug"))
    assert (live / "hello.txt").read_bytes().startswith(b"hello")
    fresh = env.issuer.token()
    write_credentials(cred_file, env.role_credentials(fresh))  # a republish
    assert (live / "hello.txt").read_bytes().startswith(b"hello")
    server_text = _process_text(live.pid)
    for secret in (token, fresh):
        assert secret not in server_text, "a token is in the server's argv or environment"
    mounts.refused(env.allowed, env.role_credentials(env.issuer.token(lifetime=-5)),
                   env.flags("--debug"))
    mounts.refused(env.allowed, Credentials(
        kind="static", access_key_id=env.server.access_key,
        secret_access_key="wrong-" + uuid.uuid4().hex), env.flags("--debug"))
    info = {"type": "service_account", "project_id": "p", "private_key_id": "k",
            "private_key": private_pem(new_rsa_key()), "client_email": "sa@p.example",
            "client_id": "1", "token_uri": f"{env.issuer.url}/token"}
    remember(info["private_key"].splitlines()[1])  # a line of the key, as it might leak
    mounts.refused(gcs_bucket, Credentials(kind="gcs_service_account",
                                           gcs_credentials_json=json.dumps(info)),
                   ["--provider=gcs", "--debug"],
                   env={"STORAGE_EMULATOR_HOST": fake.endpoint})


@pytest.mark.fuse
def test_no_secret_or_token_in_any_log(sts_env: Env, fake_gcs: FakeGcs, gcs_bucket: str,
                                       mounts: CredMounts) -> None:
    _scenario(sts_env, fake_gcs, gcs_bucket, mounts)
    mounts.close()  # flush and stop the servers before reading their logs
    logs = [path for path in mounts.logs if path.exists()]
    assert len(logs) >= 8, "the scenario's logs were not recorded"
    assert sum(path.stat().st_size for path in logs) > 0
    # This test's own token, keys and GCS key line, at least, and more from earlier tests.
    assert len(long_secrets()) >= 5
    assert find_leaks(logs, long_secrets()) == []


def test_the_scan_finds_a_planted_leak(tmp_path: Path) -> None:
    planted = "line1\n" + secrets.token_urlsafe(24)
    clean, dirty = tmp_path / "clean.log", tmp_path / "dirty.log"
    clean.write_text(json.dumps({"event": "fine"}))
    dirty.write_text(json.dumps({"event": "oops", "detail": f"token={planted}"}))
    raw = tmp_path / "raw.txt"  # a CLI's stderr: not JSON-escaped
    raw.write_text(f"error: {planted}\n")
    assert find_leaks([clean], {planted}) == []
    assert find_leaks([clean, dirty, raw], {planted}) == [
        f"dirty.log: {planted[:4]}...", f"raw.txt: {planted[:4]}..."]
