"""Just enough H.264 bitstream reading: the NAL units of an Annex-B access unit, its parameter sets,
and the codec string MSE wants."""

from __future__ import annotations

NAL_IDR, NAL_SPS, NAL_PPS = 5, 7, 8
START_CODE = b"\x00\x00\x00\x01"
_START = b"\x00\x00\x01"


def nal_spans(data: bytes) -> list[tuple[int, int, int]]:
    """``(nal_type, start, end)`` of each NAL unit (start code excluded, trailing zeros kept: cheap,
    no copy; :func:`nal_units` strips them)."""
    spans: list[tuple[int, int, int]] = []
    at = data.find(_START)
    while at >= 0 and at + 3 < len(data):
        start = at + 3
        at = data.find(_START, start)
        end = len(data) if at < 0 else at
        if end > start:
            spans.append((data[start] & 0x1F, start, end))
    return spans


def nal_types(data: bytes) -> list[int]:
    return [nal_type for nal_type, _, _ in nal_spans(data)]


def nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B access unit, without start codes or trailing zero bytes."""
    units = (data[start:end].rstrip(b"\x00") for _, start, end in nal_spans(data))
    return [unit for unit in units if unit]


def nal_type(unit: bytes) -> int:
    return unit[0] & 0x1F


def parameter_sets(data: bytes) -> tuple[bytes, bytes] | None:
    """The SPS and PPS of a keyframe (without start codes), or None when it does not carry both."""
    units = {nal_type(unit): unit for unit in nal_units(data)}
    if NAL_SPS in units and NAL_PPS in units:
        return units[NAL_SPS], units[NAL_PPS]
    return None


def codec_string(sps: bytes) -> str:
    """The RFC 6381 name MSE wants, e.g. ``avc1.42e01e`` (profile, constraints, level)."""
    return "avc1." + sps[1:4].hex()


class ParameterSets:
    """The latest SPS and PPS seen, to put in front of IDRs that arrive without them (RTSP sources
    often carry them only in the SDP), so every keyframe can start a decoder on its own."""

    def __init__(self, extradata: bytes | None) -> None:
        self.sps = self.pps = b""  # with their start codes
        if extradata and not extradata.startswith(b"\x01"):  # Annex-B, not avcC
            self.learn(extradata)

    def learn(self, data: bytes) -> None:
        for nal_type, start, end in nal_spans(data):
            if nal_type in (NAL_SPS, NAL_PPS):
                nal = START_CODE + data[start:end].rstrip(b"\x00")
                if nal_type == NAL_SPS:
                    self.sps = nal
                else:
                    self.pps = nal

    def complete(self, data: bytes) -> tuple[bytes, bool]:
        """``data`` with the SPS and PPS in front when it is an IDR without them, and whether it
        is an IDR; learns the parameter sets it carries."""
        types = nal_types(data)
        if NAL_SPS in types or NAL_PPS in types:
            self.learn(data)
        keyframe = NAL_IDR in types
        if keyframe and (NAL_SPS not in types or NAL_PPS not in types):
            data = self.sps + self.pps + data
        return data, keyframe
