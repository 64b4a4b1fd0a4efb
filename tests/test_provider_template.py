"""plugins/_provider_template, the start of a new realtime-model provider: rendered, installed in a
fresh virtualenv, run against the provider conformance kit there.

The template is checked as it is (its session is a valid provider and works against its own fake
in-process), the renderer's provider kind in-process, and the rendered provider is built into a
wheel, installed into a new virtualenv (the helpers of ``test_template``), listed by
``telewire plugins`` and made to pass its own conformance tests there.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from pydantic import ValidationError

import telewire.realtime.base as base
from telewire.errors import ProviderError
from telewire.frames import StartFrame, SteerFrame, TranscriptFrame, UsageFrame
from telewire.plugins import PluginSet
from telewire.realtime.base import (ProviderCapabilities, ProviderConfig, RealtimeSession,
                                    create_session)
from telewire.testing.provider_kit import (ProviderFake, ProviderTests, Sink, caller_frames,
                                          eventually)

from test_template import (RUN_TIMEOUT_S, _run, child_env, install_rendered, pytest_counts,
                           render)

#: many processes or fresh venvs: `make test` runs these, `make test-lowest` leaves them out
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "plugins" / "_provider_template"
NAME = "acme_voice"
PACKAGE = "telewire___provider__"
START = StartFrame(carrier="kit", call_id="CA" + "0" * 32, stream_id="MZ" + "0" * 32)


# ------------------------------------------------------------------- the template as it is


@pytest.fixture
def template(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The unrendered template's package, registered as provider ``__provider__`` in this
    process (as its entry point would)."""
    monkeypatch.syspath_prepend(str(TEMPLATE))
    try:
        package = importlib.import_module(PACKAGE)
        testing = importlib.import_module(f"{PACKAGE}.testing")
        real = base.providers

        def with_template() -> PluginSet[type[RealtimeSession]]:
            found = real()
            both: PluginSet[type[RealtimeSession]] = PluginSet(
                found.group, dict(found.loaded), dict(found.infos), list(found.failures))
            both.loaded["__provider__"] = package.__Provider__Session
            return both

        monkeypatch.setattr(base, "providers", with_template)
        yield testing
    finally:
        for module in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
            del sys.modules[module]


def test_template_itself_is_a_valid_provider(template: Any) -> None:
    """The placeholders are identifiers, so the unrendered template imports and passes the
    provider checks as it is: a session class with honest capabilities and an options model,
    a fake implementing every method of the kit's ProviderFake, the kit in three lines."""
    cls = base.provider_class("__provider__")
    assert issubclass(cls, RealtimeSession) and cls.name == "__provider__"
    assert base._check_provider("__provider__", cls) is None
    caps = cls.capabilities
    assert isinstance(caps, ProviderCapabilities)
    assert caps.audio_formats == frozenset({("pcmu", 8000)})
    assert (caps.turn_model, caps.cancel, caps.interruption, caps.truncate, caps.resume) == (
        "turn_based", True, True, False, False)
    assert (caps.billing, caps.key_env) == ("tokens", "__PROVIDER___API_KEY")

    assert ProviderConfig(provider="__provider__", options={"temperature": 0.3}
                          ).provider_options.temperature == 0.3
    for options, needle in (({"temperature": 3}, "options.temperature"),
                            ({"speed": 2}, "options.speed")):
        with pytest.raises(ValidationError, match=re.escape(needle)):
            ProviderConfig(provider="__provider__", options=options)

    fake = template.__Provider__Fake
    assert issubclass(fake, ProviderFake) and not inspect.isabstract(fake)
    required = {name for name, member in vars(ProviderFake).items()
                if getattr(getattr(member, "fget", member), "__isabstractmethod__", False)}
    assert required and required <= set(vars(fake)), sorted(required - set(vars(fake)))

    # (the kit in three lines imports the fake ``as Fake``: in a class body the unrendered name
    # ``__Provider__Fake`` would be mangled to ``_Test__Provider____Provider__Fake``)
    spec = importlib.util.spec_from_file_location(
        "provider_template_conformance", TEMPLATE / "tests" / "test_conformance.py")
    assert spec is not None and spec.loader is not None
    conformance = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conformance)
    tests = conformance.Test__Provider__
    assert issubclass(tests, ProviderTests)
    assert (tests.provider, tests.fake_class) == ("__provider__", fake)


