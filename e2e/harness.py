"""What the e2e suite needs around the cluster: settings, the S3 server, the chart, pods.

The suite talks to whatever cluster `KUBECONFIG` names, through the `kubernetes` client,
and lets kubelet drive the driver. Everything specific to a kind of cluster comes from
environment variables, set by `make e2e-local` (e2e/local/) or `make e2e-kind` (e2e/kind/):

- `E2E_S3_ENDPOINT`: S3 URL as pods and the driver reach it; empty: the suite starts
  SeaweedFS itself on `E2E_S3_HOST` (default 10.100.0.1, the local cluster's node address).
- `E2E_S3_LOCAL_ENDPOINT`: the same server as the suite reaches it (default: the above).
- `E2E_S3_ACCESS_KEY`, `E2E_S3_SECRET_KEY`: its keys (default: the suite's own server's).
- `E2E_OIDC_ISSUER`, `E2E_OIDC_CA`: the apiserver's service-account issuer and the CA its
  TLS chains to, trusted by SeaweedFS's STS (default https://10.96.0.1, none).
- `E2E_HELM`, `E2E_CHART`, `E2E_VALUES` (comma-separated files): how the chart is installed
  (default `.cache/bin/helm`, `charts/cloudbucket-csi`, `e2e/local/values.yaml`).
- `E2E_RELEASE`, `E2E_DRIVER_NAMESPACE`: Helm release and namespace
  (default cloudbucket-csi, kube-system).
- `E2E_TEST_IMAGE`: workload image with a POSIX shell and busybox/coreutils
  (default cloudbucket-e2e.local/busybox:e2e).
- `E2E_NODE_EXEC`: command prefix that runs a command on the node (kind:
  `docker exec NODE`); empty: this machine is the node.
- `E2E_KUBELET_DIR`: kubelet's root directory on the node (default /var/lib/kubelet).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driver.devservers import SeaweedS3, find_binary, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
DRIVER = "cloudbucket.csi.io"
AUDIENCE = "sts.amazonaws.com"
# Case 5's role trusts exactly this service account (the namespace is fixed for that).
ROLE_NAMESPACE = "cbe2e-role"
ROLE_SERVICE_ACCOUNT = "bucket-user"
ROLE_NAME = "e2e-bucket-role"
ROLE_ARN = f"arn:aws:iam::000000000000:role/{ROLE_NAME}"
ROLE_BUCKET = "e2e-role-bucket"


def env(name: str, default: str = "") -> str:
    return os.environ.get(name) or default


@dataclass(frozen=True)
class Settings:
    s3_endpoint: str
    s3_local_endpoint: str
    access_key: str
    secret_key: str
    oidc_issuer: str
    helm: str
    chart: str
    values: list[str]
    release: str
    driver_namespace: str
    test_image: str
    node_exec: list[str]
    kubelet_dir: str
    kubectl: str
    node_state_dir: str

    @classmethod
    def from_env(cls, s3_endpoint: str = "", s3_local: str = "", access_key: str = "",
                 secret_key: str = "") -> Settings:
        endpoint = s3_endpoint or env("E2E_S3_ENDPOINT")
        values = env("E2E_VALUES", str(ROOT / "e2e/local/values.yaml"))
        return cls(
            s3_endpoint=endpoint,
            s3_local_endpoint=s3_local or env("E2E_S3_LOCAL_ENDPOINT", endpoint),
            access_key=access_key or env("E2E_S3_ACCESS_KEY"),
            secret_key=secret_key or env("E2E_S3_SECRET_KEY"),
            oidc_issuer=env("E2E_OIDC_ISSUER", "https://10.96.0.1"),
            helm=env("E2E_HELM", str(ROOT / ".cache/bin/helm")),
            chart=env("E2E_CHART", str(ROOT / "charts/cloudbucket-csi")),
            values=[v for v in values.split(",") if v],
            release=env("E2E_RELEASE", "cloudbucket-csi"),
            driver_namespace=env("E2E_DRIVER_NAMESPACE", "kube-system"),
            test_image=env("E2E_TEST_IMAGE", "cloudbucket-e2e.local/busybox:e2e"),
            node_exec=shlex.split(env("E2E_NODE_EXEC")),
            kubelet_dir=env("E2E_KUBELET_DIR", "/var/lib/kubelet"),
            kubectl=env("E2E_KUBECTL", str(ROOT / ".cache/bin/kubectl")),
            node_state_dir=env("E2E_NODE_STATE_DIR", "/var/lib/cloudbucket-csi"),  # node.stateDir
        )


def seaweed_iam_config(issuer: str) -> dict[str, Any]:
    """STS config: trust the cluster's service-account issuer for one role (case 5)."""
    sub = f"system:serviceaccount:{ROLE_NAMESPACE}:{ROLE_SERVICE_ACCOUNT}"
    resources = [f"arn:aws:s3:::{ROLE_BUCKET}", f"arn:aws:s3:::{ROLE_BUCKET}/*"]
    return {
        "sts": {"tokenDuration": "1h", "maxSessionLength": "12h", "issuer": "seaweedfs-sts",
                "signingKey": base64.b64encode(secrets.token_bytes(32)).decode()},
        "providers": [{"name": "cluster", "type": "oidc", "enabled": True,
                       "config": {"issuer": issuer, "clientId": AUDIENCE}}],
        "policy": {"defaultEffect": "Deny"},
        "roles": [{
            "roleName": ROLE_NAME, "roleArn": ROLE_ARN,
            "trustPolicy": {"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Federated": "cluster"},
                "Action": ["sts:AssumeRoleWithWebIdentity"],
                "Condition": {"StringEquals": {"oidc:sub": sub}},
            }]},
            "attachedPolicies": ["e2e-bucket-policy"],
        }],
        "policies": [{"name": "e2e-bucket-policy", "document": {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": resources}],
        }}],
    }


