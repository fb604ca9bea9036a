"""Run one FUSE mount in this process until it is unmounted or signalled.

Lifecycle (one trio nursery, named tasks): mount with pyfuse3.init, raise the mount's
read-ahead so the kernel sends 1 MiB reads, serve requests in `pyfuse3.main`, report
readiness once a stat of the mountpoint has been answered by our own loop, and on SIGTERM/
SIGINT terminate the loop and unmount. Abandoned uploads are aborted before exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import structlog
import trio

from driver import metrics
from driver.fs.filesystem import Filesystem
from driver.fs.fuse import FuseOperations
from driver.options import MountOptions
from driver.store.base import ObjectStore

log = structlog.get_logger()
READ_AHEAD_KB = 16 * 1024
METRICS_INTERVAL = 60.0  # seconds between --log-metrics lines
REQUEST_TASKS = 16  # pyfuse3 tasks kept waiting for requests (the kernel sends 12+ at once)


def fuse_options(options: MountOptions, fsname: str) -> set[str]:
    opts = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    opts |= {f"fsname={fsname}", "subtype=cloudbucket", "noatime"}
    if options.read_only:
        opts.add("ro")
    if options.allow_other:
        opts.add("allow_other")
    if options.allow_root:
        opts.add("allow_root")
    if options.auto_unmount:
        opts.add("auto_unmount")  # fusermount3 unmounts when this process exits
    return opts


def mount_device(mountpoint: str) -> str | None:
    """"major:minor" of the mount at `mountpoint`, from /proc/self/mountinfo (no stat: our
    own loop is not serving yet, so a stat, even realpath(), would deadlock)."""
    target = os.path.abspath(mountpoint)
    found = None
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split()
            if len(fields) > 4 and _unescape(fields[4]) == target:
                found = fields[2]  # the last (topmost) mount wins
    return found


def _unescape(path: str) -> str:
    return path.encode().decode("unicode_escape") if "\\" in path else path


def raise_read_ahead(device: str | None, kilobytes: int = READ_AHEAD_KB) -> None:
    if device is None:
        return
    try:
        Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text(str(kilobytes))
    except OSError as exc:  # not fatal: reads still work, in smaller requests
        log.warning("could not raise read-ahead", device=device, error=str(exc))


def fuse_device_fd(mountpoint: str) -> int | None:
    """The /dev/fuse descriptor this process serves (after pyfuse3.init): N of a premounted
    `/dev/fd/N`, else the one libfuse opened, found in /proc/self/fd (pyfuse3 keeps its
    own copy private)."""
    if mountpoint.startswith("/dev/fd/"):
        return int(mountpoint.removeprefix("/dev/fd/"))
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                    return int(name)
    return None


def no_request_waiting(device_fd: int | None) -> Callable[[], bool]:
    """A probe that is True when the kernel has no request queued for this server (a poll
    that does not wait and takes nothing); always False when the descriptor is unknown."""
    if device_fd is None:
        return lambda: False
    poller = select.poll()
    poller.register(device_fd, select.POLLIN)
    return lambda: not poller.poll(0)


def release_large_buffers_to_os(threshold: int = 1024 * 1024) -> None:
    """Make glibc return freed part buffers (1-16 MiB) to the OS at once.

    Its default mmap threshold rises to the size of the largest chunk freed, after which
    freed parts stay in the heap and the server's RSS keeps its peak.
    """
    m_mmap_threshold = -3
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(m_mmap_threshold, threshold)


def serve(store: ObjectStore, options: MountOptions, mountpoint: str, fsname: str,
          ready: Callable[[str | None], None]) -> int:
    """Mount and serve until unmounted; `ready(None)` once live, `ready(error)` otherwise.

    `mountpoint` is a directory (libfuse mounts it, through fusermount3 when unprivileged)
    or `/dev/fd/N`, a /dev/fuse descriptor the supervisor already mounted: then readiness
    is reported once the loop runs, and the supervisor itself checks the mount answers and
    raises its read-ahead (this process has no privileges to do so)."""
    premounted = mountpoint.startswith("/dev/fd/")
    release_large_buffers_to_os()
    fs = Filesystem(store, options)
    operations = FuseOperations(fs, direct_io=options.direct_io)
    try:
        pyfuse3.init(operations, mountpoint, fuse_options(options, fsname))
    except RuntimeError as exc:
        ready(f"cannot mount at {mountpoint}: {exc}")
        return 1
    device = None if premounted else mount_device(mountpoint)
    signalled = False

    async def main() -> None:
        nonlocal signalled
        async with trio.open_nursery() as nursery:
            fs.attach(nursery, no_request_waiting(fuse_device_fd(mountpoint)))

            async def watch_signals() -> None:
                nonlocal signalled
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        log.info("terminating on signal", signal=signal.Signals(signum).name)
                        signalled = True
                        pyfuse3.terminate()
                        return

            async def announce_ready() -> None:
                if not premounted:
                    await trio.to_thread.run_sync(os.stat, mountpoint)
                # Only now: the kernel resets read-ahead when it processes FUSE INIT.
                raise_read_ahead(device)
                log.info("mounted", mountpoint=mountpoint, fsname=fsname)
                ready(None)

            async def log_metrics() -> None:
                # mount-s3's --log-metrics: the same counters /metrics serves, in the log.
                while True:
                    await trio.sleep(METRICS_INTERVAL)
                    log.info("store requests", interval=METRICS_INTERVAL,
                             **metrics.store_request_counts())

            nursery.start_soon(watch_signals, name="signals")
            nursery.start_soon(fs.list_root_ahead, name="list root")
            nursery.start_soon(announce_ready, name="ready")
            if options.log_metrics:
                nursery.start_soon(log_metrics, name="metrics")
            # pyfuse3 ends a request task when more than `min_tasks` wait for /dev/fuse
            # and starts one when none does: at its default of 1, eight parallel readers
            # made nearly every request start a task and end another (8 threads reading
            # 1,000 small files: 1.43 -> 1.36 s, server CPU 1.19 -> 1.12 s with 16).
            await pyfuse3.main(min_tasks=REQUEST_TASKS)
            await fs.shutdown()
            if options.log_metrics:
                log.info("store requests", final=True, **metrics.store_request_counts())
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        with contextlib.suppress(Exception):
            pyfuse3.close(unmount=signalled and not premounted)
    log.info("unmounted", mountpoint=mountpoint)
    return 0
