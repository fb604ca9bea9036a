"""`python -m tests.perf.instrumented mount ... --foreground`: our CLI with store calls counted.

A diagnostic for the benchmarks (`bench --count-requests`): every S3Store method call is
counted, with the bytes it moved (GET bodies, uploaded parts), as are the kernel's read
requests (`fuse_read`, `fuse_write`) and prefetch stream resets; the totals are written as JSON to
$CLOUDBUCKET_BENCH_COUNTS when the server exits, and whenever it gets SIGUSR1 (so a test
can count the requests of one operation: snapshot, act, snapshot). The filesystem's code is
untouched: only methods are wrapped, in this process.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from driver.store import s3

COUNTED = ("head", "list_page", "get_range", "get_range_into", "get_first_into", "put",
           "create_upload", "upload_part", "upload_part_copy", "complete_upload",
           "abort_upload", "delete")
_counts: dict[str, list[int]] = {}
# Re-entrant: the SIGUSR1 dump runs on the main thread, which may hold it (fuse_read).
_lock = threading.RLock()


def _moved(name: str, args: tuple[Any, ...], result: Any) -> int:
    if name == "get_range":
        return len(result)
    if name == "get_range_into":
        return len(args[4])
    if name == "get_first_into":
        return int(result[0])
    if name == "put":
        return len(args[1])
    if name == "upload_part":
        return len(args[3])
    return 0


def _wrap(name: str) -> None:
    original: Callable[..., Any] = getattr(s3.S3Store, name)

    @functools.wraps(original)
    def counted(self: s3.S3Store, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        _count(name, _moved(name, args, result))
        return result

    setattr(s3.S3Store, name, counted)


def _count(name: str, moved: int) -> None:
    with _lock:
        entry = _counts.setdefault(name, [0, 0])
        entry[0] += 1
        entry[1] += moved


def _wrap_fs() -> None:
    """Count the kernel's read requests (and bytes answered) and prefetch stream resets."""
    from driver.fs import filesystem, prefetch

    read = filesystem.Filesystem.read

    @functools.wraps(read)
    async def counted_read(self: Any, fh: int, offset: int, size: int) -> bytes:
        data = await read(self, fh, offset, size)
        _count("fuse_read", len(data))
        return data

    write = filesystem.Filesystem.write

    @functools.wraps(write)
    async def counted_write(self: Any, fh: int, offset: int, data: bytes) -> int:
        written = await write(self, fh, offset, data)
        _count("fuse_write", written)
        return written

    reset = prefetch.Prefetcher._reset

    @functools.wraps(reset)
    def counted_reset(self: Any, *args: Any, **kwargs: Any) -> None:
        _count("prefetch_reset", 0)
        reset(self, *args, **kwargs)

    filesystem.Filesystem.read = counted_read  # type: ignore[method-assign]
    filesystem.Filesystem.write = counted_write  # type: ignore[method-assign]
    prefetch.Prefetcher._reset = counted_reset  # type: ignore[method-assign]


def _dump(path: str) -> None:
    with _lock:
        data = {name: {"calls": c, "bytes": b} for name, (c, b) in _counts.items()}
    partial = f"{path}.tmp"
    with open(partial, "w") as handle:
        json.dump(data, handle)
    os.replace(partial, path)  # a reader never sees half a file


def main() -> int:
    path = os.environ.get("CLOUDBUCKET_BENCH_COUNTS")
    if path:
        for name in COUNTED:
            _wrap(name)
        _wrap_fs()
        atexit.register(_dump, path)
        signal.signal(signal.SIGUSR1, lambda *_: _dump(path))
    from driver.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
