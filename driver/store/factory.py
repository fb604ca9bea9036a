"""Build the ObjectStore a mount's options and credentials describe."""

from __future__ import annotations

from driver.credentials import boto3_session
from driver.store.base import ObjectStore
from driver.volume import Credentials, MountOptions


def open_store(bucket: str, options: MountOptions, credentials: Credentials,
               credentials_file: str | None = None) -> ObjectStore:
    """`credentials_file` (the node plugin's 0600 file) is re-read when a pod token
    refreshes, so a republished token reaches the live mount."""
    if options.provider == "gcs":
        from driver.store.gcs import GcsStore

        return GcsStore(bucket, credentials, credentials_file=credentials_file,
                        endpoint_url=options.endpoint_url, max_pool=options.max_threads + 4)
    from driver.store.s3 import S3Store

    return S3Store(
        bucket, boto3_session(credentials, options.region, credentials_file),
        endpoint_url=options.endpoint_url,
        region=options.region or credentials.region, path_style=options.addressing_path_style,
        requester_pays=options.requester_pays, max_pool=options.max_threads + 4,
    )
