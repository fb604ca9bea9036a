"""mount-s3 1.24's whole command line, fed to `cloudbucket-csi mount`'s parser: every flag
is accepted with its meaning, or refused with a reason saying why it cannot apply.

The list is mount-s3's `CliArgs` (mountpoint-s3/src/cli.rs, release 1.24), flag by flag,
with a value where the flag takes one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import pytest

from driver import cli
from driver.options import OPTION_SPECS, MiB, MountOptions, OptionError

# (argv, check of the resulting MountOptions or None for CLI-only flags)
ACCEPTED: list[tuple[list[str], object]] = [
    (["--prefix", "some/prefix/"], lambda o: o.prefix == "some/prefix/"),
    (["--region", "eu-west-1"], lambda o: o.region == "eu-west-1"),
    (["--endpoint-url", "https://s3.example.com"],
     lambda o: o.endpoint_url == "https://s3.example.com"),
    (["--force-path-style"], lambda o: o.force_path_style is True),
    (["--transfer-acceleration"], lambda o: o.transfer_acceleration),
    (["--dual-stack"], lambda o: o.dual_stack),
    (["--requester-pays"], lambda o: o.requester_pays),
    (["--bucket-type", "general-purpose"], lambda o: o.bucket_type == "general-purpose"),
    (["--no-sign-request"], lambda o: o.no_sign_request),
    (["--profile", "datasets"], lambda o: o.profile == "datasets"),
    (["--read-only"], lambda o: o.read_only),
    (["--storage-class", "STANDARD_IA"], lambda o: o.storage_class == "STANDARD_IA"),
    (["--allow-delete"], lambda o: o.allow_delete),
    (["--allow-overwrite"], lambda o: o.allow_overwrite),
    (["--incremental-upload"], lambda o: o.incremental_upload),
    (["--auto-unmount"], lambda o: o.auto_unmount),
    (["--allow-root"], lambda o: o.allow_root),
    (["--allow-other"], lambda o: o.allow_other),
    (["--maximum-throughput-gbps", "100"],
     lambda o: o.maximum_throughput_gbps == 100 and o.max_threads > MountOptions().max_threads),
    (["--max-threads", "32"], lambda o: o.max_threads == 32),
    (["--part-size", "16777216"],
     lambda o: o.read_part_size == o.write_part_size == 16 * MiB),
    (["--read-part-size", "33554432"], lambda o: o.read_part_size == 32 * MiB),
    (["--write-part-size", "16777216"], lambda o: o.write_part_size == 16 * MiB),
    (["--uid", "1000"], lambda o: o.uid == 1000),
    (["--gid", "1000"], lambda o: o.gid == 1000),
    (["--dir-mode", "0750"], lambda o: o.dir_mode == 0o750),
    (["--file-mode", "0640"], lambda o: o.file_mode == 0o640),
    (["--foreground"], None),
    (["-f"], None),
    (["--expected-bucket-owner", "123456789012"],
     lambda o: o.expected_bucket_owner == "123456789012"),
    (["--log-directory", "{tmp}"], None),
    (["-l", "{tmp}"], None),
    (["--log-metrics"], lambda o: o.log_metrics),
    (["--debug"], None),
    (["-d"], None),
    (["--debug-crt"], None),
    (["--no-log"], None),
    (["--metadata-ttl", "60"], lambda o: o.metadata_ttl == 60),
    (["--metadata-ttl", "indefinite"], lambda o: o.metadata_ttl == float("inf")),
    (["--negative-metadata-ttl", "minimal"], lambda o: o.negative_metadata_ttl == 1.0),
    (["--user-agent-prefix", "my-app/1.0"], lambda o: o.user_agent_prefix == "my-app/1.0"),
    (["--sse", "aws:kms", "--sse-kms-key-id",
      "arn:aws:kms:us-east-1:123456789012:key/abcd"],
     lambda o: o.sse == "aws:kms" and o.sse_kms_key_id.endswith("/abcd")),
    (["--sse", "AES256"], lambda o: o.sse == "AES256"),
    (["--upload-checksums", "off"], lambda o: o.upload_checksums == "off"),
    (["--bind", "eth0"], lambda o: o.bind == ("eth0",)),
    # Not mount-s3's, asked for beside them:
    (["--ca-bundle", "/etc/ssl/private-ca.pem"],
     lambda o: o.ca_bundle == "/etc/ssl/private-ca.pem"),
]

# Refused with a reason that says why (a word of it is checked).
REFUSED: list[tuple[list[str], str]] = [
    (["--bucket-type", "directory"], "S3 Express"),
    (["--cache-xz", "my-express-bucket--usw2-az1--x-s3"], "S3 Express"),
    (["--otlp-endpoint", "http://127.0.0.1:4318"], "OTLP"),
    (["--otlp-export-interval", "30"], "OTLP"),
]

# Flags that other issues bring (the data cache; the memory budget), and feature-gated
# flags of mount-s3 that come with them: checked once their option exists.
ELSEWHERE: list[list[str]] = [
    ["--cache", "/var/cache/mnt"],
    ["--max-cache-size", "1024"],
    ["--cache-block-size", "1024"],
    ["--max-memory-target", "1024"],
]


def parse(argv: list[str]) -> tuple[argparse.Namespace, MountOptions]:
    args = cli._parser().parse_args(["mount", "bucket-name", "/mnt/target", *argv])
    cli._logging_flags(args)
    return args, cli.options_from_namespace(args)


def _fill(argv: list[str], tmp: Path) -> list[str]:
    return [item.replace("{tmp}", str(tmp)) for item in argv]


@pytest.mark.parametrize(("argv", "check"), ACCEPTED, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else "")
def test_mount_s3_flag_is_accepted_with_its_meaning(argv, check, tmp_path):
    with contextlib.redirect_stderr(io.StringIO()) as stderr:
        args, options = parse(_fill(argv, tmp_path))
    if check is not None:
        assert check(options), (argv, options.changed())
    if argv[0] == "--debug-crt":
        assert "no effect" in stderr.getvalue()
    if argv[0] in ("--log-directory", "-l"):
        assert Path(args.log_file).parent == tmp_path


@pytest.mark.parametrize(("argv", "reason"), REFUSED, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else "")
def test_mount_s3_flag_that_cannot_apply_is_refused_with_why(argv, reason):
    with pytest.raises(OptionError) as caught:
        parse(argv)
    assert caught.value.field == argv[0].removeprefix("--")
    assert reason in caught.value.reason


@pytest.mark.parametrize("argv", ELSEWHERE, ids=lambda v: " ".join(v))
def test_flags_of_other_issues(argv):
    if argv[0].removeprefix("--") not in OPTION_SPECS:
        pytest.skip(f"{argv[0]} comes with the cache/memory issues")
    parse(argv)


def test_a_whole_mount_s3_command_line_at_once(tmp_path):
    argv = [item for flags, _ in ACCEPTED for item in flags
            if flags[0] not in ("--no-log", "--allow-root", "--no-sign-request",
                                "--transfer-acceleration", "--part-size",
                                "--maximum-throughput-gbps", "--sse")]
    _, options = parse(_fill(argv, tmp_path))
    assert options.allow_other and options.bind == ("eth0",) and options.log_metrics


@pytest.mark.parametrize(("argv", "field"), [
    (["--part-size", "16777216", "--read-part-size", "16777216"], "part-size"),
    (["--no-sign-request", "--profile", "p"], "profile"),
    (["--transfer-acceleration", "--endpoint-url", "http://127.0.0.1:1"],
     "transfer-acceleration"),
    (["--bind", "eth0:eth1"], "bind"),
    (["--expected-bucket-owner", "me"], "expected-bucket-owner"),
])
def test_conflicting_or_bad_values_name_the_option(argv, field):
    with pytest.raises(OptionError) as caught:
        parse(argv)
    assert caught.value.field == field


def test_no_log_refuses_logging_flags():
    with pytest.raises(cli.CliError):
        parse(["--no-log", "--debug"])


def test_new_options_round_trip_through_args_and_json(tmp_path):
    _, options = parse(_fill([item for flags, _ in ACCEPTED[:30] for item in flags
                              if flags[0] not in ("--allow-root", "--part-size",
                                                  "--no-sign-request",
                                                  "--transfer-acceleration")], tmp_path))
    assert MountOptions.from_dict(options.to_dict()) == options
    again = cli.options_from_namespace(cli._parser().parse_args(
        ["mount", "b", "/m", *options.to_args()]))
    assert again == options


# --------------------------------------------------------------------- PersistentVolumes

def test_pv_mount_options_of_the_same_names():
    from driver.volume import volume_spec

    spec = volume_spec({"bucketName": "bkt"}, ["allow-rename", "rename-dir-limit=50",
                                               "incremental-upload", "ignore-chmod",
                                               "part-size=16MiB", "expected-bucket-owner="
                                               "123456789012"])
    options = spec.options
    assert options.allow_rename and options.rename_dir_limit == 50
    assert options.incremental_upload and options.ignore_chmod
    assert options.read_part_size == options.write_part_size == 16 * MiB
    assert options.expected_bucket_owner == "123456789012"
    assert volume_spec({"bucketName": "bkt"}).options == MountOptions()  # nothing by default


def test_pv_attributes_no_sign_request_and_ca_bundle():
    from driver.volume import VolumeError, volume_spec

    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    spec = volume_spec({"bucketName": "bkt", "noSignRequest": "true", "caBundle": pem})
    assert spec.options.no_sign_request and spec.options.ca_bundle == pem
    from_secret = volume_spec({"bucketName": "bkt"}, [], {
        "CA_BUNDLE": pem, "AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"})
    assert from_secret.options.ca_bundle == pem and from_secret.credentials.kind == "static"
    with pytest.raises(VolumeError) as caught:
        volume_spec({"bucketName": "bkt", "noSignRequest": "perhaps"})
    assert caught.value.field == "volumeAttributes.noSignRequest"
    with pytest.raises(VolumeError) as caught:
        volume_spec({"bucketName": "bkt", "caBundle": pem}, [], {"CA_BUNDLE": pem})
    assert caught.value.field == "secret key CA_BUNDLE"
    with pytest.raises(VolumeError) as caught:
        volume_spec({"bucketName": "bkt"}, ["bucket-type=directory"])
    assert caught.value.field == "mountOptions bucket-type" and "S3 Express" in \
        caught.value.reason
