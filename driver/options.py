"""Mount options: what `cloudbucket-csi mount` flags and PV `mountOptions` mean.

One frozen dataclass, `MountOptions`, and one table, `OPTION_SPECS`, of how each option is
written and parsed. `fs/` and `store/` read `MountOptions`; the CLI turns its flags into it
and the CSI side (`driver/volume.py`) turns PV attributes and mountOptions into it. No
argparse and no Kubernetes here. A bad value raises `OptionError`, which carries the
option's name and the reason as data, so each caller can say where the option came from
(a flag, a mountOption, a PV attribute) without rewording the message.

A `MountOptions` crosses process boundaries (node plugin -> supervisor -> FUSE server) as
JSON: `to_dict()`/`from_dict()`, with every field typed and infinities spelled out.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlparse

MiB = 1024 * 1024
GiB = 1024 * MiB


class OptionError(ValueError):
    """A mount option with a bad value; `field` is the option's name, `reason` what is wrong."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


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


def _memory_target(text: str) -> int:
    value = int(text)
    if not 16 <= value <= 64 * 1024:
        raise ValueError("must be between 16 and 65536 (MiB)")
    return value


def _request_timeout(text: str) -> float:
    value = float(text)
    if not 2 <= value <= 3600 or math.isnan(value):
        raise ValueError("must be between 2 and 3600 seconds")
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


def _cache_dir(text: str) -> str:
    if not text.strip() or "\0" in text:
        raise ValueError("must be a directory path")
    return text


def _cache_size(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive number of MiB")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive whole number")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be a whole number >= 0")
    return value


def _account_id(text: str) -> str:
    if not re.fullmatch(r"\d{12}", text.strip()):
        raise ValueError(f"must be a 12-digit AWS account id, got {text!r}")
    return text.strip()


def _interfaces(text: str) -> tuple[str, ...]:
    names = tuple(name for name in re.split(r"[\s:]+", text.strip()) if name)
    if not names:
        raise ValueError("must name a network interface")
    if len(names) > 1:
        raise ValueError("only one network interface is supported (sockets are bound to it "
                         "with SO_BINDTODEVICE)")
    if any(len(name) > 15 or "/" in name for name in names):
        raise ValueError(f"{text!r} is not a network interface name")
    return names


def _bucket_type(text: str) -> str:
    if text == "directory":
        raise ValueError("S3 Express One Zone directory buckets are not supported: they "
                         "need session-based auth (CreateSession) that this driver lacks")
    if text != "general-purpose":
        raise ValueError(f"must be general-purpose or directory, got {text!r}")
    return text


def _refuse(reason: str) -> Callable[[str], Any]:
    """The parser of a mount-s3 option that cannot apply here: always refused, with why."""

    def parse(text: str) -> Any:
        raise ValueError(reason)

    return parse


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


def parse_endpoint(text: str) -> str:
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
    # One budget (MiB) for the part data a mount holds: prefetched read parts, buffered
    # and in-flight write parts. 128 MiB = four 16 MiB GETs in flight plus the 32 MiB kept
    # behind the reader for out-of-order kernel reads (at 64 a sequential read measured 420
    # MB/s, at 128 650 MB/s); an idle mount holds none of it (~17 MiB PSS in all).
    memory_target: int = 128
    # Upper bound (seconds) on one store operation, retries included; a stalled request
    # is abandoned after a fraction of it and retried while time remains.
    request_timeout: float = 60.0
    cache: str | None = None  # block cache directory (fs/cache.py); None: no cache
    max_cache_size: int | None = None  # MiB; None: keep 5% of the cache's disk free
    # Beyond mountpoint-s3's semantics, each opt-in (README "semantics"):
    allow_rename: bool = False  # rename by server-side copy + delete
    rename_dir_limit: int = 1000  # most objects a directory rename moves (gcsfuse's name)
    incremental_upload: bool = False  # O_APPEND on an existing object appends
    ignore_chmod: bool = False  # chmod/chown succeed and change nothing
    # mount-s3 flags of the store client:
    no_sign_request: bool = False  # anonymous requests (public buckets); no credentials
    ca_bundle: str | None = None  # PEM file of the CAs to trust for the endpoint's TLS
    profile: str | None = None  # a profile of the AWS config/credentials files
    expected_bucket_owner: str | None = None  # x-amz-expected-bucket-owner on every request
    transfer_acceleration: bool = False
    dual_stack: bool = False
    user_agent_prefix: str | None = None
    bind: tuple[str, ...] = ()  # network interface the store connections are bound to
    maximum_throughput_gbps: int | None = None  # sizes max_threads when that is not given
    bucket_type: str = "general-purpose"
    # mount-s3 flags of the filesystem:
    auto_unmount: bool = False  # the kernel unmounts when the server exits (fusermount3)
    infer_content_type: bool = False  # Content-Type of new objects from their names
    log_metrics: bool = False  # log a summary of store requests periodically
    # Every thread of the FUSE server on one CPU: thread hand-offs and GIL passes become
    # local wake-ups instead of cross-CPU ones (README, Performance).
    single_cpu: bool = False

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (infinite TTLs as the string "inf", tuples as lists)."""
        return {name: ("inf" if isinstance(value, float) and math.isinf(value) else
                       list(value) if isinstance(value, tuple) else value)
                for name, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MountOptions:
        """The inverse of `to_dict`; unknown fields are refused by name."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name not in known:
                raise OptionError(name, "unknown mount option field")
            values[name] = math.inf if value == "inf" else \
                tuple(value) if isinstance(value, list) else value
        return cls(**values)

    def to_args(self) -> list[str]:
        """The `cloudbucket-csi mount` flags that reproduce these options (never secrets).
        Only the old argv-based mounters use this; it goes with them."""
        args: list[str] = []
        defaults = MountOptions()
        for spec in OPTION_SPECS.values():
            if spec.alias_of or not hasattr(defaults, spec.attr):
                continue  # an alias, or a refused option with no field
            value = getattr(self, spec.attr)
            if value == getattr(defaults, spec.attr):
                continue
            if spec.flag:
                args.append(f"--{spec.name}" if value else f"--{spec.name}=false")
            else:
                args.append(f"--{spec.name}={spec.render(value)}")
        return args

    def changed(self) -> dict[str, Any]:
        """The fields that differ from the defaults (for records and comparisons)."""
        defaults = MountOptions().to_dict()
        return {name: value for name, value in self.to_dict().items()
                if defaults[name] != value}


