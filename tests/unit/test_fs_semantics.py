"""Opt-in semantics on the in-memory store: rename, append, tolerant chmod (no FUSE)."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from driver.fs.errors import FsError
from driver.fs.filesystem import Filesystem
from driver.fs.inodes import ROOT_INODE
from driver.options import MountOptions
from tests.memstore import MemoryStore

MiB = 1024 * 1024


def run(store: MemoryStore, options: MountOptions,
        body: Callable[[Filesystem], Awaitable[None]]) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            fs = Filesystem(store, options)
            fs.attach(nursery)
            await body(fs)
            nursery.cancel_scope.cancel()

    trio.run(main)


async def ino_of(fs: Filesystem, path: str) -> int:
    ino = ROOT_INODE
    for part in path.split("/"):
        ino = (await fs.lookup(ino, part)).ino
    return ino


async def read_all(fs: Filesystem, fh: int, size: int) -> bytes:
    return bytes(await fs.read(fh, 0, size + 1))


RENAME = MountOptions(allow_rename=True)


def test_rename_refused_without_the_flag():
    store = MemoryStore()
    store.objects["a"] = b"x"

    async def body(fs: Filesystem) -> None:
        await fs.lookup(ROOT_INODE, "a")
        with pytest.raises(FsError) as caught:
            await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b")
        assert caught.value.errno == errno.ENOTSUP

    run(store, MountOptions(), body)
    assert store.objects == {"a": b"x"}


def test_file_rename_moves_the_object_and_keeps_open_readers():
    store = MemoryStore()
    data = os.urandom(3 * MiB + 7)
    store.objects["d/a"] = data

    async def body(fs: Filesystem) -> None:
        ino = await ino_of(fs, "d/a")
        fh = await fs.open(ino, os.O_RDONLY)
        await fs.rename(await ino_of(fs, "d"), "a", ROOT_INODE, "b")
        assert store.objects == {"b": data}
        # The open file reads on from the new key; the inode keeps its number.
        assert await read_all(fs, fh, len(data)) == data
        await fs.release(fh)
        assert (await fs.lookup(ROOT_INODE, "b")).ino == ino
        with pytest.raises(FsError):
            await fs.lookup(await ino_of(fs, "d"), "a")

    run(store, RENAME, body)


def test_rename_onto_a_file_needs_allow_overwrite():
    store = MemoryStore()
    store.objects.update({"a": b"new", "b": b"old"})

    async def refused(fs: Filesystem) -> None:
        with pytest.raises(FsError) as caught:
            await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b")
        assert caught.value.errno == errno.EPERM

    run(store, RENAME, refused)
    assert store.objects == {"a": b"new", "b": b"old"}

    async def allowed(fs: Filesystem) -> None:
        await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b")

    run(store, MountOptions(allow_rename=True, allow_overwrite=True), allowed)
    assert store.objects == {"b": b"new"}


def test_directory_rename_moves_every_object_beneath():
    store = MemoryStore()
    tree = {"src/x": b"1", "src/sub/y": b"22", "src/sub/deep/z": b"333", "other": b"o"}
    store.objects.update(tree)

    async def body(fs: Filesystem) -> None:
        inner = await ino_of(fs, "src/sub/y")
        await fs.rename(ROOT_INODE, "src", ROOT_INODE, "dst")
        assert (await fs.lookup(await ino_of(fs, "dst/sub"), "y")).ino == inner
        fh = await fs.opendir(await ino_of(fs, "dst/sub"))
        assert {name async for name, _, _ in fs.readdir(fh, 0)} == {"y", "deep"}
        await fs.releasedir(fh)

    run(store, RENAME, body)
    assert store.objects == {"dst/x": b"1", "dst/sub/y": b"22", "dst/sub/deep/z": b"333",
                             "other": b"o"}


def test_directory_rename_over_the_limit_moves_nothing():
    store = MemoryStore()
    tree = {f"src/{n}": b"x" for n in range(4)}
    store.objects.update(tree)

    async def body(fs: Filesystem) -> None:
        await fs.lookup(ROOT_INODE, "src")
        with pytest.raises(FsError) as caught:
            await fs.rename(ROOT_INODE, "src", ROOT_INODE, "dst")
        assert caught.value.errno == errno.E2BIG

    run(store, MountOptions(allow_rename=True, rename_dir_limit=3), body)
    assert store.objects == tree
    assert "copy" not in store.calls


@pytest.mark.parametrize("failing", ["copy", "delete"])
def test_failure_midway_leaves_each_object_under_exactly_one_name(failing):
    store = MemoryStore()
    tree = {f"src/{n}": bytes([n]) * 10 for n in range(5)}
    store.objects.update(tree)
    seen = {"n": 0}

    def fail(op: str) -> bool:
        if op == failing:
            seen["n"] += 1
            return seen["n"] == 3  # the third copy (or delete) fails
        return False

    async def body(fs: Filesystem) -> None:
        await fs.lookup(ROOT_INODE, "src")
        store.fail = fail
        with pytest.raises(FsError) as caught:
            await fs.rename(ROOT_INODE, "src", ROOT_INODE, "dst")
        assert caught.value.errno == errno.EIO

    run(store, RENAME, body)
    for key, data in tree.items():
        name = key.removeprefix("src/")
        places = [k for k in (key, f"dst/{name}") if k in store.objects]
        assert len(places) == 1, (key, places)
        assert store.objects[places[0]] == data
    assert sum(k.startswith("dst/") for k in store.objects) == 2


def test_rename_of_a_directory_into_itself_is_refused():
    store = MemoryStore()
    store.objects["a/b/c"] = b"x"

    async def body(fs: Filesystem) -> None:
        b = await ino_of(fs, "a/b")
        with pytest.raises(FsError) as caught:
            await fs.rename(ROOT_INODE, "a", b, "a")
        assert caught.value.errno == errno.EINVAL

    run(store, RENAME, body)
    assert store.objects == {"a/b/c": b"x"}


@pytest.mark.parametrize("size", [1024, 6 * MiB])  # read back and re-sent / UploadPartCopy
def test_append_gives_old_bytes_then_new(size):
    store = MemoryStore()
    old, new = os.urandom(size), os.urandom(MiB + 3)
    store.objects["log"] = old

    async def body(fs: Filesystem) -> None:
        ino = await ino_of(fs, "log")
        fh = await fs.open(ino, os.O_WRONLY | os.O_APPEND)
        await fs.write(fh, size, new)
        assert store.objects["log"] == old  # unchanged until close
        await fs.flush(fh)
        await fs.release(fh)

    run(store, MountOptions(incremental_upload=True), body)
    assert store.objects["log"] == old + new
    assert not store.uploads
    assert ("upload_part_copy" in store.calls) == (size >= 5 * MiB)


def test_append_without_the_flag_is_refused():
    store = MemoryStore()
    store.objects["log"] = b"old"

    async def body(fs: Filesystem) -> None:
        with pytest.raises(FsError) as caught:
            await fs.open(await ino_of(fs, "log"), os.O_WRONLY | os.O_APPEND)
        assert caught.value.errno == errno.EPERM

    run(store, MountOptions(allow_overwrite=True), body)
    assert store.objects["log"] == b"old"


@pytest.mark.parametrize("ignore", [False, True])
def test_chmod_and_chown(ignore):
    store = MemoryStore()
    store.objects["f"] = b"x"

    async def body(fs: Filesystem) -> None:
        ino = await ino_of(fs, "f")
        for change in ({"mode": 0o100600}, {"uid": 123}, {"gid": 45}):
            if ignore:
                attrs = await fs.setattr(ino, **change, times=True)
                assert attrs.mode & 0o777 == 0o644 and attrs.uid == fs.uid
            else:
                with pytest.raises(FsError) as caught:
                    await fs.setattr(ino, **change)
                assert caught.value.errno == errno.EPERM

    run(store, MountOptions(ignore_chmod=ignore), body)


def test_infer_content_type_names_the_type():
    store = MemoryStore()
    seen: list[str | None] = []
    put = store.put

    def recording_put(key, data, options):
        seen.append(options.content_type)
        return put(key, data, options)

    store.put = recording_put  # type: ignore[method-assign]

    async def body(fs: Filesystem) -> None:
        for name in ("page.html", "blob"):
            fh, _ = await fs.create(ROOT_INODE, name, os.O_WRONLY | os.O_CREAT)
            await fs.write(fh, 0, b"<p>")
            await fs.flush(fh)
            await fs.release(fh)

    run(store, MountOptions(infer_content_type=True), body)
    assert seen == ["text/html", None]


def test_rename_into_a_new_directory_and_of_a_local_directory():
    store = MemoryStore()
    store.objects["f"] = b"data"

    async def body(fs: Filesystem) -> None:
        new_dir = await fs.mkdir(ROOT_INODE, "made")  # local until a file is beneath it
        await fs.rename(ROOT_INODE, "f", new_dir.ino, "f")
        assert store.objects == {"made/f": b"data"}
        assert not fs.inodes.get(new_dir.ino).local  # now a real prefix
        empty = await fs.mkdir(ROOT_INODE, "empty")
        await fs.rename(ROOT_INODE, "empty", ROOT_INODE, "renamed")  # no object moves
        assert (await fs.lookup(ROOT_INODE, "renamed")).ino == empty.ino
        with pytest.raises(FsError):
            await fs.lookup(ROOT_INODE, "empty")
        await fs.rmdir(ROOT_INODE, "renamed")

    run(store, RENAME, body)
    assert store.objects == {"made/f": b"data"}


def test_rename_noreplace_and_exchange():
    store = MemoryStore()
    store.objects.update({"a": b"1", "b": b"2"})

    async def body(fs: Filesystem) -> None:
        with pytest.raises(FsError) as caught:
            await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b", flags=1)  # RENAME_NOREPLACE
        assert caught.value.errno == errno.EEXIST
        with pytest.raises(FsError) as caught:
            await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b", flags=2)  # RENAME_EXCHANGE
        assert caught.value.errno == errno.EINVAL

    run(store, MountOptions(allow_rename=True, allow_overwrite=True), body)
    assert store.objects == {"a": b"1", "b": b"2"}


class _ListAnsweredLate(MemoryStore):
    """A LIST of "d/" whose page is taken when it is asked and answered only once `late`
    is set."""

    def __init__(self) -> None:
        super().__init__()
        self.late = threading.Event()
        self.late.set()
        self.taken = threading.Event()  # set once a held page has been taken

    def list_page(self, prefix: str, *args: Any, **kwargs: Any) -> Any:
        page = super().list_page(prefix, *args, **kwargs)
        if prefix == "d/" and not self.late.is_set():
            self.taken.set()
            assert self.late.wait(30), "the test never answered the LIST"
        return page


async def _list_directory(fs: Filesystem, ino: int) -> None:
    fh = await fs.opendir(ino)
    assert {name async for name, _, _ in fs.readdir(fh, 0)} == {"a", "b"}  # listed before
    await fs.releasedir(fh)


@pytest.mark.parametrize("lister", ["lookup", "readdir"])
def test_a_listing_answered_after_a_delete_in_its_directory_is_not_kept(lister):
    """A LIST out while a file of its directory is deleted still names the file; kept as
    the directory's listing (by a lookup, or by a readdir that got the whole directory), it
    would answer a lookup of the deleted name for its TTL."""
    store = _ListAnsweredLate()
    store.objects.update({"d/a": b"a", "d/b": b"b"})

    async def body(fs: Filesystem) -> None:
        directory = await ino_of(fs, "d")
        store.late.clear()
        try:
            async with trio.open_nursery() as nursery:
                if lister == "lookup":
                    nursery.start_soon(fs.lookup, directory, "b")  # lists d/, answered late
                else:
                    nursery.start_soon(_list_directory, fs, directory)
                # The page is taken (it names d/a) before the delete, however slow the thread.
                assert await trio.to_thread.run_sync(store.taken.wait, 30)
                await fs.unlink(directory, "a")
                store.late.set()
        finally:
            store.late.set()
        with pytest.raises(FsError) as caught:
            await fs.lookup(directory, "a")
        assert caught.value.errno == errno.ENOENT

    run(store, MountOptions(allow_delete=True, metadata_ttl=300), body)
    assert store.objects == {"d/b": b"b"}
