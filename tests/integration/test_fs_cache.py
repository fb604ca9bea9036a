"""The local block cache through real FUSE mounts of a real SeaweedFS bucket (and of
fake-gcs-server, where blocks are keyed by generation).

A counting proxy sits between each mount and the store, so "served from the cache" is a
count of object GETs (zero), not a timing. Mounts use --direct-io so every read reaches the
filesystem (no page cache to drop).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver.cli import exit_status
from driver.devservers import SeaweedS3, wait_until
from driver.failures import FailureKind
from driver.fs.cache import HEADER_SIZE, LAYOUT, BlockCache, ObjectVersion
from driver.volume import cache_dir, volume_spec
from tests.counting_proxy import CountingProxy
from tests.helpers import sha256_file

# fuse: real mounts; root: a tmpfs for the full-disk case and /proc/sys/vm access.
pytestmark = [pytest.mark.fuse, pytest.mark.root]
MiB = 1024 * 1024


@pytest.fixture
def proxy(seaweed: SeaweedS3) -> Iterator[CountingProxy]:
    with CountingProxy(seaweed.port) as counting:
        yield counting


def _upload(s3, bucket: str, key: str, size: int, tmp_path: Path, seed: int = 0) -> str:
    """A `size`-byte object of distinct 1 MiB blocks; returns its sha256."""
    source = tmp_path / f"{key}.src"
    digest = hashlib.sha256()
    base = os.urandom(MiB)
    with open(source, "wb") as out:
        for i in range(-(-size // MiB)):
            chunk = (seed.to_bytes(4, "little") + i.to_bytes(8, "little") + base[12:])
            chunk = chunk[:min(MiB, size - i * MiB)]
            digest.update(chunk)
            out.write(chunk)
    s3.upload_file(str(source), bucket, key)
    source.unlink()
    return digest.hexdigest()


def _cached_mount(mount, bucket: str, proxy: CountingProxy, cache: Path, *flags: str):
    return mount(bucket, f"--endpoint-url={proxy.endpoint}", f"--cache={cache}",
                 "--direct-io", *flags)


def _block_files(cache: Path) -> list[Path]:
    return [p for p in (cache / LAYOUT / "blocks").rglob("*") if p.is_file()]


def _cached_bytes(cache: Path) -> int:
    total = 0
    for path in _block_files(cache):
        with contextlib.suppress(FileNotFoundError):  # evicted since the listing
            total += path.stat().st_size
    return total


def _wait_cached(cache: Path, size: int) -> None:
    """Blocks are written in the background: wait until an object's are all on disk."""
    blocks = -(-size // MiB)
    wait_until(lambda: _cached_bytes(cache) >= size + blocks * HEADER_SIZE, 60,
               f"{blocks} blocks in {cache}")


def test_second_read_and_remount_make_no_get(s3, bucket, mount, proxy, tmp_path):
    size = 256 * MiB
    digest = _upload(s3, bucket, "big.bin", size, tmp_path)
    cache = tmp_path / "cache"
    mnt = _cached_mount(mount, bucket, proxy, cache)
    assert sha256_file(mnt / "big.bin") == digest
    assert proxy.object_gets() > 0
    _wait_cached(cache, size)

    proxy.reset()
    assert sha256_file(mnt / "big.bin") == digest
    assert proxy.object_gets() == 0, proxy.kinds()

    mnt.close()
    proxy.reset()
    again = _cached_mount(mount, bucket, proxy, cache)
    assert sha256_file(again / "big.bin") == digest
    kinds = proxy.kinds()
    assert kinds["GET object"] == 0, kinds
    assert kinds["HEAD"] + kinds["GET list"] >= 1  # the ETag was confirmed with the store


def test_changed_object_is_read_fresh_after_the_ttl(s3, bucket, mount, proxy, tmp_path):
    size = 4 * MiB + 3
    old = os.urandom(size)
    s3.put_object(Bucket=bucket, Key="f.bin", Body=old)
    cache = tmp_path / "cache"
    ttl = 1.0
    mnt = _cached_mount(mount, bucket, proxy, cache, f"--metadata-ttl={ttl}")
    assert (mnt / "f.bin").read_bytes() == old
    _wait_cached(cache, size)
    new = os.urandom(size)  # same size: only the ETag tells the versions apart
    s3.put_object(Bucket=bucket, Key="f.bin", Body=new)
    changed_at = time.monotonic()
    seen = (mnt / "f.bin").read_bytes()
    assert seen in (old, new)  # within the TTL either version, never a mix
    wait_until(lambda: time.monotonic() > changed_at + ttl, 5, "the metadata TTL to pass")
    proxy.reset()
    assert (mnt / "f.bin").read_bytes() == new
    assert proxy.object_gets() > 0
    kinds = proxy.kinds()
    assert kinds["HEAD"] + kinds["GET list"] >= 1  # revalidated (lookup or open)


def test_corrupted_block_is_detected_and_refetched(s3, bucket, mount, proxy, tmp_path):
    size = 8 * MiB
    digest = _upload(s3, bucket, "c.bin", size, tmp_path)
    cache = tmp_path / "cache"
    mnt = _cached_mount(mount, bucket, proxy, cache)
    assert sha256_file(mnt / "c.bin") == digest
    _wait_cached(cache, size)
    victim = sorted(_block_files(cache))[3]
    raw = bytearray(victim.read_bytes())
    raw[HEADER_SIZE + 4321] ^= 0x10  # one flipped bit in the data, header untouched
    victim.write_bytes(bytes(raw))

    proxy.reset()
    assert sha256_file(mnt / "c.bin") == digest
    assert proxy.object_gets() == 1  # just the damaged block
    assert "dropping a damaged cache block" in mnt.log()
    _wait_cached(cache, size)  # rewritten
    proxy.reset()
    assert sha256_file(mnt / "c.bin") == digest
    assert proxy.object_gets() == 0


def test_cache_stays_under_max_cache_size(s3, bucket, mount, proxy, tmp_path):
    size = 128 * MiB
    digest = _upload(s3, bucket, "l.bin", size, tmp_path)
    cache = tmp_path / "cache"
    mnt = _cached_mount(mount, bucket, proxy, cache, "--max-cache-size=32")
    hasher = hashlib.sha256()
    peak = 0
    with open(mnt / "l.bin", "rb", buffering=0) as handle:
        while chunk := handle.read(4 * MiB):
            hasher.update(chunk)
            peak = max(peak, _cached_bytes(cache))
    assert hasher.hexdigest() == digest
    # Parts are fetched (and their blocks written) in parallel, so which blocks LRU keeps is
    # not known in advance. Unmounting ends the server's block writes: the cache is final.
    mnt.close()
    peak = max(peak, _cached_bytes(cache))
    assert 16 * MiB < peak <= 32 * MiB
    version = ObjectVersion(bucket, "l.bin", s3.head_object(Bucket=bucket, Key="l.bin")["ETag"],
                            size)
    layout = BlockCache(cache, None)
    kept = [i for i in range(1, size // MiB) if os.path.exists(layout.path(version, i))]
    assert len(kept) >= 12
    # What is cached is served: a remount reads from every kept block with no GET (4 KiB
    # at its end, backwards, so that no read looks sequential and asks for read-ahead).
    proxy.reset()
    again = _cached_mount(mount, bucket, proxy, cache)
    fd = os.open(again / "l.bin", os.O_RDONLY)
    try:
        for index in reversed(kept):
            assert len(os.pread(fd, 4096, (index + 1) * MiB - 4096)) == 4096
    finally:
        os.close(fd)
    assert proxy.object_gets() == 0, proxy.kinds()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "small"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(target)],
                   check=True)
    try:
        yield target
    finally:
        if subprocess.run(["umount", str(target)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], check=True)


def test_full_cache_disk_leaves_reads_correct(small_tmpfs, s3, bucket, mount, proxy,
                                              tmp_path):
    # small_tmpfs comes first, so the mount (and its open cache files) goes before it.
    size = 24 * MiB
    digest = _upload(s3, bucket, "e.bin", size, tmp_path)
    mnt = _cached_mount(mount, bucket, proxy, small_tmpfs / "cache")  # no limit: disk fills
    for _ in range(3):
        assert sha256_file(mnt / "e.bin") == digest
    log = mnt.log()
    assert log.count("reads continue without caching new data") == 1, log
    assert "No space left on device" in log


def test_unwritable_cache_dir_leaves_reads_correct(s3, bucket, mount, proxy, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    data = os.urandom(3 * MiB)
    s3.put_object(Bucket=bucket, Key="u.bin", Body=data)
    mnt = _cached_mount(mount, bucket, proxy, blocker / "cache")
    for _ in range(2):
        proxy.reset()
        assert (mnt / "u.bin").read_bytes() == data
        assert proxy.object_gets() > 0
    assert mnt.log().count("reads continue without caching new data") == 1


def test_two_mounts_of_one_volume_share_blocks(s3, bucket, mount, proxy, tmp_path):
    size = 16 * MiB + 5
    digest = _upload(s3, bucket, "s.bin", size, tmp_path)
    cache = tmp_path / "cache"
    first = _cached_mount(mount, bucket, proxy, cache)
    second = _cached_mount(mount, bucket, proxy, cache)
    assert sha256_file(first / "s.bin") == digest
    _wait_cached(cache, size)
    proxy.reset()
    assert sha256_file(second / "s.bin") == digest
    assert proxy.object_gets() == 0


def test_different_credentials_get_different_cache_dirs(s3, bucket, mount, proxy, tmp_path,
                                                        seaweed):
    """The CSI side's directory choice, used by two real mounts: the Secret's identity and
    the driver's own identity never share blocks, even for the same volume and bucket."""
    env = seaweed.credential_env()
    attributes = {"bucketName": bucket, "cache": "node"}
    with_secret = volume_spec(attributes, secrets={
        "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"]})
    driver_identity = volume_spec(attributes)
    root = tmp_path / "cache-root"
    dir_secret = Path(cache_dir(str(root), "vol-1", with_secret))
    dir_driver = Path(cache_dir(str(root), "vol-1", driver_identity))
    assert dir_secret != dir_driver and dir_secret.parent == dir_driver.parent == root

    size = 4 * MiB
    digest = _upload(s3, bucket, "d.bin", size, tmp_path)
    first = _cached_mount(mount, bucket, proxy, dir_secret)
    assert sha256_file(first / "d.bin") == digest
    _wait_cached(dir_secret, size)
    proxy.reset()
    second = _cached_mount(mount, bucket, proxy, dir_driver)
    assert sha256_file(second / "d.bin") == digest
    assert proxy.object_gets() > 0  # nothing was served from the other identity's blocks
    _wait_cached(dir_driver, size)  # each identity keeps its own copy
    assert _cached_bytes(dir_secret) == _cached_bytes(dir_driver)


def _media_gets(proxy: CountingProxy) -> int:
    with proxy._lock:
        lines = list(proxy.requests)
    return sum(1 for line in lines if line.startswith("GET ") and "alt=media" in line)


def test_native_gcs_blocks_are_keyed_by_generation(fake_gcs, gcs, gcs_bucket, gcs_mount,
                                                   tmp_path):
    size = 3 * MiB + 11
    old, new = os.urandom(size), os.urandom(size)
    blob = gcs.bucket(gcs_bucket).blob("g.bin")
    blob.upload_from_string(old)
    cache = tmp_path / "gcache"
    with CountingProxy(fake_gcs.port) as gproxy:
        mnt = gcs_mount(gcs_bucket, f"--cache={cache}", "--direct-io", "--metadata-ttl=0",
                        env={"STORAGE_EMULATOR_HOST": gproxy.endpoint})
        assert (mnt / "g.bin").read_bytes() == old
        assert _media_gets(gproxy) > 0
        _wait_cached(cache, size)
        gproxy.reset()
        assert (mnt / "g.bin").read_bytes() == old
        assert _media_gets(gproxy) == 0
        blob.upload_from_string(new)  # a new generation, same size
        gproxy.reset()
        assert (mnt / "g.bin").read_bytes() == new
        assert _media_gets(gproxy) > 0
        mnt.close()


def test_max_cache_size_needs_a_cache_dir(cli, tmp_path):
    target = tmp_path / "mnt"
    target.mkdir()
    invalid = exit_status(FailureKind.INVALID_OPTION)
    result = cli("mount", "some-bucket", str(target), "--max-cache-size=100")
    assert result.returncode == invalid
    assert "--max-cache-size: needs --cache DIR" in result.stderr
    result = cli("mount", "some-bucket", str(target), "--cache=/tmp/x", "--max-cache-size=0")
    assert result.returncode == invalid and "max-cache-size" in result.stderr


def test_files_written_through_the_mount_are_cached(s3, bucket, mount, proxy, tmp_path):
    data = os.urandom(20 * MiB + 7)  # a multipart upload (8 MiB parts) and a tail block
    cache = tmp_path / "cache"
    writer = _cached_mount(mount, bucket, proxy, cache)
    (writer / "w.bin").write_bytes(data)
    _wait_cached(cache, len(data))
    writer.close()
    proxy.reset()
    reader = _cached_mount(mount, bucket, proxy, cache)  # the ETag comes from the store now
    assert (reader / "w.bin").read_bytes() == data
    assert proxy.object_gets() == 0, proxy.kinds()
