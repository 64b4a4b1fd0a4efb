"""Carrier discovery: real entry points, broken plugins reported by name, contract enforcement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from telewire.carrier import CallContext, Capabilities
from telewire.errors import CarrierProtocolError, ConfigError, PluginError
from telewire.hookspecs import hookimpl
from telewire.registry import CarrierRegistry


def fake_distribution(root: Path, dist: str, entry_points: str, modules: dict[str, str]) -> None:
    """An installed distribution made of a .dist-info folder and modules on ``root``.

    The folder is named as installers name it (``telewire_extra-1.0.dist-info``): importlib
    takes the distribution's name from the folder name up to its first ``-``, so
    ``telewire-extra-1.0.dist-info`` would pass for (and hide) the ``telewire`` distribution."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))


def run_cli(*args: str, path: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {})}
    if path is not None:
        full["PYTHONPATH"] = str(path) + os.pathsep + full.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "telewire.cli", *args], capture_output=True,
                          text=True, env=full, timeout=60)


def test_broken_plugin_is_reported_and_the_others_load(tmp_path):
    fake_distribution(tmp_path, "telewire-broken", """
        [telewire.carriers]
        broken = broken_carrier
        """, {"broken_carrier": "raise ImportError('libfoo.so.1: cannot open shared object file')\n"})
    proc = run_cli("plugins", "--json", path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    by_name = {c["name"]: c for c in data["carriers"]}
    assert by_name["twilio"]["status"] == "ok"
    assert by_name["twilio"]["distribution"] == "telewire-twilio"
    broken = by_name["broken"]
    assert broken["status"] == "error" and broken["distribution"] == "telewire-broken"
    assert "ImportError: libfoo.so.1: cannot open shared object file" in broken["error"]
    text = run_cli("plugins", path=tmp_path)
    assert "broken" in text.stdout and "FAILED: ImportError" in text.stdout
    assert run_cli("plugins", "--strict", path=tmp_path).returncode == 1


def test_plugin_breaking_the_contract_is_rejected_with_its_name(tmp_path):
    fake_distribution(tmp_path, "telewire-halfdone", """
        [telewire.carriers]
        halfdone = halfdone_carrier
        """, {"halfdone_carrier": """
        from telewire.hookspecs import hookimpl

        @hookimpl
        def telewire_build_clear(call):
            return None
        """})
    data = json.loads(run_cli("plugins", "--json", path=tmp_path).stdout)
    half = {c["name"]: c for c in data["carriers"]}["halfdone"]
    assert half["status"] == "error"
    assert "does not implement required hooks: telewire_carrier_capabilities" in half["error"]


class Minimal:
    """A hand-registered carrier: the smallest thing that satisfies the contract."""

    @hookimpl
    def telewire_carrier_capabilities(self):
        return Capabilities(marks=False)

    @hookimpl
    def telewire_parse_inbound(self, call, message):
        if message == "boom":
            raise KeyError("boom")
        if message == "bad":
            raise CarrierProtocolError("minimal: bad message", carrier="minimal")
        return []

    @hookimpl
    def telewire_wrap_audio(self, call, frame):
        return frame.b64


def test_hook_exceptions_become_plugin_errors_naming_carrier_and_hook():
    reg = CarrierRegistry({"minimal": Minimal()}, discover=False)
    carrier = reg.get("minimal")
    call = carrier.new_call()
    with pytest.raises(PluginError, match="carrier 'minimal': hook telewire_parse_inbound raised KeyError"):
        carrier.parse_inbound(call, "boom")
    with pytest.raises(CarrierProtocolError, match="bad message"):  # the remote's fault passes through
        carrier.parse_inbound(call, "bad")
    assert carrier.build_mark(call, "m") is None  # optional hooks: None means "not this carrier"
    assert carrier.answer_document(None, "wss://x", {}) is None  # type: ignore[arg-type]
    assert carrier.capabilities.marks is False


def test_wrong_hook_signature_is_caught_at_registration():
    class Wrong(Minimal):
        @hookimpl
        def telewire_wrap_audio(self, call, frame, extra):
            return ""

    with pytest.raises(PluginError, match="carrier 'wrong' breaks the hook contract"):
        CarrierRegistry({"wrong": Wrong()}, discover=False)


def test_bad_capabilities_are_a_plugin_error():
    class NoCaps(Minimal):
        @hookimpl
        def telewire_carrier_capabilities(self):
            return {"clear": True}

    reg = CarrierRegistry({"nocaps": NoCaps()}, discover=False)
    with pytest.raises(PluginError, match="returned .* not a telewire.Capabilities"):
        reg.get("nocaps")


def test_unknown_carrier_lists_what_is_installed():
    reg = CarrierRegistry()
    with pytest.raises(ConfigError, match="unknown carrier 'telnyx'; installed: .*twilio"):
        reg.get("telnyx")


def test_each_carrier_answers_only_for_itself():
    class Other(Minimal):
        @hookimpl
        def telewire_parse_inbound(self, call, message):
            raise AssertionError("another carrier's hook was called")

    reg = CarrierRegistry({"minimal": Minimal(), "other": Other()}, discover=False)
    assert reg.get("minimal").parse_inbound(CallContext(carrier="minimal"), "x") == []
