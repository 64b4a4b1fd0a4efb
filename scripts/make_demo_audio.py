"""Regenerate core/telewire/data/demo.wav: 6 s of synthetic voiced 'syllables' as mu-law 8 kHz.

Run: .venv/bin/python scripts/make_demo_audio.py
"""

import math
import struct
from pathlib import Path

from telewire.g711 import ulaw_encode
from telewire.wav import write_ulaw_wav

RATE = 8000
samples = []
for n in range(RATE * 6):
    t = n / RATE
    syllable = t % 0.6
    env = math.sin(math.pi * syllable / 0.4) if syllable < 0.4 else 0.0
    if 2.4 <= t < 3.0:  # a pause, as people make
        env = 0.0
    f0 = 120 + 30 * math.sin(2 * math.pi * 0.7 * t)
    v = sum(math.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 12))
    samples.append(int(max(-1.0, min(1.0, 0.25 * env * v)) * 32000))
pcm = struct.pack(f"<{len(samples)}h", *samples)
out = Path(__file__).resolve().parent.parent / "core" / "telewire" / "data" / "demo.wav"
write_ulaw_wav(out, ulaw_encode(pcm))
print(out, out.stat().st_size)
