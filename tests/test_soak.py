"""The soak's one-minute version: calls across two workers on a real Redis control plane, with
barge-ins and DTMF, lose no frame and no archive, and the server logs no error.

The ten-minute, 200-call soak is ``make soak`` (its figures are in docs/benchmarks.md). RSS is
sampled here but not judged: one minute is too short for a growth figure to mean anything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOAK = ROOT / "bench" / "soak.py"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.environ.get("TELEWIRE_LOWEST_DEPS") == "1",
    reason="the soak measures the product, not the dependency bounds: it runs on the latest set")]


def test_one_minute_soak_loses_nothing(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: make test installs Debian's package")
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(SOAK), "--calls", "20", "--minutes", "1",
                           "--call-s", "15", "--every", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    report = json.loads(out.read_text())
    assert report["calls_completed"] >= 40, proc.stdout + proc.stderr
    assert report["calls_failed_count"] == 0, report["calls_failed"]
    assert report["frames_lost"] == 0, report["mismatched"]
    assert report["archives_lost"] == 0 and report["archives_written"] >= report["calls_completed"]
    assert report["clears"] > 0  # the barge-ins happened
    assert report["errors_logged"] == 0, report["errors"]
    assert report["server_exit_code"] == 0
    assert len(report["rss_mib"]) >= 20
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def _soak_module():
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    return soak


def test_the_plot_is_a_valid_png(tmp_path):
    soak = _soak_module()
    path = tmp_path / "p.png"
    soak.plot_png(path, [(0, 10.0), (60, 11.0), (120, 10.5)], width=120, height=60)
    import zlib
    data = path.read_bytes()
    assert data[12:16] == b"IHDR" and int.from_bytes(data[16:20], "big") == 120
    idat = data.index(b"IDAT")
    size = int.from_bytes(data[idat - 4:idat], "big")
    raw = zlib.decompress(data[idat + 4:idat + 4 + size])
    assert len(raw) == 60 * (1 + 120 * 3)


def test_the_soak_section_replaces_itself_and_leaves_the_page(tmp_path):
    soak = _soak_module()
    report = {"calls": 2, "minutes": 1.0, "workers": 2, "calls_completed": 5,
              "calls_failed_count": 0, "frames_sent": 100, "frames_lost": 0,
              "archives_written": 5, "archives_lost": 0, "clears": 3, "errors_logged": 0,
              "server_exit_code": 0, "rss_mib": [(0.0, 100.0), (30.0, 101.0), (60.0, 101.5)],
              "rss_mib_by_process": {"worker 7": [(0.0, 40.0), (60.0, 41.0)]},
              "rss_growth_tail": 0.005, "tail_s": 30.0, "pass": True}
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\n## Figures\n\nrows\n\n## Machine\n\n* 2 cores\n")
    soak.write_docs(soak.render_section(report, "bench/soak.py --calls 2"), page)
    first = page.read_text()
    assert first.startswith("# Benchmarks\n\n## Figures\n\nrows\n\n## Machine\n\n* 2 cores\n")
    assert "5 calls completed, 0 failed" in first and "worker 7: 40 → 41 MiB" in first
    assert "0.5% — **PASS**" in first
    report.update(rss_growth_tail=0.2, calls_completed=9, **{"pass": False})
    soak.write_docs(soak.render_section(report, "bench/soak.py --calls 2"), page)
    second = page.read_text()
    assert second.count("## Soak") == 1 and "9 calls completed" in second
    assert "5 calls completed" not in second and "20.0% — **FAIL**" in second
    assert soak.keep_section(second, soak.SECTION).startswith("## Soak\n")
    assert soak.keep_section("# Benchmarks\n", soak.SECTION) == ""
