"""What tracing costs per frame at each TELEWIRE_TRACE_FRAMES level (a micro-benchmark).

Run: ``.venv/bin/python bench/tracing_cost.py``. It drives one call's observers directly, as the
graph's dispatcher does after a frame's targets, and prints the nanoseconds each audio frame
costs: at ``off`` the audio ports have no observer at all (the dispatcher takes its no-observer
path), at ``sampled`` one counter step (and one span event in 50), at ``all`` one span event.
"""

from __future__ import annotations

import time

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from telewire.frames import AudioFrame, EndFrame, StartFrame
from telewire.graph import load_graph
from telewire.tracing import Tracing

N = 200_000


def per_frame_ns(level: str, graph) -> tuple[float, bool]:
    t = Tracing(frames="off" if level == "noop" else level,
                exporters=(InMemorySpanExporter(),), otlp=False)
    call = t.new_call()
    observers = call.observers(graph, {}).get(("tel_in", "audio"), [])
    if level == "noop":  # the price of calling any observer at all, for reference
        observers = [lambda node, port, frame: None]
    call.start(StartFrame(carrier="twilio", stream_id="MZ" + "1" * 32, call_id="CA" + "2" * 32))
    frame = AudioFrame(payload="/" * 212 + "w==", sequence=1)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(N):
            for ob in observers:
                ob("tel_in", "audio", frame)
        best = min(best, (time.perf_counter_ns() - t0) / N)
    call.end(EndFrame(reason="bench"))
    t.shutdown()
    return best, bool(observers)


def main() -> None:
    graph = load_graph(None)
    for level in ("noop", "off", "sampled", "all"):
        ns, tapped = per_frame_ns(level, graph)
        print(f"{level:<8} {ns:8.0f} ns per audio frame "
              f"({'observer on the audio port' if tapped else 'no observer on audio ports'})")


if __name__ == "__main__":
    main()
