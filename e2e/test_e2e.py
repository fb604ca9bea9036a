"""The e2e cases (1-10 of issue 8, 11 of issue 15): kubelet drives the driver, each case
asserts on what the pod sees, what the bucket holds, and what an operator sees."""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from driver.devservers import wait_until
from e2e import harness
from e2e.harness import Cluster, Settings


@pytest.fixture
def pvs(cluster: Cluster) -> Iterator[list[str]]:
    """Names of PVs a case creates; deleted afterwards (static PVs are Retain)."""
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(ApiException):  # already gone
            cluster.core.delete_persistent_volume(name)


def static_volume(cluster: Cluster, settings: Settings, ns: str, pvs: list[str], bucket: str,
                  secret: tuple[str, str] | None, *, attributes: dict[str, str] | None = None,
                  mount_options: list[str] | None = None,
                  read_only: bool = False) -> dict[str, Any]:
    """A static PV + bound PVC; returns the pod volume that uses the claim."""
    pv = harness.unique("cbe2e-pv")
    attrs = {"bucketName": bucket, "endpointUrl": settings.s3_endpoint, **(attributes or {})}
    cluster.static_pv(pv, attrs, secret=secret, mount_options=mount_options, read_only=read_only)
    pvs.append(pv)
    cluster.pvc(ns, "claim", volume_name=pv)
    return {"persistentVolumeClaim": {"claimName": "claim"}}


def write_read(cluster: Cluster, ns: str, pod: str, path: str, data: str) -> str:
    code, out = cluster.exec(ns, pod, f"printf '%s' '{data}' > {path} && cat {path}")
    assert code == 0, out
    return out


# 1 -----------------------------------------------------------------------------------------
def test_static_pv_write_read_reaches_bucket(cluster, settings, s3, ns, bucket, keys_secret, pvs):
    volume = static_volume(cluster, settings, ns, pvs, bucket, keys_secret)
    cluster.pod(ns, "app", volume)
    cluster.wait_running(ns, "app")

    data = "hello from a pod " + harness.unique("x")
    assert write_read(cluster, ns, "app", "/data/hello.txt", data) == data
    assert s3.get_object(Bucket=bucket, Key="hello.txt")["Body"].read() == data.encode()
    # ...and the other way: an object put in the bucket is seen by the pod.
    s3.put_object(Bucket=bucket, Key="from-s3.txt", Body=b"from the bucket")
    code, out = cluster.exec(ns, "app", "cat /data/from-s3.txt")
    assert (code, out) == (0, "from the bucket")
    # The mount the pod sees is the driver's FUSE filesystem.
    code, out = cluster.exec(ns, "app", "grep ' /data ' /proc/mounts")
    assert code == 0 and "fuse.cloudbucket" in out, out


# 2 -----------------------------------------------------------------------------------------
def test_read_only_volume_refuses_writes(cluster, settings, s3, ns, bucket, keys_secret, pvs):
    s3.put_object(Bucket=bucket, Key="existing.txt", Body=b"read me")
    # The driver's own readOnly attribute (the pod's volumeMount stays read-write, so it
    # is the driver's mount that refuses the write).
    volume = static_volume(cluster, settings, ns, pvs, bucket, keys_secret,
                           attributes={"readOnly": "true"})
    cluster.pod(ns, "app", volume)
    cluster.wait_running(ns, "app")

    assert cluster.exec(ns, "app", "cat /data/existing.txt") == (0, "read me")
    code, out = cluster.exec(ns, "app", "grep ' /data ' /proc/mounts")
    assert code == 0 and " ro," in out, out
    code, out = cluster.exec(ns, "app", "echo nope > /data/new.txt")
    assert code != 0
    assert "read-only" in out.lower(), out
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert "new.txt" not in keys


