"""Docs that cannot drift: hook signatures, every setting and node config key, the README commands."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
gen_hooks_doc = importlib.import_module("gen_hooks_doc")

HOOKS_MD = (ROOT / "docs" / "reference" / "hooks.md").read_text()
CONFIG_MD = (ROOT / "docs" / "configuration.md").read_text()


def hookspecs() -> list[ast.FunctionDef]:
    tree = ast.parse((ROOT / "core" / "telewire" / "hookspecs.py").read_text())
    return [n for n in tree.body if isinstance(n, ast.FunctionDef)]


@pytest.mark.parametrize("spec", hookspecs(), ids=lambda s: s.name)
def test_every_hook_is_documented_with_its_literal_signature(spec):
    assert gen_hooks_doc.signature(spec) in HOOKS_MD, (
        f"{spec.name}: signature missing or stale in docs/reference/hooks.md; "
        "run scripts/gen_hooks_doc.py")


def test_every_process_setting_is_documented():
    from telewire.settings import ServerSettings

    for name in ServerSettings.model_fields:
        assert f"`TELEWIRE_{name.upper()}`" in CONFIG_MD, name


def test_every_carrier_setting_is_documented():
    from telewire.registry import CarrierRegistry

    reg = CarrierRegistry()
    for carrier in reg.names():
        model = reg.get(carrier).settings_model()
        for name in (model.model_fields if model else {}):
            assert f"`TELEWIRE_{carrier.upper()}_{name.upper()}`" in CONFIG_MD, (carrier, name)


def test_every_node_config_key_and_port_is_documented():
    from telewire.graph import node_types

    for type_name, info in node_types().items():
        if info.distribution != "telewire":
            continue
        section = CONFIG_MD.split(f"### `{type_name}`", 1)
        assert len(section) == 2, f"no section for node type {type_name}"
        body = section[1].split("\n### ", 1)[0]
        for key in info.cls.Config.model_fields:
            assert f"| `{key}` |" in body, (type_name, key)
        for port in [*info.cls.inputs, *info.cls.outputs]:
            assert f"`{port}`" in body, (type_name, port)


def test_readme_gives_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_security_page_names_only_settings_that_exist():
    import re

    page = (ROOT / "docs" / "security.md").read_text()
    named = set(re.findall(r"`(TELEWIRE_[A-Z0-9_]+)`", page))
    assert named, "docs/security.md names no settings"
    for name in named:
        assert f"`{name}`" in CONFIG_MD, f"docs/security.md names {name}, which is not a setting"
    for key in re.findall(r"`(?:rt|tel_in|recorder)\.config\.([a-z_]+)`", page):
        assert f"| `{key}` |" in CONFIG_MD, f"docs/security.md names node config key {key}"


PROVIDERS_MD = (ROOT / "docs" / "reference" / "providers.md").read_text()


def _session_methods() -> list[ast.AST]:
    tree = ast.parse((ROOT / "core" / "telewire" / "realtime" / "base.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "RealtimeSession"]
    return [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and not n.name.startswith("_")]


@pytest.mark.parametrize("method", _session_methods(), ids=lambda m: m.name)
def test_every_session_method_is_documented_with_its_literal_signature(method):
    prefix = "async def" if isinstance(method, ast.AsyncFunctionDef) else "def"
    signature = f"{prefix} {method.name}({ast.unparse(method.args)}) -> {ast.unparse(method.returns)}"
    def squeeze(text: str) -> str:  # ast.unparse writes tag: str='say', the page tag: str = "say"
        return "".join(text.split()).replace('"', "'")

    assert f"### `{method.name}`" in PROVIDERS_MD and squeeze(signature) in squeeze(PROVIDERS_MD), (
        f"{method.name}: section or signature missing or stale in docs/reference/providers.md: "
        f"{signature}")


def test_every_provider_capability_and_builtin_provider_is_documented():
    import dataclasses
    from importlib import metadata

    from telewire.realtime.base import ProviderCapabilities

    for f in dataclasses.fields(ProviderCapabilities):
        assert f"| `{f.name}` |" in PROVIDERS_MD, f"capability {f.name} not in providers.md"
    for ep in metadata.distribution("telewire").entry_points:
        if ep.group == "telewire.providers":
            assert f"### `{ep.name}`" in PROVIDERS_MD, f"provider {ep.name} not in providers.md"
