"""Build the ObjectStore a mount's options and credentials describe."""

from __future__ import annotations

from driver.credentials import boto3_session
from driver.store.base import ObjectStore
from driver.volume import Credentials, MountOptions


def open_store(bucket: str, options: MountOptions, credentials: Credentials) -> ObjectStore:
    if options.provider == "gcs":
        from driver.store.gcs import GcsStore

        return GcsStore(bucket, credentials)
    from driver.store.s3 import S3Store

    return S3Store(
        bucket, boto3_session(credentials, options.region), endpoint_url=options.endpoint_url,
        region=options.region or credentials.region, path_style=options.addressing_path_style,
        requester_pays=options.requester_pays, max_pool=options.max_threads + 4,
    )
