"""The benchmark's turn-taking schedule (``bench/loadgen.py``): pure arithmetic, no servers.

The benchmark's verdicts rest on every system getting the same slots of the same machine, so the
schedule that hands out the slots is tested like product code.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_loadgen", Path(__file__).resolve().parent.parent / "bench" / "loadgen.py")
loadgen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loadgen)


def test_one_system_always_sends():
    s = loadgen.Schedule(1, start=10.0, slot=2.0, gap=0.5)
    for t in (0.0, 10.0, 11.9, 12.3, 1000.0):
        assert s.sending_at(0, t) == t


def test_systems_take_turns_of_slot_then_gap():
    s = loadgen.Schedule(3, start=100.0, slot=2.0, gap=0.5)  # a turn is 7.5 s
    # system 0 sends in [100, 102), system 1 in [102.5, 104.5), system 2 in [105, 107), ...
    assert s.sending_at(0, 100.0) == 100.0
    assert s.sending_at(0, 101.99) == 101.99
    assert s.sending_at(0, 102.0) == pytest.approx(107.5)  # its gap, then the others' slots
    assert s.sending_at(1, 101.0) == pytest.approx(102.5)
    assert s.sending_at(1, 104.0) == 104.0
    assert s.sending_at(1, 104.6) == pytest.approx(110.0)  # in its own gap: the next turn
    assert s.sending_at(2, 106.0) == 106.0
    assert s.sending_at(2, 112.6) == 112.6  # second turn
    assert s.sending_at(2, 50.0) == pytest.approx(105.0)  # before the schedule starts


def test_no_two_systems_send_at_once_and_each_gets_its_share():
    s = loadgen.Schedule(4, start=0.0, slot=2.0, gap=0.5)
    step = 0.01
    sending = [0.0] * 4
    for i in range(int(100 / step)):  # ten turns
        t = i * step + step / 2
        who = [k for k in range(4) if s.sending_at(k, t) == t]
        assert len(who) <= 1, f"{who} all send at {t}"
        for k in who:
            sending[k] += step
    assert sending == pytest.approx([20.0] * 4, abs=0.02)  # 10 turns x 2 s each


def _load_bench_run():
    bench = Path(__file__).resolve().parent.parent / "bench"
    spec = importlib.util.spec_from_file_location("bench_run", bench / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(bench))  # run.py imports its sibling loadgen.py
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))
    return module


bench_run = _load_bench_run()


@pytest.mark.parametrize("n", [2, 3, 5])
def test_turn_orders_give_every_system_a_new_predecessor_each_round(n):
    systems = [f"s{i}" for i in range(n)]
    orders = bench_run.turn_orders(systems, max(1, n - 1))
    predecessors = {s: [] for s in systems}
    for order in orders:
        assert sorted(order) == systems                     # every system once per round
        for i, s in enumerate(order):                      # turns repeat: the cycle wraps
            predecessors[s].append(order[i - 1])
    for s, preds in predecessors.items():
        assert s not in preds and len(set(preds)) == len(preds) == max(1, n - 1), (s, preds)


def test_turn_orders_keep_going_past_the_distinct_ones():
    orders = bench_run.turn_orders(["a", "b", "c"], 5)
    assert len(orders) == 5 and all(sorted(o) == ["a", "b", "c"] for o in orders)
