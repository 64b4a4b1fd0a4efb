"""Both encoders of ``telewire.g711`` (numpy's when installed, pure Python otherwise) agree on
every 16-bit sample, and telewire's required paths work with numpy absent."""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest

from telewire import g711

EVERY_SAMPLE = struct.pack("<65536h", *range(-32768, 32768))


def test_the_pure_python_encoder_maps_every_sample_as_the_table_says():
    encoded = g711._encode_py(EVERY_SAMPLE)
    assert encoded == g711._ENCODE[32768:] + g711._ENCODE[:32768]  # -32768 is index 32768
    assert g711._encode_py(memoryview(EVERY_SAMPLE)) == encoded
    assert g711._encode_py(bytearray(EVERY_SAMPLE[:320])) == encoded[:160]


def test_numpy_and_pure_python_encoders_agree_on_every_sample():
    pytest.importorskip("numpy")
    assert g711._encode_np(EVERY_SAMPLE) == g711._encode_py(EVERY_SAMPLE)


def test_decoding_takes_bytes_bytearray_and_memoryview():
    codes = bytes(range(256))
    pcm = g711.ulaw_decode(codes)
    assert g711.ulaw_decode(bytearray(codes)) == g711.ulaw_decode(memoryview(codes)) == pcm
    assert g711.ulaw_encode(pcm) == bytes(c if c != 0x7F else 0xFF for c in codes)


_WITHOUT_NUMPY = """
import sys
class _NoNumpy:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" or name.startswith("numpy."):
            raise ImportError("numpy is not installed")
sys.meta_path.insert(0, _NoNumpy())
from telewire import envelope, g711, wav
from telewire import cli, graph, server
from telewire.nodes import local_vad, recorder
assert "numpy" not in sys.modules
assert g711._encode is g711._encode_py
print(g711.ulaw_encode(g711.ulaw_decode(bytes(range(8)))).hex())
"""


def test_the_required_paths_import_and_convert_without_numpy():
    out = subprocess.run([sys.executable, "-c", _WITHOUT_NUMPY], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == bytes(range(8)).hex()
