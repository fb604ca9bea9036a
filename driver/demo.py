"""`cloudbucket-csi demo`: the whole product on one machine, in a few seconds.

Starts SeaweedFS on loopback, seeds a bucket, mounts it with `cloudbucket-csi mount` (the
real CLI, as a user would), lists, reads and writes through the mount, unmounts, cleans
up and exits 0.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from driver.devservers import SeaweedS3
from driver.mounts import mountinfo


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo() -> int:
    with SeaweedS3() as server, tempfile.TemporaryDirectory(prefix="cloudbucket-demo-") as tmp:
        s3 = server.client()
        bucket = "demo-bucket"
        s3.create_bucket(Bucket=bucket)
        payload = os.urandom(5 * 1024 * 1024)
        s3.put_object(Bucket=bucket, Key="data/hello.txt", Body=b"hello from the bucket\n")
        s3.put_object(Bucket=bucket, Key="data/blob.bin", Body=payload)
        s3.put_object(Bucket=bucket, Key="data/nested/deep.txt", Body=b"deep\n")
        _say(f"SeaweedFS S3 at {server.endpoint}, bucket {bucket} seeded with 3 objects")

        target = Path(tmp) / "mnt"
        target.mkdir()
        command = [sys.executable, "-m", "driver", "mount", bucket, str(target),
                   f"--endpoint-url={server.endpoint}", "--allow-delete"]
        _say("$ cloudbucket-csi mount " + " ".join(command[4:]))
        result = subprocess.run(command, env={**os.environ, **server.credential_env()},
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            _say(result.stderr.strip())
            return 1
        try:
            entry = mountinfo.find(str(target))
            _say(f"mounted: {entry.source} type {entry.fstype}" if entry else "mounted")
            _say(f"$ ls -l {target}/data")
            for item in sorted((target / "data").iterdir()):
                info = item.stat()
                kind = "d" if item.is_dir() else "-"
                _say(f"  {kind} {info.st_size:>9}  {item.name}")
            _say(f"$ cat {target}/data/hello.txt")
            _say("  " + (target / "data" / "hello.txt").read_text().rstrip())
            digest = hashlib.sha256((target / "data" / "blob.bin").read_bytes()).hexdigest()
            same = digest == hashlib.sha256(payload).hexdigest()
            _say(f"read data/blob.bin (5 MiB) through the mount: sha256 matches: {same}")
            (target / "data" / "written.txt").write_text("written through FUSE\n")
            stored = s3.get_object(Bucket=bucket, Key="data/written.txt")["Body"].read()
            _say(f"wrote data/written.txt; the bucket now holds: {stored.decode().rstrip()!r}")
            os.unlink(target / "data" / "written.txt")
            _say("deleted it again (--allow-delete)")
            if not same:
                return 1
        finally:
            mountinfo.unmount(str(target))
            _say("unmounted")
    _say("demo finished: SeaweedFS stopped, temporary files removed")
    return 0
