"""readdir streams a big directory page by page, asking for the next page early; the root
is listed ahead as the mount comes up."""

from __future__ import annotations

import contextlib
import errno

import pytest
import trio

from driver.fs.errors import FsError
from driver.fs.filesystem import Filesystem
from driver.fs.inodes import ROOT_INODE
from driver.options import MountOptions
from tests.memstore import MemoryStore

COUNT = 2500  # three pages of 1,000


def _store() -> MemoryStore:
    store = MemoryStore()
    for index in range(COUNT):
        store.objects[f"d/f-{index:05d}"] = b"x"
    store.objects["d/sub/inner"] = b"y"
    return store


def _run(store: MemoryStore, body) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            fs = Filesystem(store, MountOptions())
            fs.attach(nursery)
            attrs = await fs.lookup(ROOT_INODE, "d")
            fh = await fs.opendir(attrs.ino)
            store.calls.clear()
            await body(fs, fh)
            await fs.releasedir(fh)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_every_entry_once_in_order_and_the_next_page_is_requested_early() -> None:
    store = _store()
    seen: list[str] = []
    lists_when_first_entry_arrived: list[int] = []

    async def body(fs: Filesystem, fh: int) -> None:
        async for name, _, _ in fs.readdir(fh, 0):
            if not seen:  # page 2 is asked for while page 1 is still being read
                with trio.fail_after(10):
                    while store.calls.count("list") < 2:
                        await trio.sleep(0.01)
                lists_when_first_entry_arrived.append(store.calls.count("list"))
            seen.append(name)

    _run(store, body)
    assert seen == sorted([f"f-{i:05d}" for i in range(COUNT)] + ["sub"])
    assert lists_when_first_entry_arrived == [2]  # page 2 was asked for with page 1
    assert store.calls.count("list") == 3  # and no page twice


def test_a_failed_page_ahead_fails_the_readdir_that_reaches_it() -> None:
    store = _store()
    seen: list[str] = []

    async def body(fs: Filesystem, fh: int) -> None:
        store.fail = lambda op: op == "list" and store.calls.count("list") == 2
        with pytest.raises(FsError) as caught:
            async for name, _, _ in fs.readdir(fh, 0):
                seen.append(name)
        assert caught.value.errno == errno.EIO
        store.fail = lambda op: False
        # Reading on from where it stopped lists the failed page again.
        seen.extend([name async for name, _, _ in fs.readdir(fh, len(seen))])

    _run(store, body)
    assert seen == sorted([f"f-{i:05d}" for i in range(COUNT)] + ["sub"])


# The root is listed as the mount comes up (`Filesystem.list_root_ahead`, from fs.mount).


def _lookup_after_listing_ahead(store: MemoryStore, fails: bool) -> tuple[list[str], list[str]]:
    async def main() -> tuple[list[str], list[str]]:
        async with trio.open_nursery() as nursery:
            fs = Filesystem(store, MountOptions())
            fs.attach(nursery)
            await fs.list_root_ahead()  # never raises: it only warms the listing cache
            ahead = list(store.calls)
            store.calls.clear()
            with pytest.raises(FsError) if fails else contextlib.nullcontext():
                await fs.lookup(ROOT_INODE, "d")
            nursery.cancel_scope.cancel()
        return ahead, store.calls

    return trio.run(main)


def test_the_first_lookup_after_the_root_was_listed_ahead_asks_the_store_nothing() -> None:
    ahead, lookup = _lookup_after_listing_ahead(_store(), fails=False)
    assert ahead == ["list"] and lookup == []


def test_a_failed_listing_ahead_is_no_error_and_the_lookup_asks_again() -> None:
    store = _store()
    store.fail = lambda op: op == "list"
    ahead, lookup = _lookup_after_listing_ahead(store, fails=True)
    assert ahead == ["list"] and "list" in lookup
