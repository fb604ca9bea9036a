"""Google credentials for the native GCS backend, with google-auth's real refresh code.

fake-gcs-server does not check bearer tokens, so the proof is at the token endpoint: the
local issuer (tests/oidc_issuer.py) serves `/token`, verifies a service-account JWT
assertion against the key it trusts, or validates the pod token in a workload-identity
token exchange, and refuses anything else. A refused exchange must fail the mount with
"denied"; an accepted one must have happened for the mount to be live.
"""

from __future__ import annotations

import errno
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver.credentials.source import Credentials
from driver.devservers import FakeGcs, wait_until
from tests.creds_helpers import CredMounts, remember, write_credentials
from tests.oidc_issuer import OidcIssuer, new_rsa_key, private_pem

pytestmark = pytest.mark.fuse

WIF_AUDIENCE = ("//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/"
                "test-pool/providers/test-k8s")


@pytest.fixture(scope="module")
def issuer() -> Iterator[OidcIssuer]:
    with OidcIssuer() as server:
        yield server


def _service_account(issuer: OidcIssuer, trusted: bool) -> Credentials:
    key = new_rsa_key()
    kid = secrets.token_hex(8)
    if trusted:
        issuer.trusted_assertion_keys[kid] = key.public_key()
    info = {"type": "service_account", "project_id": "test-project", "private_key_id": kid,
            "private_key": private_pem(key), "client_email": "mounter@test.iam.example",
            "client_id": "1234", "token_uri": f"{issuer.url}/token"}
    text = json.dumps(info)
    remember(text, info["private_key"])
    return Credentials(kind="gcs_service_account", gcs_credentials_json=text)


def _external_account(issuer: OidcIssuer, token: str) -> Credentials:
    info = {"type": "external_account", "audience": WIF_AUDIENCE,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": f"{issuer.url}/token",
            # Whatever the JSON says, the driver feeds the pod token from its own file.
            "credential_source": {"file": "/var/run/service-account/token"}}
    return Credentials(kind="gcs_service_account", gcs_credentials_json=json.dumps(info),
                       web_identity_token=token)


def _env(server: FakeGcs) -> dict[str, str]:
    return {"STORAGE_EMULATOR_HOST": server.endpoint}


def test_service_account_json_mounts(issuer: OidcIssuer, fake_gcs: FakeGcs,
                                     gcs, gcs_bucket, mounts: CredMounts) -> None:
    gcs.bucket(gcs_bucket).blob("a.txt").upload_from_string(b"sa")
    before = len(issuer.access_tokens)
    mount, _ = mounts.mount(gcs_bucket, _service_account(issuer, trusted=True),
                            ["--provider=gcs"], env=_env(fake_gcs))
    assert (mount / "a.txt").read_bytes() == b"sa"
    assert len(issuer.access_tokens) > before  # the key was exchanged for a token
    remember(*issuer.access_tokens)


def test_untrusted_service_account_key_is_denied(issuer: OidcIssuer,
                                                 fake_gcs: FakeGcs,
                                                 gcs_bucket, mounts: CredMounts
                                                 ) -> None:
    line = mounts.refused(gcs_bucket, _service_account(issuer, trusted=False),
                          ["--provider=gcs"], env=_env(fake_gcs))
    assert f"access to bucket {gcs_bucket} denied" in line


def test_incomplete_service_account_json_is_refused(fake_gcs: FakeGcs,
                                                    gcs_bucket,
                                                    mounts: CredMounts) -> None:
    creds = Credentials(kind="gcs_service_account",
                        gcs_credentials_json=json.dumps({"type": "service_account"}))
    # Refused as access denied: `refused` checks the exit status of that kind, not a word.
    line = mounts.refused(gcs_bucket, creds, ["--provider=gcs"], env=_env(fake_gcs))
    assert "incomplete" in line


def test_workload_identity_with_the_pod_token_mounts(issuer: OidcIssuer,
                                                     fake_gcs: FakeGcs,
                                                     gcs, gcs_bucket,
                                                     mounts: CredMounts) -> None:
    gcs.bucket(gcs_bucket).blob("w.txt").upload_from_string(b"wif")
    token = issuer.token(audience=WIF_AUDIENCE)
    mount, _ = mounts.mount(gcs_bucket, _external_account(issuer, token), ["--provider=gcs"],
                            env=_env(fake_gcs))
    assert (mount / "w.txt").read_bytes() == b"wif"


