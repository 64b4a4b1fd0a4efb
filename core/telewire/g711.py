"""G.711 mu-law tables (ITU-T G.711) for the edges that must convert; never on the pass-through.

Depends on nothing in telewire; uses numpy for encoding when it is installed
(``telewire[speedups]``). Python 3.13 removed ``audioop``; the tables live here.

Decoding is two ``bytes.translate`` calls through 256-entry tables (the low and the high byte of
each 16-bit sample) interleaved into the output, which is faster than numpy at a frame's size.
Encoding indexes a 65 536-entry table of mu-law bytes with the samples read as unsigned 16-bit:
one numpy fancy index when numpy is installed (about 5x faster per 20 ms frame), else a ``map``
over the samples. The tables are built once at import. Encoding follows the ITU-T G.191
reference implementation (``ulaw_compress``): every one of the 256 codes is reachable, and
decoding then encoding gives every code back except 0x7F ("negative zero").
"""

from __future__ import annotations

import sys
from array import array
from typing import Callable

__all__ = ["ulaw_decode", "ulaw_encode"]

_BIAS = 0x84  # 132: added before the segment search (G.711 section 2, "biased linear")


def _build_decode() -> tuple[bytes, bytes]:
    """The low and the high byte of the 16-bit little-endian sample of each mu-law code."""
    low, high = bytearray(256), bytearray(256)
    for byte in range(256):
        code = ~byte & 0xFF
        exponent = (code >> 4) & 0x07
        mantissa = code & 0x0F
        magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
        sample = (-magnitude if code & 0x80 else magnitude) & 0xFFFF
        low[byte], high[byte] = sample & 0xFF, sample >> 8
    return bytes(low), bytes(high)


def _build_encode() -> bytes:
    """The mu-law code of every 16-bit sample, indexed by the sample read as unsigned."""
    # 16-bit -> the 14-bit magnitude mu-law is defined on; negatives by one's complement (~x),
    # as in the ITU-T G.191 reference implementation, so -1 is "negative zero" (0x7F).
    codes = bytearray(8192)  # by magnitude (0 .. 8191), before the sign bit
    for magnitude in range(8192):
        biased = min(magnitude + (_BIAS >> 2), 0x1FFF)  # 33 .. 8191
        segment = biased.bit_length() - 5  # 1 + how many bits the value has above bit 5
        codes[magnitude] = ((8 - segment) << 4) | (0x0F - ((biased >> segment) & 0x0F))
    positive = bytes(code | 0x80 for code in codes)
    # samples 0 .. 32767 have magnitude sample >> 2; samples -32768 .. -1 (indices 32768 ..
    # 65535) have magnitude (~sample) >> 2, which falls from 8191 to 0 as the index grows.
    return b"".join((bytes(c for c in positive for _ in range(4)),
                     bytes(c for c in reversed(codes) for _ in range(4))))


_LOW, _HIGH = _build_decode()
_ENCODE = _build_encode()


def _encode_py(pcm16: bytes | bytearray | memoryview) -> bytes:
    if sys.byteorder == "little":
        samples: memoryview | array[int] = memoryview(pcm16).cast("B").cast("H")
    else:  # pragma: no cover - big-endian machines
        samples = array("H", bytes(pcm16))
        samples.byteswap()
    return bytes(map(_ENCODE.__getitem__, samples))


_encode: Callable[[bytes | bytearray | memoryview], bytes] = _encode_py
try:  # pragma: no cover - depends on the environment
    import numpy as _np

    _ENCODE_NP = _np.frombuffer(_ENCODE, dtype=_np.uint8)

    def _encode_np(pcm16: bytes | bytearray | memoryview) -> bytes:
        return _ENCODE_NP[_np.frombuffer(pcm16, dtype="<u2")].tobytes()

    _encode = _encode_np
except ImportError:  # pragma: no cover
    pass


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
    return _encode(pcm16)


def ulaw_decode(ulaw: bytes | bytearray | memoryview) -> bytes:
    """Decode mu-law to 16-bit little-endian linear PCM (two bytes per input byte)."""
    if type(ulaw) is memoryview:
        ulaw = ulaw.tobytes()
    out = bytearray(2 * len(ulaw))
    out[0::2] = ulaw.translate(_LOW)
    out[1::2] = ulaw.translate(_HIGH)
    return bytes(out)
