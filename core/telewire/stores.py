"""Where archives go: the store plugin point (entry points ``telewire.stores``), ``file`` and ``s3``.

Depends on ``telewire.errors``, ``stevedore`` and, for ``s3`` only, ``aiobotocore`` (imported lazily).

A store is chosen by URL; the scheme names an entry point in group ``telewire.stores`` whose
value is a :class:`Store` subclass::

    file://./recordings                  a local folder (relative to the working directory)
    file:///var/lib/telewire/recordings  an absolute folder
    s3://bucket/prefix                   S3 or any S3-compatible server; query parameters
                                         endpoint_url=, region= override the AWS environment

Keys are ``/``-separated relative paths. Parts that come from the carrier (call and stream ids)
go through :func:`safe_segment` first, so an id such as ``../../etc`` never leaves the prefix;
each store refuses a key with an empty, ``.`` or ``..`` segment as a second line of defence.

Stores never replace an object: a put whose key exists with other content raises
:class:`KeyExistsError` (``O_EXCL``-style on files, ``If-None-Match: *`` on S3); a put whose key
exists with the same content succeeds, so a retried upload is idempotent.
"""

from __future__ import annotations

import asyncio
import errno
import filecmp
import hashlib
import os
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Mapping
from urllib.parse import parse_qs, urlsplit

from loguru import logger

from telewire.errors import ConfigError, TelewireError
from telewire.plugins import load_group

__all__ = [
    "STORE_GROUP",
    "FileStore",
    "KeyExistsError",
    "S3Store",
    "Store",
    "StoreError",
    "check_key",
    "open_store",
    "safe_segment",
    "store_classes",
]

STORE_GROUP = "telewire.stores"
#: S3 multipart part size (the S3 minimum for every part but the last).
PART_SIZE = 5 * 1024 * 1024

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


class StoreError(TelewireError):
    """The storage backend refused or failed an operation (network down, bucket missing,
    permission denied). The message names the object's URL and what went wrong."""


class KeyExistsError(StoreError):
    """A put refused because an object with that key and other content is already stored
    (stores never overwrite). The message names the object's URL."""


def safe_segment(value: str, *, default: str = "_", max_len: int = 96) -> str:
    """``value`` as one safe key segment: letters, digits, ``_ . -`` only, no leading dot.

    Any other character becomes ``_``; a leading ``.`` becomes ``_`` (so ``.`` and ``..`` cannot
    occur); the result is cut to ``max_len`` characters; an empty result is ``default``.
    """
    cleaned = _UNSAFE.sub("_", value)[:max_len]
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    return cleaned or default


def check_key(key: str) -> str:
    """Return ``key`` when every ``/``-separated segment is non-empty and not ``.``/``..``.

    Raises:
        StoreError: naming the key and the bad segment.
    """
    for part in key.split("/"):
        if part in ("", ".", "..") or "\\" in part or "\x00" in part:
            raise StoreError(f"refusing object key {key!r}: segment {part!r} is not allowed")
    return key


class Store(ABC):
    """A place archives are written to. Subclasses are registered under their URL scheme.

    Args:
        url: the store URL (``scheme://…``).

    Raises:
        ConfigError: the URL is malformed for this store (raised by the constructor, so a bad
            store fails when the graph loads, not when the first call ends).
    """

    scheme: ClassVar[str] = ""
    #: A URL of this store to show as an example or default (``telewire init`` offers it).
    example_url: ClassVar[str] = ""
    #: The environment variables the store reads, each with one line saying what it is for
    #: (``telewire init`` writes them into the ``.env`` template, secrets left empty).
    env: ClassVar[Mapping[str, str]] = {}

    def __init__(self, url: str) -> None:
        self.url = url

    @abstractmethod
    def location(self, key: str) -> str:
        """The URL (or path) the object ``key`` has in this store."""

    @abstractmethod
    async def put_file(self, key: str, path: Path) -> str:
        """Upload the file at ``path`` as ``key``, streaming it; returns its :meth:`location`.

        Never replaces an existing object. When ``key`` already holds exactly this content
        (an earlier attempt got through), returns its location as if it had stored it, so
        retries are idempotent.

        Raises:
            KeyExistsError: ``key`` holds other content; nothing was written.
            StoreError: the backend failed; nothing is assumed stored.
        """

    @abstractmethod
    async def get_file(self, key: str, dest: Path) -> Path:
        """Download ``key`` to ``dest``, streaming it; returns ``dest``.

        Raises:
            StoreError: the object is missing or the backend failed.
        """


#: ``os.link`` errors meaning "this file system has no hard links" (not "the key exists").
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK,
                  errno.ENOSYS}


