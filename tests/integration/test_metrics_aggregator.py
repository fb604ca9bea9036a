"""The node plugin's /metrics over two real FUSE servers' UNIX sockets.

Each mount serves its own registry on a socket (`--metrics-address=unix:PATH`, what the
supervisor's FUSE servers do); `serve_plugin_metrics` scrapes every listed mount, adds its
volume labels, and a mount that is no longer listed (unpublished) leaves no sample behind.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from driver import metrics
from driver.devservers import LOOPBACK

MiB = 1024 * 1024


def scrape(address: str) -> list:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text)
            for sample in family.samples]


def read_bytes_by_volume(page: list) -> dict[str, float]:
    return {sample.labels["volume_id"]: sample.value for sample in page
            if sample.name == "cloudbucket_fs_read_bytes_total" and "volume_id" in sample.labels}


def test_samples_labelled_per_volume_and_gone_once_delisted(s3, bucket, mount,
                                                            tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="a.bin", Body=os.urandom(3 * MiB))
    s3.put_object(Bucket=bucket, Key="b.bin", Body=os.urandom(5 * MiB))
    sockets = {name: str(tmp_path / f"{name}.sock") for name in ("vol-a", "vol-b")}
    mounts = {name: mount(bucket, f"--metrics-address=unix:{path}")
              for name, path in sockets.items()}
    assert (mounts["vol-a"] / "a.bin").read_bytes()
    assert (mounts["vol-b"] / "b.bin").read_bytes()

    listed = {
        name: (path, {"volume_id": name, "bucket": bucket, "pod_namespace": "ns",
                      "pod_name": f"pod-{name}"})
        for name, path in sockets.items()
    }
    increases: list[tuple[dict, str, float]] = []
    server = metrics.serve_plugin_metrics(
        LOOPBACK, 0, lambda: list(listed.values()),
        on_increase=lambda labels, name, delta: increases.append((labels, name, delta)))
    try:
        metrics.FUSE_SERVER_DEATHS.labels("killed").inc()  # the plugin's own registry
        page = scrape(server.address)
        assert read_bytes_by_volume(page) == {"vol-a": 3 * MiB, "vol-b": 5 * MiB}
        labelled = [s for s in page if s.name == "cloudbucket_fs_operations_total"
                    and s.labels.get("volume_id") == "vol-b"]
        assert labelled and all(s.labels["bucket"] == bucket and s.labels["pod_namespace"]
                                == "ns" and s.labels["pod_name"] == "pod-vol-b"
                                for s in labelled)
        mounts_gauge = [s.value for s in page if s.name == "cloudbucket_mounts"]
        assert mounts_gauge == [2]
        up = {s.labels["volume_id"]: s.value for s in page
              if s.name == "cloudbucket_mount_scrape_up"}
        assert up == {"vol-a": 1, "vol-b": 1}
        deaths = [s for s in page if s.name == "cloudbucket_fuse_server_deaths_total"]
        assert [s.labels for s in deaths] == [{"cause": "killed"}]
        assert deaths[0].value >= 1
        # Per-process samples come from each FUSE server, told apart by volume.
        rss = {s.labels.get("volume_id") for s in page
               if s.name == "process_resident_memory_bytes"}
        assert rss == {"vol-a", "vol-b", None}  # None: the plugin's own process
        # The first scrape reported the watched counters' values (uploads: none yet).
        assert all(name != "cloudbucket_uploads_total" for _, name, _ in increases)

        # vol-b is unpublished: no longer listed, so nothing of it remains.
        del listed["vol-b"]
        page = scrape(server.address)
        assert read_bytes_by_volume(page) == {"vol-a": 3 * MiB}
        assert not [s for s in page if s.labels.get("volume_id") == "vol-b"]
        assert [s.value for s in page if s.name == "cloudbucket_mounts"] == [1]

        # A write on vol-a increases a watched counter: reported once, with vol-a's labels.
        with open(mounts["vol-a"] / "new.txt", "wb") as handle:
            handle.write(b"hello")
        scrape(server.address)
        uploads = [(labels, delta) for labels, name, delta in increases
                   if name == "cloudbucket_uploads_total"]
        assert uploads == [({"volume_id": "vol-a", "bucket": bucket, "pod_namespace": "ns",
                             "pod_name": "pod-vol-a", "outcome": "ok"}, 1.0)]
        scrape(server.address)
        assert len([1 for _, name, _ in increases if name == "cloudbucket_uploads_total"]) == 1

        # A mount whose server is gone is reported down, not fatal to the scrape.
        listed["vol-gone"] = (str(tmp_path / "missing.sock"), {"volume_id": "vol-gone"})
        page = scrape(server.address)
        up = {s.labels["volume_id"]: s.value for s in page
              if s.name == "cloudbucket_mount_scrape_up"}
        assert up == {"vol-a": 1, "vol-gone": 0}
    finally:
        server.close()
