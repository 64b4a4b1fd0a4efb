"""Tools (import path, entry point, timeout, failures), Azure's URL and headers, turn detection,
and a session that outlives the provider's age limit."""

from __future__ import annotations

import asyncio
import json

import pytest

from telewire.carrier import Capabilities
from telewire.errors import ConfigError
from telewire.realtime.base import ProviderConfig, ToolSpec, TurnDetection
from telewire.realtime.openai import AzureSession, OpenAISession
from telewire.tools import ToolBox


def lookup_order(number: str) -> dict:
    return {"number": number, "status": "shipped"}


async def slow_tool() -> str:
    await asyncio.sleep(5)
    return "late"


def broken_tool() -> None:
    raise RuntimeError("database unavailable")


class _Call:
    class carrier:  # noqa: N801 - a stand-in for the registry facade
        capabilities = Capabilities()

    class context:  # noqa: N801
        capabilities = None

    class log:  # noqa: N801
        @staticmethod
        def warning(*args: object) -> None:
            pass

    hangups: list[tuple[str, str]] = []

    @classmethod
    async def hang_up(cls, reason: str, detail: str = "") -> None:
        cls.hangups.append((reason, detail))


def toolbox(*specs: ToolSpec) -> ToolBox:
    return ToolBox(specs, ["end_call", "transfer_call"], _Call())


async def test_tools_run_by_import_path_with_timeout_and_failures_reported():
    box = toolbox(
        ToolSpec(name="lookup_order", function=f"{__name__}:lookup_order",
                 parameters={"type": "object", "properties": {"number": {"type": "string"}}}),
        ToolSpec(name="slow", function=f"{__name__}:slow_tool", timeout_s=0.05),
        ToolSpec(name="broken", function=f"{__name__}:broken_tool"),
    )
    names = [d["name"] for d in box.definitions()]
    assert names == ["end_call", "lookup_order", "slow", "broken"]  # no transfer: not capable
    out = await box.run("lookup_order", '{"number": "A17"}')
    assert json.loads(out.output) == {"number": "A17", "status": "shipped"} and out.respond
    assert "timed out after 0.05 s" in (await box.run("slow", "")).output
    assert "RuntimeError: database unavailable" in (await box.run("broken", "{}")).output
    assert "invalid arguments" in (await box.run("lookup_order", "[1]")).output
    assert "no tool named 'nope'" in (await box.run("nope", "{}")).output


async def test_end_call_asks_the_call_to_hang_up_and_does_not_ask_for_a_reply():
    box = toolbox()
    out = await box.run("end_call", '{"reason": "done"}')
    await asyncio.sleep(0)
    assert not out.respond and ("end_call", "done") in _Call.hangups


def test_bad_tool_references_are_config_errors():
    with pytest.raises(ConfigError, match=r"rt.config.tools\[x\]: cannot import 'no_such_module'"):
        toolbox(ToolSpec(name="x", function="no_such_module:f"))
    with pytest.raises(ConfigError, match="neither 'module:function' nor a tool entry point"):
        toolbox(ToolSpec(name="x", function="unregistered"))
    with pytest.raises(ConfigError, match="clash with built-in tools"):
        toolbox(ToolSpec(name="end_call", function=f"{__name__}:lookup_order"))


def test_turn_detection_wire_forms():
    assert TurnDetection().wire()["type"] == "server_vad"
    semantic = TurnDetection(type="semantic_vad", eagerness="low").wire()
    assert semantic == {"type": "semantic_vad", "create_response": True,
                        "interrupt_response": True, "eagerness": "low"}
    assert TurnDetection(type="none").wire() is None


def test_azure_uses_its_endpoint_deployment_and_api_key_header(monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "az-secret")
    cfg = ProviderConfig(provider="azure", model="my-deployment",
                         url="https://acme.openai.azure.com/openai/v1/realtime")
    session = AzureSession(cfg, sink=None)  # type: ignore[arg-type]
    url, where = session._session_url()
    assert url == "wss://acme.openai.azure.com/openai/v1/realtime?model=my-deployment"
    assert session._auth_headers() == {"api-key": "az-secret"}
    with pytest.raises(ConfigError, match="needs your resource's endpoint"):
        AzureSession(ProviderConfig(provider="azure"), sink=None)._session_url()  # type: ignore[arg-type]
    monkeypatch.delenv("AZURE_OPENAI_API_KEY")
    with pytest.raises(ConfigError, match="AZURE_OPENAI_API_KEY"):
        session._auth_headers()


async def test_an_expired_session_hands_over_with_the_conversation():
    from telewire.frames import AudioFrame, EndFrame, StartFrame, TranscriptFrame
    from telewire.testing.fake_realtime import FakeRealtimeServer

    frames: list[object] = []

    async def sink(frame: object) -> None:
        frames.append(frame)

    async with FakeRealtimeServer(mode="echo", session_max_s=1.0) as fake:
        cfg = ProviderConfig(provider="openai", url=fake.url, transcription_model="")
        rt = OpenAISession(cfg, sink)
        await rt.start(StartFrame(carrier="twilio", stream_id="MZ1", call_id="CA1"))
        first = await fake.wait_for_connection(0)
        await first.push_caller_transcript("Book me a table for two.")
        fresh = await fake.wait_for_connection(1, timeout=10)  # after session_expired
        await fresh.wait_for("conversation.item.create")
        assert ("user", "Book me a table for two.") in fresh.dialogue()
        await rt.send_audio(AudioFrame(payload="AAEC"))
        await fresh.wait_for("input_audio_buffer.append")
        await rt.close()
    assert not [f for f in frames if isinstance(f, EndFrame)]
    assert [f.text for f in frames if isinstance(f, TranscriptFrame)] == ["Book me a table for two."]
