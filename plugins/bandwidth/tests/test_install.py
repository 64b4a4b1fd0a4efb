"""``pip install ./plugins/bandwidth`` into a fresh virtual environment, then use it from there.

The new environment has no site packages of its own; telewire and its dependencies are made
visible beside it through a ``.pth`` file that adds a view of this interpreter's site-packages
in which every trace of telewire-bandwidth (its dist-info, its editable-install hooks) is left
out, so the only telewire-bandwidth it can find is the one pip installs there (from a copy of
the source directory, so the build leaves nothing behind in the work tree).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
import venv
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

PLUGIN = Path(__file__).resolve().parent.parent
_TIMEOUT_S = 300  # a hang guard only; nothing here asserts on speed


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TELEWIRE_", "PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=_TIMEOUT_S)


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with telewire-bandwidth pip-installed from its source directory."""
    root = tmp_path_factory.mktemp("fresh")
    beside = root / "beside"
    beside.mkdir()
    for packages in site.getsitepackages():
        for entry in Path(packages).iterdir():
            if "telewire_bandwidth" in entry.name or (beside / entry.name).exists():
                continue
            (beside / entry.name).symlink_to(entry)
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                   cwd=root).stdout.strip()
    Path(purelib, "_telewire_beside.pth").write_text(
        f"import site; site.addsitedir({str(beside)!r})\n", encoding="utf-8")

    # The build backend: with setuptools >= 77 at hand the build needs no network; with an
    # older one pip fetches the build requirements from the configured package index.
    isolation = ("--no-build-isolation",) if Version(metadata.version("setuptools")) >= \
        Version("77") else ()
    # A copy of the source directory, so that building leaves nothing in the work tree.
    source = root / "bandwidth"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", "tests"))
    done = _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                *isolation, source, cwd=root)
    if done.returncode and not isolation and "setuptools" in done.stdout + done.stderr and (
            "Could not find a version" in done.stderr or "NewConnectionError" in done.stderr):
        pytest.skip("pip could not fetch the build requirements (setuptools>=77) and this "
                    f"environment's setuptools is {metadata.version('setuptools')}")
    assert done.returncode == 0, done.stdout + done.stderr
    return python


def test_plugins_lists_bandwidth(fresh_python: Path, tmp_path: Path) -> None:
    done = _run(fresh_python, "-m", "telewire.cli", "plugins", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    carriers = {c["name"]: c for c in json.loads(done.stdout)["carriers"]}
    bandwidth = carriers["bandwidth"]
    assert bandwidth["status"] == "ok", bandwidth
    assert (bandwidth["distribution"], bandwidth["entry_point"]) == ("telewire-bandwidth",
                                                                     "telewire_bandwidth")
    assert bandwidth["capabilities"] == {"clear": True, "marks": False, "dtmf": False,
                                         "hangup": True, "text_frames_only": True}
    where = _run(fresh_python, "-c", "import telewire_bandwidth; print(telewire_bandwidth.__file__)",
                 cwd=tmp_path).stdout
    assert where.startswith(str(fresh_python.parent.parent)), f"imported from {where}"


def test_simulated_call_is_byte_identical(fresh_python: Path, tmp_path: Path) -> None:
    script = tmp_path / "call.py"
    script.write_text(textwrap.dedent("""
        import asyncio, json
        import aiohttp
        import xml.etree.ElementTree as ET
        from telewire.graph import load_graph
        from telewire.registry import CarrierRegistry
        from telewire.server import TelewireServer
        from telewire.settings import load_settings
        from telewire_bandwidth.testing import BandwidthCall

        AUDIO = bytes(range(256)) * 10

        async def main():
            srv = TelewireServer(load_settings(host="127.0.0.1", port=0), load_graph(None),
                                 CarrierRegistry())
            await srv.start()
            try:
                async with aiohttp.ClientSession() as http:
                    async with http.post(f"http://127.0.0.1:{srv.port}/answer/bandwidth",
                                         json={"eventType": "initiate"}) as r:
                        gather, stream, _ = ET.fromstring(await r.text())
                async with BandwidthCall(stream.get("destination"),
                                         gather.get("dtmfUrl")) as call:
                    await call.send_audio(AUDIO)
                    back = await call.collect_audio(len(AUDIO))
                    status = await call.press("*")
                    await call.wait_for_clear()
                print(json.dumps({"identical": back == AUDIO, "messages": len(call.received.payloads),
                                  "dtmf": status[0], "clears": call.received.clears}))
            finally:
                await srv.stop(drain_timeout_s=1)

        asyncio.run(main())
    """), encoding="utf-8")
    done = _run(fresh_python, script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"identical": True, "messages": 16, "dtmf": 204, "clears": 1}
