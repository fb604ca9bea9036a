"""`cloudbucket-csi mount` refuses bad input with one clear line and leaves nothing mounted."""

from __future__ import annotations

import pytest

from driver.devservers import free_port
from driver.mounts import mountinfo

pytestmark = pytest.mark.fuse


def _run_mount(cli, seaweed, bucket, target, *flags, env=None, endpoint=None):
    return cli("mount", bucket, str(target), f"--endpoint-url={endpoint or seaweed.endpoint}",
               *flags, env={**seaweed.credential_env(), **(env or {})})


@pytest.mark.parametrize(
    ("case", "expected", "status"),
    [  # the exit status comes from the failure's kind (cli.exit_status), never its wording
        ("missing-bucket", "bucket no-such-bucket-here does not exist", 4),
        ("wrong-credentials", "access to bucket", 3),
        ("unreachable", "cannot reach the endpoint", 5),
        ("prefix", "--prefix: must end in '/'", 2),
        ("unknown-option", "unrecognized arguments: --no-such-flag", 2),
        ("not-a-dir", "is not a directory", 2),
    ],
)
def test_bad_input_one_clear_line_nothing_mounted(cli, seaweed, bucket, tmp_path, case,
                                                   expected, status):
    target = tmp_path / "mnt"
    target.mkdir()
    args: list[str] = []
    env: dict[str, str] = {}
    endpoint = None
    name = bucket
    if case == "missing-bucket":
        name = "no-such-bucket-here"
    elif case == "wrong-credentials":
        env = {"AWS_SECRET_ACCESS_KEY": "definitely-wrong-secret"}
    elif case == "unreachable":
        endpoint = f"http://127.0.0.1:{free_port()}"
    elif case == "prefix":
        args = ["--prefix=no-slash"]
    elif case == "unknown-option":
        args = ["--no-such-flag"]
    elif case == "not-a-dir":
        target = tmp_path / "file"
        target.write_text("x")
    result = _run_mount(cli, seaweed, name, target, *args, env=env, endpoint=endpoint)
    assert result.returncode == status, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2, result.stderr  # argparse adds a usage line for unknown options
    assert expected in result.stderr
    assert "definitely-wrong-secret" not in result.stderr
    assert mountinfo.find(str(target)) is None


def test_mountpoint_busy(cli, seaweed, bucket, mount):
    mnt = mount(bucket)
    result = _run_mount(cli, seaweed, bucket, mnt.path)
    assert result.returncode == 6
    assert "is busy" in result.stderr


def test_version(cli):
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("cloudbucket-csi ")
