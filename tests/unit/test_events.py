"""EventRecorder: core/v1 Events on the pod through the real kubernetes client.

The API server is a stand-in on 127.0.0.1 that records each request and echoes the body;
it proves what the client sends (POST, then PATCH of the count on a repeat), that messages
never carry secrets, and the no-op fallback outside a cluster.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from driver import events
from driver.devservers import LOOPBACK, wait_until


class StubApi:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict]] = []
        self.missing: set[str] = set()  # event names answered 404 on PATCH
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                stub.requests.append((self.command, self.path, body))
                name = self.path.rsplit("/", 1)[-1]
                status = 404 if self.command == "PATCH" and name in stub.missing else \
                    201 if self.command == "POST" else 200
                reply = {"kind": "Status", "code": 404} if status == 404 else {
                    "apiVersion": "v1", "kind": "Event",
                    "metadata": body.get("metadata", {"name": name}),
                    "involvedObject": body.get("involvedObject", {})}
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_PATCH = _answer  # noqa: N815

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[StubApi]:
    stub = StubApi()
    yield stub
    stub.close()


@pytest.fixture
def recorder(api: StubApi) -> Iterator[events.KubernetesRecorder]:
    from kubernetes import client

    configuration = client.Configuration(host=api.url)
    made = events.KubernetesRecorder(client.CoreV1Api(client.ApiClient(configuration)),
                                     host="node-1")
    yield made
    made.close()


POD = events.PodRef("team-a", "trainer-0", "0d3c9f3e-1111-2222-3333-444455556666")


def test_event_created_on_the_pod_then_repeats_patch_its_count(api: StubApi,
                                                               recorder) -> None:
    recorder.fuse_server_died(POD, "vol-1", "killed by SIGKILL", restarting=True)
    wait_until(lambda: len(api.requests) == 1, 10, "the event POST")
    method, path, body = api.requests[0]
    assert (method, path) == ("POST", "/api/v1/namespaces/team-a/events")
    assert body["involvedObject"] == {"apiVersion": "v1", "kind": "Pod",
                                      "namespace": "team-a", "name": "trainer-0",
                                      "uid": POD.uid}
    assert body["type"] == "Warning" and body["reason"] == "FuseServerDied"
    assert "vol-1" in body["message"] and "killed by SIGKILL" in body["message"]
    assert body["source"] == {"component": "cloudbucket-csi", "host": "node-1"}
    assert body["count"] == 1
    name = body["metadata"]["name"]
    assert name.startswith("trainer-0.")

    recorder.fuse_server_died(POD, "vol-1", "killed by SIGKILL", restarting=True)
    wait_until(lambda: len(api.requests) == 2, 10, "the event PATCH")
    method, path, body = api.requests[1]
    assert (method, path) == ("PATCH", f"/api/v1/namespaces/team-a/events/{name}")
    assert body["count"] == 2 and "lastTimestamp" in body

    # An expired event (404 on PATCH) is created anew.
    api.missing.add(name)
    recorder.fuse_server_died(POD, "vol-1", "killed by SIGKILL", restarting=True)
    wait_until(lambda: len(api.requests) == 4, 10, "PATCH then a new POST")
    assert [r[0] for r in api.requests[2:]] == ["PATCH", "POST"]
    assert api.requests[3][2]["metadata"]["name"] != name


def test_no_secret_reaches_an_event(api: StubApi, recorder) -> None:
    leaky = ("killed; env AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY "
             "key AKIAIOSFODNN7EXAMPLE token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwb2QifQ.c2ln "
             'json {"private_key": "-----BEGIN PRIVATE KEY-----MIIE-----END PRIVATE KEY-----"}')
    recorder.fuse_server_died(POD, "vol-1", leaky, restarting=False)
    wait_until(lambda: len(api.requests) == 1, 10, "the event POST")
    message = api.requests[0][2]["message"]
    for secret in ("wJalrXUtnFEMI", "AKIAIOSFODNN7EXAMPLE", "eyJhbGciOiJSUzI1NiJ9", "MIIE"):
        assert secret not in message
    assert "<redacted>" in message and "vol-1" in message


def test_scrub_keeps_ordinary_text_and_bounds_length() -> None:
    text = "FUSE server of volume pv-123 died (exit status 1)"
    assert events.scrub(text) == text
    assert len(events.scrub("x " * 2000)) == events.MESSAGE_MAX


def test_watched_counters_become_events(api: StubApi, recorder) -> None:
    report = events.increase_reporter(recorder)
    labels = {"volume_id": "vol-2", "bucket": "b", "pod_namespace": "team-a",
              "pod_name": "trainer-0"}
    report({**labels, "outcome": "ok"}, "cloudbucket_uploads_total", 3)  # not an event
    report({**labels, "outcome": "failed"}, "cloudbucket_uploads_total", 1)
    report(labels, "cloudbucket_credential_refresh_failures_total", 2)
    report(labels, "cloudbucket_memory_target_reached_total", 5)
    report({"volume_id": "vol-3"}, "cloudbucket_uploads_total", 1)  # no pod: nowhere to put it
    wait_until(lambda: len(api.requests) == 3, 10, "three events")
    reasons = [(body["reason"], body["type"]) for _, _, body in api.requests]
    assert reasons == [("UploadFailed", "Warning"), ("CredentialsRefreshFailed", "Warning"),
                       ("MemoryTargetReached", "Normal")]


def test_outside_a_cluster_the_recorder_only_logs(monkeypatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    recorder = events.event_recorder("node-1")
    assert isinstance(recorder, events.NullRecorder)
    recorder.upload_failed(POD, "vol-1")  # does not raise, needs no API server