class FileStore(Store):
    """A local folder: ``file://PATH``.

    A put writes a temporary file beside the target, then hard-links it to the target name
    (``os.link`` fails when the name exists, so an existing object is never replaced, and the
    object appears whole or not at all). On a file system without hard links it creates the
    target with ``O_CREAT | O_EXCL`` and copies into it.
    """

    scheme = "file"
    example_url = "file://./recordings"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        if not url.startswith("file://"):
            raise ConfigError(f"store {url!r}: a file store URL starts with file://")
        raw = url[len("file://"):].split("?", 1)[0]
        if not raw:
            raise ConfigError(f"store {url!r}: no folder after file://")
        self.root = Path(raw).expanduser().resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):
            raise StoreError(f"refusing object key {key!r}: it leaves {self.root}")
        return path

    def location(self, key: str) -> str:
        return str(self.root / key)

    async def put_file(self, key: str, path: Path) -> str:
        dest = self._path(key)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")

        def refuse_unless_same() -> None:
            if not filecmp.cmp(path, dest, shallow=False):
                raise KeyExistsError(f"file://{dest}: already exists with other content; "
                                     "not overwritten")

        def copy() -> None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(path, tmp)
                try:
                    os.link(tmp, dest)
                    return
                except FileExistsError:
                    return refuse_unless_same()
                except OSError as exc:
                    if exc.errno not in _NO_HARD_LINKS:
                        raise
            finally:
                tmp.unlink(missing_ok=True)
            try:  # no hard links here: create the name exclusively and copy into it
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return refuse_unless_same()
            try:
                with os.fdopen(fd, "wb") as out, path.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
            except BaseException:
                dest.unlink(missing_ok=True)
                raise

        try:
            await asyncio.to_thread(copy)
        except OSError as exc:
            raise StoreError(f"file://{dest}: cannot write: {exc.strerror or exc}") from None
        return str(dest)

    async def get_file(self, key: str, dest: Path) -> Path:
        src = self._path(key)
        try:
            await asyncio.to_thread(shutil.copyfile, src, dest)
        except OSError as exc:
            raise StoreError(f"file://{src}: cannot read: {exc.strerror or exc}") from None
        return dest


