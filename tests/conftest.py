"""Shared fixtures: a real SeaweedFS per session, a fresh bucket per test, real FUSE mounts."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from driver.devservers import SeaweedS3
from tests.helpers import MountProcess, mount_bucket


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedS3]:
    with SeaweedS3() as server:
        yield server


@pytest.fixture
def s3(seaweed: SeaweedS3):
    return seaweed.client()


@pytest.fixture
def bucket(seaweed: SeaweedS3, s3) -> Iterator[str]:
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
def mount(seaweed: SeaweedS3, tmp_path: Path) -> Iterator[Callable[..., MountProcess]]:
    """mount(bucket, *flags) -> a live mount of the bucket through `cloudbucket-csi mount`."""
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