# 3 -----------------------------------------------------------------------------------------
def test_key_prefix_confines_the_pod(cluster, settings, s3, ns, bucket, keys_secret, pvs):
    s3.put_object(Bucket=bucket, Key="team-a/mine.txt", Body=b"a")
    s3.put_object(Bucket=bucket, Key="team-b/theirs.txt", Body=b"b")
    s3.put_object(Bucket=bucket, Key="top.txt", Body=b"top")
    volume = static_volume(cluster, settings, ns, pvs, bucket, keys_secret,
                           attributes={"keyPrefix": "team-a/"})
    cluster.pod(ns, "app", volume)
    cluster.wait_running(ns, "app")

    code, out = cluster.exec(ns, "app", "ls -A /data")
    assert (code, out.split()) == (0, ["mine.txt"])
    write_read(cluster, ns, "app", "/data/new.txt", "written under the prefix")
    assert s3.get_object(Bucket=bucket, Key="team-a/new.txt")["Body"].read() == \
        b"written under the prefix"


# 4 -----------------------------------------------------------------------------------------
def test_secret_credentials_and_wrong_ones(cluster, settings, s3, ns, bucket, keys_secret, pvs):
    # Right keys from the Secret (the driver has no identity of its own here).
    volume = static_volume(cluster, settings, ns, pvs, bucket, keys_secret)
    cluster.pod(ns, "good", volume)
    cluster.wait_running(ns, "good")
    write_read(cluster, ns, "good", "/data/ok.txt", "ok")
    assert s3.get_object(Bucket=bucket, Key="ok.txt")["Body"].read() == b"ok"

    # Wrong keys: the pod stays in ContainerCreating, with an Event that names the cause.
    cluster.secret(ns, "wrong-keys", {"AWS_ACCESS_KEY_ID": settings.access_key,
                                       "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    pv = harness.unique("cbe2e-pv")
    cluster.static_pv(pv, {"bucketName": bucket, "endpointUrl": settings.s3_endpoint},
                      secret=(ns, "wrong-keys"))
    pvs.append(pv)
    cluster.pvc(ns, "wrong", volume_name=pv)
    cluster.pod(ns, "bad", {"persistentVolumeClaim": {"claimName": "wrong"}})

    def failed_mount_event() -> bool:  # as an operator sees it: `kubectl get events`
        return any(m.startswith("FailedMount") for m in harness.kubectl_events(settings, ns, "bad"))

    wait_until(failed_mount_event, 180, "a FailedMount event in kubectl get events")
    pod = cluster.core.read_namespaced_pod("bad", ns)
    waiting = pod.status.container_statuses[0].state.waiting
    assert pod.status.phase == "Pending" and waiting.reason == "ContainerCreating"
    messages = [m for m in harness.kubectl_events(settings, ns, "bad")
                if m.startswith("FailedMount")]
    assert any(re.search(r"denied|credential|signature|access key", m, re.I) for m in messages), \
        messages
    assert not any("not-the-secret" in m for m in messages)  # the secret is never echoed


# 5 -----------------------------------------------------------------------------------------
def test_role_arn_token_exchanged_at_sts(cluster, settings, s3, pvs):
    """kubelet hands the pod's projected token to NodePublishVolume (tokenRequests); the
    driver exchanges it at SeaweedFS's STS, which checks it against the apiserver's issuer
    (its discovery document and JWKS) and the role's trust policy (oidc:sub)."""
    with harness.namespace(cluster, harness.ROLE_NAMESPACE) as ns:
        for sa in (harness.ROLE_SERVICE_ACCOUNT, "not-trusted"):
            cluster.core.create_namespaced_service_account(ns, {"metadata": {"name": sa}})
        s3.create_bucket(Bucket=harness.ROLE_BUCKET)
        try:
            s3.put_object(Bucket=harness.ROLE_BUCKET, Key="seed.txt", Body=b"seed")
            attrs = {"bucketName": harness.ROLE_BUCKET, "endpointUrl": settings.s3_endpoint,
                     "roleArn": harness.ROLE_ARN, "stsEndpointUrl": settings.s3_endpoint}
            pv = harness.unique("cbe2e-pv")
            cluster.static_pv(pv, attrs, secret=None)
            pvs.append(pv)
            cluster.pvc(ns, "claim", volume_name=pv)
            volume = {"persistentVolumeClaim": {"claimName": "claim"}}

            cluster.pod(ns, "trusted", volume, service_account=harness.ROLE_SERVICE_ACCOUNT)
            cluster.wait_running(ns, "trusted")
            assert cluster.exec(ns, "trusted", "cat /data/seed.txt") == (0, "seed")
            write_read(cluster, ns, "trusted", "/data/by-role.txt", "role write")
            assert s3.get_object(Bucket=harness.ROLE_BUCKET,
                                 Key="by-role.txt")["Body"].read() == b"role write"

            # A pod whose service account the role does not trust is refused by the STS.
            cluster.pod(ns, "untrusted", volume, service_account="not-trusted")
            wait_until(lambda: any(m.startswith("FailedMount") for m in
                                   cluster.event_messages(ns, "untrusted")),
                       180, "FailedMount for the untrusted service account")
            pod = cluster.core.read_namespaced_pod("untrusted", ns)
            assert pod.status.phase == "Pending"
        finally:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=harness.ROLE_BUCKET):
                for obj in page.get("Contents", []):
                    s3.delete_object(Bucket=harness.ROLE_BUCKET, Key=obj["Key"])
            s3.delete_bucket(Bucket=harness.ROLE_BUCKET)


# 6 -----------------------------------------------------------------------------------------
def test_dynamic_provisioning_fresh_prefix_removed_with_pvc(cluster, settings, s3, ns, bucket,
                                                             keys_secret):
    sc = harness.unique("cbe2e-sc")
    secret_ns, secret_name = keys_secret
    cluster.storage.create_storage_class({
        "metadata": {"name": sc}, "provisioner": harness.DRIVER, "reclaimPolicy": "Delete",
        "parameters": {
            "bucketName": bucket, "endpointUrl": settings.s3_endpoint, "keyPrefix": "dyn/",
            "csi.storage.k8s.io/provisioner-secret-name": secret_name,
            "csi.storage.k8s.io/provisioner-secret-namespace": secret_ns,
            "csi.storage.k8s.io/node-publish-secret-name": secret_name,
            "csi.storage.k8s.io/node-publish-secret-namespace": secret_ns,
        },
    })
    try:
        s3.put_object(Bucket=bucket, Key="dyn/other-volume/keep.txt", Body=b"keep")
        cluster.pvc(ns, "claim", storage_class=sc)
        wait_until(lambda: cluster.core.read_namespaced_persistent_volume_claim(
            "claim", ns).status.phase == "Bound", 120, "PVC bound")
        claim = cluster.core.read_namespaced_persistent_volume_claim("claim", ns)
        pv_name = claim.spec.volume_name
        pv = cluster.core.read_persistent_volume(pv_name)
        prefix = pv.spec.csi.volume_attributes["keyPrefix"]
        assert prefix.startswith("dyn/") and pv_name in prefix, prefix

        cluster.pod(ns, "app", {"persistentVolumeClaim": {"claimName": "claim"}})
        cluster.wait_running(ns, "app")
        code, out = cluster.exec(ns, "app", "ls -A /data")
        assert (code, out.strip()) == (0, "")  # a fresh prefix: empty
        write_read(cluster, ns, "app", "/data/file.txt", "dynamic")
        assert s3.get_object(Bucket=bucket, Key=f"{prefix}file.txt")["Body"].read() == b"dynamic"

        cluster.delete_pod(ns, "app")
        cluster.core.delete_namespaced_persistent_volume_claim("claim", ns)

        def prefix_gone() -> bool:
            listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
            return not listed and not cluster._exists(cluster.core.read_persistent_volume, pv_name)

        wait_until(prefix_gone, 120, f"prefix {prefix} and PV {pv_name} removed")
        # Only that prefix: the neighbour is untouched.
        kept = s3.get_object(Bucket=bucket, Key="dyn/other-volume/keep.txt")["Body"].read()
        assert kept == b"keep"
    finally:
        cluster.storage.delete_storage_class(sc)


# 7 -----------------------------------------------------------------------------------------
def test_inline_ephemeral_volume(cluster, settings, s3, ns, bucket, keys_secret):
    s3.put_object(Bucket=bucket, Key="eph/in.txt", Body=b"inline")
    volume = {"csi": {"driver": harness.DRIVER,
                      "volumeAttributes": {"bucketName": bucket, "keyPrefix": "eph/",
                                           "endpointUrl": settings.s3_endpoint},
                      "nodePublishSecretRef": {"name": keys_secret[1]}}}
    cluster.pod(ns, "app", volume)
    cluster.wait_running(ns, "app")
    assert cluster.exec(ns, "app", "cat /data/in.txt") == (0, "inline")
    write_read(cluster, ns, "app", "/data/out.txt", "from inline")
    assert s3.get_object(Bucket=bucket, Key="eph/out.txt")["Body"].read() == b"from inline"


# 8 -----------------------------------------------------------------------------------------
def test_two_pods_share_one_pv(cluster, settings, s3, ns, bucket, keys_secret, pvs):
    volume = static_volume(cluster, settings, ns, pvs, bucket, keys_secret)
    cluster.pod(ns, "writer", volume)
    cluster.pod(ns, "reader", volume)
    cluster.wait_running(ns, "writer")
    cluster.wait_running(ns, "reader")

    write_read(cluster, ns, "writer", "/data/shared.txt", "written by one pod")
    wait_until(lambda: cluster.exec(ns, "reader", "cat /data/shared.txt")
               == (0, "written by one pod"), 30, "the other pod to see the file")
    write_read(cluster, ns, "reader", "/data/back.txt", "and by the other")
    assert s3.get_object(Bucket=bucket, Key="back.txt")["Body"].read() == b"and by the other"
    # Each pod has its own mount (two publishes of one volume).
    mine = [p for p, _ in harness.node_mounts(settings) if "cbe2e-pv" in p or "/volumes/" in p]
    uids = {cluster.core.read_namespaced_pod(n, ns).metadata.uid for n in ("writer", "reader")}
    assert all(any(uid in p for p in mine) for uid in uids), mine


# 9 -----------------------------------------------------------------------------------------
def test_pod_deletion_leaves_no_mount_and_no_fuse_process(cluster, settings, ns, bucket,
                                                           keys_secret, pvs):
    volume = static_volume(cluster, settings, ns, pvs, bucket, keys_secret)
    cluster.pod(ns, "app", volume)
    uid = cluster.wait_running(ns, "app").metadata.uid
    write_read(cluster, ns, "app", "/data/x.txt", "x")
    assert any(uid in p for p, _ in harness.node_mounts(settings))
    pid = harness.node_fuse_server_pid(settings, uid)  # from the supervisor's records
    assert pid in harness.node_fuse_servers(settings), (pid, harness.node_fuse_servers(settings))

    cluster.delete_pod(ns, "app")
    wait_until(lambda: not any(uid in p for p, _ in harness.node_mounts(settings)), 60,
               "the pod's mount to go")
    wait_until(lambda: pid not in harness.node_fuse_servers(settings), 60,
               "the pod's FUSE server to exit")
    assert harness.node_fuse_server_pid(settings, uid) is None  # and its record is gone


# 10 ----------------------------------------------------------------------------------------
BIG_MIB = 192


@pytest.mark.parametrize("disruption", ["delete-node-plugin", "helm-upgrade"])
def test_read_survives_node_plugin_restart(cluster, settings, s3, ns, bucket, keys_secret, pvs,
                                           disruption):
    body = bytes(range(256)) * (4096 * BIG_MIB)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=body)
    expected = hashlib.sha256(body).hexdigest()
    volume = static_volume(cluster, settings, ns, pvs, bucket, keys_secret)
    # A slow reader: one MiB at a time with a pause, so the read spans the disruption.
    reader = (
        "while [ ! -e /dev/shm/go ]; do sleep 0.2; done; echo reading; "
        f"(i=0; while [ $i -lt {BIG_MIB} ]; do dd if=/data/big.bin bs=1048576 skip=$i count=1 "
        "2>/dev/null || echo READ-ERROR >&2; i=$((i+1)); sleep 0.3; done) | sha256sum; "
        "echo finished; sleep 3600")
    cluster.pod(ns, "reader", volume, command=reader)
    cluster.wait_running(ns, "reader")
    before = {p.metadata.uid for p in cluster.driver_pods("node")}
    assert before, "no node-plugin pod found"
    assert cluster.exec(ns, "reader", "touch /dev/shm/go")[0] == 0
    wait_until(lambda: "reading" in cluster.pod_logs(ns, "reader"), 30, "the read to start")

    if disruption == "delete-node-plugin":
        for pod in cluster.driver_pods("node"):
            cluster.core.delete_namespaced_pod(pod.metadata.name, settings.driver_namespace)
    else:
        harness.helm_install(settings, "--set-string",
                             f"node.podAnnotations.e2e-rollout={time.time_ns()}")

    def replaced_and_ready() -> bool:
        pods = cluster.driver_pods("node")
        return bool(pods) and all(p.metadata.uid not in before and p.status.phase == "Running"
                                  and all(c.ready for c in p.status.container_statuses or [])
                                  for p in pods)

    wait_until(replaced_and_ready, 180, "a new node-plugin pod, ready")
    assert "finished" not in cluster.pod_logs(ns, "reader"), \
        "the read ended before the node plugin was replaced: make it slower"
    wait_until(lambda: "finished" in cluster.pod_logs(ns, "reader"), 300, "the read to finish")
    logs = cluster.pod_logs(ns, "reader")
    assert "READ-ERROR" not in logs, logs
    assert expected in logs, logs
    # The volume still works for new I/O after the replacement.
    write_read(cluster, ns, "reader", "/data/after.txt", "after")


