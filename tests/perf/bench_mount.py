"""Mount benchmark (`make bench-mount`): how fast a volume goes live and what it costs idle.

    python -m tests.perf.bench_mount [--publishes 20] [--concurrent 50] [--force]
                                     [--out bench-mount.json]

1. Latency: `--publishes` rounds, each timing NodePublishVolume -> live mount through a real
   `cloudbucket-csi serve --mode node` (in-process supervisor, warm zygote), interleaved
   with the mount commands of s3fs and `rclone mount` (time until their mount answers) and
   our own `cloudbucket-csi mount`. p50/p90 of each.
2. Memory: `--concurrent` volumes published at once and held idle; the PSS of every FUSE
   server plus the zygote, summed from /proc/PID/smaps_rollup (PSS splits shared pages
   fairly, so the sum is what the node really pays). Per-mount PSS is the sum over servers
   divided by their count; the zygote is reported apart.
Refuses to start on a loaded machine (1-minute load average > 0.5) unless --force: figures
taken while other work runs measure that work.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from driver.devservers import SeaweedS3
from tests.perf.clients import Cloudbucket, Rclone, S3fs, unmount

MiB = 1024 * 1024
TARGETS = {"p50_s": 0.15, "p90_s": 0.3, "pss_per_mount_mib": 20.0, "pss_total_50_gib": 1.5}


def pss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def refuse_if_loaded(force: bool) -> None:
    load = os.getloadavg()[0]
    if load > 0.5 and not force:
        sys.exit(f"refusing to benchmark: 1-minute load average is {load:.2f} (> 0.5); "
                 "wait for an idle machine or pass --force (figures will not be trustworthy)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.perf.bench_mount")
    parser.add_argument("--publishes", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--peers", default="s3fs,rclone")
    parser.add_argument("--out", default="bench-mount.json")
    args = parser.parse_args(argv)
    refuse_if_loaded(args.force)
    from driver.csi import csi_pb2
    from tests.integration.csi_support import csi_server, publish_request

    results: dict[str, Any] = {"load_before": os.getloadavg()[0], "targets": TARGETS}
    with SeaweedS3() as seaweed, csi_server(mode="node") as csi, \
            tempfile.TemporaryDirectory(prefix="bench-mount-") as tmp:
        work = Path(tmp)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        seaweed.client().create_bucket(Bucket=bucket)
        peers = [cls(seaweed, bucket, work) for name, cls in (("s3fs", S3fs), ("rclone", Rclone))
                 if name in args.peers.split(",")]
        peers = [peer for peer in peers if peer.unavailable() is None]
        ours_cli = Cloudbucket(seaweed, bucket, work)
        samples: dict[str, list[float]] = {"NodePublishVolume": [], "cloudbucket mount": []}
        samples.update({peer.name: [] for peer in peers})
        pods = csi.workdir / "pods"

        def publish(index: int, volume: str) -> tuple[Path, float]:
            target = pods / f"p{index}" / "mount"
            target.parent.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            csi.node.NodePublishVolume(publish_request(seaweed, bucket, target,
                                                       volume_id=volume), timeout=120)
            return target, time.perf_counter() - started

        def unpublish(target: Path, volume: str) -> None:
            csi.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
                volume_id=volume, target_path=str(target)), timeout=120)

        # Warm-up (not recorded): the zygote's first fork and SeaweedFS's first requests.
        target, _ = publish(0, "warm")
        unpublish(target, "warm")
        for round_number in range(args.publishes):
            order = ["ours", "cli", *[peer.name for peer in peers]]
            order = order[round_number % len(order):] + order[:round_number % len(order)]
            for name in order:
                if name == "ours":
                    target, seconds = publish(round_number + 1, f"v{round_number}")
                    samples["NodePublishVolume"].append(seconds)
                    unpublish(target, f"v{round_number}")
                    continue
                client = ours_cli if name == "cli" else next(p for p in peers if p.name == name)
                mount_dir = work / f"{name}-{round_number}"
                mount_dir.mkdir()
                mounted = client.mount(mount_dir)
                samples[client.name if name != "cli" else "cloudbucket mount"].append(
                    mounted.mount_seconds)
                unmount(mounted)
        results["latency"] = {
            name: {"p50": statistics.median(values), "p90": percentile(values, 0.9),
                   "min": min(values), "max": max(values), "samples": values}
            for name, values in samples.items() if values}

        # Memory: hold N idle mounts at once.
        held = []
        for index in range(args.concurrent):
            target, _ = publish(1000 + index, f"held-{index}")
            held.append((target, f"held-{index}"))
        servers = [int(s["pid"]) for s in csi.servers()]
        server_pss = [pss_bytes(pid) for pid in servers]
        zygote = [p for p in _children_named("driver.mounts.zygote") if p not in servers]
        zygote_pss = sum(pss_bytes(pid) for pid in zygote)
        results["memory"] = {
            "mounts": len(servers),
            "pss_per_mount_mib": statistics.mean(server_pss) / MiB,
            "pss_servers_total_mib": sum(server_pss) / MiB,
            "pss_zygote_mib": zygote_pss / MiB,
            "pss_total_gib": (sum(server_pss) + zygote_pss) / (1024 * MiB),
        }
        for target, volume in held:
            unpublish(target, volume)
    results["load_after"] = os.getloadavg()[0]
    _report(results)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


def _children_named(needle: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if needle in cmdline:
                found.append(int(entry))
    return found


def _report(results: dict[str, Any]) -> None:
    print(f"load average before {results['load_before']:.2f}, after "
          f"{results['load_after']:.2f}")
    for name, figures in results["latency"].items():
        print(f"{name:>20}: p50 {figures['p50'] * 1000:7.1f} ms  p90 "
              f"{figures['p90'] * 1000:7.1f} ms  (min {figures['min'] * 1000:.1f}, max "
              f"{figures['max'] * 1000:.1f}, n={len(figures['samples'])})")
    memory = results["memory"]
    print(f"{memory['mounts']} idle mounts: PSS {memory['pss_per_mount_mib']:.1f} MiB per "
          f"mount, zygote {memory['pss_zygote_mib']:.1f} MiB, total "
          f"{memory['pss_total_gib']:.2f} GiB")
    ours = results["latency"]["NodePublishVolume"]
    checks = [("NodePublishVolume p50 <= 0.15 s", ours["p50"] <= TARGETS["p50_s"]),
              ("NodePublishVolume p90 <= 0.3 s", ours["p90"] <= TARGETS["p90_s"]),
              ("PSS per idle mount <= 20 MiB",
               memory["pss_per_mount_mib"] <= TARGETS["pss_per_mount_mib"])]
    if memory["mounts"] >= 50:
        checks.append(("50 mounts total PSS <= 1.5 GiB",
                       memory["pss_total_gib"] <= TARGETS["pss_total_50_gib"]))
    for what, passed in checks:
        print(f"{'PASS' if passed else 'MISS'} {what}")


if __name__ == "__main__":
    sys.exit(main())
