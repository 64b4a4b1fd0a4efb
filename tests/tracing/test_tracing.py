"""CallTrace without a server or an event loop: frames in, spans out (an in-memory exporter)."""

from __future__ import annotations

import threading

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from telewire import tracing as tracing_mod
from telewire.frames import (AudioFrame, EndFrame, InterruptFrame, StartFrame, TranscriptFrame,
                             UsageFrame)
from telewire.graph import load_graph
from telewire.tracing import CONTENT_PREFIX, BoundedBatchProcessor, Tracing

START = StartFrame(carrier="twilio", stream_id="MZ" + "1" * 32, call_id="CA" + "2" * 32,
                   account_id="AC" + "3" * 32,
                   custom_parameters={"from": "+15551234567", "to": "+15557654321"})


def audio(track: str = "inbound") -> AudioFrame:
    return AudioFrame(payload="/////w==", track=track)


@pytest.fixture(scope="module")
def graph():
    return load_graph(None)


def traced(graph, **kwargs):
    mem = InMemorySpanExporter()
    t = Tracing(exporters=(mem,), otlp=False, **kwargs)
    call = t.new_call()
    obs = call.observers(graph, {})
    call.start(START)
    return t, mem, call, obs


def finish(t, call, reason="carrier_stop"):
    call.end(EndFrame(reason=reason))
    t.shutdown()


def send(obs, node, port, frame):
    for ob in obs[(node, port)]:
        ob(node, port, frame)


def test_off_observes_no_audio_port(graph):
    t, mem, call, obs = traced(graph, frames="off")
    assert ("tel_in", "audio") not in obs and ("rt", "audio_out") not in obs
    assert ("rt", "usage") in obs and ("tel_out", "heard") in obs
    finish(t, call)
    assert not [s for s in mem.get_finished_spans() if s.name.startswith("frames.")]


@pytest.mark.parametrize("level, events", [("sampled", 2), ("all", 100)])
def test_frame_levels(graph, level, events):
    t, mem, call, obs = traced(graph, frames=level)
    for _ in range(100):
        send(obs, "tel_in", "audio", audio())
    finish(t, call)
    (caller,) = [s for s in mem.get_finished_spans() if s.name == "frames.caller"]
    assert len(caller.events) == events
    assert caller.events[0].name == "audio"
    assert caller.events[0].attributes["telewire.port"] == "tel_in.audio"
    assert caller.attributes["telewire.frames.events"] == events


def test_root_turn_response_interrupt(graph):
    t, mem, call, obs = traced(graph)
    assert tracing_mod.current_call() is call
    tracing_mod.model_session("openai", "gpt-realtime")
    tracing_mod.response_created("openai", "gpt-realtime", "resp_1")
    send(obs, "rt", "audio_out", audio("outbound"))
    send(obs, "tel_out", "heard", InterruptFrame(source="dtmf", item_id="item_1", heard_ms=480.4))
    send(obs, "tel_in", "interrupt", InterruptFrame(source="dtmf"))  # observed after its targets
    send(obs, "rt", "usage", UsageFrame(provider="openai", model="gpt-realtime",
                                        response_id="resp_1", input_audio_tokens=10,
                                        input_text_tokens=5, input_cached_tokens=4,
                                        output_audio_tokens=20, output_text_tokens=3,
                                        cost_usd=0.0125, call_cost_usd=0.0125))
    tracing_mod.model_session("openai", "gpt-realtime", reconnects=1)
    finish(t, call)
    assert tracing_mod.current_call() is None
    spans = {s.name: s for s in mem.get_finished_spans()}
    root = spans["call"]
    assert root.parent is None
    assert root.attributes["telewire.call_sid"] == START.call_id
    assert root.attributes["telewire.stream_sid"] == START.stream_id
    assert root.attributes["telewire.account_id"] == START.account_id
    assert root.attributes["telewire.from"] == "+1********67"
    assert root.attributes["telewire.turns"] == 1 and root.attributes["telewire.interrupts"] == 1
    assert root.attributes["gen_ai.usage.input_tokens"] == 15
    assert root.attributes["telewire.cost_usd"] == 0.0125
    every = mem.get_finished_spans()
    assert {s.context.trace_id for s in every} == {root.context.trace_id}
    response = spans["model.response"]
    assert response.attributes["gen_ai.usage.output_tokens"] == 23
    assert response.attributes["gen_ai.usage.cache_read.input_tokens"] == 4
    assert response.attributes["telewire.cost_usd"] == 0.0125
    assert response.attributes["telewire.response.time_to_first_audio_ms"] >= 0
    interrupt = spans["interrupt"]
    assert interrupt.attributes["telewire.interrupt.truncate_ms"] == 480
    assert [s.attributes["telewire.session.kind"] for s in every
            if s.name == "model.session"] == ["connect", "reconnect"]
    turns = [s for s in every if s.name == "turn"]
    assert response.parent.span_id in {s.context.span_id for s in turns}


@pytest.mark.parametrize("content", [False, True])
def test_content_only_when_asked(graph, content):
    t, mem, call, obs = traced(graph, content=content)
    send(obs, "rt", "transcript", TranscriptFrame(role="caller", text="my card is 4111"))
    span = tracing_mod.tool_started("lookup", "call_1", '{"card": "4111"}')
    tracing_mod.tool_ended(span, '{"ok": true}')
    finish(t, call)
    keys = {k for s in mem.get_finished_spans() for k in s.attributes}
    values = " ".join(str(v) for s in mem.get_finished_spans() for v in s.attributes.values())
    assert ("4111" in values) is content
    assert bool({k for k in keys if k.startswith(CONTENT_PREFIX)}) is content
    if content:
        assert f"{CONTENT_PREFIX}transcript.caller" in keys
        assert f"{CONTENT_PREFIX}tool.arguments" in keys


def test_hooks_are_no_ops_outside_a_call():
    assert tracing_mod.current_call() is None
    tracing_mod.model_session("openai", "m")
    tracing_mod.response_created("openai", "m", "r")
    assert tracing_mod.tool_started("t", "c", "{}") is None


class _Stuck(SpanExporter):
    """An exporter that blocks until released (a collector that stopped answering)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans):
        self.release.wait(10)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def test_a_full_queue_drops_and_counts_and_never_blocks():
    stuck = _Stuck()
    processor = BoundedBatchProcessor(stuck, max_queue_size=8, schedule_delay_millis=1)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    for i in range(200):
        tracer.start_span(f"s{i}").end()
    assert processor.dropped >= 200 - 2 * 8
    stuck.release.set()
    provider.shutdown()
    assert stuck.exported + processor.dropped == 200
