"""Shared fixtures, all in one place: a test names what it needs and never imports fixtures.

- Servers, one per session, started on first use on 127.0.0.1 with free ports: `seaweed`
  (SeaweedFS S3, here), `fake_gcs` (tests/gcs_fixtures.py), `sts_env` (SeaweedFS with STS and
  a test OIDC issuer, tests/sts_fixtures.py).
- A fresh bucket per test and a real FUSE mount of it: `bucket`, `mount(bucket, *flags)`,
  and `objects`, the bucket seen through the vendor's client (tests/backends.py). They
  follow `provider`, "s3" unless a test is marked `@pytest.mark.providers("s3", "gcs")`,
  which runs it once per provider (`heavy=True` runs GCS only with CLOUDBUCKET_GCS_HEAVY=1:
  fake-gcs-server keeps every object in memory and serves one per request).
- `mounts`: mounts with a 0600 credentials file, each scanned for leaked secrets at teardown
  (tests/creds_helpers.py).
- Capability markers (`fuse`, `root`, `docker`): tests/capabilities.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from driver.devservers import SeaweedS3
from tests.backends import PROVIDERS, GcsObjects, Objects, S3Objects
from tests.helpers import MountProcess, mount_bucket

pytest_plugins = [
    "pytester",
    "tests.capabilities",
    "tests.creds_helpers",  # before sts_fixtures, which imports it
    "tests.gcs_fixtures",
    "tests.sts_fixtures",
]

GCS_HEAVY = pytest.mark.skipif(
    not os.environ.get("CLOUDBUCKET_GCS_HEAVY"),
    reason="heavy on fake-gcs-server (one object per request, all in memory); set "
           "CLOUDBUCKET_GCS_HEAVY=1 to run; test_gcs_fs.py lists 1,203 keys across pages")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("providers")
    if marker is None:
        return
    names = marker.args or PROVIDERS
    unknown = set(names) - set(PROVIDERS)
    if unknown:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown providers {unknown}")
    heavy = marker.kwargs.get("heavy", False)
    metafunc.parametrize("provider", [
        pytest.param(name, marks=[GCS_HEAVY] if heavy and name == "gcs" else [])
        for name in names])


@pytest.fixture
def provider() -> str:
    """The backend of `bucket`, `mount` and `objects`; parametrized by `providers`."""
    return "s3"


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedS3]:
    with SeaweedS3() as server:
        yield server


@pytest.fixture
def s3(seaweed: SeaweedS3):
    return seaweed.client()


@pytest.fixture
def bucket(provider: str, request: pytest.FixtureRequest) -> Iterator[str]:
    if provider == "gcs":
        yield request.getfixturevalue("gcs_bucket")
        return
    s3 = request.getfixturevalue("s3")
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    yield name
    # Leave the server clean for the next test (objects and pending uploads).
    for key, upload_id in _uploads(s3, name):
        s3.abort_multipart_upload(Bucket=name, Key=key, UploadId=upload_id)
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=name):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
        if keys:
            s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
    s3.delete_bucket(Bucket=name)


def _uploads(s3, bucket: str) -> list[tuple[str, str]]:
    response = s3.list_multipart_uploads(Bucket=bucket)
    return [(u["Key"], u["UploadId"]) for u in response.get("Uploads", ())]


@pytest.fixture
def objects(provider: str, bucket: str, request: pytest.FixtureRequest) -> Objects:
    """The test's bucket through the vendor's own client, to check what a mount did."""
    if provider == "gcs":
        return GcsObjects(request.getfixturevalue("gcs"), bucket)
    return S3Objects(request.getfixturevalue("s3"), bucket)


@pytest.fixture
def mount(provider: str, request: pytest.FixtureRequest,
          tmp_path: Path) -> Iterator[Callable[..., MountProcess]]:
    """mount(bucket, *flags) -> a live mount of the bucket through `cloudbucket-csi mount`."""
    if provider == "gcs":
        yield request.getfixturevalue("gcs_mount")
        return
    seaweed = request.getfixturevalue("seaweed")
    mounts: list[MountProcess] = []

    def make(bucket: str, *flags: str, env: dict[str, str] | None = None) -> MountProcess:
        target = tmp_path / f"mnt{len(mounts)}"
        target.mkdir()
        process = mount_bucket(seaweed, bucket, target, *flags, env=env,
                               log_file=tmp_path / f"mount{len(mounts)}.log")
        mounts.append(process)
        return process

    yield make
    for process in mounts:
        process.close()


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "driver", *args], capture_output=True,
                              text=True, env={**os.environ, **(env or {})}, timeout=timeout,
                              check=False)

    return run