async def test_template_session_against_its_fake(template: Any) -> None:
    """The session speaks the protocol its schema describes, both ways, over loopback."""
    async with template.__Provider__Fake(mode="quiet") as fake:
        sink = Sink()
        session = create_session(ProviderConfig.model_validate(
            {**fake.rt_config(), "builtin_tools": []}), sink)
        await session.start(START)
        try:
            await fake.wait_connected(1)
            assert fake.audio_format() == ("pcmu", 8000, "pcmu", 8000)
            for frame in caller_frames(3):
                await session.send_audio(frame)
            await session.steer(SteerFrame(instructions="Be brief.", voice="cedar"))
            await fake.speak(100, transcript="Hello there.")
            await sink.wait_for(UsageFrame)
            await fake.barge_in()
            await eventually(lambda: fake.voice() == "cedar", what="the new voice")
        finally:
            await session.close()
        assert fake.caller_audio() == b"".join(f.data for f in caller_frames(3))
        assert fake.instructions() == "Be brief."
        assert [t.text for t in sink.of(TranscriptFrame)] == ["Hello there."]
        assert len(sink.audio()) == 800
    assert fake.client_errors() == []
    assert fake.server_errors == []


async def test_template_session_refused_with_a_wrong_key(template: Any) -> None:
    async with template.__Provider__Fake(mode="quiet") as fake:
        config = ProviderConfig.model_validate({**fake.rt_config(), "api_key": "not-the-key"})
        session = create_session(config, Sink())
        with pytest.raises(ProviderError, match="refused the session: unauthorized"):
            await session.start(START)
        await session.close()


# --------------------------------------------------------------------------------- rendering


def test_render_fills_every_placeholder(tmp_path: Path) -> None:
    dest = tmp_path / NAME
    written = render.render(NAME, dest, kind="provider")
    rel = {p.relative_to(dest).as_posix() for p in written}
    assert rel == {"pyproject.toml", "README.md", "telewire_acme_voice/__init__.py",
                   "telewire_acme_voice/session.py", "telewire_acme_voice/testing.py",
                   "telewire_acme_voice/protocol.schema.json", "telewire_acme_voice/py.typed",
                   "tests/test_conformance.py"}
    for path in written:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"__provider|__Provider|__PROVIDER", text), path
        if path.suffix == ".py":
            compile(text, str(path), "exec")
    json.loads((dest / "telewire_acme_voice" / "protocol.schema.json").read_text("utf-8"))
    pyproject = (dest / "pyproject.toml").read_text(encoding="utf-8")
    assert 'name = "telewire-acme-voice"' in pyproject
    assert '[project.entry-points."telewire.providers"]\n' \
           'acme_voice = "telewire_acme_voice.session:AcmeVoiceSession"' in pyproject
    conformance = (dest / "tests" / "test_conformance.py").read_text(encoding="utf-8")
    assert "from telewire.testing.provider_kit import ProviderTests" in conformance
    assert "class TestAcmeVoice(ProviderTests):" in conformance
    assert 'provider = "acme_voice"' in conformance
    session = (dest / "telewire_acme_voice" / "session.py").read_text(encoding="utf-8")
    assert 'name = "acme_voice"' in session and "class AcmeVoiceSession(" in session
    assert '"TELEWIRE_ACME_VOICE_API_KEY", "ACME_VOICE_API_KEY"' in session
    assert 'key_env="ACME_VOICE_API_KEY"' in session


def test_the_guide_shows_the_rendered_kit(tmp_path: Path) -> None:
    """docs/plugin-authoring.md's three lines are the rendered tests/test_conformance.py."""
    guide = (ROOT / "docs" / "plugin-authoring.md").read_text(encoding="utf-8")
    section = guide[guide.index("# Writing a provider"):]
    (shown,) = re.findall(r"^## 4\..*?^```python\n(.*?)^```", section, re.M | re.S)
    render.render("acme", tmp_path / "acme", kind="provider")
    rendered = (tmp_path / "acme" / "tests" / "test_conformance.py").read_text(encoding="utf-8")
    code = rendered.split('"""', 2)[2]  # after the module docstring
    assert [line for line in shown.splitlines() if line] == [
        line for line in code.splitlines() if line]


