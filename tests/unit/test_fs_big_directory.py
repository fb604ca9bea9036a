"""Lookups in a directory too big to list whole (> LISTING_CACHE_MAX entries) are answered
from windows of it (Filesystem._list_window): one LIST from the name on, not a HEAD and a
LIST of "name/" per name."""

from __future__ import annotations

import errno
import random
from typing import Any

import pytest

from driver.fs.errors import FsError
from driver.fs.filesystem import LISTING_CACHE_MAX, WINDOW_MIN, Filesystem
from driver.options import MountOptions
from tests.memstore import MemoryStore
from tests.unit.test_fs_semantics import ino_of, run

FILES = 2500
OPTIONS = MountOptions(metadata_ttl=300)


class _CountingLists(MemoryStore):
    """Records the max_keys of every LIST, and of every LIST of the big directory."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def list_page(self, prefix: str, delimiter: str | None = "/", token: str | None = None,
                  max_keys: int = 1000, start_after: str | None = None) -> Any:
        if prefix == "d/":
            self.sizes.append(max_keys)
        return super().list_page(prefix, delimiter, token, max_keys, start_after)


def _big_directory(*extra: str) -> _CountingLists:
    store = _CountingLists()
    store.objects.update({f"d/f-{index:04d}": b"x" * (index % 7) for index in range(FILES)})
    store.objects.update({key: b"extra" for key in extra})
    return store


def _spent(store: MemoryStore, since: int) -> dict[str, int]:
    calls = store.calls[since:]
    return {op: calls.count(op) for op in set(calls)}


def test_lookups_in_order_list_about_once_per_page_and_never_head():
    store = _big_directory()

    async def body(fs: Filesystem) -> None:
        directory = await ino_of(fs, "d")
        since = len(store.calls)
        for index in range(FILES):
            attrs = await fs.lookup(directory, f"f-{index:04d}")
            assert attrs.size == index % 7
        spent = _spent(store, since)
        assert "head" not in spent
        # 2,500 names in pages of up to 1,000: the first page and two or three windows,
        # (a window that outlives MINIMAL_TTL on a slow machine costs one LIST more).
        assert 3 <= spent["list"] <= 8, spent

    run(store, OPTIONS, body)


def test_a_missing_name_is_settled_by_one_small_window():
    store = _big_directory()

    async def body(fs: Filesystem) -> None:
        directory = await ino_of(fs, "d")
        await fs.lookup(directory, "f-0000")  # lists the first page: the directory is big
        since = len(store.calls)
        for missing in ("f-1500x", "f-9999", "a-before-all"):
            with pytest.raises(FsError) as caught:
                await fs.lookup(directory, missing)
            assert caught.value.errno == errno.ENOENT
        assert _spent(store, since) == {"list": 3}
        assert store.sizes[-3:] == [WINDOW_MIN] * 3

    run(store, OPTIONS, body)


def test_a_name_created_after_the_window_was_listed_is_found():
    store = _big_directory()

    async def body(fs: Filesystem) -> None:
        directory = await ino_of(fs, "d")
        await fs.lookup(directory, "f-0001")
        store.objects["d/f-0001-new"] = b"new"  # behind the mount's back, inside the window
        assert (await fs.lookup(directory, "f-0001-new")).size == 3

    run(store, OPTIONS, body)


def test_a_directory_past_the_window_shadows_the_file_of_its_name():
    # The first page ends on the file f-0999; the directory f-0999/ sorts right after it.
    store = _big_directory("d/f-0999/inner")

    async def body(fs: Filesystem) -> None:
        directory = await ino_of(fs, "d")
        assert (await fs.lookup(directory, "f-0998")).size == 998 % 7  # the first page
        assert store.sizes[-1] == LISTING_CACHE_MAX
        shadowed = await fs.lookup(directory, "f-0999")
        assert shadowed.is_dir
        inner = await fs.lookup(shadowed.ino, "inner")
        assert not inner.is_dir and inner.size == len(b"extra")

    run(store, OPTIONS, body)


def test_random_lookups_list_small_windows():
    store = _big_directory()
    names = [f"f-{index:04d}" for index in random.Random(7).sample(range(FILES), 40)]

    async def body(fs: Filesystem) -> None:
        directory = await ino_of(fs, "d")
        for name in names:
            assert (await fs.lookup(directory, name)).size == int(name[2:]) % 7
        windows = store.sizes[1:]  # after the first page
        assert windows and max(windows) <= 4 * WINDOW_MIN, windows
        assert "head" not in store.calls

    run(store, OPTIONS, body)
