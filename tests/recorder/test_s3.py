"""The S3 store against a real S3-compatible server (moto, a child process on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil

import pytest

from telewire.archive import ARCHIVE_FILES, find_archive, uploader_for
from telewire.stores import KeyExistsError, S3Store, StoreError
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


async def test_call_archive_lands_in_s3_under_the_prefix_and_its_archive_id(moto, rec_server):
    moto.make_bucket("calls")
    srv = await rec_server(store=s3_url(moto))
    sim = CallSimulator(f"ws://127.0.0.1:{srv.port}/media/twilio", pace=0, expect_echo=True)
    result = await sim.run(AUDIO)
    await srv.stop(drain_timeout_s=10)
    record = find_archive(result.stream_sid)
    assert record is not None and record.status == "stored"
    objects = moto.objects("calls")
    assert len(objects) == 4
    for key in objects:
        parts = key.split("/")
        assert parts[:3] == ["prod", "rec", "twilio"] and len(parts) == 10, key
        assert parts[7] == result.stream_sid and parts[8] == record.archive_id
    assert {k.rsplit("/", 1)[1] for k in objects} == set(ARCHIVE_FILES)


async def test_puts_are_conditional_and_never_overwrite(moto, tmp_path):
    """moto (5.2) enforces If-None-Match: * on PutObject and CompleteMultipartUpload."""
    moto.make_bucket("calls")
    store = S3Store(s3_url(moto))
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"first")
    b.write_bytes(b"second")
    await store.put_file("k/f", a)
    assert await store.put_file("k/f", a) == "s3://calls/prod/rec/k/f"  # same bytes: a retry
    with pytest.raises(KeyExistsError, match=r"s3://calls/prod/rec/k/f: already exists"):
        await store.put_file("k/f", b)
    assert moto.objects("calls") == {"prod/rec/k/f": b"first"}


async def test_multipart_puts_are_conditional_too(moto, tmp_path):
    import boto3

    moto.make_bucket("calls")
    store = S3Store(s3_url(moto))
    big, other = tmp_path / "big", tmp_path / "other"
    big.write_bytes(os.urandom(6 * 1024 * 1024))
    other.write_bytes(os.urandom(6 * 1024 * 1024))
    await store.put_file("big", big)
    await store.put_file("big", big)  # identical: the multipart ETag matches
    with pytest.raises(KeyExistsError):
        await store.put_file("big", other)
    assert moto.objects("calls")["prod/rec/big"] == big.read_bytes()
    s3 = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1")
    assert s3.list_multipart_uploads(Bucket="calls").get("Uploads", []) == []  # aborted


async def test_the_if_none_match_header_is_sent(moto, tmp_path):
    """What reaches the wire, for servers that would not enforce it: the header on both."""
    seen: list[tuple[str, str | None]] = []

    class Watching(S3Store):
        def _client(self):
            client = super()._client()
            outer = self

            class Ctx:
                async def __aenter__(self):
                    s3 = await client.__aenter__()

                    def note(request, **_):
                        seen.append((request.method, _text(request.headers.get("If-None-Match"))))
                    s3.meta.events.register("before-send.s3.*", note)
                    return s3

                async def __aexit__(self, *exc):
                    return await client.__aexit__(*exc)
            return Ctx()

    moto.make_bucket("calls")
    store = Watching(s3_url(moto), part_size=5 * 1024 * 1024)
    small, big = tmp_path / "s", tmp_path / "b"
    small.write_bytes(b"x")
    big.write_bytes(os.urandom(5 * 1024 * 1024 + 1))
    await store.put_file("s", small)
    await store.put_file("b", big)
    puts = [h for m, h in seen if m == "PUT"]
    posts = [h for m, h in seen if m == "POST"]
    assert puts[0] == "*"  # PutObject
    assert posts[-1] == "*"  # CompleteMultipartUpload (POST ?uploadId=)
    assert posts[0] is None  # CreateMultipartUpload carries none


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


def _text(value: str | bytes | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
