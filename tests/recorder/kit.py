"""Helpers of the recorder tests: recorder graphs and a moto S3 server process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from telewire.graph import Graph, build_graph, default_graph_path

def child_env(**extra: str) -> dict[str, str]:
    """Environment for a telewire child process."""
    return {**os.environ, **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recorder_graph(store: str, spool: Path, *overrides: str, **config: Any) -> Graph:
    """The default graph with a ``recorder`` node writing to ``store`` and spooling in ``spool``."""
    raw = tomllib.loads(default_graph_path().read_text())
    node = raw["nodes"].setdefault("recorder", {"type": "recorder"})
    node.setdefault("config", {}).update({"store": store, "spool_dir": str(spool),
                                          "retry_initial_s": 0.2, "retry_max_s": 1.0, **config})
    return build_graph(raw, source="test-recorder-graph", overrides=overrides)


def recorder_graph_file(path: Path, store: str, spool: Path, **config: Any) -> Path:
    """Write the default graph plus a recorder node to ``path`` (for child processes)."""
    text = default_graph_path().read_text()
    if "[nodes.recorder]" not in text:
        text += '\n[nodes.recorder]\ntype = "recorder"\n'
    settings = {"store": store, "spool_dir": str(spool), "retry_initial_s": 0.2,
                "retry_max_s": 1.0, **config}
    body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    path.write_text(text + "[nodes.recorder.config]\n" + body)
    return path


class MotoServer:
    """moto's standalone S3-compatible server in a child process on a fixed loopback port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"moto server exited with {self.proc.returncode}")
                time.sleep(0.05)
        raise RuntimeError("moto server did not start within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def make_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(
            Bucket=name)

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        out = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        return out


