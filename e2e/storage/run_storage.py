"""Run the Kubernetes storage e2e suites (External Storage) against the local cluster.

Inside the cluster's network namespace (`e2e/local/cluster.sh exec`): starts SeaweedFS on
10.100.0.1:8333 (the address e2e/storage/storageclass.yaml names) with the bucket and the
kube-system Secret the StorageClass uses, installs the chart, gives the suites' images
(busybox, pause) from the local busybox/pause images (and agnhost, when
`build-k8s.sh` built it), and runs `e2e-storage.test` with
`-storage.testdriver=e2e/storage/testdriver.yaml`. Usage:
`python -m e2e.storage.run_storage BINARY [extra ginkgo flags...]`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from e2e import harness
from e2e.harness import Cluster, NodeSeaweed, Settings
from e2e.local.docker_archive import write_archive

CTR = ["ctr", "--address", "/run/cbe2e-containerd/containerd.sock", "-n", "k8s.io"]
# Images the storage suites start their pods with (test/utils/image/manifest.go, v1.33).
ALIASES = {
    "registry.k8s.io/e2e-test-images/busybox:1.36.1-1": "cloudbucket-e2e.local/busybox:e2e",
    "registry.k8s.io/pause:3.10": "cloudbucket-e2e.local/pause:3.10",
    # multiVolume runs its shell commands in jessie-dnsutils; busybox has what they use
    # (added after the recorded run, which lacked it: not yet proven).
    "registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7": "cloudbucket-e2e.local/busybox:e2e",
}


def agnhost_image(binary: Path) -> None:
    """registry.k8s.io/e2e-test-images/agnhost:2.53 from an agnhost built from
    k8s.io/kubernetes/test/images/agnhost, with busybox for the suites' `sh -c`."""
    busybox = Path("/bin/busybox")
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    links = {f"/bin/{a}": "busybox" for a in applets if a != "busybox"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "agnhost.tar"
        write_archive(out, "registry.k8s.io/e2e-test-images/agnhost:2.53",
                      {"/agnhost": binary, "/bin/busybox": busybox}, ["/agnhost"], links)
        subprocess.run([*CTR, "images", "import", str(out)], check=True, capture_output=True)


def main() -> int:
    binary, extra = sys.argv[1], sys.argv[2:]
    agnhost = Path(binary).parent / "agnhost"
    if agnhost.exists():
        agnhost_image(agnhost)
    for alias, source in ALIASES.items():
        subprocess.run([*CTR, "images", "tag", "--force", source, alias], check=True,
                       capture_output=True)
    server = NodeSeaweed(host="10.100.0.1", s3_port=8333)
    server.start()
    try:
        settings = Settings.from_env(server.endpoint, server.endpoint, server.access_key,
                                     server.secret_key)
        server.client().create_bucket(Bucket="e2e-storage")
        cluster = Cluster(settings)
        cluster.core.create_namespaced_secret("kube-system", {
            "metadata": {"name": "e2e-storage-keys"},
            "stringData": {"AWS_ACCESS_KEY_ID": server.access_key,
                           "AWS_SECRET_ACCESS_KEY": server.secret_key}})
        # The suites' inline volumes carry no Secret: give the driver an identity of its own.
        harness.helm_install(
            settings,
            "--set", "extraEnv[0].name=AWS_ACCESS_KEY_ID",
            "--set-string", f"extraEnv[0].value={server.access_key}",
            "--set", "extraEnv[1].name=AWS_SECRET_ACCESS_KEY",
            "--set-string", f"extraEnv[1].value={server.secret_key}")
        cmd = [binary, f"-kubeconfig={os.environ['KUBECONFIG']}",
               f"-storage.testdriver={harness.ROOT / 'e2e/storage/testdriver.yaml'}",
               "-ginkgo.focus=External.Storage", "-ginkgo.no-color", "-ginkgo.timeout=40m",
               f"-repo-root={harness.ROOT}", "-provider=local",
               f"-report-dir={harness.ROOT / '.cache/e2e/storage-report'}", *extra]
        return subprocess.run(cmd, cwd=harness.ROOT).returncode
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
