"""VolumeCondition in NodeGetVolumeStats, for COs built against CSI spec <= v1.12.

Spec v1.13 removed the alpha `VolumeCondition` (field 2 of NodeGetVolumeStatsResponse, node
capability VOLUME_CONDITION = 4) in favour of NodeGetVolumeHealth. Kubelet still reads the
old field when a node advertises capability 4, and that is how `kubectl describe pod` shows
an abnormal volume. So the node plugin answers both ways: NodeGetVolumeHealth for v1.13
COs, and this wire-compatible field for older ones. The field is written as raw protobuf
bytes (unknown to the v1.13 stubs, which keep and re-send unknown fields).
"""

from __future__ import annotations

from google.protobuf import message as pb_message
from google.protobuf import unknown_fields

VOLUME_CONDITION_CAPABILITY = 4  # NodeServiceCapability.RPC.Type.VOLUME_CONDITION (<= v1.12)
_FIELD = 2  # NodeGetVolumeStatsResponse.volume_condition (<= v1.12)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def add_volume_condition(response: pb_message.Message, abnormal: bool, message: str) -> None:
    """Append VolumeCondition{abnormal=1, message=2} as field 2 of `response`."""
    inner = (_varint(1 << 3 | 0) + _varint(1) if abnormal else b"") + \
        _length_delimited(2, message.encode())
    response.MergeFromString(_length_delimited(_FIELD, inner))


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def volume_condition(response: pb_message.Message) -> tuple[bool, str] | None:
    """(abnormal, message) of the legacy field, or None when absent (client side, tests)."""
    for field in unknown_fields.UnknownFieldSet(response):
        if field.field_number != _FIELD:
            continue
        data, pos, abnormal, text = field.data, 0, False, ""
        while pos < len(data):
            key, pos = _read_varint(data, pos)
            if key == (1 << 3 | 0):
                value, pos = _read_varint(data, pos)
                abnormal = bool(value)
            elif key == (2 << 3 | 2):
                size, pos = _read_varint(data, pos)
                text = data[pos:pos + size].decode(errors="replace")
                pos += size
            else:
                raise ValueError(f"unexpected key {key} in a VolumeCondition")
        return abnormal, text
    return None
