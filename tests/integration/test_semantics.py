"""Opt-in semantics through real mounts on SeaweedFS, each checked in the bucket (boto3):
--allow-rename (files, directories, the limit, a store failure midway), --incremental-upload
(append), --ignore-chmod (chmod, chown, cp -p, shutil.copy2), and without each flag the
behaviour of today."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess

import pytest

from tests.faults import FaultProxy
from tests.helpers import mount_bucket

pytestmark = pytest.mark.fuse

MiB = 1024 * 1024


def objects(s3, bucket: str) -> dict[str, str]:
    """Every key in the bucket -> sha256 of its bytes."""
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", ()):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            found[item["Key"]] = hashlib.sha256(body).hexdigest()
    return found


def put(s3, bucket: str, key: str, data: bytes) -> str:
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    return hashlib.sha256(data).hexdigest()


def no_pending_uploads(s3, bucket: str) -> bool:
    return not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


# ---------------------------------------------------------------------------- rename

def test_file_rename_moves_exactly_that_object(s3, bucket, mount):
    big = os.urandom(20 * MiB + 7)
    digest = put(s3, bucket, "in/big.bin", big)
    other = put(s3, bucket, "in/other.txt", b"stays")
    mnt = mount(bucket, "--allow-rename")
    with open(mnt / "in/big.bin", "rb") as reader:  # an open file keeps working
        head = reader.read(MiB)
        os.rename(mnt / "in/big.bin", mnt / "moved.bin")
        rest = reader.read()
    assert head + rest == big
    assert objects(s3, bucket) == {"moved.bin": digest, "in/other.txt": other}
    assert (mnt / "moved.bin").stat().st_size == len(big)
    assert not (mnt / "in/big.bin").exists()
    assert sorted(os.listdir(mnt / "in")) == ["other.txt"]


def test_rename_onto_a_file_only_with_allow_overwrite(s3, bucket, mount):
    new, old = put(s3, bucket, "a", b"new"), put(s3, bucket, "b", b"old")
    plain = mount(bucket, "--allow-rename")
    with pytest.raises(PermissionError):
        os.rename(plain / "a", plain / "b")
    assert objects(s3, bucket) == {"a": new, "b": old}
    overwriting = mount(bucket, "--allow-rename", "--allow-overwrite")
    os.rename(overwriting / "a", overwriting / "b")
    assert objects(s3, bucket) == {"b": new}


def test_directory_rename_moves_every_object_beneath(s3, bucket, mount):
    tree = {"src/one": b"1" * 100, "src/sub/two": os.urandom(6 * MiB),
            "src/sub/deep/three": b"3"}
    digests = {key: put(s3, bucket, key, data) for key, data in tree.items()}
    outside = put(s3, bucket, "srcfile", b"not beneath src/")
    mnt = mount(bucket, "--allow-rename")
    subprocess.run(["mv", str(mnt / "src"), str(mnt / "dst")], check=True)
    expected = {key.replace("src/", "dst/", 1): digest for key, digest in digests.items()}
    assert objects(s3, bucket) == {**expected, "srcfile": outside}
    assert (mnt / "dst/sub/deep/three").read_bytes() == b"3"
    # SeaweedFS keeps emptied filer directories as common prefixes (AWS S3 does not), so
    # "src" may still list as an empty tree; it holds no file.
    assert not [path for path in (mnt / "src").rglob("*") if path.is_file()]


def test_directory_rename_over_the_limit_moves_nothing(s3, bucket, mount):
    digests = {key: put(s3, bucket, key, key.encode()) for key in
               ("src/a", "src/b/c", "src/b/d")}
    mnt = mount(bucket, "--allow-rename", "--rename-dir-limit=2")
    with pytest.raises(OSError) as caught:
        os.rename(mnt / "src", mnt / "dst")
    assert caught.value.errno == errno.E2BIG
    assert objects(s3, bucket) == digests
    assert "rename-dir-limit" in mnt.log()


def test_without_allow_rename_rename_fails_as_today(s3, bucket, mount):
    digest = put(s3, bucket, "f", b"x")
    put(s3, bucket, "d/g", b"y")
    mnt = mount(bucket)
    for source, dest in (("f", "f2"), ("d", "d2")):
        with pytest.raises(OSError) as caught:
            os.rename(mnt / source, mnt / dest)
        assert caught.value.errno == errno.ENOTSUP
    assert objects(s3, bucket) == {"f": digest, "d/g": hashlib.sha256(b"y").hexdigest()}


def test_store_failure_midway_loses_nothing(seaweed, s3, bucket, tmp_path):
    tree = {f"src/{name}": os.urandom(1000 + n) for n, name in
            enumerate(("a", "b/c", "b/d", "e"))}
    digests = {key: put(s3, bucket, key, data) for key, data in tree.items()}
    with FaultProxy(seaweed.port) as proxy:
        target = tmp_path / "mnt"
        target.mkdir()
        mnt = mount_bucket(_Via(seaweed, proxy.endpoint), bucket, target, "--allow-rename",
                           log_file=tmp_path / "m.log")
        try:
            # The copy of the third object (src/b/d -> dst/b/d) is refused every time.
            proxy.reject_matching(rf"^PUT /{bucket}/dst/b/d[ ?]")
            with pytest.raises(OSError) as caught:
                os.rename(mnt / "src", mnt / "dst")
            assert caught.value.errno == errno.EIO
            assert proxy.rejected >= 1
        finally:
            mnt.close()
    found = objects(s3, bucket)
    for key, digest in digests.items():
        places = [k for k in (key, key.replace("src/", "dst/", 1)) if k in found]
        assert len(places) == 1, (key, places)
        assert found[places[0]] == digest
    assert set(found) == {"dst/a", "dst/b/c", "src/b/d", "src/e"}
    assert "every object is under exactly one name" in mnt.log()


class _Via:
    """The SeaweedFS server reached through another endpoint (a proxy)."""

    def __init__(self, server, endpoint: str) -> None:
        self._server = server
        self.endpoint = endpoint

    def credential_env(self) -> dict[str, str]:
        return self._server.credential_env()


# ---------------------------------------------------------------------------- append

@pytest.mark.parametrize("size", [20 * MiB, 1024])
def test_append_gives_old_then_new_bytes(s3, bucket, mount, size):
    old, new = os.urandom(size), os.urandom(3 * MiB + 5)
    put(s3, bucket, "log.bin", old)
    mnt = mount(bucket, "--incremental-upload")
    with open(mnt / "log.bin", "ab") as out:
        out.write(new)
        out.flush()
        # Not visible before close: the object changes atomically.
        assert s3.head_object(Bucket=bucket, Key="log.bin")["ContentLength"] == size
    body = s3.get_object(Bucket=bucket, Key="log.bin")["Body"].read()
    assert body == old + new
    assert (mnt / "log.bin").stat().st_size == size + len(new)
    assert no_pending_uploads(s3, bucket)


def test_shell_append_and_without_the_flag_append_fails(s3, bucket, mount):
    put(s3, bucket, "notes.txt", b"line 1\n")
    plain = mount(bucket, "--allow-overwrite")
    with pytest.raises(PermissionError):
        open(plain / "notes.txt", "ab").close()
    appending = mount(bucket, "--incremental-upload")
    subprocess.run(["sh", "-c", f"echo 'line 2' >> '{appending / 'notes.txt'}'"], check=True)
    assert s3.get_object(Bucket=bucket, Key="notes.txt")["Body"].read() == b"line 1\nline 2\n"


# ---------------------------------------------------------------------------- chmod

def test_ignore_chmod_lets_tools_preserve_attributes(s3, bucket, mount, tmp_path):
    source = tmp_path / "src.txt"
    source.write_bytes(b"payload")
    os.chmod(source, 0o600)
    put(s3, bucket, "existing", b"e")
    mnt = mount(bucket, "--ignore-chmod")
    os.chmod(mnt / "existing", 0o700)
    os.chown(mnt / "existing", 1234, 1234)
    os.utime(mnt / "existing", (1_000_000_000, 1_000_000_000))
    stat = (mnt / "existing").stat()
    assert stat.st_mode & 0o777 == 0o644 and stat.st_uid == os.getuid()  # nothing changed
    subprocess.run(["cp", "-p", str(source), str(mnt / "cp-p.txt")], check=True)
    shutil.copy2(source, mnt / "copy2.txt")
    found = objects(s3, bucket)
    digest = hashlib.sha256(b"payload").hexdigest()
    assert found["cp-p.txt"] == digest and found["copy2.txt"] == digest


def test_without_ignore_chmod_they_fail_as_today(s3, bucket, mount, tmp_path):
    source = tmp_path / "src.txt"
    source.write_bytes(b"payload")
    put(s3, bucket, "existing", b"e")
    mnt = mount(bucket)
    with pytest.raises(PermissionError):
        os.chmod(mnt / "existing", 0o700)
    with pytest.raises(PermissionError):
        os.chown(mnt / "existing", 1234, 1234)
    result = subprocess.run(["cp", "-p", str(source), str(mnt / "cp-p.txt")],
                            capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "preserv" in result.stderr
    with pytest.raises(PermissionError):
        shutil.copy2(source, mnt / "copy2.txt")


@pytest.mark.parametrize("flags", [["--inplace"], []])
def test_rsync_archive_mode_with_ignore_chmod(s3, bucket, mount, tmp_path, flags):
    """rsync -a writes a temporary file and renames it into place (--inplace: no rename)."""
    assert shutil.which("rsync"), "rsync is installed by `make install` (Debian package)"
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"a")
    (tree / "sub/b.txt").write_bytes(b"b")
    mnt = mount(bucket, "--ignore-chmod", *([] if flags else ["--allow-rename"]))
    subprocess.run(["rsync", "-a", *flags, f"{tree}/", f"{mnt.path}/"], check=True)
    assert objects(s3, bucket) == {"a.txt": hashlib.sha256(b"a").hexdigest(),
                                   "sub/b.txt": hashlib.sha256(b"b").hexdigest()}


def test_copy_above_the_single_request_limit_goes_part_by_part(seaweed, s3, bucket,
                                                               monkeypatch):
    """S3's CopyObject stops at 5 GiB; above it the store copies with UploadPartCopy. The
    limits are lowered here so that a 12 MiB object takes that path on SeaweedFS."""
    import boto3

    from driver.store import s3 as s3_store
    from driver.store.base import ObjectInfo, UploadOptions

    monkeypatch.setattr(s3_store, "MAX_COPY", 5 * MiB)
    monkeypatch.setattr(s3_store, "COPY_PART", 5 * MiB)
    data = os.urandom(12 * MiB + 1)
    put(s3, bucket, "big", data)
    etag = s3.head_object(Bucket=bucket, Key="big")["ETag"]
    session = boto3.Session(aws_access_key_id=seaweed.access_key,
                            aws_secret_access_key=seaweed.secret_key)
    store = s3_store.S3Store(bucket, session, endpoint_url=seaweed.endpoint,
                             region="us-east-1", path_style=True)
    new_etag = store.copy(ObjectInfo("big", len(data), etag), "copied", UploadOptions())
    assert new_etag.endswith('-3"')  # a multipart ETag: three copied parts
    assert s3.get_object(Bucket=bucket, Key="copied")["Body"].read() == data
    assert no_pending_uploads(s3, bucket)
    # Pinned to the ETag: a changed source is not copied, and no upload is left behind.
    put(s3, bucket, "big", b"changed")
    from driver.store.base import PreconditionFailed

    with pytest.raises(PreconditionFailed):
        store.copy(ObjectInfo("big", len(data), etag), "again", UploadOptions())
    assert no_pending_uploads(s3, bucket)
    assert "again" not in objects(s3, bucket)
    with pytest.raises(PreconditionFailed):  # CopyObject is pinned alike
        store.copy(ObjectInfo("big", 7, etag), "again", UploadOptions())
    assert "again" not in objects(s3, bucket)
