"""The guide's "Writing a node" example, as printed, runs in a real call: installed as an entry
point of its own distribution, wired into a graph file, served by ``telewire serve``; the caller
presses 9 and the model receives the new instructions."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from conftest import ServeProcess
from test_registry import fake_distribution

import telewire
from telewire.testing.fake_realtime import FakeRealtimeServer
from telewire.testing.simulator import CallSimulator

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "guide.md").read_text()


def _blocks(lang: str) -> list[str]:
    section = GUIDE.split("## Writing a node", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def test_the_example_imports_only_public_api():
    (code,) = _blocks("python")
    for line in code.splitlines():
        if line.startswith("from telewire"):
            names = [n.strip() for n in line.split("import", 1)[1].split(",")]
            assert line.startswith("from telewire import "), line
            assert set(names) <= set(telewire.__all__), names


async def test_the_guide_node_steers_a_live_call(tmp_path):
    (code,) = _blocks("python")
    entry_points, graph_part = _blocks("toml")
    # pyproject's table as the entry_points.txt an installer writes from it
    installed = entry_points.replace('[project.entry-points."telewire.nodes"]',
                                     "[telewire.nodes]").replace('"', "")
    fake_distribution(tmp_path, "my-nodes", installed, {"my_nodes": code})
    # the guide's edges and node, merged into the shipped graph
    shipped = (ROOT / "core" / "telewire" / "data" / "default_graph.toml").read_text()
    head, nodes = graph_part.split("]\n", 1)
    extra_edges = head.split("edges = [", 1)[1].replace("    # ... the rest of the shipped graph\n",
                                                        "")
    graph_file = tmp_path / "graph.toml"
    graph_file.write_text(shipped.replace("edges = [\n", "edges = [\n" + extra_edges, 1) + nodes)
    async with FakeRealtimeServer(mode="echo") as fake:
        serve = await asyncio.to_thread(
            ServeProcess, "--config", str(graph_file), "--set", "rt.config.provider=openai",
            "--set", f"rt.config.url={fake.url}",
            env={"OPENAI_API_KEY": "sk-local-placeholder", "PYTHONPATH": str(tmp_path)})
        try:
            result = await CallSimulator(serve.url, pace=4.0, dtmf=[(200, "9")],
                                         drain_s=1).run(bytes(160 * 50))
            conn = await fake.wait_for_connection()
            updates = await conn.wait_for("session.update", 2)
        finally:
            log = await asyncio.to_thread(serve.stop)
    assert result.sent_frames == 50, log
    assert updates[1]["session"]["instructions"] == "From now on, speak only Spanish.", log
    assert "menu: caller pressed 9, steering" in log
