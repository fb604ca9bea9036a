"""Rename and append on native GCS (fake-gcs-server), checked in the bucket: rename is a
rewrite pinned to the source generation, then a delete; append composes the existing
object (server-side) with the new bytes."""

from __future__ import annotations

import os
import subprocess

import pytest

pytestmark = pytest.mark.fuse

MiB = 1024 * 1024


def blobs(gcs, bucket: str) -> dict[str, bytes]:
    return {blob.name: blob.download_as_bytes() for blob in gcs.list_blobs(bucket)
            if not blob.name.startswith("/")}


def test_gcs_file_and_directory_rename(gcs, gcs_bucket, gcs_mount):
    bucket = gcs.bucket(gcs_bucket)
    big = os.urandom(20 * MiB + 7)
    bucket.blob("big.bin").upload_from_string(big)
    tree = {"src/a": b"1", "src/sub/b": b"22", "src/sub/deep/c": b"333"}
    for key, data in tree.items():
        bucket.blob(key).upload_from_string(data)
    mnt = gcs_mount(gcs_bucket, "--allow-rename")
    os.rename(mnt / "big.bin", mnt / "moved.bin")
    subprocess.run(["mv", str(mnt / "src"), str(mnt / "dst")], check=True)
    expected = {"moved.bin": big, **{k.replace("src/", "dst/", 1): v for k, v in tree.items()}}
    assert blobs(gcs, gcs_bucket) == expected
    assert (mnt / "dst/sub/deep/c").read_bytes() == b"333"


def test_gcs_append_composes_old_and_new(gcs, gcs_bucket, gcs_mount):
    bucket = gcs.bucket(gcs_bucket)
    cases = {"big.log": os.urandom(20 * MiB), "small.log": os.urandom(1024)}
    for key, data in cases.items():
        bucket.blob(key).upload_from_string(data)
    mnt = gcs_mount(gcs_bucket, "--incremental-upload")
    new = os.urandom(MiB + 3)
    for key in cases:
        with open(mnt / key, "ab") as out:
            out.write(new)
    found = blobs(gcs, gcs_bucket)
    assert found == {key: data + new for key, data in cases.items()}
    # No temporary upload objects are left behind.
    assert not [blob.name for blob in gcs.list_blobs(gcs_bucket) if blob.name.startswith("/")]
