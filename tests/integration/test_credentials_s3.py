"""Per-volume credentials against SeaweedFS: static keys, session tokens and the role-ARN
(AssumeRoleWithWebIdentity) flow with real token validation by SeaweedFS's STS.

A local OIDC issuer (tests/oidc_issuer.py) plays the Kubernetes API server; SeaweedFS is
started with an IAM config that trusts it for two roles. Every mount goes through the real
CLI with a 0600 credentials file, exactly as the node plugin starts it, and the server's
environment holds no keys, so only the file can authenticate it.
"""

from __future__ import annotations

import errno
import os
import time
import uuid
from pathlib import Path

import boto3
import botocore
import pytest
from botocore.config import Config

from driver.credentials.source import Credentials
from driver.devservers import wait_until
from tests.creds_helpers import CredMounts, remember, write_credentials
from tests.oidc_issuer import role_arn
from tests.sts_fixtures import TOKEN_DURATION, Env

pytestmark = pytest.mark.fuse

# -- static keys (a Secret with AWS_* or GOOGLE_* HMAC keys) ---------------------------


def test_right_static_keys_mount_and_read(sts_env: Env, mounts: CredMounts) -> None:
    creds = Credentials(kind="static", access_key_id=sts_env.server.access_key,
                        secret_access_key=sts_env.server.secret_key)
    mount, _ = mounts.mount(sts_env.allowed, creds, sts_env.flags())
    assert (mount / "hello.txt").read_bytes() == b"hello " + sts_env.allowed.encode()


@pytest.mark.parametrize("which", ["secret", "key id"])
def test_wrong_static_keys_are_denied_with_nothing_mounted(sts_env: Env, mounts: CredMounts,
                                                           which: str) -> None:
    creds = Credentials(
        kind="static",
        access_key_id=sts_env.server.access_key if which == "secret" else "AKIAWRONGWRONG",
        secret_access_key="wrong-" + uuid.uuid4().hex if which == "secret"
        else sts_env.server.secret_key)
    line = mounts.refused(sts_env.allowed, creds, sts_env.flags())
    assert f"access to bucket {sts_env.allowed} denied" in line


def test_no_credentials_at_all_is_denied(sts_env: Env, mounts: CredMounts) -> None:
    """The driver's own (empty) identity: the default chain finds nothing -> denied."""
    line = mounts.refused(sts_env.allowed, None, sts_env.flags())
    assert f"access to bucket {sts_env.allowed} denied" in line


def _sts_session(env: Env) -> dict[str, str]:
    sts = boto3.client("sts", endpoint_url=env.server.endpoint, region_name="us-east-1",
                       config=Config(signature_version=botocore.UNSIGNED))
    token = env.issuer.token()
    remember(token)
    issued = sts.assume_role_with_web_identity(
        RoleArn=role_arn("reader"), RoleSessionName="test-session", WebIdentityToken=token,
    )["Credentials"]
    remember(issued["SecretAccessKey"], issued["SessionToken"])
    return issued


def test_secret_with_session_token_mounts(sts_env: Env, mounts: CredMounts) -> None:
    issued = _sts_session(sts_env)
    creds = Credentials(kind="static", access_key_id=issued["AccessKeyId"],
                        secret_access_key=issued["SecretAccessKey"],
                        session_token=issued["SessionToken"])
    mount, _ = mounts.mount(sts_env.allowed, creds, sts_env.flags())
    assert (mount / "hello.txt").read_bytes().startswith(b"hello ")
    # The same keys without their session token are refused.
    without = Credentials(kind="static", access_key_id=issued["AccessKeyId"],
                          secret_access_key=issued["SecretAccessKey"])
    assert "denied" in mounts.refused(sts_env.allowed, without, sts_env.flags())


