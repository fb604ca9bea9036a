"""The one place that parses and validates what a user says about a volume.

Three inputs describe a mount: command-line flags of `cloudbucket-csi mount`, the
`mountOptions` of a PersistentVolume (same names, without the dashes), and a PV's
`volumeAttributes` plus its Secret. All of them become immutable, typed values here:
`MountOptions` (how the filesystem behaves), `Credentials` (where keys come from) and
`VolumeSpec` (everything the node plugin needs). Every error is a `VolumeError` whose
message names the field that is wrong; nothing else in the driver parses user input.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

MiB = 1024 * 1024
GiB = 1024 * MiB


class VolumeError(ValueError):
    """Bad user input; `field` names what is wrong (an option, attribute or secret key)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


# ---------------------------------------------------------------------------------------
# Value parsers: each takes the option's text and returns its typed value or raises
# ValueError with a short reason (the caller adds the option name).


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on", ""):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_id(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:
        raise ValueError(f"{value} is not a valid uid/gid")
    return value


def _parse_mode(text: str) -> int:
    value = int(text, 8)
    if not 0 <= value <= 0o7777:
        raise ValueError(f"{text} is not an octal permission mode")
    return value


_SIZE_UNITS = {"": 1, "k": 1024, "kib": 1024, "m": MiB, "mib": MiB, "g": GiB, "gib": GiB}


def _parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size in bytes (e.g. 8388608 or 8MiB), got {text!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def _part_size(text: str) -> int:
    value = _parse_size(text)
    if not 5 * MiB <= value <= 5 * GiB:
        raise ValueError("must be between 5MiB and 5GiB (S3 multipart limits)")
    return value


def _parse_ttl(text: str) -> float:
    lowered = text.strip().lower()
    if lowered == "minimal":
        return MINIMAL_TTL
    if lowered == "indefinite":
        return math.inf
    value = float(lowered)
    if value < 0 or math.isnan(value):
        raise ValueError("must be a non-negative number of seconds, 'minimal' or 'indefinite'")
    return value


def _parse_threads(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 256:
        raise ValueError("must be between 1 and 256")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}; got {text!r}")
        return text

    return parse


def _nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _prefix(text: str) -> str:
    if text and not text.endswith("/"):
        raise ValueError(f"must end in '/', got {text!r}")
    if text.startswith("/") or "//" in text:
        raise ValueError(f"must not start with '/' or contain '//', got {text!r}")
    return text


def _endpoint(text: str) -> str:
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"must be an http(s) URL, got {text!r}")
    return text.rstrip("/")


# Kernel attribute caching when metadata-ttl is "minimal": mountpoint-s3 keeps entries
# about a second, enough to serve `ls -l` and open-after-stat without re-asking the store.
MINIMAL_TTL = 1.0


@dataclass(frozen=True)
class MountOptions:
    """How a mount behaves; field names are the option names with '-' -> '_'."""

    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    force_path_style: bool | None = None  # None: decide from the endpoint URL
    provider: Literal["s3", "gcs"] = "s3"
    read_only: bool = False
    allow_delete: bool = False
    allow_overwrite: bool = False
    uid: int | None = None
    gid: int | None = None
    file_mode: int = 0o644
    dir_mode: int = 0o755
    allow_other: bool = False
    allow_root: bool = False
    metadata_ttl: float = MINIMAL_TTL
    negative_metadata_ttl: float | None = None  # None: same as metadata_ttl
    read_part_size: int = 16 * MiB
    write_part_size: int = 8 * MiB
    max_threads: int = 16
    requester_pays: bool = False
    storage_class: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    upload_checksums: Literal["crc32c", "off"] = "crc32c"
    direct_io: bool = False

    @property
    def addressing_path_style(self) -> bool:
        """Path-style addressing: as asked, else when the endpoint host is an IP or localhost."""
        if self.force_path_style is not None:
            return self.force_path_style
        if not self.endpoint_url:
            return False
        host = urlparse(self.endpoint_url).hostname or ""
        if host == "localhost":
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True

    @property
    def effective_negative_ttl(self) -> float:
        return self.metadata_ttl if self.negative_metadata_ttl is None else \
            self.negative_metadata_ttl

    def to_args(self) -> list[str]:
        """The `cloudbucket-csi mount` flags that reproduce these options (never secrets)."""
        args: list[str] = []
        defaults = MountOptions()
        for spec in OPTION_SPECS.values():
            value = getattr(self, spec.attr)
            if value == getattr(defaults, spec.attr):
                continue
            if spec.flag:
                if value:
                    args.append(f"--{spec.name}")
                else:  # only force-path-style has a meaningful explicit False
                    args.append(f"--{spec.name}=false")
            else:
                args.append(f"--{spec.name}={spec.render(value)}")
        return args