# 11 ----------------------------------------------------------------------------------------
NODE_METRICS_PORT = 9809  # the chart's metrics.nodePort


def _scrape(cluster: Cluster, ns: str, pod: str, url: str) -> dict[tuple[str, frozenset], float]:
    """/metrics fetched from inside the cluster (a pod's wget), parsed by prometheus-client."""
    from prometheus_client.parser import text_string_to_metric_families

    code, text = cluster.exec(ns, pod, f"wget -qO- {url}")
    assert code == 0, text
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _value(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return sum(value for (sample, have), value in samples.items()
               if sample == name and set(labels.items()) <= have)


def test_fuse_server_death_is_an_event_and_node_metrics_are_scraped_in_cluster(
        cluster, settings, s3, ns, bucket, keys_secret, pvs):
    size = 300_000
    s3.put_object(Bucket=bucket, Key="m.bin", Body=b"m" * size)
    volume = static_volume(cluster, settings, ns, pvs, bucket, keys_secret)
    cluster.pod(ns, "victim", volume)
    uid = cluster.wait_running(ns, "victim").metadata.uid
    code, out = cluster.exec(ns, "victim", "cat /data/m.bin | wc -c")
    assert (code, out.strip()) == (0, str(size)), out

    # The node plugin's /metrics, scraped by a pod as Prometheus would: the victim's reads
    # are there, labelled with its pod.
    cluster.pod(ns, "scraper", {"emptyDir": {}})
    cluster.wait_running(ns, "scraper")
    [plugin] = cluster.driver_pods("node")
    url = f"http://{plugin.status.pod_ip}:{NODE_METRICS_PORT}/metrics"
    samples = _scrape(cluster, ns, "scraper", url)
    mine = {"pod_namespace": ns, "pod_name": "victim"}
    assert _value(samples, "cloudbucket_fs_read_bytes_total", **mine) >= size, \
        sorted({name for name, _ in samples})
    assert _value(samples, "cloudbucket_store_requests_total", op="GetObject", **mine) >= 1
    deaths_before = _value(samples, "cloudbucket_fuse_server_deaths_total", cause="signal:SIGKILL")

    # Its FUSE server is killed: a FuseServerDied Event on the pod names the cause.
    pid = harness.node_fuse_server_pid(settings, uid)
    assert pid is not None, "no supervisor record for the pod's mount"
    harness.node_run(settings, "kill", "-KILL", str(pid))

    def died_event() -> list[str]:
        return [m for m in harness.kubectl_events(settings, ns, "victim")
                if m.startswith("FuseServerDied")]

    wait_until(lambda: bool(died_event()), 60, "a FuseServerDied event in kubectl get events")
    [message] = died_event()
    assert "SIGKILL" in message, message
    code, out = cluster.exec(ns, "victim", "cat /data/m.bin > /dev/null")
    assert code != 0  # the mount answers ENOTCONN now, as the Event says
    wait_until(lambda: _value(_scrape(cluster, ns, "scraper", url),
                              "cloudbucket_fuse_server_deaths_total",
                              cause="signal:SIGKILL") == deaths_before + 1,
               60, "the death counted in the node plugin's /metrics")