@pytest.mark.parametrize("names", [
    ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),  # S3, R2 (with endpointUrl)
    ("GOOGLE_ACCESS_KEY_ID", "GOOGLE_ACCESS_KEY_SECRET"),  # GCS HMAC through its S3 API
])
def test_secret_keys_reach_the_mount(sts_env: Env, mounts: CredMounts,
                                     names: tuple[str, str]) -> None:
    """A Secret's keys, parsed by volume_spec as the node plugin does, mount the bucket."""
    from driver.volume import volume_spec

    spec = volume_spec({"bucketName": sts_env.allowed, "endpointUrl": sts_env.server.endpoint,
                        "region": "us-east-1"},
                       secrets={names[0]: sts_env.server.access_key,
                                names[1]: sts_env.server.secret_key})
    mount, _ = mounts.mount(spec.bucket, spec.credentials, spec.options.to_args())
    assert (mount / "hello.txt").read_bytes().startswith(b"hello")


# -- role ARN: AssumeRoleWithWebIdentity with the pod's token ---------------------------


def test_valid_token_mounts_and_reads(sts_env: Env, mounts: CredMounts) -> None:
    mount, _ = mounts.mount(sts_env.allowed, sts_env.role_credentials(sts_env.issuer.token()),
                            sts_env.flags())
    assert (mount / "hello.txt").read_bytes() == b"hello " + sts_env.allowed.encode()
    assert "hello.txt" in os.listdir(mount.path)
    (mount / "written.txt").write_bytes(b"by the role")
    admin = sts_env.server.client()
    assert admin.get_object(Bucket=sts_env.allowed, Key="written.txt")["Body"].read() == \
        b"by the role"
    assert "web identity credentials issued" in mount.log()


def _bad_token(env: Env, kind: str) -> tuple[str, str]:
    """(token, role) pairs that SeaweedFS's STS must refuse."""
    issuer = env.issuer
    if kind == "forged":  # right claims, signed by a key the issuer never published
        from tests.oidc_issuer import new_rsa_key

        return issuer.token(key=new_rsa_key()), "reader"
    if kind == "expired":
        return issuer.token(lifetime=-30), "reader"
    if kind == "wrong-audience":
        return issuer.token(audience="https://kubernetes.default.svc"), "reader"
    if kind == "untrusted-role":  # valid token, but "writer" trusts another service account
        return issuer.token(), "writer"
    if kind == "not-yet-valid":
        return issuer.token(not_before=time.time() + 600), "reader"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["forged", "expired", "wrong-audience", "untrusted-role",
                                  "not-yet-valid"])
def test_refused_token_is_permission_denied_with_nothing_mounted(
        sts_env: Env, mounts: CredMounts, kind: str) -> None:
    token, role = _bad_token(sts_env, kind)
    line = mounts.refused(sts_env.allowed, sts_env.role_credentials(token, role),
                          sts_env.flags())
    assert f"access to bucket {sts_env.allowed} denied" in line
    assert token not in line


def test_bucket_outside_the_role_policy_cannot_be_read(sts_env: Env,
                                                       mounts: CredMounts) -> None:
    creds = sts_env.role_credentials(sts_env.issuer.token())
    # No permission at all on the bucket: the mount itself is refused.
    line = mounts.refused(sts_env.forbidden, creds, sts_env.flags())
    assert f"access to bucket {sts_env.forbidden} denied" in line
    # List-only: the mount works and names are visible, but reading an object is EACCES.
    mount, _ = mounts.mount(sts_env.listonly, creds, sts_env.flags())
    assert os.listdir(mount.path) == ["hello.txt"]
    with pytest.raises(PermissionError) as raised:
        (mount / "hello.txt").read_bytes()
    assert raised.value.errno == errno.EACCES


def _read_fresh(mount_path: Path, admin, bucket: str, round_: int) -> bytes:
    """Write a new object with admin keys and read it through the mount (no cache can
    answer: the name is new, so the mount must LIST/HEAD and GET with its credentials)."""
    key = f"fresh-{round_}.txt"
    admin.put_object(Bucket=bucket, Key=key, Body=f"round {round_}".encode())
    return (mount_path / key).read_bytes()


