"""Frames: immutability, validation, and the wire form kept until asked."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from telewire.frames import (
    AudioFrame,
    DTMFFrame,
    MarkFrame,
    MediaFormat,
    StartFrame,
    SteerFrame,
    TranscriptFrame,
    audio_frame,
)


def test_audio_frame_keeps_wire_form_and_converts_on_demand():
    raw = bytes(range(256))
    b64 = base64.b64encode(raw).decode()
    f = AudioFrame(payload=b64)
    assert f.payload is b64 and f.b64 is b64  # no round trip
    assert f.data == raw
    assert f.byte_length == 256 and f.duration_ms == 32.0
    g = AudioFrame(payload=raw)
    assert g.b64 == b64 and g.data is raw


@pytest.mark.parametrize("n", [0, 1, 2, 3, 160, 161, 162])
def test_byte_length_without_decoding(n):
    assert AudioFrame(payload=base64.b64encode(b"x" * n).decode()).byte_length == n


def test_frames_are_frozen_and_slotted():
    f = DTMFFrame(digit="5")
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.digit = "6"  # type: ignore[misc]
    assert not hasattr(f, "__dict__")


@pytest.mark.parametrize("digit", list("0123456789*#ABCD"))
def test_every_keypad_digit_is_valid(digit):
    assert DTMFFrame(digit=digit).digit == digit


@pytest.mark.parametrize("digit", ["E", "", "11", "a", " "])
def test_bad_digits_are_rejected(digit):
    with pytest.raises(ValueError, match="DTMF digit"):
        DTMFFrame(digit=digit)


def test_validation_messages_name_the_field():
    with pytest.raises(ValueError, match="codec"):
        AudioFrame(payload="", codec="opus")
    with pytest.raises(ValueError, match="sample_rate"):
        MediaFormat(sample_rate=0)
    with pytest.raises(ValueError, match="stream_id"):
        StartFrame(carrier="twilio", stream_id="")
    with pytest.raises(ValueError, match="name"):
        MarkFrame(name="")
    with pytest.raises(ValueError, match="instructions or voice"):
        SteerFrame()
    with pytest.raises(ValueError, match="role"):
        TranscriptFrame(role="bot", text="hi")


def test_start_frame_parameters_are_read_only():
    params = {"a": "1"}
    f = StartFrame(carrier="twilio", stream_id="MZ1", custom_parameters=params)
    params["a"] = "2"
    assert f.custom_parameters["a"] == "1"
    with pytest.raises(TypeError):
        f.custom_parameters["b"] = "x"  # type: ignore[index]


def test_the_hot_path_constructor_makes_the_same_frozen_frame():
    """``audio_frame`` (positional, no re-validation) builds what ``AudioFrame(...)`` builds."""
    fast = audio_frame("AAAA", "pcmu", 8000, 40, 3, "outbound", "item_1")
    slow = AudioFrame(payload="AAAA", codec="pcmu", sample_rate=8000, timestamp_ms=40,
                      sequence=3, track="outbound", item_id="item_1")
    assert fast == slow and hash(fast) == hash(slow) and type(fast) is AudioFrame
    assert fast.byte_length == 3 and fast.data == b"\0\0\0"
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.payload = "BBBB"  # type: ignore[misc]
