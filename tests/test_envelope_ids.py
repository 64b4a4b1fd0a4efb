"""The envelope's identity checks, sans-I/O: the safe charset and length every id must have,
the ``[envelope_spec.ids]`` patterns and ``parameter_limits`` a spec may set, and how a refusal
reads."""

from __future__ import annotations

import json
import re

import pytest

from telewire.carrier import CallContext
from telewire.envelope import check_id, compile_envelope, id_problem, shown
from telewire.errors import CarrierProtocolError, ConfigError

SPEC = {
    "event": "event",
    "events": {"start": "start", "media": "media"},
    "start": {"stream_id": "start.streamSid", "call_id": "start.callSid",
              "account_id": "start.accountSid", "custom_parameters": "start.customParameters"},
    "media": {"payload": "media.payload"},
}
RESPONSE = {"media": '{"event":"media","streamSid":"${stream_id}",'
                     '"media":{"payload":"${payload}"}}'}


def envelope(**extra: object):
    return compile_envelope("acme", {**SPEC, **extra}, RESPONSE)


def start(stream: object = "st-1", call: object = "c-1", account: object = None,
          params: object = None) -> str:
    body: dict = {"streamSid": stream, "callSid": call}
    if account is not None:
        body["accountSid"] = account
    if params is not None:
        body["customParameters"] = params
    return json.dumps({"event": "start", "start": body})


def refused(env, message: str) -> CarrierProtocolError:
    call = CallContext(carrier="acme")
    with pytest.raises(CarrierProtocolError) as caught:
        env.parse(call, message)
    assert caught.value.fatal and not call.started and call.stream_id == ""
    return caught.value


@pytest.mark.parametrize("value", ["a", "CA" + "f" * 32, "c-15ac29a2-1331", "pbx1-1700000000.42",
                                   "a84b4c76e66710@pc33.example.com", "v3:9X2vxPDF_aiQ",
                                   "x" * 128, "..a", "a..", ".hidden"])
def test_safe_ids_pass(value: str) -> None:
    assert id_problem(value) is None
    assert check_id(value, carrier="acme", field="f") == value


@pytest.mark.parametrize("value, problem", [
    ("", "is empty"),
    (".", "is a path step"),
    ("..", "is a path step"),
    ("a/b", "holds '/'"),
    ("a?b", "holds '?'"),
    ("a b", "holds ' '"),
    ("a\nb", "holds '\\n'"),
    ("a\x00", "holds '\\x00'"),
    ("a%2e", "holds '%'"),
    ("a#b", "holds '#'"),
    ("a+b", "holds '+'"),
    ("é", "holds 'é'"),
    ("x" * 129, "is 129 characters long; an id may have at most 128"),
    (7, "must be a string, not int"),
    (None, "must be a string, not NoneType"),
])
def test_unsafe_ids_are_named_with_the_reason(value: object, problem: str) -> None:
    assert problem in (id_problem(value) or "")
    with pytest.raises(CarrierProtocolError) as caught:
        check_id(value, carrier="acme", field="start.callSid", what="call id", event="start")
    err = caught.value
    assert (err.carrier, err.field, err.event, err.fatal) == ("acme", "start.callSid", "start",
                                                               True)
    assert str(err).startswith("acme: field 'start.callSid' (call id) ")


def test_shown_escapes_and_cuts() -> None:
    assert shown("a\nb") == "'a\\nb'"
    long = shown("x" * 10_000)
    assert len(long) < 100 and long.endswith("(10002 characters)")


@pytest.mark.parametrize("field", ["streamSid", "callSid", "accountSid"])
def test_every_id_of_the_start_is_checked_once_where_it_enters(field: str) -> None:
    ids = {"streamSid": "st-1", "callSid": "c-1", "accountSid": "acct-1"}
    ids[field] = "x/../../y"
    err = refused(envelope(), start(ids["streamSid"], ids["callSid"], ids["accountSid"]))
    assert err.field == f"start.{field}" and "holds '/'" in str(err)
    assert "'x/../../y'" in str(err)


