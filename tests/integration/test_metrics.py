"""Metrics of a real mount equal the workload that went through it.

A known workload (a 64 MiB read, a 3 MiB write, a listing, a refused chmod, a read whose
GETs the fault proxy rejects) runs through `cloudbucket-csi mount --metrics-address`
against SeaweedFS. The proxy between the mount and SeaweedFS records every request line,
so the store counters are checked against an independent witness; the filesystem counters
against what the test did (direct I/O: one FUSE read or write per system call).
"""

from __future__ import annotations

import errno
import os
import re
import urllib.request
from collections import Counter as Tally
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from driver import metrics
from driver.cli import exit_status
from driver.devservers import LOOPBACK, free_port, wait_until
from driver.failures import FailureKind
from tests.faults import FaultProxy, s3_error_body

MiB = 1024 * 1024
BIG = 64 * MiB
WRITTEN = 3 * MiB
# 128 KiB per system call: no larger than any FUSE max_read/max_write, so one request each.
CHUNK = 128 * 1024


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a /metrics page."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def by_label(page: dict, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    """Values of `name` summed by the given label keys, zero values dropped."""
    totals: Tally[tuple[str, ...]] = Tally()
    for (sample, labels), value in page.items():
        if sample == name:
            values = dict(labels)
            totals[tuple(values.get(key, "") for key in keys)] += value
    return {key: value for key, value in totals.items() if value}


def value(page: dict, name: str, **labels: str) -> float:
    return page.get((name, tuple(sorted(labels.items()))), 0.0)


def s3_operation(request_line: str, bucket: str) -> str:
    """The S3 operation a path-style request line calls (the witness's own classification)."""
    method, target, _ = request_line.split(" ", 2)
    path, _, query = target.partition("?")
    params = dict(part.partition("=")[::2] for part in query.split("&") if part)
    is_bucket = path.rstrip("/") == f"/{bucket}"
    if method == "HEAD":
        return "HeadBucket" if is_bucket else "HeadObject"
    if method == "GET":
        if is_bucket:
            return "ListObjectsV2" if params.get("list-type") == "2" else \
                "ListMultipartUploads" if "uploads" in params else "ListObjects"
        return "GetObject"
    if method == "PUT":
        return "UploadPart" if "uploadId" in params else "PutObject"
    if method == "POST":
        if "uploads" in params:
            return "CreateMultipartUpload"
        return "CompleteMultipartUpload" if "uploadId" in params else "DeleteObjects"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in params else "DeleteObject"
    raise AssertionError(request_line)


def scrape(address: str) -> dict:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        return samples(response.read().decode())


@pytest.fixture
def proxy(seaweed) -> Iterator[FaultProxy]:
    with FaultProxy(seaweed.port) as fault_proxy:
        yield fault_proxy


def test_metrics_equal_the_workload(seaweed, s3, bucket, mount, proxy: FaultProxy) -> None:
    big = os.urandom(BIG)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=big)
    s3.put_object(Bucket=bucket, Key="bad.bin", Body=b"unlucky")
    address = f"{LOOPBACK}:{free_port()}"
    mounted = mount(bucket, f"--endpoint-url={proxy.endpoint}", "--direct-io",
                    f"--metrics-address={address}")

    # 1. Read 64 MiB in 128 KiB reads (direct I/O: each read is one FUSE read).
    fd = os.open(mounted / "big.bin", os.O_RDONLY)
    try:
        for offset in range(0, BIG, CHUNK):
            assert os.read(fd, CHUNK) == big[offset:offset + CHUNK]
    finally:
        os.close(fd)
    # 2. Write 3 MiB in 24 writes of 128 KiB (one PutObject at close: under one part).
    payload = os.urandom(WRITTEN)
    fd = os.open(mounted / "out.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for offset in range(0, WRITTEN, CHUNK):
            assert os.write(fd, payload[offset:offset + CHUNK]) == CHUNK
    finally:
        os.close(fd)
    # 3. A listing.
    assert sorted(os.listdir(mounted.path)) == ["bad.bin", "big.bin", "out.bin"]
    # 4. A refused operation: modes are fixed by mount options.
    with pytest.raises(PermissionError):
        os.chmod(mounted / "big.bin", 0o600)
    # 5. An injected store error: every GET of bad.bin is answered 500; botocore retries
    # (max_attempts 4 counts retries: 5 attempts) and the read fails with EIO.
    proxy.reject_matching(rf"^GET /{bucket}/bad\.bin")
    fd = os.open(mounted / "bad.bin", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as failed:
            os.read(fd, 4096)
        assert failed.value.errno == errno.EIO
    finally:
        os.close(fd)
    proxy.reject_matching(r"^$")

    # Gauges fall back once every handle is released (release follows close asynchronously).
    def settled() -> bool:
        page = scrape(address)
        return value(page, "cloudbucket_fs_open_files", mode="read") == 0 and \
            value(page, "cloudbucket_fs_open_files", mode="write") == 0
    wait_until(settled, 10, "open files back to zero")
    page = scrape(address)

    # -- filesystem: bytes and operations exactly as done -------------------------------
    assert value(page, "cloudbucket_fs_read_bytes_total") == BIG
    assert value(page, "cloudbucket_fs_written_bytes_total") == WRITTEN
    outcomes = by_label(page, "cloudbucket_fs_operations_total", "op", "outcome")
    assert outcomes[("read", "ok")] == BIG // CHUNK
    assert outcomes[("write", "ok")] == WRITTEN // CHUNK
    errors = {key: count for key, count in outcomes.items() if key[1] != "ok"}
    assert errors == {("lookup", "ENOENT"): 1,  # the kernel's lookup before create
                      ("setattr", "EPERM"): 1,  # chmod
                      ("read", "EIO"): 1}  # the injected store error
    assert outcomes[("create", "ok")] == 1
    assert outcomes[("open", "ok")] == 2
    assert outcomes[("release", "ok")] == 3
    assert outcomes[("opendir", "ok")] >= 1 and outcomes[("releasedir", "ok")] == \
        outcomes[("opendir", "ok")]
    # Every operation counted is in its latency histogram, once.
    timed = by_label(page, "cloudbucket_fs_operation_seconds_count", "op")
    assert timed == by_label(page, "cloudbucket_fs_operations_total", "op")

    # -- store: requests by operation equal what the proxy saw --------------------------
    witnessed = Tally(s3_operation(line, bucket) for line in proxy.requests)
    counted = by_label(page, "cloudbucket_store_requests_total", "op")
    assert counted == {(op,): float(n) for op, n in witnessed.items()}
    statuses = by_label(page, "cloudbucket_store_requests_total", "op", "status")
    rejected = proxy.rejected
    assert rejected > 1  # botocore retried the 500s before giving up
    assert statuses[("GetObject", "5xx")] == rejected
    assert by_label(page, "cloudbucket_store_retries_total", "op") == \
        {("GetObject",): rejected - 1}
    non_2xx = {key: n for key, n in statuses.items() if key[1] != "2xx"}
    # out.bin did not exist yet: the kernel's lookup and create's own check each HEAD it.
    assert non_2xx == {("GetObject", "5xx"): rejected, ("HeadObject", "4xx"): 2}
    assert value(page, "cloudbucket_store_sent_bytes_total", op="PutObject") == WRITTEN
    assert value(page, "cloudbucket_store_received_bytes_total", op="GetObject") == \
        BIG + rejected * len(s3_error_body())
    assert value(page, "cloudbucket_store_received_bytes_total", op="HeadObject") == 0
    assert by_label(page, "cloudbucket_store_request_seconds_count", "op") == counted

    # -- prefetch, uploads, memory ------------------------------------------------------
    assert value(page, "cloudbucket_prefetch_bytes_total") == BIG
    assert value(page, "cloudbucket_prefetch_used_bytes_total") == BIG
    assert value(page, "cloudbucket_uploads_total", outcome="ok") == 1
    assert value(page, "cloudbucket_uploads_total", outcome="failed") == 0
    assert value(page, "cloudbucket_uploads_in_flight") == 0
    assert value(page, "cloudbucket_upload_parts_in_flight") == 0
    assert value(page, "cloudbucket_memory_bytes", use="prefetch") == 0
    assert value(page, "cloudbucket_memory_bytes", use="upload") == 0
    assert value(page, "cloudbucket_memory_target_bytes") > 0
    assert value(page, "process_resident_memory_bytes") > 0


def test_multipart_upload_failure_is_counted(seaweed, s3, bucket, mount,
                                             proxy: FaultProxy) -> None:
    """An upload that fails at close counts as failed; memory and parts in flight drain."""
    mounted = mount(bucket, f"--endpoint-url={proxy.endpoint}", "--write-part-size=5242880",
                    f"--metrics-address={LOOPBACK}:{free_port()}")
    address = _address_of(mounted.log_file, mounted)
    proxy.reject_matching(r"^PUT \S*[?&]partNumber=2\b")
    with pytest.raises(OSError) as failed, open(mounted / "big.out", "wb") as handle:
        handle.write(os.urandom(12 * MiB))
    assert failed.value.errno == errno.EIO
    page = scrape(address)
    assert value(page, "cloudbucket_uploads_total", outcome="failed") == 1
    assert value(page, "cloudbucket_uploads_total", outcome="ok") == 0
    assert value(page, "cloudbucket_upload_parts_in_flight") == 0
    assert value(page, "cloudbucket_memory_bytes", use="upload") == 0
    statuses = by_label(page, "cloudbucket_store_requests_total", "op", "status")
    assert statuses[("UploadPart", "5xx")] == proxy.rejected
    assert statuses[("AbortMultipartUpload", "2xx")] == 1


def _address_of(log_file: Path, mounted) -> str:
    """The --metrics-address a mount was started with (from its server's command line)."""
    for part in mounted.process.cmdline():
        if match := re.fullmatch(r"--metrics-address=(.+)", part):
            return match.group(1)
    raise AssertionError("mount has no --metrics-address")


def test_metrics_address_refused_when_malformed(cli, bucket, tmp_path: Path) -> None:
    target = tmp_path / "mnt"
    target.mkdir()
    result = cli("mount", bucket, str(target), "--metrics-address=nonsense")
    assert result.returncode == exit_status(FailureKind.INVALID_OPTION)
    assert "--metrics-address" in result.stderr


def test_unix_socket_server_serves_the_registry(tmp_path: Path) -> None:
    path = str(tmp_path / "m.sock")
    server = metrics.serve_metrics_unix(path)
    try:
        assert os.stat(path).st_mode & 0o777 == 0o600
        page = samples(metrics.scrape_unix(path))
        assert ("cloudbucket_fs_read_bytes_total", ()) in page
    finally:
        server.close()
    assert not os.path.exists(path)


def test_metrics_port_in_use_fails_the_mount_and_leaves_nothing(cli, seaweed, bucket,
                                                                tmp_path: Path) -> None:
    import socket

    from driver.mounts import mountinfo

    target = tmp_path / "mnt"
    target.mkdir()
    with socket.create_server((LOOPBACK, 0)) as taken:
        port = taken.getsockname()[1]
        result = cli("mount", bucket, str(target), f"--endpoint-url={seaweed.endpoint}",
                     f"--metrics-address={LOOPBACK}:{port}", env=seaweed.credential_env())
    assert result.returncode == exit_status(FailureKind.INVALID_OPTION)
    assert f"cannot serve metrics on {LOOPBACK}:{port}" in result.stderr
    assert mountinfo.find(str(target)) is None
