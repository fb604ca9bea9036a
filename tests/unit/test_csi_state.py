"""The node plugin's mount records: atomic writes, reloaded from disk by a new store."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from driver.mounts.state import MountRecord, StateStore, target_key, write_atomically


def _record(target: str, volume_id: str = "vol-1", pid: int = 123) -> MountRecord:
    return MountRecord(
        target=target, volume_id=volume_id, bucket="b", options={"prefix": "p/"},
        credentials_kind="static", role_arn="", access_mode="SINGLE_NODE_WRITER",
        phase="ready", extra={"pid": str(pid)})


def test_records_survive_a_reload_from_disk(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "volumes")
    first, second = _record("/pods/a/mount"), _record("/pods/b/mount", "vol-2", 456)
    store.put(first)
    store.put(second)
    reloaded = StateStore(tmp_path / "volumes")
    assert reloaded.get("/pods/a/mount") == first
    assert sorted(r.volume_id for r in reloaded.all()) == ["vol-1", "vol-2"]
    reloaded.delete("/pods/a/mount")
    reloaded.delete("/pods/a/mount")  # idempotent
    assert StateStore(tmp_path / "volumes").get("/pods/a/mount") is None
    assert StateStore(tmp_path / "volumes").all() == [second]


def test_put_replaces_atomically_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "volumes")
    store.put(_record("/t", pid=1))
    store.put(_record("/t", pid=2))
    assert store.get("/t").extra["pid"] == "2"  # type: ignore[union-attr]
    assert [p.name for p in store.directory.iterdir()] == [f"{target_key('/t')}.json"]
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    record_file = store.directory / f"{target_key('/t')}.json"
    assert stat.S_IMODE(record_file.stat().st_mode) == 0o600


def test_records_hold_no_secret_values(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "volumes")
    store.put(_record("/t"))
    text = (store.directory / f"{target_key('/t')}.json").read_text()
    assert "secret" not in text.lower()


def test_a_damaged_record_is_set_aside(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "volumes")
    store.put(_record("/good"))
    (store.directory / "broken.json").write_text("{not json")
    assert [r.target for r in store.all()] == ["/good"]
    assert (store.directory / "broken.corrupt").exists()


def test_write_atomically_keeps_the_old_content_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    write_atomically(path, "old")

    with pytest.raises(TypeError):
        write_atomically(path, 12345)  # type: ignore[arg-type]  # fails mid-write
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]
