"""``GET /metrics`` over real sockets, parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from telewire.testing.fake_realtime import FakeRealtimeServer
from telewire.testing.simulator import CallSimulator

OPERATOR = "operator-token-metrics"
SCRAPER = "scraper-token-metrics"
SILENCE = b"\xff" * 8  # 1 ms


@pytest.fixture
def server(monkeypatch, telewire_server):
    for name in ("TELEWIRE_TWILIO_AUTH_TOKEN", "TELEWIRE_OPERATOR_TOKEN",
                 "TELEWIRE_METRICS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return telewire_server


async def scrape(port: int, token: str) -> dict[str, list]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics",
                            headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200, await r.text()
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await r.text()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(families: dict[str, list], family: str, sample: str | None = None, **labels: str):
    for s in families[family]:
        if (sample is None or s.name == sample) and all(s.labels.get(k) == v
                                                         for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {sample or family} {labels} in {families[family]}")


async def test_metrics_need_a_token_and_the_scraper_token_opens_nothing_else(server):
    srv = await server()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{srv.port}/metrics") as r:
            assert r.status == 404  # no token configured: off
    srv = await server(operator_token=OPERATOR, metrics_token=SCRAPER)
    async with aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{srv.port}"
        async with http.get(f"{base}/metrics") as r:
            assert r.status == 401
        async with http.get(f"{base}/metrics", headers={"Authorization": "Bearer x"}) as r:
            assert r.status == 401
        async with http.get(f"{base}/api/calls",
                            headers={"Authorization": f"Bearer {SCRAPER}"}) as r:
            assert r.status == 401  # the scraper's token lists no calls
    families = await scrape(srv.port, OPERATOR)
    assert value(families, "telewire_live_calls") == 0
    assert value(await scrape(srv.port, SCRAPER), "telewire_max_calls") == 500


async def test_metrics_count_calls_frames_interrupts_and_time_to_first_audio(server):
    async with FakeRealtimeServer(mode="talk", talk_speed=2.0, response_audio_ms=3000,
                                  talk_after_appends=25) as fake:
        srv = await server("rt.config.provider=openai", f"rt.config.url={fake.url}",
                           "rt.config.transcription_model=", metrics_token=SCRAPER)
        sim = CallSimulator(f"ws://127.0.0.1:{srv.port}/media/twilio", dtmf=[(1200, "*")],
                            drain_s=0.5)
        running = asyncio.create_task(sim.run(SILENCE * 1600))
        while not srv.calls:
            await asyncio.sleep(0.01)
        during = await scrape(srv.port, SCRAPER)
        assert value(during, "telewire_live_calls") == 1
        result = await running
        for _ in range(100):
            if not srv.calls:
                break
            await asyncio.sleep(0.02)
        # a second call, refused: no start event in time is not a refusal, a bad id is
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://127.0.0.1:{srv.port}/media/twilio") as ws:
                await ws.send_str('{"event":"start","streamSid":"MZ' + "0" * 32 + '","start":'
                                  '{"streamSid":"MZ' + "0" * 32 + '","callSid":"CA/../x"}}')
                await ws.receive()
        for _ in range(100):
            if not srv.calls:
                break
            await asyncio.sleep(0.02)
        after = await scrape(srv.port, SCRAPER)
    assert result.clears == 1
    assert value(after, "telewire_live_calls") == 0
    assert value(after, "telewire_calls_ended", reason="carrier_stop") == 1
    assert value(after, "telewire_calls_ended", reason="carrier_protocol_error") == 1
    assert value(after, "telewire_frames_in", "telewire_frames_in_total") == result.sent_frames
    assert value(after, "telewire_frames_out", "telewire_frames_out_total") == \
        result.received_frames
    assert value(after, "telewire_interrupts", "telewire_interrupts_total", source="dtmf") == 1
    assert value(after, "telewire_barge_in_reaction_seconds",
                 "telewire_barge_in_reaction_seconds_count") == 1
    assert value(after, "telewire_model_first_audio_seconds",
                 "telewire_model_first_audio_seconds_count") >= 1
    first_audio = value(after, "telewire_model_first_audio_seconds",
                        "telewire_model_first_audio_seconds_sum")
    assert 0 < first_audio < 60
    assert value(after, "telewire_dropped_frames", "telewire_dropped_frames_total",
                 why="malformed") >= 1
    assert value(after, "telewire_model_reconnects", "telewire_model_reconnects_total") == 0
    # the spool is the process's: other tests' failing stores count too, so compare
    assert value(after, "telewire_store_failures", "telewire_store_failures_total") == \
        value(during, "telewire_store_failures", "telewire_store_failures_total")
    assert "telewire_spool_archives" in after
    assert value(after, "telewire_cost_usd", "telewire_cost_usd_total") > 0  # priced usage


async def test_refusals_are_counted_by_why(server):
    srv = await server(max_connections_per_ip=1, metrics_token=SCRAPER)
    async with aiohttp.ClientSession() as http:
        url = f"ws://127.0.0.1:{srv.port}/media/twilio"
        async with http.ws_connect(url):
            with pytest.raises(aiohttp.WSServerHandshakeError):
                async with http.ws_connect(url):
                    pass
    families = await scrape(srv.port, SCRAPER)
    assert value(families, "telewire_calls_refused", why="connections_per_ip") == 1


async def test_span_drops_are_exported_when_the_server_traces(tmp_path, monkeypatch):
    from telewire.graph import load_graph
    from telewire.registry import CarrierRegistry
    from telewire.server import TelewireServer
    from telewire.settings import load_settings
    from telewire.tracing import Tracing

    monkeypatch.delenv("TELEWIRE_TWILIO_AUTH_TOKEN", raising=False)
    tracing = Tracing(spans_db=tmp_path / "spans.db", otlp=False)
    srv = TelewireServer(load_settings(host="127.0.0.1", port=0, metrics_token=SCRAPER),
                         load_graph(None), CarrierRegistry(), tracing=tracing)
    await srv.start()
    try:
        await CallSimulator(f"ws://127.0.0.1:{srv.port}/media/twilio", pace=0,
                            expect_echo=True).run(b"\x01" * 1600)
        families = await scrape(srv.port, SCRAPER)
    finally:
        await srv.stop(drain_timeout_s=1)
        tracing.shutdown()
    assert value(families, "telewire_spans_dropped", "telewire_spans_dropped_total") == 0
