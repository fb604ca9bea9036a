"""Fast checks of the e2e setup (CI does not run the e2e suite itself: a fresh machine needs
a long Kubernetes build). The suite imports and collects its cases; `make e2e-kind`'s
dry run renders its commands; the local cluster's scripts parse; the image tarballs the
local cluster imports are well-formed; the chart renders with the e2e values using only
images the local build provides."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.unit.chart_render import documents, render

ROOT = Path(__file__).resolve().parents[2]
E2E = ROOT / "e2e"


def test_suite_imports_and_collects_the_eleven_cases() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "e2e"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    cases = [line for line in done.stdout.splitlines() if "::test_" in line]
    # Cases 1-9, case 10 twice (pod deletion, helm upgrade), case 11 (Events, metrics).
    assert len(cases) == 12, cases
    assert sum("test_read_survives_node_plugin_restart" in c for c in cases) == 2


def test_kind_dry_run_renders_its_commands() -> None:
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # no kind or docker needed for a dry run
    done = subprocess.run(["bash", str(E2E / "kind/run.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    commands = [line[2:] for line in done.stdout.splitlines() if line.startswith("+ ")]
    order = ["kind create cluster", "docker build", "kind load docker-image",
             "kubectl apply -f", "kubectl -n e2e-s3 create configmap seaweedfs-iam",
             "-m pytest", "kind delete cluster"]
    positions = [next(i for i, c in enumerate(commands) if step in c) for step in order]
    assert positions == sorted(positions), commands
    assert "E2E_S3_ENDPOINT=http://seaweedfs.e2e-s3.svc.cluster.local:8333" in done.stdout


def test_make_renders_the_e2e_targets() -> None:
    for target, expected in (("e2e-local", "e2e/local/run.sh"),
                             ("e2e-kind", "e2e/kind/run.sh")):
        done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout


def test_local_build_stops_the_dockerd_it_started() -> None:
    done = subprocess.run(["make", "-n", "e2e-local-build"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    started = done.stdout.index("dockerd --bridge=none")
    archived = done.stdout.index("e2e/local/build-images.sh")
    stopped = done.stdout.index("kill $pid", archived)
    assert started < archived < stopped
    assert "cat " + str(ROOT / ".cache" / "dockerd.pid") in done.stdout[archived:]


def test_shell_scripts_parse() -> None:
    scripts = sorted(E2E.glob("**/*.sh"))
    assert len(scripts) >= 5
    for script in scripts:
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, f"{script}: {done.stderr}"


def test_docker_archive_is_what_ctr_import_reads(tmp_path: Path) -> None:
    from e2e.local.docker_archive import write_archive

    binary = tmp_path / "tool"
    binary.write_bytes(b"\x7fELF not really")
    out = tmp_path / "img.tar"
    write_archive(out, "cloudbucket-e2e.local/tool:e2e", {"/bin/tool": binary}, ["/bin/tool"],
                  links={"/bin/sh": "tool"})
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        assert manifest[0]["RepoTags"] == ["cloudbucket-e2e.local/tool:e2e"]
        config_bytes = tar.extractfile(manifest[0]["Config"]).read()
        assert manifest[0]["Config"] == hashlib.sha256(config_bytes).hexdigest() + ".json"
        layer_bytes = tar.extractfile(manifest[0]["Layers"][0]).read()
    config = json.loads(config_bytes)
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]
    assert config["config"]["Entrypoint"] == ["/bin/tool"]
    layer = tmp_path / "layer.tar"
    layer.write_bytes(layer_bytes)
    with tarfile.open(layer) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["bin"].isdir()
    assert members["bin/tool"].mode == 0o755
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "tool"


def test_chart_with_e2e_values_uses_only_locally_built_images() -> None:
    script = (E2E / "local/build-images.sh").read_text()
    text = render(E2E / "local/values.yaml", set_values=("image.tag=0.1.0",))
    images = set()
    for doc in documents(text):
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            images.add(container["image"])
            assert container.get("imagePullPolicy") == "Never", container["name"]
    assert "cloudbucket-csi:0.1.0" in images
    for image in images - {"cloudbucket-csi:0.1.0"}:
        repo, tag = image.split(":")
        name = repo.removeprefix("cloudbucket-e2e.local/")
        assert repo.startswith("cloudbucket-e2e.local/") and f"$REPO/{name}:" in script, image
        assert tag == "e2e"
