"""The filesystem over the native GCS backend: real FUSE mounts against fake-gcs-server."""

from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from driver.devservers import FakeGcs
from driver.store.base import UploadOptions
from driver.store.gcs import UPLOADS, GcsStore

pytestmark = pytest.mark.fuse

MiB = 1024 * 1024


def _put(gcs: storage.Client, bucket: str, key: str, data: bytes) -> None:
    gcs.bucket(bucket).blob(key).upload_from_string(data)


@pytest.mark.parametrize("size", [0, 1, MiB + 1])
def test_read_objects_of_any_size(gcs, gcs_bucket, gcs_mount, size: int) -> None:
    data = os.urandom(size)
    _put(gcs, gcs_bucket, "obj.bin", data)
    mount = gcs_mount(gcs_bucket)
    assert (mount / "obj.bin").stat().st_size == size
    assert (mount / "obj.bin").read_bytes() == data


def test_random_reads(gcs, gcs_bucket, gcs_mount) -> None:
    data = os.urandom(3 * MiB + 17)
    _put(gcs, gcs_bucket, "r.bin", data)
    mount = gcs_mount(gcs_bucket)
    with open(mount / "r.bin", "rb") as handle:
        for offset, length in [(2 * MiB, 100), (5, 4096), (3 * MiB, 64 * 1024), (0, 1)]:
            handle.seek(offset)
            assert handle.read(length) == data[offset:offset + length]


def test_listing_many_keys_across_pages(gcs, gcs_bucket, gcs_mount) -> None:
    names = [f"f{index:05d}" for index in range(1203)]
    bucket = gcs.bucket(gcs_bucket)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: bucket.blob(f"many/{name}").upload_from_string(b"x"),
                      names))
    _put(gcs, gcs_bucket, "many/sub/inner", b"y")
    mount = gcs_mount(gcs_bucket)
    listed = os.listdir(mount / "many")
    assert sorted(listed) == sorted([*names, "sub"])
    assert len(listed) == len(set(listed))
    assert os.listdir(mount / "many" / "sub") == ["inner"]
    assert (mount / "many" / "sub").is_dir()


def test_prefix_limits_the_mount(gcs, gcs_bucket, gcs_mount) -> None:
    _put(gcs, gcs_bucket, "outside.txt", b"no")
    _put(gcs, gcs_bucket, "team/a/inside.txt", b"yes")
    mount = gcs_mount(gcs_bucket, "--prefix=team/a/")
    assert os.listdir(mount.path) == ["inside.txt"]
    assert (mount / "inside.txt").read_bytes() == b"yes"
    (mount / "new.txt").write_bytes(b"written")
    assert gcs.bucket(gcs_bucket).blob("team/a/new.txt").download_as_bytes() == b"written"


@pytest.mark.parametrize("size", [0, 5, 20 * MiB + 3])
def test_write_and_read_back(gcs, gcs_bucket, gcs_mount, size: int) -> None:
    """20 MiB is three 8 MiB parts: composed from temporary objects at close."""
    data = os.urandom(size)
    mount = gcs_mount(gcs_bucket)
    (mount / "dir").mkdir()
    with open(mount / "dir" / "out.bin", "wb") as handle:
        handle.write(data)
    assert gcs.bucket(gcs_bucket).blob("dir/out.bin").download_as_bytes() == data
    assert (mount / "dir" / "out.bin").read_bytes() == data
    # No temporaries left behind, and none visible in the mount.
    assert [b.name for b in gcs.list_blobs(gcs_bucket, prefix=UPLOADS)] == []
    assert sorted(os.listdir(mount.path)) == ["dir"]


def test_nothing_visible_until_close(gcs, gcs_bucket, gcs_mount) -> None:
    mount = gcs_mount(gcs_bucket)
    with open(mount / "big.bin", "wb") as handle:
        handle.write(os.urandom(17 * MiB))  # two parts are uploaded before close
        handle.flush()
        assert gcs.bucket(gcs_bucket).get_blob("big.bin") is None
        assert os.listdir(mount.path) == ["big.bin"]  # only the file being written
    assert gcs.bucket(gcs_bucket).get_blob("big.bin").size == 17 * MiB


