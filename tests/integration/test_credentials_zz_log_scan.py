"""No secret or token in any log, argv or environment of a mount server.

Runs after the other credential tests (file order) and scans every log file and CLI
stderr they produced for every secret and token they handed out (tests/creds_helpers.py
records both). It also runs its own debug-level scenario, so it proves something when run
alone: a good role mount, a refused token, wrong static keys, a republish, a refused GCS key.
"""
# ruff: noqa: F811 - pytest fixtures imported from tests/*_fixtures.py are parameters here

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from driver.credentials.source import Credentials
from driver.devservers import FakeGcs
from tests.creds_helpers import LOGS_SEEN, SECRETS_SEEN, CredMounts, remember, write_credentials
from tests.gcs_fixtures import fake_gcs, gcs, gcs_bucket  # noqa: F401
from tests.oidc_issuer import new_rsa_key, private_pem
from tests.sts_fixtures import Env, sts_env  # noqa: F401


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[CredMounts]:
    manager = CredMounts(tmp_path)
    yield manager
    manager.close()


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


def test_no_secret_or_token_in_any_log(sts_env: Env, fake_gcs: FakeGcs, gcs_bucket: str,
                                       mounts: CredMounts) -> None:
    _scenario(sts_env, fake_gcs, gcs_bucket, mounts)
    mounts.close()  # flush and stop the servers before reading their logs
    logs = [path for path in LOGS_SEEN if path.exists()]
    assert len(logs) >= 8, "the scenario's logs were not recorded"
    assert sum(path.stat().st_size for path in logs) > 0
    secrets_seen = {value for value in SECRETS_SEEN if len(value) >= 8}
    assert len(secrets_seen) >= 5
    assert find_leaks(logs, secrets_seen) == []


def find_leaks(paths: list[Path], secrets_seen: set[str]) -> list[str]:
    leaks = []
    for path in paths:
        text = path.read_text(errors="replace")
        for secret in secrets_seen:
            # A JSON-escaped copy (as structlog's JSON renderer writes it) counts too.
            if secret in text or json.dumps(secret)[1:-1] in text:
                leaks.append(f"{path.name}: {secret[:4]}...")
    return leaks


def test_the_scan_finds_a_planted_leak(tmp_path: Path) -> None:
    planted = "line1\n" + secrets.token_urlsafe(24)
    clean, dirty = tmp_path / "clean.log", tmp_path / "dirty.log"
    clean.write_text(json.dumps({"event": "fine"}))
    dirty.write_text(json.dumps({"event": "oops", "detail": f"token={planted}"}))
    assert find_leaks([clean], {planted}) == []
    assert find_leaks([clean, dirty], {planted}) == [f"dirty.log: {planted[:4]}..."]