def test_an_absent_call_id_is_fine_unless_a_pattern_pins_it() -> None:
    call = CallContext(carrier="acme")
    (frame,) = envelope().parse(call, json.dumps({"event": "start",
                                                  "start": {"streamSid": "st-1"}}))
    assert frame.call_id == ""  # type: ignore[attr-defined]
    err = refused(envelope(ids={"call_id": "c-[0-9]+"}),
                  json.dumps({"event": "start", "start": {"streamSid": "st-1"}}))
    assert err.field == "start.callSid" and "missing field" in str(err)


def test_patterns_narrow_ids_to_the_carriers_shape() -> None:
    env = envelope(ids={"stream_id": "st-[0-9]+", "call_id": "c-[0-9]+", "max_length": 8})
    call = CallContext(carrier="acme")
    (frame,) = env.parse(call, start("st-12", "c-7"))
    assert (frame.stream_id, frame.call_id) == ("st-12", "c-7")  # type: ignore[attr-defined]
    err = refused(env, start("st-12", "c-x"))
    assert "is not shaped as this carrier's ids are (c-[0-9]+)" in str(err)
    assert "is 9 characters long" in str(refused(env, start("st-123456", "c-7")))
    # a pattern can never widen the safe charset
    wide = envelope(ids={"call_id": ".*"})
    assert "holds '/'" in str(refused(wide, start("st-1", "c/1")))


@pytest.mark.parametrize("ids, message", [
    ({"call_id": "c-(["}, "is not a regular expression"),
    ({"max_length": 0}, "max_length"),
    ({"max_length": 257}, "max_length"),
    ({"other_id": "x"}, "other_id"),
])
def test_bad_id_rules_are_config_errors_at_load(ids: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        envelope(ids=ids)


def test_a_pattern_for_an_id_the_start_does_not_carry_is_a_config_error() -> None:
    spec = {**SPEC, "start": {"stream_id": "start.streamSid"}, "ids": {"call_id": "c-1"}}
    with pytest.raises(ConfigError, match="ids.call_id gives a pattern, but"):
        compile_envelope("acme", spec, RESPONSE)


@pytest.mark.parametrize("params, where, problem", [
    ({"a": "x\ny"}, "start.customParameters.a", "holds a control character: 'x\\ny'"),
    ({"a": "x\u2028y"}, "start.customParameters.a", "control character"),
    ({"a": "\x1b[31m"}, "start.customParameters.a", "control character"),
    ({"a\tb": "x"}, "start.customParameters", "name 'a\\tb'"),
    ({"": "x"}, "start.customParameters", "must have 1 to 256 characters"),
    ({"n" * 257: "x"}, "start.customParameters", "must have 1 to 256 characters"),
    ({"a": "x" * 2049}, "start.customParameters.a", "2049 characters long; at most 2048"),
    ({f"p{i}": "x" for i in range(33)}, "start.customParameters", "33 custom parameters"),
])
def test_custom_parameters_are_bounded_and_printable(params: dict, where: str,
                                                     problem: str) -> None:
    err = refused(envelope(), start(params=params))
    assert err.field == where and problem in str(err)


def test_parameter_limits_are_the_specs_to_set() -> None:
    env = envelope(parameter_limits={"max_count": 2, "max_name_length": 4,
                                     "max_value_length": 5})
    call = CallContext(carrier="acme")
    (frame,) = env.parse(call, start(params={"abcd": "12345", "n": 7}))
    params = frame.custom_parameters  # type: ignore[attr-defined]
    assert dict(params) == {"abcd": "12345", "n": "7"}
    assert "3 custom parameters" in str(refused(env, start(params={"a": "", "b": "", "c": ""})))
    assert "at most 5" in str(refused(env, start(params={"a": "123456"})))


def test_refusals_read_well_for_huge_values() -> None:
    err = refused(envelope(), start(stream="s" * 100_000))
    assert len(str(err)) < 300 and "100000 characters long" in str(err)
