"""The ObjectStore contract (driver/store/base.py), one suite for every backend.

Each test runs against S3Store on SeaweedFS, GcsStore on fake-gcs-server and the in-memory
store the unit tests use (tests/memstore.py): the filesystem is written against the
contract, so a backend, or the unit tests' stand-in, that drifts from it shows up here as
one failing parameter. Part sizes follow real S3 (5 MiB but the last), so nothing passes
only because a test server is lenient.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from driver.store.base import (
    BucketNotFound,
    NotFound,
    ObjectStore,
    PreconditionFailed,
    StoreError,
    UploadOptions,
)
from tests.backends import PROVIDERS, open_store
from tests.memstore import MemoryStore

STORES = ("memory", *PROVIDERS)
pytestmark = pytest.mark.parametrize("provider", STORES)

MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest part but the last
PLAIN = UploadOptions()


def _server(provider: str, request: pytest.FixtureRequest):
    return request.getfixturevalue("fake_gcs" if provider == "gcs" else "seaweed")


@pytest.fixture
def store(provider: str, request: pytest.FixtureRequest) -> Iterator[ObjectStore]:
    if provider == "memory":
        yield MemoryStore("mem")
        return
    bucket = request.getfixturevalue("bucket")  # follows `provider`: emptied afterwards
    yield open_store(provider, _server(provider, request), bucket)


def _put(store: ObjectStore, *keys: str) -> None:
    for key in keys:
        store.put(key, key.encode(), PLAIN)


# -- buckets and objects ---------------------------------------------------------------


def test_check_bucket(store: ObjectStore) -> None:
    region = store.check_bucket()
    assert region is None or isinstance(region, str)


def test_missing_bucket_is_bucket_not_found(provider: str,
                                            request: pytest.FixtureRequest) -> None:
    if provider == "memory":
        missing: ObjectStore = MemoryStore("missing")  # its name for a missing bucket
    else:
        missing = open_store(provider, _server(provider, request), f"no-{uuid.uuid4().hex}")
    with pytest.raises(BucketNotFound):
        missing.check_bucket()


def test_put_head_and_ranged_reads(store: ObjectStore) -> None:
    data = os.urandom(100_000)
    etag = store.put("dir/obj.bin", data, PLAIN)
    info = store.head("dir/obj.bin")
    assert info is not None
    assert (info.key, info.size, info.etag) == ("dir/obj.bin", len(data), etag)
    assert store.get_range("dir/obj.bin", 0, len(data), etag) == data
    assert store.get_range("dir/obj.bin", 4096, 4100, etag) == data[4096:4100]
    assert store.get_range("dir/obj.bin", 7, 7, None) == b""
    assert store.get_range("dir/obj.bin", 99_999, 100_000, None) == data[-1:]


def test_empty_object(store: ObjectStore) -> None:
    etag = store.put("empty", b"", PLAIN)
    info = store.head("empty")
    assert info is not None and info.size == 0 and info.etag == etag
    assert store.get_range("empty", 0, 0, etag) == b""


def test_a_range_past_the_end_is_an_error_not_a_short_read(store: ObjectStore) -> None:
    store.put("short", b"0123456789", PLAIN)
    with pytest.raises(StoreError):
        store.get_range("short", 5, 20, None)


def test_missing_object(store: ObjectStore) -> None:
    assert store.head("nope") is None
    with pytest.raises(NotFound):
        store.get_range("nope", 0, 10, None)


def test_first_bytes_of_an_object_of_unknown_size(store: ObjectStore) -> None:
    """The filesystem's guess (driver/fs/firstbytes.py): up to a buffer's length of an
    object's first bytes and its ETag, shorter when the object is; NotFound when missing."""
    small, big = os.urandom(1000), os.urandom(300_000)
    small_etag = store.put("first/small", small, PLAIN)
    big_etag = store.put("first/big", big, PLAIN)
    out = bytearray(128 * 1024)
    assert store.get_first_into("first/small", memoryview(out)) == (len(small), small_etag)
    assert out[:len(small)] == small
    assert store.get_first_into("first/big", memoryview(out)) == (len(out), big_etag)
    assert out == big[:len(out)]
    with pytest.raises(NotFound):
        store.get_first_into("first/nope", memoryview(out))


def test_overwrite_changes_the_etag_and_pinned_reads_fail(store: ObjectStore) -> None:
    first = store.put("v", b"version one", PLAIN)
    second = store.put("v", b"version two!", PLAIN)
    assert first != second
    assert store.get_range("v", 0, 7, second) == b"version"
    with pytest.raises(PreconditionFailed):
        store.get_range("v", 0, 7, first)


def test_crc32c_checksums_are_accepted(store: ObjectStore) -> None:
    options = UploadOptions(checksum="crc32c")
    etag = store.put("c", b"checked", options)
    assert store.get_range("c", 0, 7, etag) == b"checked"
    upload = store.create_upload("m", options)
    part = store.upload_part("m", upload, 1, b"part", options)
    etag = store.complete_upload("m", upload, [part])
    assert store.get_range("m", 0, 4, etag) == b"part"


def test_delete_and_delete_prefix(store: ObjectStore) -> None:
    _put(store, "a/1", "a/2", "a/b/3", "ab/4", "keep")
    store.delete("keep")
    assert store.head("keep") is None
    store.delete("keep")  # deleting what is gone is not an error
    assert store.delete_prefix("a/") == 3
    assert [info.key for info in store.list_page("", None).objects] == ["ab/4"]