@pytest.mark.parametrize(("name", "needle"), [
    ("Acme", "provider name 'Acme' must be lower-case snake_case"),
    ("acme-voice", "lower-case snake_case"),
    ("acme__voice", "lower-case snake_case"),
    ("", "lower-case snake_case"),
    ("a" * 33, "keep it to 32"),
    ("import", "Python keyword"),
    ("openai", "provider name 'openai' is taken: distribution 'telewire' is installed with "
               "entry point 'openai' in group 'telewire.providers'"),
    ("echo", "is taken: distribution 'telewire'"),
    ("twilio", "provider name 'twilio' is taken: "),  # the folder plugins/twilio
])
def test_bad_or_taken_provider_names_refused(tmp_path: Path, name: str, needle: str) -> None:
    with pytest.raises(render.TemplateError, match=re.escape(needle)):
        render.render(name, tmp_path / "out", kind="provider")
    assert not (tmp_path / "out").exists()


def test_names_are_checked_against_their_own_group(tmp_path: Path) -> None:
    """``openai`` is a provider, not a carrier: a carrier may be called that."""
    written = render.render("openai", tmp_path / "out", kind="carrier")
    assert (tmp_path / "out" / "telewire_openai" / "__init__.py") in written
    with pytest.raises(render.TemplateError, match="unknown kind of plugin 'node'; known: "
                                                   "carrier, provider"):
        render.render(NAME, tmp_path / "other", kind="node")


def test_unknown_provider_placeholder_refused_before_writing(tmp_path: Path) -> None:
    template = tmp_path / "plugins" / "_provider_template"
    shutil.copytree(TEMPLATE, template, ignore=shutil.ignore_patterns("__pycache__"))
    (template / "CHANGELOG.md").write_text("# __Provider_version__\n", encoding="utf-8")
    with pytest.raises(render.TemplateError, match=r"CHANGELOG\.md: unknown placeholder "
                                                   r"starting '__Provider'"):
        render.render(NAME, tmp_path / "out", kind="provider", template=template)
    assert not (tmp_path / "out").exists()


def test_command_line(tmp_path: Path) -> None:
    script = str(ROOT / "plugins" / "_template" / "render.py")
    dest = tmp_path / NAME
    done = subprocess.run([sys.executable, script, "--kind", "provider", NAME, "--dest",
                           str(dest)], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert ("distribution telewire-acme-voice, package telewire_acme_voice, entry point "
            "'acme_voice' in group telewire.providers") in done.stdout
    assert (dest / "telewire_acme_voice" / "session.py").is_file()
    refused = subprocess.run([sys.executable, script, "--kind", "provider", "openai"],
                             capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert refused.returncode == 2
    assert "render.py: error: provider name 'openai' is taken" in refused.stderr


# --------------------------------------------------------------------------------- installing


def test_rendered_provider_installs_and_passes_the_kit(tmp_path: Path) -> None:
    began = time.monotonic()
    env = child_env()
    source = tmp_path / "src" / NAME
    render.render(NAME, source, kind="provider")
    python, elsewhere = install_rendered(source, tmp_path, env, package="telewire_acme_voice")

    listed = _run([str(python), "-m", "telewire.cli", "plugins", "--json"],
                  timeout=RUN_TIMEOUT_S, cwd=elsewhere, env=env, what="telewire plugins --json")
    providers = {p["name"]: p for p in json.loads(listed.stdout)["providers"]}
    assert NAME in providers, f"telewire plugins does not list {NAME}: {sorted(providers)}"
    entry = providers[NAME]
    assert (entry["status"], entry["distribution"], entry["version"], entry["entry_point"]) == (
        "ok", "telewire-acme-voice", "0.1.0", "telewire_acme_voice.session:AcmeVoiceSession"), \
        entry

    tests = _run([str(python), "-m", "pytest", str(source / "tests"), "-q", "-rs",
                  "-p", "no:cacheprovider"],
                 timeout=RUN_TIMEOUT_S, cwd=elsewhere, env=env,
                 what="the rendered provider's conformance tests")
    counts = pytest_counts(tests.stdout)
    assert not counts.get("failed") and not counts.get("error") and not counts.get("errors"), (
        tests.stdout)
    # every test of the kit but one passes; the one skipped says why (the template does not
    # declare resume: a dropped connection ends its call)
    kit = [name for name in vars(ProviderTests) if name.startswith("test_")]
    reasons = re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", tests.stdout, re.M)
    assert reasons == ["provider 'acme_voice' declares resume=False"], tests.stdout
    assert counts.get("skipped") == 1 and counts.get("passed") == len(kit) - 1, tests.stdout
    print(f"provider template round trip: {time.monotonic() - began:.1f} s, "
          f"{counts['passed']} passed, {counts['skipped']} skipped")
