"""The soak: many mounts, mixed readers and writers, faults on every request, for minutes.

`make soak` (not part of `make test`): 50 mounts of one SeaweedFS bucket, each through
`cloudbucket-csi mount` and a seeded fault proxy (tests/faults.py, 5% of requests), each
with one writer and one reader thread for 10 minutes; every FUSE server's RSS is sampled
each second. Checked, and printed as figures at the end:
- every acknowledged write is in the bucket byte-exact; no failed write left an object;
- every read returned the object's bytes or EIO, never other bytes;
- no multipart upload is pending after the mounts are gone;
- no FUSE server died; each server's RSS stayed within idle + --memory-target + the
  overhead the README states.
Exit status 0 only when all of that holds. Shorter runs for a quick proof:
`python -m tests.soak --mounts 5 --minutes 1`.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from driver.devservers import SeaweedS3
from tests.faults import FaultProxy
from tests.helpers import MountProcess, mount_bucket

MiB = 1024 * 1024
OVERHEAD_MIB = 48  # README "Reliability": RSS <= idle + memory-target + this


@dataclass
class MountStats:
    index: int
    mount: MountProcess
    idle_rss: int = 0
    peak_rss: int = 0
    died: bool = False
    written: dict[str, str] = field(default_factory=dict)  # key -> sha256 of acknowledged
    failed_writes: list[str] = field(default_factory=list)
    reads_ok: int = 0
    reads_eio: int = 0
    wrong_bytes: list[str] = field(default_factory=list)
    other_errors: list[str] = field(default_factory=list)


def _writer(stats: MountStats, stop: threading.Event, rng: random.Random,
            lock: threading.Lock) -> None:
    sizes = [2_000, 200_000, 3 * MiB, 7 * MiB + 123]
    while not stop.is_set():
        key = f"m{stats.index}/{uuid.uuid4().hex[:10]}.bin"
        data = rng.randbytes(rng.choice(sizes))
        path = stats.mount.path / key
        try:
            path.parent.mkdir(exist_ok=True)
            with open(path, "wb") as out:
                for offset in range(0, len(data), 256 * 1024):
                    out.write(data[offset:offset + 256 * 1024])
        except OSError as exc:
            with lock:
                if exc.errno == errno.EIO:
                    stats.failed_writes.append(key)
                else:
                    stats.other_errors.append(f"write {key}: {exc!r}")
            continue
        with lock:
            stats.written[key] = hashlib.sha256(data).hexdigest()


def _reader(stats: MountStats, stop: threading.Event, rng: random.Random,
            lock: threading.Lock) -> None:
    while not stop.is_set():
        with lock:
            keys = list(stats.written)
        if not keys:
            stop.wait(0.2)
            continue
        key = rng.choice(keys)
        try:
            data = (stats.mount.path / key).read_bytes()
        except OSError as exc:
            with lock:
                if exc.errno == errno.EIO:
                    stats.reads_eio += 1
                else:
                    stats.other_errors.append(f"read {key}: {exc!r}")
            continue
        with lock:
            if hashlib.sha256(data).hexdigest() == stats.written[key]:
                stats.reads_ok += 1
            else:
                stats.wrong_bytes.append(key)


def _sample(all_stats: list[MountStats], stop: threading.Event) -> None:
    while not stop.wait(1.0):
        for stats in all_stats:
            try:
                rss = psutil.Process(stats.mount.pid).memory_info().rss
            except psutil.NoSuchProcess:
                stats.died = True
                continue
            stats.peak_rss = max(stats.peak_rss, rss)


class _Endpoint:
    """SeaweedFS reached through the proxy, as mount_bucket expects a server."""

    def __init__(self, server: SeaweedS3, endpoint: str) -> None:
        self._server = server
        self.endpoint = endpoint

    def credential_env(self) -> dict[str, str]:
        return self._server.credential_env()


def run(mounts: int, minutes: float, fault_rate: float, memory_target: int,
        seed: int) -> dict[str, object]:
    lock = threading.Lock()
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    with SeaweedS3() as server, FaultProxy(server.port, seed=seed, stall_seconds=5) as proxy:
        s3 = server.client()
        bucket = f"soak-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        endpoint = _Endpoint(server, proxy.endpoint)
        all_stats: list[MountStats] = []
        try:
            for index in range(mounts):
                target = workdir / f"mnt{index}"
                target.mkdir()
                mount = mount_bucket(
                    endpoint, bucket, target, f"--memory-target={memory_target}",
                    "--request-timeout=20", "--write-part-size=5MiB", "--read-part-size=8MiB",
                    log_file=workdir / f"mount{index}.log")
                all_stats.append(MountStats(index, mount,
                                            idle_rss=psutil.Process(mount.pid).memory_info().rss))
            print(f"{mounts} mounts live; running {minutes} min with {fault_rate:.0%} faults",
                  flush=True)
            proxy.set_rate(fault_rate)
            stop = threading.Event()
            threads = [threading.Thread(target=_sample, args=(all_stats, stop), daemon=True)]
            for stats in all_stats:
                rng = random.Random(seed * 1000 + stats.index)
                threads.append(threading.Thread(target=_writer, args=(stats, stop, rng, lock),
                                                daemon=True))
                threads.append(threading.Thread(target=_reader, args=(stats, stop, rng, lock),
                                                daemon=True))
            started = time.monotonic()
            for thread in threads:
                thread.start()
            stop.wait(minutes * 60)
            stop.set()
            for thread in threads:
                thread.join(120)
            elapsed = time.monotonic() - started
            for stats in all_stats:
                if not psutil.pid_exists(stats.mount.pid):
                    stats.died = True
        finally:
            proxy.set_rate(0.0)
            for stats in all_stats:
                stats.mount.close()
        pending = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        stored: dict[str, str] = {}
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket):
            for item in page.get("Contents", ()):
                body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                stored[item["Key"]] = hashlib.sha256(body).hexdigest()
        lost = [key for stats in all_stats for key, digest in stats.written.items()
                if stored.get(key) != digest]
        leftovers = [key for stats in all_stats for key in stats.failed_writes if key in stored]
        growth = [(stats.peak_rss - stats.idle_rss) / MiB for stats in all_stats]
        over = [stats.index for stats, grown in zip(all_stats, growth, strict=True)
                if grown > memory_target + OVERHEAD_MIB]
        figures: dict[str, object] = {
            "mounts": mounts, "minutes": round(elapsed / 60, 2), "fault_rate": fault_rate,
            "memory_target_mib": memory_target,
            "faults_injected": dict(proxy.counts()), "requests_through_proxy": len(proxy.requests),
            "writes_acknowledged": sum(len(s.written) for s in all_stats),
            "writes_failed_eio": sum(len(s.failed_writes) for s in all_stats),
            "reads_ok": sum(s.reads_ok for s in all_stats),
            "reads_eio": sum(s.reads_eio for s in all_stats),
            "wrong_bytes": sum(len(s.wrong_bytes) for s in all_stats),
            "other_errors": [e for s in all_stats for e in s.other_errors][:10],
            "lost_acknowledged_writes": len(lost),
            "failed_writes_left_objects": len(leftovers),
            "pending_uploads_after_unmount": len(pending),
            "servers_died": sum(s.died for s in all_stats),
            "idle_rss_mib_median": round(statistics.median(s.idle_rss / MiB for s in all_stats)),
            "rss_growth_mib_max": round(max(growth), 1),
            "rss_growth_mib_median": round(statistics.median(growth), 1),
            "peak_rss_mib_max": round(max(s.peak_rss for s in all_stats) / MiB, 1),
            "mounts_over_target_plus_overhead": over,
        }
    shutil.rmtree(workdir, ignore_errors=True)  # empty mountpoints and the servers' logs
    figures["ok"] = not (figures["wrong_bytes"] or figures["lost_acknowledged_writes"]
                         or figures["failed_writes_left_objects"]
                         or figures["pending_uploads_after_unmount"]
                         or figures["servers_died"] or figures["other_errors"] or over)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mounts", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--memory-target", type=int, default=64, help="MiB per mount")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    figures = run(args.mounts, args.minutes, args.fault_rate, args.memory_target, args.seed)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
