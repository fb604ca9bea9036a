"""The CSI side of the node cache: attribute parsing, the directory choice, and cleanup."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from driver.options import parse_mount_flags
from driver.volume import (
    CacheSettings,
    VolumeError,
    cache_dir,
    credentials_identity,
    prune_cache_dirs,
    volume_spec,
    with_cache_dir,
)

ROOT = "/var/lib/cloudbucket-csi/cache"
SECRET_A = {"AWS_ACCESS_KEY_ID": "AKIAAAAA", "AWS_SECRET_ACCESS_KEY": "secret-a"}
SECRET_B = {"AWS_ACCESS_KEY_ID": "AKIABBBB", "AWS_SECRET_ACCESS_KEY": "secret-b"}
ROLE = "arn:aws:iam::123456789012:role/reader"


def _token(sub: str) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part({'sub': sub, 'exp': 1})}.sig"


def _tokens(sub: str) -> str:
    return json.dumps({"sts.amazonaws.com": {"token": _token(sub), "expirationTimestamp": ""}})


def _spec(secrets=None, **attributes):
    return volume_spec({"bucketName": "models", "cache": "node", **attributes},
                       ["max-cache-size=10240"], secrets)


def test_cache_attribute_and_max_cache_size():
    spec = _spec(SECRET_A)
    assert spec.cache and spec.options.max_cache_size == 10240
    assert spec.options.cache is None  # the directory is the driver's choice, made later
    assert not volume_spec({"bucketName": "models"}).cache


@pytest.mark.parametrize("attributes, flags, field", [
    ({"cache": "emptyDir"}, [], "volumeAttributes.cache"),
    ({"cache": "node"}, ["cache=/tmp/mine"], "mountOptions cache"),
    ({}, ["max-cache-size=100"], "mountOptions max-cache-size"),
    ({"cache": "node"}, ["max-cache-size=0"], "mountOptions max-cache-size"),
])
def test_bad_cache_settings_name_the_field(attributes, flags, field):
    with pytest.raises(VolumeError) as caught:
        volume_spec({"bucketName": "models", **attributes}, flags)
    assert caught.value.field == field


def test_directory_is_per_volume_and_identity():
    base = cache_dir(ROOT, "vol-1", _spec(SECRET_A))
    assert os.path.dirname(base) == ROOT and len(os.path.basename(base)) == 64
    # Same volume, same identity (another pod, a remount): the same directory.
    assert cache_dir(ROOT, "vol-1", _spec(dict(SECRET_A))) == base
    # A rotated secret key with the same key id is the same identity.
    rotated = {**SECRET_A, "AWS_SECRET_ACCESS_KEY": "rotated"}
    assert cache_dir(ROOT, "vol-1", _spec(rotated)) == base
    others = {
        cache_dir(ROOT, "vol-2", _spec(SECRET_A)),
        cache_dir(ROOT, "vol-1", _spec(SECRET_B)),
        cache_dir(ROOT, "vol-1", _spec()),  # the driver's own identity
        cache_dir(ROOT, "vol-1", _spec(SECRET_A, keyPrefix="other/")),
        cache_dir(ROOT, "vol-1", volume_spec({"bucketName": "models2", "cache": "node"},
                                             secrets=SECRET_A)),
        cache_dir(ROOT, "vol-1", _spec(SECRET_A, endpointUrl="http://10.0.0.1:9000")),
    }
    assert base not in others and len(others) == 6


def test_role_identity_is_the_role_and_the_pod_service_account():
    pod = {"roleArn": ROLE, "csi.storage.k8s.io/serviceAccount.tokens": _tokens("x"),
           "csi.storage.k8s.io/pod.namespace": "ml",
           "csi.storage.k8s.io/serviceAccount.name": "trainer"}
    trainer = cache_dir(ROOT, "v", _spec(**pod))
    # A republish brings a fresh token: the directory must not move.
    refreshed = {**pod, "csi.storage.k8s.io/serviceAccount.tokens": _tokens("y")}
    assert cache_dir(ROOT, "v", _spec(**refreshed)) == trainer
    other_account = {**pod, "csi.storage.k8s.io/serviceAccount.name": "web"}
    other_role = {**pod, "roleArn": ROLE + "2"}
    assert cache_dir(ROOT, "v", _spec(**other_account)) != trainer
    assert cache_dir(ROOT, "v", _spec(**other_role)) != trainer
    # Without pod info, the token's subject names the account.
    bare = {"roleArn": ROLE,
            "csi.storage.k8s.io/serviceAccount.tokens": _tokens("system:serviceaccount:ml:trainer")}
    assert cache_dir(ROOT, "v", _spec(**bare)) == trainer


def test_identity_never_contains_a_secret():
    gcs_key = json.dumps({"type": "service_account", "client_email": "a@p.iam",
                          "private_key_id": "kid", "private_key": "PRIVATE"})
    specs = [
        _spec(SECRET_A),
        volume_spec({"bucketName": "models", "provider": "gcs", "cache": "node"},
                    secrets={"GOOGLE_APPLICATION_CREDENTIALS_JSON": gcs_key}),
    ]
    for spec in specs:
        identity = credentials_identity(spec.credentials, {})
        for secret in ("secret-a", "AKIAAAAA", "PRIVATE"):
            assert secret not in identity
    other_key = gcs_key.replace('"kid"', '"kid2"')
    assert cache_dir(ROOT, "v", specs[1]) != cache_dir(ROOT, "v", volume_spec(
        {"bucketName": "models", "provider": "gcs", "cache": "node"},
        secrets={"GOOGLE_APPLICATION_CREDENTIALS_JSON": other_key}))


def test_with_cache_dir_sets_the_option_only_when_asked():
    settings = CacheSettings(root=ROOT, default_max_size_mib=2048)
    spec = with_cache_dir(_spec(SECRET_A), "vol-1", settings)
    assert spec.options.cache == cache_dir(ROOT, "vol-1", _spec(SECRET_A))
    assert spec.options.max_cache_size == 10240  # the volume's own limit wins
    assert "--cache=" + spec.options.cache in spec.options.to_args()
    unsized = volume_spec({"bucketName": "models", "cache": "node"})
    assert with_cache_dir(unsized, "vol-1", settings).options.max_cache_size == 2048
    plain = volume_spec({"bucketName": "models"})
    assert with_cache_dir(plain, "vol-1", settings) is plain
    with pytest.raises(VolumeError) as caught:
        with_cache_dir(_spec(), "vol-1", CacheSettings())
    assert caught.value.field == "volumeAttributes.cache"
    # The supervisor gets it as an ordinary mount option.
    assert parse_mount_flags(spec.options.to_args()).cache == spec.options.cache


def test_cache_settings_from_the_chart_environment():
    assert CacheSettings.from_env({}) == CacheSettings()
    settings = CacheSettings.from_env({
        "CLOUDBUCKET_CACHE_ROOT": ROOT, "CLOUDBUCKET_CACHE_DEFAULT_MAX_SIZE_MIB": "10240",
        "CLOUDBUCKET_CACHE_RETENTION_SECONDS": "600"})
    assert settings == CacheSettings(ROOT, 10240, 600.0)


def _make(root: Path, name: str, age: float, now: float, marker_age: float | None = None
          ) -> Path:
    path = root / name
    (path / "v1").mkdir(parents=True)
    if marker_age is not None:
        marker = path / ".last-used"
        marker.touch()
        os.utime(marker, (now - marker_age, now - marker_age))
    os.utime(path, (now - age, now - age))
    return path


def test_prune_removes_only_unreferenced_old_cache_dirs(tmp_path: Path):
    now = 1_000_000.0
    live = _make(tmp_path, "a" * 64, 10_000, now)
    gone = _make(tmp_path, "b" * 64, 10_000, now, marker_age=7200)
    recent = _make(tmp_path, "c" * 64, 10_000, now, marker_age=60)  # a pod restarting
    fresh_dir = _make(tmp_path, "d" * 64, 30, now)
    stranger = _make(tmp_path, "not-a-cache-dir", 10_000, now)
    (tmp_path / ("e" * 64)).write_text("a file, not a cache dir")
    removed = prune_cache_dirs(str(tmp_path), [str(live), None, "/elsewhere"], 3600, now)
    assert removed == [str(gone)]
    assert not gone.exists()
    for kept in (live, recent, fresh_dir, stranger, tmp_path / ("e" * 64)):
        assert kept.exists(), kept
    # Retention 0 (the volume is known to be gone): every unreferenced one goes.
    removed = prune_cache_dirs(str(tmp_path), [str(live)], 0, now)
    assert sorted(removed) == sorted([str(recent), str(fresh_dir)])
    assert live.exists() and stranger.exists()


def test_prune_of_a_missing_root_is_a_no_op(tmp_path: Path):
    assert prune_cache_dirs(str(tmp_path / "absent"), []) == []
