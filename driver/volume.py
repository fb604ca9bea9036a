"""The CSI side's one parser of what a user says about a volume.

A PV's `volumeAttributes` (or a StorageClass's parameters, or an inline volume's
attributes), its `mountOptions`, the CSI readonly flag and its Secret become one immutable
`VolumeSpec`: the bucket, `MountOptions` (driver/options.py) and `Credentials` (where the
keys come from, driver/credentials/source.py). Every error is a `VolumeError` whose `field`
names what is wrong (`volumeAttributes.keyPrefix`, `mountOptions uid`, `secret key X`);
option errors keep their reason as data (`OptionError.reason`), never reworded text.

The node-local block cache (`volumeAttributes.cache: node`) is chosen here too, but its
directory is not a user's to give: `cache_dir()` names it after the volume and the
credentials identity that reads it (`<cacheRoot>/<sha256(...)>`), so two pods mounting one
volume with one identity share blocks, and other credentials never see them.
`prune_cache_dirs()` removes the directories of volumes no longer published on the node.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from driver.credentials.source import Credentials
from driver.options import (
    OPTION_SPECS,
    MountOptions,
    OptionError,
    check_combination,
    parse_endpoint,
    parse_mount_flags,
    parse_option_values,
)
from driver.options import validate_bucket as options_validate_bucket


class VolumeError(ValueError):
    """Bad user input; `field` names what is wrong (an attribute, mount option or secret
    key), `reason` says how."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


# ---------------------------------------------------------------------------------------
# Bucket names and credentials

def _combined(options: MountOptions) -> MountOptions:
    try:
        return check_combination(options)
    except OptionError as exc:
        raise VolumeError(f"mountOptions {exc.field}", exc.reason) from None


def validate_bucket(name: str, field_name: str = "bucketName") -> str:
    try:
        return options_validate_bucket(name)
    except OptionError as exc:
        raise VolumeError(field_name, exc.reason) from None


SECRET_KEYS_AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION")
SECRET_KEYS_GCS_HMAC = ("GOOGLE_ACCESS_KEY_ID", "GOOGLE_ACCESS_KEY_SECRET")
SECRET_KEYS_GCS_JSON = ("GOOGLE_APPLICATION_CREDENTIALS_JSON",)
KNOWN_SECRET_KEYS = frozenset(SECRET_KEYS_AWS + SECRET_KEYS_GCS_HMAC + SECRET_KEYS_GCS_JSON)


def parse_secrets(secrets: Mapping[str, str], provider: str = "s3") -> Credentials | None:
    """Credentials from a Secret's keys; None when the Secret is empty. Names keys, not values."""
    if not secrets:
        return None
    for key in secrets:
        if key not in KNOWN_SECRET_KEYS:
            raise VolumeError(f"secret key {key}", "unknown key; expected one of "
                              + ", ".join(sorted(KNOWN_SECRET_KEYS)))
    region = secrets.get("AWS_REGION") or None
    if "GOOGLE_APPLICATION_CREDENTIALS_JSON" in secrets:
        if provider != "gcs":
            raise VolumeError("secret key GOOGLE_APPLICATION_CREDENTIALS_JSON",
                              "is only used with provider gcs")
        text = secrets["GOOGLE_APPLICATION_CREDENTIALS_JSON"]
        try:
            if not isinstance(json.loads(text), dict):
                raise ValueError
        except ValueError:
            raise VolumeError("secret key GOOGLE_APPLICATION_CREDENTIALS_JSON",
                              "is not a JSON object") from None
        return Credentials(kind="gcs_service_account", gcs_credentials_json=text)
    for id_key, secret_key in (SECRET_KEYS_AWS[:2], SECRET_KEYS_GCS_HMAC):
        if id_key in secrets or secret_key in secrets:
            for needed in (id_key, secret_key):
                if not secrets.get(needed):
                    raise VolumeError(f"secret key {needed}", "is missing or empty")
            if provider == "gcs":
                raise VolumeError(f"secret key {id_key}",
                                  "HMAC/AWS keys need provider s3 with an endpointUrl")
            return Credentials(
                kind="static", access_key_id=secrets[id_key],
                secret_access_key=secrets[secret_key],
                session_token=secrets.get("AWS_SESSION_TOKEN", ""), region=region,
            )
    raise VolumeError("secret key AWS_ACCESS_KEY_ID", "is missing (the Secret has only "
                      + ", ".join(sorted(secrets)) + ")")