def test_republish_refreshes_credentials_of_a_live_mount(sts_env: Env,
                                                         mounts: CredMounts) -> None:
    """Two mounts start with a pod token that expires before the first STS session does.
    One gets a republished token (the credentials file is atomically replaced), the other
    does not. Reads keep working on the first well past the first session's expiry; the
    second fails with EACCES once its session expires and its token can't renew it."""
    admin = sts_env.server.client()
    first = sts_env.issuer.token(lifetime=TOKEN_DURATION * 2 // 3)
    started = time.monotonic()
    live, cred_file = mounts.mount(sts_env.allowed, sts_env.role_credentials(first),
                                   sts_env.flags("--metadata-ttl=0"))
    stale, stale_file = mounts.mount(sts_env.allowed, sts_env.role_credentials(first),
                                     sts_env.flags("--metadata-ttl=0"))
    opened = open(stale / "hello.txt", "rb")  # noqa: SIM115 - read after expiry below
    # Republish: kubelet hands the node plugin a fresh token, which rewrites the file.
    write_credentials(cred_file, sts_env.role_credentials(sts_env.issuer.token()))

    round_ = 0
    deadline = started + 3 * TOKEN_DURATION  # three STS sessions, two pod-token lifetimes
    while time.monotonic() < deadline:
        round_ += 1
        assert _read_fresh(live.path, admin, sts_env.allowed, round_) == \
            f"round {round_}".encode(), f"read failed at {time.monotonic() - started:.0f}s"
        # Wait for the next second (pacing, not synchronisation: each round is checked).
        time.sleep(1)
    issued = live.log().count("web identity credentials issued")
    assert issued >= 3, live.log()
    assert live.process.is_running()

    # The mount without a republish loses access once its session expires.
    def stale_denied() -> bool:
        try:
            _read_fresh(stale.path, admin, sts_env.allowed, 10_000 + round_)
        except PermissionError as exc:
            return exc.errno == errno.EACCES
        return False

    try:
        wait_until(stale_denied, TOKEN_DURATION, "EACCES on the mount whose token expired")
        with pytest.raises(PermissionError) as raised:  # a file opened while still valid
            opened.read()
        assert raised.value.errno == errno.EACCES
    finally:
        opened.close()
    assert "web identity token refused" in stale.log()
    # A late republish brings the stale mount back without a remount.
    write_credentials(stale_file, sts_env.role_credentials(sts_env.issuer.token()))
    assert _read_fresh(stale.path, admin, sts_env.allowed, 20_000) == b"round 20000"


# -- the driver's own identity (no Secret, no roleArn): the provider chain -------------


def test_driver_identity_from_web_identity_env(sts_env: Env, mounts: CredMounts,
                                               tmp_path: Path) -> None:
    """IRSA on the driver's own service account: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE
    in the driver's environment, exchanged by boto3's standard chain."""
    token_file = tmp_path / "driver-token"
    token = sts_env.issuer.token()
    remember(token)
    token_file.write_text(token)
    env = {"AWS_ROLE_ARN": role_arn("reader"), "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
           "AWS_ENDPOINT_URL_STS": sts_env.server.endpoint, "AWS_REGION": "us-east-1"}
    mount, _ = mounts.mount(sts_env.allowed, None, sts_env.flags(), env=env)
    assert (mount / "hello.txt").read_bytes().startswith(b"hello")
    token_file.write_text(sts_env.issuer.token(lifetime=-5))
    line = mounts.refused(sts_env.allowed, None, sts_env.flags(), env=env)
    assert "denied" in line


def test_driver_identity_from_env_keys(sts_env: Env, mounts: CredMounts) -> None:
    env = {"AWS_ACCESS_KEY_ID": sts_env.server.access_key,
           "AWS_SECRET_ACCESS_KEY": sts_env.server.secret_key}
    mount, _ = mounts.mount(sts_env.allowed, None, sts_env.flags(), env=env)
    assert (mount / "hello.txt").read_bytes().startswith(b"hello")
