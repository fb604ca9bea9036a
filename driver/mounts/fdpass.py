"""Passing a mounted /dev/fuse descriptor between processes (SCM_RIGHTS over a unix socket).

The scheme AWS's and Google's CSI drivers use to run FUSE servers without privileges: a
privileged process opens /dev/fuse and mounts it (mount(2) with `fd=N`), then hands the
descriptor to an unprivileged process, which serves the filesystem on it; libfuse 3 (and so
pyfuse3) takes an already-mounted descriptor as the mountpoint `/dev/fd/N`.

The supervisor (supervisor.py) mounts with `mount_fuse` and hands the descriptor to the
zygote, which forks the unprivileged server that serves it.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
from typing import Any

MAX_MESSAGE = 64 * 1024


def mount_fuse(target: str, fsname: str, subtype: str = "cloudbucket",
               read_only: bool = False, allow_other: bool = False) -> int:
    """Open /dev/fuse and mount it at `target`; return the descriptor (needs CAP_SYS_ADMIN).

    Until a FUSE server answers on the descriptor, requests to the mount block: hand it over
    promptly, and close it (which aborts the mount) if that fails.
    """
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    stat = os.stat(target)
    options = [f"fd={fd}", f"rootmode={stat.st_mode & 0o170000:o}",
               f"user_id={os.getuid()}", f"group_id={os.getgid()}", "default_permissions"]
    if allow_other:
        options.append("allow_other")
    flags = _ms_flags(read_only)
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.mount(fsname.encode(), target.encode(), f"fuse.{subtype}".encode(),
                        ctypes.c_ulong(flags), ",".join(options).encode())
    if result != 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"mount of {target}: {os.strerror(err)}")
    return fd


def _ms_flags(read_only: bool) -> int:
    ms_rdonly, ms_nosuid, ms_nodev, ms_noatime = 1, 2, 4, 1024  # <sys/mount.h>
    return ms_nosuid | ms_nodev | ms_noatime | (ms_rdonly if read_only else 0)


def send_fd(sock: socket.socket, fd: int, payload: dict[str, Any]) -> None:
    """Send one descriptor with a JSON payload (what to serve on it: bucket, options...)."""
    data = json.dumps(payload).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError("payload too large")
    socket.send_fds(sock, [data], [fd])


def recv_fd(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """Receive one descriptor and its payload; the caller owns (and closes) the descriptor."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 1)
    if len(fds) != 1:
        for extra in fds:
            os.close(extra)
        raise ValueError(f"expected one descriptor, got {len(fds)}")
    try:
        return fds[0], json.loads(data)
    except ValueError:
        os.close(fds[0])
        raise
