"""A session-wide SeaweedFS with STS (trusting a local OIDC issuer) and three buckets.

Role "reader" (trusts system:serviceaccount:default:reader): everything on `allowed`,
ListBucket only on `listonly`, nothing on `forbidden`. Role "writer" trusts another
service account. STS sessions last TOKEN_DURATION seconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from driver.credentials.source import Credentials
from driver.devservers import SeaweedS3
from tests.creds_helpers import remember
from tests.oidc_issuer import OidcIssuer, allow, role_arn, seaweed_iam_config

READER_SUB = "system:serviceaccount:default:reader"
# STS sessions last this long; the refresh test reads well past several of them.
TOKEN_DURATION = 15


class Env:
    def __init__(self, issuer: OidcIssuer, server: SeaweedS3, suffix: str) -> None:
        self.issuer = issuer
        self.server = server
        self.allowed = f"allowed-{suffix}"
        self.listonly = f"listonly-{suffix}"
        self.forbidden = f"forbidden-{suffix}"

    def role_credentials(self, token: str, role: str = "reader") -> Credentials:
        return Credentials(kind="web_identity", role_arn=role_arn(role),
                           web_identity_token=token, sts_endpoint_url=self.server.endpoint,
                           sts_region="us-east-1")

    def flags(self, *extra: str) -> list[str]:
        return [f"--endpoint-url={self.server.endpoint}", "--region=us-east-1", *extra]


@pytest.fixture(scope="session")
def sts_env() -> Iterator[Env]:
    suffix = uuid.uuid4().hex[:8]
    with OidcIssuer() as issuer:
        allowed, listonly = f"allowed-{suffix}", f"listonly-{suffix}"
        config = seaweed_iam_config(issuer.url, [
            {"name": "reader", "sub": READER_SUB, "statements": [
                allow(["s3:*"], allowed),
                allow(["s3:ListBucket"], listonly),
            ]},
            {"name": "writer", "sub": "system:serviceaccount:default:writer",
             "statements": [allow(["s3:*"], allowed)]},
        ], token_duration=f"{TOKEN_DURATION}s")
        remember(config["sts"]["signingKey"])
        with SeaweedS3(iam_config=config) as server:
            env = Env(issuer, server, suffix)
            admin = server.client()
            for bucket in (env.allowed, env.listonly, env.forbidden):
                admin.create_bucket(Bucket=bucket)
                admin.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello " + bucket.encode())
            yield env