@dataclass(frozen=True)
class OptionSpec:
    name: str  # as the user writes it: "allow-delete", "uid"
    parse: Callable[[str], Any]
    flag: bool = False  # a switch: present means true
    help: str = ""
    render: Callable[[Any], str] = str

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")


def _ttl_text(value: float) -> str:
    return "indefinite" if math.isinf(value) else repr(value)


OPTION_SPECS: dict[str, OptionSpec] = {
    spec.name: spec
    for spec in (
        OptionSpec("prefix", _prefix, help="only expose keys under this prefix (ends in '/')"),
        OptionSpec("endpoint-url", _endpoint, help="S3 endpoint URL (R2, GCS-HMAC, MinIO...)"),
        OptionSpec("region", _nonempty, help="bucket region (detected when omitted)"),
        OptionSpec("force-path-style", _parse_bool, flag=True, help="path-style addressing"),
        OptionSpec("provider", _choice("s3", "gcs"), help="s3 (default) or gcs (native API)"),
        OptionSpec("read-only", _parse_bool, flag=True, help="mount read-only"),
        OptionSpec("allow-delete", _parse_bool, flag=True, help="allow unlink"),
        OptionSpec("allow-overwrite", _parse_bool, flag=True, help="allow O_TRUNC overwrite"),
        OptionSpec("uid", _parse_id, help="owner uid of every file"),
        OptionSpec("gid", _parse_id, help="owner gid of every file"),
        OptionSpec("file-mode", _parse_mode, help="octal mode of files", render=lambda v: f"{v:o}"),
        OptionSpec("dir-mode", _parse_mode, help="octal mode of dirs", render=lambda v: f"{v:o}"),
        OptionSpec("allow-other", _parse_bool, flag=True, help="let other users access"),
        OptionSpec("allow-root", _parse_bool, flag=True, help="let root access"),
        OptionSpec("metadata-ttl", _parse_ttl, help="secs|minimal|indefinite", render=_ttl_text),
        OptionSpec("negative-metadata-ttl", _parse_ttl, help="secs|minimal|indefinite",
                   render=_ttl_text),
        OptionSpec("read-part-size", _part_size, help="bytes per ranged GET"),
        OptionSpec("write-part-size", _part_size, help="bytes per multipart part"),
        OptionSpec("max-threads", _parse_threads, help="worker threads for store requests"),
        OptionSpec("requester-pays", _parse_bool, flag=True, help="requester pays bucket"),
        OptionSpec("storage-class", _nonempty, help="storage class of new objects"),
        OptionSpec("sse", _choice("AES256", "aws:kms", "aws:kms:dsse"), help="server-side enc."),
        OptionSpec("sse-kms-key-id", _nonempty, help="KMS key for --sse aws:kms"),
        OptionSpec("upload-checksums", _choice("crc32c", "off"), help="crc32c|off"),
        OptionSpec("direct-io", _parse_bool, flag=True, help="bypass the kernel page cache"),
    )
}


def _check_combination(options: MountOptions) -> MountOptions:
    if options.sse_kms_key_id and options.sse not in ("aws:kms", "aws:kms:dsse"):
        raise VolumeError("sse-kms-key-id", "requires sse=aws:kms or sse=aws:kms:dsse")
    if options.allow_other and options.allow_root:
        raise VolumeError("allow-root", "cannot be combined with allow-other")
    return options


def parse_option_values(values: Mapping[str, str | bool]) -> MountOptions:
    """Build MountOptions from {option-name: text-or-True}; unknown names are refused."""
    fields: dict[str, Any] = {}
    for name, raw in values.items():
        spec = OPTION_SPECS.get(name)
        if spec is None:
            raise VolumeError(name, "unknown mount option")
        try:
            fields[spec.attr] = True if raw is True else spec.parse(str(raw))
        except ValueError as exc:
            raise VolumeError(name, str(exc).removeprefix("invalid literal for int() ")) from None
    return _check_combination(MountOptions(**fields))


