"""What the extras hold: the S3 store asks for ``telewire[s3]`` when aiobotocore is missing."""

from __future__ import annotations

import sys

import pytest

from telewire.errors import ConfigError
from telewire.stores import S3Store


def test_the_s3_store_without_aiobotocore_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "aiobotocore", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'telewire\[s3\]'"):
        S3Store("s3://calls/prod")


def test_the_s3_store_with_aiobotocore_installed_is_built():
    pytest.importorskip("aiobotocore")
    store = S3Store("s3://calls/prod?region=eu-west-1")
    assert store.location("a/b") == "s3://calls/prod/a/b"
