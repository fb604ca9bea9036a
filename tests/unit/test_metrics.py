"""driver/metrics.py and its instrumentation points, without a mount.

The aggregator is exercised over real HTTP on UNIX sockets served from test registries;
the FUSE wrapper, the uploader's memory accounting and the GCS operation names directly.
(test_metrics*.py in tests/integration prove the same through real mounts.)
"""

from __future__ import annotations

import errno
from functools import partial
from pathlib import Path

import pyfuse3
import pytest
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from driver import metrics
from driver.fs.fuse import measured
from driver.fs.upload import Upload
from driver.store import observe
from driver.store.base import UploadOptions
from driver.store.observe import gcs_operation
from tests.memstore import MemoryStore

MiB = 1024 * 1024


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9809", ("127.0.0.1", 9809)), ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("[::1]:80", ("::1", 80)), ("localhost:65535", ("localhost", 65535)),
])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert metrics.parse_address(text) == expected


@pytest.mark.parametrize("text", ["9809", ":9809", "host:", "host:port", "host:70000"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        metrics.parse_address(text)


@pytest.mark.parametrize(("method", "url", "op"), [
    ("GET", "http://h/storage/v1/b/bk/o?prefix=a%2F&delimiter=%2F", "objects.list"),
    ("GET", "http://h/storage/v1/b/bk/o/dir%2Ffile?projection=noAcl", "objects.get"),
    ("GET", "http://h/download/storage/v1/b/bk/o/dir%2Ffile?alt=media", "objects.get_media"),
    ("POST", "http://h/upload/storage/v1/b/bk/o?uploadType=multipart", "objects.insert"),
    ("POST", "http://h/storage/v1/b/bk/o/final/compose", "objects.compose"),
    ("DELETE", "http://h/storage/v1/b/bk/o/key", "objects.delete"),
    ("GET", "http://h/storage/v1/b/bk?projection=noAcl", "buckets.get"),
    ("GET", "http://h/elsewhere", "GET other"),
])
def test_gcs_operation_names(method: str, url: str, op: str) -> None:
    assert gcs_operation(method, url) == op


def test_fuse_wrapper_counts_outcomes_and_times_every_call() -> None:
    op = "unit-op"

    @measured(op)
    async def answer(code: int) -> str:
        if code:
            raise pyfuse3.FUSEError(code)
        return "fine"

    registry = metrics.FUSE_REGISTRY
    before = {outcome: sample(registry, "cloudbucket_fs_operations_total", op=op,
                              outcome=outcome) for outcome in ("ok", "ENOENT", "EIO")}
    assert trio.run(answer, 0) == "fine"
    for code in (errno.ENOENT, errno.ENOENT, errno.EIO):
        with pytest.raises(pyfuse3.FUSEError):
            trio.run(answer, code)
    after = {outcome: sample(registry, "cloudbucket_fs_operations_total", op=op,
                             outcome=outcome) for outcome in before}
    assert {k: after[k] - before[k] for k in after} == {"ok": 1, "ENOENT": 2, "EIO": 1}
    assert sample(registry, "cloudbucket_fs_operation_seconds_count", op=op) == 4


def test_wrapper_is_gone_when_metrics_are_off(monkeypatch) -> None:
    monkeypatch.setattr(metrics, "ENABLED", False)

    async def plain() -> None:
        return None

    assert measured("off-op")(plain) is plain


async def _run_sync(fn, *args):
    return await trio.to_thread.run_sync(partial(fn, *args))


@pytest.mark.parametrize("fail", [None, "upload_part", "put", "complete_upload"])
def test_upload_memory_and_parts_drain(fail: str | None) -> None:
    """Bytes held and parts in flight return to where they were, whatever fails."""
    store = MemoryStore()
    if fail:
        store.fail = lambda op: op == fail
    size = 1 * MiB if fail == "put" else 13 * MiB
    registry = metrics.FUSE_REGISTRY
    held = partial(sample, registry, "cloudbucket_memory_bytes", use="upload")
    parts = partial(sample, registry, "cloudbucket_upload_parts_in_flight")
    failed = partial(sample, registry, "cloudbucket_uploads_total", outcome="failed")
    ok = partial(sample, registry, "cloudbucket_uploads_total", outcome="ok")
    start = (held(), parts(), failed(), ok())

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            upload = Upload(store, "k", UploadOptions(), run_sync=_run_sync,
                            part_size=5 * MiB, max_inflight=2)
            upload.attach(nursery)
            try:
                for offset in range(0, size, MiB):
                    await upload.write(offset, b"x" * MiB)
                assert held() > start[0]
                await upload.commit()
            except Exception:  # noqa: BLE001 - the failure under test
                assert fail is not None
                with pytest.raises(Exception):  # noqa: B017 - a second commit fails alike
                    await upload.commit()
            if fail:
                await upload.abort()

    trio.run(main)
    assert held() == start[0] and parts() == start[1]
    assert (failed() - start[2], ok() - start[3]) == ((1, 0) if fail else (0, 1))


def _serve(tmp_path: Path, name: str, registry: CollectorRegistry) -> metrics.MetricsServer:
    return metrics.serve_metrics_unix(str(tmp_path / f"{name}.sock"), registry)


def test_collector_merges_labels_and_reports_increases_once(tmp_path: Path) -> None:
    registries, counters, servers = {}, {}, {}
    for name in ("a", "b"):
        registries[name] = CollectorRegistry()
        counters[name] = Counter("cloudbucket_uploads", "uploads", ["outcome"],
                                 registry=registries[name])
        Gauge("cloudbucket_memory_bytes", "held", ["use"], registry=registries[name]) \
            .labels("prefetch").set(7)
        servers[name] = _serve(tmp_path, name, registries[name])
    listed = {name: (servers[name].address, {"volume_id": name, "pod_namespace": "ns",
                                             "pod_name": f"p-{name}", "bucket": "bk"})
              for name in servers}
    own = CollectorRegistry()
    Counter("cloudbucket_fuse_server_deaths", "deaths", registry=own).inc()
    increases: list[tuple[dict, str, float]] = []
    collector = metrics.MountsCollector(lambda: list(listed.values()), own,
                                        lambda labels, name, d: increases.append(
                                            (labels, name, d)))
    try:
        counters["a"].labels("failed").inc(2)
        families = {f.name: f for f in collector.collect()}
        memory = sorted((s.labels["volume_id"], s.value)
                        for s in families["cloudbucket_memory_bytes"].samples)
        assert memory == [("a", 7), ("b", 7)]
        assert families["cloudbucket_mounts"].samples[0].value == 2
        assert [s.value for s in families["cloudbucket_fuse_server_deaths"].samples
                if s.name.endswith("_total")] == [1]
        assert increases == [({"volume_id": "a", "pod_namespace": "ns", "pod_name": "p-a",
                               "bucket": "bk", "outcome": "failed"},
                              "cloudbucket_uploads_total", 2)]
        list(collector.collect())
        assert len(increases) == 1  # unchanged: not reported again
        counters["b"].labels("failed").inc()
        counters["a"].labels("failed").inc()
        list(collector.collect())
        assert sorted((labels["volume_id"], delta) for labels, _, delta in increases[1:]) == \
            [("a", 1), ("b", 1)]
        # b's server goes away: reported down, its samples gone, the scrape still answers.
        servers.pop("b").close()
        families = {f.name: f for f in collector.collect()}
        assert {s.labels["volume_id"]: s.value
                for s in families[metrics.SCRAPE_UP_NAME].samples} == {"a": 1, "b": 0}
        assert {s.labels["volume_id"] for s in families["cloudbucket_memory_bytes"].samples} \
            == {"a"}
    finally:
        for server in servers.values():
            server.close()


def test_watched_names_exist() -> None:
    """The aggregator watches sample names: each must be one the FUSE registry exposes."""
    names = {s.name for f in metrics.FUSE_REGISTRY.collect() for s in f.samples}
    assert set(metrics.WATCHED) <= names


def test_gcs_retries_are_a_failed_request_repeated_on_the_same_thread() -> None:
    """google-api-core retries are invisible to the session: a retryable failure followed by
    the same operation on the same thread is the retry."""
    from datetime import timedelta
    from types import SimpleNamespace

    def response(method: str, url: str, code: int, length: int = 0) -> SimpleNamespace:
        request = SimpleNamespace(method=method, url=url, headers={"Content-Length": "0"})
        return SimpleNamespace(request=request, status_code=code,
                               elapsed=timedelta(milliseconds=3),
                               headers={"Content-Length": str(length)})

    media = "http://h/download/storage/v1/b/bk/o/k?alt=media"
    registry = metrics.FUSE_REGISTRY
    retries = partial(sample, registry, "cloudbucket_store_retries_total",
                      op="objects.get_media")
    errors = partial(sample, registry, "cloudbucket_store_requests_total",
                     op="objects.get_media", status="5xx")
    received = partial(sample, registry, "cloudbucket_store_received_bytes_total",
                       op="objects.get_media")
    start = (retries(), errors(), received())
    observe._gcs_response(response("GET", media, 503, 20))
    observe._gcs_response(response("GET", media, 200, 1000))  # the retry
    observe._gcs_response(response("GET", media, 200, 1000))  # a new request
    observe._gcs_response(response("GET", "http://h/storage/v1/b/bk/o", 503))
    observe._gcs_response(response("GET", media, 200, 5))  # another op after a failure
    assert (retries() - start[0], errors() - start[1], received() - start[2]) == \
        (1, 1, 20 + 1000 + 1000 + 5)
