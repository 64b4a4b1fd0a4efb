"""The CLI's side of tracing: ``telewire demo`` says where its spans went; ``calls`` and ``trace``
read them back (subprocesses, as a user runs them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

TELEWIRE = [sys.executable, "-m", "telewire.cli"]


def run(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*TELEWIRE, *args], capture_output=True, text=True, env=env,
                          timeout=120, check=check)


def test_demo_says_where_its_spans_went_and_calls_and_trace_read_them(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "TELEWIRE_", "OPENAI_"))}
    env["TELEWIRE_SPANS_DB"] = str(tmp_path / "spans" / "demo.db")
    env["TELEWIRE_LOG_LEVEL"] = "WARNING"
    out = run("demo", "--pace", "0", "--out", str(tmp_path / "out"), env=env).stdout
    summary = json.loads(out[:out.index("\n}\n") + 3])
    assert f"Its spans went to SQLite {env['TELEWIRE_SPANS_DB']}" in out
    assert f"telewire trace {summary['call_sid']}" in out
    assert summary["spans"]["dropped"] == 0

    (call,) = json.loads(run("calls", "--json", env=env).stdout)
    assert call["call_sid"] == summary["call_sid"]
    assert call["stream_sid"] == summary["stream_sid"]
    assert call["carrier"] == "twilio" and call["end_reason"]
    assert json.loads(run("calls", "--json", "--since", "2000-01-01", env=env).stdout)
    table = run("calls", "--since", "1h", env=env).stdout
    assert summary["call_sid"] in table and "end reason" in table

    tree = run("trace", summary["stream_sid"], env=env).stdout.splitlines()
    assert " call  [" in tree[1] and summary["call_sid"] in tree[1]
    assert any(line.split()[3:4] == ["turn"] for line in tree)

    missing = run("trace", "CA" + "0" * 32, env=env, check=False)
    assert missing.returncode == 1 and "no spans of call" in missing.stderr
    env["TELEWIRE_SPANS_DB"] = str(tmp_path / "nowhere.db")
    absent = run("calls", env=env, check=False)
    assert absent.returncode == 2 and "no span database" in absent.stderr
