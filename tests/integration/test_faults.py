"""Real mounts through a fault-injecting proxy (tests/faults.py), on SeaweedFS and on
fake-gcs-server: targeted faults prove each reconcile rule and resumed read end to end;
seeded 10% faults on every request type prove the promises as a whole:
- a read returns the object's bytes or fails with EIO, never other bytes;
- a write either completes byte-exact or fails (at write, close or fsync) leaving no
  object, and no upload is pending once the mount is gone;
- a listing is complete or fails;
- a stalled request does not hold up `ls`, statfs or another file.
Objects are small and a mount's --request-timeout short, so the whole module runs in well
under two minutes on an idle machine.
"""

from __future__ import annotations

import errno
import os
import random
import threading
from collections.abc import Iterator

import pytest

from driver.devservers import wait_until
from tests.faults import FaultProxy
from tests.gcs_fixtures import fake_gcs, gcs, gcs_bucket, gcs_mount  # noqa: F401
from tests.helpers import MountProcess

MiB = 1024 * 1024
GCS_UPLOADS = "/.cloudbucket-uploads/"
# A short deadline keeps stalls cheap: each attempt is abandoned after about 2 s of silence.
FLAGS = ("--request-timeout=8", "--write-part-size=5MiB", "--read-part-size=5MiB",
         "--allow-delete", "--allow-overwrite")


@pytest.fixture
def s3_proxy(seaweed) -> Iterator[FaultProxy]:
    with FaultProxy(seaweed.port, flavor="s3") as proxy:
        yield proxy


@pytest.fixture
def gcs_proxy(fake_gcs) -> Iterator[FaultProxy]:  # noqa: F811
    port = int(fake_gcs.endpoint.rsplit(":", 1)[1])
    with FaultProxy(port, flavor="gcs") as proxy:
        yield proxy


def _s3_mount(mount, bucket: str, proxy: FaultProxy, *flags: str) -> MountProcess:
    return mount(bucket, f"--endpoint-url={proxy.endpoint}", *FLAGS, *flags)


def _gcs_mount(gcs_mount, bucket: str, proxy: FaultProxy, *flags: str) -> MountProcess:  # noqa: F811
    return gcs_mount(bucket, *FLAGS, *flags, env={"STORAGE_EMULATOR_HOST": proxy.endpoint})


