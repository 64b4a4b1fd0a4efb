"""Secrets are never printed: ``telewire config show`` and every configuration error, run as the
real command in a child process (stdout and stderr both searched), plus the masking rules."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, SecretStr

from telewire.errors import ConfigError
from telewire.redact import MASK, is_secret_name, mask, mask_text, shown
from telewire.settings import ProviderKeys, ServerSettings, provider_keys, read_settings

from test_registry import run_cli

SECRET = "sk-live-X"


def printed(proc) -> str:
    return proc.stdout + proc.stderr


def test_a_node_key_from_the_environment_is_masked_in_config_show():
    proc = run_cli("config", "show", env={"TELEWIRE_NODES__RT__API_KEY": SECRET})
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in printed(proc)
    data = json.loads(proc.stdout)
    assert data["settings"]["nodes"]["rt"]["api_key"] == MASK
    assert data["graph"]["nodes"]["rt"]["config"]["api_key"] == MASK


@pytest.mark.parametrize("env, expect", [
    ({"TELEWIRE_NODES__RTT__API_KEY": SECRET}, "'rtt.config.api_key=**********': "),  # no node
    ({"TELEWIRE_NODES__RT__API_KYE": SECRET}, "rt.config.api_kye: Extra inputs"),  # no such key
    ({"TELEWIRE_NODES__RT": SECRET}, "TELEWIRE_NODES__RT: "),  # not a table
])
def test_a_typo_in_an_override_names_the_key_and_never_prints_the_value(env, expect):
    proc = run_cli("config", "show", env=env)
    assert proc.returncode == 2, proc.stdout
    assert SECRET not in printed(proc)
    assert expect in proc.stderr


@pytest.mark.parametrize("override, expect", [
    (f"rtt.config.api_key={SECRET}", "--set 'rtt.config.api_key=**********'"),
    (f"rt.config.api_kye={SECRET}", "rt.config.api_kye: Extra inputs are not permitted"),
    ("rt.config.api_key=12345", "rt.config.api_key: Input should be a valid string (value **"),
    (f"rt.api_key={SECRET}", "expected NODE.config.KEY=VALUE"),
    (f"rt.config.tools=[{{name='x', function='m:f', password='{SECRET}'}}]",
     "rt.config.tools.0.password: Extra inputs"),
    (f"rt.config.url=wss://h/x?api-key={SECRET}&model=m",  # valid: shown, masked
     None),
])
def test_a_bad_set_override_never_prints_the_secret(override, expect):
    proc = run_cli("config", "show", "--set", override)
    assert SECRET not in printed(proc) and "12345" not in proc.stderr
    if expect is None:
        assert proc.returncode == 0, proc.stderr
        url = json.loads(proc.stdout)["graph"]["nodes"]["rt"]["config"]["url"]
        assert url == f"wss://h/x?api-key={MASK}&model=m"
    else:
        assert proc.returncode == 2
        assert expect in proc.stderr, proc.stderr


def test_config_show_masks_urls_anywhere_and_nested_secrets(tmp_path):
    graph = tmp_path / "g.toml"
    graph.write_text(f"""
