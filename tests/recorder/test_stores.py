"""Stores: URL parsing, key sanitising, refusal of keys that escape, and the entry points."""

from __future__ import annotations

from importlib import metadata

import pytest

from telewire.archive import archive_key
from telewire.errors import ConfigError
from telewire.stores import FileStore, S3Store, StoreError, check_key, open_store, safe_segment

HOSTILE = ["../../etc/passwd", "..", ".", "a/b\\c", "CA\x00x", "é💥 id", "", "x" * 500,
           "%2e%2e%2f", "/abs"]


@pytest.mark.parametrize("value", HOSTILE)
def test_safe_segment_never_yields_a_path_step(value):
    seg = safe_segment(value)
    assert seg and "/" not in seg and "\\" not in seg and not seg.startswith(".")
    assert len(seg) <= 96
    check_key(seg)


def test_archive_key_from_hostile_ids_stays_seven_plain_levels_deep():
    key = archive_key({"carrier": "../x", "call_id": "../../../etc", "stream_id": "a/../../b",
                       "archive_id": "../..", "started_at": 0})
    parts = key.split("/")
    assert len(parts) == 7 and parts[1:4] == ["1970", "01", "01"]
    assert all(p not in ("", ".", "..") for p in parts)


def test_ids_that_sanitise_alike_still_get_keys_of_their_own():
    metas = [{"carrier": "twilio", "call_id": cid, "stream_id": "MZ1", "started_at": 0,
              "archive_id": f"19700101T000000Z-MZ1-{n:016x}"}
             for n, cid in enumerate(["CA/x", "CA_x", "CA?x"])]
    assert {safe_segment(m["call_id"]) for m in metas} == {"CA_x"}
    keys = [archive_key(m) for m in metas]
    assert len(set(keys)) == 3
    assert all(k.rsplit("/", 1)[1] == m["archive_id"] for k, m in zip(keys, metas))


@pytest.mark.parametrize("key", ["../x", "a/../../x", "a//b", "./a", ""])
def test_check_key_refuses_path_steps(key):
    with pytest.raises(StoreError, match="refusing object key"):
        check_key(key)


async def test_file_store_refuses_a_key_that_leaves_its_folder(tmp_path):
    store = FileStore(f"file://{tmp_path / 'root'}")
    src = tmp_path / "f"
    src.write_bytes(b"data")
    with pytest.raises(StoreError, match="refusing object key"):
        await store.put_file("../outside", src)
    assert not (tmp_path / "outside").exists()
    where = await store.put_file("a/b/c.bin", src)
    assert (tmp_path / "root" / "a/b/c.bin").read_bytes() == b"data" and where.endswith("c.bin")
    assert [p.name for p in (tmp_path / "root/a/b").iterdir()] == ["c.bin"]  # no temp left


def test_store_urls_are_checked_when_parsed(tmp_path):
    with pytest.raises(ConfigError, match="no store for scheme 'ftp'; installed: file, s3"):
        open_store("ftp://x")
    with pytest.raises(ConfigError, match="expected SCHEME://"):
        open_store("./recordings")
    with pytest.raises(ConfigError, match="unknown query parameters"):
        open_store("s3://bucket/p?endpoint=x")
    with pytest.raises(ConfigError, match="bad prefix"):
        open_store("s3://bucket/a/../b")
    s3 = open_store("s3://bkt/calls/prod?endpoint_url=http://127.0.0.1:9&region=eu-west-1")
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix, s3.region) == (
        "bkt", "calls/prod", "eu-west-1")
    assert s3.location("k/x.wav") == "s3://bkt/calls/prod/k/x.wav"
    assert isinstance(open_store(f"file://{tmp_path}"), FileStore)


def test_the_stores_and_the_recorder_are_entry_points_of_the_telewire_distribution():
    eps = metadata.distribution("telewire").entry_points
    stores = {ep.name: ep.value for ep in eps if ep.group == "telewire.stores"}
    nodes = {ep.name: ep.value for ep in eps if ep.group == "telewire.nodes"}
    assert stores == {"file": "telewire.stores:FileStore", "s3": "telewire.stores:S3Store"}
    assert nodes.get("recorder") == "telewire.nodes.recorder:Recorder"
    assert open_store("s3://b").__class__ is metadata.EntryPoint(
        "s3", stores["s3"], "telewire.stores").load()
