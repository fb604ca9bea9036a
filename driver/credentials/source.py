"""`Credentials`: where a mount's store credentials come from, as typed data.

Built on the CSI side (driver/volume.py) from a Secret or a roleArn, written by the
supervisor to a 0600 file per mount, read by the FUSE server. Secret values never appear in
repr(). No client libraries are imported here, so any room can name the type cheaply.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Literal


class CredentialsError(ValueError):
    """Credentials that cannot be used (wrong kind for the provider, unreadable JSON, none
    found). The message names fields and kinds, never secret values."""


@dataclass(frozen=True)
class Credentials:
    """Where a mount's store credentials come from. Secret values never appear in repr().

    kind:
      - "default": the process's own provider chain (env, profile, IRSA, instance metadata).
      - "static": access key + secret (+ session token) from a Secret.
      - "web_identity": AssumeRoleWithWebIdentity of `role_arn` with a service-account token.
      - "gcs_service_account": native GCS service-account (or external-account) JSON.
    """

    kind: Literal["default", "static", "web_identity", "gcs_service_account"] = "default"
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)
    role_arn: str = ""
    web_identity_token: str = field(default="", repr=False)
    sts_endpoint_url: str | None = None
    sts_region: str | None = None
    gcs_credentials_json: str = field(default="", repr=False)
    region: str | None = None  # AWS_REGION from a Secret

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Credentials:
        data = json.loads(text)
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})
