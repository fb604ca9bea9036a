"""Google credentials for the native GCS backend.

- "gcs_service_account" with a service-account JSON key: google-auth signs a JWT assertion
  with the key and exchanges it at the key's `token_uri` for access tokens (refreshed by
  google-auth before they expire).
- "gcs_service_account" with an `external_account` JSON (workload identity federation):
  when the volume carries the pod's token, the JSON's `credential_source` is pointed at the
  mount's credentials file (field `web_identity_token`), so every token exchange reads the
  token the node plugin last republished. Without a pod token the JSON is used as given.
- "default": google.auth.default() (GOOGLE_APPLICATION_CREDENTIALS, metadata server, GKE
  workload identity of the driver). Against an emulator or a custom endpoint with no
  credentials available, anonymous access is used (fake-gcs-server).
"""

from __future__ import annotations

import json
import os
from typing import Any

import google.auth
import google.auth.credentials
import google.auth.exceptions

from driver import metrics
from driver.credentials.source import Credentials, CredentialsError

SCOPES = ["https://www.googleapis.com/auth/devstorage.full_control"]
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"


class GcsCredentialsError(CredentialsError):
    """The JSON is not a kind of Google credentials this driver can use."""


def _external_account(info: dict[str, Any], credentials: Credentials,
                      credentials_file: str | None) -> google.auth.credentials.Credentials:
    from google.auth import identity_pool

    if credentials.web_identity_token and credentials_file:
        info = {**info, "subject_token_type": JWT_TOKEN_TYPE, "credential_source": {
            "file": credentials_file,
            "format": {"type": "json", "subject_token_field_name": "web_identity_token"},
        }}
    try:
        return identity_pool.Credentials.from_info(info, scopes=SCOPES)
    except (ValueError, google.auth.exceptions.GoogleAuthError) as exc:
        raise GcsCredentialsError(f"external_account credentials: {exc}") from None


def _counted(found: google.auth.credentials.Credentials
             ) -> google.auth.credentials.Credentials:
    """Count every token refresh google-auth makes, and each one that fails, in the same
    metrics as the STS exchanges of the S3 side (`web_identity.py`)."""
    refresh = found.refresh

    def counting_refresh(request: Any) -> None:
        metrics.CREDENTIAL_REFRESHES.inc()
        try:
            refresh(request)
        except google.auth.exceptions.GoogleAuthError:
            metrics.CREDENTIAL_REFRESH_FAILURES.inc()
            raise

    found.refresh = counting_refresh  # type: ignore[method-assign]
    return found


def google_credentials(credentials: Credentials, credentials_file: str | None,
                       custom_endpoint: bool) -> tuple[google.auth.credentials.Credentials,
                                                       str | None]:
    """(credentials, project) for a storage client, refreshes counted; raises
    GcsCredentialsError."""
    found, project = _google_credentials(credentials, credentials_file, custom_endpoint)
    if isinstance(found, google.auth.credentials.AnonymousCredentials):
        return found, project
    return _counted(found), project


def _google_credentials(credentials: Credentials, credentials_file: str | None,
                        custom_endpoint: bool) -> tuple[google.auth.credentials.Credentials,
                                                        str | None]:
    if credentials.kind == "gcs_service_account":
        try:
            info = json.loads(credentials.gcs_credentials_json)
        except ValueError:
            raise GcsCredentialsError("GOOGLE_APPLICATION_CREDENTIALS_JSON is not JSON") \
                from None
        kind = info.get("type") if isinstance(info, dict) else None
        if kind == "service_account":
            from google.oauth2 import service_account

            try:
                found = service_account.Credentials.from_service_account_info(
                    info, scopes=SCOPES)
            except (ValueError, KeyError) as exc:  # message names fields, never values
                raise GcsCredentialsError(
                    f"service_account credentials are incomplete ({type(exc).__name__})"
                ) from None
            return found, info.get("project_id")
        if kind == "external_account":
            return _external_account(info, credentials, credentials_file), None
        if kind == "authorized_user":
            from google.oauth2 import credentials as user_credentials

            return user_credentials.Credentials.from_authorized_user_info(info, SCOPES), None
        raise GcsCredentialsError(f"unsupported Google credentials type {kind!r}")
    if credentials.kind == "default":
        try:
            found, project = google.auth.default(scopes=SCOPES)
            return found, project
        except google.auth.exceptions.DefaultCredentialsError:
            if custom_endpoint or os.environ.get("STORAGE_EMULATOR_HOST"):
                return google.auth.credentials.AnonymousCredentials(), None
            raise GcsCredentialsError("no Google credentials found (no secret, and "
                                      "google.auth.default() found none)") from None
    raise GcsCredentialsError(f"credentials of kind {credentials.kind} need provider s3 "
                              "(GCS through HMAC keys uses the S3 endpoint)")
