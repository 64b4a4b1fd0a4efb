"""The provider contract: discovery through ``telewire.providers``, declared capabilities, and a
graph that asks for what its provider cannot do failing at load with node, provider and
capability named."""

from __future__ import annotations

import json
from importlib import metadata

import pytest

from telewire.carrier import Capabilities
from telewire.errors import ConfigError, GraphError
from telewire.frames import MediaFormat
from telewire.graph import load_graph
from telewire.nodes.realtime_agent import RealtimeAgentConfig
from telewire.realtime.base import ProviderCapabilities, RealtimeSession, provider_class, providers
from test_registry import fake_distribution, run_cli


def test_builtin_providers_are_entry_points_of_the_telewire_distribution():
    eps = {ep.name: ep.value for ep in metadata.distribution("telewire").entry_points
           if ep.group == "telewire.providers"}
    assert {"echo", "openai", "azure"} <= set(eps)
    found = providers()
    for name in eps:
        cls = found.loaded[name]
        assert issubclass(cls, RealtimeSession) and cls.name == name
        assert isinstance(cls.capabilities, ProviderCapabilities)
        assert found.infos[name].distribution == "telewire"


def test_base_module_knows_no_implementation():
    import telewire.realtime.base as base

    source = open(base.__file__).read()
    for impl in ("realtime.openai", "realtime.echo", "OpenAISession", "EchoSession"):
        assert impl not in source


def test_plugins_lists_providers_and_a_broken_one_with_its_error(tmp_path):
    fake_distribution(tmp_path, "telewire-badmodel", """
        [telewire.providers]
        badmodel = badmodel_provider:Session
        notasession = badmodel_provider:NotASession
        """, {"badmodel_provider": """
        raise ImportError("No module named 'grpc'")
        """})
    fake_distribution(tmp_path, "telewire-oddmodel", """
        [telewire.providers]
        oddmodel = oddmodel_provider:Session
        """, {"oddmodel_provider": """
        from telewire.realtime.base import RealtimeSession

        class Session(RealtimeSession):
            name = "oddmodel"
            capabilities = {"tools": True}   # not a ProviderCapabilities
        """})
    proc = run_cli("plugins", "--json", path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)["providers"]}
    assert rows["openai"]["status"] == "ok" and rows["openai"]["distribution"] == "telewire"
    assert rows["openai"]["version"] == metadata.version("telewire")
    assert rows["openai"]["capabilities"]["audio_formats"] == ["pcmu/8000"]
    assert rows["openai"]["capabilities"]["turn_model"] == "turn_based"
    bad = rows["badmodel"]
    assert bad["status"] == "error" and bad["distribution"] == "telewire-badmodel"
    assert "ImportError: No module named 'grpc'" in bad["error"]
    odd = rows["oddmodel"]
    assert odd["status"] == "error" and "not a telewire.ProviderCapabilities" in odd["error"]
    text = run_cli("plugins", path=tmp_path).stdout
    assert "providers:" in text and "badmodel" in text and "FAILED: ImportError" in text
    assert run_cli("plugins", "--strict", path=tmp_path).returncode == 1
    # the broken provider is named when a graph asks for it; the others still serve
    shown = run_cli("config", "show", "--set", "rt.config.provider=badmodel", path=tmp_path)
    assert shown.returncode != 0
    assert "unknown provider 'badmodel'" in shown.stderr
    assert "'badmodel' is installed but failed to load: ImportError" in shown.stderr
    assert run_cli("config", "show", "--set", "rt.config.provider=openai",
                   path=tmp_path).returncode == 0


def test_two_distributions_claiming_one_provider_name_load_neither(tmp_path):
    for dist in ("telewire-one", "telewire-two"):
        mod = dist.replace("-", "_")
        fake_distribution(tmp_path, dist, f"""
            [telewire.providers]
            twin = {mod}:Session
            """, {mod: """
            from telewire.realtime.base import RealtimeSession, ProviderCapabilities

            class Session(RealtimeSession):
                name = "twin"
                capabilities = ProviderCapabilities()
                async def start(self, start): pass
                async def send_audio(self, frame): pass
                async def close(self): pass
            """})
    rows = {r["name"]: r for r in
            json.loads(run_cli("plugins", "--json", path=tmp_path).stdout)["providers"]}
    assert rows["twin"]["status"] == "error" and "ConflictError" in rows["twin"]["error"]


@pytest.mark.parametrize(("config", "message"), [
    ({"tools": '[{name = "lookup", function = "os:getcwd"}]'},
     "provider 'echo' does not have capability 'tools' (asked for by rt.config.tools)"),
    ({"builtin_tools": ["end_call"]},
     "provider 'echo' does not have capability 'tools' (asked for by rt.config.builtin_tools)"),
    ({"require": ["truncate"]},
     "provider 'echo' does not have capability 'truncate' (asked for by rt.config.require)"),
    ({"require": ["voice_change"]},
     "provider 'echo' does not have capability 'voice_change'"),
    ({"provider": '"openai"', "require": ["full_duplex"]},
     "provider 'openai' is turn-based, not full-duplex"),
    ({"require": ["sings"]}, "unknown provider capability 'sings'; known: cancel, dtmf"),
    ({"options": "{depth = 3}"}, "provider 'echo' takes no options; got depth"),
])
def test_a_graph_asking_for_what_the_provider_cannot_do_fails_at_load(config, message):
    overrides = [f"rt.config.{k}={v if isinstance(v, str) else json.dumps(v)}"
                 for k, v in config.items()]
    with pytest.raises(GraphError) as info:
        load_graph(overrides=overrides)
    text = str(info.value)
    assert "default_graph.toml: node 'rt': invalid config" in text  # the file and the node
    assert message in text


def test_what_the_provider_can_do_loads():
    graph = load_graph(overrides=['rt.config.provider="openai"',
                                  'rt.config.require=["truncate", "tools", "turn_based"]',
                                  'rt.config.tools=[{name = "t", function = "os:getcwd"}]'])
    assert graph.nodes["rt"].config.require == ["truncate", "tools", "turn_based"]
    # the echo provider is offered no tools: end_call is the default only where tools exist
    assert isinstance(load_graph().nodes["rt"].config, RealtimeAgentConfig)


class _Carrier:
    """The facade shape Graph.check_carrier reads."""

    def __init__(self, name: str, fmt: MediaFormat) -> None:
        self.name = name
        self.capabilities = Capabilities(media_format=fmt)

    def capabilities_for(self, envelope: object) -> Capabilities:
        return self.capabilities


def test_a_carrier_whose_audio_the_provider_cannot_take_is_refused_naming_both():
    graph = load_graph(overrides=['rt.config.provider="openai"'])
    graph.check_carrier(_Carrier("ulaw", MediaFormat("pcmu", 8000)))  # passes through
    with pytest.raises(GraphError) as info:
        graph.check_carrier(_Carrier("wideband", MediaFormat("l16", 16000)))
    text = str(info.value)
    assert "node 'rt' (type 'realtime_agent')" in text
    assert "provider 'openai' takes pcmu/8000 unchanged (capability 'audio_formats')" in text
    assert "not the carrier's l16/16000" in text


def test_provider_class_names_the_installed_ones():
    with pytest.raises(ConfigError, match=r"unknown provider 'nope'; installed: .*openai"):
        provider_class("nope")
