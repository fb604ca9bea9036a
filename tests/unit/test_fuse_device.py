"""How the FUSE server tells whether a request is waiting for its event loop."""

from __future__ import annotations

import os

from driver.fs.mount import fuse_device_fd, no_request_waiting


def test_a_premounted_descriptor_is_the_device() -> None:
    assert fuse_device_fd("/dev/fd/17") == 17


def test_the_device_libfuse_opened_is_found_among_our_descriptors() -> None:
    device = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        found = fuse_device_fd("/mnt/anywhere")
        assert found is not None
        assert os.readlink(f"/proc/self/fd/{found}") == "/dev/fuse"
    finally:
        os.close(device)


def test_the_probe_sees_queued_input_without_taking_it() -> None:
    reader, writer = os.pipe()
    try:
        idle = no_request_waiting(reader)
        assert idle()
        os.write(writer, b"request")
        assert not idle()
        assert not idle()  # polling took nothing
        assert os.read(reader, 100) == b"request"
        assert idle()
    finally:
        os.close(reader)
        os.close(writer)


def test_without_a_descriptor_every_read_goes_to_a_worker() -> None:
    assert no_request_waiting(None)() is False
