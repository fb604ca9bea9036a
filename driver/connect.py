"""Credentials -> store: the ObjectStore that a volume's options and credentials describe.

The one place where the `credentials` room meets the `store` room (the store never imports
credentials; it is handed a boto3 session or google-auth credentials). Used by the FUSE
server and by the controller's provisioning calls.
"""

from __future__ import annotations

from driver.credentials.source import Credentials
from driver.options import MountOptions
from driver.store.base import ObjectStore


def open_store(bucket: str, options: MountOptions, credentials: Credentials,
               credentials_file: str | None = None) -> ObjectStore:
    """`credentials_file` (the supervisor's 0600 file) is re-read when a pod token
    refreshes, so a republished token reaches the live mount. Raises CredentialsError when
    the credentials cannot be used with this provider."""
    if options.provider == "gcs":
        from driver.credentials.gcs import google_credentials
        from driver.store.gcs import GcsStore

        google_creds, project = google_credentials(
            credentials, credentials_file, custom_endpoint=options.endpoint_url is not None)
        return GcsStore(bucket, google_creds, project, endpoint_url=options.endpoint_url,
                        max_pool=options.max_threads + 4)
    from driver.credentials.aws import boto3_session
    from driver.store.s3 import S3Store

    return S3Store(
        bucket, boto3_session(credentials, options.region, credentials_file),
        endpoint_url=options.endpoint_url,
        region=options.region or credentials.region, path_style=options.addressing_path_style,
        requester_pays=options.requester_pays, max_pool=options.max_threads + 4,
    )
