"""Just enough H.264 bitstream reading: NAL units of an Annex-B access unit, and the codec string."""

from __future__ import annotations

import re

_START = re.compile(b"\x00\x00\x01")
SPS, PPS, IDR = 7, 8, 5


def nal_units(access_unit: bytes) -> list[bytes]:
    """The NAL units of an Annex-B access unit, without their start codes."""
    starts = [match.end() for match in _START.finditer(access_unit)]
    units = []
    for index, start in enumerate(starts):
        end = starts[index + 1] - 3 if index + 1 < len(starts) else len(access_unit)
        unit = access_unit[start:end].rstrip(b"\x00") if index + 1 < len(starts) else access_unit[start:end]
        if unit:
            units.append(unit)
    return units


def nal_type(unit: bytes) -> int:
    return unit[0] & 0x1F


def parameter_sets(access_unit: bytes) -> tuple[bytes, bytes] | None:
    """The SPS and PPS of a keyframe, or None when it does not carry both."""
    units = {nal_type(unit): unit for unit in nal_units(access_unit)}
    if SPS in units and PPS in units:
        return units[SPS], units[PPS]
    return None


def codec_string(sps: bytes) -> str:
    """The RFC 6381 name MSE wants, e.g. ``avc1.42e01e`` (profile, constraints, level)."""
    return "avc1." + sps[1:4].hex()