# ---------------------------------------------------------------------------------------
# PersistentVolume attributes -> VolumeSpec

ATTR_BUCKET = "bucketName"
ATTR_PREFIX = "keyPrefix"
ATTR_ENDPOINT = "endpointUrl"
ATTR_PROVIDER = "provider"
ATTR_REGION = "region"
ATTR_PATH_STYLE = "forcePathStyle"
ATTR_ROLE_ARN = "roleArn"
ATTR_READ_ONLY = "readOnly"
ATTR_STS_REGION = "stsRegion"
ATTR_STS_ENDPOINT = "stsEndpointUrl"
ATTR_MOUNT_OPTIONS = "mountOptions"  # StorageClass parameter / inline volumes: comma list
ATTR_NO_SIGN_REQUEST = "noSignRequest"  # "true": anonymous requests (public datasets)
ATTR_CA_BUNDLE = "caBundle"  # PEM text of the CAs to trust (or a path on the node)
ATTR_CACHE = "cache"  # "node": block cache on the node's disk; "none" (default)
CACHE_MODES = ("none", "node")
KNOWN_ATTRIBUTES = frozenset({
    ATTR_BUCKET, ATTR_PREFIX, ATTR_ENDPOINT, ATTR_PROVIDER, ATTR_REGION, ATTR_PATH_STYLE,
    ATTR_ROLE_ARN, ATTR_READ_ONLY, ATTR_STS_REGION, ATTR_STS_ENDPOINT, ATTR_MOUNT_OPTIONS,
    ATTR_NO_SIGN_REQUEST, ATTR_CA_BUNDLE, ATTR_CACHE,
})
# Attribute -> the mount option it sets.
ATTR_OPTIONS = {
    ATTR_PREFIX: "prefix", ATTR_ENDPOINT: "endpoint-url", ATTR_PROVIDER: "provider",
    ATTR_REGION: "region", ATTR_PATH_STYLE: "force-path-style", ATTR_READ_ONLY: "read-only",
    ATTR_NO_SIGN_REQUEST: "no-sign-request", ATTR_CA_BUNDLE: "ca-bundle",
}
# A Secret key that is not a credential: PEM text of the CAs to trust (public data, but a
# Secret is where users keep a store's connection details).
SECRET_KEY_CA_BUNDLE = "CA_BUNDLE"
# Keys kubelet and the external-provisioner add; accepted and interpreted by the CSI layer.
KUBE_PREFIX = "csi.storage.k8s.io/"
TOKENS_KEY = "csi.storage.k8s.io/serviceAccount.tokens"
EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral"
POD_NAMESPACE_KEY = "csi.storage.k8s.io/pod.namespace"
SERVICE_ACCOUNT_KEY = "csi.storage.k8s.io/serviceAccount.name"
STS_AUDIENCE = "sts.amazonaws.com"
_ROLE_ARN_RE = re.compile(r"^arn:[a-z0-9-]+:iam::[0-9a-zA-Z_-]*:role/[\w+=,.@/-]+$")


@dataclass(frozen=True)
class VolumeSpec:
    """Everything needed to mount one volume; built only by `volume_spec()`."""

    bucket: str
    options: MountOptions
    credentials: Credentials
    cache: bool = False  # volumeAttributes.cache: node; the directory comes from cache_dir()
    # Who reads the bucket, as a stable non-secret string (see credentials_identity()).
    identity: str = "driver"

    @property
    def display_name(self) -> str:
        return f"{self.bucket}/{self.options.prefix}"