@pytest.mark.parametrize("kind", ["expired", "forged", "wrong-audience"])
def test_workload_identity_refused_token_is_denied(issuer: OidcIssuer,
                                                   fake_gcs: FakeGcs,
                                                   gcs_bucket,
                                                   mounts: CredMounts, kind: str) -> None:
    token = {
        "expired": lambda: issuer.token(audience=WIF_AUDIENCE, lifetime=-30),
        "forged": lambda: issuer.token(audience=WIF_AUDIENCE, key=new_rsa_key()),
        "wrong-audience": lambda: issuer.token(),
    }[kind]()
    line = mounts.refused(gcs_bucket, _external_account(issuer, token), ["--provider=gcs"],
                          env=_env(fake_gcs))
    assert f"access to bucket {gcs_bucket} denied" in line


def test_workload_identity_republish_reaches_a_live_mount(issuer: OidcIssuer,
                                                          fake_gcs: FakeGcs,
                                                          gcs, gcs_bucket,
                                                          mounts: CredMounts) -> None:
    """Access tokens last 1 s, so google-auth exchanges the pod token again on nearly every
    request. The first pod token expires after 8 s; only the republished mount keeps
    working after that, because each exchange re-reads its credentials file."""
    issuer.access_token_lifetime = 1
    try:
        first = issuer.token(audience=WIF_AUDIENCE, lifetime=8)
        expires = time.time() + 8
        live, cred_file = mounts.mount(gcs_bucket, _external_account(issuer, first),
                                       ["--provider=gcs", "--metadata-ttl=0"],
                                       env=_env(fake_gcs))
        stale, _ = mounts.mount(gcs_bucket, _external_account(issuer, first),
                                ["--provider=gcs", "--metadata-ttl=0"], env=_env(fake_gcs))
        write_credentials(cred_file, _external_account(
            issuer, issuer.token(audience=WIF_AUDIENCE)))
        bucket = gcs.bucket(gcs_bucket)
        rounds = 0

        def read_round(path: Path) -> bytes:
            nonlocal rounds
            rounds += 1
            bucket.blob(f"r{rounds}.txt").upload_from_string(f"round {rounds}".encode())
            return (path / f"r{rounds}.txt").read_bytes()

        # Keep reading through the live mount until the first token has expired.
        wait_until(lambda: read_round(live.path) == f"round {rounds}".encode()
                   and time.time() > expires + 2, 30, "reads past the first token's expiry")
        assert read_round(live.path) == f"round {rounds}".encode()

        def stale_denied() -> bool:
            try:
                read_round(stale.path)
            except PermissionError as exc:
                return exc.errno == errno.EACCES
            return False

        wait_until(stale_denied, 20, "EACCES on the mount whose pod token expired")
    finally:
        issuer.access_token_lifetime = 3600


def test_driver_identity_from_google_application_credentials(
        issuer: OidcIssuer, fake_gcs: FakeGcs, gcs, gcs_bucket, mounts: CredMounts,
        tmp_path: Path) -> None:
    """No Secret: the driver's own GOOGLE_APPLICATION_CREDENTIALS (google.auth.default)."""
    gcs.bucket(gcs_bucket).blob("d.txt").upload_from_string(b"driver")
    key_file = tmp_path / "driver-key.json"
    key_file.write_text(_service_account(issuer, trusted=True).gcs_credentials_json)
    before = len(issuer.access_tokens)
    mount, _ = mounts.mount(gcs_bucket, None, ["--provider=gcs"], env={
        **_env(fake_gcs), "GOOGLE_APPLICATION_CREDENTIALS": str(key_file)})
    assert (mount / "d.txt").read_bytes() == b"driver"
    assert len(issuer.access_tokens) > before
    remember(*issuer.access_tokens)
    key_file.write_text(_service_account(issuer, trusted=False).gcs_credentials_json)
    line = mounts.refused(gcs_bucket, None, ["--provider=gcs"], env={
        **_env(fake_gcs), "GOOGLE_APPLICATION_CREDENTIALS": str(key_file)})
    assert "denied" in line


def test_google_token_refreshes_and_their_failures_are_counted(issuer: OidcIssuer) -> None:
    """The credential metrics count Google token exchanges as they count STS exchanges:
    google-auth's own refresh against the local token endpoint, one accepted, one refused."""
    import google.auth.exceptions
    import google.auth.transport.requests

    from driver import metrics
    from driver.credentials.gcs import google_credentials

    def counted() -> tuple[float, float]:
        registry = metrics.FUSE_REGISTRY
        return (registry.get_sample_value("cloudbucket_credential_refreshes_total") or 0.0,
                registry.get_sample_value("cloudbucket_credential_refresh_failures_total")
                or 0.0)

    request = google.auth.transport.requests.Request()
    good, _ = google_credentials(_service_account(issuer, trusted=True), None, False)
    before = counted()
    good.refresh(request)
    assert good.token and counted() == (before[0] + 1, before[1])
    remember(good.token)

    bad, _ = google_credentials(_service_account(issuer, trusted=False), None, False)
    with pytest.raises(google.auth.exceptions.RefreshError):
        bad.refresh(request)
    assert counted() == (before[0] + 2, before[1] + 1)
