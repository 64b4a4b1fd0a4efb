"""The JSON parser of the hot path: orjson when installed (``telewire[speedups]``), else stdlib.

Depends on nothing in telewire. Both raise a ``ValueError`` subclass on bad input.
"""

from __future__ import annotations

import json
from typing import Any, Callable

__all__ = ["JSONDecodeError", "dumps", "loads", "PARSER"]

JSONDecodeError = json.JSONDecodeError
dumps: Callable[[Any], str] = json.dumps

try:  # pragma: no cover - depends on the environment
    import orjson as _orjson

    loads: Callable[[str | bytes], Any] = _orjson.loads
    PARSER = "orjson"
except ImportError:  # pragma: no cover
    loads = json.loads
    PARSER = "json"
