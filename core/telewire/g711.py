"""G.711 mu-law tables (ITU-T G.711) for the edges that must convert; never on the pass-through.

Depends on numpy only (nothing in telewire). Python 3.13 removed ``audioop``; the tables live here.

Both directions are single numpy table lookups: decoding indexes a 256-entry table of 16-bit
samples with the mu-law bytes; encoding indexes a 65 536-entry table of mu-law bytes with the
samples read as unsigned 16-bit. The tables are built once, vectorised, at import. Encoding
follows the ITU-T G.191 reference implementation (``ulaw_compress``): every one of the 256 codes
is reachable, and decoding then encoding gives every code back except 0x7F ("negative zero").
"""

from __future__ import annotations

import numpy as np

__all__ = ["ulaw_decode", "ulaw_encode"]

_BIAS = 0x84  # 132: added before the segment search (G.711 section 2, "biased linear")


def _build_decode() -> np.ndarray:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(code & 0x80, -magnitude, magnitude).astype("<i2")


def _build_encode() -> np.ndarray:
    samples = np.arange(65536, dtype=np.int32)
    samples = np.where(samples >= 32768, samples - 65536, samples)  # index = sample as uint16
    # 16-bit -> the 14-bit magnitude mu-law is defined on; negatives by one's complement (~x),
    # as in the ITU-T G.191 reference implementation, so -1 is "negative zero" (0x7F).
    magnitude = np.where(samples < 0, ~samples, samples) >> 2
    biased = np.minimum(magnitude + (_BIAS >> 2), 0x1FFF)  # 33 .. 8191
    segment = np.ones_like(biased)
    for bit in range(6, 13):  # segment = 1 + how many bits the value has above bit 5
        segment += (biased >> bit) > 0
    code = ((8 - segment) << 4) | (0x0F - ((biased >> segment) & 0x0F))
    return np.where(samples >= 0, code | 0x80, code).astype(np.uint8)


_DECODE: np.ndarray = _build_decode()
_ENCODE: np.ndarray = _build_encode()
_DECODE.flags.writeable = False
_ENCODE.flags.writeable = False


def ulaw_encode(pcm16: bytes | bytearray | memoryview) -> bytes:
    """Encode 16-bit little-endian linear PCM to mu-law, one byte per sample.

    Args:
        pcm16: signed 16-bit little-endian samples (L16 as bridges send it).

    Returns:
        The mu-law bytes, half as many as ``pcm16`` has.

    Raises:
        ValueError: ``pcm16`` has an odd number of bytes.
    """
    if len(pcm16) % 2:
        raise ValueError(f"16-bit PCM must have an even number of bytes, not {len(pcm16)}")
    return _ENCODE[np.frombuffer(pcm16, dtype="<u2")].tobytes()


def ulaw_decode(ulaw: bytes | bytearray | memoryview) -> bytes:
    """Decode mu-law to 16-bit little-endian linear PCM (two bytes per input byte)."""
    return _DECODE[np.frombuffer(ulaw, dtype=np.uint8)].tobytes()
