"""Random operation sequences against the filesystem logic and a plain reference model.

The filesystem runs on the in-memory store (no FUSE); the model is a dict of path -> bytes
plus a set of local directories. After every operation both must agree on contents,
listings and errors.
"""

from __future__ import annotations

import errno
import math
import os

import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from driver.fs.errors import FsError
from driver.fs.filesystem import Filesystem
from driver.fs.inodes import ROOT_INODE
from driver.options import MountOptions
from tests.memstore import MemoryStore

NAMES = st.sampled_from(["a", "b", "c"])
DIRS = st.sampled_from(["", "", "a/", "a/b/", "c/"])  # nested dirs come from mkdir/write
SIZES = st.sampled_from([0, 1, 100, 5 * 1024 * 1024 + 1])
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), DIRS, NAMES, SIZES),
        st.tuples(st.just("unlink"), DIRS, NAMES),
        st.tuples(st.just("mkdir"), DIRS, NAMES),
        st.tuples(st.just("rmdir"), DIRS, NAMES),
        st.tuples(st.just("read"), DIRS, NAMES),
        st.tuples(st.just("list"), DIRS),
    ),
    max_size=30,
)


class Model:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.local_dirs: set[str] = set()

    def is_dir(self, path: str) -> bool:
        prefix = path.rstrip("/") + "/"
        return path == "" or path in self.local_dirs or any(
            key.startswith(prefix) for key in self.files) or any(
            d.startswith(prefix) for d in self.local_dirs)

    def listing(self, directory: str) -> set[str]:
        names = set()
        for path in [*self.files, *self.local_dirs]:
            if path.startswith(directory) and path != directory:
                names.add(path[len(directory):].split("/")[0])
        return names


async def _walk(fs: Filesystem, directory: str) -> int | None:
    ino = ROOT_INODE
    for part in [p for p in directory.split("/") if p]:
        try:
            attrs = await fs.lookup(ino, part)
        except FsError:
            return None
        if not attrs.is_dir:
            return None
        ino = attrs.ino
    return ino


async def _apply(fs: Filesystem, model: Model, op: tuple) -> None:
    kind, directory = op[0], op[1]
    parent = await _walk(fs, directory)
    if parent is None:
        return  # the model may have a file where this path needs a directory; skip
    if kind == "write":
        name, size = op[2], op[3]
        path = directory + name
        data = os.urandom(size)
        try:
            fh, _ = await fs.create(parent, name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        except FsError as exc:
            assert model.is_dir(path) or path in model.files, (exc, path)
            return
        await fs.write(fh, 0, data)
        await fs.flush(fh)
        await fs.release(fh)
        model.files[path] = data
        # mountpoint-s3's semantics: a local directory becomes remote once a file is
        # uploaded under it, and a remote directory exists only while objects are under it.
        model.local_dirs -= {d for d in model.local_dirs if path.startswith(d)}
    elif kind == "unlink":
        path = directory + op[2]
        try:
            await fs.unlink(parent, op[2])
            del model.files[path]
            assert not model.is_dir(path)
        except FsError as exc:
            assert exc.errno in (errno.ENOENT, errno.EISDIR)
            assert path not in model.files or model.is_dir(path)
    elif kind == "mkdir":
        path = directory + op[2]
        try:
            await fs.mkdir(parent, op[2])
            model.local_dirs.add(path + "/")
        except FsError as exc:
            assert exc.errno == errno.EEXIST
            assert path in model.files or model.is_dir(path + "/")
    elif kind == "rmdir":
        path = directory + op[2] + "/"
        try:
            await fs.rmdir(parent, op[2])
            assert path in model.local_dirs and not model.listing(path)
            model.local_dirs.discard(path)
        except FsError as exc:
            assert exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENOTEMPTY)
            assert path not in model.local_dirs or model.listing(path) or exc.errno == \
                errno.ENOENT
    elif kind == "read":
        path = directory + op[2]
        if path not in model.files or model.is_dir(path + "/"):
            return
        attrs = await fs.lookup(parent, op[2])
        fh = await fs.open(attrs.ino, os.O_RDONLY)
        data = await fs.read(fh, 0, len(model.files[path]) + 10)
        await fs.release(fh)
        assert bytes(data) == model.files[path]
    elif kind == "list":
        fh = await fs.opendir(parent)
        names = {name async for name, _, _ in fs.readdir(fh, 0)}
        await fs.releasedir(fh)
        assert names == model.listing(directory)


@pytest.mark.parametrize("ttl", [0.0, math.inf])  # a lone client must see its own changes
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=OPERATIONS)
# Found by hypothesis: a directory that was only a prefix ends with its last object, even
# under an infinite TTL (it was still a cached directory, so a file of its name was EISDIR).
@example(operations=[("mkdir", "", "a"), ("write", "a/", "c", 0), ("unlink", "a/", "c"),
                     ("write", "", "a", 0)])
@example(operations=[("mkdir", "", "a"), ("write", "a/", "c", 0), ("unlink", "a/", "c"),
                     ("mkdir", "a/", "a"), ("list", "")])
@example(operations=[("mkdir", "", "a"), ("write", "a/", "c", 0), ("unlink", "a/", "c"),
                     ("mkdir", "", "a")])
def test_filesystem_agrees_with_model(operations, ttl):
    store = MemoryStore()
    options = MountOptions(allow_delete=True, allow_overwrite=True, metadata_ttl=ttl)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            fs = Filesystem(store, options)
            fs.attach(nursery)
            model = Model()
            for op in operations:
                await _apply(fs, model, op)
            assert {k: v for k, v in store.objects.items()} == model.files
            assert not store.uploads
            nursery.cancel_scope.cancel()

    trio.run(main)
