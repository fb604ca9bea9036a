"""S3Store's retry and reconcile rules, one test per rule, over a countdown-failure client.

Each test fails the k-th call of one S3 operation, before or after it took effect (a lost
reply), and checks what is left in the bucket: the right object or none, and no upload.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from driver.store.base import (
    NotFound,
    PartResult,
    PreconditionFailed,
    StoreError,
    UploadOptions,
)
from driver.store.retry import Attempts, Retrier, Timeouts
from driver.store.s3 import S3Store, multipart_etag
from tests.failstore import FailurePlan, FakeObject, FakeS3Client, FakeSession

FAST = Timeouts(total=3.0, base_delay=0.001, max_delay=0.01)


def _store(plan: FailurePlan | None = None, **kwargs) -> tuple[S3Store, FakeS3Client]:
    client = FakeS3Client(plan, **kwargs)
    store = S3Store("b", FakeSession(client), endpoint_url="http://fake", region="us-east-1",
                    timeouts=FAST)
    return store, client


def _write_multipart(store: S3Store, key: str, parts: list[bytes]) -> str:
    began = time.time()
    try:
        upload_id = store.create_upload(key, UploadOptions())
        results = [store.upload_part(key, upload_id, number, data, UploadOptions())
                   for number, data in enumerate(parts, 1)]
        return store.complete_upload(key, upload_id, results)
    finally:
        store.reconcile_uploads(key, began)


PARTS = [b"a" * 100, b"b" * 50]


def test_lost_create_reply_leaves_no_second_upload():
    plan = FailurePlan().fail("CreateMultipartUpload", 1, after=True, error="reset")
    store, client = _store(plan)
    _write_multipart(store, "k", PARTS)
    assert len(client.calls("CreateMultipartUpload")) == 2  # the retry made a second one
    assert client.objects["k"].data == b"".join(PARTS)
    assert client.uploads == {}  # ...and the first was found and aborted


def test_create_that_fails_for_good_after_taking_effect_leaves_no_upload():
    plan = FailurePlan().fail_always("CreateMultipartUpload", after=True, error="500")
    store, client = _store(plan)
    with pytest.raises(StoreError):
        _write_multipart(store, "k", PARTS)
    assert len(client.calls("CreateMultipartUpload")) > 1
    assert client.uploads == {}
    assert "k" not in client.objects


def test_reconcile_costs_no_request_without_a_retry():
    store, client = _store()
    _write_multipart(store, "k", PARTS)
    assert client.calls("ListMultipartUploads") == []


def test_reconcile_leaves_other_keys_and_older_uploads_alone():
    store, client = _store(FailurePlan().fail("CreateMultipartUpload", 3, after=True,
                                              error="reset"))
    other = store.create_upload("other", UploadOptions())
    older = store.create_upload("k", UploadOptions())
    client.uploads[older] = (client.uploads[older][0],
                             client.uploads[older][1].replace(year=2000), {})
    _write_multipart(store, "k", PARTS)
    assert set(client.uploads) == {other, older}


def test_complete_whose_reply_was_lost_is_a_success_when_the_object_matches():
    plan = FailurePlan().fail("CompleteMultipartUpload", 1, after=True, error="reset")
    store, client = _store(plan)
    etag = _write_multipart(store, "k", PARTS)
    calls = client.calls("CompleteMultipartUpload")
    assert len(calls) == 2  # the retry answered NoSuchUpload
    assert etag == client.objects["k"].etag
    assert client.objects["k"].data == b"".join(PARTS)


def test_complete_is_recognised_by_size_and_part_count_without_md5_etags():
    plan = FailurePlan().fail("CompleteMultipartUpload", 1, after=True, error="500")
    store, client = _store(plan, part_etags="opaque")
    etag = _write_multipart(store, "k", PARTS)
    assert etag == client.objects["k"].etag
    assert any(call["PartNumber"] == 1 for call in client.calls("HeadObject"))


def test_no_such_upload_is_an_error_when_the_object_is_not_ours():
    store, client = _store()
    upload_id = store.create_upload("k", UploadOptions())
    parts = [store.upload_part("k", upload_id, 1, b"mine", UploadOptions())]
    store.abort_upload("k", upload_id)  # e.g. a lifecycle rule aborted it
    client.objects["k"] = client.objects.get("k") or FakeObject(b"theirs", '"x"')
    with pytest.raises(NotFound):
        store.complete_upload("k", upload_id, parts)


def test_complete_failing_before_effect_leaves_no_object():
    plan = FailurePlan().fail_always("CompleteMultipartUpload", error="500")
    store, client = _store(plan)
    with pytest.raises(StoreError):
        _write_multipart(store, "k", PARTS)
    assert "k" not in client.objects


def test_delete_retried_after_a_lost_reply_is_done():
    plan = FailurePlan().fail("DeleteObject", 1, after=True, error="reset")
    store, client = _store(plan)
    client.objects["k"] = FakeObject(b"x", '"e"')
    store.delete("k")  # the retry finds nothing: 404 means done
    assert "k" not in client.objects
    assert len(client.calls("DeleteObject")) == 2


def test_abort_retried_after_a_lost_reply_is_done():
    plan = FailurePlan().fail("AbortMultipartUpload", 1, after=True, error="reset")
    store, client = _store(plan)
    upload_id = store.create_upload("k", UploadOptions())
    store.abort_upload("k", upload_id)
    assert client.uploads == {}


def test_part_and_part_copy_retried_after_lost_replies_replace_the_same_part():
    plan = (FailurePlan().fail("UploadPart", 1, after=True, error="reset")
            .fail("UploadPartCopy", 1, after=True, error="500"))
    store, client = _store(plan)
    store.put("src", b"s" * 64, UploadOptions())
    source_etag = client.objects["src"].etag
    upload_id = store.create_upload("k", UploadOptions())
    copied = store.upload_part_copy("k", upload_id, 1, "src", 0, 64, source_etag)
    sent = store.upload_part("k", upload_id, 2, b"tail", UploadOptions())
    store.complete_upload("k", upload_id, [copied, sent])
    assert client.objects["k"].data == b"s" * 64 + b"tail"
    assert len(client.calls("UploadPart")) == 2 and len(client.calls("UploadPartCopy")) == 2


def test_throttling_is_retried():
    plan = FailurePlan().fail("PutObject", range(1, 4), error="SlowDown")
    store, client = _store(plan)
    store.put("k", b"data", UploadOptions())
    assert client.objects["k"].data == b"data"
    assert len(client.calls("PutObject")) == 4


def test_ranged_get_cut_mid_body_resumes_from_first_missing_byte_pinned():
    plan = FailurePlan().fail("GetObject", {1, 2}, error="cut")
    store, client = _store(plan)
    data = bytes(range(256)) * 4096  # 1 MiB
    store.put("k", data, UploadOptions())
    etag = client.objects["k"].etag
    assert store.get_range("k", 1000, 901_000, etag) == data[1000:901_000]
    ranges = [call["Range"] for call in client.calls("GetObject")]
    assert ranges == ["bytes=1000-900999", "bytes=451000-900999", "bytes=676000-900999"]
    assert {call["IfMatch"] for call in client.calls("GetObject")} == {etag}


def test_resumed_get_pins_the_first_answers_etag_and_never_mixes_versions():
    plan = FailurePlan().fail("GetObject", 1, error="cut")
    store, client = _store(plan)
    store.put("k", b"1" * 4096, UploadOptions())
    real_get = client.get_object

    def replace_then_get(**kwargs):
        response = real_get(**kwargs)
        client.objects["k"] = FakeObject(
            b"2" * 4096, '"v2"')
        return response

    client.get_object = replace_then_get  # type: ignore[method-assign]
    with pytest.raises(PreconditionFailed):
        store.get_range("k", 0, 4096, None)  # unpinned: pinned to the first answer
    first_etag = '"' + hashlib.md5(b"1" * 4096).hexdigest() + '"'  # noqa: S324
    assert client.calls("GetObject")[1]["IfMatch"] == first_etag


def test_get_fails_after_the_retry_budget():
    plan = FailurePlan().fail_always("GetObject", error="cut")
    store, client = _store(plan)
    store.put("k", b"x" * 1000, UploadOptions())
    with pytest.raises(StoreError):
        store.get_range("k", 0, 1000, None)
    assert len(client.calls("GetObject")) > 2


def test_retrier_gives_up_within_the_deadline():
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    def stalled() -> None:
        now[0] += Timeouts(total=60).read  # each attempt times out after `read`
        raise TimeoutError("stalled")

    retrier = Retrier(Timeouts(total=60, max_attempts=100), lambda exc: True, sleep=sleep,
                      clock=lambda: now[0])
    attempts = Attempts()
    with pytest.raises(TimeoutError):
        retrier.call(stalled, attempts)
    assert attempts.count >= 2
    assert now[0] <= 60


def test_retrier_stops_after_its_attempts():
    retrier = Retrier(Timeouts(total=60, base_delay=0), lambda exc: True, sleep=lambda s: None)
    attempts = Attempts()
    with pytest.raises(ConnectionError):
        retrier.call(lambda: (_ for _ in ()).throw(ConnectionError("down")), attempts)
    assert attempts.count == 5


def test_not_retryable_errors_are_not_retried():
    store, client = _store()
    with pytest.raises(NotFound):
        store.get_range("missing", 0, 10, None)
    assert len(client.calls("GetObject")) == 1


def test_multipart_etag_formula():
    digest = hashlib.md5(b"x").digest()  # noqa: S324
    part = PartResult(1, '"' + digest.hex() + '"')
    assert multipart_etag([part]) == '"' + hashlib.md5(digest).hexdigest() + '-1"'  # noqa: S324
    assert multipart_etag([PartResult(1, '"kms-opaque"')]) is None


# ---------------------------------------------------------------------------------------
# GcsStore's compose rule (fake-gcs-server ignores ifGenerationMatch on compose, so the
# lost-reply path is proven here, with the client's objects stubbed)


class _Blob:
    def __init__(self, generation: int | None, size: int, components: int | None) -> None:
        self.generation, self.size, self.component_count = generation, size, components
        self.name, self.updated = "k", None


def _gcs_store(current: _Blob | None):
    from google.auth.credentials import AnonymousCredentials

    from driver.store.gcs import GcsStore

    store = GcsStore("b", AnonymousCredentials(), "p", endpoint_url="http://127.0.0.1:9",
                     timeouts=FAST)
    store._bucket.get_blob = lambda key, **kwargs: current  # type: ignore[method-assign]
    return store


class _Final:
    """The compose target: its compose takes effect, then the reply is lost; the retry
    fails its ifGenerationMatch precondition, as GCS answers."""

    def __init__(self, landed: _Blob, holder: list[_Blob | None]) -> None:
        self.calls: list[dict] = []
        self._landed, self._holder = landed, holder
        self.generation = None

    def compose(self, sources, **kwargs):
        import google.api_core.exceptions as gexc
        import requests

        self.calls.append(kwargs)
        if len(self.calls) == 1:
            self._holder[0] = self._landed
            raise requests.ConnectionError("reply lost")
        raise gexc.PreconditionFailed("generation does not match")


@pytest.mark.parametrize(("landed", "ok"), [
    (_Blob(7, 150, 2), True),  # a newer object of the parts' size and count: ours
    (_Blob(7, 149, 2), False),  # wrong size: someone else's
    (_Blob(7, 150, 3), False),  # wrong component count
])
def test_gcs_compose_after_a_lost_reply_is_a_success_only_when_the_object_is_ours(landed, ok):
    holder: list[_Blob | None] = [_Blob(5, 10, None)]  # the key's object before the write
    store = _gcs_store(None)
    store._bucket.get_blob = lambda key, **kwargs: holder[0]  # type: ignore[method-assign]
    final = _Final(landed, holder)
    parts = [PartResult(1, "11", size=100), PartResult(2, "12", size=50)]
    if ok:
        assert store._compose_final("k", final, [], parts) == "7"
    else:
        with pytest.raises(StoreError):
            store._compose_final("k", final, [], parts)
    assert [call["if_generation_match"] for call in final.calls] == [5, 5]
