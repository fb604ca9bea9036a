"""Requests per file operation, counted inside a real FUSE server (tests.perf.instrumented).

After `ls`, reading a small file must cost exactly one request, its GET: the lookup and the
open's validation come from the listing, and the object is fetched whole by its first GET
(or by a guess started ahead of a reader going through the directory in order).
Counting does not depend on load; the metadata TTL is long so that a slow machine cannot
turn the listing stale halfway through.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from driver.devservers import wait_until
from tests.perf.clients import Cloudbucket, unmount
from tests.perf.instrumented import COUNTED

pytestmark = pytest.mark.fuse

FILES = 100
SIZE = 4096


def _body(index: int) -> bytes:
    return bytes([index % 251]) * (SIZE - index)  # every file a different size and content


def _snapshot(pid: int, counts: Path) -> dict[str, int]:
    """Ask the server to write its counts now; {operation: calls}."""
    before = counts.stat().st_mtime_ns if counts.exists() else None
    os.kill(pid, signal.SIGUSR1)
    wait_until(lambda: counts.exists() and counts.stat().st_mtime_ns != before, 10,
               "request counts written")
    return {name: entry["calls"] for name, entry in json.loads(counts.read_text()).items()
            if name in COUNTED or name == "fuse_read"}  # store calls, and kernel reads


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    changed = {name: after[name] - before.get(name, 0) for name in after}
    return {name: count for name, count in changed.items() if count}


@contextlib.contextmanager
def _counted_mount(seaweed, bucket: str, tmp_path: Path
                   ) -> Iterator[tuple[Path, Callable[[], dict[str, int]], dict[str, int]]]:
    """A counting mount, once it has listed its root as it comes up: its path, a function
    that snapshots its counts, and the counts then (one LIST, the root's)."""
    client = Cloudbucket(seaweed, bucket, tmp_path, ("--metadata-ttl=300",),
                         count_requests=True)
    target = tmp_path / "mnt"
    target.mkdir()
    mounted = client.mount(target)
    counts = client.counts_file(mounted)
    try:
        snapshots: list[dict[str, int]] = []

        def root_listed() -> bool:
            snapshots.append(_snapshot(mounted.pid, counts))
            return snapshots[-1].get("list_page", 0) >= 1

        wait_until(root_listed, 10, "the root listed ahead")
        assert snapshots[-1].get("list_page") == 1
        yield target, lambda: _snapshot(mounted.pid, counts), snapshots[-1]
    finally:
        unmount(mounted)


def test_cat_of_small_files_after_ls_costs_one_get_each(seaweed, s3, bucket, tmp_path):
    for index in range(FILES):
        s3.put_object(Bucket=bucket, Key=f"dir/f-{index:03d}", Body=_body(index))
    # The mount lists its root as it comes up; that LIST answers the lookup of "dir".
    with _counted_mount(seaweed, bucket, tmp_path) as (target, snapshot, start):
        listed = subprocess.run(["ls", "dir"], cwd=target, capture_output=True, text=True,
                                check=True, timeout=60)
        assert listed.stdout.split() == [f"f-{i:03d}" for i in range(FILES)]
        after_ls = snapshot()
        assert _delta(after_ls, start) == {"list_page": 1}  # "dir" itself

        cat = subprocess.run(["sh", "-c", "cat dir/*"], cwd=target, capture_output=True,
                             check=True, timeout=120)
        assert cat.stdout == b"".join(_body(i) for i in range(FILES))
        after_cat = snapshot()
    spent = _delta(after_cat, after_ls)
    # The glob reads the directory once more (one LIST); every file is one GET and nothing
    # else: no HEAD, no second ranged GET, no guess past the last file. The first two files
    # are fetched by their reads; the open of the second, which follows the first, starts
    # the guesses of the next files' first bytes, and every later open tops them up.
    assert spent.pop("get_range_into") == 2
    assert spent.pop("get_first_into") == FILES - 2
    assert spent.pop("fuse_read") >= FILES
    assert spent == {"list_page": 1}


def test_files_read_out_of_order_start_no_guesses(seaweed, s3, bucket, tmp_path):
    """Opens that do not follow one another in the listing guess nothing ahead."""
    for index in range(FILES):
        s3.put_object(Bucket=bucket, Key=f"dir/f-{index:03d}", Body=_body(index))
    with _counted_mount(seaweed, bucket, tmp_path) as (target, snapshot, start):
        assert sorted(os.listdir(target / "dir")) == [f"f-{i:03d}" for i in range(FILES)]
        after_ls = snapshot()
        for index in reversed(range(FILES)):
            assert (target / "dir" / f"f-{index:03d}").read_bytes() == _body(index)
        spent = _delta(snapshot(), after_ls)
    assert spent.pop("get_range_into") == FILES
    assert spent.pop("fuse_read") >= FILES
    assert spent == {}


def test_first_read_in_a_directory_not_listed_yet_waits_for_one_round_trip(seaweed, s3, bucket,
                                                                          tmp_path):
    """The lookup that lists "dir" starts a GET of the file's first bytes beside the LIST,
    and the first read takes them: a small file costs that LIST and that one GET, a big one
    its guess and the ranged GETs behind it, and both read back exactly."""
    small, big = os.urandom(SIZE), os.urandom(3 * 1024 * 1024 + 7)
    s3.put_object(Bucket=bucket, Key="dir/small", Body=small)
    s3.put_object(Bucket=bucket, Key="other/big", Body=big)
    with _counted_mount(seaweed, bucket, tmp_path) as (target, snapshot, start):
        assert (target / "dir" / "small").read_bytes() == small
        after_small = snapshot()
        assert (target / "other" / "big").read_bytes() == big
        after_big = snapshot()
    spent = _delta(after_small, start)
    assert spent.pop("fuse_read") >= 1
    assert spent == {"list_page": 1, "get_first_into": 1}  # no HEAD, no second GET
    spent = _delta(after_big, after_small)
    assert spent.pop("fuse_read") >= 1
    assert spent.pop("get_first_into") == 1
    assert spent.pop("get_range_into") >= 1  # the rest, behind the guessed first part
    assert spent == {"list_page": 1}


def test_stat_in_order_in_a_directory_too_big_to_list_whole_needs_no_head(seaweed, s3, bucket,
                                                                        tmp_path):
    """Lookups in a directory of more than one LIST page are answered from windows of it
    (driver/fs/filesystem.py, _list_window): about one LIST per page of names, no HEAD, and
    a missing name is settled by one small LIST."""
    count = 1200
    sizes = {f"f-{index:04d}": index % 13 for index in range(count)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: s3.put_object(Bucket=bucket, Key=f"big/{name}",
                                                 Body=b"x" * sizes[name]), sizes))
    with _counted_mount(seaweed, bucket, tmp_path) as (target, snapshot, start):
        for name, size in sizes.items():  # by name, as a program that knows its files
            assert (target / "big" / name).stat().st_size == size
        after_stats = snapshot()
        assert not (target / "big" / "f-0500x").exists()
        spent = _delta(snapshot(), after_stats)
    assert spent == {"list_page": 1}
    spent = _delta(after_stats, start)
    # The first page and one window past it; a window that outlives its TTL (1 s) on a
    # slow machine costs one LIST more.
    assert 2 <= spent.pop("list_page") <= 10
    assert spent == {}
