"""Resource use of a FUSE server process while a workload runs.

A `Monitor` samples the resident set size of the server (and any children it has) in a
background thread, and takes the CPU time (user + system of every thread, plus children)
at start and stop; the difference is what the workload cost the server. The kernel's own
high-water mark (VmHWM) is recorded too: for a fresh mount it is the exact peak since the
server started, which the sampler can only approach.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Usage:
    cpu_s: float  # user + system seconds spent by the server during the window
    peak_rss: int  # bytes, largest sampled RSS of the server and its children
    hwm_rss: int | None  # bytes, VmHWM of the server process at the end (lifetime peak)


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return [proc, *proc.children(recursive=True)]
    return [proc]


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()  # every thread of the process
            total += times.user + times.system + times.children_user + times.children_system
    return total


def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def _hwm(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Monitor:
    """Use as `with Monitor(pid) as mon: ...; mon.usage`."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.usage: Usage | None = None
        self._proc = psutil.Process(pid)
        self._stop = threading.Event()
        self._peak = 0
        self._cpu0 = 0.0
        self._thread = threading.Thread(target=self._sample, name=f"rss-{pid}", daemon=True)

    def _sample(self) -> None:
        while True:
            self._peak = max(self._peak, _rss(_tree(self._proc)))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Monitor:
        procs = _tree(self._proc)
        self._cpu0 = _cpu(procs)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # Read the CPU and the high-water mark before anything (an unmount) can end the server.
        procs = _tree(self._proc)
        cpu1 = _cpu(procs)
        self._peak = max(self._peak, _rss(procs))
        hwm = _hwm(self.pid)
        self._stop.set()
        self._thread.join()
        self.usage = Usage(cpu_s=max(0.0, cpu1 - self._cpu0), peak_rss=self._peak, hwm_rss=hwm)


def process_usage(pid: int) -> Usage:
    """Lifetime usage of a process so far (used where the window starts at its birth)."""
    procs = _tree(psutil.Process(pid))
    return Usage(cpu_s=_cpu(procs), peak_rss=_rss(procs), hwm_rss=_hwm(pid))
