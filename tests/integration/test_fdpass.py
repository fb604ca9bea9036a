"""The fd-passing mechanism: one process mounts /dev/fuse, another serves it, via SCM_RIGHTS.

A "mounting" process (the privileged node plugin in that scheme) opens /dev/fuse, mounts it
and sends the descriptor over a unix socket, then exits. A separate "serving" process receives
it and serves a small pyfuse3 filesystem on `/dev/fd/N`. The mount must answer after the
mounting process is gone: whoever holds the descriptor owns the mount.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from driver.mounts import mountinfo
from driver.mounts.fdpass import recv_fd, send_fd

pytestmark = [pytest.mark.fuse, pytest.mark.root]

SERVER = r'''
import errno, socket, stat, sys
import pyfuse3, trio
from driver.mounts.fdpass import recv_fd

class Hello(pyfuse3.Operations):
    """One file, "hello", whose content arrived with the descriptor."""
    def __init__(self, content):
        super().__init__()
        self.content = content.encode()
    def _attr(self, inode):
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode, a.st_nlink = stat.S_IFDIR | 0o755, 2
        else:
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o644, 1, len(self.content)
        return a
    async def getattr(self, inode, ctx=None):
        return self._attr(inode)
    async def lookup(self, parent, name, ctx=None):
        if name != b"hello":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(2)
    async def opendir(self, inode, ctx):
        return inode
    async def readdir(self, fh, start, token):
        if start == 0:
            pyfuse3.readdir_reply(token, b"hello", self._attr(2), 1)
    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode)
    async def read(self, fh, off, size):
        return self.content[off:off + size]

listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
listener.listen(1)
print("listening", flush=True)
conn, _ = listener.accept()
fd, payload = recv_fd(conn)
pyfuse3.init(Hello(payload["content"]), f"/dev/fd/{fd}", {"fsname=fdpass-test"})
trio.run(pyfuse3.main)
pyfuse3.close(unmount=False)
'''

MOUNTER = r'''
import os, socket, sys
from driver.mounts.fdpass import mount_fuse, send_fd
fd = mount_fuse(sys.argv[2], "fdpass-test", subtype="fdpasstest")
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
send_fd(sock, fd, {"content": "served by another process\n"})
os.close(fd)
'''


def fd_targets(pid: int) -> set[str]:
    fds = Path(f"/proc/{pid}/fd")
    return {os.readlink(fds / name) for name in os.listdir(fds)}


def test_mount_made_by_one_process_is_served_by_another(tmp_path: Path) -> None:
    target = tmp_path / "mnt"
    target.mkdir()
    sock_path = str(tmp_path / "fd.sock")
    server = subprocess.Popen([sys.executable, "-c", SERVER, sock_path],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        mounter = subprocess.run([sys.executable, "-c", MOUNTER, sock_path, str(target)],
                                 capture_output=True, text=True, timeout=60, check=False)
        assert mounter.returncode == 0, mounter.stderr
        entry = mountinfo.find(str(target))
        assert entry is not None and entry.fstype == "fuse.fdpasstest"
        # The mounting process is gone; the receiver alone answers.
        assert os.listdir(target) == ["hello"]
        assert (target / "hello").read_text() == "served by another process\n"
        assert "/dev/fuse" in fd_targets(server.pid)
    finally:
        mountinfo.unmount(str(target))
        server.wait(30)
    assert server.returncode == 0, server.stderr.read() if server.stderr else ""
    assert mountinfo.find(str(target)) is None


def test_send_and_receive_carry_one_descriptor_and_its_payload(tmp_path: Path) -> None:
    left, right = socket.socketpair()
    (tmp_path / "f").write_text("through the socket")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        send_fd(left, fd, {"bucket": "b", "flags": ["--read-only"]})
        received, payload = recv_fd(right)
        try:
            assert payload == {"bucket": "b", "flags": ["--read-only"]}
            assert received != fd and os.read(received, 100) == b"through the socket"
        finally:
            os.close(received)
        left.sendall(b"{}")  # no descriptor attached: refused
        with pytest.raises(ValueError, match="one descriptor"):
            recv_fd(right)
    finally:
        os.close(fd)
        left.close()
        right.close()
