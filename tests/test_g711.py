"""G.711 mu-law tables against an independent reference and the standard's fixed points."""

from __future__ import annotations

import struct

import pytest

from telewire.g711 import ulaw_decode, ulaw_encode

# Two independent references, one sample at a time, in the shape the standard's reference code
# has (a loop over segments), rather than the module's vectorised bit counting:
# - ``_stl_encode``: ITU-T G.191 STL ``ulaw_compress`` (negatives by one's complement);
# - ``_seg_encode``: the classic public-domain g711.c segment-end search (identical to the STL for
#   non-negative samples; for negatives it truncates differently, by at most one code step).
_SEG_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)


def _stl_encode(x: int) -> int:
    absno = min((((~x) >> 2) if x < 0 else (x >> 2)) + 33, 0x1FFF)
    i, segno = absno >> 6, 1
    while i:
        segno += 1
        i >>= 1
    out = ((0x08 - segno) << 4) | (0x0F - ((absno >> segno) & 0x0F))
    return out | 0x80 if x >= 0 else out


def _seg_encode(sample: int) -> int:
    value = sample >> 2
    if value < 0:
        value, mask = -value, 0x7F
    else:
        mask = 0xFF
    value = min(value, 8159) + 0x21
    seg = next((i for i, end in enumerate(_SEG_END) if value <= end), 8)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((value >> (seg + 1)) & 0x0F)) ^ mask


def _ref_decode(code: int) -> int:
    code = ~code & 0xFF
    t = (((code & 0x0F) << 3) + 0x84) << ((code & 0x70) >> 4)
    return 0x84 - t if code & 0x80 else t - 0x84


def test_encode_matches_audioop_where_it_still_exists():
    """``audioop`` is gone in Python 3.13; where it is still importable it is a third oracle
    (it truncates negatives like the segment-search reference, so only non-negatives compare)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    non_negative = _pcm(*range(0, 32768))
    assert ulaw_encode(non_negative) == audioop.lin2ulaw(non_negative, 2)
    assert ulaw_decode(bytes(range(256))) == audioop.ulaw2lin(bytes(range(256)), 2)


def _pcm(*samples: int) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def test_encode_matches_the_g191_reference_for_every_16_bit_sample():
    every = list(range(-32768, 32768))
    ours = ulaw_encode(_pcm(*every))
    expected = bytes(_stl_encode(s) for s in every)
    mismatches = [(s, ours[i], expected[i]) for i, s in enumerate(every) if ours[i] != expected[i]]
    assert not mismatches, f"first mismatches (sample, ours, reference): {mismatches[:5]}"


def test_encode_agrees_with_the_segment_search_reference():
    """Identical for non-negative samples; for negatives at most one quantisation step apart
    (the two references round the 16-to-14-bit truncation of negatives differently)."""
    ours = ulaw_encode(_pcm(*range(-32768, 32768)))
    differ = 0
    for s in range(-32768, 32768):
        code, ref = ours[s + 32768], _seg_encode(s)
        if code != ref:
            assert s < 0 and _ref_neighbours(code, ref), f"sample {s}: {code:#x} vs {ref:#x}"
            differ += 1
    assert 0 < differ < 32768 // 2, f"{differ} negative samples differ"


def _ref_neighbours(a: int, b: int) -> bool:
    """Whether two codes of the same sign are adjacent quantisation steps."""
    return (a & 0x80) == (b & 0x80) and abs((a & 0x7F) - (b & 0x7F)) == 1


def test_decode_matches_the_reference_for_every_code():
    ours = struct.unpack("<256h", ulaw_decode(bytes(range(256))))
    assert list(ours) == [_ref_decode(c) for c in range(256)]


@pytest.mark.parametrize(("sample", "code"), [
    (0, 0xFF), (-1, 0x7F), (32767, 0x80), (-32768, 0x00), (32124, 0x80), (-32124, 0x00),
    (1, 0xFF), (-4, 0x7F), (-5, 0x7E), (8, 0xFE), (-9, 0x7E), (1000, 0xCE), (-1000, 0x4E),
])
def test_known_encodings(sample: int, code: int):
    assert ulaw_encode(_pcm(sample)) == bytes([code])


@pytest.mark.parametrize(("code", "sample"), [
    (0xFF, 0), (0x7F, 0), (0x80, 32124), (0x00, -32124), (0xFE, 8), (0x7E, -8), (0xCE, 988),
])
def test_known_decodings(code: int, sample: int):
    assert ulaw_decode(bytes([code])) == _pcm(sample)


def test_decode_then_encode_is_identity_except_negative_zero():
    codes = bytes(range(256))
    back = ulaw_encode(ulaw_decode(codes))
    # 0x7F is mu-law's "negative zero": it decodes to 0, which encodes as 0xFF.
    assert [c for c in range(256) if back[c] != c] == [0x7F]
    assert back[0x7F] == 0xFF


def test_output_is_little_endian_and_sized():
    assert ulaw_decode(b"\x80") == b"\x7c\x7d"  # 32124 = 0x7D7C, low byte first
    assert len(ulaw_decode(bytes(160))) == 320
    assert len(ulaw_encode(bytes(320))) == 160


def test_accepts_any_bytes_like():
    pcm = _pcm(100, -100, 5000)
    assert ulaw_encode(bytearray(pcm)) == ulaw_encode(memoryview(pcm)) == ulaw_encode(pcm)
    assert ulaw_decode(bytearray(b"\x01\x02")) == ulaw_decode(b"\x01\x02")


def test_empty_input():
    assert ulaw_encode(b"") == b"" and ulaw_decode(b"") == b""


def test_odd_length_pcm_is_refused_with_its_length():
    with pytest.raises(ValueError, match="even number of bytes, not 3"):
        ulaw_encode(b"\x00\x01\x02")
