"""Fixtures for the native GCS backend against fake-gcs-server.

tests/conftest.py registers this module as a plugin, so every test can name them:

- `fake_gcs`: one fake-gcs-server per session (in memory, 127.0.0.1, free port);
- `gcs`: a google-cloud-storage client for it (anonymous);
- `gcs_bucket`: a fresh bucket, emptied and deleted afterwards;
- `gcs_mount(bucket, *flags)`: a real FUSE mount through `cloudbucket-csi mount BUCKET MP
  --provider gcs`, the server reaching fake-gcs-server through STORAGE_EMULATOR_HOST. It
  has the signature of the S3 `mount` fixture, so a filesystem test can run on both.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from driver.devservers import FakeGcs, wait_until
from driver.mounts import mountinfo
from tests.helpers import MountProcess, server_pid


@pytest.fixture(scope="session")
def fake_gcs() -> Iterator[FakeGcs]:
    with FakeGcs() as server:
        yield server


def gcs_client(server: FakeGcs) -> storage.Client:
    return storage.Client(project="test", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": server.endpoint})


@pytest.fixture
def gcs(fake_gcs: FakeGcs) -> storage.Client:
    return gcs_client(fake_gcs)


@pytest.fixture
def gcs_bucket(gcs: storage.Client) -> Iterator[str]:
    name = f"g-{uuid.uuid4().hex[:12]}"
    gcs.create_bucket(name)
    yield name
    bucket = gcs.bucket(name)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda blob: blob.delete(), gcs.list_blobs(name)))
    bucket.delete()


def mount_gcs(server: FakeGcs, bucket: str, target: Path, *flags: str, log_file: Path,
              env: dict[str, str] | None = None) -> MountProcess:
    full_env = {key: value for key, value in os.environ.items()
                if not key.startswith(("AWS_ACCESS", "AWS_SECRET", "GOOGLE_APPLICATION"))}
    full_env.update({"STORAGE_EMULATOR_HOST": server.endpoint, **(env or {})})
    args = [sys.executable, "-m", "driver", "mount", bucket, str(target), "--provider=gcs",
            f"--log-file={log_file}", *flags]
    result = subprocess.run(args, env=full_env, capture_output=True, text=True, timeout=120,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"mount failed: {result.stderr.strip()}")
    wait_until(lambda: mountinfo.find(str(target)) is not None, 10, f"mount at {target}")
    return MountProcess(target, server_pid(target), log_file)


@pytest.fixture
def gcs_mount(fake_gcs: FakeGcs, tmp_path: Path) -> Iterator[Callable[..., MountProcess]]:
    """gcs_mount(bucket, *flags) -> a live mount of a fake-gcs-server bucket."""
    mounts: list[MountProcess] = []

    def make(bucket: str, *flags: str, env: dict[str, str] | None = None) -> MountProcess:
        target = tmp_path / f"gmnt{len(mounts)}"
        target.mkdir()
        process = mount_gcs(fake_gcs, bucket, target, *flags, env=env,
                            log_file=tmp_path / f"gmount{len(mounts)}.log")
        mounts.append(process)
        return process

    yield make
    for process in mounts:
        process.close()
