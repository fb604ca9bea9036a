"""Unit tests of driver/credentials: sessions per kind, web-identity refresh logic (STS
stubbed with botocore's Stubber), Google credential selection. The real STS and token
endpoints are exercised in tests/integration/test_credentials_*.py."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import botocore.exceptions
import pytest
from botocore.stub import Stubber

from driver.credentials.aws import CredentialsError, boto3_session
from driver.credentials.gcs import GcsCredentialsError, google_credentials
from driver.credentials.source import Credentials
from driver.credentials.web_identity import TokenSource, WebIdentityCredentials, scrub
from tests.oidc_issuer import new_rsa_key, private_pem

ROLE = "arn:aws:iam::123456789012:role/reader"


def _web(token: str = "tok-initial") -> Credentials:
    return Credentials(kind="web_identity", role_arn=ROLE, web_identity_token=token,
                       sts_endpoint_url="http://127.0.0.1:1", sts_region="us-east-1")


def _issued(lifetime: float, key: str = "AKIATEMPTEMPTEMP") -> dict:
    return {"Credentials": {
        "AccessKeyId": key, "SecretAccessKey": "temp-secret", "SessionToken": "temp-session",
        "Expiration": datetime.now(UTC) + timedelta(seconds=lifetime)}}


def test_static_session_carries_keys_and_session_token() -> None:
    session = boto3_session(Credentials(kind="static", access_key_id="AK",
                                        secret_access_key="SK", session_token="ST",
                                        region="eu-west-3"))
    frozen = session.get_credentials().get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key, frozen.token) == ("AK", "SK", "ST")
    assert session.region_name == "eu-west-3"


def test_default_session_uses_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ENVSECRET")
    frozen = boto3_session(Credentials()).get_credentials().get_frozen_credentials()
    assert frozen.access_key == "ENVKEY"


def test_gcs_json_with_provider_s3_is_refused() -> None:
    with pytest.raises(CredentialsError, match="provider gcs"):
        boto3_session(Credentials(kind="gcs_service_account", gcs_credentials_json="{}"))


def test_web_identity_refresh_rereads_the_file_and_scales_windows(tmp_path: Path) -> None:
    cred_file = tmp_path / "credentials.json"
    cred_file.write_text(_web("tok-from-file-1").to_json())
    creds = WebIdentityCredentials(_web(), str(cred_file), None)
    with Stubber(creds._sts) as stub:
        stub.add_response("assume_role_with_web_identity", _issued(60, "AKIAFIRST0000001"), {
            "RoleArn": ROLE, "RoleSessionName": creds._session_name,
            "WebIdentityToken": "tok-from-file-1"})
        assert creds.get_frozen_credentials().access_key == "AKIAFIRST0000001"
        # Windows scaled to a 60 s session: advisory at 30 s, mandatory at 15 s.
        assert 25 <= creds._advisory_refresh_timeout <= 30
        assert 12 <= creds._mandatory_refresh_timeout <= 15
        assert not creds.refresh_needed()
        # A republish replaces the file; the next refresh uses the new token.
        cred_file.write_text(_web("tok-from-file-2").to_json())
        stub.add_response("assume_role_with_web_identity", _issued(3600, "AKIASECOND000002"), {
            "RoleArn": ROLE, "RoleSessionName": creds._session_name,
            "WebIdentityToken": "tok-from-file-2"})
        creds._expiry_time = datetime.now(UTC) + timedelta(seconds=5)  # inside mandatory
        assert creds.get_frozen_credentials().access_key == "AKIASECOND000002"
        # Hour-long sessions keep botocore's windows.
        assert creds._advisory_refresh_timeout == 15 * 60
        assert creds._mandatory_refresh_timeout == 10 * 60
        stub.assert_no_pending_responses()


def test_refused_token_raises_without_the_token(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    token = "eyJ-secret-token-value"
    creds = WebIdentityCredentials(_web(token), None, None)
    with Stubber(creds._sts) as stub:
        stub.add_client_error("assume_role_with_web_identity", "ExpiredTokenException",
                              f"token {token} has expired", 400)
        with pytest.raises(botocore.exceptions.CredentialRetrievalError) as raised, \
                caplog.at_level(logging.DEBUG):
            creds.get_frozen_credentials()
    assert "ExpiredTokenException" in str(raised.value) and ROLE in str(raised.value)
    assert token not in str(raised.value)
    captured = capsys.readouterr()
    assert token not in captured.out + captured.err + caplog.text


def test_token_source_keeps_the_last_token_when_the_file_is_unreadable(
        tmp_path: Path) -> None:
    cred_file = tmp_path / "credentials.json"
    cred_file.write_text(_web("tok-a").to_json())
    source = TokenSource("tok-initial", str(cred_file))
    assert source.read() == "tok-a"
    cred_file.write_text("{not json")
    assert source.read() == "tok-a"
    cred_file.unlink()
    assert source.read() == "tok-a"
    assert TokenSource("tok-initial", None).read() == "tok-initial"


def test_scrub_removes_secrets_and_truncates() -> None:
    assert scrub("bad token abc.def", "abc.def") == "bad token <redacted>"
    assert len(scrub("x" * 1000)) == 300


def test_web_identity_session_needs_a_role() -> None:
    with pytest.raises(ValueError, match="role ARN"):
        boto3_session(Credentials(kind="web_identity", web_identity_token="t"))


# -- Google ---------------------------------------------------------------------------


def test_service_account_json_builds_service_account_credentials() -> None:
    info = {"type": "service_account", "project_id": "proj", "private_key_id": "k1",
            "private_key": private_pem(new_rsa_key()), "client_email": "sa@proj.example",
            "client_id": "1", "token_uri": "http://127.0.0.1:1/token"}
    creds, project = google_credentials(
        Credentials(kind="gcs_service_account", gcs_credentials_json=json.dumps(info)),
        None, False)
    assert project == "proj"
    assert creds.service_account_email == "sa@proj.example"


def test_external_account_reads_the_pod_token_from_the_credentials_file(
        tmp_path: Path) -> None:
    cred_file = tmp_path / "credentials.json"
    info = {"type": "external_account", "audience": "//iam.example/providers/k8s",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": "http://127.0.0.1:1/token",
            "credential_source": {"file": "/nonexistent/token"}}
    volume_creds = Credentials(kind="gcs_service_account", gcs_credentials_json=json.dumps(info),
                               web_identity_token="pod-token-1")
    cred_file.write_text(volume_creds.to_json())
    creds, _ = google_credentials(volume_creds, str(cred_file), False)
    assert creds.retrieve_subject_token(None) == "pod-token-1"
    cred_file.write_text(Credentials(**{**json.loads(volume_creds.to_json()),
                                        "web_identity_token": "pod-token-2"}).to_json())
    assert creds.retrieve_subject_token(None) == "pod-token-2"


@pytest.mark.parametrize("text, message", [
    ("not json", "not JSON"),
    (json.dumps({"type": "impersonated_nonsense"}), "unsupported"),
    (json.dumps({"type": "service_account"}), "incomplete"),
])
def test_bad_google_json_is_refused(text: str, message: str) -> None:
    with pytest.raises(GcsCredentialsError, match=message):
        google_credentials(Credentials(kind="gcs_service_account", gcs_credentials_json=text),
                           None, False)


def test_aws_keys_with_provider_gcs_are_refused() -> None:
    with pytest.raises(GcsCredentialsError, match="provider s3"):
        google_credentials(Credentials(kind="static", access_key_id="a",
                                       secret_access_key="b"), None, False)


def test_default_google_identity_falls_back_to_anonymous_for_an_emulator(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import google.auth.credentials

    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:1")  # no metadata server here
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:1")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud user credentials
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    creds, _ = google_credentials(Credentials(), None, False)
    assert isinstance(creds, google.auth.credentials.AnonymousCredentials)
