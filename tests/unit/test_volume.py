"""volume.py: every user input is parsed in one place and errors name the field."""

from __future__ import annotations

import json
import math

import pytest

from driver.options import OptionError
from driver.volume import (
    TOKENS_KEY,
    MountOptions,
    VolumeError,
    is_ephemeral,
    parse_mount_flags,
    parse_secrets,
    volume_spec,
)

MiB = 1024 * 1024


def test_mount_flags_parse_with_mountpoint_names():
    options = parse_mount_flags(["allow-delete", "uid=1000", "--gid=2000", "metadata-ttl=60",
                                 "file-mode=640,read-part-size=8MiB"])
    assert options.allow_delete and options.uid == 1000 and options.gid == 2000
    assert options.metadata_ttl == 60 and options.file_mode == 0o640
    assert options.read_part_size == 8 * MiB
    assert parse_mount_flags(["metadata-ttl=indefinite"]).metadata_ttl == math.inf
    assert parse_mount_flags(["metadata-ttl=minimal"]).metadata_ttl == 1.0


@pytest.mark.parametrize(
    ("flag", "field"),
    [
        ("no-such-option", "no-such-option"),
        ("uid=-1", "uid"),
        ("uid=abc", "uid"),
        ("file-mode=999", "file-mode"),
        ("prefix=abc", "prefix"),
        ("read-part-size=1KiB", "read-part-size"),
        ("metadata-ttl=soon", "metadata-ttl"),
        ("upload-checksums=md5", "upload-checksums"),
        ("endpoint-url=ftp://x", "endpoint-url"),
        ("sse-kms-key-id=k", "sse-kms-key-id"),
    ],
)
def test_bad_flags_name_the_field(flag, field):
    with pytest.raises(OptionError) as caught:
        parse_mount_flags([flag])
    assert caught.value.field == field
    assert field in str(caught.value)
    assert caught.value.reason and caught.value.reason in str(caught.value)


def test_options_round_trip_through_json():
    options = parse_mount_flags(["allow-delete", "uid=7", "prefix=a/b/", "metadata-ttl=indefinite",
                                 "dir-mode=700", "force-path-style=false"])
    assert MountOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    assert MountOptions().changed() == {}
    assert options.changed()["uid"] == 7
    with pytest.raises(OptionError) as caught:
        MountOptions.from_dict({"no_such": 1})
    assert caught.value.field == "no_such"


def test_path_style_defaults_from_endpoint():
    assert parse_mount_flags(["endpoint-url=http://127.0.0.1:9000"]).addressing_path_style
    assert parse_mount_flags(["endpoint-url=http://localhost:9000"]).addressing_path_style
    assert not parse_mount_flags(["endpoint-url=https://acct.r2.cloudflarestorage.com"]) \
        .addressing_path_style
    assert parse_mount_flags(["endpoint-url=https://x.example", "force-path-style"]) \
        .addressing_path_style


def test_volume_spec_from_attributes_flags_and_readonly():
    spec = volume_spec({"bucketName": "my-bucket", "keyPrefix": "p/", "region": "eu-west-1",
                        "csi.storage.k8s.io/pod.name": "x"}, ["allow-delete"], readonly=True)
    assert spec.bucket == "my-bucket" and spec.options.prefix == "p/"
    assert spec.options.read_only and spec.options.allow_delete
    assert spec.options.region == "eu-west-1" and spec.credentials.kind == "default"


@pytest.mark.parametrize(
    ("attributes", "field"),
    [
        ({}, "bucketName"),
        ({"bucketName": "Bad_Name"}, "bucketName"),
        ({"bucketName": "ok-bucket", "keyPrefix": "noslash"}, "volumeAttributes.keyPrefix"),
        ({"bucketName": "ok-bucket", "provider": "azure"}, "volumeAttributes.provider"),
        ({"bucketName": "ok-bucket", "colour": "blue"}, "volumeAttributes.colour"),
        ({"bucketName": "ok-bucket", "roleArn": "not-an-arn",
          TOKENS_KEY: json.dumps({"sts.amazonaws.com": {"token": "t"}})},
         "volumeAttributes.roleArn"),
        ({"bucketName": "ok-bucket", "roleArn": "arn:aws:iam::123456789012:role/r"}, TOKENS_KEY),
    ],
)
def test_bad_attributes_name_the_field(attributes, field):
    with pytest.raises(VolumeError) as caught:
        volume_spec(attributes)
    assert caught.value.field == field


def test_bad_mount_flag_in_pv_names_mount_options():
    with pytest.raises(VolumeError) as caught:
        volume_spec({"bucketName": "ok-bucket"}, ["allow-everything"])
    assert caught.value.field == "mountOptions allow-everything"


def test_secrets():
    creds = parse_secrets({"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
                           "AWS_SESSION_TOKEN": "tok", "AWS_REGION": "us-west-2"})
    assert (creds.kind, creds.access_key_id, creds.session_token, creds.region) == \
        ("static", "AKIA", "tok", "us-west-2")
    assert "s3cr3t" not in repr(creds) and "tok" not in repr(creds)
    hmac = parse_secrets({"GOOGLE_ACCESS_KEY_ID": "GOOG", "GOOGLE_ACCESS_KEY_SECRET": "x"})
    assert hmac.kind == "static" and hmac.access_key_id == "GOOG"
    gcs = parse_secrets({"GOOGLE_APPLICATION_CREDENTIALS_JSON": '{"type": "x"}'}, "gcs")
    assert gcs.kind == "gcs_service_account"
    assert parse_secrets({}) is None


@pytest.mark.parametrize(
    ("secrets", "key"),
    [
        ({"AWS_ACCESS_KEY_ID": "a"}, "AWS_SECRET_ACCESS_KEY"),
        ({"AWS_SECRET_ACCESS_KEY": "a"}, "AWS_ACCESS_KEY_ID"),
        ({"PASSWORD": "a"}, "PASSWORD"),
        ({"AWS_REGION": "x"}, "AWS_ACCESS_KEY_ID"),
    ],
)
def test_bad_secrets_name_the_key_not_the_value(secrets, key):
    with pytest.raises(VolumeError) as caught:
        volume_spec({"bucketName": "ok-bucket"}, secrets=secrets)
    assert key in caught.value.field
    for value in secrets.values():
        assert f"'{value}'" not in str(caught.value)


def test_role_arn_takes_the_pod_token():
    tokens = json.dumps({"sts.amazonaws.com": {"token": "jwt-value",
                                               "expirationTimestamp": "2030-01-01T00:00:00Z"}})
    spec = volume_spec({"bucketName": "ok-bucket", TOKENS_KEY: tokens,
                        "roleArn": "arn:aws:iam::123456789012:role/s3mount-role",
                        "stsEndpointUrl": "http://127.0.0.1:1"})
    assert spec.credentials.kind == "web_identity"
    assert spec.credentials.web_identity_token == "jwt-value"
    assert "jwt-value" not in repr(spec)


def test_ephemeral_flag():
    assert is_ephemeral({"csi.storage.k8s.io/ephemeral": "true"})
    assert not is_ephemeral({})
