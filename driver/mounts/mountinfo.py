"""/proc/self/mountinfo parsing and unmounting, for every place that needs it."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

FSTYPE = "fuse.cloudbucket"


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    device: str  # "major:minor"
    root: str
    target: str
    options: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        entries.append(MountEntry(
            mount_id=int(fields[0]), device=fields[2], root=_unescape(fields[3]),
            target=_unescape(fields[4]), options=fields[5], fstype=fields[sep + 1],
            source=_unescape(fields[sep + 2]) if len(fields) > sep + 2 else "",
        ))
    return entries


def read(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    return parse(Path(path).read_text())


def find(target: str, fstype: str | None = None) -> MountEntry | None:
    """The topmost mount at `target` (optionally of `fstype`), without touching the target."""
    target = os.path.abspath(target)
    found = None
    for entry in read():
        if entry.target == target and (fstype is None or entry.fstype == fstype):
            found = entry
    return found


def is_alive(target: str) -> bool:
    """True when the mount answers; False when its FUSE server is gone (ENOTCONN)."""
    try:
        os.stat(target)
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            return False
        raise


def unmount(target: str, timeout: float = 30, lazy_fallback: bool = True) -> bool:
    """Unmount a FUSE mount; True if something was unmounted. Idempotent."""
    if find(target) is None:
        return False
    result = subprocess.run(["fusermount3", "-u", target], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0 and find(target) is not None:
        if not lazy_fallback:
            raise OSError(errno.EBUSY, f"unmount of {target} failed: {result.stderr.strip()}")
        subprocess.run(["fusermount3", "-u", "-z", target], capture_output=True, check=False)
    deadline = time.monotonic() + timeout
    while find(target) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{target} still mounted after {timeout}s")
        time.sleep(0.02)
    return True
