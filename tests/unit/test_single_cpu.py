"""--single-cpu: the option, and every thread of a process confined to the CPU it ran on.

The confinement is tried in a child process: done in the test process, it would hold the
rest of the suite to one CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from driver.options import MountOptions, parse_mount_flags, parse_option_values

CHILD = r"""
import json, os, threading
from driver.fuseserver import confine_to_one_cpu

def allowed():
    return {tid: sorted(os.sched_getaffinity(int(tid))) for tid in os.listdir("/proc/self/task")}

started = threading.Event()
stop = threading.Event()
before = threading.Thread(target=lambda: (started.set(), stop.wait()))
before.start()
started.wait(10)
cpu = confine_to_one_cpu()
after = threading.Thread(target=stop.wait)
after.start()
result = {"cpu": cpu, "threads": allowed()}
stop.set()
before.join(); after.join()
print(json.dumps(result))
"""


def test_the_option_is_off_by_default_and_a_flag():
    assert MountOptions().single_cpu is False
    assert parse_option_values({"single-cpu": True}).single_cpu is True
    assert "--single-cpu" in parse_option_values({"single-cpu": True}).to_args()
    assert parse_mount_flags(["single-cpu"]).single_cpu is True  # a PV's mountOptions
    assert MountOptions.from_dict(MountOptions(single_cpu=True).to_dict()).single_cpu


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to confine to one")
def test_every_thread_before_and_after_is_confined_to_one_allowed_cpu():
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                            timeout=60, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["cpu"] in os.sched_getaffinity(0)
    assert len(report["threads"]) == 3  # main, the thread from before, the one from after
    assert all(cpus == [report["cpu"]] for cpus in report["threads"].values())
