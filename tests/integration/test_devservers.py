"""The test servers themselves: SeaweedFS starts on distinct free ports, and a start whose
port another process took meanwhile is made again on fresh ones."""

from __future__ import annotations

import socket

import pytest

from driver import devservers
from driver.devservers import LOOPBACK, SeaweedS3, ServerExited, free_ports


def test_free_ports_are_distinct() -> None:
    ports = free_ports(200)
    assert len(set(ports)) == 200


def _taken_first(monkeypatch: pytest.MonkeyPatch, taken: int, launches: int) -> list[list[int]]:
    """The first `launches` port sets give the master port `taken`."""
    real = devservers.free_ports
    chosen: list[list[int]] = []

    def colliding(count: int) -> list[int]:
        ports = real(count)
        if len(chosen) < launches:
            ports[0] = taken  # "master.port": weed mini exits when it cannot bind it
        chosen.append(ports)
        return ports

    monkeypatch.setattr(devservers, "free_ports", colliding)
    return chosen


def test_a_start_whose_port_was_taken_is_made_again_on_fresh_ports(monkeypatch) -> None:
    with socket.socket() as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen()
        chosen = _taken_first(monkeypatch, holder.getsockname()[1], launches=1)
        with SeaweedS3() as server:
            server.client().create_bucket(Bucket="devservers")
            server.client().put_object(Bucket="devservers", Key="k", Body=b"ok")
            assert server.process is not None and server.process.poll() is None
    assert len(chosen) == 2 and chosen[1][0] != chosen[0][0]
    assert server.process is None and not server.workdir.exists()


def test_a_server_that_never_starts_is_reported_with_its_log(monkeypatch) -> None:
    with socket.socket() as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen()
        chosen = _taken_first(monkeypatch, holder.getsockname()[1], launches=3)
        server = SeaweedS3()
        with pytest.raises(ServerExited, match="weed mini exited"):
            server.start(attempts=3)
    assert len(chosen) == 3
    assert server.process is None and not server.workdir.exists()

