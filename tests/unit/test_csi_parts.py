"""Small parts of the CSI layer: legacy VolumeCondition encoding,
keyed locks, PID identity."""

from __future__ import annotations

import os
import threading

from driver.csi import csi_pb2
from driver.mounts.supervisor import process_start_time
from driver.services import legacy
from driver.services.locks import KeyedLocks


def test_legacy_volume_condition_round_trips_through_the_wire() -> None:
    response = csi_pb2.NodeGetVolumeStatsResponse(
        usage=[csi_pb2.VolumeUsage(unit=csi_pb2.VolumeUsage.BYTES)])
    legacy.add_volume_condition(response, True, "server gone: ENOTCONN " + "x" * 300)
    received = csi_pb2.NodeGetVolumeStatsResponse.FromString(response.SerializeToString())
    assert legacy.volume_condition(received) == (True, "server gone: ENOTCONN " + "x" * 300)
    healthy = csi_pb2.NodeGetVolumeStatsResponse()
    legacy.add_volume_condition(healthy, False, "ok")
    assert legacy.volume_condition(
        csi_pb2.NodeGetVolumeStatsResponse.FromString(healthy.SerializeToString())) == (
        False, "ok")
    assert legacy.volume_condition(csi_pb2.NodeGetVolumeStatsResponse()) is None


def test_keyed_locks_serialize_one_key_and_not_others() -> None:
    locks = KeyedLocks()
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def holder() -> None:
        with locks.hold("volume:a"):
            inside.set()
            release.wait(5)
            order.append("first")

    thread = threading.Thread(target=holder)
    thread.start()
    inside.wait(5)
    with locks.hold("volume:b"):  # another key is free
        order.append("other key")
    waiter = threading.Thread(target=lambda: (locks.hold("volume:a").__enter__(),
                                              order.append("second")))
    waiter.start()
    waiter.join(0.2)
    assert order == ["other key"]  # still blocked behind the holder
    release.set()
    thread.join(5)
    waiter.join(5)
    assert order == ["other key", "first", "second"]


def test_process_start_time_identifies_a_live_pid() -> None:
    assert process_start_time(os.getpid()) == process_start_time(os.getpid())
    assert isinstance(process_start_time(os.getpid()), int)
    assert process_start_time(2**22 + 12345) is None
