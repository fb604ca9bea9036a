"""The block cache under the supervisor, whose FUSE servers run as their own UIDs.

Servers of one cache directory (one volume, one credentials identity) share a UID and so
its blocks; a server of another directory runs as another UID and cannot enter it; a
directory no server uses is locked (root, 0700) so a UID handed out later cannot read it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from driver.credentials.source import Credentials
from driver.devservers import SeaweedS3, wait_until
from driver.fs.cache import LAYOUT
from driver.mounts.protocol import MountRequest
from driver.mounts.supervisor import Supervisor, SupervisorClient
from driver.options import MountOptions

pytestmark = [pytest.mark.fuse, pytest.mark.root]
MiB = 1024 * 1024


def _can_list(path: Path, uid: int) -> bool:
    probe = (f"import os, sys; os.setgid({uid}); os.setuid({uid})\n"
             "try: os.listdir(sys.argv[1]); print('yes')\n"
             "except PermissionError: print('no')\n")
    result = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True,
                            text=True, check=True)
    return result.stdout.strip() == "yes"


def test_servers_of_one_cache_dir_share_a_uid_and_others_are_kept_out(
        seaweed: SeaweedS3, s3, bucket: str, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    s3.put_object(Bucket=bucket, Key="m.bin", Body=data)
    state = Path(tempfile.mkdtemp(prefix="sup-", dir="/tmp"))
    supervisor = Supervisor(state)
    client = SupervisorClient.in_process(supervisor)
    # Like the chart's hostPath: traversable by the servers' UIDs (pytest's tmp_path is not).
    root = Path(tempfile.mkdtemp(prefix="cache-root-", dir="/tmp"))
    os.chmod(root, 0o711)
    shared, other = root / ("a" * 64), root / ("b" * 64)
    credentials = Credentials(kind="static", access_key_id=seaweed.access_key,
                              secret_access_key=seaweed.secret_key)
    targets = []

    def mount(name: str, cache: Path, volume_id: str):
        target = tmp_path / name
        target.mkdir()
        targets.append(target)
        return client.mount(MountRequest(
            volume_id=volume_id, target=str(target), bucket=bucket, credentials=credentials,
            options=MountOptions(endpoint_url=seaweed.endpoint, cache=str(cache),
                                 direct_io=True)))

    try:
        first = mount("one", shared, "vol-1")
        second = mount("two", shared, "vol-1")
        third = mount("three", other, "vol-2")
        assert first.uid == second.uid != third.uid
        assert (tmp_path / "one" / "m.bin").read_bytes() == data
        blocks = shared / LAYOUT / "blocks"
        wait_until(lambda: sum(len(files) for _, _, files in os.walk(blocks)) == 3, 30,
                   "3 blocks in the shared cache")
        for directory, _, files in os.walk(shared):
            assert os.stat(directory).st_uid == first.uid
            for name in files:
                info = os.stat(os.path.join(directory, name))
                assert info.st_uid == first.uid and info.st_mode & 0o077 == 0
        assert (tmp_path / "two" / "m.bin").read_bytes() == data
        assert _can_list(shared, first.uid)
        assert not _can_list(shared, third.uid)  # another identity's server
        client.unmount(str(tmp_path / "one"))
        assert os.stat(shared).st_uid == first.uid  # still used by the second server
        client.unmount(str(tmp_path / "two"))
        assert os.stat(shared).st_uid == 0 and not _can_list(shared, first.uid)
        # A later server of that directory gets it back, blocks and all.
        again = mount("four", shared, "vol-1")
        assert (tmp_path / "four" / "m.bin").read_bytes() == data
        assert os.stat(shared).st_uid == again.uid == os.stat(next(
            p for p in blocks.rglob("*") if p.is_file())).st_uid
    finally:
        for target in targets:
            client.unmount(str(target), terminate=True)
        supervisor.close()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
