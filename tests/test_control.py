"""The control plane: the in-process one, and the Redis one against a real redis-server."""

from __future__ import annotations

import asyncio
import json

import pytest

from telewire.control import (CallEntry, Command, LocalControlPlane, RedisControlPlane, Reply,
                              control_plane)
from telewire.errors import ConfigError
from telewire.redact import MASK, mask
from telewire.settings import load_settings


def entry(call_id: str = "CA1", worker: str = "w1", carrier: str = "twilio") -> CallEntry:
    return CallEntry(carrier=carrier, call_id=call_id, stream_id="MZ1", worker=worker,
                     started=1.7e9)


async def poll(predicate, timeout: float = 20.0, what: str = "the condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, f"{what} did not hold in {timeout} s"
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------ values


@pytest.mark.parametrize("bad", [
    {"call_id": "../etc/passwd"}, {"call_id": ""}, {"carrier": "tw/ilio"},
    {"worker": "a b"}, {"worker": "x" * 65}, {"started": float("nan")}, {"started": "now"},
    {"state": "dead"}, {"stream_id": "a\nb"}])
def test_a_bad_call_entry_is_refused(bad):
    fields = {"carrier": "twilio", "call_id": "CA1", "stream_id": "MZ1", "worker": "w1",
              "started": 1.0, **bad}
    with pytest.raises(ValueError):
        CallEntry(**fields)


def test_an_entry_round_trips_and_garbage_does_not_parse():
    e = entry()
    assert CallEntry.from_json(e.to_json()) == e
    for text in ("[]", '"x"', '{"carrier": "twilio"}',
                 json.dumps({**json.loads(e.to_json()), "call_id": "../../x"})):
        with pytest.raises((ValueError, TypeError)):
            CallEntry.from_json(text)


def test_a_command_checks_its_action_and_ids():
    Command(action="steer", call_id="CA1", body={"instructions": "x"})
    for bad in ({"action": "rm"}, {"call_id": "a/b"}, {"carrier": "x y"}):
        with pytest.raises(ValueError):
            Command(**{"action": "hangup", "call_id": "CA1", **bad})


def test_the_settings_pick_the_plane_and_the_password_is_never_shown(monkeypatch):
    assert isinstance(control_plane(load_settings()), LocalControlPlane)
    url = "redis://:hunter2@127.0.0.1:6379/0"
    settings = load_settings(control_url=url, worker_id="alpha")
    plane = control_plane(settings)
    assert isinstance(plane, RedisControlPlane) and plane.worker_id == "alpha"
    assert "hunter2" not in plane.where() and MASK in plane.where()
    assert "hunter2" not in json.dumps(mask(settings))
    with pytest.raises(ConfigError, match="redis://"):
        control_plane(load_settings(control_url="http://x"))
    with pytest.raises(ConfigError, match="TELEWIRE_WORKER_ID"):
        LocalControlPlane(worker_id="bad id")


# ------------------------------------------------------------------------------ in-process


async def test_the_local_plane_registers_caps_and_removes():
    plane = LocalControlPlane(worker_id="w1")
    assert await plane.admit(entry("CA1"), cap=2)
    assert await plane.admit(entry("CA2"), cap=2)
    assert not await plane.admit(entry("CA3"), cap=2)
    assert await plane.admit(entry("CA1"), cap=2)  # re-admitting a registered call is no new one
    assert await plane.count() == 2
    await plane.update(CallEntry(**{**json.loads(entry("CA1").to_json()), "state": "draining"}))
    assert {e.call_id: e.state for e in await plane.calls()} == {"CA1": "draining", "CA2": "live"}
    await plane.remove("twilio", "CA1")
    await plane.remove("twilio", "CA1")  # twice is no error
    assert [e.call_id for e in await plane.calls()] == ["CA2"]


async def test_the_local_plane_runs_commands_through_the_handler():
    plane = LocalControlPlane()
    assert (await plane.send(Command(action="hangup", call_id="CA1"))).status == 503
    seen = []

    async def handler(command: Command) -> Reply:
        seen.append(command)
        return Reply.json(200, {"ok": True})

    await plane.start(handler)
    reply = await plane.send(Command(action="interrupt", call_id="CA1", carrier="twilio"))
    assert reply.status == 200 and seen[0].action == "interrupt"


async def test_the_local_plane_delivers_events_to_matching_subscribers():
    plane = LocalControlPlane()
    async with plane.subscribe(call_id="CA1") as one, plane.subscribe() as every:
        await plane.publish_event("twilio", "CA2", {"type": "transcript", "text": "b"})
        await plane.publish_event("twilio", "CA1", {"type": "transcript", "text": "a"})
        assert (await asyncio.wait_for(one.get(), 5)).data["text"] == "a"
        assert [(await asyncio.wait_for(every.get(), 5)).call_id for _ in range(2)] == ["CA2",
                                                                                          "CA1"]
    with pytest.raises(TypeError):
        await plane.publish_event("twilio", "CA1", ["a list"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await plane.publish_event("twilio", "CA1", {"text": "x" * 70_000})


async def test_a_slow_subscriber_loses_the_oldest_events_not_the_call():
    plane = LocalControlPlane()
    async with plane.subscribe(maxsize=3) as sub:
        for i in range(10):
            await plane.publish_event("twilio", "CA1", {"i": i})
        assert sub.dropped == 7
        assert [(await sub.get()).data["i"] for _ in range(3)] == [7, 8, 9]


# ------------------------------------------------------------------------------ Redis


@pytest.fixture
async def planes(redis_url):
    made: list[RedisControlPlane] = []

    async def make(worker: str, ttl_s: float = 15.0, handler=None, **kw) -> RedisControlPlane:
        plane = RedisControlPlane(redis_url, worker_id=worker, ttl_s=ttl_s, timeout_s=2.0, **kw)

        async def none(command: Command) -> Reply:
            return Reply.error(404, "no live call")

        await plane.start(handler or none)
        made.append(plane)
        return plane

    yield make
    for plane in made:
        await plane.close()


async def test_redis_registry_is_shared_and_the_cluster_cap_is_atomic(planes):
    a, b = await planes("a"), await planes("b")
    results = await asyncio.gather(*(p.admit(entry(f"CA{p.worker_id}{i}", p.worker_id), cap=5)
                                     for i in range(10) for p in (a, b)))
    assert results.count(True) == 5  # 20 racing admissions, exactly 5 places
    assert await a.count() == 5 and await b.count() == 5
    listed = await b.calls()
    assert len(listed) == 5 and {e.worker for e in listed} <= {"a", "b"}
    await a.close()  # a's calls leave with it
    assert {e.worker for e in await b.calls()} <= {"b"}


async def test_redis_entries_of_a_dead_worker_expire_within_the_ttl(planes):
    a, b = await planes("a", ttl_s=1.0), await planes("b", ttl_s=1.0)
    await a.admit(entry("CA1", "a"))
    await b.admit(entry("CB1", "b"))

    async def refreshed_past_the_ttl() -> bool:
        return await b.count() == 2

    # refreshing keeps both alive well past one TTL …
    await asyncio.sleep(0)
    for _ in range(3):
        await poll(refreshed_past_the_ttl, what="both calls listed")
    for task in a._tasks:  # … until a stops refreshing, as a killed process does
        task.cancel()

    async def only_b() -> bool:
        return [e.call_id for e in await b.calls()] == ["CB1"]

    await poll(only_b, timeout=10, what="the dead worker's call expired")


async def test_redis_commands_reach_the_holder_and_unknown_calls_are_404(planes):
    got: list[Command] = []

    async def holder(command: Command) -> Reply:
        got.append(command)
        return Reply.json(200, {"ok": True, "action": command.action})

    a = await planes("a")
    b = await planes("b", handler=holder)
    await b.admit(entry("CA1", "b"))
    reply = await a.send(Command(action="steer", call_id="CA1", body={"instructions": "x"}))
    assert reply.status == 200 and json.loads(reply.body)["action"] == "steer"
    assert got == [Command(action="steer", call_id="CA1", carrier="twilio",
                           body={"instructions": "x"})]
    assert (await a.send(Command(action="hangup", call_id="CA404"))).status == 404
    assert (await a.send(Command(action="hangup", call_id="CA1", carrier="bandwidth"))
            ).status == 404
    # the same id live on two carriers: the operator must name one
    await b.admit(entry("CA1", "b", carrier="bandwidth"))
    assert (await a.send(Command(action="hangup", call_id="CA1"))).status == 409


async def test_redis_command_to_a_gone_worker_is_404_and_to_a_mute_one_504(planes, redis_url):
    a = await planes("a")
    await a.admit(entry("CG1", "gone"))  # an entry naming a worker nobody runs
    reply = await a.send(Command(action="hangup", call_id="CG1"))
    assert reply.status == 404 and "gone" in reply.body

    async def never(command: Command) -> Reply:
        await asyncio.sleep(30)
        return Reply.json(200, {})

    b = await planes("b", handler=never)
    await b.admit(entry("CM1", "b"))
    reply = await a.send(Command(action="hangup", call_id="CM1"))
    assert reply.status == 504 and "may or may not" in reply.body


async def test_redis_garbage_is_never_trusted(planes, redis_url):
    import redis.asyncio as aioredis

    a = await planes("a")
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        far = 2 ** 50
        await r.zadd("telewire:calls", {"twilio:CAX": far, "../x:y": far, "twilio:CAY": far})
        await r.set("telewire:call:twilio:CAX", "{not json")
        await r.set("telewire:call:twilio:CAY", json.dumps(
            {**json.loads(entry("CAZ").to_json())}))  # names another call than its key
        assert await a.calls() == []
        # a forged command on a's channel: bad sender, bad ids, unknown action -> ignored
        for msg in ({"kind": "command", "id": "0" * 32, "from": "../x", "action": "hangup",
                     "call_id": "CA1"},
                    {"kind": "command", "id": "1" * 32, "from": "b", "action": "rm",
                     "call_id": "CA1"},
                    {"kind": "reply", "id": "nope"}, "not json"):
            await r.publish("telewire:w:a", msg if isinstance(msg, str) else json.dumps(msg))
        await asyncio.sleep(0.2)
    finally:
        await r.aclose() if hasattr(r, "aclose") else await r.close()


async def test_redis_events_reach_subscribers_in_other_processes(planes):
    a, b = await planes("a"), await planes("b")
    async with b.subscribe(call_id="CA1") as one, b.subscribe() as every:
        await asyncio.wait_for(one.subscribed.wait(), 10)
        await asyncio.wait_for(every.subscribed.wait(), 10)
        await a.publish_event("twilio", "CA2", {"type": "state", "state": "live"})
        await a.publish_event("twilio", "CA1", {"type": "transcript", "text": "hello"})
        event = await asyncio.wait_for(one.get(), 10)
        assert (event.carrier, event.call_id, event.data["text"]) == ("twilio", "CA1", "hello")
        seen = [(await asyncio.wait_for(every.get(), 10)).call_id for _ in range(2)]
        assert seen == ["CA2", "CA1"]


async def test_an_unreachable_redis_is_a_config_error_without_the_password():
    plane = RedisControlPlane("redis://:hunter2@127.0.0.1:1/0", worker_id="a")

    async def none(command: Command) -> Reply:
        return Reply.error(404, "")

    with pytest.raises(ConfigError) as caught:
        await plane.start(none)
    assert "unreachable" in str(caught.value) and "hunter2" not in str(caught.value)
    await plane.close()
