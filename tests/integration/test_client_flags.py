"""mount-s3 client flags through real mounts: --no-sign-request reads a public-read
SeaweedFS bucket with no credentials at all; --ca-bundle reaches a TLS endpoint whose
certificate only a private CA (made by the test) vouches for; --log-metrics logs counts."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver.devservers import SeaweedS3, wait_until
from driver.mounts import mountinfo
from tests.helpers import MountProcess, server_pid
from tests.tls_proxy import TlsProxy

pytestmark = pytest.mark.fuse

MiB = 1024 * 1024


def _bare_env(**extra: str) -> dict[str, str]:
    """This process's environment with every way to find AWS credentials taken away."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update({"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE":
                "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true", **extra})
    return env


def _mount(bucket: str, target: Path, *flags: str, env: dict[str, str],
           log_file: Path) -> subprocess.CompletedProcess[str]:
    target.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "driver", "mount", bucket, str(target),
                           f"--log-file={log_file}", *flags], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def _live(target: Path, log_file: Path) -> MountProcess:
    wait_until(lambda: mountinfo.find(str(target)) is not None, 10, f"mount at {target}")
    return MountProcess(target, server_pid(target), log_file)


@pytest.fixture(scope="module")
def public_seaweed() -> Iterator[SeaweedS3]:
    """A SeaweedFS whose anonymous identity may read and list (a public-read store)."""
    with SeaweedS3(identities=[{"name": "anonymous", "actions": ["Read", "List"]}]) as server:
        yield server


def test_no_sign_request_reads_a_public_bucket_without_credentials(public_seaweed, tmp_path):
    admin = public_seaweed.client()
    bucket = f"pub-{uuid.uuid4().hex[:8]}"
    admin.create_bucket(Bucket=bucket)
    data = os.urandom(3 * MiB + 1)
    admin.put_object(Bucket=bucket, Key="datasets/train.bin", Body=data)
    env = _bare_env()
    endpoint = f"--endpoint-url={public_seaweed.endpoint}"

    # Without the flag there are no credentials to sign with: the mount is refused.
    refused = _mount(bucket, tmp_path / "signed", endpoint, "--read-only", env=env,
                     log_file=tmp_path / "signed.log")
    assert refused.returncode != 0 and "credentials" in refused.stderr
    assert mountinfo.find(str(tmp_path / "signed")) is None

    target = tmp_path / "anon"
    result = _mount(bucket, target, endpoint, "--no-sign-request", "--read-only", env=env,
                    log_file=tmp_path / "anon.log")
    assert result.returncode == 0, result.stderr
    mnt = _live(target, tmp_path / "anon.log")
    try:
        assert os.listdir(target / "datasets") == ["train.bin"]
        assert hashlib.sha256((target / "datasets/train.bin").read_bytes()).digest() == \
            hashlib.sha256(data).digest()
    finally:
        mnt.close()
    admin.delete_object(Bucket=bucket, Key="datasets/train.bin")
    admin.delete_bucket(Bucket=bucket)


def test_ca_bundle_reaches_a_tls_endpoint_with_a_private_ca(seaweed, s3, bucket, tmp_path):
    s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"over TLS")
    big = random.Random(7).randbytes(20 * 1024 * 1024 + 5)  # three 8 MiB parts
    env = {**os.environ, **seaweed.credential_env()}
    with TlsProxy(seaweed.port, tmp_path) as proxy:
        endpoint = f"--endpoint-url={proxy.endpoint}"
        untrusted = _mount(bucket, tmp_path / "untrusted", endpoint, env=env,
                           log_file=tmp_path / "untrusted.log")
        assert untrusted.returncode != 0
        assert proxy.handshakes_failed >= 1  # the system CAs do not vouch for it

        for name, bundle in (("file", str(proxy.ca_path)),
                             ("pem", proxy.ca_path.read_text())):  # as a PV attribute holds it
            target = tmp_path / f"mnt-{name}"
            result = _mount(bucket, target, endpoint, f"--ca-bundle={bundle}", env=env,
                            log_file=tmp_path / f"{name}.log")
            assert result.returncode == 0, result.stderr
            mnt = _live(target, tmp_path / f"{name}.log")
            try:
                assert (target / "hello.txt").read_bytes() == b"over TLS"
                (target / f"written-{name}.txt").write_bytes(b"through the proxy")
                if name == "file":  # multipart over TLS: parts go UNSIGNED-PAYLOAD + CRC32C
                    (target / "parts.bin").write_bytes(big)
            finally:
                mnt.close()
            body = s3.get_object(Bucket=bucket, Key=f"written-{name}.txt")["Body"].read()
            assert body == b"through the proxy"
    assert s3.get_object(Bucket=bucket, Key="parts.bin")["Body"].read() == big
    assert len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 0


