"""Benchmark harness: our mount against s3fs-fuse, rclone mount and raw boto3 on SeaweedFS.

    python -m tests.perf.bench [--only read,write,meta,small|WORKLOAD] [--repeat N]
                               [--size-mib N] [--duration S] [--quick] [--force]
                               [--peers all|none|s3fs,rclone,boto3] [--out bench-results.json]

Figures are only worth having from a quiet machine, so the harness refuses to start when
the 1-minute load average is above 0.5, another FUSE filesystem is mounted or a test server
(weed, fake-gcs-server) or FUSE client is running; `--force` runs anyway, says so loudly
and records the reasons in the results (`meta.preflight`).

One SeaweedFS server on loopback holds the seeded objects. Every measurement is cold: the
page cache is dropped (as root) and the client is mounted afresh, and the FUSE server's CPU
time and peak RSS are recorded for the measured window. Clients take turns within each
repetition (in a rotating order), so load from elsewhere on the machine spreads over all of
them and the medians of one run can be compared. Results: a table on stdout, a JSON file
with every sample, a PNG of the ratios, and PASS/MISS lines for the project's targets.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from driver.devservers import SeaweedS3
from tests.perf import report
from tests.perf.clients import (
    OURS,
    RAW,
    Client,
    Cloudbucket,
    Mounted,
    Raw,
    Rclone,
    S3fs,
    python_version,
    unmount,
)
from tests.perf.monitor import Monitor, Usage, process_usage
from tests.perf.workloads import (
    GROUPS,
    SMALL_SIZE,
    Context,
    MiB,
    MountTime,
    RunResult,
    Workload,
    all_workloads,
    big_key,
    list_key,
    small_key,
)

QUICK_DURATION = 5.0
DEFAULT_DURATION = 10.0
DEFAULT_REPEAT = 5
MAX_LOAD = 0.5
# Processes whose presence means the figures would be shared with other work.
BUSY_PROCESSES = ("weed", "fake-gcs-server", "s3fs", "rclone", "minio", "goofys",
                  "mount-s3", "gcsfuse")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.perf.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="all",
                        help="comma list of groups (read, write, meta, small) or workloads")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help=f"runs per client (median; default {DEFAULT_REPEAT})")
    parser.add_argument("--force", action="store_true",
                        help="run even when the machine is not quiet (the results say so)")
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the big objects")
    parser.add_argument("--duration", type=float, default=None,
                        help=f"seconds of random reads (default {DEFAULT_DURATION:.0f}, "
                        f"{QUICK_DURATION:.0f} with --quick)")
    parser.add_argument("--list-count", type=int, default=None,
                        help="objects in the listed directory (default 10000, 1000 quick)")
    parser.add_argument("--small-count", type=int, default=None,
                        help="4 KiB files read (default 1000, 200 quick)")
    parser.add_argument("--quick", action="store_true", help="short durations and counts")
    parser.add_argument("--variant", action="append", default=[],
                        metavar="NAME:ENV=VALUE|--FLAG[,...]",
                        help="one more client: our mount with this environment and these "
                        "mount flags, named cloudbucket-NAME and run in turn with the others, "
                        "so a setting's cost is a same-run ratio (e.g. "
                        "nometrics:CLOUDBUCKET_METRICS=off or single-cpu:--single-cpu)")
    parser.add_argument("--peers", default="s3fs,boto3",
                        help="all, none, or a comma list of s3fs, rclone, boto3 "
                        "(default s3fs,boto3: the comparators of the targets)")
    parser.add_argument("--mount-flags", default="",
                        help="extra flags for our mount, e.g. '--direct-io'")
    parser.add_argument("--out", default="bench-results.json", help="JSON results file")
    parser.add_argument("--chart", default=None, help="PNG chart (default: OUT with .png)")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="record py-spy stacks (folded) of our FUSE server per run")
    parser.add_argument("--mount-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for our FUSE server, e.g. MALLOC_ARENA_MAX=2")
    parser.add_argument("--count-requests", action="store_true",
                        help="count our mount's store calls and bytes per run (diagnostic)")
    parser.add_argument("--profile-args", default="",
                        help="extra py-spy record flags, e.g. '--gil' (only threads holding "
                        "the GIL: where Python spends CPU) or '--idle'")
    parser.add_argument("--run-timeout", type=float, default=900,
                        help="seconds before a stuck run's FUSE server is killed")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.size_mib < 1:
        parser.error("--repeat and --size-mib must be at least 1")
    if any("=" not in item for item in args.mount_env):
        parser.error("--mount-env takes NAME=VALUE")
    if args.duration is None:
        args.duration = QUICK_DURATION if args.quick else DEFAULT_DURATION
    if args.list_count is None:
        args.list_count = 1000 if args.quick else 10_000
    if args.small_count is None:
        args.small_count = 200 if args.quick else 1000
    return args


def machine_problems(loadavg: float | None = None, mounts: str | None = None,
                     processes: list[tuple[int, str]] | None = None) -> list[str]:
    """Why the machine is not quiet enough for trustworthy figures (empty when it is)."""
    import psutil

    problems = []
    load = os.getloadavg()[0] if loadavg is None else loadavg
    if load > MAX_LOAD:
        problems.append(f"1-minute load average is {load:.2f} (> {MAX_LOAD})")
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            mounts = ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and (fields[2] == "fuse" or fields[2].startswith("fuse.")):
            problems.append(f"a FUSE filesystem is mounted: {fields[2]} at {fields[1]}")
    if processes is None:
        processes = []
        for proc in psutil.process_iter(["pid", "name"]):
            with contextlib.suppress(psutil.Error):
                processes.append((proc.info["pid"], proc.info["name"] or ""))
    for pid, name in processes:
        if name in BUSY_PROCESSES and pid != os.getpid():
            problems.append(f"{name} is running (pid {pid})")
    return problems


def preflight(force: bool) -> list[str]:
    """Refuse to start on a busy machine unless forced; return the problems found."""
    problems = machine_problems()
    if not problems:
        return []
    lines = "\n".join(f"  - {p}" for p in problems)
    if not force:
        raise SystemExit(f"bench: refusing to start, the machine is not quiet:\n{lines}\n"
                         "Stop the other work and try again, or pass --force to run anyway "
                         "(the figures will not be comparable).")
    banner = "!" * 78
    log(f"{banner}\nbench: --force: running on a machine that is NOT quiet; these figures "
        f"are not\ncomparable to a quiet run:\n{lines}\n{banner}")
    return problems


def select_workloads(only: str, mount_label: str) -> list[Workload]:
    workloads = all_workloads(mount_label)
    if only == "all":
        return workloads
    wanted = {item.strip() for item in only.split(",") if item.strip()}
    names = {w.name for w in workloads}
    unknown = wanted - names - set(GROUPS)
    if unknown:
        raise SystemExit(f"bench: unknown --only item(s): {', '.join(sorted(unknown))}; "
                         f"groups: {', '.join(GROUPS)}; workloads: {', '.join(sorted(names))}")
    return [w for w in workloads if w.name in wanted or w.group in wanted]


def select_peers(peers: str) -> list[str]:
    if peers == "all":
        return ["s3fs", "rclone", RAW]
    if peers == "none":
        return []
    chosen = [p.strip() for p in peers.split(",") if p.strip()]
    bad = set(chosen) - {"s3fs", "rclone", RAW}
    if bad:
        raise SystemExit(f"bench: unknown peer(s): {', '.join(sorted(bad))}")
    return chosen


def csi_available() -> bool:
    return importlib.util.find_spec("driver.server") is not None


def mount_time_label() -> str:
    """What `mount_time` measures: NodePublishVolume if the CSI server exists, else a stand-in."""
    peers = "; peers: from starting the mount command to a live mount"
    if csi_available():
        return ("cloudbucket: NodePublishVolume on a real `cloudbucket-csi serve --mode=node` "
                "(gRPC over a unix socket) until it returns with the mount live" + peers)
    return ("cloudbucket: stand-in, `cloudbucket-csi mount` returning 0 (driver.server does "
            "not exist)" + peers)


class CsiPublisher:
    """Publishes the bench bucket through the node service, as kubelet would."""

    def __init__(self, server: SeaweedS3, bucket: str, stack: contextlib.ExitStack) -> None:
        from tests.integration.csi_support import csi_server

        self.server = server
        self.bucket = bucket
        self.csi = stack.enter_context(csi_server(mode="node"))
        self._count = 0

    def publish(self, target: Path) -> tuple[float, int, str]:
        """NodePublishVolume: (seconds until it returned, FUSE server pid, volume id)."""
        from driver.mounts import mountinfo
        from tests.integration.csi_support import publish_request

        self._count += 1
        volume_id = f"bench-{self._count}"
        request = publish_request(self.server, self.bucket, target, volume_id=volume_id)
        started = time.perf_counter()
        self.csi.node.NodePublishVolume(request, timeout=120)
        seconds = time.perf_counter() - started
        if not mountinfo.is_alive(str(target)):
            raise RuntimeError(f"NodePublishVolume returned but {target} is not live")
        return seconds, self.csi.server_pid(target), volume_id

    def unpublish(self, target: Path, volume_id: str, pid: int) -> None:
        import psutil

        from driver.csi import csi_pb2

        self.csi.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
            volume_id=volume_id, target_path=str(target)), timeout=120)
        with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
            psutil.Process(pid).wait(60)


# ---------------------------------------------------------------------------------------
# Environment: page cache, seeding


class PageCache:
    """Drops the page cache between cold runs when we may (root); remembers why not."""

    def __init__(self) -> None:
        self.problem: str | None = None

    def drop(self) -> None:
        os.sync()  # dirty pages (seeded or written objects) go to disk now, not during a run
        if self.problem:
            return
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError as exc:
            self.problem = f"page cache not dropped between runs: {exc.strerror}"
            log(f"bench: warning: {self.problem}")


def cpu_busy(before: list[int], after: list[int]) -> float:
    """Busy fraction of all CPUs between two /proc/stat "cpu" lines' counters (idle and
    iowait count as not busy)."""
    total = sum(after) - sum(before)
    idle = sum(after[3:5]) - sum(before[3:5])
    return 1.0 - idle / total if total > 0 else 0.0


def _cpu_counters() -> list[int]:
    with open("/proc/stat") as stat:
        return [int(field) for field in stat.readline().split()[1:]]


def settle(quiet: float = 0.1, seconds: int = 3, timeout: float = 180.0) -> float | None:
    """Wait until the machine is idle (busy < `quiet` for `seconds` one-second samples in a
    row); the seconds it took, None on timeout. Seeding 6 GiB leaves SeaweedFS and the disk
    busy for a while: the first full run measured its sequential reads at load 2-12."""
    started = time.monotonic()
    os.sync()
    calm = 0
    before = _cpu_counters()
    while calm < seconds:
        if time.monotonic() - started > timeout:
            return None
        time.sleep(1.0)  # the sampling period itself, not a synchronisation
        after = _cpu_counters()
        calm = calm + 1 if cpu_busy(before, after) < quiet else 0
        before = after
    return time.monotonic() - started


class RandomStream:
    """A readable file of `size` deterministic random bytes (uploads without a local copy)."""

    def __init__(self, size: int, seed: int) -> None:
        self.remaining = size
        self.random = random.Random(seed)

    def read(self, amount: int = -1) -> bytes:
        if amount < 0 or amount > self.remaining:
            amount = self.remaining
        self.remaining -= amount
        return self.random.randbytes(amount)


def seed(raw: Raw, ctx: Context, needs: set[str], workdir: Path) -> dict[str, float]:
    """Put the objects the selected workloads need into the bucket; return seconds taken."""
    from boto3.s3.transfer import TransferConfig

    client = raw.client
    timings: dict[str, float] = {}
    big = 4 if "big4" in needs else 1 if "big1" in needs else 0
    started = time.perf_counter()
    config = TransferConfig(multipart_chunksize=16 * MiB, max_concurrency=4)
    for index in range(big):
        client.upload_fileobj(RandomStream(ctx.size, index), ctx.bucket, big_key(index),
                              Config=config)
    if big:
        timings["big"] = time.perf_counter() - started

    def put_many(keys: list[str], body: Any) -> None:
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda key: client.put_object(Bucket=ctx.bucket, Key=key,
                                                        Body=body(key)), keys))

    if "list" in needs:
        started = time.perf_counter()
        put_many([list_key(i) for i in range(ctx.list_count)], lambda key: key.encode())
        timings["list"] = time.perf_counter() - started
    if "small" in needs:
        started = time.perf_counter()
        put_many([small_key(i) for i in range(ctx.small_count)],
                 lambda key: random.Random(key).randbytes(SMALL_SIZE))
        timings["small"] = time.perf_counter() - started
    if "source" in needs:
        started = time.perf_counter()
        write_source(ctx.source_file, ctx.size)
        timings["source"] = time.perf_counter() - started
    return timings


def write_source(path: Path, size: int) -> None:
    stream = RandomStream(size, 99)
    with open(path, "wb") as handle:
        while chunk := stream.read(16 * MiB):
            handle.write(chunk)


def source_dir(size: int) -> Path:
    """Keep the write workload's source in tmpfs when it fits, so the page-cache drop does
    not turn the write benchmark into a local-disk read benchmark."""
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        if shm.is_dir() and shutil.disk_usage(shm).free > 2 * size + 256 * MiB:
            return Path(tempfile.mkdtemp(prefix="cloudbucket-bench-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="cloudbucket-bench-src-"))


# ---------------------------------------------------------------------------------------
# Running


class Watchdog:
    """Kills a FUSE server that keeps a run waiting longer than `timeout` (the run then
    fails with ENOTCONN instead of hanging the harness)."""

    def __init__(self, pid: int, timeout: float) -> None:
        self.fired = False
        self._timer = threading.Timer(timeout, self._fire, args=(pid,))
        self._timer.daemon = True

    def _fire(self, pid: int) -> None:
        self.fired = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


@contextlib.contextmanager
def profiled(pid: int, directory: str | None, name: str,
             extra: tuple[str, ...] = ()) -> Iterator[None]:
    """py-spy record of the FUSE server for the duration of a run (when asked for)."""
    if not directory:
        yield
        return
    import subprocess

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    Path(directory).mkdir(parents=True, exist_ok=True)
    # Collapsed stacks ("folded"): greppable, and flamegraph.pl / speedscope read them.
    out = Path(directory) / f"{name}.folded"
    proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "200", "--threads",
                             "--format", "raw", "--output", str(out), "--nonblocking", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # py-spy attaches asynchronously; let it start before the run does
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if out.exists():
            log(f"bench: profile of {name}: {out}")
        else:  # e.g. a flag py-spy refuses: say why instead of naming a file that is not there
            why = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            log(f"bench: no profile of {name}: py-spy said {why[-500:]!r}")


class Runner:
    def __init__(self, args: argparse.Namespace, ctx: Context, workdir: Path,
                 cache: PageCache) -> None:
        self.args = args
        self.ctx = ctx
        self.workdir = workdir
        self.cache = cache
        self.publisher: CsiPublisher | None = None  # set when mount_time uses the CSI path
        self._mounts = 0

    def _target(self) -> Path:
        self._mounts += 1
        target = self.workdir / f"mnt-{self._mounts}"
        target.mkdir()
        return target

    def measure(self, workload: Workload, client: Client, rep: int) -> dict[str, Any]:
        self.cache.drop()
        if not client.is_mount:
            result = workload.run_raw(self.ctx)
            return sample(result, None)
        if workload.mount_flags and isinstance(client, Cloudbucket):
            client = client.with_flags(workload.mount_flags)
        target = self._target()
        try:
            if isinstance(workload, MountTime) and self.publisher is not None \
                    and isinstance(client, Cloudbucket):
                seconds, pid, volume_id = self.publisher.publish(target)
                try:
                    usage = process_usage(pid)
                finally:
                    self.publisher.unpublish(target, volume_id, pid)
                return sample(RunResult(seconds, seconds, extra={"via": "NodePublishVolume"}),
                              usage)
            if isinstance(workload, MountTime):
                mounted = client.mount(target)
                try:
                    usage = process_usage(mounted.pid)  # everything it did to come up
                finally:
                    unmount(mounted)
                seconds = mounted.mount_seconds
                return sample(RunResult(seconds, seconds), usage)
            with client.mounted(target) as mounted:
                entry = self._measure_mounted(workload, client, mounted, rep)
            if isinstance(client, Cloudbucket) and client.count_requests:
                # Written by the server at exit; covers its whole life (mount + workload).
                counts = client.counts_file(mounted)
                if counts.exists():
                    entry["store_calls"] = json.loads(counts.read_text())
            return entry
        finally:
            with contextlib.suppress(OSError):
                target.rmdir()

    def _measure_mounted(self, workload: Workload, client: Client, mounted: Mounted,
                         rep: int) -> dict[str, Any]:
        profile = self.args.profile if client.name == OURS else None
        with (profiled(mounted.pid, profile, f"{workload.name}-{rep}",
                       tuple(self.args.profile_args.split())),
              Watchdog(mounted.pid, self.args.run_timeout) as watchdog,
              Monitor(mounted.pid) as monitor):
            try:
                result = workload.run_mount(self.ctx, mounted.path, client.name)
            except OSError as exc:
                if watchdog.fired:
                    raise TimeoutError(f"run exceeded {self.args.run_timeout:.0f}s; "
                                       "FUSE server killed") from exc
                raise
        assert monitor.usage is not None
        return sample(result, monitor.usage)


def sample(result: RunResult, usage: Usage | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"value": result.value, "seconds": result.seconds,
                             "bytes": result.bytes, "ops": result.ops,
                             "loadavg_1m": os.getloadavg()[0], **result.extra}
    if usage is not None:
        entry.update(cpu_s=usage.cpu_s, peak_rss=usage.peak_rss, hwm_rss=usage.hwm_rss)
    return entry


def run_all(args: argparse.Namespace, workloads: list[Workload], clients: list[Client],
            runner: Runner) -> dict[str, dict[str, dict[str, Any]]]:
    """{workload: {client: {"samples": [...], "errors": [...]}}}, clients in turn."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for workload in workloads:
        eligible = [c for c in clients if (c.is_mount or workload.raw) and (
            c.name.startswith(OURS) or workload.peers is None or c.name in workload.peers)]
        per_client = {c.name: {"samples": [], "errors": []} for c in eligible}
        results[workload.name] = per_client
        for rep in range(args.repeat):
            shift = rep % len(eligible)
            for client in eligible[shift:] + eligible[:shift]:
                try:
                    entry = runner.measure(workload, client, rep)
                except Exception as exc:  # noqa: BLE001 - recorded; the other runs go on
                    message = f"{type(exc).__name__}: {exc}"
                    per_client[client.name]["errors"].append(message)
                    log(f"bench: {workload.name:11} {client.name:11} run {rep + 1}: "
                        f"FAILED {message[:400]}")
                    continue
                per_client[client.name]["samples"].append(entry)
                log(f"bench: {workload.name:11} {client.name:11} run {rep + 1}: "
                    f"{report.describe_sample(workload, entry)}")
    return results


