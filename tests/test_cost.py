"""Cost: provider usage x the price table = exact USD (sans-I/O), and the usage a session reads
from the fake model's ``response.done``.

Every expected figure is worked out by hand here from the published rates (USD per 1M tokens),
not by calling the code under test twice.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest
from openai.types.realtime.realtime_response_usage import RealtimeResponseUsage
from openai_ga import assert_ga, assert_model
from pydantic import ValidationError

from telewire.cost import CallCost, ModelPrice, PriceTable, Usage, call_cost, default_prices
from telewire.errors import ConfigError
from telewire.frames import StartFrame, UsageFrame
from telewire.nodes.realtime_agent import RealtimeAgentConfig
from telewire.realtime.base import ProviderConfig, create_session
from telewire.testing.fake_realtime import FakeRealtimeServer

#: a GA response.done usage with cached tokens of both modalities
GA_USAGE = {
    "total_tokens": 2150, "input_tokens": 1800, "output_tokens": 350,
    "input_token_details": {"text_tokens": 1200, "audio_tokens": 600, "image_tokens": 0,
                            "cached_tokens": 1400,
                            "cached_tokens_details": {"text_tokens": 1000, "audio_tokens": 400,
                                                      "image_tokens": 0}},
    "output_token_details": {"text_tokens": 50, "audio_tokens": 300},
}
# gpt-realtime: text 4.00 / cached 0.40 / out 16.00, audio 32.00 / cached 0.40 / out 64.00
GA_USAGE_USD = (Decimal(200) * Decimal("4.00")        # uncached text input
                + Decimal(1000) * Decimal("0.40")     # cached text input
                + Decimal(200) * Decimal("32.00")     # uncached audio input
                + Decimal(400) * Decimal("0.40")      # cached audio input
                + Decimal(50) * Decimal("16.00")      # text output
                + Decimal(300) * Decimal("64.00")     # audio output
                ) / Decimal(1_000_000)


def test_the_usage_fixture_is_a_published_ga_usage_object():
    assert_model(RealtimeResponseUsage, GA_USAGE)


def test_ga_usage_with_cached_tokens_costs_exactly_the_hand_computed_usd():
    usage = Usage.from_realtime(GA_USAGE)
    assert (usage.cached_text_tokens, usage.cached_audio_tokens) == (1000, 400)
    cost = CallCost.for_model("openai", "gpt-realtime")
    assert cost.add(usage) == GA_USAGE_USD == Decimal("0.02776")
    assert cost.usd == Decimal("0.02776") and cost.micro_usd == 27760
    # counting cached tokens twice (full rate for all input, plus the cached rate) would give more
    twice = GA_USAGE_USD + (1000 * Decimal("4.00") + 400 * Decimal("32.00")) / 1_000_000
    assert cost.usd != twice


def test_a_snapshot_name_prices_as_its_model_and_costs_add_up_exactly():
    cost = CallCost.for_model("openai", "gpt-realtime-2025-08-28")
    for _ in range(3):
        cost.add(Usage.from_realtime(GA_USAGE))
    assert cost.usd == 3 * GA_USAGE_USD
    assert cost.usage.cached_audio_tokens == 1200 and cost.responses == 3
    assert cost.as_dict()["usd"] == "0.08328"
    assert "gpt-realtime" in cost.as_dict()["price_source"]


def test_cached_tokens_without_their_split_go_to_text_first():
    usage = Usage.from_realtime({"input_token_details": {"text_tokens": 10, "audio_tokens": 30,
                                                         "cached_tokens": 25},
                                 "output_token_details": {"text_tokens": 5, "audio_tokens": 15}})
    assert (usage.cached_text_tokens, usage.cached_audio_tokens) == (10, 15)
    expected = (10 * Decimal("0.40") + 15 * Decimal("32.00") + 15 * Decimal("0.40")
                + 5 * Decimal("16.00") + 15 * Decimal("64.00")) / 1_000_000
    assert default_prices().lookup("openai", "gpt-realtime").cost(usage) == expected


def test_cached_tokens_are_never_more_than_the_input():
    with pytest.raises(ValueError, match="subset"):
        Usage(input_audio_tokens=5, cached_audio_tokens=6)
    clamped = Usage.from_realtime({"input_token_details": {
        "audio_tokens": 5, "cached_tokens": 9,
        "cached_tokens_details": {"audio_tokens": 9}}})
    assert clamped.cached_audio_tokens == 5 and clamped.cached_tokens == 5


def test_duration_billed_usage_costs_exactly_its_seconds_at_the_per_minute_rate():
    # gpt-realtime-whisper: $0.017 per minute of audio
    cost = CallCost.for_model("openai", "gpt-realtime-whisper")
    assert cost.add(Usage(kind="seconds", seconds=90)) == Decimal("0.0255")  # 1.5 min x 0.017
    assert cost.add(Usage(kind="seconds", seconds=Decimal("12.5"))) == (
        Decimal("12.5") * Decimal("0.017") / 60)
    assert cost.usd == Decimal("0.0255") + Decimal("12.5") * Decimal("0.017") / 60
    assert cost.usage.seconds == Decimal("102.5")


def test_a_duration_priced_provider_plugs_in_through_the_frame_and_an_override():
    """A provider that bills by time (GPT-Live, Deepgram …) emits UsageFrame(billing="seconds");
    its price comes from config until the shipped table has it."""
    config = RealtimeAgentConfig(prices={"gpt-live-1": {"per_minute": "0.05",
                                                         "source": "test", "read_on": "2026-12-07"}})
    cost = CallCost.for_model("echo", "gpt-live-1", config.price_table)
    frame = UsageFrame(provider="live", model="gpt-live-1", billing="seconds", seconds=37.5)
    assert cost.add(Usage.from_frame(frame)) == Decimal("0.03125")  # 37.5 s x $0.05 / 60
    assert cost.usd == Decimal("0.03125")
    with pytest.raises(ValueError, match="billing"):
        UsageFrame(provider="live", billing="minutes")


def test_a_model_missing_from_the_table_has_an_unknown_cost_and_warns_once(log_lines):
    first = CallCost.for_model("openai", "some-model-nobody-priced")
    second = CallCost.for_model("openai", "some-model-nobody-priced")
    assert first.add(Usage.from_realtime(GA_USAGE)) is None
    assert first.usd is None and second.usd is None and first.usd_float is None
    assert first.as_dict()["usd"] is None and first.usage.input_text_tokens == 1200
    warnings = [line for line in log_lines if "some-model-nobody-priced" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING")


def test_usage_needing_a_rate_the_table_lacks_is_unknown_not_guessed(log_lines):
    # gpt-realtime-mini has no published cached-text rate in the shipped table
    cost = CallCost.for_model("openai", "gpt-realtime-mini")
    assert cost.add(Usage(input_audio_tokens=100, output_audio_tokens=10)) == (
        100 * Decimal("10.00") + 10 * Decimal("20.00")) / 1_000_000
    assert cost.add(Usage(input_text_tokens=100, cached_text_tokens=50)) is None
    assert cost.usd is None  # unknown from then on: never a partial figure as the total
    assert any("text_cached_input" in line for line in log_lines)


def test_the_shipped_table_states_source_and_date_of_every_entry():
    table = default_prices()
    for model in table.models("openai"):
        price = table.lookup("openai", model)
        assert price is not None
        assert price.source.startswith("https://") and price.read_on == "2026-12-07", model
    assert table.lookup("azure", "my-deployment") is None  # no published Azure list price
    echo = table.lookup("echo", "anything")
    assert echo is not None and echo.cost(Usage.from_realtime(GA_USAGE)) == 0


def test_config_prices_and_prices_file_override_the_shipped_table(tmp_path: Path):
    file = tmp_path / "prices.toml"
    file.write_text('[azure."my-deployment"]\nsource = "our contract"\nread_on = "2026-12-01"\n'
                    "audio_input = 30\naudio_cached_input = 0.35\naudio_output = 60\n")
    config = RealtimeAgentConfig(provider="azure", model="my-deployment", prices_file=str(file))
    price = config.price_table.lookup("azure", "my-deployment")
    assert price is not None and price.audio_cached_input == Decimal("0.35")
    assert price.cost(Usage(input_audio_tokens=1000, cached_audio_tokens=1000)) == Decimal(
        "0.00035")
    inline = RealtimeAgentConfig(provider="openai",
                                 prices={"gpt-realtime": {"audio_output": 1}})
    # an override replaces the entry whole: rates it does not give are unknown
    assert inline.price_table.lookup("openai", "gpt-realtime").audio_input is None
    assert default_prices().lookup("openai", "gpt-realtime").audio_input == Decimal("32.00")


def test_bad_prices_are_config_errors_naming_the_key(tmp_path: Path):
    with pytest.raises(ValidationError, match="unknown price key.*audio_inptu"):
        RealtimeAgentConfig(prices={"m": {"audio_inptu": 1}})
    with pytest.raises(ValidationError, match="audio_input must be a number >= 0"):
        RealtimeAgentConfig(prices={"m": {"audio_input": -1}})
    with pytest.raises(ValidationError, match="prices_file"):
        RealtimeAgentConfig(prices_file=str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="currency"):
        PriceTable.parse({"currency": "EUR"}, where="x")
    with pytest.raises(ConfigError, match="must be a number"):
        ModelPrice.parse("m", {"text_input": True}, where="x")


def test_listeners_see_the_running_figure_and_call_cost_finds_it():
    seen: list[Decimal | None] = []
    cost = CallCost.for_model("openai", "gpt-realtime")
    cost.subscribe(lambda c: seen.append(c.usd))
    cost.subscribe(lambda c: 1 / 0)  # a broken listener is logged, not fatal
    cost.add(Usage.from_realtime(GA_USAGE))
    assert seen == [GA_USAGE_USD]

    class Call:
        nodes = {"tel_in": object(), "rt": type("Node", (), {"cost": cost})()}

    assert call_cost(Call()) == [cost]


# -- the usage a session reads from the fake model ------------------------------------------------


async def test_a_session_reports_the_fake_models_cached_usage_and_it_prices_exactly():
    """Two talk-mode responses: the second reads the first one's input again, which the fake
    reports as cached (a subset of the input), split by modality."""
    frames: list[UsageFrame] = []

    async def sink(frame) -> None:
        if isinstance(frame, UsageFrame):
            frames.append(frame)

    async with FakeRealtimeServer(mode="talk", talk_speed=0, response_audio_ms=500) as fake:
        session = create_session(ProviderConfig(provider="openai", url=fake.url), sink)
        await session.start(StartFrame(carrier="twilio", stream_id="MZ0001", call_id="CA0001"))
        conn = await fake.wait_for_connection()
        await conn.wait_for("session.update")
        try:
            for n in (1, 2):
                await conn.create_response()
                async with asyncio.timeout(10):
                    while len(frames) < n:
                        await asyncio.sleep(0.01)
            await conn.start_response()
            await conn.finish_response("Bye.", usage=GA_USAGE)
            async with asyncio.timeout(10):
                while len(frames) < 3:
                    await asyncio.sleep(0.01)
        finally:
            await session.close()
        for event in fake.received:
            assert_ga(event, side="client")
    first, second, known = frames
    assert first.input_cached_tokens == 0
    assert second.input_cached_tokens > 0
    assert second.input_cached_text_tokens == first.input_text_tokens  # the same instructions
    assert second.input_cached_tokens == (second.input_cached_text_tokens
                                          + second.input_cached_audio_tokens)
    assert first.output_audio_tokens == 500 // 50  # 1 token per 50 ms of assistant audio
    assert (known.input_cached_text_tokens, known.input_cached_audio_tokens) == (1000, 400)
    cost = CallCost.for_model("openai", "gpt-realtime")
    assert cost.add(Usage.from_frame(known)) == GA_USAGE_USD
    u = Usage.from_frame(second)
    by_hand = ((u.input_text_tokens - u.cached_text_tokens) * Decimal("4.00")
               + u.cached_text_tokens * Decimal("0.40")
               + (u.input_audio_tokens - u.cached_audio_tokens) * Decimal("32.00")
               + u.cached_audio_tokens * Decimal("0.40")
               + u.output_text_tokens * Decimal("16.00")
               + u.output_audio_tokens * Decimal("64.00")) / 1_000_000
    assert cost.add(u) == by_hand


def test_the_example_in_docs_cost_md_loads_as_a_graph_config():
    import re
    import tomllib

    page = (Path(__file__).parent.parent / "docs" / "cost.md").read_text()
    example = re.search(r"```toml\n(.*?)```", page, re.S).group(1)
    config = RealtimeAgentConfig.model_validate(tomllib.loads(example)["nodes"]["rt"]["config"])
    assert config.max_cost_usd == Decimal("0.5") and config.max_call_seconds == 900
    price = config.price_table.lookup("openai", "gpt-realtime")
    assert price.source == "our contract, 2026-12" and price.audio_output == Decimal("64.00")
