"""The benchmark harness, run for real with tiny sizes against our mount only.

This proves the harness end to end (SeaweedFS, seeding, fresh mounts, the resource monitor,
the JSON document, the chart) in well under a minute, without s3fs or rclone installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from driver.mounts import mountinfo

pytestmark = [pytest.mark.bench_smoke, pytest.mark.fuse, pytest.mark.timeout(120)]

READ_WORKLOADS = {"seq_read", "seq_read_dio", "seq_read_4", "rand_read", "ttfb"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "tests.perf.bench", "--quick", "--size-mib", "8", "--only",
         "read", "--peers", "none", "--repeat", "1", "--duration", "1", "--out", str(out),
         "--force"],  # the test machine is never quiet (pytest's own SeaweedFS, for one)
        capture_output=True, text=True, timeout=110, check=False,
        cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text()), out, result.stdout + result.stderr


def test_results_have_every_read_workload_with_throughput(smoke_run) -> None:
    document, _, _ = smoke_run
    assert set(document["workloads"]) == READ_WORKLOADS
    assert list(document["clients"]) == ["cloudbucket"]
    for name, entry in document["workloads"].items():
        ours = entry["results"]["cloudbucket"]
        assert ours["errors"] == [], (name, ours["errors"])
        assert len(ours["samples"]) == 1 and ours["median"] > 0, name
        run = ours["runs"][0]
        assert run["peak_rss"] > 10 * 2**20, name  # a Python FUSE server is never smaller
        assert run["cpu_s"] >= 0, name
        assert entry["ratios"] == {}, name  # no comparator was measured
    seq = document["workloads"]["seq_read"]["results"]["cloudbucket"]
    assert seq["runs"][0]["bytes"] == 8 * 2**20
    assert seq["cpu_s_per_gib_median"] > 0
    assert document["workloads"]["ttfb"]["unit"] == "s"


def test_results_record_versions_limits_and_targets(smoke_run) -> None:
    document, _, output = smoke_run
    versions = document["versions"]
    for key in ("cloudbucket", "boto3", "python", "weed"):
        assert versions[key] and versions[key] != "unknown", key
    limits = document["limits"]
    assert limits["rss_limit_bytes"] == (2 * limits["read_part_size"]
                                         * limits["prefetch_parallel"] + 100 * 2**20)
    statuses = {t["name"]: t["status"] for t in document["targets"]}
    assert any("peak RSS" in name for name in statuses)
    assert all(status in ("PASS", "MISS", "SKIP") for status in statuses.values())
    assert "Targets" in output and "seq_read" in output  # the table went to stdout
    meta = document["meta"]
    assert meta["repeat"] == 1 and isinstance(meta["trusted"], bool)
    assert meta["trusted"] == (not isinstance(meta["preflight"], list))
    run = document["workloads"]["seq_read"]["results"]["cloudbucket"]["runs"][0]
    assert run["loadavg_1m"] >= 0  # every sample says how busy the machine was


def test_direct_io_workload_mounts_with_direct_io(smoke_run) -> None:
    document, _, _ = smoke_run
    entry = document["workloads"]["seq_read_dio"]
    assert "--direct-io" in entry["description"]
    assert entry["results"]["cloudbucket"]["runs"][0]["bytes"] == 8 * 2**20


def test_chart_is_a_png(smoke_run) -> None:
    _, out, _ = smoke_run
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nothing_left_behind(smoke_run) -> None:
    document, _, _ = smoke_run
    leftovers = [e.target for e in mountinfo.read() if "cloudbucket-bench-" in e.target]
    assert leftovers == []
    servers = [p.pid for p in psutil.process_iter(["cmdline"])
               if any("cloudbucket-bench-" in arg for arg in p.info["cmdline"] or ())]
    assert servers == []


def test_missing_peer_is_skipped_with_a_reason(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from driver.devservers import SeaweedS3
    from tests.perf.bench import build_clients, parse_args
    from tests.perf.clients import Raw

    monkeypatch.setenv("PATH", str(tmp_path))  # neither s3fs nor rclone on it
    # Never started: building the clients does no I/O.
    server = SeaweedS3(port=1, workdir=tmp_path / "unused", _owns_workdir=False)
    args = parse_args(["--peers", "s3fs,rclone,boto3"])
    clients, skipped = build_clients(args, server, "b", tmp_path, Raw(server, "b"))
    assert [c.name for c in clients] == ["cloudbucket", "boto3"]
    assert set(skipped) == {"s3fs", "rclone"}
    assert all("not installed" in why for why in skipped.values())
    assert os.listdir(tmp_path) == []


def test_busy_machine_is_named_and_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.perf import bench

    mounts = ("proc /proc proc rw 0 0\nfusectl /sys/fs/fuse/connections fusectl rw 0 0\n"
              "s3fs /mnt/x fuse.s3fs rw 0 0\n")
    problems = bench.machine_problems(1.7, mounts, [(4242, "weed"), (4243, "bash")])
    assert problems == ["1-minute load average is 1.70 (> 0.5)",
                        "a FUSE filesystem is mounted: fuse.s3fs at /mnt/x",
                        "weed is running (pid 4242)"]
    assert bench.machine_problems(0.1, "proc /proc proc rw 0 0\n", [(1, "init")]) == []

    monkeypatch.setattr(bench, "machine_problems", lambda: ["fake-gcs-server is running"])
    with pytest.raises(SystemExit) as refused:
        bench.main(["--only", "ttfb", "--peers", "none"])  # refused before anything starts
    assert "refusing to start" in str(refused.value)
    assert "fake-gcs-server is running" in str(refused.value)
    assert bench.preflight(force=True) == ["fake-gcs-server is running"]


def test_defaults_are_five_interleaved_rounds() -> None:
    from tests.perf.bench import parse_args

    args = parse_args([])
    assert args.repeat == 5 and not args.force
    assert args.peers == "s3fs,boto3"


def test_mount_time_goes_through_node_publish_when_the_csi_server_exists(tmp_path: Path) -> None:
    from tests.perf.bench import csi_available

    out = tmp_path / "mount.json"
    result = subprocess.run(
        [sys.executable, "-m", "tests.perf.bench", "--only", "mount_time", "--peers", "none",
         "--repeat", "1", "--size-mib", "1", "--out", str(out), "--force"],
        capture_output=True, text=True, timeout=110, check=False,
        cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    entry = json.loads(out.read_text())["workloads"]["mount_time"]
    ours = entry["results"]["cloudbucket"]
    assert ours["errors"] == [] and ours["median"] > 0
    if csi_available():
        assert ours["runs"][0]["via"] == "NodePublishVolume"
        assert "NodePublishVolume" in entry["description"]
    else:
        assert "stand-in" in entry["description"]
    assert [e.target for e in mountinfo.read() if "cloudbucket-bench-" in e.target] == []


def test_cache_workloads_run_two_passes_and_leave_no_cache_dir(tmp_path: Path) -> None:
    out = tmp_path / "cache.json"
    result = subprocess.run(
        [sys.executable, "-m", "tests.perf.bench", "--quick", "--size-mib", "8", "--only",
         "cache", "--peers", "none", "--repeat", "1", "--duration", "1", "--small-count",
         "50", "--out", str(out), "--force"],
        capture_output=True, text=True, timeout=110, check=False,
        cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(out.read_text())
    assert set(document["workloads"]) == {"cache_seq_read", "cache_rand_read", "cache_small"}
    for name, entry in document["workloads"].items():
        ours = entry["results"]["cloudbucket"]
        assert ours["errors"] == [], (name, ours["errors"])
        run = ours["runs"][0]
        assert run["speedup"] > 0 and run["first_value"] > 0, name
    pid_dirs = [p for p in Path(tempfile.gettempdir()).glob("cloudbucket-bench-cache-*")]
    assert pid_dirs == []  # removed when the bench process exits


def test_cpu_busy_counts_idle_and_iowait_as_not_busy() -> None:
    from tests.perf import bench

    # user nice system idle iowait irq softirq steal
    before = [100, 0, 50, 800, 50, 0, 0, 0]
    assert bench.cpu_busy(before, [150, 0, 100, 1700, 50, 0, 0, 0]) == pytest.approx(0.1)
    assert bench.cpu_busy(before, [100, 0, 50, 850, 150, 0, 0, 0]) == 0.0  # disk wait only
    assert bench.cpu_busy(before, before) == 0.0