class NodeSeaweed(SeaweedS3):
    """SeaweedFS bound to an address pods can reach (the node address in the cluster's
    network namespace), with the STS trusting the apiserver's service-account issuer.
    `SSL_CERT_FILE` makes its Go TLS stack trust the cluster CA for the issuer's JWKS."""

    def __init__(self, host: str, ca_file: str = "", s3_port: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.host = host
        self.ca_file = ca_file
        self.s3_port = s3_port  # 0: any free port

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 90) -> NodeSeaweed:
        names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                 "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
                 "s3.port.iceberg", "admin.port.grpc", "s3.port.lance", "admin.port",
                 "webdav.port", "debug.port", "metricsPort")
        ports = {name: free_port() for name in names}
        if self.s3_port:
            ports["s3.port"] = self.s3_port
        self.port = ports["s3.port"]
        self._ports = list(ports.values())
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        args = [find_binary("weed"), "mini", f"-dir={data}", f"-ip={self.host}",
                f"-ip.bind={self.host}", "-admin.ui=false", "-webdav=false",
                "-master.telemetry=false", "-master.volumeSizeLimitMB=1024",
                f"-filer.localSocket={self.workdir}/filer.sock",
                f"-s3.localSocket={self.workdir}/s3.sock"]
        args += [f"-{name}={port}" for name, port in ports.items()]
        if self.iam_config is not None:
            iam_path = self.workdir / "iam.json"
            iam_path.write_text(json.dumps(self.iam_config))
            args.append(f"-s3.iam.config={iam_path}")
        run_env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key,
                   "AWS_SECRET_ACCESS_KEY": self.secret_key}
        if self.ca_file:
            run_env["SSL_CERT_FILE"] = self.ca_file
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                args, cwd=self.workdir, env=run_env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_until(self._ready, timeout, f"SeaweedFS S3 on {self.endpoint}")
        except BaseException:
            self.stop()
            raise
        return self


def s3_client(endpoint: str, access_key: str, secret_key: str):  # -> botocore S3 client
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3},
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"),
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---- the chart --------------------------------------------------------------------------

