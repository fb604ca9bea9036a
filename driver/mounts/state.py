"""The node plugin's record of what it has published, one small JSON file per target path.

Records survive a restart of the plugin: on start it reads them back, adopts servers that
still serve their target and cleans up the rest. Every write is atomic (temporary file in
the same directory, fsync, rename), so a crash leaves either the old or the new record.
Records hold no secrets: credentials live in their own 0600 files, named here by path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

log = structlog.get_logger()


def target_key(target: str) -> str:
    """A file-name-safe, stable name for a target path."""
    return hashlib.sha256(target.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class MountRecord:
    target: str
    volume_id: str
    bucket: str
    options: dict[str, Any]  # MountOptions fields that differ from the defaults (no secrets)
    credentials_kind: str
    role_arn: str
    access_mode: str
    ephemeral: bool = False
    phase: Literal["starting", "ready"] = "starting"
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MountRecord:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})


def write_atomically(path: Path, text: str, mode: int = 0o600,
                     owner: tuple[int, int] | None = None) -> None:
    """Write `text` to `path` so readers see the old or the new content, never a mix;
    `owner` (uid, gid) is set before the file appears under its name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def private_dir(path: Path) -> Path:
    """Create `path` as a root-only (0700) directory, tightening it if it already exists."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


class StateStore:
    """get/put/delete/all over one directory of records, keyed by target path."""

    def __init__(self, directory: Path) -> None:
        self.directory = private_dir(directory)

    def _path(self, target: str) -> Path:
        return self.directory / f"{target_key(target)}.json"

    def get(self, target: str) -> MountRecord | None:
        try:
            record = MountRecord.from_json(self._path(target).read_text())
        except FileNotFoundError:
            return None
        return record if record.target == target else None

    def put(self, record: MountRecord) -> None:
        write_atomically(self._path(record.target), record.to_json())

    def delete(self, target: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(target).unlink()

    def all(self) -> list[MountRecord]:
        records = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                records.append(MountRecord.from_json(path.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                # A damaged record cannot be acted on; keep it aside for a human to read.
                log.warning("unreadable mount record set aside", path=str(path),
                            error=f"{type(exc).__name__}: {exc}")
                with contextlib.suppress(OSError):
                    path.rename(path.with_suffix(".corrupt"))
        return records
