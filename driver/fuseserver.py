"""The FUSE server's main: credentials -> store -> filesystem, for one mount.

Runs in a process of its own: a child forked by the supervisor's zygote (serving a /dev/fuse
descriptor the supervisor mounted, as an unprivileged UID), or `cloudbucket-csi mount`
(serving a directory itself). Either way it opens the store, checks the bucket before the
mount goes live, and reports exactly once: ready, or a typed `Failure` whose kind comes
from the exception's class (driver/failures.py) and whose message is for people.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from pathlib import Path

import structlog

from driver.connect import open_store
from driver.credentials.source import Credentials, CredentialsError
from driver.failures import Failure, FailureKind, kind_of
from driver.options import MountOptions
from driver.store.base import AccessDenied, BucketNotFound, EndpointUnreachable

log = structlog.get_logger()
Report = Callable[[Failure | None], None]
# Allocations before a young collection (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def describe(exc: BaseException, bucket: str, options: MountOptions) -> str:
    """One line for people saying what is wrong; its wording decides nothing."""
    if isinstance(exc, BucketNotFound):
        return f"bucket {bucket} does not exist"
    if isinstance(exc, AccessDenied | CredentialsError):
        return f"access to bucket {bucket} denied: check the credentials ({exc})"
    if isinstance(exc, EndpointUnreachable):
        return f"cannot reach the endpoint {options.endpoint_url or 'of the store'}: {exc}"
    return f"cannot use bucket {bucket}: {exc}"


def failure_for(exc: BaseException, bucket: str, options: MountOptions) -> Failure:
    return Failure(kind_of(exc), describe(exc, bucket, options))


def read_credentials(path: str | None) -> Credentials:
    if not path:
        return Credentials()
    return Credentials.from_json(Path(path).read_text())


def current_cpu() -> int:
    """The CPU this thread is running on (field 39 of /proc/thread-self/stat)."""
    stat = Path("/proc/thread-self/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[36])  # fields after "(comm)" start at 3


def confine_to_one_cpu() -> int | None:
    """--single-cpu: every thread of this process, and those it starts later, on the CPU
    it runs on now (one of those it may use). Python runs one thread at a time anyway; on
    one CPU a hand-off to a worker thread, its answer and each pass of the GIL wake a
    thread on the same CPU rather than another CPU out of idle (on this project's 2-core
    VMs a no-op round trip to a worker thread cost 63 us of CPU on one CPU, 136 us across
    two: medians of 5 interleaved runs). The CPU, or None when the kernel refused (the
    mount then works unconfined)."""
    try:
        allowed = os.sched_getaffinity(0)
        cpu = current_cpu()
        if cpu not in allowed:
            cpu = min(allowed)
        # Every thread there is, the main one first (lowest id); threads started later
        # inherit it from the thread that starts them.
        for tid in sorted(int(tid) for tid in os.listdir("/proc/self/task")):
            os.sched_setaffinity(tid, {cpu})
    except (OSError, ValueError) as exc:
        log.warning("could not confine the server to one CPU", error=str(exc))
        return None
    log.info("confined to one CPU", cpu=cpu)
    return cpu


def tune_gc() -> None:
    """Keep the cyclic garbage collector off what the server built at start (botocore's
    models, the store) and let it run less often: the hot paths make many short-lived
    objects and almost no cycles. A listing of 10,000 keys spent a fifth of its CPU in
    collections (same-run A/B through `make bench`, 5 interleaved rounds: `ls -l`
    0.50 -> 0.45 s, server CPU 0.28 -> 0.20 s). A zygote's child was frozen before the
    fork; this also covers what it built since and the servers of `cloudbucket-csi mount`."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def run(bucket: str, options: MountOptions, mountpoint: str, fsname: str,
        credentials_file: str | None, report: Report,
        metrics_socket: str | None = None) -> int:
    """Open the store, check the bucket, serve until unmounted; the exit status."""
    from driver.fs.mount import serve

    if options.single_cpu:
        confine_to_one_cpu()
    try:
        credentials = read_credentials(credentials_file)
    except (OSError, ValueError, TypeError) as exc:
        report(Failure(FailureKind.ACCESS_DENIED,
                       f"cannot read credentials file {credentials_file}: "
                       f"{type(exc).__name__}"))
        return 1
    try:
        store = open_store(bucket, options, credentials, credentials_file)
        store.check_bucket()
    except Exception as exc:  # noqa: BLE001 - every failure is reported, typed by class
        failure = failure_for(exc, bucket, options)
        log.warning("mount failed", bucket=bucket, kind=failure.kind.value,
                    error=failure.message)
        report(failure)
        return 1
    reported = False

    def ready(error: str | None) -> None:
        nonlocal reported
        reported = True
        report(None if error is None else Failure(FailureKind.FAILED, error))

    metrics_server = None
    if metrics_socket:
        from driver.metrics import serve_metrics_unix

        try:
            metrics_server = serve_metrics_unix(metrics_socket)
        except OSError as exc:  # not fatal: the mount works, it is only not observed
            log.error("cannot serve metrics", socket=metrics_socket, error=str(exc))
    tune_gc()
    try:
        status = serve(store, options, mountpoint, fsname, ready)
    finally:
        if metrics_server is not None:
            metrics_server.close()
    if not reported:
        report(Failure(FailureKind.FAILED, "the FUSE server stopped before the mount "
                       "was live"))
    return status