def helm(settings: Settings, *args: str, timeout: float = 600) -> str:
    cmd = [settings.helm, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return done.stdout


def helm_install(settings: Settings, *extra: str) -> None:
    """`helm upgrade --install` the chart with the e2e values and wait for its pods."""
    values = [arg for path in settings.values for arg in ("--values", path)]
    helm(settings, "upgrade", "--install", settings.release, settings.chart,
         "--namespace", settings.driver_namespace, *values, *extra, "--wait", "--timeout", "8m")


# ---- pods ---------------------------------------------------------------------------------

class Cluster:
    """The few Kubernetes operations the cases use, with waits on conditions."""

    def __init__(self, settings: Settings) -> None:
        from kubernetes import client, config

        config.load_kube_config()
        self.settings = settings
        self.core = client.CoreV1Api()
        self.storage = client.StorageV1Api()
        self.apps = client.AppsV1Api()
        self.rbac = client.RbacAuthorizationV1Api()

    # -- objects
    def create_namespace(self, name: str) -> None:
        self.core.create_namespace({"metadata": {"name": name}})
        # Pods need the namespace's default service account before they can be created.
        wait_until(lambda: self._exists(self.core.read_namespaced_service_account,
                                        "default", name), 60, f"service account in {name}")

    def delete_namespace(self, name: str, timeout: float = 180) -> None:
        from kubernetes.client.exceptions import ApiException

        with contextlib.suppress(ApiException):
            self.core.delete_namespace(name)
        wait_until(lambda: not self._exists(self.core.read_namespace, name), timeout,
                   f"namespace {name} deleted")

    @staticmethod
    def _exists(read: Callable[..., Any], *args: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            read(*args)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def secret(self, namespace: str, name: str, data: dict[str, str]) -> None:
        self.core.create_namespaced_secret(namespace, {
            "metadata": {"name": name}, "stringData": data})

    def static_pv(self, name: str, attributes: dict[str, str], *, secret: tuple[str, str] | None,
                  mount_options: list[str] | None = None, read_only: bool = False,
                  access_mode: str = "ReadWriteMany") -> None:
        csi: dict[str, Any] = {"driver": DRIVER, "volumeHandle": name,
                               "volumeAttributes": attributes}
        if read_only:
            csi["readOnly"] = True
        if secret:
            csi["nodePublishSecretRef"] = {"namespace": secret[0], "name": secret[1]}
        self.core.create_persistent_volume({
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": [access_mode],
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                     "mountOptions": mount_options or [], "csi": csi},
        })

    def pvc(self, namespace: str, name: str, *, volume_name: str = "",
            storage_class: str = "", access_mode: str = "ReadWriteMany") -> None:
        spec: dict[str, Any] = {"accessModes": [access_mode], "storageClassName": storage_class,
                                "resources": {"requests": {"storage": "1Gi"}}}
        if volume_name:
            spec["volumeName"] = volume_name
        self.core.create_namespaced_persistent_volume_claim(namespace, {
            "metadata": {"name": name}, "spec": spec})

    def pod(self, namespace: str, name: str, volume: dict[str, Any], *,
            command: str = "sleep 3600", service_account: str = "",
            read_only_mount: bool = False) -> None:
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "app", "image": self.settings.test_image, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", command],
                "volumeMounts": [{"name": "data", "mountPath": "/data",
                                  "readOnly": read_only_mount}],
            }],
            "volumes": [{"name": "data", **volume}],
        }
        if service_account:
            spec["serviceAccountName"] = service_account
        self.core.create_namespaced_pod(namespace, {"metadata": {"name": name}, "spec": spec})

    # -- waits
    def wait_running(self, namespace: str, name: str, timeout: float = 180) -> Any:
        def running() -> bool:
            pod = self.core.read_namespaced_pod(name, namespace)
            if pod.status.phase in ("Failed", "Succeeded"):
                raise AssertionError(f"pod {namespace}/{name} ended: {pod.status.phase}")
            return pod.status.phase == "Running"

        try:
            wait_until(running, timeout, f"pod {namespace}/{name} Running")
        except TimeoutError:
            raise AssertionError(f"pod {namespace}/{name} not Running; events: "
                                 f"{self.event_messages(namespace, name)}") from None
        return self.core.read_namespaced_pod(name, namespace)

    def delete_pod(self, namespace: str, name: str, timeout: float = 120) -> None:
        self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=1)
        wait_until(lambda: not self._exists(self.core.read_namespaced_pod, name, namespace),
                   timeout, f"pod {namespace}/{name} deleted")

    def event_messages(self, namespace: str, name: str) -> list[str]:
        events = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name}")
        return [f"{e.reason}: {e.message}" for e in events.items]

    def pod_logs(self, namespace: str, name: str) -> str:
        return self.core.read_namespaced_pod_log(name, namespace)

    def exec(self, namespace: str, name: str, script: str, timeout: float = 120) -> tuple[int, str]:
        """Run `sh -c script` in the pod; (exit code, stdout+stderr)."""
        from kubernetes.stream import stream

        resp = stream(self.core.connect_get_namespaced_pod_exec, name, namespace,
                      command=["sh", "-c", script], stderr=True, stdout=True, stdin=False,
                      tty=False, _preload_content=False)
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            if resp.peek_stdout():
                out.append(resp.read_stdout())
            if resp.peek_stderr():
                out.append(resp.read_stderr())
            if not resp.is_open():
                break
            if time.monotonic() > deadline:
                resp.close()
                raise TimeoutError(f"exec in {namespace}/{name} took over {timeout}s: {script}")
            resp.update(timeout=1)
        resp.close()
        code = resp.returncode
        return (code if code is not None else -1), "".join(out)

    def driver_pods(self, component: str) -> list[Any]:
        pods = self.core.list_namespaced_pod(
            self.settings.driver_namespace,
            label_selector=f"app.kubernetes.io/instance={self.settings.release}")
        return [p for p in pods.items if p.metadata.name.startswith(
            f"{self.settings.release}-{component}")]


# ---- the node -----------------------------------------------------------------------------

def node_run(settings: Settings, *cmd: str) -> str:
    done = subprocess.run([*settings.node_exec, *cmd], capture_output=True, text=True, timeout=60)
    return done.stdout


def node_mounts(settings: Settings) -> list[tuple[str, str]]:
    """(mount point, fs type) of every FUSE mount under kubelet's directory on the node."""
    out = node_run(settings, "cat", "/proc/self/mountinfo")
    found = []
    for line in out.splitlines():
        fields = line.split()
        sep = fields.index("-")
        point, fstype = fields[4], fields[sep + 1]
        if point.startswith(settings.kubelet_dir) and fstype.startswith("fuse"):
            found.append((point, fstype))
    return found


def kubectl_events(settings: Settings, namespace: str, name: str) -> list[str]:
    """`kubectl get events` of one object, as an operator reads them: "Reason: message"."""
    done = subprocess.run(
        [settings.kubectl, "get", "events", "--namespace", namespace,
         "--field-selector", f"involvedObject.name={name}",
         "--output", 'jsonpath={range .items[*]}{.reason}{": "}{.message}{"\\n"}{end}'],
        capture_output=True, text=True, timeout=60, check=True)
    return [line for line in done.stdout.splitlines() if line]


def node_fuse_server_pid(settings: Settings, pod_uid: str) -> int | None:
    """The node's PID of the FUSE server serving a pod's volume.

    The supervisor's record names the server by its PID in the mounter container's PID
    namespace, which is not the node's: the server is the zygote child whose innermost PID
    (NSpid's last field) and UID are the record's."""
    records = f"{settings.node_state_dir}/supervisor/records"
    out = node_run(settings, "sh", "-c",
                   f"for f in {records}/*.json; do tr -d '\\n' < \"$f\"; echo; done")
    for line in out.splitlines():
        with contextlib.suppress(ValueError, KeyError):
            record = json.loads(line)
            if f"/pods/{pod_uid}/" in record.get("target", ""):
                for pid, (uid, inner, _) in _node_fuse_servers(settings).items():
                    if (uid, inner) == (int(record["uid"]), int(record["pid"])):
                        return pid
    return None


def _node_fuse_servers(settings: Settings) -> dict[int, tuple[int, int, str]]:
    """node PID -> (UID, PID in its innermost namespace, command line) of each process forked
    from the supervisor's zygote (they carry its command line) that runs as a UID of the
    reserved range (the zygote itself is root)."""
    out = node_run(settings, "sh", "-c",
                   "for d in /proc/[0-9]*; do s=$d/status; "
                   "u=$(awk '/^Uid:/{print $2}' $s 2>/dev/null); "
                   "n=$(awk '/^NSpid:/{print $NF}' $s 2>/dev/null); "
                   "c=$(tr '\\0' ' ' < $d/cmdline 2>/dev/null); "
                   "echo \"${d#/proc/} $u $n $c\"; done")
    servers = {}
    for line in out.splitlines():
        fields = line.split(" ", 3)
        if len(fields) == 4 and all(f.isdigit() for f in fields[:3]) and \
                "driver.mounts.zygote" in fields[3] and 65536 <= int(fields[1]) < 131072:
            servers[int(fields[0])] = (int(fields[1]), int(fields[2]), fields[3])
    return servers


def node_fuse_servers(settings: Settings) -> dict[int, str]:
    """The FUSE servers on the node: node PID -> command line."""
    return {pid: cmdline for pid, (_, _, cmdline) in _node_fuse_servers(settings).items()}


@contextlib.contextmanager
def namespace(cluster: Cluster, name: str) -> Iterator[str]:
    cluster.create_namespace(name)
    try:
        yield name
    finally:
        cluster.delete_namespace(name)
