"""G.711 mu-law tables (ITU-T G.711), for the edges that must convert; never on the pass-through path.

Depends on nothing in telewire. Python 3.13 removed ``audioop``, so the tables live here.
"""

from __future__ import annotations

import array
import sys

__all__ = ["ulaw_decode", "ulaw_encode"]

_BIAS = 0x84
_CLIP = 32635


def _encode_sample(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    if sample < 0:
        sample = -sample
    sample = min(sample, _CLIP) + _BIAS
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not sample & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _decode_byte(byte: int) -> int:
    byte = ~byte & 0xFF
    sign = byte & 0x80
    exponent = (byte >> 4) & 0x07
    mantissa = byte & 0x0F
    sample = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return -sample if sign else sample


_DECODE = array.array("h", (_decode_byte(b) for b in range(256)))
_ENCODE: bytes | None = None


def _encode_table() -> bytes:
    global _ENCODE
    if _ENCODE is None:  # 64 KiB, built on first use: index is the sample as unsigned 16-bit
        _ENCODE = bytes(_encode_sample(s - 65536 if s >= 32768 else s) for s in range(65536))
    return _ENCODE


def ulaw_encode(pcm16: bytes) -> bytes:
    """Encode 16-bit little-endian linear PCM to mu-law, one byte per sample."""
    if len(pcm16) % 2:
        raise ValueError(f"16-bit PCM must have an even number of bytes, not {len(pcm16)}")
    samples = array.array("H")
    samples.frombytes(pcm16)
    if sys.byteorder == "big":
        samples.byteswap()
    table = _encode_table()
    return bytes(table[s] for s in samples)


def ulaw_decode(ulaw: bytes) -> bytes:
    """Decode mu-law to 16-bit little-endian linear PCM."""
    out = array.array("h", (_DECODE[b] for b in ulaw))
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()
