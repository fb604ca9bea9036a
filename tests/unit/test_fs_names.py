"""Keys that are not valid file names are hidden, not fatal (S3 can hold any key)."""

from __future__ import annotations

import trio

from driver.fs.filesystem import Filesystem, valid_name
from driver.fs.inodes import ROOT_INODE
from driver.options import MountOptions
from tests.memstore import MemoryStore


def test_valid_name():
    assert valid_name("a.txt") and valid_name("x" * 255)
    for bad in ("", ".", "..", "a\0b", "x" * 256, "a/b"):
        assert not valid_name(bad)


def test_invalid_keys_are_hidden_from_listings():
    store = MemoryStore()
    for key in ("ok.txt", "weird//double.txt", "dot/./x", "up/../y", "long/" + "x" * 300,
                "nul/a\0b", "good/fine.txt", "clash", "clash/inner", "clash.txt"):
        store.objects[key] = b"1"

    async def listing(fs: Filesystem, ino: int) -> list[str]:
        fh = await fs.opendir(ino)
        names = [name async for name, _, _ in fs.readdir(fh, 0)]
        await fs.releasedir(fh)
        return names

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            fs = Filesystem(store, MountOptions())
            fs.attach(nursery)
            root = await listing(fs, ROOT_INODE)
            assert sorted(root) == ["clash", "clash.txt", "dot", "good", "long", "nul", "ok.txt",
                                    "up", "weird"]
            for directory in ("weird", "dot", "up", "long", "nul"):
                attrs = await fs.lookup(ROOT_INODE, directory)
                assert await listing(fs, attrs.ino) == []
            assert (await fs.lookup(ROOT_INODE, "clash")).is_dir  # the prefix shadows the key
            nursery.cancel_scope.cancel()

    trio.run(main)
