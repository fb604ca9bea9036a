"""The backends the suites run on, one place for what differs between them.

Two suites are parametrized over a provider instead of being copied per backend:
- the filesystem suite (tests/integration/test_fs_*.py) mounts a bucket through the CLI and
  checks what landed with `objects`, a test's own view of the bucket through the vendor's
  client (boto3 for S3, google-cloud-storage for GCS), never through our ObjectStore, so the
  mount is checked by an independent client;
- the store conformance suite (tests/integration/test_store_conformance.py) calls one
  ObjectStore from `open_store`: S3Store on SeaweedFS, GcsStore on fake-gcs-server, or the
  in-memory store of the unit tests (tests/memstore.py), which must keep the same contract.

The fixtures that pick the provider (`provider`, `bucket`, `mount`, `objects`) live in
tests/conftest.py; a test module chooses providers with `@pytest.mark.providers(...)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Protocol

import boto3
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from driver.devservers import FakeGcs, SeaweedS3
from driver.store.base import ObjectStore
from driver.store.gcs import UPLOADS, GcsStore
from driver.store.s3 import S3Store

PROVIDERS = ("s3", "gcs")


class Objects(Protocol):
    """What a filesystem test reads and writes behind the mount's back."""

    def put(self, key: str, data: bytes) -> None: ...

    def upload_file(self, path: Path, key: str) -> None: ...

    def open(self, key: str) -> BinaryIO:
        """A readable stream of the object's bytes (for objects too big for memory)."""

    def get(self, key: str) -> bytes: ...

    def list_keys(self, prefix: str = "") -> list[str]:
        """Keys of visible objects under `prefix`, sorted (no upload temporaries)."""

    def pending_uploads(self) -> list[str]:
        """Keys of multipart uploads begun and neither completed nor aborted."""


class S3Objects:
    def __init__(self, client, bucket: str) -> None:  # client: a boto3 S3 client
        self._client = client
        self._bucket = bucket

    def put(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self._bucket, Key=key, Body=data)

    def upload_file(self, path: Path, key: str) -> None:
        self._client.upload_file(str(path), self._bucket, key)

    def open(self, key: str) -> BinaryIO:
        return self._client.get_object(Bucket=self._bucket, Key=key)["Body"]

    def get(self, key: str) -> bytes:
        return self.open(key).read()

    def list_keys(self, prefix: str = "") -> list[str]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))

    def pending_uploads(self) -> list[str]:
        answer = self._client.list_multipart_uploads(Bucket=self._bucket)
        return [upload["Key"] for upload in answer.get("Uploads", ())]


class GcsObjects:
    """GCS has no multipart uploads: GcsStore keeps parts as temporaries under UPLOADS, so a
    pending upload is any object there, and those are not shown as the bucket's objects."""

    def __init__(self, client: storage.Client, bucket: str) -> None:
        self._bucket = client.bucket(bucket)
        self._client = client

    def put(self, key: str, data: bytes) -> None:
        self._bucket.blob(key).upload_from_string(data)

    def upload_file(self, path: Path, key: str) -> None:
        self._bucket.blob(key).upload_from_filename(str(path))

    def open(self, key: str) -> BinaryIO:
        return self._bucket.blob(key).open("rb")

    def get(self, key: str) -> bytes:
        return self._bucket.blob(key).download_as_bytes()

    def list_keys(self, prefix: str = "") -> list[str]:
        return sorted(blob.name for blob in self._client.list_blobs(self._bucket, prefix=prefix)
                      if not blob.name.startswith(UPLOADS))

    def pending_uploads(self) -> list[str]:
        return [blob.name for blob in self._client.list_blobs(self._bucket, prefix=UPLOADS)]


def open_store(provider: str, server: SeaweedS3 | FakeGcs, bucket: str) -> ObjectStore:
    """Our ObjectStore for `bucket` on a test server (driver/connect.py builds the real
    ones from credentials; here the servers' own test identities are handed in)."""
    if provider == "gcs":
        assert isinstance(server, FakeGcs)
        return GcsStore(bucket, AnonymousCredentials(), endpoint_url=server.endpoint)
    assert isinstance(server, SeaweedS3)
    session = boto3.Session(aws_access_key_id=server.access_key,
                            aws_secret_access_key=server.secret_key)
    return S3Store(bucket, session, endpoint_url=server.endpoint, region="us-east-1",
                   path_style=True)
