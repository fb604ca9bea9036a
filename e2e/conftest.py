"""Fixtures of the e2e suite: the S3 server, the installed chart, a namespace per case.

Run it through `make e2e-local` or `make e2e-kind`; see e2e/harness.py for the settings.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from e2e import harness
from e2e.harness import Cluster, NodeSeaweed, Settings


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    if os.environ.get("E2E_S3_ENDPOINT"):
        yield Settings.from_env()
        return
    # No S3 server given: start SeaweedFS where pods reach it, with the STS for case 5.
    server = NodeSeaweed(
        host=harness.env("E2E_S3_HOST", "10.100.0.1"),
        ca_file=harness.env("E2E_OIDC_CA"),
        iam_config=harness.seaweed_iam_config(harness.env("E2E_OIDC_ISSUER",
                                                          "https://10.96.0.1")),
    )
    server.start()
    try:
        yield Settings.from_env(server.endpoint, server.endpoint, server.access_key,
                                server.secret_key)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3(settings: Settings):  # -> botocore S3 client
    return harness.s3_client(settings.s3_local_endpoint, settings.access_key,
                             settings.secret_key)


@pytest.fixture(scope="session")
def cluster(settings: Settings) -> Iterator[Cluster]:
    cluster = Cluster(settings)
    if os.environ.get("E2E_SKIP_INSTALL") != "1":
        harness.helm_install(settings)
    yield cluster
    if os.environ.get("E2E_KEEP_DRIVER") != "1" and os.environ.get("E2E_SKIP_INSTALL") != "1":
        harness.helm(settings, "uninstall", settings.release, "--namespace",
                     settings.driver_namespace, "--wait", "--timeout", "5m")


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    with harness.namespace(cluster, harness.unique("cbe2e")) as name:
        yield name


@pytest.fixture
def bucket(s3) -> Iterator[str]:
    name = harness.unique("e2e")
    s3.create_bucket(Bucket=name)
    yield name
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=name):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=obj["Key"])
    s3.delete_bucket(Bucket=name)


@pytest.fixture
def keys_secret(cluster: Cluster, settings: Settings, ns: str) -> tuple[str, str]:
    """A Secret with the S3 keys in the case's namespace: (namespace, name)."""
    cluster.secret(ns, "bucket-keys", {"AWS_ACCESS_KEY_ID": settings.access_key,
                                        "AWS_SECRET_ACCESS_KEY": settings.secret_key})
    return ns, "bucket-keys"
