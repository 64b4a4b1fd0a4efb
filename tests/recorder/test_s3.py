"""The S3 store against a real S3-compatible server (moto, a child process on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil

import pytest

from telewire.archive import ARCHIVE_FILES, find_archive, uploader_for
from telewire.stores import S3Store, StoreError
from telewire.testing.simulator import CallSimulator

AUDIO = bytes(range(256)) * 25


def s3_url(moto, bucket: str = "calls", prefix: str = "prod/rec") -> str:
    return f"s3://{bucket}/{prefix}?endpoint_url={moto.endpoint}&region=us-east-1"


async def test_small_file_upload_and_download(moto, tmp_path):
    moto.make_bucket("calls")
    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(1000))
    store = S3Store(s3_url(moto))
    assert await store.put_file("x/a.bin", src) == "s3://calls/prod/rec/x/a.bin"
    assert moto.objects("calls") == {"prod/rec/x/a.bin": src.read_bytes()}
    back = await store.get_file("x/a.bin", tmp_path / "back")
    assert back.read_bytes() == src.read_bytes()


async def test_large_file_goes_up_in_5_mb_parts_byte_identical(moto, tmp_path):
    import boto3

    moto.make_bucket("calls")
    src = tmp_path / "big.wav"
    src.write_bytes(os.urandom(11 * 1024 * 1024 + 17))  # 3 parts: 5 MB, 5 MB, the rest
    await S3Store(s3_url(moto)).put_file("big.wav", src)
    s3 = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1")
    head = s3.head_object(Bucket="calls", Key="prod/rec/big.wav")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object of three parts
    body = s3.get_object(Bucket="calls", Key="prod/rec/big.wav")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(src.read_bytes()).digest()
    assert s3.list_multipart_uploads(Bucket="calls").get("Uploads", []) == []


async def test_endpoint_and_region_from_the_aws_environment(moto, tmp_path, monkeypatch):
    moto.make_bucket("envbucket")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto.endpoint)
    src = tmp_path / "f"
    src.write_bytes(b"hello")
    await S3Store("s3://envbucket").put_file("k/f", src)
    assert moto.objects("envbucket") == {"k/f": b"hello"}


async def test_missing_bucket_is_a_precise_store_error(moto, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with pytest.raises(StoreError, match=r"s3://nosuch/prod/rec/f: upload failed: .*NoSuchBucket"):
        await S3Store(s3_url(moto, bucket="nosuch")).put_file("f", src)


async def test_call_archive_lands_in_s3_under_the_prefix_with_hostile_ids(moto, rec_server):
    moto.make_bucket("calls")
    srv = await rec_server(store=s3_url(moto))
    sim = CallSimulator(f"ws://127.0.0.1:{srv.port}/media/twilio", pace=0, expect_echo=True,
                        stream_sid="../../../../etc", call_sid="a/b/../c")
    result = await sim.run(AUDIO)
    await srv.stop(drain_timeout_s=10)
    record = find_archive(result.stream_sid)
    assert record is not None and record.status == "stored"
    objects = moto.objects("calls")
    assert len(objects) == 4
    for key in objects:
        assert key.startswith("prod/rec/twilio/") and "/../" not in key and "//" not in key
    assert {k.rsplit("/", 1)[1] for k in objects} == set(ARCHIVE_FILES)


async def test_outage_at_end_spools_then_the_archive_is_stored_byte_identical(moto, rec_server,
                                                                              dirs, tmp_path):
    moto.make_bucket("calls")
    srv = await rec_server(store=s3_url(moto))
    moto.stop()  # the store goes away before the call ends
    result = await CallSimulator(f"ws://127.0.0.1:{srv.port}/media/twilio", pace=0,
                                 expect_echo=True).run(AUDIO)
    spool = uploader_for(dirs[1])
    for _ in range(300):  # the first attempt fails and is recorded
        record = find_archive(result.stream_sid)
        if record is not None and record.status == "spooled":
            break
        await asyncio.sleep(0.02)
    assert record is not None and record.status == "spooled" and record.error
    (entry,) = spool.entries()
    assert entry.state == "ready" and entry.attempts >= 1
    kept = tmp_path / "kept"
    shutil.copytree(entry.path, kept)  # what the spool holds, to compare with the store later
    moto.start()  # back (empty: moto keeps nothing across restarts)
    moto.make_bucket("calls")
    for _ in range(500):  # the background retry (backoff at most 1 s here) stores it
        record = find_archive(result.stream_sid)
        if record is not None and record.status == "stored":
            break
        await asyncio.sleep(0.02)
    assert record is not None and record.status == "stored"
    assert spool.entries() == [] and not entry.path.exists()
    objects = moto.objects("calls")
    manifest = json.loads((kept / "manifest.json").read_text())
    for name in ARCHIVE_FILES:
        assert objects[f"prod/rec/{manifest['key']}/{name}"] == (kept / name).read_bytes(), name
    assert len(objects) == 4
