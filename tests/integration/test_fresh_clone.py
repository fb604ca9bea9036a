"""A contributor's first hour: `make test-unit` passes on a fresh clone.

Clones this checkout's committed HEAD into a temp dir (no .venv, no .cache, nothing
untracked) and runs `make test-unit` there, so a unit test that silently needs something
only an old checkout has (helm in .cache/bin, a built stub, a server) fails here first.
pip's own cache is shared with the clone, so this costs a venv build, not a download.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


@pytest.mark.skipif(shutil.which("git") is None or shutil.which("make") is None,
                    reason="needs git and make: apt-get install git make")
def test_make_test_unit_passes_on_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)],
                   check=True, timeout=300)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    cloned = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True,
                            text=True, check=True).stdout.strip()
    assert cloned == head
    assert not (clone / ".venv").exists() and not (clone / ".cache").exists()
    # A make running this test must not lend the inner make its jobserver or variables.
    env = {key: value for key, value in os.environ.items()
           if key not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "VIRTUAL_ENV", "PYTHONPATH",
                          "PYTEST_ARGS", "SEED")}
    result = subprocess.run(["make", "test-unit"], cwd=clone, env=env, capture_output=True,
                            text=True, timeout=1400, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    summary = re.findall(r"^(\d+) passed\b.*$", result.stdout, re.MULTILINE)
    assert summary and int(summary[-1]) >= 100, output[-3000:]
    assert " failed" not in result.stdout.splitlines()[-1]
    assert (clone / ".cache" / "bin" / "helm").exists()  # test-unit installed what it needs
