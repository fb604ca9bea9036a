"""Write side: streamed uploads, durability errors, deletes and directories, nothing lost.

Each test runs once per provider (S3 on SeaweedFS, native GCS on fake-gcs-server), like
test_fs_read.py; the two that only mean something on S3 say why.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from tests.backends import Objects
from tests.faults import FaultProxy
from tests.helpers import mount_bucket

pytestmark = [pytest.mark.fuse, pytest.mark.providers("s3", "gcs")]

MiB = 1024 * 1024


def _object_sha(objects: Objects, key: str) -> str:
    digest = hashlib.sha256()
    body = objects.open(key)
    for chunk in iter(lambda: body.read(8 * MiB), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, 8 * MiB))
            digest.update(chunk)
            out.write(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def _no_pending_uploads(objects: Objects) -> bool:
    return objects.pending_uploads() == []


@pytest.mark.parametrize("size", [0, 1, 8 * MiB - 1, 8 * MiB, 8 * MiB + 1, 20 * MiB + 3])
def test_cp_into_mount_is_byte_exact(objects, bucket, mount, tmp_path, size):
    source = tmp_path / "src.bin"
    digest = _write_random(source, size)
    mnt = mount(bucket)
    subprocess.run(["cp", str(source), str(mnt / "copy.bin")], check=True)
    assert _object_sha(objects, "copy.bin") == digest
    # Immediately visible on the same mount: stat, readdir and read.
    assert os.stat(mnt / "copy.bin").st_size == size
    assert "copy.bin" in os.listdir(mnt.path)
    assert hashlib.sha256((mnt / "copy.bin").read_bytes()).hexdigest() == digest
    assert _no_pending_uploads(objects)


@pytest.mark.slow
@pytest.mark.providers(heavy=True)
def test_cp_one_gib_byte_exact_with_bounded_memory(objects, bucket, mount, tmp_path):
    source = tmp_path / "big.bin"
    digest = _write_random(source, 1024 * MiB)
    mnt = mount(bucket)
    server = mnt.process
    peak = [server.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            try:
                peak[0] = max(peak[0], server.memory_info().rss)
            except psutil.NoSuchProcess:
                return

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        subprocess.run(["dd", f"if={source}", f"of={mnt / 'big.bin'}", "bs=1M",
                        "conv=fsync", "status=none"], check=True)
    finally:
        done.set()
        sampler.join()
    source.unlink()
    assert _object_sha(objects, "big.bin") == digest
    assert peak[0] < 256 * MiB, f"FUSE server peak RSS {peak[0] / MiB:.0f} MiB"


def test_fsync_halfway_then_continue(objects, bucket, mount):
    mnt = mount(bucket)
    first, second = os.urandom(6 * MiB + 17), os.urandom(9 * MiB + 5)
    small_first, small_second = b"head-" * 10, b"tail-" * 10
    with open(mnt / "log.bin", "wb") as out, open(mnt / "small.txt", "wb") as small:
        out.write(first)
        out.flush()
        os.fsync(out.fileno())
        # After fsync the data is durable and visible in the bucket.
        assert _object_sha(objects, "log.bin") == hashlib.sha256(first).hexdigest()
        out.write(second)
        small.write(small_first)
        small.flush()
        os.fsync(small.fileno())
        small.write(small_second)
    assert _object_sha(objects, "log.bin") == hashlib.sha256(first + second).hexdigest()
    assert objects.get("small.txt") == small_first + small_second
    assert _no_pending_uploads(objects)


def test_ten_concurrent_writers(objects, bucket, mount):
    mnt = mount(bucket)
    payloads = {f"w{i}.bin": os.urandom(i * MiB + 123 * i) for i in range(10)}

    def write(item: tuple[str, bytes]) -> None:
        with open(mnt / item[0], "wb") as out:
            for offset in range(0, len(item[1]), 300_000):
                out.write(item[1][offset:offset + 300_000])

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(write, payloads.items()))
    for name, data in payloads.items():
        assert objects.get(name) == data


# Injects faults into SeaweedFS's S3 traffic; GcsStore's aborts are covered by
# test_store_conformance.py::test_abort_leaves_nothing on every backend.
@pytest.mark.providers("s3")
def test_failed_parts_give_error_and_leave_nothing(seaweed, objects, bucket, tmp_path):
    with FaultProxy(seaweed.port) as proxy:
        target = tmp_path / "mnt"
        target.mkdir()
        seaweed_proxy = _ProxyEndpoint(seaweed, proxy.endpoint)
        mnt = mount_bucket(seaweed_proxy, bucket, target, log_file=tmp_path / "m.log")
        try:
            proxy.reject_matching(r"^PUT .*[?&]partNumber=2\b")
            with pytest.raises(OSError) as caught, open(mnt / "doomed.bin", "wb") as out:
                for _ in range(40):
                    out.write(os.urandom(MiB))
            assert caught.value.errno == errno.EIO
            assert proxy.rejected >= 1
        finally:
            mnt.close()
    assert objects.list_keys() == []
    assert _no_pending_uploads(objects)


class _ProxyEndpoint:
    """The SeaweedFS server, reached through the fault proxy."""

    def __init__(self, server, endpoint: str) -> None:
        self._server = server
        self.endpoint = endpoint

    def credential_env(self) -> dict[str, str]:
        return self._server.credential_env()


def test_overwrite_needs_flag_and_truncate(objects, bucket, mount):
    objects.put("f.txt", b"original")
    plain = mount(bucket)
    with pytest.raises(PermissionError):
        open(plain / "f.txt", "wb").close()
    with pytest.raises(PermissionError):
        os.open(plain / "f.txt", os.O_WRONLY | os.O_APPEND)
    assert objects.get("f.txt") == b"original"
    allowed = mount(bucket, "--allow-overwrite")
    with pytest.raises(PermissionError):
        os.open(allowed / "f.txt", os.O_WRONLY)  # no O_TRUNC
    (allowed / "f.txt").write_bytes(b"replaced")
    assert objects.get("f.txt") == b"replaced"
    assert (allowed / "f.txt").read_bytes() == b"replaced"


def test_delete_needs_flag(objects, bucket, mount):
    objects.put("gone.txt", b"x")
    plain = mount(bucket)
    with pytest.raises(PermissionError):
        os.unlink(plain / "gone.txt")
    allowed = mount(bucket, "--allow-delete")
    os.unlink(allowed / "gone.txt")
    assert objects.list_keys() == []
    assert not (allowed / "gone.txt").exists()


def test_mkdir_is_local_until_a_file_is_written(objects, bucket, mount):
    objects.put("full/obj.txt", b"x")
    mnt = mount(bucket)
    os.makedirs(mnt / "new" / "nested")
    assert (mnt / "new" / "nested").is_dir()
    assert objects.list_keys("new") == []
    os.rmdir(mnt / "new" / "nested")
    assert not (mnt / "new" / "nested").exists()
    os.mkdir(mnt / "new" / "kept")
    (mnt / "new" / "kept" / "file.txt").write_bytes(b"data")
    assert objects.get("new/kept/file.txt") == b"data"
    with pytest.raises(OSError) as caught:
        os.rmdir(mnt / "full")
    assert caught.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as caught:
        os.rmdir(mnt / "new" / "kept")
    assert caught.value.errno == errno.ENOTEMPTY
    with pytest.raises(FileExistsError):
        os.mkdir(mnt / "full")


@pytest.mark.parametrize(
    ("operation", "code"),
    [
        ("rename", errno.ENOTSUP),
        ("chmod", errno.EPERM),
        ("chown", errno.EPERM),
        ("symlink", errno.EPERM),
        ("link", errno.EPERM),
        ("out-of-order", errno.EINVAL),
        ("second-writer", errno.EPERM),
    ],
)
def test_refused_operations(objects, bucket, mount, operation, code):
    objects.put("a.txt", b"a")
    mnt = mount(bucket, "--allow-overwrite")
    with pytest.raises(OSError) as caught:
        if operation == "rename":
            os.rename(mnt / "a.txt", mnt / "b.txt")
        elif operation == "chmod":
            os.chmod(mnt / "a.txt", 0o600)
        elif operation == "chown":
            os.chown(mnt / "a.txt", 1, 1)
        elif operation == "symlink":
            os.symlink("a.txt", mnt / "s")
        elif operation == "link":
            os.link(mnt / "a.txt", mnt / "l")
        elif operation == "out-of-order":
            fd = os.open(mnt / "new.bin", os.O_WRONLY | os.O_CREAT)
            try:
                os.pwrite(fd, b"late", 4096)
            finally:
                with pytest.raises(OSError):
                    os.close(fd)  # the upload is aborted: close reports it too
        elif operation == "second-writer":
            with open(mnt / "busy.bin", "wb") as first:
                first.write(b"1")
                os.open(mnt / "busy.bin", os.O_WRONLY | os.O_TRUNC)
    assert caught.value.errno == code
    assert objects.get("a.txt") == b"a"
    assert "new.bin" not in objects.list_keys()
    assert _no_pending_uploads(objects)


# Asserts an S3 storage class (STANDARD_IA); GCS has other class names and
# fake-gcs-server ignores them.
@pytest.mark.providers("s3")
def test_object_options_reach_the_store(s3, objects, bucket, mount):
    mnt = mount(bucket, "--storage-class=STANDARD_IA", "--upload-checksums=crc32c")
    (mnt / "small.txt").write_bytes(b"tiny")
    (mnt / "large.bin").write_bytes(os.urandom(9 * MiB))
    for key in ("small.txt", "large.bin"):
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head.get("StorageClass") == "STANDARD_IA", head
    off = mount(bucket, "--upload-checksums=off")
    (off / "plain.txt").write_bytes(b"plain")
    assert objects.get("plain.txt") == b"plain"


def test_copy_tree_into_mount(bucket, mount, tmp_path):
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "one.txt").write_text("1")
    (tree / "a" / "b" / "two.txt").write_text("2")
    mnt = mount(bucket)
    subprocess.run(["cp", "-r", str(tree), str(mnt / "tree")], check=True)
    assert (mnt / "tree" / "a" / "b" / "two.txt").read_text() == "2"
    # Mode changes are refused, so copying permissions (cp -p, copystat) fails loudly.
    with pytest.raises(shutil.Error):
        shutil.copytree(tree, mnt / "tree2")


def test_read_while_writing_is_busy_then_readable(bucket, mount):
    mnt = mount(bucket)
    with open(mnt / "growing.txt", "wb") as out:
        out.write(b"part one")
        with pytest.raises(OSError) as caught:
            open(mnt / "growing.txt", "rb").close()
        assert caught.value.errno == errno.EBUSY
    assert (mnt / "growing.txt").read_bytes() == b"part one"


def test_touch_and_truncate(objects, bucket, mount):
    objects.put("t.txt", b"12345")
    mnt = mount(bucket)
    os.utime(mnt / "t.txt")  # touch of an existing file: accepted
    subprocess.run(["touch", str(mnt / "t.txt")], check=True)
    os.truncate(mnt / "t.txt", 5)  # to the current size: a no-op
    with pytest.raises(PermissionError):
        os.truncate(mnt / "t.txt", 2)
    subprocess.run(["touch", str(mnt / "fresh.txt")], check=True)  # creates an empty object
    assert objects.get("fresh.txt") == b""
    assert objects.get("t.txt") == b"12345"