def build_clients(args: argparse.Namespace, server: SeaweedS3, bucket: str, workdir: Path,
                  raw: Raw) -> tuple[list[Client], dict[str, str]]:
    ours = Cloudbucket(server, bucket, workdir, tuple(args.mount_flags.split()),
                       count_requests=args.count_requests,
                       env=dict(item.split("=", 1) for item in args.mount_env))
    clients: list[Client] = [ours]
    for variant in args.variant:
        name, _, assignments = variant.partition(":")
        items = [item for item in assignments.split(",") if item]
        flags = tuple(item for item in items if item.startswith("--"))
        env = dict(item.split("=", 1) for item in items if not item.startswith("--"))
        clients.append(dataclasses.replace(ours, name=f"{OURS}-{name}", env={**ours.env, **env},
                                           flags=ours.flags + flags,
                                           log_prefix=f"{OURS}-{name}", _variants={}))
    skipped: dict[str, str] = {}
    for name in select_peers(args.peers):
        client: Client = {"s3fs": lambda: S3fs(server, bucket, workdir),
                          "rclone": lambda: Rclone(server, bucket, workdir),
                          RAW: lambda: raw}[name]()
        reason = client.unavailable()
        if reason:
            skipped[name] = reason
            log(f"bench: skipping {name}: {reason}")
        else:
            clients.append(client)
    return clients, skipped


