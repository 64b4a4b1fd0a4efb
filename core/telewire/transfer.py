"""Transfer targets: which numbers and SIP addresses the ``transfer_call`` tool may dial.

Depends on the standard library only; ``realtime.base`` checks the configured patterns when the
graph loads and ``tools`` asks :func:`refusal` before any transfer reaches the carrier.

The model chooses a transfer target from what it heard, and a caller can talk a model into
anything, so the target is never trusted: it must be an E.164 number or a plain
``sip:user@host`` address, and it must match one of the operator's patterns
(``rt.config.transfer_targets``). A pattern is an exact target (``+15551234567``) or a shell
glob over one (``+1555*``, ``sip:*@pbx.example.com``), matched case-sensitively against the
whole target. Because a target is checked for its shape first (one ``@``, a host of letters,
digits, dots and dashes, no parameters or headers), ``sip:*@pbx.example.com`` cannot match
``sip:x@evil.example@pbx.example.com`` or ``sip:x@pbx.example.com;maddr=evil.example``. With no
pattern configured every target is refused.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Iterable, Sequence

__all__ = ["check_patterns", "normalize", "refusal"]

#: An E.164 number: ``+``, a country code that does not start with 0, at most 15 digits.
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
#: A plain SIP address: a user of letters, digits and ``. _ + -``; a host name or IPv4 address;
#: an optional port. No URI parameters, headers or second ``@``.
_SIP = re.compile(r"sips?:[A-Za-z0-9._+\-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,252})"
                  r"(?::[0-9]{1,5})?")
#: What a pattern may hold: the characters of a target plus the glob characters ``* ? [ ] !``.
_PATTERN = re.compile(r"(?:\+|sips?:)[A-Za-z0-9._+\-@:*?\[\]!]+")
#: Formatting a model may put in a spoken number (``+1 (555) 123-4567``), removed before checking.
_NUMBER_FORMATTING = str.maketrans("", "", " -().")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "…"


def check_patterns(patterns: Iterable[str]) -> list[str]:
    """The patterns, each checked to be a target or a glob over one.

    Raises:
        ValueError: naming the first pattern that starts with neither ``+`` nor ``sip:``/
            ``sips:`` or holds a character no target has (a space, ``;``, ``/`` …).
    """
    out = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not _PATTERN.fullmatch(pattern):
            raise ValueError(f"transfer target pattern {_shown(pattern)} is neither an E.164 "
                             "number nor a sip: address (or a glob over one, such as '+1555*' "
                             "or 'sip:*@pbx.example.com')")
        out.append(pattern)
    return out


def normalize(target: str) -> str | None:
    """The target as it is matched (spoken-number formatting removed from a ``+`` number), or
    ``None`` when it is neither an E.164 number nor a plain SIP address."""
    target = target.strip()
    if target.startswith("+"):
        number = target.translate(_NUMBER_FORMATTING)
        return number if _E164.fullmatch(number) else None
    return target if _SIP.fullmatch(target) else None


def refusal(target: object, patterns: Sequence[str]) -> tuple[str | None, str]:
    """Whether ``transfer_call`` may dial ``target``.

    Args:
        target: what the model asked for.
        patterns: the configured allow-list (``rt.config.transfer_targets``).

    Returns:
        ``(None, target)`` with the normalized target when it is allowed, else
        ``(reason, shown)``: a reason written for the model to read and repeat to the caller,
        and the target as it may appear in a log line.
    """
    shown = _shown(target)
    if not patterns:
        return ("transfers are not set up for this line (no transfer targets are configured), "
                "so the call cannot be transferred; tell the caller so", shown)
    normalized = normalize(target) if isinstance(target, str) else None
    if normalized is None:
        return (f"{shown} is not a phone number in E.164 form (+15551234567) or a sip: address",
                shown)
    if not any(fnmatchcase(normalized, p) for p in patterns):
        return (f"{normalized} is not a number this line may transfer calls to", shown)
    return None, normalized
