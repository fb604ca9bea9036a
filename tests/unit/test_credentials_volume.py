"""Volume attributes + Secret -> Credentials for the credential kinds this room adds."""

from __future__ import annotations

import json

from driver.volume import TOKENS_KEY, volume_spec

WIF = {"type": "external_account", "audience": "//iam.example/pools/p/providers/k8s",
       "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
       "token_url": "https://sts.example/v1/token", "credential_source": {"file": "/x"}}


def _attrs(**extra: str) -> dict[str, str]:
    return {"bucketName": "my-bucket", "provider": "gcs", **extra}


def test_external_account_gets_the_pod_token_for_its_audience() -> None:
    tokens = {WIF["audience"]: {"token": "tok-wif"}, "sts.amazonaws.com": {"token": "tok-sts"}}
    spec = volume_spec(_attrs(**{TOKENS_KEY: json.dumps(tokens)}),
                       secrets={"GOOGLE_APPLICATION_CREDENTIALS_JSON": json.dumps(WIF)})
    assert spec.credentials.kind == "gcs_service_account"
    assert spec.credentials.web_identity_token == "tok-wif"
    assert "tok-wif" not in repr(spec)


def test_external_account_falls_back_to_the_sts_audience_token() -> None:
    tokens = {"sts.amazonaws.com": {"token": "tok-sts"}}
    spec = volume_spec(_attrs(**{TOKENS_KEY: json.dumps(tokens)}),
                       secrets={"GOOGLE_APPLICATION_CREDENTIALS_JSON": json.dumps(WIF)})
    assert spec.credentials.web_identity_token == "tok-sts"


def test_external_account_without_pod_token_uses_its_own_source() -> None:
    spec = volume_spec(_attrs(), secrets={"GOOGLE_APPLICATION_CREDENTIALS_JSON":
                                          json.dumps(WIF)})
    assert spec.credentials.web_identity_token == ""


def test_service_account_json_never_takes_a_pod_token() -> None:
    tokens = {"sts.amazonaws.com": {"token": "tok-sts"}}
    key = {"type": "service_account", "private_key": "k", "client_email": "a@b"}
    spec = volume_spec(_attrs(**{TOKENS_KEY: json.dumps(tokens)}),
                       secrets={"GOOGLE_APPLICATION_CREDENTIALS_JSON": json.dumps(key)})
    assert spec.credentials.web_identity_token == ""


def test_role_arn_with_sts_attributes() -> None:
    tokens = {"sts.amazonaws.com": {"token": "tok"}}
    spec = volume_spec({"bucketName": "my-bucket", "roleArn": "arn:aws:iam::1:role/r",
                        "stsRegion": "eu-west-1", "stsEndpointUrl": "http://127.0.0.1:9",
                        TOKENS_KEY: json.dumps(tokens)})
    creds = spec.credentials
    assert (creds.kind, creds.role_arn, creds.web_identity_token) == \
        ("web_identity", "arn:aws:iam::1:role/r", "tok")
    assert (creds.sts_region, creds.sts_endpoint_url) == ("eu-west-1", "http://127.0.0.1:9")