def versions(clients: list[Client], server: SeaweedS3) -> dict[str, str]:
    import boto3

    from driver.devservers import find_binary
    from tests.perf.clients import _first_line

    found = {client.name: client.version() for client in clients}
    found.update(weed=_first_line([find_binary("weed"), "version"]),
                 boto3=boto3.__version__, python=python_version(),
                 kernel=os.uname().release)
    return found


def _git_commit() -> str | None:
    import subprocess

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=False,
                                cwd=Path(__file__).resolve().parent)
        return result.stdout.strip() or None
    return None


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwind through the finally blocks: unmount, stop the server


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workloads = select_workloads(args.only, mount_time_label())
    if not workloads:
        raise SystemExit("bench: nothing selected")
    problems = preflight(args.force)  # before our own SeaweedFS starts
    signal.signal(signal.SIGTERM, _terminate)
    started_at = time.time()
    load_start = os.getloadavg()
    size = args.size_mib * MiB
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="cloudbucket-bench-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        src = source_dir(size)
        stack.callback(shutil.rmtree, src, ignore_errors=True)
        log("bench: starting SeaweedFS")
        server = SeaweedS3()
        stack.enter_context(server)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        raw = Raw(server, bucket)
        raw.client.create_bucket(Bucket=bucket)
        ctx = Context(bucket=bucket, size=size, duration=args.duration,
                      list_count=args.list_count, small_count=args.small_count,
                      source_file=src / "source.bin", raw=raw)
        clients, skipped = build_clients(args, server, bucket, workdir, raw)
        needs = set().union(*(w.needs for w in workloads))
        log(f"bench: seeding {', '.join(sorted(needs)) or 'nothing'}")
        seeding = seed(raw, ctx, needs, workdir)
        settled = None
        if not args.force:  # a forced run is untrusted anyway (and the test suite's is busy)
            settled = settle()
            log("bench: the machine did not settle after seeding (busy > 10% for 180 s)"
                if settled is None else f"bench: settled {settled:.0f} s after seeding")
        cache = PageCache()
        runner = Runner(args, ctx, workdir, cache)
        if csi_available() and any(isinstance(w, MountTime) for w in workloads):
            runner.publisher = CsiPublisher(server, bucket, stack)
        results = run_all(args, workloads, clients, runner)
        found_versions = versions(clients, server)
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": time.time() - started_at,
        "argv": sys.argv[1:] if argv is None else argv,
        "size_bytes": size, "repeat": args.repeat, "duration_s": args.duration,
        "list_count": args.list_count, "small_count": args.small_count,
        "quick": args.quick, "mount_flags": args.mount_flags, "mount_env": args.mount_env,
        "commit": _git_commit(), "cpus": os.cpu_count(),
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "seeding_s": seeding, "settled_after_seeding_s": settled,
        "page_cache": cache.problem or "synced and dropped before every run",
        "raw_client": "boto3 client, path style, checksums only when required",
        "note": "medians of the same run; clients take turns within each repetition",
        "preflight": problems or "quiet: load, mounts and processes checked before start",
        "trusted": not problems,
    }
    document = report.build(meta, found_versions, workloads, results,
                            [c.name for c in clients], skipped)
    Path(args.out).write_text(json.dumps(document, indent=2) + "\n")
    print(report.table(document))
    chart = args.chart or str(Path(args.out).with_suffix(".png"))
    report.chart(document, chart)
    log(f"bench: wrote {args.out} and {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
