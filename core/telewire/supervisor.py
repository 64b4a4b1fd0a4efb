"""``telewire serve --workers N``: N worker processes on one port, kept running by a supervisor.

Depends on the standard library and ``loguru`` only; the CLI depends on it (a worker is
``telewire serve`` itself, run with a hidden ``--reuse-port`` or ``--listen-fd``).

How the port is shared:

* **SO_REUSEPORT** (Linux, and the BSDs' ``SO_REUSEPORT_LB``-less kin where the kernel balances;
  used on Linux): the supervisor binds ``host:port`` with ``SO_REUSEPORT`` and keeps that socket
  bound but not listening, which holds the port (``--port 0`` resolves once, and stays the same
  across restarts); every worker binds its own listening socket to it with ``SO_REUSEPORT``, and
  the kernel spreads new connections across the workers' sockets.
* **Fallback, a shared socket** (elsewhere, or ``TELEWIRE_REUSE_PORT=0``): the supervisor binds and
  listens once, and every worker inherits that socket and accepts from it (the pre-fork model).
  Connections then go to whichever worker accepts first, which spreads less evenly under load.

The supervisor restarts a worker that exits while it is not stopping (with a back-off when one
keeps dying), and on SIGTERM or SIGINT forwards SIGTERM to every worker and waits for each to
drain (``TELEWIRE_DRAIN_TIMEOUT_S`` + ``TELEWIRE_DRAIN_GOODBYE_S`` + a margin), then exits.
Each worker has its own worker id (``TELEWIRE_WORKER_ID``, suffixed ``-1`` … ``-N`` when set).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Sequence

from loguru import logger

__all__ = ["Supervisor", "reuse_port_available"]

#: a worker that dies this soon after starting counts as a crash loop
_QUICK_DEATH_S = 5.0
_MAX_BACKOFF_S = 30.0


def reuse_port_available() -> bool:
    """Whether workers share the port through ``SO_REUSEPORT`` (Linux) rather than one
    inherited socket; ``TELEWIRE_REUSE_PORT=0`` forces the fallback."""
    if os.environ.get("TELEWIRE_REUSE_PORT", "1").strip() in ("0", "false", "no"):
        return False
    return hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = 0.0
    due: float = 0.0


class Supervisor:
    """Runs ``workers`` copies of ``telewire serve`` on one port.

    Args:
        workers: how many worker processes.
        host / port: where to listen (``port`` 0: a free port, chosen once).
        serve_args: the ``telewire serve`` arguments every worker gets (graph, ``--set`` …),
            without ``--host``, ``--port`` or ``--workers``.
        stop_timeout_s: how long a worker may take to drain after SIGTERM before it is killed.
    """

    def __init__(self, workers: int, host: str, port: int, serve_args: Sequence[str],
                 stop_timeout_s: float) -> None:
        if workers < 1:
            raise ValueError("--workers must be at least 1")
        self.workers = [_Worker(i + 1) for i in range(workers)]
        self.host = host
        self.port = port
        self.serve_args = list(serve_args)
        self.stop_timeout_s = stop_timeout_s
        self.reuse_port = reuse_port_available()
        self._sock: socket.socket | None = None
        self._stopping = False

    def _bind(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.host, self.port))
        if not self.reuse_port:
            sock.listen(1024)
            sock.set_inheritable(True)
        self.port = int(sock.getsockname()[1])
        self._sock = sock

    def _command(self) -> tuple[list[str], tuple[int, ...]]:
        cmd = [sys.executable, "-m", "telewire.cli", "serve", *self.serve_args,
               "--host", self.host, "--port", str(self.port)]
        assert self._sock is not None
        if self.reuse_port:
            return cmd + ["--reuse-port"], ()
        return cmd + ["--listen-fd", str(self._sock.fileno())], (self._sock.fileno(),)

    def _spawn(self, worker: _Worker) -> None:
        cmd, fds = self._command()
        env = dict(os.environ)
        base = env.get("TELEWIRE_WORKER_ID", "").strip()
        if base:
            env["TELEWIRE_WORKER_ID"] = f"{base}-{worker.index}"
        worker.proc = subprocess.Popen(cmd, env=env, pass_fds=fds)
        worker.started = time.monotonic()
        logger.info("supervisor: worker {} started (pid {})", worker.index, worker.proc.pid)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def run(self) -> int:
        """Start the workers and keep them running until SIGTERM/SIGINT; returns the exit
        status (0 when every worker drained and exited cleanly)."""
        self._bind()
        how = "SO_REUSEPORT" if self.reuse_port else "one shared socket"
        logger.info("supervisor: {} workers on http://{}:{} ({})", len(self.workers), self.host,
                    self.port, how)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for worker in self.workers:
            self._spawn(worker)
        while not self._stopping:
            now = time.monotonic()
            for worker in self.workers:
                proc = worker.proc
                if proc is not None and proc.poll() is not None:
                    lived = now - worker.started
                    worker.backoff = (min(max(worker.backoff * 2, 1.0), _MAX_BACKOFF_S)
                                      if lived < _QUICK_DEATH_S else 0.0)
                    worker.due = now + worker.backoff
                    logger.error("supervisor: worker {} (pid {}) exited with {}; restarting{}",
                                 worker.index, proc.pid, proc.returncode,
                                 f" in {worker.backoff:g} s" if worker.backoff else "")
                    worker.proc = None
                if worker.proc is None and now >= worker.due and not self._stopping:
                    self._spawn(worker)
            time.sleep(0.1)
        return self._stop()

    def _stop(self) -> int:
        logger.info("supervisor: stopping; each worker drains")
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for proc in running:
            with _suppress_lookup():
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        status = 0
        for proc in running:
            try:
                code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("supervisor: worker pid {} did not stop within {:g} s; killing it",
                             proc.pid, self.stop_timeout_s)
                proc.kill()
                code = proc.wait()
            status = status or (0 if code == 0 else 1)
        if self._sock is not None:
            self._sock.close()
        logger.info("supervisor: stopped")
        return status


class _suppress_lookup:
    """``ProcessLookupError`` (the worker exited in between) is not an error here."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, ProcessLookupError)
