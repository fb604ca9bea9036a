"""Kubernetes Events on the pod for what happens to a volume after NodePublishVolume returned.

Kubelet reports a failed mount itself (FailedMount); what it cannot see is a FUSE server
dying later, credentials refreshes failing, an upload failing at close, or a mount reaching
its memory target. The node plugin reports those on the pod that uses the volume, with
`kubectl describe pod` in mind: a short reason, one sentence that says what happened and
what follows, and repeats folded into one Event whose count grows (a PATCH), as kubelet's
own recorder does. The chart grants the node plugin `create` and `patch` on events only.

Messages are made here from typed facts (a cause kind, a count, a volume id), never from
error text; `scrub` then removes anything shaped like a key or a token as a last line of
defence, so no secret reaches an Event. Calls never block the caller: events go through a
bounded queue to one worker thread, and are dropped (and logged) when the API server is
slow. Outside a cluster `event_recorder()` returns a `NullRecorder`, which only logs.

The FUSE servers hold no Kubernetes credentials (they parse network data, so they get no
privilege): their counters reach the recorder through the node plugin's metrics scrape
(`metrics.MountsCollector(on_increase=...)`, wired by `increase_reporter`).
"""

from __future__ import annotations

import queue
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

log = structlog.get_logger()
COMPONENT = "cloudbucket-csi"
MESSAGE_MAX = 1024  # the API server refuses longer messages

# Reasons (CamelCase, as Kubernetes' own) and their types.
FUSE_SERVER_DIED = "FuseServerDied"
CREDENTIALS_REFRESH_FAILED = "CredentialsRefreshFailed"
UPLOAD_FAILED = "UploadFailed"
MEMORY_TARGET_REACHED = "MemoryTargetReached"
_WARNING = {FUSE_SERVER_DIED, CREDENTIALS_REFRESH_FAILED, UPLOAD_FAILED}

_SECRET_SHAPES = [
    re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b"),  # AWS access key ids
    re.compile(r"\beyJ[\w-]+\.[\w-]+\.[\w-]*"),  # JWTs (service-account and OIDC tokens)
    re.compile(r"-----BEGIN [A-Z ]+-----.*?(?:-----END [A-Z ]+-----|$)", re.S),  # PEM keys
    re.compile(r"(?i)\b(secret|token|password|signature|credential)\w*"
               r"(\s*[=:]\s*|\"\s*:\s*\")[^\s,;&\"]+"),  # key=value, "key": "value"
    re.compile(r"\b[A-Za-z0-9+/]{40,}={0,2}"),  # long base64 runs (secret keys, signatures)
]


def scrub(text: str) -> str:
    """`text` with anything shaped like a credential replaced, cut to the API's limit."""
    for shape in _SECRET_SHAPES:
        text = shape.sub("<redacted>", text)
    return text if len(text) <= MESSAGE_MAX else text[:MESSAGE_MAX - 1] + "…"


@dataclass(frozen=True, slots=True)
class PodRef:
    namespace: str
    name: str
    uid: str = ""

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> PodRef | None:
        """From a mount's metric labels (pod_namespace, pod_name); None when unknown."""
        namespace, name = labels.get("pod_namespace", ""), labels.get("pod_name", "")
        return cls(namespace, name, labels.get("pod_uid", "")) if namespace and name else None