def _s3_pending(s3, bucket: str) -> list[str]:
    return [item["Key"] for item in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", ())]


def _s3_keys(s3, bucket: str) -> dict[str, bytes]:
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", ())]
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def _gcs_pending(gcs, bucket: str) -> list[str]:  # noqa: F811
    return [blob.name for blob in gcs.list_blobs(bucket, prefix=GCS_UPLOADS)]


def _gcs_keys(gcs, bucket: str) -> dict[str, bytes]:  # noqa: F811
    return {blob.name: blob.download_as_bytes() for blob in gcs.list_blobs(bucket)
            if not blob.name.startswith(GCS_UPLOADS)}


# ---------------------------------------------------------------------------------------
# Targeted faults: one rule each, end to end


def test_s3_lost_create_and_complete_replies_leave_one_exact_object(s3, bucket, mount,
                                                                    s3_proxy):
    mnt = _s3_mount(mount, bucket, s3_proxy)
    s3_proxy.once(r"^POST /[^ ]*\?uploads", "reset-after")
    s3_proxy.once(r"^POST /[^ ]*\?uploadId=", "reset-after")
    data = random.Random(1).randbytes(11 * MiB + 7)
    (mnt / "big.bin").write_bytes(data)
    assert s3_proxy.counts()["reset-after"] == 2
    mnt.close()
    assert _s3_keys(s3, bucket) == {"big.bin": data}
    assert _s3_pending(s3, bucket) == []


def test_s3_lost_delete_reply_is_a_successful_unlink(s3, bucket, mount, s3_proxy):
    s3.put_object(Bucket=bucket, Key="gone.txt", Body=b"x")
    mnt = _s3_mount(mount, bucket, s3_proxy)
    s3_proxy.once(r"^DELETE /", "reset-after")
    (mnt / "gone.txt").unlink()
    assert s3_proxy.counts()["reset-after"] == 1
    assert _s3_keys(s3, bucket) == {}


@pytest.mark.parametrize("fault", ["cut", "reset-after", "503"])
def test_s3_direct_io_read_survives_a_broken_get(s3, bucket, mount, s3_proxy, fault):
    data = random.Random(2).randbytes(3 * MiB + 5)
    s3.put_object(Bucket=bucket, Key="f.bin", Body=data)
    mnt = _s3_mount(mount, bucket, s3_proxy, "--direct-io")
    s3_proxy.once(r"^GET /[^ ]*f\.bin", fault)
    assert (mnt / "f.bin").read_bytes() == data
    assert s3_proxy.counts()[fault] == 1


def test_s3_read_that_stalls_for_good_is_eio_within_the_deadline(s3, bucket, mount,
                                                                  s3_proxy):
    s3.put_object(Bucket=bucket, Key="stuck.bin", Body=b"s" * 1000)
    mnt = _s3_mount(mount, bucket, s3_proxy, "--direct-io", "--request-timeout=4")
    s3_proxy.stall_seconds = 60
    s3_proxy.match = lambda line: "stuck.bin" in line and line.startswith("GET ")
    s3_proxy.kinds = ("stall",)
    with open(mnt / "stuck.bin", "rb") as handle:  # open's HEAD is not a GET
        s3_proxy.set_rate(1.0)
        with pytest.raises(OSError) as caught:
            handle.read()
    assert caught.value.errno == errno.EIO
    assert s3_proxy.counts()["stall"] >= 2  # abandoned and retried before giving up


def test_s3_a_stalled_file_does_not_block_ls_statfs_or_other_files(s3, bucket, mount,
                                                                   s3_proxy):
    s3.put_object(Bucket=bucket, Key="slow.bin", Body=b"s" * 100_000)
    s3.put_object(Bucket=bucket, Key="dir/other.bin", Body=b"o" * 100_000)
    # A per-attempt read timeout of 10 s: the stall lasts while everything else is done.
    mnt = _s3_mount(mount, bucket, s3_proxy, "--direct-io", "--request-timeout=30")
    s3_proxy.stall_seconds = 120
    s3_proxy.match = lambda line: "slow.bin" in line and line.startswith("GET ")
    s3_proxy.kinds = ("stall",)
    s3_proxy.set_rate(1.0)
    result: dict[str, object] = {}

    def slow_read() -> None:
        try:
            result["data"] = (mnt / "slow.bin").read_bytes()
        except OSError as exc:
            result["error"] = exc

    reader = threading.Thread(target=slow_read, daemon=True)
    reader.start()
    wait_until(lambda: s3_proxy.counts()["stall"] >= 1, 30, "the read to stall")
    assert sorted(os.listdir(mnt.path)) == ["dir", "slow.bin"]
    assert (mnt / "dir" / "other.bin").read_bytes() == b"o" * 100_000
    assert os.statvfs(mnt.path).f_bsize > 0
    assert reader.is_alive() and s3_proxy.counts()["stall"] == 1  # still stalled meanwhile
    s3_proxy.set_rate(0.0)  # the next attempt goes through
    reader.join(90)
    assert result.get("data") == b"s" * 100_000


def test_gcs_lost_compose_reply_leaves_one_exact_object(gcs, gcs_bucket, gcs_mount,  # noqa: F811
                                                        gcs_proxy):
    mnt = _gcs_mount(gcs_mount, gcs_bucket, gcs_proxy)
    gcs_proxy.once(r"^POST /[^ ]*/compose", "reset-after")
    data = random.Random(3).randbytes(11 * MiB + 3)
    (mnt / "big.bin").write_bytes(data)
    assert gcs_proxy.counts()["reset-after"] == 1
    mnt.close()
    assert _gcs_keys(gcs, gcs_bucket) == {"big.bin": data}
    assert _gcs_pending(gcs, gcs_bucket) == []


@pytest.mark.parametrize("fault", ["cut", "reset-after"])
def test_gcs_direct_io_read_survives_a_broken_get(gcs, gcs_bucket, gcs_mount, gcs_proxy,  # noqa: F811
                                                  fault):
    data = random.Random(4).randbytes(3 * MiB + 1)
    gcs.bucket(gcs_bucket).blob("f.bin").upload_from_string(data)
    mnt = _gcs_mount(gcs_mount, gcs_bucket, gcs_proxy, "--direct-io")
    gcs_proxy.once(r"^GET /[^ ]*f\.bin[^ ]*alt=media", fault)
    assert (mnt / "f.bin").read_bytes() == data
    assert gcs_proxy.counts()[fault] == 1


# ---------------------------------------------------------------------------------------
# Seeded random faults on every request type


def _workload(mnt: MountProcess, seed: int) -> tuple[dict[str, bytes], dict[str, OSError],
                                                     list[str]]:
    """Write, list and read back through the mount; what succeeded and what failed."""
    rng = random.Random(seed)
    written: dict[str, bytes] = {}
    failed: dict[str, OSError] = {}
    problems: list[str] = []
    eio_reads: list[str] = []
    for index in range(6):
        name = f"f{index}.bin"
        data = rng.randbytes(rng.choice([1000, 300_000, 6 * MiB + 11]))
        try:
            with open(mnt / name, "wb") as out:
                for offset in range(0, len(data), 256 * 1024):
                    out.write(data[offset:offset + 256 * 1024])
            written[name] = data
        except OSError as exc:
            failed[name] = exc
    for _ in range(3):
        try:
            listed = set(os.listdir(mnt.path))
        except OSError as exc:
            problems.append(f"listing failed with {exc!r}")  # allowed, but not expected
            continue
        if not set(written) <= listed:
            problems.append(f"listing incomplete: {sorted(set(written) - listed)} missing")
    for name, data in written.items():
        try:
            with open(mnt / name, "rb") as handle:
                got = handle.read()
        except OSError as exc:
            if exc.errno != errno.EIO:
                problems.append(f"read of {name} failed with {exc!r}")
            eio_reads.append(name)
            continue
        if got != data:
            problems.append(f"read of {name} returned wrong bytes")
    if len(eio_reads) > 1:  # EIO is allowed, but the budget should absorb 10% faults
        problems.append(f"reads failed with EIO: {eio_reads}")
    return written, failed, problems


def _check(written, failed, problems, stored: dict[str, bytes], pending: list[str]) -> None:
    assert problems == []
    # The retry budget absorbs 10% faults: an operation fails only after several faults
    # in a row, so a failed write is rare (and a failed read is counted in `problems`).
    assert len(failed) <= 1, failed
    for name, data in written.items():
        assert stored.get(name) == data, f"{name}: acknowledged write not byte-exact"
    for name, error in failed.items():
        assert error.errno in (errno.EIO, errno.ENOENT), f"{name}: {error!r}"
        assert name not in stored, f"{name}: a failed write left an object"
    assert pending == []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_s3_ten_percent_faults(s3, bucket, mount, s3_proxy, seed):
    mnt = _s3_mount(mount, bucket, s3_proxy, "--direct-io")
    s3_proxy.reseed(seed)
    s3_proxy.stall_seconds = 30
    s3_proxy.set_rate(0.10)
    written, failed, problems = _workload(mnt, seed)
    mnt.close()
    s3_proxy.set_rate(0.0)
    assert sum(s3_proxy.counts().values()) > 0  # faults were injected
    assert "failed unexpectedly" not in mnt.log()  # every error was a typed one
    _check(written, failed, problems, _s3_keys(s3, bucket), _s3_pending(s3, bucket))


@pytest.mark.parametrize("seed", [1, 2])
def test_gcs_ten_percent_faults(gcs, gcs_bucket, gcs_mount, gcs_proxy, seed):  # noqa: F811
    mnt = _gcs_mount(gcs_mount, gcs_bucket, gcs_proxy, "--direct-io")
    gcs_proxy.reseed(seed)
    gcs_proxy.stall_seconds = 30
    gcs_proxy.set_rate(0.10)
    written, failed, problems = _workload(mnt, seed)
    mnt.close()
    gcs_proxy.set_rate(0.0)
    assert sum(gcs_proxy.counts().values()) > 0
    assert "failed unexpectedly" not in mnt.log()
    _check(written, failed, problems, _gcs_keys(gcs, gcs_bucket),
           _gcs_pending(gcs, gcs_bucket))

