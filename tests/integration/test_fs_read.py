"""Read side of the filesystem through a real FUSE mount, on every backend.

Each test runs once per provider (`providers` marker, tests/conftest.py): S3 on SeaweedFS
and native GCS on fake-gcs-server. `objects` is the bucket seen through the vendor's own
client; tests heavy on fake-gcs-server run there only with CLOUDBUCKET_GCS_HEAVY=1.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from driver.mounts import mountinfo
from tests.helpers import sha256_file

pytestmark = [pytest.mark.fuse, pytest.mark.providers("s3", "gcs")]

MiB = 1024 * 1024


def _pattern(size: int, seed: int = 7) -> bytes:
    if size > 64 * MiB:
        return os.urandom(size)
    return random.Random(seed).randbytes(size)


@pytest.mark.parametrize("size", [0, 1, MiB + 1, 3 * 16 * MiB + 5])
def test_byte_exact_sequential_and_random_reads(objects, bucket, mount, size):
    data = _pattern(size)
    objects.put("obj.bin", data)
    mnt = mount(bucket)
    path = mnt / "obj.bin"
    assert os.stat(path).st_size == size
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    rng = random.Random(size)
    with open(path, "rb", buffering=0) as handle:
        for _ in range(50 if size else 1):
            offset = rng.randrange(0, size + 1)
            length = rng.choice([1, 4096, 128 * 1024, MiB + 3])
            handle.seek(offset)
            assert handle.read(length) == data[offset:offset + length]


@pytest.mark.slow
@pytest.mark.providers(heavy=True)
def test_one_gib_object_reads_byte_exact(objects, bucket, mount, tmp_path):
    size = 1024 * MiB
    source = tmp_path / "source.bin"
    digest = hashlib.sha256()
    block = _pattern(4 * MiB, seed=1)
    with open(source, "wb") as out:
        for i in range(size // len(block)):
            chunk = i.to_bytes(8, "little") + block[8:]  # every block distinct
            digest.update(chunk)
            out.write(chunk)
    objects.upload_file(source, "big.bin")
    mnt = mount(bucket)
    assert sha256_file(mnt / "big.bin") == digest.hexdigest()
    rng = random.Random(3)
    with open(mnt / "big.bin", "rb", buffering=0) as fuse_file, open(source, "rb") as local:
        for _ in range(64):
            offset = rng.randrange(0, size - 256 * 1024)
            fuse_file.seek(offset)
            local.seek(offset)
            assert fuse_file.read(256 * 1024) == local.read(256 * 1024)
    source.unlink()


@pytest.mark.providers(heavy=True)
def test_directory_of_10000_keys_lists_completely(objects, bucket, mount):
    keys = [f"many/file-{i:05d}.txt" for i in range(10_000)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: objects.put(key, b"x"), keys))
    objects.put("many/sub/inner.txt", b"y")
    mnt = mount(bucket)
    names = os.listdir(mnt / "many")
    assert len(names) == 10_001
    assert set(names) == {key.split("/")[1] for key in keys} | {"sub"}
    # ls -l: every entry has attributes without a further round trip failing.
    entries = list(os.scandir(mnt / "many"))
    assert sum(1 for entry in entries if entry.is_file()) == 10_000
    assert all(entry.stat().st_size == 1 for entry in entries if entry.is_file())


def test_prefix_mount_sees_only_its_prefix(objects, bucket, mount):
    objects.put("team-a/data/x.txt", b"a")
    objects.put("team-a/readme", b"r")
    objects.put("team-b/secret.txt", b"b")
    objects.put("team-ab/other.txt", b"c")
    objects.put("root.txt", b"d")
    mnt = mount(bucket, "--prefix=team-a/")
    assert sorted(os.listdir(mnt.path)) == ["data", "readme"]
    assert (mnt / "data" / "x.txt").read_bytes() == b"a"
    assert not (mnt / "team-b").exists()
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "secret.txt")
    assert mountinfo.find(str(mnt.path)).source == f"cloudbucket:{bucket}/team-a/"


def test_uid_gid_and_modes(objects, bucket, mount):
    objects.put("d/f.txt", b"z")
    mnt = mount(bucket, "--uid=1234", "--gid=4321", "--file-mode=640", "--dir-mode=750")
    for path, kind, mode in ((mnt / "d" / "f.txt", stat.S_IFREG, 0o640),
                             (mnt / "d", stat.S_IFDIR, 0o750)):
        info = os.stat(path)
        assert (info.st_uid, info.st_gid) == (1234, 4321)
        assert stat.S_IFMT(info.st_mode) == kind
        assert stat.S_IMODE(info.st_mode) == mode


def test_rewrite_while_open_gives_eio_not_mixed_bytes(objects, bucket, mount):
    # Larger than the prefetch window (4 x 16 MiB ahead), so the seek below must GET again.
    old = _pattern(256 * MiB, seed=11)
    objects.put("v.bin", old)
    mnt = mount(bucket)
    with open(mnt / "v.bin", "rb", buffering=0) as handle:
        assert handle.read(MiB) == old[:MiB]
        objects.put("v.bin", _pattern(256 * MiB, seed=12))
        got = bytearray()
        with pytest.raises(OSError) as caught:
            handle.seek(200 * MiB)
            while chunk := handle.read(MiB):
                got += chunk
        assert caught.value.errno == errno.EIO
        assert bytes(got) == old[200 * MiB:200 * MiB + len(got)]


def test_implicit_dirs_and_shadowing(objects, bucket, mount):
    objects.put("clash", b"file")
    objects.put("clash/inner.txt", b"inside")
    objects.put("clash-a.txt", b"neighbour")
    objects.put("a/b/c/deep.txt", b"deep")
    objects.put("marker/", b"")
    mnt = mount(bucket)
    assert sorted(os.listdir(mnt.path)) == ["a", "clash", "clash-a.txt", "marker"]
    assert (mnt / "clash").is_dir()  # the directory shadows the object
    assert os.listdir(mnt / "clash") == ["inner.txt"]
    assert (mnt / "a" / "b" / "c" / "deep.txt").read_bytes() == b"deep"
    assert os.listdir(mnt / "marker") == []  # a directory marker object is not a file
    # Keys that are not valid file names cannot be stored in SeaweedFS (it rejects or
    # normalises them); tests/unit/test_fs_names.py covers hiding them.


def test_statfs(bucket, mount):
    mnt = mount(bucket)
    info = os.statvfs(mnt.path)
    assert info.f_bavail > 0 and info.f_namemax == 255


def test_read_only_mount(objects, bucket, mount):
    objects.put("keep.txt", b"k")
    mnt = mount(bucket, "--read-only", "--allow-delete")
    assert "ro" in mountinfo.find(str(mnt.path)).options.split(",")
    write_flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for action in (lambda: os.open(mnt / "new.txt", write_flags),
                   lambda: os.unlink(mnt / "keep.txt"), lambda: os.mkdir(mnt / "d"),
                   lambda: os.open(mnt / "keep.txt", write_flags)):
        with pytest.raises(OSError) as caught:
            action()
        assert caught.value.errno == errno.EROFS
    assert (mnt / "keep.txt").read_bytes() == b"k"


def test_metadata_ttl(objects, bucket, mount):
    from driver.devservers import wait_until

    short = mount(bucket)  # minimal TTL: changes by others show up within about a second
    forever = mount(bucket, "--metadata-ttl=indefinite")
    assert not (short / "late.txt").exists()
    assert not (forever / "late.txt").exists()
    objects.put("late.txt", b"late")
    wait_until(lambda: (short / "late.txt").exists(), 10, "the new object on the short-TTL mount")
    objects.put("cached.txt", b"v1")
    wait_until(lambda: (forever / "cached.txt").exists(), 10, "a never-seen name")
    assert os.stat(forever / "cached.txt").st_size == 2
    objects.put("cached.txt", b"version2")
    assert objects.get("cached.txt") == b"version2"  # the store has moved on...
    assert os.stat(forever / "cached.txt").st_size == 2  # ...the indefinite cache has not