class EventRecorder:
    """What the node plugin reports; subclasses decide where it goes (`_emit`)."""

    def fuse_server_died(self, pod: PodRef, volume_id: str, cause: str,
                         restarting: bool) -> None:
        """`cause`: the supervisor's typed cause (e.g. "killed by SIGKILL", "exit status 1",
        "out of memory")."""
        after = ("the supervisor is restarting it; open files saw EIO" if restarting else
                 "the volume answers ENOTCONN until the pod is restarted")
        self.record(pod, FUSE_SERVER_DIED,
                    f"FUSE server of volume {volume_id} died ({cause}): {after}")

    # Messages carry no counts: repeats then fold into one Event whose count grows.
    def credentials_refresh_failed(self, pod: PodRef, volume_id: str) -> None:
        self.record(pod, CREDENTIALS_REFRESH_FAILED,
                    f"Refreshing the credentials of volume {volume_id} failed: requests fail "
                    "with EACCES until a republish brings a valid token; see the FUSE "
                    "server's log")

    def upload_failed(self, pod: PodRef, volume_id: str) -> None:
        self.record(pod, UPLOAD_FAILED,
                    f"An upload to volume {volume_id} failed at close or fsync (the writer "
                    "got EIO; no partial object was left); see the FUSE server's log for "
                    "the key")

    def memory_target_reached(self, pod: PodRef, volume_id: str) -> None:
        self.record(pod, MEMORY_TARGET_REACHED,
                    f"Volume {volume_id} reached its prefetch memory target: read-ahead was "
                    "held back, so sequential reads slow down")

    def record(self, pod: PodRef, reason: str, message: str) -> None:
        self._emit(pod, "Warning" if reason in _WARNING else "Normal", reason, scrub(message))

    def _emit(self, pod: PodRef, kind: str, reason: str, message: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Deliver what is queued (bounded wait) and stop."""


class NullRecorder(EventRecorder):
    """Outside a cluster: the event goes to the log only."""

    def _emit(self, pod: PodRef, kind: str, reason: str, message: str) -> None:
        log.info("event (no cluster to record it in)", namespace=pod.namespace, pod=pod.name,
                 type=kind, reason=reason, message=message)


class KubernetesRecorder(EventRecorder):
    """core/v1 Events through the kubernetes client; repeats PATCH the event's count."""

    def __init__(self, api: Any, host: str = "", queue_size: int = 256) -> None:
        self._api = api  # kubernetes.client.CoreV1Api
        self._host = host  # the node name: the event's source.host
        self._queue: queue.Queue[tuple[PodRef, str, str, str] | None] = queue.Queue(queue_size)
        # (namespace, pod, uid, reason, message) -> (event name, count, first timestamp)
        self._seen: dict[tuple[str, str, str, str, str], tuple[str, int, datetime]] = {}
        self._thread = threading.Thread(target=self._work, name="events", daemon=True)
        self._thread.start()

    def _emit(self, pod: PodRef, kind: str, reason: str, message: str) -> None:
        try:
            self._queue.put_nowait((pod, kind, reason, message))
        except queue.Full:
            log.warning("event dropped: the API server is not keeping up", reason=reason,
                        namespace=pod.namespace, pod=pod.name)

    def close(self, timeout: float = 10) -> None:
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._send(*item)
            except Exception as exc:  # noqa: BLE001 - a failed event must not stop the next
                log.warning("could not record event", reason=item[2],
                            namespace=item[0].namespace, pod=item[0].name,
                            error=type(exc).__name__, status=getattr(exc, "status", None))

    def _send(self, pod: PodRef, kind: str, reason: str, message: str) -> None:
        from kubernetes.client.exceptions import ApiException

        now = datetime.now(UTC)
        key = (pod.namespace, pod.name, pod.uid, reason, message)
        seen = self._seen.get(key)
        if seen is not None:
            name, count, first = seen
            try:
                self._api.patch_namespaced_event(
                    name, pod.namespace, {"count": count + 1,
                                          "lastTimestamp": now.isoformat()})
                self._seen[key] = (name, count + 1, first)
                return
            except ApiException as exc:
                if exc.status != 404:  # gone (events expire after an hour): create anew
                    raise
        name = f"{pod.name}.{uuid.uuid4().hex[:16]}"
        self._api.create_namespaced_event(pod.namespace, self._event(name, pod, kind, reason,
                                                                     message, now))
        self._seen[key] = (name, 1, now)
        if len(self._seen) > 10_000:
            self._seen.clear()

    def _event(self, name: str, pod: PodRef, kind: str, reason: str, message: str,
               now: datetime) -> Any:
        from kubernetes.client import (
            CoreV1Event,
            V1EventSource,
            V1ObjectMeta,
            V1ObjectReference,
        )

        return CoreV1Event(
            metadata=V1ObjectMeta(name=name, namespace=pod.namespace),
            involved_object=V1ObjectReference(api_version="v1", kind="Pod",
                                              namespace=pod.namespace, name=pod.name,
                                              uid=pod.uid or None),
            reason=reason, message=message, type=kind, count=1,
            first_timestamp=now, last_timestamp=now,
            source=V1EventSource(component=COMPONENT, host=self._host or None),
            reporting_component=f"{COMPONENT}/node", reporting_instance=self._host or None,
        )


def event_recorder(node_id: str = "") -> EventRecorder:
    """The cluster's recorder when running in a pod (in-cluster config), else a NullRecorder."""
    try:
        from kubernetes import client, config

        config.load_incluster_config()
    except Exception:  # noqa: BLE001 - ConfigException outside a cluster; no client at all
        return NullRecorder()
    return KubernetesRecorder(client.CoreV1Api(), host=node_id)


def increase_reporter(recorder: EventRecorder):  # -> metrics.IncreaseCallback
    """Turn watched counter increases of a mount (see metrics.WATCHED) into Events."""

    def report(labels: Mapping[str, str], name: str, delta: float) -> None:
        pod = PodRef.from_labels(labels)
        if pod is None:
            return
        volume_id = labels.get("volume_id", "")
        if name == "cloudbucket_uploads_total" and labels.get("outcome") == "failed":
            recorder.upload_failed(pod, volume_id)
        elif name == "cloudbucket_credential_refresh_failures_total":
            recorder.credentials_refresh_failed(pod, volume_id)
        elif name == "cloudbucket_memory_target_reached_total":
            recorder.memory_target_reached(pod, volume_id)

    return report
