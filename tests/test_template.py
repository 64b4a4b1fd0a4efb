"""plugins/_template, the start of a new carrier: rendered, installed in a fresh virtualenv, run.

The renderer's checks are tested in-process; the rendered carrier is built into a wheel,
installed into a new virtualenv that sees this environment's packages (telewire, pytest) through
a ``.pth`` file, listed by ``telewire plugins`` and made to pass its own conformance tests there.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "plugins" / "_template"
NAME = "acme_voice"
#: Generous bounds for each child process; the whole round trip takes seconds.
VENV_TIMEOUT_S = 60
BUILD_TIMEOUT_S = 180
RUN_TIMEOUT_S = 120


def _load_renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("carrier_template_render", TEMPLATE / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_renderer()


# --------------------------------------------------------------------------------- rendering


def test_template_itself_is_a_valid_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The placeholders are identifiers, so the unrendered template imports and passes the
    hookspec check as it is (editors, linters and type checkers can work on it)."""
    from telewire.registry import CarrierRegistry

    monkeypatch.syspath_prepend(str(TEMPLATE))
    try:
        plugin = importlib.import_module("telewire___carrier__")
        recorded = importlib.import_module("telewire___carrier__.testing").RECORDED_CALL
        carrier = CarrierRegistry({"__carrier__": plugin}, discover=False).get("__carrier__")
        call = carrier.new_call()
        (start,) = carrier.parse_inbound(call, recorded[1])
        assert start.stream_id == call.stream_id == "st-7f3a"
        assert carrier.build_clear(call) == '{"event":"clear","stream_id":"st-7f3a"}'
    finally:
        for module in [m for m in sys.modules if m.split(".")[0] == "telewire___carrier__"]:
            del sys.modules[module]


def test_render_fills_every_placeholder(tmp_path: Path) -> None:
    dest = tmp_path / NAME
    written = render.render(NAME, dest)
    rel = {p.relative_to(dest).as_posix() for p in written}
    assert {"pyproject.toml", "README.md", "telewire_acme_voice/__init__.py",
            "telewire_acme_voice/envelope.toml", "telewire_acme_voice/testing.py",
            "tests/test_conformance.py"} <= rel
    assert "render.py" not in rel
    for path in written:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"__carrier|__Carrier|__CARRIER", text), path
        if path.suffix == ".py":
            compile(text, str(path), "exec")
    pyproject = (dest / "pyproject.toml").read_text(encoding="utf-8")
    assert 'name = "telewire-acme-voice"' in pyproject
    assert 'acme_voice = "telewire_acme_voice"' in pyproject
    conformance = (dest / "tests" / "test_conformance.py").read_text(encoding="utf-8")
    assert "class TestAcmeVoice(AcmeVoiceFixtures, CarrierConformanceTests):" in conformance
    settings = (dest / "telewire_acme_voice" / "settings.py").read_text(encoding="utf-8")
    assert 'ENV_PREFIX = "TELEWIRE_ACME_VOICE_"' in settings