class S3Store(Store):
    """S3 or an S3-compatible server: ``s3://bucket/prefix[?endpoint_url=…&region=…]``.

    Credentials, region and endpoint come from the usual AWS environment (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_DEFAULT_REGION``,
    ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``); ``endpoint_url`` and ``region`` in the
    query override them. Objects larger than one part go up as a multipart upload of 5 MB parts
    read from the file one at a time (memory per upload: one part); a failed multipart upload is
    aborted so no orphan parts are left behind when the server is reachable.

    Every put is conditional (``If-None-Match: *`` on ``PutObject`` and on
    ``CompleteMultipartUpload``): S3 answers 412 when the key exists, and the store then compares
    the existing object's ETag with the MD5 (or multipart ETag) of what it sent.
    """

    scheme = "s3"
    example_url = "s3://BUCKET/PREFIX"
    env = {
        "AWS_ACCESS_KEY_ID": "access key of the S3 credentials (or AWS_PROFILE, or a role)",
        "AWS_SECRET_ACCESS_KEY": "secret key of the S3 credentials",
        "AWS_DEFAULT_REGION": "the bucket's region, unless the store URL says ?region=",
        "AWS_ENDPOINT_URL_S3": "an S3-compatible server (MinIO …), unless the URL says "
                               "?endpoint_url=",
    }

    def __init__(self, url: str, *, part_size: int = PART_SIZE) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"store {url!r}: expected s3://bucket/prefix")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        if self.prefix:
            try:
                check_key(self.prefix)
            except StoreError as exc:
                raise ConfigError(f"store {url!r}: bad prefix: {exc}") from None
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint_url", "region"}
        if unknown:
            raise ConfigError(f"store {url!r}: unknown query parameters {sorted(unknown)}; "
                              "known: endpoint_url, region")
        self.endpoint_url = query.get("endpoint_url")
        self.region = query.get("region")
        if part_size < PART_SIZE:
            raise ConfigError(f"S3 parts must be at least {PART_SIZE} bytes, not {part_size}")
        self.part_size = part_size
        from importlib.util import find_spec  # aiobotocore itself is imported at the first put

        if find_spec("aiobotocore") is None:
            raise ConfigError(f"store {url!r}: the S3 store needs aiobotocore, which is not "
                              "installed (pip install 'telewire[s3]')")

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _client(self) -> Any:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        config = AioConfig(retries={"max_attempts": 2, "mode": "standard"},
                           connect_timeout=10, read_timeout=60)
        return get_session().create_client("s3", endpoint_url=self.endpoint_url,
                                           region_name=self.region, config=config)

    async def put_file(self, key: str, path: Path) -> str:
        full = self._key(key)
        where = f"s3://{self.bucket}/{full}"
        try:
            size = path.stat().st_size
            async with self._client() as s3:
                if size <= self.part_size:
                    body, etag = await asyncio.to_thread(_read_with_md5, path)
                    try:
                        await s3.put_object(Bucket=self.bucket, Key=full, Body=body,
                                            IfNoneMatch="*")
                    except Exception as exc:
                        if not _precondition_failed(exc):
                            raise
                        del body
                        await self._refuse_unless_same(s3, full, etag)
                else:
                    etag = await self._multipart(s3, full, path)
                    if etag is not None:
                        await self._refuse_unless_same(s3, full, etag)
        except StoreError:
            raise
        except Exception as exc:  # botocore, aiohttp and OS errors all mean "not stored"
            raise StoreError(f"{where}: upload failed: {_describe(exc)}") from None
        return where

    async def _refuse_unless_same(self, s3: Any, full: str, etag: str) -> None:
        """The key exists: fine when it holds what we sent (its ETag is ``etag``), else
        :class:`KeyExistsError`."""
        head = await s3.head_object(Bucket=self.bucket, Key=full)
        if head.get("ETag", "").strip('"') != etag:
            raise KeyExistsError(f"s3://{self.bucket}/{full}: already exists with other "
                                 "content; not overwritten")

    async def _multipart(self, s3: Any, full: str, path: Path) -> str | None:
        """Upload ``path`` in parts; returns ``None`` when stored, or the ETag the object would
        have had when the key already exists (the upload is aborted)."""
        created = await s3.create_multipart_upload(Bucket=self.bucket, Key=full)
        upload_id = created["UploadId"]
        try:
            done = []
            digests = []
            with path.open("rb") as f:
                number = 1
                while True:
                    chunk, digest = await asyncio.to_thread(_read_part, f, self.part_size)
                    if not chunk:
                        break
                    r = await s3.upload_part(Bucket=self.bucket, Key=full, PartNumber=number,
                                             UploadId=upload_id, Body=chunk)
                    done.append({"PartNumber": number, "ETag": r["ETag"]})
                    digests.append(digest)
                    number += 1
                    del chunk
            etag = f"{_md5(b''.join(digests)).hexdigest()}-{len(digests)}"
            try:
                await s3.complete_multipart_upload(Bucket=self.bucket, Key=full,
                                                   UploadId=upload_id, IfNoneMatch="*",
                                                   MultipartUpload={"Parts": done})
            except Exception as exc:
                if not _precondition_failed(exc):
                    raise
                await s3.abort_multipart_upload(Bucket=self.bucket, Key=full,
                                                UploadId=upload_id)
                return etag
            return None
        except BaseException:
            try:
                await asyncio.shield(s3.abort_multipart_upload(Bucket=self.bucket, Key=full,
                                                               UploadId=upload_id))
            except Exception as exc:
                logger.warning("s3://{}/{}: could not abort multipart upload {}: {}",
                               self.bucket, full, upload_id, _describe(exc))
            raise

    async def get_file(self, key: str, dest: Path) -> Path:
        full = self._key(key)
        try:
            async with self._client() as s3:
                r = await s3.get_object(Bucket=self.bucket, Key=full)
                with dest.open("wb") as f:
                    async with r["Body"] as body:
                        while chunk := await body.read(1 << 20):
                            f.write(chunk)
        except Exception as exc:
            raise StoreError(f"s3://{self.bucket}/{full}: download failed: "
                             f"{_describe(exc)}") from None
        return dest


def _md5(data: bytes = b"") -> Any:
    return hashlib.md5(data, usedforsecurity=False)


def _read_with_md5(path: Path) -> tuple[bytes, str]:
    body = path.read_bytes()
    return body, _md5(body).hexdigest()


def _read_part(f: Any, size: int) -> tuple[bytes, bytes]:
    chunk = f.read(size)
    return chunk, _md5(chunk).digest()


def _precondition_failed(exc: BaseException) -> bool:
    """A botocore ``ClientError`` for HTTP 412: the conditional put found the key taken."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "412") or status == 412


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


def store_classes() -> dict[str, type[Store]]:
    """Every store type, by scheme: entry points in ``telewire.stores`` (a plugin that fails to
    load is logged by name and skipped). The built-in ``file`` and ``s3`` come through the
    same door, as entry points of the ``telewire`` distribution."""
    return dict(load_group(STORE_GROUP, base=Store).loaded)


def open_store(url: str) -> Store:
    """The store for ``url``, chosen by its scheme.

    Raises:
        ConfigError: no scheme, an unknown scheme (naming the installed ones), or a URL the
            store rejects.
    """
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not scheme:
        raise ConfigError(f"store {url!r}: expected SCHEME://…, for example file://./recordings "
                          "or s3://bucket/prefix")
    classes = store_classes()
    cls = classes.get(scheme)
    if cls is None:
        raise ConfigError(f"store {url!r}: no store for scheme {scheme!r}; installed: "
                          f"{', '.join(sorted(classes))}")
    return cls(url)
