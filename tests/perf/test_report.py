"""Target evaluation and ratios of the benchmark report, on hand-made samples."""

from __future__ import annotations

from tests.perf import report
from tests.perf.workloads import FirstByte, GiB, Listing, MiB, SeqRead


def _runs(values: list[float], **extra: float) -> dict:
    return {"samples": [{"value": v, "seconds": 1.0, "bytes": int(extra.get("bytes", 0)),
                         "ops": 1, **extra} for v in values], "errors": []}


def _document(results: dict) -> dict:
    workloads = {"seq_read": SeqRead(1), "ls_l": Listing(True)}
    return report.build({"size_bytes": GiB, "repeat": 3}, {}, list(workloads.values()),
                        results, ["cloudbucket", "s3fs", "rclone", "boto3"], {})


def test_ratios_mean_times_faster_for_throughput_and_duration() -> None:
    document = _document({
        "seq_read": {"cloudbucket": _runs([90, 100, 300], cpu_s=0.5, peak_rss=150 * MiB,
                                          bytes=GiB),
                     "s3fs": _runs([50, 50, 50]), "boto3": _runs([100, 125, 125])},
        "ls_l": {"cloudbucket": _runs([0.5, 0.5, 0.6], cpu_s=0.1, peak_rss=60 * MiB),
                 "s3fs": _runs([2.0, 2.0, 2.0]), "rclone": _runs([0.25, 0.25, 0.25])},
    })
    seq = document["workloads"]["seq_read"]
    assert seq["results"]["cloudbucket"]["median"] == 100
    assert seq["ratios"] == {"vs_s3fs": 2.0, "vs_boto3": 0.8}
    assert document["workloads"]["ls_l"]["ratios"] == {"vs_s3fs": 4.0, "vs_rclone": 0.5}
    status = {t["name"]: t["status"] for t in document["targets"]}
    assert status["seq_read >= 0.8x boto3"] == "PASS"  # exactly at the line passes
    assert status["seq_read >= 1.3x s3fs"] == "PASS"
    assert status["ls_l >= 2.5x boto3"] == "SKIP"  # boto3 not measured for it
    assert status["seq_read FUSE CPU <= 0.9 CPU-s/GiB"] == "PASS"
    limit = document["limits"]["rss_limit_mib"]
    assert status[f"seq_read peak RSS <= {limit:.0f} MiB"] == "PASS"


def test_memory_and_cpu_targets_miss_when_exceeded() -> None:
    limit = report.memory_limits()["rss_limit_bytes"]
    document = _document({
        "seq_read": {"cloudbucket": _runs([100], cpu_s=2.0, peak_rss=limit + MiB, bytes=GiB)},
    })
    status = {t["name"]: t["status"] for t in document["targets"]}
    assert status[f"seq_read peak RSS <= {limit / MiB:.0f} MiB"] == "MISS"
    assert status["seq_read FUSE CPU <= 0.9 CPU-s/GiB"] == "MISS"
    assert document["workloads"]["seq_read"]["results"]["cloudbucket"][
        "cpu_s_per_gib_median"] == 2.0


def test_table_lists_failures_and_targets() -> None:
    document = _document({"seq_read": {"cloudbucket": {"samples": [], "errors": ["boom"]}},
                          "ls_l": {"cloudbucket": _runs([0.5], cpu_s=0.1, peak_rss=MiB)}})
    text = report.table(document)
    assert "FAILED" in text and "boom" in text
    assert "SKIP  ls_l >= 2.5x boto3: boto3 or ours not measured" in text


def test_listing_and_first_byte_targets_are_time_ratios() -> None:
    workloads = {"ls": Listing(False), "ttfb": FirstByte()}
    document = report.build({"size_bytes": GiB, "repeat": 5}, {}, list(workloads.values()), {
        "ls": {"cloudbucket": _runs([0.3, 0.4, 0.4]), "boto3": _runs([1.0, 1.0, 1.1])},
        "ttfb": {"cloudbucket": _runs([0.016]), "boto3": _runs([0.010])},
    }, ["cloudbucket", "boto3"], {})
    status = {t["name"]: t["status"] for t in document["targets"]}
    assert status["ls >= 2.5x boto3"] == "PASS"  # 0.4 s is exactly 0.4x boto3's 1.0 s
    assert status["ttfb >= 0.667x boto3"] == "MISS"  # 1.6x the raw GET's time


def test_cache_targets_compare_passes_and_workloads() -> None:
    from tests.perf.workloads import CacheRandRead, CacheSeqRead, CacheSmallFiles, RandRead

    workloads = [CacheSeqRead(), CacheRandRead(), CacheSmallFiles(), RandRead()]
    results = {
        "cache_seq_read": {"cloudbucket": _runs([1500, 1600, 1700], speedup=3.0),
                           "boto3": _runs([800, 800, 800])},
        "cache_small": {"cloudbucket": _runs([1.0, 1.0, 1.0], speedup=1.5)},
        "cache_rand_read": {"cloudbucket": _runs([400, 400, 400], speedup=9.0)},
        "rand_read": {"cloudbucket": _runs([100, 100, 100])},
    }
    document = report.build({"size_bytes": GiB, "repeat": 3}, {}, workloads, results,
                            ["cloudbucket", "boto3"], {})
    status = {t["name"]: t["status"] for t in document["targets"]}
    assert status["cache_seq_read >= 1.5x boto3"] == "PASS"  # 1600 / 800
    assert status["cache_seq_read second pass >= 2.0x the first"] == "PASS"
    assert status["cache_small second pass >= 2.0x the first"] == "MISS"
    assert status["cache_rand_read >= 5.0x rand_read (ours)"] == "MISS"  # 400 / 100
    for workload in workloads[:3]:
        assert workload.group == "cache"
        assert workload.mount_flags == (f"--cache={workload.cache}",)