def test_unlink_needs_allow_delete(gcs, gcs_bucket, gcs_mount) -> None:
    _put(gcs, gcs_bucket, "gone.txt", b"bye")
    refusing = gcs_mount(gcs_bucket)
    with pytest.raises(PermissionError):
        (refusing / "gone.txt").unlink()
    allowing = gcs_mount(gcs_bucket, "--allow-delete")
    (allowing / "gone.txt").unlink()
    assert gcs.bucket(gcs_bucket).get_blob("gone.txt") is None
    assert not (allowing / "gone.txt").exists()


def test_overwrite_with_allow_overwrite(gcs, gcs_bucket, gcs_mount) -> None:
    _put(gcs, gcs_bucket, "o.txt", b"old")
    mount = gcs_mount(gcs_bucket, "--allow-overwrite")
    (mount / "o.txt").write_bytes(b"new contents")
    assert gcs.bucket(gcs_bucket).blob("o.txt").download_as_bytes() == b"new contents"


def test_rewrite_under_an_open_file_gives_eio(gcs, gcs_bucket, gcs_mount) -> None:
    first = os.urandom(32 * MiB)  # far larger than what the first read prefetches
    _put(gcs, gcs_bucket, "v.bin", first)
    mount = gcs_mount(gcs_bucket, "--read-part-size=5MiB")
    with open(mount / "v.bin", "rb", buffering=0) as handle:
        assert handle.read(1024) == first[:1024]
        _put(gcs, gcs_bucket, "v.bin", os.urandom(8 * MiB))  # a new generation
        with pytest.raises(OSError) as raised:
            handle.seek(30 * MiB)
            while handle.read(MiB):
                pass
        assert raised.value.errno == errno.EIO


def test_read_only_mount(gcs, gcs_bucket, gcs_mount) -> None:
    _put(gcs, gcs_bucket, "r.txt", b"r")
    mount = gcs_mount(gcs_bucket, "--read-only")
    assert (mount / "r.txt").read_bytes() == b"r"
    with pytest.raises(OSError) as raised:
        (mount / "w.txt").write_bytes(b"w")
    assert raised.value.errno == errno.EROFS


def test_missing_bucket_is_refused(fake_gcs: FakeGcs, tmp_path, cli) -> None:
    target = tmp_path / "mnt"
    target.mkdir()
    result = cli("mount", "no-such-bucket-x", str(target), "--provider=gcs",
                 env={"STORAGE_EMULATOR_HOST": fake_gcs.endpoint})
    assert result.returncode == 4
    assert result.stderr.strip() == \
        "cloudbucket-csi: error: bucket no-such-bucket-x does not exist"


def test_endpoint_url_works_without_emulator_variable(gcs, gcs_bucket,
                                                      fake_gcs: FakeGcs, tmp_path,
                                                      cli) -> None:
    _put(gcs, gcs_bucket, "e.txt", b"via endpoint-url")
    target = tmp_path / "mnt"
    target.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "STORAGE_EMULATOR_HOST"}
    result = cli("mount", gcs_bucket, str(target), "--provider=gcs",
                 f"--endpoint-url={fake_gcs.endpoint}", env=env)
    assert result.returncode == 0, result.stderr
    try:
        assert (target / "e.txt").read_bytes() == b"via endpoint-url"
    finally:
        from driver.mounts import mountinfo

        mountinfo.unmount(str(target))


# -- the store itself (no FUSE): what only GCS has. The contract every backend keeps
# (uploads, aborts, pending-upload listings...) is tests/integration/test_store_conformance.py.


def test_store_compose_more_than_32_parts(fake_gcs: FakeGcs, gcs_bucket) -> None:
    store = GcsStore(gcs_bucket, AnonymousCredentials(), endpoint_url=fake_gcs.endpoint)
    store.put("src", b"0123456789", UploadOptions())
    source = store.head("src")
    assert source is not None
    upload = store.create_upload("k", UploadOptions())
    # Parts arrive out of order, as parallel uploads do.
    parts = [store.upload_part("k", upload, n, bytes([n]) * 100, UploadOptions())
             for n in range(70, 0, -1)]
    parts.append(store.upload_part_copy("k", upload, 71, "src", 2, 7, source.etag))
    etag = store.complete_upload("k", upload, parts)
    expected = b"".join(bytes([n]) * 100 for n in range(1, 71)) + b"23456"
    assert store.get_range("k", 0, len(expected), etag) == expected
    assert [info.key for info in store.list_page("", None).objects] == ["k", "src"]
