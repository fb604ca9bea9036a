"""Privilege changes of the supervisor's processes (Linux prctl/capabilities via libc).

The supervisor keeps CAP_SYS_ADMIN to mount; a FUSE server parses untrusted network data
and keeps nothing: `become(uid, gid)` drops supplementary groups, the capability bounding
set and, by switching every UID to a non-zero one, the permitted and effective sets, then
sets no_new_privs so nothing it executes can regain them.
"""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
# The reserved range the AWS driver uses for its Mountpoint pods (UIDRangeStart).
UID_RANGE = range(65536, 131072)

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 40


def become(uid: int, gid: int) -> None:
    """Turn this process into `uid:gid` with no capabilities at all (irreversibly)."""
    if os.getuid() != 0:  # unprivileged already (a user's own `mount`): nothing to drop
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        return
    if uid == 0:
        raise ValueError("a FUSE server never runs as root")
    for cap in range(_last_cap() + 1):
        _prctl(PR_CAPBSET_DROP, cap)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # clears the permitted and effective capability sets
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def die_with_parent() -> None:
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def become_subreaper(on: bool = True) -> None:
    """Orphaned descendants (FUSE servers whose zygote exited) become our children."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0)


def capabilities(pid: int) -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of `pid`, from /proc/PID/status."""
    caps = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name.startswith("Cap"):
            caps[name] = int(value.strip(), 16)
    return caps
