"""The layer contracts of pyproject.toml (run by `make lint`) catch the imports they forbid.

Each case copies the `driver` package and pyproject.toml into a temp dir, plants one
upward import there, and runs `lint-imports` on the copy: the contract it breaks must say
BROKEN and name the planted module. The same contracts on an unplanted copy are KEPT, so a
failure here is the plant's doing, not the tree's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# (contract id, module, import line): the line is appended to the module, which is created
# when it does not exist. One upward import per contract, two for the widest.
PLANTS = [
    ("fs-store-no-csi", "driver/fs/_planted.py", "from driver.services import node"),
    ("fs-store-no-csi", "driver/store/_planted.py", "import kubernetes"),
    ("store-no-credentials", "driver/store/_planted.py", "from driver.credentials import source"),
    ("services-no-fuse", "driver/services/_planted.py", "import pyfuse3"),
    ("credentials-no-csi", "driver/credentials/_planted.py", "from driver import volume"),
    ("options-leaf", "driver/options.py", "import argparse"),
    ("failures-are-data", "driver/failures.py", "import grpc"),
    ("fuse-side-independent", "driver/fs/_planted.py", "from driver.credentials import aws"),
    ("no-cycles", "driver/store/_planted.py", "from driver.fs import filesystem"),
]


def _copy(tmp: Path) -> Path:
    shutil.copytree(ROOT / "driver", tmp / "driver",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
    return tmp


def _lint(tree: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    args = [str(LINT_IMPORTS), "--no-cache", "--no-logo"]
    for contract in contracts:
        args += ["--contract", contract]
    # The copy comes first on the path, ahead of the editable install of the real tree.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_every_contract_is_planted() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ids = {contract["id"] for contract in config["tool"]["importlinter"]["contracts"]}
    assert ids == {contract for contract, _, _ in PLANTS}


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    result = _lint(_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(("contract", "module", "line"), PLANTS,
                         ids=[f"{c}:{m.split('/', 1)[1]}" for c, m, _ in PLANTS])
def test_a_planted_import_breaks_its_contract(tmp_path: Path, contract: str, module: str,
                                              line: str) -> None:
    tree = _copy(tmp_path)
    planted = tree / module
    before = planted.read_text() if planted.exists() else ""
    planted.write_text(f"{before}\n{line}  # planted by tests/unit/test_layers.py\n")
    result = _lint(tree, contract)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    # The report names the planted module, or for a cycle the sibling edge it added.
    expected = ".store -> .fs" if contract == "no-cycles" else \
        module.removesuffix(".py").replace("/", ".")
    assert expected in result.stdout, result.stdout
