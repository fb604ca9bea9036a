"""csi-sanity (kubernetes-csi/csi-test, built by `make csi-sanity`) against `serve --mode all`.

The Identity, Controller and Node suites run against a real SeaweedFS: CreateVolume hands
out prefixes in a bucket this test creates, NodePublishVolume makes real FUSE mounts under
csi-sanity's own target directory, DeleteVolume removes the prefixes again. No spec is
skipped by us; csi-sanity itself skips the specs of capabilities the driver does not
advertise (staging, expansion, snapshots, cloning, ListVolumes, GetCapacity, ...).
"""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from string import Template

import pytest

from driver.devservers import SeaweedS3
from driver.mounts import mountinfo
from tests.integration.csi_support import csi_server

pytestmark = [pytest.mark.fuse, pytest.mark.root]

ROOT = Path(__file__).resolve().parents[2]
CSI_SANITY = ROOT / ".cache" / "bin" / "csi-sanity"
TEMPLATES = ROOT / "tests" / "csi-sanity"

# Specs we skip, each with its reason. Keep this empty unless a spec cannot apply.
SKIPPED_SPECS: dict[str, str] = {}


def _fill(template: Path, out: Path, **values: str) -> Path:
    out.write_text(Template(template.read_text()).substitute(values))
    return out


# Specs that exercise real mounts and real store access; each must have run and passed.
MUST_PASS = (
    "NodeUnpublishVolume should remove target path",
    "Node Service should work",
    "Node Service should be idempotent",
    "should fail when volume with single node single writer access mode is already mounted",
    "NodeGetVolumeStats should fail when volume does not exist on the specified path",
    "NodeGetVolumeHealth should return health for a valid volume",
    "CreateVolume should not fail when creating volume with maximum-length name",
    "DeleteVolume should return appropriate values",
    "ValidateVolumeCapabilities should fail when the requested volume does not exist",
)


def _junit_results(report: Path) -> dict[str, str]:
    """{spec name: "passed" | "skipped: reason" | "failed"} from ginkgo's JUnit report."""
    results = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        skipped = case.find("skipped")
        if skipped is not None:
            results[case.get("name", "")] = f"skipped: {skipped.get('message', '')}"
        elif case.find("failure") is not None or case.find("error") is not None:
            results[case.get("name", "")] = "failed"
        else:
            results[case.get("name", "")] = "passed"
    return results


@pytest.mark.timeout(900)
def test_csi_sanity_passes(seaweed: SeaweedS3, s3, bucket: str, tmp_path: Path) -> None:
    if not CSI_SANITY.exists():
        pytest.fail(f"{CSI_SANITY} is missing: run `make csi-sanity` (make test builds it)")
    params = _fill(TEMPLATES / "params.yaml", tmp_path / "params.yaml", BUCKET=bucket,
                   ENDPOINT=seaweed.endpoint)
    secrets = _fill(TEMPLATES / "secrets.yaml", tmp_path / "secrets.yaml",
                    ACCESS_KEY=seaweed.access_key, SECRET_KEY=seaweed.secret_key)
    report = tmp_path / "junit.xml"
    with csi_server("all") as server:
        args = [
            str(CSI_SANITY), f"--csi.endpoint={server.endpoint}",
            f"--csi.mountdir={server.workdir / 'mnt'}",
            f"--csi.stagingdir={server.workdir / 'staging'}",
            f"--csi.testvolumeparameters={params}", f"--csi.secrets={secrets}",
            f"--ginkgo.junit-report={report}", "--ginkgo.no-color",
            "--ginkgo.timeout=12m",
        ]
        if SKIPPED_SPECS:
            args.append("--ginkgo.skip=" + "|".join(SKIPPED_SPECS))
        result = subprocess.run(args, capture_output=True, text=True, timeout=840,
                                check=False, env={**os.environ})
        results = _junit_results(report) if report.exists() else {}
        summary = {kind: sum(1 for r in results.values() if r.startswith(kind))
                   for kind in ("passed", "skipped", "failed")}
        print(f"csi-sanity {summary}")
        assert result.returncode == 0, (
            f"csi-sanity failed {summary}:\n{result.stdout[-12000:]}\n"
            f"{result.stderr[-3000:]}\nserver log tail:\n{server.log()[-6000:]}")
        assert summary["failed"] == 0, summary
        for spec in MUST_PASS:
            matching = [r for name, r in results.items() if spec in name]
            assert matching == ["passed"], f"{spec}: {matching}"
        # csi-sanity skips only the specs of capabilities the driver does not advertise.
        ours = [name for name, r in results.items() if r.startswith("skipped")
                and not any(word in r for word in ("not supported", "capacity of the "
                                                   "volume is unknown", "pending"))]
        assert ours == [], ours
        # Every volume csi-sanity created was unpublished and deleted again.
        assert server.records() == []
        assert not [m for m in mountinfo.read() if m.target.startswith(str(server.workdir))]
    leftover = s3.list_objects_v2(Bucket=bucket, Prefix="sanity/").get("KeyCount", 0)
    assert leftover == 0