@dataclass(frozen=True)
class OptionSpec:
    name: str  # as the user writes it: "allow-delete", "uid"
    parse: Callable[[str], Any]
    flag: bool = False  # a switch: present means true
    help: str = ""
    render: Callable[[Any], str] = str
    alias_of: tuple[str, ...] = ()  # sets these options instead of a field of its own

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")


def _join(value: tuple[str, ...]) -> str:
    return ":".join(value)


def _ttl_text(value: float) -> str:
    return "indefinite" if math.isinf(value) else repr(value)


OPTION_SPECS: dict[str, OptionSpec] = {
    spec.name: spec
    for spec in (
        OptionSpec("prefix", _prefix, help="only expose keys under this prefix (ends in '/')"),
        OptionSpec("endpoint-url", parse_endpoint, help="S3 endpoint URL (R2, GCS-HMAC, MinIO...)"),
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
        OptionSpec("memory-target", _memory_target,
                   help="MiB of part data (reads and writes) the mount may hold"),
        OptionSpec("request-timeout", _request_timeout,
                   help="seconds one store operation may take, retries included"),
        OptionSpec("cache", _cache_dir, help="cache object data in this local directory"),
        OptionSpec("max-cache-size", _cache_size,
                   help="MiB the cache may hold (default: keep 5 percent of its disk free)"),
        OptionSpec("allow-rename", _parse_bool, flag=True,
                   help="allow rename (server-side copy, then delete)"),
        OptionSpec("rename-dir-limit", _count,
                   help="most objects a directory rename may move (1000)"),
        OptionSpec("incremental-upload", _parse_bool, flag=True,
                   help="O_APPEND opens of existing objects append"),
        OptionSpec("ignore-chmod", _parse_bool, flag=True,
                   help="chmod/chown succeed and change nothing"),
        OptionSpec("no-sign-request", _parse_bool, flag=True,
                   help="do not sign requests (public buckets; no credentials are loaded)"),
        OptionSpec("ca-bundle", _nonempty, help="PEM file of CAs to trust for the endpoint"),
        OptionSpec("profile", _nonempty, help="profile of the AWS config/credentials files"),
        OptionSpec("expected-bucket-owner", _account_id,
                   help="account id the bucket must belong to"),
        OptionSpec("part-size", _part_size, help="sets both --read-part-size and "
                   "--write-part-size", alias_of=("read-part-size", "write-part-size")),
        OptionSpec("auto-unmount", _parse_bool, flag=True,
                   help="unmount automatically when the server exits"),
        OptionSpec("infer-content-type", _parse_bool, flag=True,
                   help="set Content-Type of new objects from their file names"),
        OptionSpec("user-agent-prefix", _nonempty, help="prepended to the User-Agent header"),
        OptionSpec("transfer-acceleration", _parse_bool, flag=True,
                   help="use S3 Transfer Acceleration endpoints"),
        OptionSpec("dual-stack", _parse_bool, flag=True, help="use dual-stack (IPv6) endpoints"),
        OptionSpec("bind", _interfaces, help="network interface for store connections",
                   render=_join),
        OptionSpec("maximum-throughput-gbps", _positive,
                   help="target throughput; sizes --max-threads when that is not given"),
        OptionSpec("log-metrics", _parse_bool, flag=True,
                   help="log a summary of store requests every minute"),
        OptionSpec("single-cpu", _parse_bool, flag=True,
                   help="run every thread of the FUSE server on one CPU (the one it starts on)"),
        OptionSpec("bucket-type", _bucket_type, help="general-purpose (directory: refused)"),
        OptionSpec("cache-xz", _refuse(
            "S3 Express One Zone caches are not supported: directory buckets need "
            "session-based auth (CreateSession) that this driver lacks"),
            help="refused: S3 Express One Zone cache"),
        OptionSpec("otlp-endpoint", _refuse(
            "OTLP export is not built in: metrics are served by the node plugin's "
            "Prometheus endpoint (and --log-metrics logs them)"), help="refused: OTLP"),
        OptionSpec("otlp-export-interval", _refuse(
            "OTLP export is not built in (see otlp-endpoint)"), help="refused: OTLP"),
    )
}


