"""Span trees of whole calls over real loopback sockets: the simulated Twilio call <->
`TelewireServer` <-> the fake realtime server, spans into SQLite and over OTLP/HTTP."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from telewire.graph import load_graph
from telewire.registry import CarrierRegistry
from telewire.server import TelewireServer
from telewire.settings import load_settings
from telewire.spanstore import call_rows, open_db, recent_calls
from telewire.testing.fake_realtime import FakeRealtimeServer
from telewire.testing.simulator import CallSimulator
from telewire.tracing import Tracing

SILENCE = b"\xff" * 8  # one mu-law millisecond


async def two_calls(tracing: Tracing) -> list:
    """Two calls, the first with a barge-in digit while the agent talks."""
    async with FakeRealtimeServer(mode="talk", talk_speed=2.0, response_audio_ms=1500,
                                  talk_after_appends=10) as fake:
        srv = TelewireServer(
            load_settings(host="127.0.0.1", port=0),
            load_graph(None, ["rt.config.provider=openai", f"rt.config.url={fake.url}",
                              "rt.config.transcription_model="]),
            CarrierRegistry(), tracing=tracing)
        await srv.start()
        try:
            url = f"ws://127.0.0.1:{srv.port}/media/twilio"
            results = [await CallSimulator(url, dtmf=[(700, "*")], drain_s=0.5,
                                           custom_parameters={"from": "+15551234567"}
                                           ).run(SILENCE * 1100),
                       await CallSimulator(url, drain_s=0.5).run(SILENCE * 900)]
        finally:
            await srv.stop(drain_timeout_s=1)
    tracing.shutdown()
    return results


def reachable(rows) -> set[str]:
    """Span ids reachable from the root rows through ``children``."""
    seen: set[str] = set()
    stack = list(rows)
    while stack:
        s = stack.pop()
        seen.add(s.span_id)
        stack.extend(s.children)
    return seen


async def test_two_calls_leave_two_trees_in_workflow_spans(tmp_path):
    db_path = tmp_path / "spans.db"
    results = await two_calls(Tracing(spans_db=db_path, otlp=False))
    db = open_db(db_path)
    assert {c["call_sid"] for c in recent_calls(db)} == {r.call_sid for r in results}
    for result in results:
        (roots,) = call_rows(db, result.call_sid)
        (root,) = roots  # one root: every other span of the call hangs below it
        assert root.name == "call" and root.parent_id is None
        assert root.attributes["telewire.call_sid"] == result.call_sid
        assert root.attributes["telewire.stream_sid"] == result.stream_sid
        assert root.attributes["telewire.carrier"] == "twilio"
        every = db.execute("SELECT span_id, call_sid, stream_sid FROM workflow_spans "
                           "WHERE trace_id = ?", (root.trace_id,)).fetchall()
        assert {r[0] for r in every} == reachable(roots)
        assert {(r[1], r[2]) for r in every} == {(result.call_sid, result.stream_sid)}
        names = [s.name for s in _all(root)]
        (upload,) = [s for s in _all(root) if s.name == "store.upload"]
        assert upload.attributes["telewire.store.status"] == "stored"
        assert upload.start_ns >= root.end_ns  # the archive is stored once the call is over
        assert names.count("model.session") == 1
        responses = [s for s in _all(root) if s.name == "model.response"]
        assert responses, names
        for r in responses:
            assert r.attributes["gen_ai.system"] == "openai"
            assert r.attributes["gen_ai.request.model"]
            # a response still running when the call ended has no usage
            assert ("gen_ai.usage.output_tokens" in r.attributes) == r.attributes[
                "telewire.response.completed"]
        assert any(r.attributes["telewire.response.completed"] for r in responses)
        for r in responses:
            assert {p.name for p in _all(root) if r in p.children} == {"turn"}
        assert root.attributes["telewire.end_reason"]
        assert not [k for s in _all(root) for k in s.attributes if k.startswith("telewire.content.")]
    first = call_rows(db, results[0].call_sid)[0][0]
    assert first.attributes["telewire.from"] == "+1********67"
    interrupts = [s for s in _all(first) if s.name == "interrupt"]
    (dtmf,) = [s for s in interrupts if s.attributes["telewire.interrupt.source"] == "dtmf"]
    assert 0 < dtmf.attributes["telewire.interrupt.heard_ms"] < 1100
    # heard_ms is stored rounded to 0.1 ms, truncate_ms is the whole ms sent: 494.96 is kept
    # as 495.0 beside 494
    heard = dtmf.attributes["telewire.interrupt.heard_ms"]
    assert 0 <= heard - dtmf.attributes["telewire.interrupt.truncate_ms"] <= 1.0
    assert first.attributes["telewire.interrupts"] == len(interrupts)

    out = subprocess.run([sys.executable, "-m", "telewire.cli", "trace", results[0].call_sid,
                          "--db", str(db_path)], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0].startswith("trace ") and " call  [" in lines[1]
    assert results[0].call_sid in lines[1]
    assert any("    model.response" in line and "output_tokens=" in line for line in lines)
    assert any("interrupt" in line and "heard_ms=" in line for line in lines)

    listed = json.loads(subprocess.run(
        [sys.executable, "-m", "telewire.cli", "calls", "--json", "--db", str(db_path)],
        capture_output=True, text=True, check=True).stdout)
    assert [c["call_sid"] for c in listed] == [r.call_sid for r in reversed(results)]
    assert listed[1]["interrupts"] >= 1 and listed[1]["turns"] >= 1


def _all(span):
    yield span
    for c in span.children:
        yield from _all(c)


class _Receiver(BaseHTTPRequestHandler):
    requests: list[ExportTraceServiceRequest]

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        type(self).requests.append(req)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def otlp_receiver():
    handler = type("Receiver", (_Receiver,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    server.shutdown()
    server.server_close()


async def test_otlp_spans_reach_a_local_receiver_with_the_same_tree(otlp_receiver, monkeypatch,
                                                                   tmp_path):
    url, requests = otlp_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    tracing = Tracing(spans_db=tmp_path / "spans.db")
    assert tracing.otlp and "OTLP/HTTP" in tracing.where()
    results = await two_calls(tracing)
    spans = [s for r in requests for rs in r.resource_spans for ss in rs.scope_spans
             for s in ss.spans]
    resources = {a.key: a.value.string_value for r in requests for rs in r.resource_spans
                 for a in rs.resource.attributes}
    assert resources["service.name"] == "telewire"
    db = open_db(tmp_path / "spans.db")
    for result in results:
        (roots,) = call_rows(db, result.call_sid)
        trace_id = bytes.fromhex(roots[0].trace_id)
        mine = [s for s in spans if s.trace_id == trace_id]
        (root,) = [s for s in mine if not s.parent_span_id]
        attrs = {a.key: a.value.string_value for a in root.attributes}
        assert attrs["telewire.call_sid"] == result.call_sid
        assert attrs["telewire.stream_sid"] == result.stream_sid
        tree = {(s.span_id.hex(), s.parent_span_id.hex() or None, s.name) for s in mine}
        stored = {(s.span_id, s.parent_id, s.name) for s in _all(roots[0])}
        assert tree == stored


@pytest.mark.slow
async def test_reconnect_and_handover_are_each_a_new_model_session(tmp_path):
    """A dropped model connection (reconnect), then an operator's voice change (steer, then a
    handover): three model.session children of the call, and a steer span."""
    import asyncio

    import aiohttp

    token = "operator-token-for-tests"
    tracing = Tracing(spans_db=tmp_path / "spans.db", otlp=False)
    async with FakeRealtimeServer(mode="talk", talk_speed=0, response_audio_ms=500,
                                  talk_after_appends=20) as fake:
        srv = TelewireServer(
            load_settings(host="127.0.0.1", port=0, operator_token=token),
            load_graph(None, ["rt.config.provider=openai", f"rt.config.url={fake.url}",
                              "rt.config.transcription_model="]),
            CarrierRegistry(), tracing=tracing)
        await srv.start()
        sim = CallSimulator(f"ws://127.0.0.1:{srv.port}/media/twilio", drain_s=1.0)
        call = asyncio.create_task(sim.run(SILENCE * 6000))
        try:
            first = await fake.wait_for_connection(0)
            while not first.responses or first.responses[0]["status"] != "completed":
                await asyncio.sleep(0.02)
            await first.drop()
            second = await fake.wait_for_connection(1, timeout=5)
            while not second.responses or second.responses[0]["status"] != "completed":
                await asyncio.sleep(0.02)  # the new session has spoken: a voice needs a handover
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{srv.port}/api/calls/twilio/{sim.call_sid}/steer"
                async with http.post(url, json={"voice": "cedar", "instructions": "be brief"},
                                     headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 200
            await fake.wait_for_connection(2, timeout=10)
            result = await call
        finally:
            await srv.stop(drain_timeout_s=1)
    tracing.shutdown()
    (roots,) = call_rows(open_db(tmp_path / "spans.db"), result.call_sid)
    (root,) = roots
    sessions = sorted((s for s in root.children if s.name == "model.session"),
                      key=lambda s: s.start_ns)
    assert [s.attributes["telewire.session.kind"] for s in sessions] == [
        "connect", "reconnect", "handover"]
    assert root.attributes["telewire.model.sessions"] == 3
    (steer,) = [s for s in root.children if s.name == "steer"]
    assert steer.attributes["telewire.steer.source"] == "operator"
    assert steer.attributes["telewire.steer.voice"] == "cedar"
    assert steer.attributes["telewire.steer.instructions_chars"] == len("be brief")
    assert "telewire.content.steer.instructions" not in steer.attributes
