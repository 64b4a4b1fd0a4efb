"""The spool without a network: its instance id, archive locks, stores that never overwrite."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import subprocess
import sys
import time

import pytest

from telewire.archive import INSTANCE_ID, LOCK, Uploader, spool_instance_id
from telewire.errors import TelewireError
from telewire.stores import FileStore, KeyExistsError


def _ready(spool, name, store, key=None):
    """A ready archive in ``spool`` (what finalize leaves), bound for ``store``."""
    folder = spool / name
    folder.mkdir(parents=True)
    manifest = {"archive_id": name, "carrier": "twilio", "stream_id": "MZ" + name,
                "call_id": "CA1", "store": store, "key": key or f"twilio/1970/01/01/CA1/{name}"}
    for file, body in (("call.wav", b"RIFF" + name.encode()), ("transcript.json", b"{}"),
                       ("events.jsonl", b""), ("manifest.json", json.dumps(manifest).encode())):
        (folder / file).write_bytes(body)
    return folder


def _partial(spool, name, *, host="elsewhere", pid=1):
    folder = spool / f"{name}.partial"
    folder.mkdir(parents=True)
    meta = {"archive_id": name, "carrier": "twilio", "stream_id": "MZ" + name, "call_id": "CA1",
            "account_id": "", "custom_parameters": {}, "tracks": ["inbound"],
            "media_format": {"codec": "pcmu", "sample_rate": 8000, "channels": 1},
            "started_at": 0, "store": f"file://{spool.parent / 'store'}", "pid": pid,
            "host": host, "instance_id": "x", "key": f"twilio/1970/01/01/CA1/{name}"}
    (folder / "call.json").write_text(json.dumps(meta))
    (folder / "caller.track").write_bytes(b"\x01" * 160)
    (folder / LOCK).touch()
    return folder


# ------------------------------------------------------------------------------- instance id


def test_the_instance_id_is_made_once_and_kept(tmp_path):
    spool = tmp_path / "spool"
    first = spool_instance_id(spool)
    assert len(first) == 32 and (spool / INSTANCE_ID).read_text().strip() == first
    assert spool_instance_id(spool) == first == Uploader(spool).instance_id


def test_processes_starting_together_agree_on_one_instance_id(tmp_path):
    spool = tmp_path / "spool"
    code = ("import sys; from pathlib import Path; from telewire.archive import "
            "spool_instance_id; print(spool_instance_id(Path(sys.argv[1])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(spool)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(4)]
    ids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(ids) == 1 and ids == {(spool / INSTANCE_ID).read_text().strip()}


def test_a_mangled_instance_id_is_refused_naming_the_file(tmp_path):
    (tmp_path / INSTANCE_ID).write_text("../../x\n")
    with pytest.raises(TelewireError, match=r"instance-id: not a spool instance id"):
        spool_instance_id(tmp_path)


# ------------------------------------------------------------------------------- ownership


def _hold(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


async def test_a_partial_whose_lock_nobody_holds_is_recovered_whatever_its_host(tmp_path):
    """A restarted container has a new host name and pid: the lock, not they, says the
    recording process is gone."""
    spool = tmp_path / "spool"
    dead = _partial(spool, "dead", host="old-container-name", pid=os.getpid())
    live = _partial(spool, "live", host="old-container-name", pid=2**22 + 1)
    fd = _hold(live / LOCK)  # as a live recording process would
    try:
        up = Uploader(spool)
        assert {e.archive_id: e.state for e in up.entries()} == {"dead": "orphaned",
                                                                 "live": "recording"}
        stored, failed = await up.flush()
        assert failed == [] and [r.archive_id for r in stored] == ["dead"]
        assert not dead.exists() and live.exists()
    finally:
        os.close(fd)
    assert {e.archive_id: e.state for e in Uploader(spool).entries()} == {"live": "orphaned"}


async def test_a_ready_archive_being_uploaded_elsewhere_is_left_to_it(tmp_path):
    spool = tmp_path / "spool"
    folder = _ready(spool, "a", f"file://{tmp_path / 'store'}")
    fd = _hold(folder / LOCK)
    try:
        assert await Uploader(spool).upload(folder) is None
        assert folder.exists() and not (tmp_path / "store").exists()
    finally:
        os.close(fd)
    record = await Uploader(spool).upload(folder)
    assert record is not None and record.status == "stored" and not folder.exists()


async def test_two_live_uploaders_never_upload_one_archive_twice(tmp_path, monkeypatch):
    spool, store = tmp_path / "spool", tmp_path / "store"
    for i in range(6):
        _ready(spool, f"a{i}", f"file://{store}")
    puts: list[str] = []
    real_put = FileStore.put_file

    async def slow_put(self, key, path):
        puts.append(key)
        await asyncio.sleep(0.01)
        return await real_put(self, key, path)

    monkeypatch.setattr(FileStore, "put_file", slow_put)
    results = await asyncio.gather(Uploader(spool).flush(), Uploader(spool).flush())
    stored = [r.archive_id for ok, _ in results for r in ok]
    assert sorted(stored) == [f"a{i}" for i in range(6)]
    assert [failed for _, failed in results] == [[], []]
    assert len(puts) == len(set(puts)) == 6 * 4
    assert [p.name for p in spool.iterdir()] == []


# ------------------------------------------------------------------------------- no overwrite


async def test_the_file_store_never_replaces_an_object(tmp_path):
    store = FileStore(f"file://{tmp_path / 'root'}")
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"first")
    b.write_bytes(b"second")
    where = await store.put_file("k/f", a)
    assert await store.put_file("k/f", a) == where  # a retry of the same bytes: fine
    with pytest.raises(KeyExistsError, match=r"k/f: already exists with other content"):
        await store.put_file("k/f", b)
    assert (tmp_path / "root/k/f").read_bytes() == b"first"
    assert [p.name for p in (tmp_path / "root/k").iterdir()] == ["f"]  # no temp left


async def test_the_file_store_without_hard_links_creates_exclusively(tmp_path, monkeypatch):
    import errno

    def no_links(*_a, **_k):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    store = FileStore(f"file://{tmp_path / 'root'}")
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"first")
    b.write_bytes(b"second")
    await store.put_file("f", a)
    await store.put_file("f", a)
    with pytest.raises(KeyExistsError):
        await store.put_file("f", b)
    assert (tmp_path / "root/f").read_bytes() == b"first"
    assert [p.name for p in (tmp_path / "root").iterdir()] == ["f"]


async def test_a_taken_key_gives_the_archive_a_new_one_and_loses_nothing(tmp_path):
    spool, store = tmp_path / "spool", tmp_path / "store"
    key = "twilio/1970/01/01/CA1/x"
    (store / key).mkdir(parents=True)
    (store / key / "call.wav").write_bytes(b"someone else's recording")
    folder = _ready(spool, "x", f"file://{store}", key=key)
    mine = (folder / "call.wav").read_bytes()
    record = await Uploader(spool).upload(folder)
    assert record is not None and record.status == "stored"
    assert (store / key / "call.wav").read_bytes() == b"someone else's recording"
    new = store / record.locations["manifest.json"].rsplit("/", 1)[0].split(str(store) + "/")[1]
    assert new.parent == store / "twilio/1970/01/01/CA1" and new.name.startswith("x-")
    assert (new / "call.wav").read_bytes() == mine
    manifest = json.loads((new / "manifest.json").read_text())
    assert manifest["key"] == str(new.relative_to(store)) and manifest["key_conflicts"] == [key]


async def test_an_upload_cut_short_is_finished_by_the_retry_under_the_same_key(tmp_path):
    spool, store = tmp_path / "spool", tmp_path / "store"
    folder = _ready(spool, "x", f"file://{store}")
    await FileStore(f"file://{store}").put_file("twilio/1970/01/01/CA1/x/call.wav",
                                                folder / "call.wav")  # the first attempt died
    record = await Uploader(spool).upload(folder)
    assert record is not None
    assert sorted(p.name for p in (store / "twilio/1970/01/01/CA1/x").iterdir()) == [
        "call.wav", "events.jsonl", "manifest.json", "transcript.json"]
    assert "key_conflicts" not in json.loads(
        (store / "twilio/1970/01/01/CA1/x/manifest.json").read_text())


def test_lock_files_are_released_when_their_process_dies(tmp_path):
    path = tmp_path / "lock"
    path.touch()
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        from telewire.archive import _try_lock

        assert _try_lock(path) is None
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        fd = _try_lock(path)
        while fd is None and time.monotonic() < deadline:
            time.sleep(0.01)
            fd = _try_lock(path)
        assert fd is not None
        os.close(fd)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