def _attr_option(values: dict[str, str | bool], attrs: Mapping[str, str], attr: str,
                 option: str) -> None:
    if attr in attrs and attrs[attr] != "":
        values[option] = attrs[attr]


def volume_spec(
    attributes: Mapping[str, str],
    mount_flags: Iterable[str] = (),
    secrets: Mapping[str, str] | None = None,
    readonly: bool = False,
) -> VolumeSpec:
    """Validate PV attributes, mount flags, the CSI readonly flag and secrets together."""
    for key in attributes:
        if key not in KNOWN_ATTRIBUTES and not key.startswith(KUBE_PREFIX):
            raise VolumeError(f"volumeAttributes.{key}", "unknown attribute; expected one of "
                              + ", ".join(sorted(KNOWN_ATTRIBUTES)))
    bucket = validate_bucket(attributes.get(ATTR_BUCKET, ""), ATTR_BUCKET)
    flags = list(mount_flags)
    if attributes.get(ATTR_MOUNT_OPTIONS):
        flags.append(attributes[ATTR_MOUNT_OPTIONS])
    try:
        base = parse_mount_flags(flags)
    except OptionError as exc:
        raise VolumeError(f"mountOptions {exc.field}", exc.reason) from None
    values: dict[str, str | bool] = {}
    for attr, option in ATTR_OPTIONS.items():
        _attr_option(values, attributes, attr, option)
    secrets = dict(secrets or {})
    ca_from_secret = secrets.pop(SECRET_KEY_CA_BUNDLE, "")
    if ca_from_secret:
        if "ca-bundle" in values:
            raise VolumeError(f"secret key {SECRET_KEY_CA_BUNDLE}",
                              f"cannot be combined with volumeAttributes.{ATTR_CA_BUNDLE}")
        values["ca-bundle"] = ca_from_secret
    try:
        from_attrs = parse_option_values(values)
    except OptionError as exc:
        attr_names = {option: attr for attr, option in ATTR_OPTIONS.items()}
        where = f"secret key {SECRET_KEY_CA_BUNDLE}" if exc.field == "ca-bundle" and \
            ca_from_secret else f"volumeAttributes.{attr_names.get(exc.field, exc.field)}"
        raise VolumeError(where, exc.reason) from None
    merged = {
        f.name: getattr(from_attrs, f.name)
        for f in dataclasses.fields(MountOptions)
        if f.name in {spec.attr for name, spec in OPTION_SPECS.items() if name in values}
    }
    options = dataclasses.replace(base, **merged)
    if readonly and not options.read_only:
        options = dataclasses.replace(options, read_only=True)

    credentials = _credentials(attributes, secrets, options)
    if credentials.region and not options.region:
        options = dataclasses.replace(options, region=credentials.region)
    cache = _cache_mode(attributes, options)
    return VolumeSpec(bucket=bucket, options=_combined(options), credentials=credentials,
                      cache=cache, identity=credentials_identity(credentials, attributes))


def _cache_mode(attributes: Mapping[str, str], options: MountOptions) -> bool:
    mode = attributes.get(ATTR_CACHE, "") or "none"
    if mode not in CACHE_MODES:
        raise VolumeError(f"volumeAttributes.{ATTR_CACHE}",
                          f"must be one of {', '.join(CACHE_MODES)}; got {mode!r}")
    if options.cache is not None:
        raise VolumeError("mountOptions cache", "the cache directory is chosen by the "
                          f"driver: set volumeAttributes.{ATTR_CACHE}: node instead")
    if options.max_cache_size is not None and mode != "node":
        raise VolumeError("mountOptions max-cache-size",
                          f"needs volumeAttributes.{ATTR_CACHE}: node")
    return mode == "node"


