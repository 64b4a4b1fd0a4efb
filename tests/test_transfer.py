"""transfer_call dials only the configured transfer targets: the patterns, the target's shape,
the model's view of a refusal, and the warning when the tool is offered with none."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from telewire.carrier import Capabilities
from telewire.errors import ConfigError
from telewire.realtime.base import ProviderConfig
from telewire.tools import ToolBox
from telewire.transfer import check_patterns, normalize, refusal


class _Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, fmt: str, *args: object) -> None:
        self.warnings.append(fmt.format(*args))


class _Call:
    """A call on a carrier that can transfer; records what it was asked to dial."""

    def __init__(self) -> None:
        self.transfers: list[str] = []
        self.log = _Log()
        self.carrier = type("carrier", (), {"capabilities": Capabilities(transfer=True)})
        self.context = type("context", (), {"capabilities": None})

    async def transfer(self, target: str) -> str | None:
        self.transfers.append(target)
        return None


def toolbox(*targets: str) -> tuple[ToolBox, _Call]:
    call = _Call()
    return ToolBox([], ["end_call", "transfer_call"], call, transfer_targets=targets), call


async def ask(box: ToolBox, target: object) -> dict:
    out = await box.run("transfer_call", json.dumps({"target": target}))
    return json.loads(out.output)


@pytest.mark.parametrize("target", ["+15551234567", "sip:support@pbx.example.com", "anything"])
async def test_with_no_targets_configured_every_transfer_is_refused(target):
    box, call = toolbox()
    assert "transfer_call" in [d["name"] for d in box.definitions()]
    answer = await ask(box, target)
    assert call.transfers == []
    assert answer["error"].startswith("transfer refused: transfers are not set up for this line")
    (line,) = call.log.warnings
    assert line.startswith(f"transfer_call to {target!r} refused: ")


@pytest.mark.parametrize("targets, target, dialled", [
    (["+15551234567"], "+15551234567", "+15551234567"),
    (["+15551234567"], "+1 (555) 123-4567", "+15551234567"),  # as a model may say it
    (["+1555*"], "+15559990000", "+15559990000"),
    (["+44*", "+1555*"], "+15550000001", "+15550000001"),
    (["sip:*@pbx.example.com"], "sip:support@pbx.example.com", "sip:support@pbx.example.com"),
    (["sips:front-desk@pbx.example.com:5061"], "sips:front-desk@pbx.example.com:5061",
     "sips:front-desk@pbx.example.com:5061"),
])
async def test_targets_on_the_allow_list_are_dialled(targets, target, dialled):
    box, call = toolbox(*targets)
    out = await box.run("transfer_call", json.dumps({"target": target}))
    assert json.loads(out.output) == {"status": "transferred"} and not out.respond
    assert call.transfers == [dialled] and not call.log.warnings


@pytest.mark.parametrize("targets, target", [
    (["+1555*"], "+19005550100"),                                  # another number
    (["+15551234567"], "+155512345678"),                           # exact means exact
    (["sip:*@pbx.example.com"], "sip:x@evil.example"),             # another host
    (["sip:*@pbx.example.com"], "sip:x@evil.example@pbx.example.com"),   # a second @
    (["sip:*@pbx.example.com"], "sip:x@pbx.example.com;maddr=evil.example"),  # URI parameter
    (["sip:*@pbx.example.com"], "sip:x@pbx.example.com.evil.example"),
    (["sip:*@pbx.example.com"], "sip:x@pbx.example.com?Route=evil"),  # a header
    (["+1555*"], "+1555123\n4567"),
    (["+1555*"], "tel:+15551234567"),
    (["+1555*"], "15551234567"),                                   # no +
    (["+1555*"], 15551234567),                                     # not a string
    (["+1555*"], None),
    (["+1555*"], ""),
])
async def test_anything_else_is_refused_and_never_reaches_the_carrier(targets, target):
    box, call = toolbox(*targets)
    answer = await ask(box, target)
    assert answer["error"].startswith("transfer refused: ") and call.transfers == []
    (line,) = call.log.warnings
    assert "\n" not in line, "the model's target reached the log unescaped"


def test_normalize_accepts_only_e164_numbers_and_plain_sip_addresses():
    assert normalize(" +1 555-123-4567 ") == "+15551234567"
    assert normalize("sip:alice@10.0.0.1:5060") == "sip:alice@10.0.0.1:5060"
    for bad in ("+0123", "+1234567890123456", "sip:@host", "sip:a@", "sip:a b@host",
                "sip:a@host;transport=tcp", "SIP:a@host", "mailto:a@host"):
        assert normalize(bad) is None, bad


def test_refusal_reports_the_normalized_target_when_allowed():
    assert refusal("+1 555 000 1111", ["+1555*"]) == (None, "+15550001111")


@pytest.mark.parametrize("pattern", ["15551234567", "tel:+1555*", "sip:*@pbx example.com",
                                     "sip:*@pbx.example.com;transport=tls", "*", "", "+1555/*"])
def test_a_pattern_that_no_target_could_match_is_a_config_error(pattern):
    with pytest.raises(ValueError, match="transfer target pattern"):
        check_patterns([pattern])
    with pytest.raises(ValidationError, match="transfer_targets"):
        ProviderConfig(transfer_targets=[pattern])
    with pytest.raises(ConfigError, match=r"rt.config.transfer_targets: transfer target pattern"):
        ToolBox([], ["transfer_call"], _Call(), transfer_targets=[pattern])


def test_offering_transfer_call_with_no_targets_warns_when_the_graph_loads(log_lines):
    from telewire.graph import load_graph

    load_graph(None, ['rt.config.provider="openai"',
                      'rt.config.builtin_tools=["end_call", "transfer_call"]'])
    assert any("offers transfer_call but transfer_targets is empty" in line
               for line in log_lines)
    log_lines.clear()
    load_graph(None, ['rt.config.provider="openai"',
                      'rt.config.builtin_tools=["end_call", "transfer_call"]',
                      'rt.config.transfer_targets=["+1555*"]'])
    load_graph(None)
    assert not any("transfer_targets" in line for line in log_lines)
