"""Prometheus metrics of one server, gathered when scraped: nothing is counted twice per frame.

Depends on ``prometheus_client`` and ``telewire.archive``; ``server`` builds one per server.

Nodes already count what they do (frames, drops, interrupts) on plain attributes, and say so
through :meth:`telewire.nodes.base.Node.counters`. A scrape sums those counters over the live
calls and adds the totals folded in from calls that ended, so the 50-frames-a-second path pays
nothing for metrics. Histograms (model time to first audio, barge-in reaction) are observed at
the end of each call from the samples its nodes kept.

A counter key is ``name`` or ``name:label`` (``interrupts:dtmf``); :data:`LABELS` names the
label of each labelled counter.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from telewire.graph import CallGraph

__all__ = ["CONTENT_TYPE", "LABELS", "ServerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: counters and what their documentation line says; the labelled ones' label names
HELP = {
    "frames_in": "audio frames received from carriers",
    "frames_out": "audio frames sent to carriers",
    "dropped_frames": "inbound messages or model audio dropped, by why",
    "interrupts": "barge-ins, by source",
    "model_reconnects": "model sessions reconnected or handed over",
    "cost_usd": "model cost in USD at the providers' list prices (calls whose cost is known)",
}
LABELS = {"dropped_frames": "why", "interrupts": "source"}
#: histogram samples nodes keep, in seconds
HISTOGRAMS = {
    "model_first_audio_seconds": ("time from a model response's start to its first audio",
                                  (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)),
    "barge_in_reaction_seconds": ("time from an interrupt to the carrier clear being sent",
                                  (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)),
}


def call_counters(call: CallGraph) -> Counter[str]:
    """The counters of every node of ``call``, summed by key."""
    total: Counter[str] = Counter()
    for node in call.nodes.values():
        total.update(node.counters())
    return total


class ServerMetrics(Collector):
    """The metrics of one :class:`~telewire.server.TelewireServer`, in a registry of their own.

    Args:
        live_calls: returns the calls now live.
        max_calls: the process's call limit.
        span_drops: returns how many spans tracing dropped (``None``: no tracing).
    """

    def __init__(self, live_calls: Callable[[], Iterable[CallGraph]], max_calls: int,
                 span_drops: Callable[[], int] | None = None) -> None:
        self._live = live_calls
        self._max_calls = max_calls
        self._span_drops = span_drops
        self._ended: Counter[str] = Counter()
        self._end_reasons: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.registry = CollectorRegistry(auto_describe=True)
        self._histograms = {
            name: Histogram(f"telewire_{name}", help_text, buckets=buckets,
                            registry=self.registry)
            for name, (help_text, buckets) in HISTOGRAMS.items()}
        self.registry.register(self)

    def call_ended(self, call: CallGraph) -> None:
        """Fold an ended call's counters and samples into the totals."""
        self._ended.update(call_counters(call))
        reason = call.end_frame.reason if call.end_frame is not None else "unknown"
        self._end_reasons[reason] += 1
        for node in call.nodes.values():
            for name, values in node.samples().items():
                histogram = self._histograms.get(name)
                if histogram is not None:
                    for value in values:
                        histogram.observe(value)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Any]:
        live = list(self._live())
        yield GaugeMetricFamily("telewire_live_calls", "calls in progress", value=len(live))
        yield GaugeMetricFamily("telewire_max_calls", "the process's call limit",
                                value=self._max_calls)
        ended = CounterMetricFamily("telewire_calls_ended", "calls ended, by end reason",
                                    labels=["reason"])
        for reason, n in sorted(self._end_reasons.items()):
            ended.add_metric([reason], n)
        yield ended
        refused = CounterMetricFamily("telewire_calls_refused",
                                      "media sockets or starts refused, by why", labels=["why"])
        for why, n in sorted(self.refused.items()):
            refused.add_metric([why], n)
        yield refused
        totals = Counter(self._ended)
        for call in live:
            totals.update(call_counters(call))
        families: dict[str, CounterMetricFamily] = {}
        for name, help_text in HELP.items():
            label = LABELS.get(name)
            families[name] = CounterMetricFamily(f"telewire_{name}", help_text,
                                                 labels=[label] if label else None)
        for key, value in sorted(totals.items()):
            name, _, label_value = key.partition(":")
            family = families.get(name)
            if family is None:
                continue
            if name in LABELS:
                family.add_metric([label_value or "unknown"], value)
            elif not label_value:
                family.add_metric([], value)
        for name, family in families.items():
            if name not in LABELS and not family.samples:
                family.add_metric([], 0)
        yield from families.values()
        yield from self._archive_metrics()
        if self._span_drops is not None:
            yield CounterMetricFamily("telewire_spans_dropped", "spans dropped by a full "
                                      "export queue", value=self._span_drops())

    @staticmethod
    def _archive_metrics() -> Iterator[Any]:
        from telewire.archive import uploaders

        failures = spooled = 0
        for up in uploaders():
            failures += up.failures
            spooled += up.spooled()
        yield CounterMetricFamily("telewire_store_failures", "archive uploads that failed "
                                  "(each is retried)", value=failures)
        yield GaugeMetricFamily("telewire_spool_archives", "archives in the spool waiting "
                                "for the store", value=spooled)