def _credentials(attributes: Mapping[str, str], secrets: Mapping[str, str],
                 options: MountOptions) -> Credentials:
    role_arn = attributes.get(ATTR_ROLE_ARN, "")
    from_secret = parse_secrets(secrets, options.provider)
    if role_arn:
        if from_secret is not None:
            raise VolumeError(f"volumeAttributes.{ATTR_ROLE_ARN}",
                              "cannot be combined with nodePublishSecretRef")
        if not _ROLE_ARN_RE.match(role_arn):
            raise VolumeError(f"volumeAttributes.{ATTR_ROLE_ARN}",
                              f"{role_arn!r} is not an IAM role ARN")
        sts_endpoint = attributes.get(ATTR_STS_ENDPOINT) or None
        if sts_endpoint:
            try:
                sts_endpoint = parse_endpoint(sts_endpoint)
            except ValueError as exc:
                raise VolumeError(f"volumeAttributes.{ATTR_STS_ENDPOINT}", str(exc)) from None
        return Credentials(
            kind="web_identity", role_arn=role_arn,
            web_identity_token=service_account_token(attributes),
            sts_endpoint_url=sts_endpoint,
            sts_region=attributes.get(ATTR_STS_REGION) or options.region,
        )
    if from_secret is not None and from_secret.kind == "gcs_service_account":
        return _with_federation_token(from_secret, attributes)
    return from_secret or Credentials()


def _with_federation_token(credentials: Credentials, attributes: Mapping[str, str]
                           ) -> Credentials:
    """Workload identity federation: an `external_account` JSON is fed the pod's token for
    the JSON's `audience` (or for sts.amazonaws.com) when kubelet passed one."""
    info = json.loads(credentials.gcs_credentials_json)
    if info.get("type") != "external_account" or not attributes.get(TOKENS_KEY):
        return credentials
    for audience in (str(info.get("audience", "")), STS_AUDIENCE):
        try:
            token = service_account_token(attributes, audience)
        except VolumeError:
            continue
        return dataclasses.replace(credentials, web_identity_token=token)
    return credentials


def service_account_token(attributes: Mapping[str, str], audience: str = STS_AUDIENCE) -> str:
    """The pod's token for `audience` from kubelet's tokenRequests volume-context entry."""
    raw = attributes.get(TOKENS_KEY)
    if not raw:
        raise VolumeError(TOKENS_KEY, "is missing: roleArn needs the CSIDriver to request a "
                          f"service-account token for audience {audience}")
    try:
        tokens = json.loads(raw)
        token = tokens[audience]["token"]
    except (ValueError, KeyError, TypeError):
        raise VolumeError(TOKENS_KEY, f"has no token for audience {audience}") from None
    if not isinstance(token, str) or not token:
        raise VolumeError(TOKENS_KEY, f"has an empty token for audience {audience}")
    return token


def is_ephemeral(attributes: Mapping[str, str]) -> bool:
    return attributes.get(EPHEMERAL_KEY, "").lower() == "true"


# ---------------------------------------------------------------------------------------
# The node-local cache: whose it is, where it lives, when it goes

CACHE_DIR_RE = re.compile(r"^[0-9a-f]{64}$")
CACHE_RETENTION_SECONDS = 3600.0  # an unpublished volume's cache survives a pod restart


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def credentials_identity(credentials: Credentials, attributes: Mapping[str, str]) -> str:
    """Who reads the bucket: stable across token refreshes, and never a secret.

    A Secret's key id (hashed); a role ARN with the pod's namespace/service account (from
    kubelet's pod info, else the token's `sub`); a GCS key's account and key id; or the
    driver's own identity. Blocks cached under one identity are never served to another.
    """
    if credentials.kind == "static":
        return "static:" + _digest(credentials.access_key_id)
    if credentials.kind == "web_identity":
        return f"role:{credentials.role_arn}:{_pod_subject(attributes, credentials)}"
    if credentials.kind == "gcs_service_account":
        info = json.loads(credentials.gcs_credentials_json or "{}")
        if info.get("type") == "service_account":
            return "gcs:" + _digest(str(info.get("client_email")),
                                    str(info.get("private_key_id")))
        if info.get("type") == "external_account":
            return "gcs-federated:" + _digest(
                str(info.get("audience")), str(info.get("service_account_impersonation_url")),
                _pod_subject(attributes, credentials))
        return "gcs-json:" + _digest(credentials.gcs_credentials_json)
    return "driver"


