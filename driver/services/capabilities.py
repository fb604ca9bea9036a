"""Which volume capabilities this driver supports, checked the same way by every RPC.

A bucket prefix is a filesystem volume only (block is refused). Any number of nodes may read
and write it (object stores have no single-writer lock), so MULTI_NODE_MULTI_WRITER and
MULTI_NODE_READER_ONLY are offered along with every SINGLE_NODE_* mode;
MULTI_NODE_SINGLE_WRITER is refused because nothing could enforce "one writer" across nodes.
"""

from __future__ import annotations

from driver.csi import csi_pb2
from driver.services.errors import invalid

Mode = csi_pb2.VolumeCapability.AccessMode.Mode

SUPPORTED_MODES = frozenset({
    Mode.SINGLE_NODE_WRITER,
    Mode.SINGLE_NODE_READER_ONLY,
    Mode.SINGLE_NODE_SINGLE_WRITER,
    Mode.SINGLE_NODE_MULTI_WRITER,
    Mode.MULTI_NODE_READER_ONLY,
    Mode.MULTI_NODE_MULTI_WRITER,
})
READ_ONLY_MODES = frozenset({Mode.SINGLE_NODE_READER_ONLY, Mode.MULTI_NODE_READER_ONLY})


def mode_name(mode: int) -> str:
    return Mode.Name(mode) if mode in Mode.values() else str(mode)


def problem(capability: csi_pb2.VolumeCapability, field: str) -> str | None:
    """Why `capability` is unsupported (naming the field), or None when it is fine."""
    if capability.HasField("block"):
        return f"{field}.block: block volumes are not supported (a bucket is a filesystem)"
    if not capability.HasField("mount"):
        return f"{field}.access_type: a mount access type is required"
    if not capability.HasField("access_mode"):
        return f"{field}.access_mode is required"
    mode = capability.access_mode.mode
    if mode not in SUPPORTED_MODES:
        return (f"{field}.access_mode: {mode_name(mode)} is not supported; supported: "
                + ", ".join(sorted(mode_name(m) for m in SUPPORTED_MODES)))
    # mount.fs_type is ignored on purpose: external-provisioner may fill in a default such
    # as ext4, and a FUSE mount has no filesystem type to choose.
    return None


def check(capability: csi_pb2.VolumeCapability, field: str) -> None:
    """Raise INVALID_ARGUMENT naming the field when `capability` is unsupported."""
    reason = problem(capability, field)
    if reason is not None:
        raise invalid(reason)


def check_all(capabilities: list[csi_pb2.VolumeCapability], field: str) -> None:
    if not capabilities:
        raise invalid(f"{field} is required")
    for index, capability in enumerate(capabilities):
        check(capability, f"{field}[{index}]")