edges = ["tel_in.audio -> rt.audio_in", "rt.audio_out -> tel_out.audio_in"]
[nodes.tel_in]
type = "carrier_in"
[nodes.tel_out]
type = "carrier_out"
[nodes.rt]
type = "realtime_agent"
[nodes.rt.config]
provider = "openai"
url = "wss://gateway.example/v1/realtime?sig={SECRET}&api-version=2025"
[[nodes.rt.config.tools]]
name = "lookup"
function = "json:dumps"
description = "see https://user:{SECRET}@docs.example/tool"
parameters = {{type = "object", properties = {{}}, credentials = {{user = "me", pin = "{SECRET}"}}}}
[nodes.recorder]
type = "recorder"
[nodes.recorder.config]
store = "s3://AKIAEXAMPLE:{SECRET}@minio.local:9000/calls"
""")
    proc = run_cli("config", "show", "--config", str(graph),
                   env={"TELEWIRE_OPENAI_API_KEY": SECRET, "AZURE_OPENAI_API_KEY": SECRET,
                        "TELEWIRE_PUBLIC_URL": f"https://voice.example/?token={SECRET}"})
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in printed(proc) and "AKIAEXAMPLE" not in proc.stdout
    data = json.loads(proc.stdout)
    nodes = data["graph"]["nodes"]
    assert nodes["rt"]["config"]["url"] == (f"wss://gateway.example/v1/realtime?sig={MASK}"
                                            "&api-version=2025")
    tool = nodes["rt"]["config"]["tools"][0]
    assert tool["description"] == f"see https://{MASK}@docs.example/tool"
    assert tool["parameters"]["credentials"] == {"user": MASK, "pin": MASK}
    assert nodes["recorder"]["config"]["store"] == f"s3://{MASK}@minio.local:9000/calls"
    assert data["settings"]["public_url"] == f"https://voice.example/?token={MASK}"
    keys = data["provider_keys"]
    assert keys["openai_api_key"] == keys["azure_openai_api_key"] == MASK
    assert all(v in (MASK, None) for v in keys.values()), keys


def test_config_show_reports_provider_keys_from_a_dotenv_file(tmp_path):
    (tmp_path / ".env").write_text(f"OPENAI_API_KEY={SECRET}\n")
    proc = run_cli("config", "show")  # in tmp_path: the tests run there
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in printed(proc)
    assert json.loads(proc.stdout)["provider_keys"]["openai_api_key"] == MASK


# -- the rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "api_key", "API_KEY", "apiKey", "api-key", "X-Api-Key", "auth_token", "authToken",
    "password", "passwd", "db_pwd", "client_secret", "credentials", "AccessKeyId", "key",
    "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "sig", "private_key",
    "operator_token", "call_token_secret", "Authorization", "session_id", "cookie",
])
def test_secret_like_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", [
    "model", "voice", "url", "max_output_tokens", "monkey", "keyframe", "signal", "turn_detection",
    "interrupt_dtmf_digit", "api-version", "session_max_s", "", None, 3,
])
def test_names_that_are_not_secret(name):
    assert not is_secret_name(name)


def test_mask_keeps_the_shape_and_masks_by_name_at_any_depth():
    class Config(BaseModel):
        api_key: SecretStr | None = SecretStr("s1")
        empty_key: SecretStr | None = SecretStr("")
        token_ttl_s: float = 120.0
        nested: dict = {"auth": {"user": "u", "port": 5432, "hosts": ["h1", "h2"]},
                        "plain": "wss://u:p@h/x?key=k&v=1"}

    assert mask(Config()) == {
        "api_key": MASK, "empty_key": "", "token_ttl_s": 120.0,
        "nested": {"auth": {"user": MASK, "port": 5432, "hosts": [MASK, MASK]},
                   "plain": f"wss://{MASK}@h/x?key={MASK}&v=1"}}


def test_mask_text_leaves_text_without_secrets_alone():
    text = "see wss://api.example/v1/realtime?model=gpt-realtime&api-version=1 and s3://b/k"
    assert mask_text(text) == text
    assert mask_text("a s3://AK:SK@h/b b") == f"a s3://{MASK}@h/b b"


def test_shown_masks_any_type_under_a_secret_name():
    assert shown(12345, "rt", "api_key") == MASK
    assert shown("wss://h/?token=t", "url") == repr(f"wss://h/?token={MASK}")
    assert shown(-1, "max_errors") == "-1"


def test_read_settings_never_shows_node_override_values(monkeypatch):
    monkeypatch.setenv("TELEWIRE_NODES__RT", SECRET)
    with pytest.raises(ConfigError) as caught:
        read_settings(ServerSettings, title="settings")
    assert "TELEWIRE_NODES__RT" in str(caught.value) and SECRET not in str(caught.value)


def test_provider_keys_take_the_standard_names_and_blank_is_unset(monkeypatch):
    for name in ("TELEWIRE_OPENAI_API_KEY", "TELEWIRE_AZURE_OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "  ")
    keys = provider_keys()
    assert isinstance(keys, ProviderKeys)
    assert keys.openai_api_key is not None and keys.openai_api_key.get_secret_value() == "sk-env"
    assert keys.azure_openai_api_key is None
    assert "sk-env" not in repr(keys)


def test_every_provider_key_name_is_documented():
    from test_docs import CONFIG_MD

    for field in ProviderKeys.model_fields.values():
        for name in field.validation_alias.choices:  # type: ignore[union-attr]
            assert f"`{name}`" in CONFIG_MD, name
