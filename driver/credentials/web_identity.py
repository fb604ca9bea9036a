"""IRSA-style credentials: AssumeRoleWithWebIdentity with the pod's service-account token.

The node plugin writes the pod's token into the mount's 0600 credentials file and, on each
republish (`requiresRepublish: true`), atomically replaces that file with a fresh token. The
FUSE server never restarts: its boto3 session holds botocore `DeferredRefreshableCredentials`
whose refresh function re-reads the file and calls STS. The first call happens on the first
request (so a refused token surfaces as AccessDenied from `check_bucket`, i.e. the mount
fails with "access to bucket X denied"); later calls happen before expiry.

botocore's refresh windows (advisory 15 min, mandatory 10 min before expiry) assume hour-long
credentials; with short sessions (a `tokenDuration` of a minute or two) every request would
refresh. The windows are therefore scaled to each credential's lifetime: advisory at half,
mandatory at a quarter of it, capped at botocore's defaults.

Tokens never reach logs or error messages: STS messages are scrubbed of the token before
they are logged, and the exception raised to botocore names only the role and the error code.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import botocore
import botocore.exceptions
import botocore.session
import structlog
from botocore.config import Config
from botocore.credentials import DeferredRefreshableCredentials

from driver import metrics
from driver.credentials.botocore_sessions import new_botocore_session
from driver.credentials.source import Credentials

log = structlog.get_logger()

METHOD = "assume-role-with-web-identity"
ADVISORY_CAP = 15 * 60.0  # botocore's defaults, for hour-long sessions
MANDATORY_CAP = 10 * 60.0


def scrub(text: str, *secrets: str) -> str:
    """`text` with every secret replaced, cut to a log-friendly length."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text[:300]


class TokenSource:
    """The pod's current token: re-read from the credentials file on every call, falling
    back to the last good value while the file is being replaced or is unreadable."""

    def __init__(self, initial: str, path: str | None) -> None:
        self._last = initial
        self._path = path
        self._lock = threading.Lock()

    def read(self) -> str:
        if self._path:
            try:
                token = Credentials.from_json(Path(self._path).read_text()).web_identity_token
            except (OSError, ValueError, TypeError) as exc:
                log.warning("cannot re-read the credentials file; using the last token",
                            path=self._path, error=type(exc).__name__)
            else:
                if token:
                    with self._lock:
                        self._last = token
        with self._lock:
            return self._last


class WebIdentityCredentials(DeferredRefreshableCredentials):
    """Refreshable STS credentials with refresh windows scaled to the session length."""

    def __init__(self, credentials: Credentials, credentials_file: str | None,
                 region: str | None) -> None:
        super().__init__(refresh_using=self._fetch, method=METHOD)
        self.role_arn = credentials.role_arn
        self._tokens = TokenSource(credentials.web_identity_token, credentials_file)
        self._sts = boto3.Session(botocore_session=new_botocore_session()).client(
            "sts", region_name=credentials.sts_region or region or "us-east-1",
            endpoint_url=credentials.sts_endpoint_url,
            config=Config(signature_version=botocore.UNSIGNED, connect_timeout=5,
                          read_timeout=30, retries={"mode": "standard", "max_attempts": 3}),
        )
        self._session_name = f"cloudbucket-csi-{os.getpid()}-{int(time.time())}"
        self.refresh_count = 0

    def _refused(self, code: str, reason: str) -> botocore.exceptions.CredentialRetrievalError:
        metrics.CREDENTIAL_REFRESH_FAILURES.inc()
        log.error("web identity token refused: requests fail with EACCES until a republish "
                  "brings a valid token", role_arn=self.role_arn, code=code, reason=reason)
        return botocore.exceptions.CredentialRetrievalError(
            provider=METHOD, error_msg=f"STS refused the token for {self.role_arn} ({code})")

    def _fetch(self) -> dict[str, Any]:
        metrics.CREDENTIAL_REFRESHES.inc()
        token = self._tokens.read()
        try:
            response = self._sts.assume_role_with_web_identity(
                RoleArn=self.role_arn, RoleSessionName=self._session_name,
                WebIdentityToken=token)
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            raise self._refused(str(error.get("Code") or "refused"),
                                scrub(str(error.get("Message", "")), token)) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._refused("unreachable", scrub(str(exc), token)) from None
        issued = response["Credentials"]
        expiry: datetime = issued["Expiration"]
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=UTC)
        lifetime = max((expiry - datetime.now(UTC)).total_seconds(), 1.0)
        # Per-instance override of botocore's class-level windows (see module docstring).
        self._advisory_refresh_timeout = min(ADVISORY_CAP, lifetime / 2)
        self._mandatory_refresh_timeout = min(MANDATORY_CAP, lifetime / 4)
        self.refresh_count += 1
        log.info("web identity credentials issued", role_arn=self.role_arn,
                 expires_in=round(lifetime), refresh=self.refresh_count)
        return {
            "access_key": issued["AccessKeyId"],
            "secret_key": issued["SecretAccessKey"],
            "token": issued["SessionToken"],
            "expiry_time": expiry.isoformat(),
        }


def web_identity_session(credentials: Credentials, credentials_file: str | None,
                         region: str | None) -> boto3.Session:
    """A boto3 session whose credentials come from (and are refreshed through) STS."""
    if not credentials.role_arn:
        raise ValueError("web_identity credentials need a role ARN")
    # botocore logs every failed mandatory refresh with a traceback; our own error line
    # (role, STS code, scrubbed reason) says it once and clearly.
    logging.getLogger("botocore.credentials").setLevel(logging.ERROR)
    core = new_botocore_session()
    # botocore has no public setter for a credentials object; this is the documented-by-use
    # way (also used by boto3's own tests) and keeps the credentials local to this session.
    core._credentials = WebIdentityCredentials(credentials, credentials_file, region)
    return boto3.Session(botocore_session=core, region_name=region)
