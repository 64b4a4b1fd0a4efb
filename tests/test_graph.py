"""Graph files: loading, precise rejection, overrides, version pins, and cheap wiring."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from telewire.errors import ConfigError, GraphError
from telewire.graph import build_graph, default_graph_path, load_graph

DEFAULT = default_graph_path().read_text()


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "graph.toml"
    p.write_text(textwrap.dedent(text))
    return p


def test_default_graph_loads_with_its_three_nodes():
    g = load_graph()
    assert {n: s.type for n, s in g.nodes.items()} == {
        "tel_in": "carrier_in", "rt": "realtime_agent", "tel_out": "carrier_out",
        "recorder": "recorder"}
    assert "rt.audio_out -> tel_out.audio_in" in [str(e) for e in g.edges]
    assert g.nodes["rt"].config.provider == "echo"


def test_overrides_set_typed_values():
    g = load_graph(None, ["rt.config.provider=openai", "rt.config.connect_timeout_s=2.5",
                          "tel_in.config.interrupt_dtmf_digit=", "rt.config.url=ws://127.0.0.1:9/v1/realtime"])
    assert g.nodes["rt"].config.provider == "openai"
    assert g.nodes["rt"].config.connect_timeout_s == 2.5
    assert g.nodes["tel_in"].config.interrupt_dtmf_digit == ""
    assert g.nodes["rt"].config.url == "ws://127.0.0.1:9/v1/realtime"


@pytest.mark.parametrize("override, fragment", [
    ("rt.provider=x", "expected NODE.config.KEY=VALUE"),
    ("nope.config.x=1", "has no node 'nope'"),
    ("rt.config.provider", "expected NODE.config.KEY=VALUE"),
])
def test_bad_overrides(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_graph(None, [override])


def test_unknown_node_type_names_file_and_node(tmp_path):
    p = write(tmp_path, DEFAULT.replace('type = "realtime_agent"', 'type = "realtime_agnet"'))
    with pytest.raises(GraphError) as info:
        load_graph(p)
    msg = str(info.value)
    assert str(p) in msg and "node 'rt'" in msg and "unknown node type 'realtime_agnet'" in msg
    assert "realtime_agent" in msg  # lists what is installed


def test_unknown_port_names_file_node_and_port(tmp_path):
    p = write(tmp_path, DEFAULT.replace('"rt.audio_out -> tel_out.audio_in"', '"rt.audio_out -> tel_out.sound_in"'))
    with pytest.raises(GraphError) as info:
        load_graph(p)
    msg = str(info.value)
    assert str(p) in msg and "node 'tel_out'" in msg and "no input port 'sound_in'" in msg
    assert "audio_in" in msg


def test_output_used_as_input_is_rejected(tmp_path):
    p = write(tmp_path, DEFAULT.replace('"tel_in.audio -> rt.audio_in"', '"rt.audio_in -> tel_in.audio"'))
    with pytest.raises(GraphError, match="node 'rt' .type 'realtime_agent'. has no output port 'audio_in'"):
        load_graph(p)


def test_mistyped_edge_is_rejected(tmp_path):
    p = write(tmp_path, DEFAULT.replace('"tel_in.dtmf -> rt.dtmf_in"', '"tel_in.dtmf -> rt.audio_in"'))
    with pytest.raises(GraphError) as info:
        load_graph(p)
    msg = str(info.value)
    assert str(p) in msg and "rt.audio_in accepts AudioFrame but tel_in.dtmf emits DTMFFrame" in msg


def test_bad_config_value_names_node_key_and_value(tmp_path):
    p = write(tmp_path, DEFAULT.replace('interrupt_dtmf_digit = "*"', 'interrupt_dtmf_digit = "X"'))
    with pytest.raises(GraphError) as info:
        load_graph(p)
    msg = str(info.value)
    assert str(p) in msg and "tel_in.config.interrupt_dtmf_digit" in msg and "'X'" in msg


def test_unknown_config_key_is_rejected(tmp_path):
    p = write(tmp_path, DEFAULT.replace('provider = "echo"', 'provider = "echo"\ntemperature = 0.8'))
    with pytest.raises(GraphError, match="rt.config.temperature: Extra inputs are not permitted"):
        load_graph(p)


def test_version_pin_names_installed_version(tmp_path):
    p = write(tmp_path, DEFAULT.replace('type = "realtime_agent"', 'type = "realtime_agent"\nversion = ">=1.1,<2"'))
    with pytest.raises(GraphError) as info:
        load_graph(p)
    msg = str(info.value)
    assert "node 'rt'" in msg and "telewire 0.1.0" in msg and ">=1.1,<2" in msg
    ok = write(tmp_path, DEFAULT.replace('type = "realtime_agent"', 'type = "realtime_agent"\nversion = ">=0.1,<1"'))
    assert load_graph(ok).nodes["rt"].version == ">=0.1,<1"
    bad = write(tmp_path, DEFAULT.replace('type = "realtime_agent"', 'type = "realtime_agent"\nversion = "one"'))
    with pytest.raises(GraphError, match="'one' is not a version range"):
        load_graph(bad)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read graph file"):
        load_graph(tmp_path / "none.toml")
    p = write(tmp_path, "[nodes\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_graph(p)
    with pytest.raises(GraphError, match="no \\[nodes.<name>\\] tables"):
        build_graph({"edges": []}, source="g.toml")
    with pytest.raises(GraphError, match="unknown top-level keys \\['node'\\]"):
        build_graph({"node": {}}, source="g.toml")
    with pytest.raises(GraphError, match="edge 'a->b' is not of the form"):
        build_graph({"nodes": {"tel_in": {"type": "carrier_in"}}, "edges": ["a->b"]}, source="g.toml")


def test_wiring_is_direct_calls_and_observers_see_frames():
    """A port with one target is wired straight to the target's handler (no task, no queue)."""
    import asyncio

    from telewire.frames import AudioFrame
    from telewire.graph import CallGraph

    from telewire.registry import CarrierRegistry

    carrier = CarrierRegistry().get("twilio")
    import tomllib

    raw = tomllib.loads(DEFAULT)
    del raw["nodes"]["recorder"]  # it observes every port; this test is about plain wiring
    g = build_graph(raw, source="no-recorder.toml")
    seen = []

    async def main():
        call = CallGraph(g, carrier, send=None)  # type: ignore[arg-type]
        rt, tel_out = call.nodes["rt"], call.nodes["tel_out"]
        assert rt._out["audio_out"] == tel_out.on_audio_in
        observed = CallGraph(g, carrier, send=None,  # type: ignore[arg-type]
                             observers={("rt", "audio_out"): [lambda n, p, f: seen.append((n, p, f))]})
        tel_out2 = observed.nodes["tel_out"]
        tel_out2._ctx.started = True
        sent = []

        async def send(m):
            sent.append(m)

        tel_out2._send = send
        tel_out2._carrier = type("C", (), {"wrap_audio": lambda self, c, f: f.b64,
                                           "build_mark": lambda self, c, name: f"mark {name}"})()
        await observed.nodes["rt"].emit("audio_out", AudioFrame(payload="AAAA", track="outbound"))
        assert sent == ["AAAA", "mark tw-1"]

    asyncio.run(main())
    assert seen and seen[0][:2] == ("rt", "audio_out")


