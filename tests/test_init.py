"""``telewire init``: by flags, by its prompts on a pseudo-terminal, re-runs that swap one part and
keep hand-made edits, and ``telewire serve`` starting on what it wrote."""

from __future__ import annotations

import difflib
import json
import os
import pty
import re
import select
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from conftest import TELEWIRE, ServeProcess

from telewire.errors import ConfigError
from telewire.graph import load_graph
from telewire.init import set_toml_value

HAND_EDGES = ('    # my own barge-in, from a second VAD\n'
              '    "tel_in.audio -> extra.audio_in",\n'
              '    "rt.audio_out -> extra.agent_in",\n'
              '    "extra.interrupt -> tel_out.interrupt_in",\n')
HAND_NODE = ('\n# added by hand: barge-in on the energy backend\n'
             '[nodes.extra]\ntype = "local_vad"  # a second VAD\n'
             '[nodes.extra.config]\nbackend = "energy"\n')


def init(*args: str, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``telewire init`` in a child process whose stdin is not a terminal."""
    return subprocess.run([*TELEWIRE, "init", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, cwd=cwd, env={**os.environ, **(env or {})},
                          timeout=120)


def env_lines(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if line and not line.startswith("#"))


def add_by_hand(path: Path) -> None:
    text = path.read_text()
    anchor = '    "tel_out.heard -> rt.interrupt_in",\n'
    assert anchor in text
    path.write_text(text.replace(anchor, anchor + HAND_EDGES) + HAND_NODE)


# ------------------------------------------------------------------------------ by flags


def test_flags_write_the_graph_and_a_template_with_every_variable(tmp_path):
    proc = init("--carrier", "twilio", "--provider", "openai", "--store", "file",
                "--control", "none", "--tracing", "sqlite")
    assert proc.returncode == 0, proc.stderr
    assert "telewire serve --config telewire.toml" in proc.stdout
    graph = load_graph(tmp_path / "telewire.toml")
    assert graph.nodes["rt"].config.provider == "openai"
    assert graph.nodes["recorder"].config.store == f"file://{tmp_path / 'recordings'}"
    raw = tomllib.loads((tmp_path / "telewire.toml").read_text())
    assert raw["nodes"]["recorder"]["config"]["store"] == "file://./recordings"

    example = (tmp_path / ".env.example").read_text()
    lines = example.splitlines()
    for i, line in enumerate(lines):  # every variable, set or commented out, has its comment
        if re.match(r"^(# )?[A-Z][A-Z0-9_]+=", line):
            above = lines[i - 1]
            assert above.startswith("# ") and not re.match(r"^# [A-Z_]+=", above), line
    values = env_lines(tmp_path / ".env.example")
    assert values["TELEWIRE_CARRIERS"] == "twilio"
    assert values["TELEWIRE_TRACING"] == "on"
    assert values["TELEWIRE_SPANS_DB"] == "telewire-spans.db"
    for secret in ("OPENAI_API_KEY", "TELEWIRE_TWILIO_AUTH_TOKEN", "TELEWIRE_OPERATOR_TOKEN"):
        assert values[secret] == "", secret
    assert "# TELEWIRE_CONTROL_URL=" in example  # in-process: shown, not set
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in example
    # a first run also writes .env, from the same template
    assert (tmp_path / ".env").read_text() == example


def test_every_installed_provider_key_and_store_variable_comes_from_the_plugins(tmp_path):
    from telewire.realtime.base import providers
    from telewire.stores import S3Store

    keyed = {n: c.capabilities.key_env for n, c in providers().loaded.items()
             if c.capabilities.key_env}
    assert keyed
    for name, key_env in sorted(keyed.items())[:3]:
        proc = init("--provider", name, "--yes", "--force")
        assert proc.returncode == 0, proc.stderr
        assert env_lines(tmp_path / ".env.example")[key_env] == ""
    proc = init("--store-url", "s3://bucket/calls?region=eu-west-1", "--tracing", "otlp")
    assert proc.returncode == 0, proc.stderr
    example = (tmp_path / ".env.example").read_text()
    for name in S3Store.env:
        assert f"# {name}=\n" in example, name
    values = env_lines(tmp_path / ".env.example")
    assert values["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"


def test_redis_control_plane_password_stays_out_of_the_template_and_the_output(tmp_path):
    url = "redis://:hunter2-secret@127.0.0.1:6390/2"
    proc = init("--control", url, "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr
    example = env_lines(tmp_path / ".env.example")
    assert example["TELEWIRE_CONTROL_URL"] == "redis://127.0.0.1:6390/2"
    assert example["TELEWIRE_CALL_TOKEN_SECRET"] == ""
    assert env_lines(tmp_path / ".env")["TELEWIRE_CONTROL_URL"] == url  # given, so kept in .env
    again = init("--yes")
    assert again.returncode == 0 and "nothing to change" in again.stdout, again.stdout


@pytest.mark.parametrize("args, message", [
    (["--carrier", "twillio"], "--carrier: 'twillio' is not an installed carrier; choose one of: "),
    (["--provider", "gpt"], "--provider: unknown provider 'gpt'; installed: "),
    (["--store", "ftp"], "--store: 'ftp' is not an installed store; choose one of: file, s3"),
    (["--store", "s3"], "--store s3: give its URL too, with --store-url (for example "
                        "s3://BUCKET/PREFIX)"),
    (["--store", "file", "--store-url", "s3://b/p"], "--store-url: a file store URL starts with "
                                                     "file://"),
    (["--store-url", "s3://b/../p"], "--store-url: store 's3://b/../p': bad prefix"),
    (["--control", "http://127.0.0.1:6379"], "--control: 'http://127.0.0.1:6379' is not a "
                                             "control plane: give none (in-process), or a "
                                             "redis://HOST:PORT/DB URL"),
    (["--tracing", "jaeger"], "--tracing: 'jaeger' is not a tracing exporter; choose one of: "
                              "sqlite, otlp, off"),
])
def test_bad_flags_are_refused_with_a_precise_message_and_nothing_is_written(tmp_path, args,
                                                                            message):
    proc = init(*args)
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr
    assert not (tmp_path / "telewire.toml").exists() and not (tmp_path / ".env").exists()


# ------------------------------------------------------------------------------ run again


def test_second_init_swaps_only_the_store_and_keeps_a_hand_added_node(tmp_path):
    assert init("--carrier", "twilio", "--provider", "echo", "--yes").returncode == 0
    graph_file = tmp_path / "telewire.toml"
    add_by_hand(graph_file)
    (tmp_path / ".env").write_text((tmp_path / ".env").read_text().replace(
        "TELEWIRE_TWILIO_AUTH_TOKEN=\n", "TELEWIRE_TWILIO_AUTH_TOKEN=tok-my-own-secret\n"))
    hand, dot_env = graph_file.read_text(), (tmp_path / ".env").read_text()

    proc = init("--store", "s3", "--store-url", "s3://bucket/prefix")
    assert proc.returncode == 0, proc.stderr
    after = graph_file.read_text()
    changed = [d for d in difflib.ndiff(hand.splitlines(), after.splitlines())
               if d[:1] in "+-"]
    assert changed == ['- store = "file://./recordings"', '+ store = "s3://bucket/prefix"']
    graph = load_graph(graph_file)
    assert graph.nodes["extra"].type == "local_vad"
    assert graph.nodes["extra"].config.backend == "energy"
    assert "tel_in.audio -> extra.audio_in" in [str(e) for e in graph.edges]
    assert graph.nodes["rt"].config.provider == "echo"
    assert graph.nodes["recorder"].config.store == "s3://bucket/prefix"
    # .env holds the user's secrets: never rewritten, never printed; told what it lacks instead
    assert (tmp_path / ".env").read_text() == dot_env
    assert "tok-my-own-secret" not in proc.stdout + proc.stderr
    assert "AWS_ACCESS_KEY_ID" in (tmp_path / ".env.example").read_text()
    assert "TELEWIRE_TWILIO_AUTH_TOKEN" not in proc.stdout.split("fill in")[-1]

    # idempotent: the same request, or none, changes nothing
    for args in (["--store", "s3", "--store-url", "s3://bucket/prefix"], ["--yes"]):
        files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
        proc = init(*args)
        assert proc.returncode == 0 and "nothing to change" in proc.stdout, proc.stdout
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == files

    # swapping the provider touches only its line
    proc = init("--provider", "openai")
    assert proc.returncode == 0, proc.stderr
    changed = [d for d in difflib.ndiff(after.splitlines(), graph_file.read_text().splitlines())
               if d[:1] in "+-"]
    assert changed == ['- provider = "echo"', '+ provider = "openai"']


def test_existing_env_gets_a_list_of_what_it_lacks(tmp_path):
    assert init("--yes").returncode == 0
    proc = init("--tracing", "off", "--control", "redis://127.0.0.1:6391/0")
    assert proc.returncode == 0, proc.stderr
    assert "set TELEWIRE_TRACING=off (it says on)" in proc.stdout
    assert "add TELEWIRE_CONTROL_URL=redis://127.0.0.1:6391/0" in proc.stdout


def test_a_broken_graph_file_is_named_and_left_alone(tmp_path):
    graph_file = tmp_path / "telewire.toml"
    graph_file.write_text('[nodes.rt\ntype = "realtime_agent"\n')
    proc = init("--yes")
    assert proc.returncode == 2
    assert "telewire.toml: not valid TOML: Expected" in proc.stderr and "--force" in proc.stderr
    assert graph_file.read_text() == '[nodes.rt\ntype = "realtime_agent"\n'

    graph_file.write_text('[nodes.rt]\ntype = "realtime_agnet"\n')
    proc = init("--yes")
    assert proc.returncode == 2
    assert "telewire.toml: node 'rt': unknown node type 'realtime_agnet'" in proc.stderr
    assert "the existing graph is broken" in proc.stderr

    proc = init("--yes", "--force")
    assert proc.returncode == 0, proc.stderr
    assert load_graph(graph_file).nodes["rt"].type == "realtime_agent"


def test_unrelated_files_are_not_overwritten_without_force(tmp_path):
    (tmp_path / "telewire.toml").write_text('[tool.black]\nline-length = 100\n')
    proc = init("--yes")
    assert proc.returncode == 2
    assert "telewire.toml exists and is not a telewire graph" in proc.stderr
    (tmp_path / "telewire.toml").unlink()

    (tmp_path / ".env.example").write_text("DATABASE_URL=\n")
    proc = init("--yes")
    assert proc.returncode == 2
    assert ".env.example exists and was not written by telewire init" in proc.stderr
    assert (tmp_path / ".env.example").read_text() == "DATABASE_URL=\n"
    assert init("--yes", "--force").returncode == 0


def test_dir_option_writes_elsewhere_and_says_where_to_run(tmp_path):
    proc = init("--dir", "project", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "project" / "telewire.toml").is_file()
    assert "cd project && telewire serve --config telewire.toml" in proc.stdout


# ------------------------------------------------------------------------------ serve


def test_init_then_serve_starts_with_the_chosen_parts(tmp_path):
    proc = init("--carrier", "twilio", "--provider", "echo", "--store", "file", "--store-url",
                "file://./calls", "--control", "none", "--tracing", "off")
    assert proc.returncode == 0, proc.stderr
    shown = subprocess.run([*TELEWIRE, "config", "show", "--config", "telewire.toml"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    config = json.loads(shown.stdout)
    assert config["settings"]["carriers"] == "twilio"
    assert config["settings"]["tracing"] == "off"
    assert config["graph"]["nodes"]["rt"]["config"]["provider"] == "echo"
    assert config["graph"]["nodes"]["recorder"]["config"]["store"] == f"file://{tmp_path}/calls"

    server = ServeProcess("--config", "telewire.toml")
    log = server.stop()
    assert "(carriers: twilio)" in log
    assert "spans to nowhere (no exporter)" in log
    assert "telewire.toml" in log

    proc = init("--carrier", "bandwidth", "--tracing", "sqlite", "--force")
    assert proc.returncode == 0, proc.stderr
    (tmp_path / ".env").unlink()  # take the new template as .env
    proc = init("--yes")
    assert proc.returncode == 0, proc.stderr
    server = ServeProcess("--config", "telewire.toml")
    log = server.stop()
    assert "(carriers: bandwidth)" in log and "spans to SQLite telewire-spans.db" in log


# ------------------------------------------------------------------------------ prompts


class Terminal:
    """``telewire init`` on a pseudo-terminal: wait for a prompt, type an answer."""

    def __init__(self, *args: str, cwd: Path) -> None:
        master, slave = pty.openpty()
        self.master = master
        self.proc = subprocess.Popen([*TELEWIRE, "init", *args], stdin=slave, stdout=slave,
                                     stderr=slave, cwd=cwd, close_fds=True)
        os.close(slave)
        self.seen = ""

    def expect(self, text: str, timeout: float = 60) -> str:
        """Read until ``text`` has appeared after what was read so far; return what came."""
        deadline = time.monotonic() + timeout
        start = len(self.seen)
        while text not in self.seen[start:]:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and not self._ready(0):
                raise AssertionError(f"never saw {text!r}; got:\n{self.seen[start:]}")
            if self._ready(min(left, 1.0)):
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"never saw {text!r}; got:\n{self.seen[start:]}")
                self.seen += chunk.decode(errors="replace").replace("\r\n", "\n")
        return self.seen[start:]

    def _ready(self, timeout: float) -> bool:
        return bool(select.select([self.master], [], [], timeout)[0])

    def answer(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def close(self) -> int:
        """Wait for the process to end (killed if it is still asking), keep what it wrote."""
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        try:
            while self._ready(0):
                chunk = os.read(self.master, 4096)
                if not chunk:
                    break
                self.seen += chunk.decode(errors="replace").replace("\r\n", "\n")
        except OSError:  # the terminal closed with the process
            pass
        os.close(self.master)
        return self.proc.wait(timeout=60)


def test_prompts_on_a_terminal_ask_each_question_and_reask_bad_answers(tmp_path):
    from telewire.registry import CarrierRegistry

    term = Terminal(cwd=tmp_path)
    try:
        asked = term.expect("]: ")
        assert f"Carrier ({', '.join(CarrierRegistry().names())}) [twilio]: " in asked
        term.answer("twillio")
        again = term.expect("]: ")
        assert "'twillio' is not an installed carrier; choose one of: " in again
        assert "Carrier (" in again
        term.answer("bandwidth")
        assert "Model provider (" in term.expect("[openai]: ")
        term.answer("echo")
        assert "Recording store (file, s3) [file]: " in term.expect("]: ")
        term.answer("s3")
        assert "Store URL (like s3://BUCKET/PREFIX): " in term.expect("): ")
        term.answer("")
        assert "a s3 store needs a URL, for example s3://BUCKET/PREFIX" in term.expect("): ")
        term.answer("s3://rec/calls?endpoint_url=http://127.0.0.1:9000")
        assert "Control plane (none = in-process" in term.expect("[none]: ")
        term.answer("redis:/nohost")
        assert "is not a control plane" in term.expect("[none]: ")
        term.answer("redis://127.0.0.1:6392/1")
        assert "Tracing exporter (sqlite, otlp, off) [sqlite]: " in term.expect("]: ")
        term.answer("")  # the default
        done = term.expect("telewire serve --config telewire.toml")
        assert "carrier bandwidth, provider echo" in done
    finally:
        rc = term.close()
    assert rc == 0, term.seen
    graph = load_graph(tmp_path / "telewire.toml")
    assert graph.nodes["rt"].config.provider == "echo"
    assert graph.nodes["recorder"].config.store.startswith("s3://rec/calls")
    values = env_lines(tmp_path / ".env.example")
    assert values["TELEWIRE_CARRIERS"] == "bandwidth"
    assert values["TELEWIRE_CONTROL_URL"] == "redis://127.0.0.1:6392/1"
    assert values["TELEWIRE_TRACING"] == "on"
    assert "TELEWIRE_BANDWIDTH_PASSWORD" in values

    # a second run on the terminal offers what is there as the defaults; flags are not asked
    add_by_hand(tmp_path / "telewire.toml")
    hand = (tmp_path / "telewire.toml").read_text()
    term = Terminal("--provider", "echo", "--control", "none", cwd=tmp_path)
    try:
        assert "Carrier (" in term.expect("[bandwidth]: ")
        term.answer("")
        assert "Recording store (file, s3) [s3]: " in term.expect("]: ")
        term.answer("file")
        assert "Store URL [file://./recordings]: " in term.expect("]: ")
        term.answer("")
        assert "Tracing exporter" in term.expect("[sqlite]: ")
        term.answer("off")
        term.expect("telewire serve")
    finally:
        rc = term.close()
    assert rc == 0, term.seen
    assert "Model provider" not in term.seen.split("[bandwidth]: ")[-1]
    after = (tmp_path / "telewire.toml").read_text()
    changed = [d for d in difflib.ndiff(hand.splitlines(), after.splitlines()) if d[:1] in "+-"]
    assert changed == ['- store = "s3://rec/calls?endpoint_url=http://127.0.0.1:9000"',
                       '+ store = "file://./recordings"']


def test_end_of_input_on_the_terminal_writes_nothing(tmp_path):
    term = Terminal(cwd=tmp_path)
    try:
        term.expect("]: ")
        os.write(term.master, b"\x04")  # Ctrl-D
        assert "no answer (end of input); nothing written" in term.expect("written")
    finally:
        rc = term.close()
    assert rc == 2
    assert not (tmp_path / "telewire.toml").exists()


# ------------------------------------------------------------------------------ the TOML editor


def test_toml_editor_keeps_comments_and_edits_dotted_keys_in_place():
    text = ('# top\n[nodes.rt]\ntype = "realtime_agent"\nconfig.provider = "echo"  # keep me\n'
            '\n# about tel_out\n[nodes.tel_out]\ntype = "carrier_out"\n')
    new = set_toml_value(text, ("nodes", "rt", "config"), "provider", "openai", source="g.toml")
    assert new == text.replace('"echo"  # keep me', '"openai"  # keep me')
    new = set_toml_value(text, ("nodes", "tel_out", "config"), "mark_interval_ms", "x",
                         source="g.toml")
    assert new.endswith('[nodes.tel_out]\ntype = "carrier_out"\n[nodes.tel_out.config]\n'
                        'mark_interval_ms = "x"\n')
    assert new.startswith(text.split("[nodes.tel_out]")[0])


def test_toml_editor_refuses_what_it_cannot_change_safely():
    text = '[nodes.rt]\ntype = "realtime_agent"\nconfig = { provider = "echo" }\n'
    with pytest.raises(ConfigError, match=r"g\.toml: cannot change nodes\.rt\.config\.provider "
                                          r"safely .* set it by hand to \"openai\""):
        set_toml_value(text, ("nodes", "rt", "config"), "provider", "openai", source="g.toml")


def test_a_redis_password_is_masked_in_the_prompt_and_kept_by_enter(tmp_path):
    url = "redis://:hunter2-secret@127.0.0.1:6393/0"
    assert init("--control", url, "--yes").returncode == 0
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    term = Terminal("--carrier", "twilio", "--provider", "openai", "--store-url",
                    "file://./recordings", "--tracing", "sqlite", cwd=tmp_path)
    try:
        asked = term.expect("]: ")
        assert "Control plane (none = in-process" in asked
        assert "[redis://**********@127.0.0.1:6393/0]: " in asked
        term.answer("")
        assert "nothing to change" in term.expect("telewire serve")
    finally:
        rc = term.close()
    assert rc == 0, term.seen
    assert "hunter2" not in term.seen
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == files
