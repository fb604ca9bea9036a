"""Credentials for the store clients, from a volume's `Credentials`.

Static keys become a fixed boto3 session; "default" uses boto3's own chain (env vars,
profiles, AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN, instance metadata).
"""

from __future__ import annotations

import boto3

from driver.volume import Credentials


def boto3_session(credentials: Credentials, region: str | None = None) -> boto3.Session:
    if credentials.kind == "static":
        return boto3.Session(
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            aws_session_token=credentials.session_token or None,
            region_name=region or credentials.region,
        )
    if credentials.kind == "default":
        return boto3.Session(region_name=region)
    raise NotImplementedError(f"credentials of kind {credentials.kind} are not supported yet")
