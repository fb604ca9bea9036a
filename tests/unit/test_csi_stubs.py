"""driver/csi holds the vendored proto and stubs generated from it, nothing hand-edited."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CSI = ROOT / "driver" / "csi"


def test_generated_stubs_match_the_vendored_proto(tmp_path: Path) -> None:
    (tmp_path / "driver" / "csi").mkdir(parents=True)
    shutil.copy(CSI / "csi.proto", tmp_path / "driver" / "csi" / "csi.proto")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.",
                    "--pyi_out=.", "--grpc_python_out=.", "driver/csi/csi.proto"],
                   cwd=tmp_path, check=True)
    for name in ("csi_pb2.py", "csi_pb2.pyi", "csi_pb2_grpc.py"):
        assert (tmp_path / "driver" / "csi" / name).read_text() == (CSI / name).read_text(), \
            f"{name} differs from a fresh generation: run `make csi-proto`"


def test_spec_version_is_recorded_and_matches_the_makefile() -> None:
    recorded = (CSI / "SPEC_VERSION").read_text().split()
    assert recorded[0] == "github.com/container-storage-interface/spec"
    pinned = re.search(r"^CSI_SPEC_VERSION := (\S+)$", (ROOT / "mk" / "csi.mk").read_text(),
                       re.M)
    assert pinned is not None and recorded[1] == pinned.group(1)
    assert re.fullmatch(r"v1\.\d+\.\d+", recorded[1])
    assert (CSI / "LICENSE").read_text().startswith("\n") or "Apache" in \
        (CSI / "LICENSE").read_text()
    assert sorted(p.name for p in CSI.iterdir() if p.name != "__pycache__") == [
        "LICENSE", "SPEC_VERSION", "__init__.py", "csi.proto", "csi_pb2.py", "csi_pb2.pyi",
        "csi_pb2_grpc.py"]
