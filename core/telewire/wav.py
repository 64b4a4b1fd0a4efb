"""WAV files of G.711 mu-law (format tag 7) and 16-bit PCM: read for the simulator, write archives.

Depends on ``telewire.g711`` and ``telewire.errors``. No resampling, ever: a file at another
rate is an error that says so.
"""

from __future__ import annotations

import struct
from pathlib import Path

from telewire.errors import ConfigError
from telewire.g711 import ulaw_encode

__all__ = ["read_ulaw", "ulaw_wav_bytes", "write_ulaw_wav"]

_FORMAT_PCM = 1
_FORMAT_MULAW = 7


def ulaw_wav_bytes(data: bytes, *, channels: int = 1, sample_rate: int = 8000) -> bytes:
    """A complete mu-law WAV file (format tag 7, 8 bits per sample) around ``data``."""
    fmt = struct.pack("<HHIIHHH", _FORMAT_MULAW, channels, sample_rate, sample_rate * channels,
                      channels, 8, 0)
    fact = struct.pack("<I", len(data) // channels)
    pad = b"\x00" if len(data) % 2 else b""
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"fact" + struct.pack("<I", 4) + fact
            + b"data" + struct.pack("<I", len(data)) + data + pad)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def write_ulaw_wav(path: str | Path, data: bytes, *, channels: int = 1,
                   sample_rate: int = 8000) -> Path:
    """Write ``data`` (mu-law) as a WAV file; returns the path."""
    p = Path(path)
    p.write_bytes(ulaw_wav_bytes(data, channels=channels, sample_rate=sample_rate))
    return p


def read_ulaw(path: str | Path) -> bytes:
    """Read 8 kHz mono audio as mu-law bytes.

    ``.wav`` files may be mu-law (tag 7, returned as is) or 16-bit PCM (tag 1, encoded); any
    other file is taken as raw mu-law.

    Raises:
        ConfigError: naming the file and what is wrong (rate, channels, format, truncation).
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read audio: {exc.strerror}") from None
    if not raw.startswith(b"RIFF"):
        return raw
    if raw[8:12] != b"WAVE":
        raise ConfigError(f"{p}: RIFF file is not WAVE")
    pos, fmt, data = 12, None, None
    while pos + 8 <= len(raw):
        cid, size = raw[pos:pos + 4], struct.unpack("<I", raw[pos + 4:pos + 8])[0]
        chunk = raw[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            if len(chunk) < 16:
                raise ConfigError(f"{p}: fmt chunk is {len(chunk)} bytes, need 16")
            fmt = struct.unpack("<HHIIHH", chunk[:16])
        elif cid == b"data":
            data = chunk
        pos += 8 + size + (size & 1)
    if fmt is None or data is None:
        raise ConfigError(f"{p}: WAV file without {'fmt' if fmt is None else 'data'} chunk")
    tag, channels, rate, _, _, bits = fmt
    if rate != 8000 or channels != 1:
        raise ConfigError(f"{p}: audio is {rate} Hz, {channels} channel(s); telewire needs "
                          "8000 Hz mono and never resamples")
    if tag == _FORMAT_MULAW and bits == 8:
        return data
    if tag == _FORMAT_PCM and bits == 16:
        return ulaw_encode(data[: len(data) - len(data) % 2])
    raise ConfigError(f"{p}: WAV format tag {tag} with {bits} bits per sample is not supported "
                      "(use mu-law, tag 7, or 16-bit PCM, tag 1)")