# -- listings ----------------------------------------------------------------------------


def test_list_groups_at_the_delimiter(store: ObjectStore) -> None:
    _put(store, "top.txt", "d/one", "d/two", "d/sub/deep", "e/x", "d-sibling")
    page = store.list_page("d/")
    assert sorted(info.key for info in page.objects) == ["d/one", "d/two"]
    assert list(page.prefixes) == ["d/sub/"]
    assert page.next_token is None
    root = store.list_page("")
    assert sorted(info.key for info in root.objects) == ["d-sibling", "top.txt"]
    assert sorted(root.prefixes) == ["d/", "e/"]
    sizes = {info.key: info.size for info in root.objects}
    assert sizes == {"d-sibling": len(b"d-sibling"), "top.txt": len(b"top.txt")}


def test_list_without_delimiter_is_recursive(store: ObjectStore) -> None:
    _put(store, "d/one", "d/sub/deep", "other")
    page = store.list_page("d/", None)
    assert sorted(info.key for info in page.objects) == ["d/one", "d/sub/deep"]
    assert list(page.prefixes) == []


def test_pages_cover_every_key_once(store: ObjectStore) -> None:
    keys = [f"p/k{index:02d}" for index in range(11)]
    _put(store, *keys)
    seen: list[str] = []
    token = None
    for _ in range(20):
        page = store.list_page("p/", None, token, max_keys=4)
        assert len(page.objects) <= 4
        seen += [info.key for info in page.objects]
        token = page.next_token
        if token is None:
            break
    assert seen == keys


def test_start_after(store: ObjectStore) -> None:
    _put(store, "s/a", "s/b", "s/c", "s/d")
    page = store.list_page("s/", None, start_after="s/b")
    assert [info.key for info in page.objects] == ["s/c", "s/d"]


def test_start_after_with_the_delimiter(store: ObjectStore) -> None:
    """A window of a big directory (Filesystem._list_window): the page starts after the
    given key, groups at the delimiter, and a truncated page holds the first entries in
    key order. (SeaweedFS leaves out a directory named exactly `start_after`, and
    fake-gcs-server counts only files against max_keys; the window needs neither.)"""
    _put(store, "w/a", "w/b/1", "w/b/2", "w/c", "w/d/9", "w/e", "w/f")
    page = store.list_page("w/", "/", None, 10, start_after="w/a")
    assert [info.key for info in page.objects] == ["w/c", "w/e", "w/f"]
    assert list(page.prefixes) == ["w/b/", "w/d/"]
    assert page.next_token is None
    in_order = ["w/b/", "w/c", "w/d/", "w/e", "w/f"]
    page = store.list_page("w/", "/", None, 2, start_after="w/a")
    listed = sorted([info.key for info in page.objects] + list(page.prefixes))
    assert 2 <= len(listed) < len(in_order)
    assert listed == in_order[:len(listed)]
    assert page.next_token is not None


# -- multipart uploads --------------------------------------------------------------------


def test_multipart_parts_in_any_order(store: ObjectStore) -> None:
    chunks = [os.urandom(PART), os.urandom(PART), os.urandom(1234)]
    upload = store.create_upload("big.bin", PLAIN)
    assert store.list_uploads("") == [("big.bin", upload)]
    assert store.list_uploads("other/") == []
    parts = [store.upload_part("big.bin", upload, number, chunks[number - 1], PLAIN)
             for number in (3, 1, 2)]  # parallel uploads finish in any order
    assert store.head("big.bin") is None  # nothing under the final name until complete
    etag = store.complete_upload("big.bin", upload, sorted(parts, key=lambda p: p.number))
    data = b"".join(chunks)
    info = store.head("big.bin")
    assert info is not None and info.size == len(data) and info.etag == etag
    assert store.get_range("big.bin", PART - 10, PART + 10, etag) == data[PART - 10:PART + 10]
    assert store.get_range("big.bin", 0, len(data), etag) == data
    assert store.list_uploads("") == []


def test_upload_part_copy_takes_a_pinned_range(store: ObjectStore) -> None:
    source = os.urandom(PART + 100)
    source_etag = store.put("src", source, PLAIN)
    upload = store.create_upload("joined", PLAIN)
    first = store.upload_part_copy("joined", upload, 1, "src", 0, PART, source_etag)
    second = store.upload_part("joined", upload, 2, b"tail", PLAIN)
    etag = store.complete_upload("joined", upload, [first, second])
    assert store.get_range("joined", 0, PART + 4, etag) == source[:PART] + b"tail"
    store.put("src", b"changed", PLAIN)
    again = store.create_upload("again", PLAIN)
    with pytest.raises(PreconditionFailed):
        store.upload_part_copy("again", again, 1, "src", 0, 5, source_etag)
    store.abort_upload("again", again)


def test_abort_leaves_nothing(store: ObjectStore) -> None:
    upload = store.create_upload("k", PLAIN)
    store.upload_part("k", upload, 1, os.urandom(1000), PLAIN)
    store.abort_upload("k", upload)
    assert store.list_uploads("") == []
    assert store.head("k") is None
    assert list(store.list_page("", None).objects) == []