def test_envelope_spec_by_preset_name_is_compiled_once(tmp_path):
    p = write(tmp_path, DEFAULT.replace('interrupt_dtmf_digit = "*"',
                                        'interrupt_dtmf_digit = "*"\nenvelope_spec = "twilio"'))
    g = load_graph(p)
    assert g.envelope is not None and g.envelope.has_marks and g.envelope.has_clear


def test_envelope_spec_errors_name_file_node_and_field(tmp_path):
    p = write(tmp_path, DEFAULT.replace('interrupt_dtmf_digit = "*"',
                                        'interrupt_dtmf_digit = "*"\nenvelope_spec = "no-such-preset"'))
    with pytest.raises(GraphError, match="tel_in.config.envelope_spec = 'no-such-preset' is neither an envelope preset .*twilio"):
        load_graph(p)
    inline = DEFAULT.replace('[nodes.tel_out]\ntype = "carrier_out"', '''[nodes.tel_out]
type = "carrier_out"
[nodes.tel_out.config.response_envelope_spec]
media = '{"t":"${payload}"}'
''').replace('interrupt_dtmf_digit = "*"', '''interrupt_dtmf_digit = "*"
[nodes.tel_in.config.envelope_spec]
events = { hi = "start", audio = "media" }
start = { stream_id = "id" }
media = { payload = "data" }
encodings = { pcmu = "alaw" }
''')
    with pytest.raises(GraphError) as info:
        load_graph(write(tmp_path, inline))
    assert "graph.toml" in str(info.value) and "encodings.pcmu" in str(info.value)
    good = load_graph(write(tmp_path, inline.replace('encodings = { pcmu = "alaw" }\n', '')))
    assert good.envelope.media(type("C", (), {"state": {}, "stream_id": "s", "call_id": ""})(),
                               __import__("telewire").AudioFrame(payload="AAAA")) == '{"t":"AAAA"}'
