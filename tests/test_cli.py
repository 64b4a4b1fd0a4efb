"""The telewire command: config show (secrets masked), --set, precise config errors, call."""

from __future__ import annotations

import json

from conftest import ServeProcess
from test_registry import run_cli

from telewire.wav import read_ulaw, write_ulaw_wav


def test_config_show_masks_secrets_and_applies_overrides(tmp_path):
    env = {"TELEWIRE_TWILIO_AUTH_TOKEN": "tok-very-secret", "OPENAI_API_KEY": "sk-very-secret",
           "TELEWIRE_NODES__RT__MODEL": "gpt-realtime-mini", "TELEWIRE_MAX_CALLS": "42"}
    proc = run_cli("config", "show", "--set", "rt.config.voice=cedar", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "very-secret" not in proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    rt = data["graph"]["nodes"]["rt"]["config"]
    assert rt["voice"] == "cedar" and rt["model"] == "gpt-realtime-mini"
    assert data["settings"]["max_calls"] == 42
    assert data["carriers"]["twilio"]["auth_token"] == "**********"
    assert data["provider_keys"]["openai_api_key"] == "**********"  # read through settings


def test_config_errors_name_file_node_and_value(tmp_path):
    graph = tmp_path / "g.toml"
    graph.write_text('[nodes.tel_in]\ntype = "carrier_in"\n[nodes.tel_in.config]\nmax_errors = -1\n')
    proc = run_cli("config", "show", "--config", str(graph))
    assert proc.returncode == 2
    assert str(graph) in proc.stderr and "tel_in.config.max_errors" in proc.stderr and "-1" in proc.stderr
    proc = run_cli("serve", "--set", "rt.config.provider=carrier-pigeon", "--port", "0")
    assert proc.returncode == 2
    assert "rt.config.provider: Value error, unknown provider 'carrier-pigeon'" in proc.stderr
    bad = run_cli("config", "show", env={"TELEWIRE_PORT": "eighty"})
    assert bad.returncode == 2 and "TELEWIRE_PORT" in bad.stderr and "'eighty'" in bad.stderr


def test_call_command_plays_a_wav_and_saves_what_comes_back(tmp_path):
    audio = bytes(range(256)) * 10
    wav = write_ulaw_wav(tmp_path / "in.wav", audio)
    serve = ServeProcess()
    try:
        proc = run_cli("call", serve.url, str(wav), "--pace", "0", "--drain", "3",
                       "--out", str(tmp_path / "out"), "--param", "tenant=acme")
    finally:
        serve.stop()
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["sent_frames"] == 16 and summary["received_frames"] == 16
    assert read_ulaw(summary["outputs"]["agent_audio_wav"]) == audio


def test_call_command_goes_through_the_answer_webhook_when_signatures_are_on(tmp_path):
    audio = bytes(range(256)) * 10
    wav = write_ulaw_wav(tmp_path / "in.wav", audio)
    secret = {"TELEWIRE_TWILIO_AUTH_TOKEN": "cli-test-auth-token"}
    serve = ServeProcess(env=secret)
    try:
        answer = f"http://127.0.0.1:{serve.port}/answer/twilio"
        proc = run_cli("call", answer, str(wav), "--pace", "0", "--drain", "3",
                       "--out", str(tmp_path / "out"), env=secret)
        straight = run_cli("call", serve.url, str(wav), "--pace", "0", "--drain", "1",
                           "--out", str(tmp_path / "out2"), env=secret)
    finally:
        log = serve.stop()
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["received_frames"] == 16
    # signed, but without the call token the answer webhook hands out: refused
    assert json.loads(straight.stdout)["received_frames"] == 0, straight.stdout
    assert "carries no telewire_call_token" in log
