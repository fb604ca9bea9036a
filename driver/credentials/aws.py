"""boto3 sessions for a volume's `Credentials` (S3, R2, GCS through HMAC keys).

- "static": fixed keys (+ session token).
- "default": the driver's own identity through boto3's chain (env vars, profiles,
  AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN, instance metadata).
- "web_identity": AssumeRoleWithWebIdentity of `role_arn` with the pod's service-account
  token (web_identity.py), refreshed before expiry, re-reading the token each time.
Nothing touches process-global state (no os.environ per mount).
"""

from __future__ import annotations

import boto3

from driver.credentials.botocore_sessions import new_botocore_session
from driver.credentials.source import Credentials, CredentialsError
from driver.credentials.web_identity import web_identity_session


def warm_up() -> None:
    """Load the S3 and STS models and endpoint rules into the shared loader (no request)."""
    session = boto3.Session(botocore_session=new_botocore_session(), aws_access_key_id="x",
                            aws_secret_access_key="x", region_name="us-east-1")
    session.client("s3")
    session.client("sts")


def boto3_session(credentials: Credentials, region: str | None = None,
                  credentials_file: str | None = None,
                  profile: str | None = None) -> boto3.Session:
    """A boto3 session for `credentials`; `credentials_file` is re-read on each
    web-identity refresh so a republished token reaches a live mount. `profile` names a
    profile of the AWS config/credentials files for the "default" kind (mount-s3's
    --profile)."""
    region = region or credentials.region
    if credentials.kind == "default" and profile:
        # An explicit profile wins over the driver's own keys, as with the AWS CLI.
        # Checked here: botocore finds a missing profile only at the first client.
        if profile not in boto3.Session(botocore_session=new_botocore_session()) \
                .available_profiles:
            raise CredentialsError(f"profile {profile} is not in the AWS config files")
        return boto3.Session(botocore_session=new_botocore_session(), region_name=region,
                             profile_name=profile)
    # "default" with keys: the driver's own keys, handed over by the supervisor in the
    # mount's 0600 credentials file rather than through the server's environment.
    if credentials.kind == "static" or (credentials.kind == "default"
                                        and credentials.access_key_id):
        return boto3.Session(
            botocore_session=new_botocore_session(),
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            aws_session_token=credentials.session_token or None,
            region_name=region,
        )
    if credentials.kind == "default":
        return boto3.Session(botocore_session=new_botocore_session(), region_name=region)
    if credentials.kind == "web_identity":
        return web_identity_session(credentials, credentials_file, region)
    raise CredentialsError(f"credentials of kind {credentials.kind} need provider gcs")


__all__ = ["CredentialsError", "boto3_session"]
