"""S3Store.list_page on a real SeaweedFS: the fast ListObjectsV2 parser returns exactly what
boto3's own paginator sees, for empty, one-page, page-boundary and many-page listings, for
keys that need XML escaping or url encoding, and errors stay typed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import boto3
import pytest

from driver.store import s3 as s3_module
from driver.store.base import AccessDenied, BucketNotFound, ListPage
from driver.store.s3 import S3Store

ODD_KEYS = [
    "odd/a&b.txt", "odd/less<than>.txt", "odd/quote\"'.txt", "odd/caf\u00e9 \u65e5\u672c.txt",
    "odd/plus+sign.txt", "odd/percent%41.txt", "odd/space here.txt", "odd/tab\there.txt",
    "odd/emoji-\U0001f600.txt", "odd/dir&<x>/inner.txt", "odd/dir+ /inner.txt",
]


def _store(seaweed, bucket: str, **kwargs) -> S3Store:
    session = boto3.Session(aws_access_key_id=seaweed.access_key,
                            aws_secret_access_key=seaweed.secret_key)
    return S3Store(bucket, session, endpoint_url=seaweed.endpoint, region="us-east-1",
                   path_style=True, **kwargs)


def _put(s3, bucket: str, keys: list[str]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=key.encode()),
                      keys))


def _all(store: S3Store, prefix: str, delimiter: str | None = "/",
         max_keys: int = 1000) -> tuple[list, list[str], int]:
    objects, prefixes, pages, token = [], [], 0, None
    while True:
        page = store.list_page(prefix, delimiter, token, max_keys)
        assert isinstance(page, ListPage)
        pages += 1
        objects += page.objects
        prefixes += page.prefixes
        token = page.next_token
        if token is None:
            return objects, prefixes, pages


def _boto3(s3, bucket: str, prefix: str, delimiter: str | None = "/") -> tuple[list, list]:
    kwargs = {"Delimiter": delimiter} if delimiter else {}
    objects, prefixes = [], []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix,
                                                             **kwargs):
        objects += [(o["Key"], o["Size"], o["ETag"], o["LastModified"])
                    for o in page.get("Contents", ())]
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", ())]
    return objects, prefixes


@pytest.fixture
def parsed_fast(monkeypatch):
    """Counts pages the fast parser handled, so no test passes through the fallback."""
    calls = []
    original = s3_module._parse_list

    def counting(body: bytes):
        page = original(body)
        calls.append(page is not None)
        return page

    monkeypatch.setattr(s3_module, "_parse_list", counting)
    return calls


@pytest.mark.parametrize("count", [0, 1, 1000, 1001])
def test_listing_matches_boto3(seaweed, s3, bucket, parsed_fast, count):
    keys = [f"d/f-{i:05d}" for i in range(count)]
    _put(s3, bucket, keys + ["d/sub/x", "d/sub2/y", "other"])
    store = _store(seaweed, bucket)
    objects, prefixes, pages = _all(store, "d/")
    assert [o.key for o in objects] == keys
    assert prefixes == ["d/sub/", "d/sub2/"]
    assert pages == (2 if count > 1000 - 2 else 1)  # common prefixes count toward MaxKeys
    expected, expected_prefixes = _boto3(s3, bucket, "d/")
    assert [(o.key, o.size, o.etag, o.last_modified) for o in objects] == expected
    assert prefixes == expected_prefixes
    assert all(isinstance(o.last_modified, datetime) and o.last_modified.tzinfo
               for o in objects)
    assert parsed_fast and all(parsed_fast)


def test_ten_thousand_keys_in_pages_with_common_prefixes(seaweed, s3, bucket, parsed_fast):
    keys = [f"big/f-{i:05d}" for i in range(10_000)]
    subdirs = [f"big/sub-{i}/x" for i in range(30)]
    _put(s3, bucket, keys + subdirs)
    store = _store(seaweed, bucket)
    objects, prefixes, pages = _all(store, "big/")
    assert [o.key for o in objects] == keys
    assert prefixes == sorted(f"big/sub-{i}/" for i in range(30))
    assert pages == 11
    assert all(o.size == len(o.key) for o in objects)
    # Without a delimiter every key is listed, in small pages too.
    flat, none, flat_pages = _all(store, "big/", delimiter=None, max_keys=3000)
    assert [o.key for o in flat] == sorted(keys + subdirs) and none == []
    assert flat_pages == 4
    assert all(parsed_fast)


def test_keys_needing_xml_escaping_or_url_encoding(seaweed, s3, bucket, parsed_fast):
    _put(s3, bucket, ODD_KEYS)
    store = _store(seaweed, bucket)
    objects, prefixes, _ = _all(store, "odd/")
    files = sorted(k for k in ODD_KEYS if k.count("/") == 1)
    assert [o.key for o in objects] == files
    assert prefixes == ["odd/dir&<x>/", "odd/dir+ /"]
    expected, expected_prefixes = _boto3(s3, bucket, "odd/")
    assert [(o.key, o.size, o.etag) for o in objects] == [e[:3] for e in expected]
    assert prefixes == expected_prefixes
    # A prefix that itself needs encoding.
    inner, _, _ = _all(store, "odd/dir&<x>/")
    assert [o.key for o in inner] == ["odd/dir&<x>/inner.txt"]
    inner, _, _ = _all(store, "odd/dir+ /")
    assert [o.key for o in inner] == ["odd/dir+ /inner.txt"]
    assert all(parsed_fast)


def test_missing_bucket_is_typed(seaweed):
    store = _store(seaweed, "no-such-bucket-cloudbucket")
    with pytest.raises(BucketNotFound):
        store.list_page("")


def test_refused_credentials_are_typed(seaweed, bucket):
    session = boto3.Session(aws_access_key_id=seaweed.access_key,
                            aws_secret_access_key="wrong-secret")
    store = S3Store(bucket, session, endpoint_url=seaweed.endpoint, region="us-east-1",
                    path_style=True)
    with pytest.raises(AccessDenied):
        store.list_page("")


def test_requester_pays_header_is_still_sent(seaweed, s3, bucket):
    _put(s3, bucket, ["rp/a"])
    store = _store(seaweed, bucket, requester_pays=True)
    seen = []
    store._client.meta.events.register(
        "before-send.s3.ListObjectsV2",
        lambda request, **_: seen.append(request.headers.get("x-amz-request-payer")))
    objects, _, _ = _all(store, "rp/")
    assert [o.key for o in objects] == ["rp/a"]
    assert seen == [b"requester"] or seen == ["requester"]