def parse_mount_flags(flags: Iterable[str]) -> MountOptions:
    """Parse PV `mountOptions` / CSI mount flags: "allow-delete", "uid=1000", "--uid 1000"."""
    values: dict[str, str | bool] = {}
    for raw in flags:
        for item in raw.replace(",", " ").split():  # "a,b" and "a b" both allowed, like mount(8)
            name, sep, text = item.removeprefix("--").partition("=")
            values[name.strip()] = text if sep else True
    return parse_option_values(values)


def add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every mount option to an argparse parser as --name (flags take an optional value)."""
    for spec in OPTION_SPECS.values():
        if spec.flag:
            parser.add_argument(f"--{spec.name}", nargs="?", const=True, default=None,
                                metavar="BOOL", help=spec.help)
        else:
            parser.add_argument(f"--{spec.name}", default=None, help=spec.help)


def options_from_namespace(namespace: argparse.Namespace) -> MountOptions:
    values = {
        spec.name: getattr(namespace, spec.attr)
        for spec in OPTION_SPECS.values()
        if getattr(namespace, spec.attr, None) is not None
    }
    return parse_option_values(values)


# ---------------------------------------------------------------------------------------
# Bucket names and credentials

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


def validate_bucket(name: str, field_name: str = "bucketName") -> str:
    if not name:
        raise VolumeError(field_name, "is required")
    if not _BUCKET_RE.match(name):
        raise VolumeError(field_name, f"{name!r} is not a valid bucket name")
    return name


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
KNOWN_ATTRIBUTES = frozenset({
    ATTR_BUCKET, ATTR_PREFIX, ATTR_ENDPOINT, ATTR_PROVIDER, ATTR_REGION, ATTR_PATH_STYLE,
    ATTR_ROLE_ARN, ATTR_READ_ONLY, ATTR_STS_REGION, ATTR_STS_ENDPOINT, ATTR_MOUNT_OPTIONS,
})
# Keys kubelet and the external-provisioner add; accepted and interpreted by the CSI layer.
KUBE_PREFIX = "csi.storage.k8s.io/"
TOKENS_KEY = "csi.storage.k8s.io/serviceAccount.tokens"
EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral"
STS_AUDIENCE = "sts.amazonaws.com"
_ROLE_ARN_RE = re.compile(r"^arn:[a-z0-9-]+:iam::[0-9a-zA-Z_-]*:role/[\w+=,.@/-]+$")


@dataclass(frozen=True)
class VolumeSpec:
    """Everything needed to mount one volume; built only by `volume_spec()`."""

    bucket: str
    options: MountOptions
    credentials: Credentials

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
    except VolumeError as exc:
        raise VolumeError(f"mountOptions {exc.field}", str(exc).split(": ", 1)[1]) from None
    values: dict[str, str | bool] = {}
    _attr_option(values, attributes, ATTR_PREFIX, "prefix")
    _attr_option(values, attributes, ATTR_ENDPOINT, "endpoint-url")
    _attr_option(values, attributes, ATTR_PROVIDER, "provider")
    _attr_option(values, attributes, ATTR_REGION, "region")
    _attr_option(values, attributes, ATTR_PATH_STYLE, "force-path-style")
    _attr_option(values, attributes, ATTR_READ_ONLY, "read-only")
    try:
        from_attrs = parse_option_values(values)
    except VolumeError as exc:
        attr_names = {"prefix": ATTR_PREFIX, "endpoint-url": ATTR_ENDPOINT,
                      "provider": ATTR_PROVIDER, "region": ATTR_REGION,
                      "force-path-style": ATTR_PATH_STYLE, "read-only": ATTR_READ_ONLY}
        raise VolumeError(f"volumeAttributes.{attr_names[exc.field]}",
                          str(exc).split(": ", 1)[1]) from None
    merged = {
        f.name: getattr(from_attrs, f.name)
        for f in dataclasses.fields(MountOptions)
        if f.name in {spec.attr for name, spec in OPTION_SPECS.items() if name in values}
    }
    options = dataclasses.replace(base, **merged)
    if readonly and not options.read_only:
        options = dataclasses.replace(options, read_only=True)

    credentials = _credentials(attributes, secrets or {}, options)
    if credentials.region and not options.region:
        options = dataclasses.replace(options, region=credentials.region)
    return VolumeSpec(bucket=bucket, options=_check_combination(options), credentials=credentials)


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
                sts_endpoint = _endpoint(sts_endpoint)
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
