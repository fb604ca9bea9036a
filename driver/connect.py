"""Credentials -> store: the ObjectStore that a volume's options and credentials describe.

The one place where the `credentials` room meets the `store` room (the store never imports
credentials; it is handed a boto3 session or google-auth credentials). Used by the FUSE
server and by the controller's provisioning calls. mount-s3's client flags are applied
here too: `--no-sign-request` loads no credentials at all (anonymous requests),
`--profile` picks a profile of the AWS files, `--ca-bundle` (a PEM file, or PEM text from a
PV attribute or Secret, held in an anonymous memory file) sets the CAs TLS trusts.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from driver.credentials.source import Credentials
from driver.options import MountOptions, OptionError
from driver.store.base import ObjectStore
from driver.store.retry import Timeouts

PEM_MARKER = "-----BEGIN"


def ca_bundle_file(value: str | None) -> str | None:
    """A path botocore/requests can use for `value`: the file named, or inline PEM text
    held in an anonymous memory file (`/proc/self/fd/N`). It is on no disk and goes with
    the process however it ends: a temporary file removed at exit outlived every server
    that was killed or left by `os._exit`."""
    if not value:
        return None
    if value.lstrip().startswith(PEM_MARKER):
        return _pem_file(value)
    if not Path(value).is_file():
        raise OptionError("ca-bundle", f"{value} is not a readable file")
    return value


@functools.cache
def _pem_file(pem: str) -> str:
    """One memory file per distinct PEM text for the life of the process: the controller
    opens a store per request, and a file each time would be a descriptor leaked each time."""
    fd = os.memfd_create("cloudbucket-ca")
    os.fchmod(fd, 0o600)
    os.write(fd, pem.encode())
    return f"/proc/self/fd/{fd}"


def open_store(bucket: str, options: MountOptions, credentials: Credentials,
               credentials_file: str | None = None) -> ObjectStore:
    """`credentials_file` (the supervisor's 0600 file) is re-read when a pod token
    refreshes, so a republished token reaches the live mount. Raises CredentialsError when
    the credentials cannot be used with this provider, OptionError for a bad CA bundle."""
    ca_bundle = ca_bundle_file(options.ca_bundle)
    timeouts = Timeouts(total=options.request_timeout)
    if options.provider == "gcs":
        from driver.store.gcs import GcsStore

        if options.no_sign_request:
            from google.auth.credentials import AnonymousCredentials

            google_creds, project = AnonymousCredentials(), None
        else:
            from driver.credentials.gcs import google_credentials

            google_creds, project = google_credentials(
                credentials, credentials_file, custom_endpoint=options.endpoint_url is not None)
        return GcsStore(bucket, google_creds, project, endpoint_url=options.endpoint_url,
                        max_pool=options.max_threads + 4, ca_bundle=ca_bundle,
                        user_agent_prefix=options.user_agent_prefix, timeouts=timeouts)
    import boto3

    from driver.credentials.aws import boto3_session
    from driver.store.s3 import ClientSettings, S3Store

    if options.no_sign_request:
        session = boto3.Session(region_name=options.region)  # no credentials are loaded
    elif options.profile and credentials.kind == "default":
        session = boto3_session(credentials, options.region, credentials_file,
                                profile=options.profile)
    else:
        session = boto3_session(credentials, options.region, credentials_file)
    settings = ClientSettings(
        unsigned=options.no_sign_request, ca_bundle=ca_bundle,
        expected_bucket_owner=options.expected_bucket_owner,
        user_agent_prefix=options.user_agent_prefix,
        accelerate=options.transfer_acceleration, dual_stack=options.dual_stack,
        bind_interface=options.bind[0] if options.bind else None,
    )
    return S3Store(
        bucket, session,
        endpoint_url=options.endpoint_url,
        region=options.region or credentials.region, path_style=options.addressing_path_style,
        requester_pays=options.requester_pays, max_pool=options.max_threads + 4,
        timeouts=timeouts,
        settings=settings,
    )