def _pod_subject(attributes: Mapping[str, str], credentials: Credentials) -> str:
    namespace, account = attributes.get(POD_NAMESPACE_KEY), attributes.get(SERVICE_ACCOUNT_KEY)
    if namespace and account:
        return f"system:serviceaccount:{namespace}:{account}"
    token = credentials.web_identity_token
    with contextlib.suppress(ValueError, IndexError, TypeError, AttributeError):
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["sub"])  # only names the directory; STS verifies the token
    return "unknown-subject"


def cache_dir(cache_root: str, volume_id: str, spec: VolumeSpec) -> str:
    """`<cache_root>/<sha256(volume id, bucket, endpoint, prefix, identity)>`: one directory
    per volume and credentials identity. Pure: nothing is created here."""
    name = _digest(volume_id, spec.bucket, spec.options.provider,
                   spec.options.endpoint_url or "", spec.options.prefix, spec.identity)
    return os.path.join(cache_root, name)


@dataclass(frozen=True)
class CacheSettings:
    """The node's cache configuration (the chart's node.cache* values, as environment)."""

    root: str | None = None  # None: node caching is off
    default_max_size_mib: int | None = None  # for volumes whose mountOptions give none
    retention: float = CACHE_RETENTION_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CacheSettings:
        size = env.get(ENV_CACHE_DEFAULT_MAX_SIZE, "")
        retention = env.get(ENV_CACHE_RETENTION, "")
        return cls(root=env.get(ENV_CACHE_ROOT) or None,
                   default_max_size_mib=int(size) if size else None,
                   retention=float(retention) if retention else CACHE_RETENTION_SECONDS)


ENV_CACHE_ROOT = "CLOUDBUCKET_CACHE_ROOT"
ENV_CACHE_DEFAULT_MAX_SIZE = "CLOUDBUCKET_CACHE_DEFAULT_MAX_SIZE_MIB"
ENV_CACHE_RETENTION = "CLOUDBUCKET_CACHE_RETENTION_SECONDS"


def with_cache_dir(spec: VolumeSpec, volume_id: str, settings: CacheSettings) -> VolumeSpec:
    """The spec with `options.cache` (and a default `max_cache_size`) set when the volume
    asks for the node cache; the supervisor passes them on like any mount option."""
    if not spec.cache:
        return spec
    if not settings.root:
        raise VolumeError(f"volumeAttributes.{ATTR_CACHE}", "node caching is not enabled "
                          "on this driver (Helm value node.cacheHostPath is empty)")
    options = dataclasses.replace(spec.options, cache=cache_dir(settings.root, volume_id, spec))
    if options.max_cache_size is None and settings.default_max_size_mib:
        options = dataclasses.replace(options, max_cache_size=settings.default_max_size_mib)
    return dataclasses.replace(spec, options=options)


def prune_cache_dirs(cache_root: str, live: Iterable[str | None],
                     retention: float = CACHE_RETENTION_SECONDS,
                     now: float | None = None) -> list[str]:
    """Remove cache directories no live mount uses and none has used for `retention`
    seconds; returns what was removed. `live` is the `cache` option of every recorded
    mount. Only directories named like `cache_dir()`'s are touched; a directory removed
    concurrently (another node plugin call) is fine. Call at startup and after unpublish."""
    now = time.time() if now is None else now
    keep = {os.path.normpath(path) for path in live if path}
    removed = []
    try:
        entries = list(os.scandir(cache_root))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not CACHE_DIR_RE.match(entry.name) or os.path.normpath(entry.path) in keep:
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            used = entry.stat(follow_symlinks=False).st_mtime
            with contextlib.suppress(FileNotFoundError):
                # fs/cache.py touches LAST_USED when a mount starts and stops using the dir
                used = max(used, os.stat(os.path.join(entry.path, ".last-used")).st_mtime)
        except FileNotFoundError:
            continue
        if now - used < retention:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed
