"""The Helm chart, the plain manifests in deploy/ and the examples, checked offline.

helm lint; helm template with default values and with every option on; kubernetes-validate
--strict (the API's own OpenAPI schemas, unknown fields refused) on every rendered object and
every example; the CSIDriver fields; the node DaemonSet's kubelet mount with Bidirectional
propagation; no privileged container without a written reason; deploy/ equal to a fresh
render; and every example's volume accepted by the driver's own parser (driver.volume).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from driver.volume import (
    KUBE_PREFIX,
    STS_AUDIENCE,
    TOKENS_KEY,
    VolumeError,
    parse_secrets,
    volume_spec,
)
from tests.unit.chart_render import (
    ALL_ON_VALUES,
    CHART,
    DEPLOY_FILE,
    NAMESPACE,
    ROOT,
    deploy_manifest,
    documents,
    helm,
    render,
)

# Validate against the oldest Kubernetes the chart claims (Chart.yaml kubeVersion) and a
# current one; kubernetes-validate ships both schemas, so this runs offline.
KUBE_VERSIONS = ("1.26.0", "1.33.0")
DRIVER = "cloudbucket.csi.io"
REASON = "cloudbucket.csi.io/privileged-reason."
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return documents(render())


@pytest.fixture(scope="module")
def all_on_docs() -> list[dict[str, Any]]:
    return documents(render(ALL_ON_VALUES))


def find(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind
               and d["metadata"]["name"].endswith(name_suffix)]
    assert len(matches) == 1, f"{kind} *{name_suffix}: {[d['metadata']['name'] for d in matches]}"
    return matches[0]


def containers(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod metadata, pod spec) of a Pod or of a workload's template."""
    if doc["kind"] == "Pod":
        yield doc["metadata"], doc["spec"]
    elif doc["kind"] in ("DaemonSet", "Deployment", "StatefulSet", "Job"):
        yield doc["spec"]["template"]["metadata"], doc["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


# ----------------------------------------------------------------- lint, render, validate

@pytest.mark.parametrize("values", [None, ALL_ON_VALUES], ids=["default", "all-on"])
def test_helm_lint(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["--values", str(values)] if values else [])
    result = helm(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def _validate(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_rendered_object_passes_strict_validation(
        default_docs: list[dict[str, Any]], all_on_docs: list[dict[str, Any]],
        version: str) -> None:
    for doc in default_docs + all_on_docs:
        if doc["kind"] != "ServiceMonitor":  # a CRD: checked in test_service_monitor
            _validate(doc, version)
    kinds = {d["kind"] for d in all_on_docs}
    assert kinds == {"CSIDriver", "DaemonSet", "Deployment", "ServiceAccount", "ClusterRole",
                     "ClusterRoleBinding", "Role", "RoleBinding", "StorageClass", "ConfigMap",
                     "Service", "ServiceMonitor"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_passes_strict_validation(example: Path) -> None:
    docs = documents(example.read_text())
    assert docs
    for doc in docs:
        for version in KUBE_VERSIONS:
            _validate(doc, version)


def test_strict_validation_is_not_a_no_op(default_docs: list[dict[str, Any]]) -> None:
    broken = copy.deepcopy(find(default_docs, "DaemonSet", "-node"))
    broken["spec"]["template"]["spec"]["containers"][0]["mountPropagaton"] = "typo"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(broken, KUBE_VERSIONS[-1])
    csidriver = copy.deepcopy(find(default_docs, "CSIDriver"))
    csidriver["spec"]["fsGroupPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(csidriver, KUBE_VERSIONS[-1])


def test_deploy_matches_a_fresh_render() -> None:
    committed = (ROOT / "deploy" / DEPLOY_FILE).read_text()
    assert committed == deploy_manifest(), "deploy/ is stale: run `make manifests`"


def test_notes_show_a_static_example_that_validates() -> None:
    result = helm("install", "cloudbucket-csi", str(CHART), "--namespace", NAMESPACE,
                  "--dry-run=client")
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    start = notes.index("  apiVersion: v1\n  kind: PersistentVolume")
    block = notes[start:notes.index("\nMore examples")]
    docs = documents("\n".join(line[2:] for line in block.splitlines()))
    assert [d["kind"] for d in docs] == ["PersistentVolume", "PersistentVolumeClaim", "Pod"]
    for doc in docs:
        _validate(doc, KUBE_VERSIONS[-1])
    check_volumes_parse(docs)


# ------------------------------------------------------------------------ what the issue asks

def test_csidriver_fields(default_docs: list[dict[str, Any]]) -> None:
    spec = find(default_docs, "CSIDriver")["spec"]
    assert find(default_docs, "CSIDriver")["metadata"]["name"] == DRIVER
    assert spec["attachRequired"] is False
    assert spec["podInfoOnMount"] is True
    assert spec["requiresRepublish"] is True
    assert spec["tokenRequests"] == [{"audience": "sts.amazonaws.com"}]
    assert spec["volumeLifecycleModes"] == ["Persistent", "Ephemeral"]
    # None: ownership comes from mount options; kubelet must not chown a bucket.
    assert spec["fsGroupPolicy"] == "None"


def test_node_daemonset(default_docs: list[dict[str, Any]]) -> None:
    node = find(default_docs, "DaemonSet", "-node")
    pod = node["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    driver = containers(node)["cloudbucket-csi"]
    assert driver["args"][:2] == ["serve", "--mode=node"]
    mounts = {m["mountPath"]: m for m in driver["volumeMounts"]}
    kubelet = mounts["/var/lib/kubelet"]
    assert kubelet["mountPropagation"] == "Bidirectional"
    assert volumes[kubelet["name"]]["hostPath"]["path"] == "/var/lib/kubelet"
    assert volumes[mounts["/dev/fuse"]["name"]]["hostPath"] == {"path": "/dev/fuse",
                                                               "type": "CharDevice"}
    assert "SYS_ADMIN" in driver["securityContext"]["capabilities"]["add"]
    # The registration socket: the registrar tells kubelet where the driver's socket is.
    registrar = containers(node)["node-driver-registrar"]
    assert "--kubelet-registration-path=/var/lib/kubelet/plugins/cloudbucket.csi.io/csi.sock" \
        in registrar["args"]
    reg_mount = {m["mountPath"]: m["name"] for m in registrar["volumeMounts"]}["/registration"]
    assert volumes[reg_mount]["hostPath"]["path"] == "/var/lib/kubelet/plugins_registry"
    plugin_dir = {m["mountPath"]: m["name"] for m in driver["volumeMounts"]}["/csi"]
    assert volumes[plugin_dir]["hostPath"]["path"] == "/var/lib/kubelet/plugins/cloudbucket.csi.io"
    liveness = containers(node)["liveness-probe"]
    assert "--csi-address=/csi/csi.sock" in liveness["args"]
    assert driver["livenessProbe"]["httpGet"]["port"] == "healthz"
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]


def test_controller_deployment(default_docs: list[dict[str, Any]]) -> None:
    controller = find(default_docs, "Deployment", "-controller")
    by_name = containers(controller)
    assert by_name["cloudbucket-csi"]["args"][:2] == ["serve", "--mode=controller"]
    assert "csi-provisioner" in by_name
    pod = controller["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in by_name.values():
        assert not container.get("securityContext", {}).get("privileged")
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("source", ["default", "all-on", "deploy", "examples"])
def test_no_privileged_container_without_a_written_reason(
        source: str, default_docs: list[dict[str, Any]],
        all_on_docs: list[dict[str, Any]]) -> None:
    docs = {"default": default_docs, "all-on": all_on_docs,
            "deploy": documents((ROOT / "deploy" / DEPLOY_FILE).read_text()),
            "examples": [d for p in EXAMPLES for d in documents(p.read_text())]}[source]
    privileged_seen = 0
    for doc in docs:
        for metadata, spec in pod_specs(doc):
            annotations = metadata.get("annotations") or {}
            for container in spec["containers"] + spec.get("initContainers", []):
                security = container.get("securityContext") or {}
                if security.get("privileged"):
                    privileged_seen += 1
                    reason = annotations.get(REASON + container["name"], "")
                    assert len(reason.split()) >= 10, \
                        f"{doc['metadata']['name']}/{container['name']} is privileged without " \
                        f"a written reason (annotation {REASON}{container['name']})"
                    # The capabilities it really uses are on record too.
                    assert security["capabilities"]["add"], container["name"]
                for mount in container.get("volumeMounts", []):
                    if mount.get("mountPropagation") == "Bidirectional":
                        # The API server refuses Bidirectional outside privileged containers.
                        assert security.get("privileged"), container["name"]
    assert privileged_seen == (0 if source == "examples" else 2)  # node plugin + mounter


def test_mount_survival_objects(default_docs: list[dict[str, Any]]) -> None:
    node = find(default_docs, "DaemonSet", "-node")
    mounter = find(default_docs, "DaemonSet", "-mounter")
    # helm upgrade never restarts the mounter; the node plugin rolls freely.
    assert mounter["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert node["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    container = containers(mounter)["mounter"]
    assert container["command"] == ["cloudbucket-csi", "supervisor"]
    socket_arg = next(a for a in container["args"] if a.startswith("--socket="))
    assert env_of(containers(node)["cloudbucket-csi"])["CLOUDBUCKET_MOUNTER_SOCKET"] == \
        socket_arg.split("=", 1)[1]
    # Both see the socket through the same host directory, and the kubelet directory.
    for workload, name in ((node, "cloudbucket-csi"), (mounter, "mounter")):
        paths = {m["mountPath"] for m in containers(workload)[name]["volumeMounts"]}
        assert {"/var/lib/cloudbucket-csi", "/var/lib/kubelet"} <= paths
    assert "--allowed-root=/var/lib/kubelet" in container["args"]
    # Same identity: FUSE servers in the mounter use the driver's service account (IRSA).
    assert mounter["spec"]["template"]["spec"]["serviceAccountName"] == \
        node["spec"]["template"]["spec"]["serviceAccountName"]


def test_node_cache_host_path_reaches_node_plugin_and_mounter(
        default_docs: list[dict[str, Any]]) -> None:
    root = "/var/lib/cloudbucket-csi-cache"
    for kind_suffix, name in (("-node", "cloudbucket-csi"), ("-mounter", "mounter")):
        workload = find(default_docs, "DaemonSet", kind_suffix)
        container = containers(workload)[name]
        env = env_of(container)
        assert env["CLOUDBUCKET_CACHE_ROOT"] == root
        assert int(env["CLOUDBUCKET_CACHE_DEFAULT_MAX_SIZE_MIB"]) == 10240
        assert float(env["CLOUDBUCKET_CACHE_RETENTION_SECONDS"]) == 3600
        mount = {m["mountPath"]: m for m in container["volumeMounts"]}[root]
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        assert volumes[mount["name"]]["hostPath"] == {"path": root, "type": "DirectoryOrCreate"}
    # What the node plugin makes of that environment.
    from driver.volume import CacheSettings

    settings = CacheSettings.from_env(env_of(containers(find(
        default_docs, "DaemonSet", "-node"))["cloudbucket-csi"]))
    assert settings.root == root and settings.default_max_size_mib == 10240


def test_node_cache_can_be_switched_off() -> None:
    docs = documents(render(set_values=("node.cacheHostPath=",)))
    for kind_suffix, name in (("-node", "cloudbucket-csi"), ("-mounter", "mounter")):
        workload = find(docs, "DaemonSet", kind_suffix)
        assert "CLOUDBUCKET_CACHE_ROOT" not in env_of(containers(workload)[name])
        assert "cache-dir" not in {v["name"] for v in
                                   workload["spec"]["template"]["spec"]["volumes"]}


def test_mounter_can_be_switched_off() -> None:
    docs = documents(render(set_values=("mounter.enabled=false",)))
    assert not [d for d in docs if d["metadata"]["name"].endswith("-mounter")]
    node = find(docs, "DaemonSet", "-node")
    assert "CLOUDBUCKET_MOUNTER_SOCKET" not in env_of(containers(node)["cloudbucket-csi"])


def test_rbac_is_least_privilege(default_docs: list[dict[str, Any]]) -> None:
    role = find(default_docs, "ClusterRole", "-provisioner")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
    secrets = [r for r in role["rules"] if "secrets" in r["resources"]]
    assert secrets == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    lease_role = find(default_docs, "Role", "-leader-election")
    assert lease_role["metadata"]["namespace"] == NAMESPACE
    assert [r["resources"] for r in lease_role["rules"]] == [["leases"]]
    # The node plugin and mounter read no API object (kubelet hands them secrets and
    # tokens); the node plugin may only create and patch Events (on pods, any namespace).
    node_sa = find(default_docs, "DaemonSet", "-node")["spec"]["template"]["spec"][
        "serviceAccountName"]
    node_bindings = [d for d in default_docs if d["kind"].endswith("Binding")
                     and node_sa in [s["name"] for s in d["subjects"]]]
    assert [b["roleRef"]["name"] for b in node_bindings] == ["cloudbucket-csi-node-events"]
    assert node_bindings[0]["kind"] == "ClusterRoleBinding"
    events_role = find(default_docs, "ClusterRole", "-node-events")
    assert events_role["rules"] == [{"apiGroups": [""], "resources": ["events"],
                                     "verbs": ["create", "patch"]}]
    no_events = documents(render(set_values=("events.enabled=false",)))
    assert not [d for d in no_events if d["metadata"]["name"].endswith("-node-events")]
    no_secrets = documents(render(set_values=("controller.readSecrets=false",)))
    rules = find(no_secrets, "ClusterRole", "-provisioner")["rules"]
    assert not [r for r in rules if "secrets" in r["resources"]]


def test_values_reach_the_objects(all_on_docs: list[dict[str, Any]]) -> None:
    accounts = {d["metadata"]["name"]: d for d in all_on_docs if d["kind"] == "ServiceAccount"}
    assert accounts["cloudbucket-csi-node"]["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/cloudbucket-csi-node"}
    assert "eks.amazonaws.com/role-arn" in accounts["cloudbucket-csi-controller"]["metadata"][
        "annotations"]
    driver_containers = [
        containers(find(all_on_docs, "DaemonSet", "-node"))["cloudbucket-csi"],
        containers(find(all_on_docs, "DaemonSet", "-mounter"))["mounter"],
        containers(find(all_on_docs, "Deployment", "-controller"))["cloudbucket-csi"],
    ]
    for container in driver_containers:
        env = env_of(container)
        assert env["CLOUDBUCKET_LOG_LEVEL"] == "debug"
        assert env["CLOUDBUCKET_LOG_FORMAT"] == "text"
        assert env["HTTPS_PROXY"] == "http://proxy.example.internal:3128"
        assert env["NO_PROXY"].startswith("169.254.169.254")
        assert env["AWS_STS_REGIONAL_ENDPOINTS"] == "regional"
        assert env["AWS_CA_BUNDLE"] == "/etc/cloudbucket-csi/ca/ca.crt"
        assert "/etc/cloudbucket-csi/ca" in {m["mountPath"] for m in container["volumeMounts"]}
    ca = find(all_on_docs, "ConfigMap", "-ca")
    assert "BEGIN CERTIFICATE" in ca["data"]["ca.crt"]
    node_pod = find(all_on_docs, "DaemonSet", "-node")["spec"]["template"]["spec"]
    assert node_pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert node_pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    controller = find(all_on_docs, "Deployment", "-controller")
    assert controller["spec"]["replicas"] == 2
    assert controller["spec"]["template"]["spec"]["priorityClassName"] == \
        "system-cluster-critical"
    storage_class = find(all_on_docs, "StorageClass")
    assert storage_class["provisioner"] == DRIVER
    assert storage_class["parameters"]["csi.storage.k8s.io/node-publish-secret-name"] == \
        "bucket-creds"
    assert storage_class["metadata"]["annotations"][
        "storageclass.kubernetes.io/is-default-class"] == "true"
    check_volumes_parse([storage_class])


def test_storage_class_needs_a_bucket() -> None:
    with pytest.raises(RuntimeError, match="bucketName is required"):
        render(set_values=("storageClass.create=true",))


def test_default_render_has_no_storage_class_or_ca(default_docs: list[dict[str, Any]]) -> None:
    assert {"StorageClass", "ConfigMap"}.isdisjoint({d["kind"] for d in default_docs})


# ------------------------------------------------------- examples against the driver's parser

def check_volumes_parse(docs: list[dict[str, Any]]) -> int:
    """Run every PV, inline volume and StorageClass through driver.volume; count them."""
    secrets = {(d["metadata"]["name"], d["metadata"].get("namespace", "default")):
               d.get("stringData", {}) for d in docs if d["kind"] == "Secret"}
    checked = 0

    def parse(attributes: dict[str, str], flags: list[str], secret_ref: dict[str, str] | None,
              readonly: bool, namespace: str = "default") -> None:
        nonlocal checked
        attributes = {k: v for k, v in attributes.items() if not k.startswith(KUBE_PREFIX)}
        secret_values = None
        if secret_ref:
            key = (secret_ref["name"], secret_ref.get("namespace", namespace))
            secret_values = secrets.get(key, {"AWS_ACCESS_KEY_ID": "id",
                                              "AWS_SECRET_ACCESS_KEY": "secret"})
            parse_secrets(secret_values, attributes.get("provider", "s3"))
        if "roleArn" in attributes:
            # What kubelet adds for the CSIDriver's tokenRequests (audience sts.amazonaws.com).
            attributes[TOKENS_KEY] = json.dumps(
                {STS_AUDIENCE: {"token": "header.payload.signature",
                                "expirationTimestamp": "2030-01-01T00:00:00Z"}})
        spec = volume_spec(attributes, flags, secret_values, readonly)
        if "roleArn" in attributes:
            assert spec.credentials.kind == "web_identity"
        elif secret_values:
            assert spec.credentials.kind in ("static", "gcs_service_account")
        checked += 1

    for doc in docs:
        if doc["kind"] == "PersistentVolume":
            csi = doc["spec"]["csi"]
            assert csi["driver"] == DRIVER
            parse(csi["volumeAttributes"], doc["spec"].get("mountOptions", []),
                  csi.get("nodePublishSecretRef"), csi.get("readOnly", False))
        elif doc["kind"] == "StorageClass":
            params = doc["parameters"]
            ref = None
            if "csi.storage.k8s.io/node-publish-secret-name" in params:
                ref = {"name": params["csi.storage.k8s.io/node-publish-secret-name"],
                       "namespace": params["csi.storage.k8s.io/node-publish-secret-namespace"]}
            parse(params, doc.get("mountOptions", []), ref, False)
        for metadata, spec in pod_specs(doc):
            for volume in spec.get("volumes", []):
                if "csi" in volume:
                    csi = volume["csi"]
                    assert csi["driver"] == DRIVER
                    parse(csi.get("volumeAttributes", {}), [], csi.get("nodePublishSecretRef"),
                          csi.get("readOnly", False), metadata.get("namespace", "default"))
    return checked


def test_examples_are_accepted_by_the_driver() -> None:
    all_docs = []
    for path in EXAMPLES:
        docs = documents(path.read_text())
        assert check_volumes_parse(docs) >= 1, path.name
        all_docs += docs
    text = "\n".join(p.read_text() for p in EXAMPLES)
    # What the issue lists: S3, R2, GCS-HMAC and native GCS; Secret, roleArn, read-only,
    # prefix; a StorageClass; an inline ephemeral volume.
    for needle in ("r2.cloudflarestorage.com", "storage.googleapis.com", "provider: gcs",
                   "GOOGLE_ACCESS_KEY_ID", "roleArn:", 'readOnly: "true"', "keyPrefix:",
                   "nodePublishSecretRef", "kind: StorageClass", "cache: node"):
        assert needle in text, needle
    assert any("csi" in v for d in all_docs if d["kind"] == "Pod" for v in d["spec"]["volumes"])


def test_driver_parser_rejects_a_broken_example() -> None:
    docs = documents((ROOT / "examples" / "static-s3-readonly-prefix.yaml").read_text())
    pv = find(docs, "PersistentVolume")
    pv["spec"]["csi"]["volumeAttributes"]["keyPrefix"] = "no-trailing-slash"
    with pytest.raises(VolumeError, match="keyPrefix"):
        check_volumes_parse([pv])


# ----------------------------------------------------------------- metrics and dashboard

def _metric_names() -> set[str]:
    """Every sample name the driver can expose (driver/metrics.py defines them once)."""
    from driver import metrics

    names = {metrics.MOUNTS_NAME, metrics.SCRAPE_UP_NAME}
    for registry in (metrics.FUSE_REGISTRY, metrics.PLUGIN_REGISTRY):
        for family in registry.collect():
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
            if family.type == "counter":
                names.add(family.name + "_total")
            if family.type == "histogram":
                names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def test_metrics_ports_and_services(default_docs: list[dict[str, Any]]) -> None:
    for workload, component, port in (("DaemonSet", "node", 9809),
                                      ("Deployment", "controller", 9810)):
        container = containers(find(default_docs, workload, f"-{component}"))["cloudbucket-csi"]
        assert f"--metrics-address=0.0.0.0:{port}" in container["args"]
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in \
            container["ports"]
        service = find(default_docs, "Service", f"-{component}-metrics")
        assert service["spec"]["clusterIP"] == "None"  # each pod scraped by itself
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == component
        assert service["spec"]["ports"] == [{"name": "metrics", "port": port,
                                             "targetPort": "metrics", "protocol": "TCP"}]
        pod_labels = find(default_docs, workload, f"-{component}")["spec"]["template"][
            "metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
    # Off by default: the ServiceMonitor (needs prometheus-operator) and the dashboard.
    assert not [d for d in default_docs if d["kind"] == "ServiceMonitor"]
    assert not [d for d in default_docs if d["metadata"]["name"].endswith("-dashboard")]
    off = documents(render(set_values=("metrics.enabled=false",)))
    assert not [d for d in off if d["kind"] == "Service"]
    for doc in off:
        for _, spec in pod_specs(doc):
            for container in spec["containers"]:
                assert not any("--metrics-address" in a for a in container.get("args", []))
    moved = documents(render(set_values=("metrics.nodePort=19000",)))
    node = containers(find(moved, "DaemonSet", "-node"))["cloudbucket-csi"]
    assert "--metrics-address=0.0.0.0:19000" in node["args"]


def test_service_monitor(all_on_docs: list[dict[str, Any]]) -> None:
    monitor = find(all_on_docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert set(monitor["spec"]) == {"selector", "namespaceSelector", "endpoints"}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert set(endpoint) == {"port", "path", "interval", "scrapeTimeout", "honorLabels"}
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "30s" and endpoint["honorLabels"] is True
    selected = [d for d in all_on_docs if d["kind"] == "Service" and
                monitor["spec"]["selector"]["matchLabels"].items()
                <= d["metadata"]["labels"].items()]
    assert sorted(d["metadata"]["name"] for d in selected) == [
        "cloudbucket-csi-controller-metrics", "cloudbucket-csi-node-metrics"]
    for service in selected:
        assert "metrics" in [port["name"] for port in service["spec"]["ports"]]


def test_dashboard_renders_and_graphs_only_real_metrics(
        all_on_docs: list[dict[str, Any]]) -> None:
    import re

    config_map = find(all_on_docs, "ConfigMap", "-dashboard")
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["cloudbucket-csi.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "cloudbucket-csi.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("throughput", "latency", "errors", "memory", "cache", "requests"):
        assert topic in titles
    known = _metric_names()
    used = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used.update(re.findall(r"\b(?:cloudbucket|process)_[a-z_]+", target["expr"]))
    unknown = used - known
    assert not unknown, f"the dashboard graphs metrics the driver does not expose: {unknown}"
    assert len(used) >= 20
