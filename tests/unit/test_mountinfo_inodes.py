from __future__ import annotations

from driver.fs.inodes import ROOT_INODE, InodeTable
from driver.mounts.mountinfo import parse

SAMPLE = (
    "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n"
    "100 36 0:55 / /var/lib/kubelet/pods/x/volumes/with\\040space rw,nosuid - fuse.cloudbucket"
    " cloudbucket:bkt/p/ rw,user_id=0\n"
)


def test_mountinfo_parse_unescapes_and_reads_fields():
    entries = parse(SAMPLE)
    assert entries[1].target == "/var/lib/kubelet/pods/x/volumes/with space"
    assert entries[1].fstype == "fuse.cloudbucket"
    assert entries[1].source == "cloudbucket:bkt/p/"
    assert entries[1].device == "0:55"


def test_inode_lifecycle_follows_lookups_and_handles():
    table = InodeTable("pre/")
    root = table.get(ROOT_INODE)
    file = table.upsert(root, "a.txt", is_dir=False, size=3)
    assert file.key == "pre/a.txt"
    assert table.upsert(root, "a.txt", is_dir=False, size=4) is file  # stable number
    file.lookups = 2
    file.open_handles = 1
    table.forget(file.ino, 2)
    assert table.get(file.ino) is file  # still open
    table.release(file)
    assert table.get(file.ino) is None and table.child(ROOT_INODE, "a.txt") is None
    table.forget(ROOT_INODE, 10)
    assert table.get(ROOT_INODE) is not None
    directory = table.upsert(root, "a.txt", is_dir=True)
    assert directory.key == "pre/a.txt/" and directory.ino != file.ino


def test_local_directory_kept_until_removed():
    table = InodeTable("")
    root = table.get(ROOT_INODE)
    local = table.upsert(root, "new", is_dir=True, local=True)
    table.forget(local.ino, 1)
    assert table.get(local.ino) is local
    table.remove_name(local)
    assert table.get(local.ino) is None
