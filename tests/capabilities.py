"""Capability markers: a test says what the machine must have, this plugin checks it.

`@pytest.mark.fuse`, `root` and `docker` (registered in pyproject.toml) name a capability.
Before such a test runs, its check below looks at the machine; when the capability is
missing the test is skipped with a reason that says what to install, so a contributor's
laptop gives a readable report instead of a wall of mount errors. Under `CI=true` the same
finding is a failure: CI can never pass by skipping what it was meant to prove.

The unit layer (tests/unit) is defined as needing none of them; a capability marker there is
a collection error, so a FUSE test cannot slip into `make test-unit`. `slow` is not a
capability (every machine can wait); it only lets a run deselect long tests.

Registered by tests/conftest.py (`pytest_plugins`); each check runs once per session.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT_DIR = ROOT / "tests" / "unit"


@functools.cache  # looked at once per session
def _fuse_missing() -> str | None:
    missing = []
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        missing.append("a usable /dev/fuse: modprobe fuse (in a container: --device /dev/fuse)")
    if shutil.which("fusermount3") is None:
        missing.append("fusermount3: apt-get install fuse3 (or `make install-system` as root)")
    try:
        import pyfuse3  # noqa: F401 - the import is the check (it loads libfuse3)
    except ImportError:
        missing.append("pyfuse3 and libfuse3: apt-get install fuse3 libfuse3-dev pkg-config, "
                       "then `make install`")
    return "; ".join(missing) or None


@functools.cache  # looked at once per session
def _root_missing() -> str | None:
    if os.geteuid() == 0:
        return None
    return "uid 0 (it mounts /dev/fuse itself or bind-mounts): run it as root"


@functools.cache  # looked at once per session
def _docker_missing() -> str | None:
    if shutil.which("docker") is None:
        return "docker: apt-get install docker.io, then `make dockerd-start`"
    sock = ROOT / ".cache" / "docker.sock"
    host = ["-H", f"unix://{sock}"] if sock.exists() and "DOCKER_HOST" not in os.environ else []
    try:
        answer = subprocess.run(["docker", *host, "info"], capture_output=True, timeout=20,
                                check=False)
    except subprocess.TimeoutExpired:
        return "a dockerd that answers (`docker info` timed out): `make dockerd-start`"
    return None if answer.returncode == 0 else "a running dockerd: `make dockerd-start`"


# marker name -> check returning None when present, else what is missing and how to
# install it. Tests of this
# plugin replace entries to play a machine that lacks something.
CHECKS: dict[str, Callable[[], str | None]] = {
    "fuse": _fuse_missing,
    "root": _root_missing,
    "docker": _docker_missing,
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not Path(str(item.path)).is_relative_to(UNIT_DIR):
            continue
        needs = [name for name in CHECKS if item.get_closest_marker(name)]
        if needs:
            raise pytest.UsageError(
                f"{item.nodeid} is marked {', '.join(needs)}: the unit layer runs without "
                "servers, FUSE, root or docker; move it to tests/integration")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for name in CHECKS:
        if item.get_closest_marker(name) is None:
            continue
        missing = CHECKS[name]()
        if missing is None:
            continue
        reason = f"needs {name}: {missing}"
        if in_ci():
            pytest.fail(f"{reason} (CI=true: a missing capability fails, it is never skipped)",
                        pytrace=False)
        pytest.skip(reason)

