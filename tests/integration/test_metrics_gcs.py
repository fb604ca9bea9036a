"""Store metrics of the native GCS backend (requests session hook) against fake-gcs-server."""
# ruff: noqa: F811 - pytest fixtures imported from tests/*_fixtures.py are parameters here

from __future__ import annotations

import os

from driver.devservers import LOOPBACK, free_port, wait_until
from tests.gcs_fixtures import fake_gcs, gcs, gcs_bucket, gcs_mount  # noqa: F401
from tests.integration.test_metrics import by_label, scrape, value

MiB = 1024 * 1024
CHUNK = 128 * 1024


def test_gcs_requests_counted_by_json_api_method(gcs, gcs_bucket, gcs_mount) -> None:
    data = os.urandom(3 * MiB)
    gcs.bucket(gcs_bucket).blob("obj.bin").upload_from_string(data)
    address = f"{LOOPBACK}:{free_port()}"
    mounted = gcs_mount(gcs_bucket, "--direct-io", f"--metrics-address={address}")
    fd = os.open(mounted / "obj.bin", os.O_RDONLY)
    try:
        for offset in range(0, len(data), CHUNK):
            assert os.read(fd, CHUNK) == data[offset:offset + CHUNK]
    finally:
        os.close(fd)
    written = os.urandom(MiB)
    (mounted / "new.bin").write_bytes(written)
    assert sorted(os.listdir(mounted.path)) == ["new.bin", "obj.bin"]
    page = scrape(address)

    assert value(page, "cloudbucket_fs_read_bytes_total") == len(data)
    counted = by_label(page, "cloudbucket_store_requests_total", "op")
    assert set(counted) <= {("objects.list",), ("objects.get",), ("objects.get_media",),
                            ("objects.insert",), ("buckets.get",)}
    assert counted[("objects.insert",)] == 1  # one object under a part: one upload
    assert counted[("objects.list",)] >= 2  # the mount's bucket check and the listing
    # Every byte read came from media downloads, and was counted once.
    assert value(page, "cloudbucket_store_received_bytes_total", op="objects.get_media") == \
        len(data)
    assert value(page, "cloudbucket_prefetch_bytes_total") == len(data)
    # The upload's body is the data plus its multipart metadata.
    sent = value(page, "cloudbucket_store_sent_bytes_total", op="objects.insert")
    assert len(written) < sent < len(written) + 4096
    statuses = by_label(page, "cloudbucket_store_requests_total", "op", "status")
    # new.bin did not exist: its metadata GETs answered 404; nothing else failed.
    assert {key for key in statuses if key[1] != "2xx"} <= {("objects.get", "4xx")}
    assert by_label(page, "cloudbucket_store_retries_total", "op") == {}
    assert by_label(page, "cloudbucket_store_request_seconds_count", "op") == counted


def test_gcs_first_read_in_a_directory_not_listed_yet_is_one_media_get(gcs, gcs_bucket,
                                                                      gcs_mount) -> None:
    """The lookup that lists "dir" guesses the file's first bytes (driver/fs/firstbytes.py):
    a stat alone starts a media GET; the read then takes its bytes, fetching nothing more."""
    data = os.urandom(4096)
    gcs.bucket(gcs_bucket).blob("dir/small.bin").upload_from_string(data)
    address = f"{LOOPBACK}:{free_port()}"
    mounted = gcs_mount(gcs_bucket, f"--metrics-address={address}")

    def root_listed() -> bool:  # the bucket check and the root's listing ahead
        counted = by_label(scrape(address), "cloudbucket_store_requests_total", "op")
        return counted.get(("objects.list",), 0) >= 2

    wait_until(root_listed, 10, "the root listed ahead")

    def media_gets() -> int:
        counted = by_label(scrape(address), "cloudbucket_store_requests_total", "op")
        return int(counted.get(("objects.get_media",), 0))

    assert os.stat(mounted / "dir" / "small.bin").st_size == len(data)  # a lookup, no read
    wait_until(lambda: media_gets() == 1, 10, "the lookup's guessed GET")
    assert (mounted / "dir" / "small.bin").read_bytes() == data
    page = scrape(address)
    counted = by_label(page, "cloudbucket_store_requests_total", "op")
    assert counted[("objects.get_media",)] == 1  # the guess, taken by the read
    assert ("objects.get",) not in counted
    assert value(page, "cloudbucket_store_received_bytes_total", op="objects.get_media") == \
        len(data)