def test_log_metrics_logs_request_counts(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="f", Body=b"x" * 100)
    mnt = mount(bucket, "--log-metrics")
    assert (mnt / "f").read_bytes() == b"x" * 100
    mnt.close()
    log = mnt.log()
    assert '"store requests"' in log and '"GetObject": {"2xx": 1}' in log


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to confine to one")
def test_single_cpu_runs_every_server_thread_on_one_cpu(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="f", Body=b"y" * 100)
    mnt = mount(bucket, "--single-cpu")
    assert (mnt / "f").read_bytes() == b"y" * 100  # its worker threads exist by now
    threads = mnt.process.threads()
    assert len(threads) > 1
    cpus = {tuple(sorted(os.sched_getaffinity(thread.id))) for thread in threads}
    assert len(cpus) == 1 and len(cpus.pop()) == 1
    assert '"confined to one CPU"' in mnt.log()


def test_auto_unmount_unmounts_when_the_server_dies(s3, bucket, mount):
    import signal

    mnt = mount(bucket, "--auto-unmount")
    assert mountinfo.find(str(mnt.path)) is not None
    os.kill(mnt.pid, signal.SIGKILL)  # no chance to unmount itself
    # fusermount3 notices the server's end of its socket close, checks the mount, unmounts.
    wait_until(lambda: mountinfo.find(str(mnt.path)) is None, 30, "fusermount3 to unmount")
    assert os.listdir(mnt.path) == []  # the plain directory again, not a dead mount


def test_profile_infer_content_type_and_bind(seaweed, s3, bucket, tmp_path):
    """--profile takes the keys from a profile of the AWS files (none in the environment);
    --infer-content-type names new objects' types; --bind=lo binds the connections."""
    config = tmp_path / "credentials"
    config.write_text(f"[datasets]\naws_access_key_id = {seaweed.access_key}\n"
                      f"aws_secret_access_key = {seaweed.secret_key}\n")
    env = _bare_env(AWS_SHARED_CREDENTIALS_FILE=str(config))
    target = tmp_path / "mnt"
    flags = (f"--endpoint-url={seaweed.endpoint}", "--profile=datasets",
             "--infer-content-type", "--bind=lo")
    result = _mount(bucket, target, *flags, env=env, log_file=tmp_path / "m.log")
    assert result.returncode == 0, result.stderr
    mnt = _live(target, tmp_path / "m.log")
    try:
        (target / "page.html").write_bytes(b"<p>hi</p>")
        (target / "data.json").write_bytes(b"{}")
    finally:
        mnt.close()
    assert s3.head_object(Bucket=bucket, Key="page.html")["ContentType"] == "text/html"
    assert s3.head_object(Bucket=bucket, Key="data.json")["ContentType"] == "application/json"
    missing = _mount(bucket, tmp_path / "other", f"--endpoint-url={seaweed.endpoint}",
                     "--profile=nope", env=env, log_file=tmp_path / "o.log")
    assert missing.returncode != 0 and "profile nope" in missing.stderr