@pytest.mark.parametrize(("name", "needle"), [
    ("Acme", "lower-case snake_case"),
    ("acme-voice", "lower-case snake_case"),
    ("acme__voice", "lower-case snake_case"),
    ("acme_", "lower-case snake_case"),
    ("9acme", "lower-case snake_case"),
    ("", "lower-case snake_case"),
    ("a" * 33, "keep it to 32"),
    ("class", "Python keyword"),
    ("twilio", "is taken: distribution 'telewire-twilio' is installed"),
])
def test_bad_or_taken_names_refused(tmp_path: Path, name: str, needle: str) -> None:
    with pytest.raises(render.TemplateError, match=re.escape(needle)):
        render.render(name, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_name_of_a_carrier_folder_refused(tmp_path: Path) -> None:
    template = tmp_path / "plugins" / "_template"
    shutil.copytree(TEMPLATE, template, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "plugins" / "acme").mkdir()
    with pytest.raises(render.TemplateError, match="'acme' is taken: .*acme already exists"):
        render.render("acme", tmp_path / "out", template=template)


def test_non_empty_destination_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(render.TemplateError, match="exists and is not an empty folder"):
        render.render(NAME, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_unknown_placeholder_refused_before_writing(tmp_path: Path) -> None:
    template = tmp_path / "plugins" / "_template"
    shutil.copytree(TEMPLATE, template, ignore=shutil.ignore_patterns("__pycache__"))
    (template / "CHANGELOG.md").write_text("# __carrier_version__\n", encoding="utf-8")
    with pytest.raises(render.TemplateError, match=r"CHANGELOG\.md: unknown placeholder"):
        render.render(NAME, tmp_path / "out", template=template)
    assert not (tmp_path / "out").exists()


def test_command_line(tmp_path: Path) -> None:
    dest = tmp_path / NAME
    done = subprocess.run([sys.executable, str(TEMPLATE / "render.py"), NAME, "--dest", str(dest)],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert "distribution telewire-acme-voice" in done.stdout
    assert (dest / "telewire_acme_voice" / "__init__.py").is_file()
    refused = subprocess.run([sys.executable, str(TEMPLATE / "render.py"), "Bad-Name"],
                             capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert refused.returncode == 2
    assert "render.py: error: carrier name 'Bad-Name'" in refused.stderr


# --------------------------------------------------------------------------------- installing


def _run(args: list[str], *, timeout: float, cwd: Path, env: dict[str, str],
         what: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    if done.returncode != 0:
        pytest.fail(f"{what} failed (exit {done.returncode}):\n$ {' '.join(args)}\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _outer_setuptools_builds_pep639() -> bool:
    """Whether this environment's setuptools can build the template offline (PEP 639
    ``license = "…"`` needs setuptools 77)."""
    try:
        return Version(metadata.version("setuptools")) >= Version("77")
    except metadata.PackageNotFoundError:
        return False


def _fresh_venv(where: Path, env: dict[str, str]) -> Path:
    """A new virtualenv without pip whose ``site-packages`` also reads this environment's."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(where)], timeout=VENV_TIMEOUT_S,
         cwd=where.parent, env=env, what="creating a virtualenv")
    python = where / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   timeout=VENV_TIMEOUT_S, cwd=where, env=env, what="asking the new virtualenv "
                   "for its site-packages").stdout.strip()
    outer = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    lines = [f"import site; site.addsitedir({path!r})" for path in outer]
    (Path(purelib) / "_telewire_outer_site.pth").write_text("\n".join(lines) + "\n",
                                                            encoding="utf-8")
    return python


def child_env() -> dict[str, str]:
    """This process's environment for a child that must not see this test run's settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTEST_ADDOPTS",
                        "PYTEST_PLUGINS") and not k.startswith("TELEWIRE_")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def install_rendered(source: Path, tmp_path: Path, env: dict[str, str], *,
                     package: str) -> tuple[Path, Path]:
    """Build the rendered distribution at ``source`` into a wheel, install it into a fresh
    virtualenv under ``tmp_path``, and check ``package`` is imported from there.

    Returns the virtualenv's python and the folder to run it in (never the source folder).
    """
    elsewhere = tmp_path / "elsewhere"  # cwd of every run: never the source folder
    elsewhere.mkdir()

    # A wheel, as a user would get it from an index. Built offline when this environment's
    # setuptools is recent enough, otherwise in pip's isolated build environment.
    wheels = tmp_path / "wheels"
    offline = ["--no-build-isolation"] if _outer_setuptools_builds_pep639() else []
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels),
          *offline, str(source)], timeout=BUILD_TIMEOUT_S, cwd=elsewhere, env=env,
         what="building the rendered plugin's wheel")
    (wheel,) = wheels.glob(f"{package}-0.1.0-*.whl")

    python = _fresh_venv(tmp_path / "venv", env)
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
         timeout=BUILD_TIMEOUT_S, cwd=elsewhere, env=env, what="installing the wheel")
    where = _run([str(python), "-c", f"import {package} as m; print(m.__file__)"],
                 timeout=RUN_TIMEOUT_S, cwd=elsewhere, env=env, what="importing the plugin")
    assert Path(where.stdout.strip()).is_relative_to(tmp_path / "venv"), (
        f"the plugin was imported from {where.stdout.strip()}, not the new virtualenv")
    return python, elsewhere


def pytest_counts(stdout: str) -> dict[str, int]:
    """``{"passed": n, "skipped": n, ...}`` from the summary line of ``pytest -q``."""
    summary = stdout.strip().splitlines()[-1]
    return {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|errors?|skipped)",
                                                   summary)}


@pytest.mark.slow
def test_rendered_carrier_installs_and_passes_its_own_tests(tmp_path: Path) -> None:
    env = child_env()
    source = tmp_path / "src" / NAME
    render.render(NAME, source)
    python, elsewhere = install_rendered(source, tmp_path, env, package="telewire_acme_voice")

    listed = _run([str(python), "-m", "telewire.cli", "plugins", "--json"],
                  timeout=RUN_TIMEOUT_S, cwd=elsewhere, env=env, what="telewire plugins --json")
    carriers = {c["name"]: c for c in json.loads(listed.stdout)["carriers"]}
    assert NAME in carriers, f"telewire plugins does not list {NAME}: {sorted(carriers)}"
    entry = carriers[NAME]
    assert (entry["status"], entry["distribution"], entry["version"], entry["entry_point"]) == (
        "ok", "telewire-acme-voice", "0.1.0", "telewire_acme_voice"), entry

    tests = _run([str(python), "-m", "pytest", str(source / "tests"), "-q",
                  "-p", "no:cacheprovider"],
                 timeout=RUN_TIMEOUT_S, cwd=elsewhere, env=env,
                 what="the rendered carrier's own tests")
    summary = tests.stdout.strip().splitlines()[-1]
    counts = pytest_counts(tests.stdout)
    assert not counts.get("failed") and not counts.get("error") and not counts.get("errors"), (
        tests.stdout)
    # the whole kit (60+ tests, none skipped: the template declares every capability and
    # supplies a recording) plus the template's control tests
    assert counts.get("passed", 0) >= 60 and not counts.get("skipped"), summary