def check_combination(options: MountOptions) -> MountOptions:
    if options.sse_kms_key_id and options.sse not in ("aws:kms", "aws:kms:dsse"):
        raise OptionError("sse-kms-key-id", "requires sse=aws:kms or sse=aws:kms:dsse")
    if options.allow_other and options.allow_root:
        raise OptionError("allow-root", "cannot be combined with allow-other")
    if options.provider == "gcs":
        for name in ("transfer-acceleration", "dual-stack", "expected-bucket-owner", "profile"):
            if getattr(options, name.replace("-", "_")):
                raise OptionError(name, "is an S3 option; it has no meaning with provider gcs")
    if options.transfer_acceleration and options.endpoint_url:
        raise OptionError("transfer-acceleration", "applies to AWS S3 only, not with "
                          "endpoint-url")
    if options.no_sign_request and options.profile:
        raise OptionError("profile", "cannot be combined with no-sign-request (no "
                          "credentials are loaded)")
    return options


# About how many bytes per second one worker thread moves with 8-16 MiB parts: sizes
# --max-threads from --maximum-throughput-gbps (mount-s3's 10 Gb/s default -> 16 threads).
THREAD_BYTES_PER_SECOND = 80 * MiB


def _expand(values: Mapping[str, str | bool]) -> dict[str, str | bool]:
    """Aliases (part-size) become the options they set; conflicts are refused."""
    expanded = dict(values)
    for name, raw in values.items():
        spec = OPTION_SPECS.get(name)
        if spec is None or not spec.alias_of:
            continue
        for target in spec.alias_of:
            if target in values:
                raise OptionError(name, f"cannot be combined with {target}")
            expanded[target] = raw
        del expanded[name]
    return expanded


def parse_option_values(values: Mapping[str, str | bool]) -> MountOptions:
    """Build MountOptions from {option-name: text-or-True}; unknown names are refused."""
    fields: dict[str, Any] = {}
    for name, raw in _expand(values).items():
        spec = OPTION_SPECS.get(name)
        if spec is None:
            raise OptionError(name, "unknown mount option")
        try:
            fields[spec.attr] = True if raw is True else spec.parse(str(raw))
        except ValueError as exc:
            raise OptionError(name, str(exc).removeprefix("invalid literal for int() ")) from None
    gbps = fields.get("maximum_throughput_gbps")
    if gbps is not None and "max_threads" not in fields:
        threads = math.ceil(gbps * 1e9 / 8 / THREAD_BYTES_PER_SECOND)
        fields["max_threads"] = max(1, min(256, threads))
    return check_combination(MountOptions(**fields))


def parse_mount_flags(flags: Iterable[str]) -> MountOptions:
    """Parse PV `mountOptions` / CSI mount flags: "allow-delete", "uid=1000", "--uid 1000"."""
    values: dict[str, str | bool] = {}
    for raw in flags:
        for item in raw.replace(",", " ").split():  # "a,b" and "a b" both allowed, like mount(8)
            name, sep, text = item.removeprefix("--").partition("=")
            values[name.strip()] = text if sep else True
    return parse_option_values(values)


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


def validate_bucket(name: str) -> str:
    """A bucket name as S3 and GCS accept it (field "bucket")."""
    if not name:
        raise OptionError("bucket", "is required")
    if not _BUCKET_RE.match(name):
        raise OptionError("bucket", f"{name!r} is not a valid bucket name")
    return name
