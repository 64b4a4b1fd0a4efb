"""``telewire.dial`` and ``telewire dial``: the request a carrier hook builds is sent as built, the
answer becomes a result or an error that names the carrier's complaint, and hang-up and transfer
are idempotent. A local aiohttp server on 127.0.0.1 stands in for the carrier's REST API."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping, Sequence

import aiohttp
import pytest
from aiohttp import web

from telewire.calltoken import PARAMETER, CallTokens
from telewire.carrier import CallContext, Capabilities, OutboundRequest
from telewire.dial import DialResult, dial, server_urls
from telewire.errors import ConfigError, DialError
from telewire.frames import AudioFrame, Frame
from telewire.graph import CallGraph, load_graph
from telewire.hookspecs import hookimpl
from telewire.registry import CarrierRegistry
from telewire.settings import load_settings
from telewire.testing.local_http import local_http_server

SECRET = "dial-test-secret"
TELEWIRE = [sys.executable, "-m", "telewire.cli"]


@dataclass
class FakeApi:
    """A carrier REST API on 127.0.0.1 that records requests and answers ``status``/``body``."""

    port: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)
    status: int = 201
    body: Any = field(default_factory=lambda: {"id": "call-1", "status": "queued"})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        form = [(k, str(v)) for k, v in (await request.post()).items()] \
            if request.content_type == "application/x-www-form-urlencoded" else None
        self.seen.append({"method": request.method, "path": request.path,
                          "auth": request.headers.get("Authorization"),
                          "type": request.content_type, "form": form,
                          "json": json.loads(raw) if request.content_type == "application/json"
                          else None})
        if isinstance(self.body, str):
            return web.Response(status=self.status, text=self.body)
        return web.json_response(self.body, status=self.status)


@pytest.fixture
async def api() -> AsyncIterator[FakeApi]:
    fake = FakeApi()
    async with local_http_server(fake.handle) as fake.port:
        yield fake


class FakeCarrier:
    """A carrier whose dial hook builds a form or JSON request to the fake API."""

    def __init__(self, base: str, *, as_json: bool = False) -> None:
        self.base = base
        self.as_json = as_json
        self.dialled: list[dict[str, Any]] = []
        self.hangups: list[str] = []
        self.transfers: list[str] = []

    @hookimpl
    def telewire_carrier_capabilities(self) -> Capabilities:
        return Capabilities(transfer=True)

    @hookimpl
    def telewire_parse_inbound(self, call: CallContext, message: str | bytes) -> Sequence[Frame]:
        return ()

    @hookimpl
    def telewire_wrap_audio(self, call: CallContext, frame: AudioFrame) -> str:
        return ""

    @hookimpl
    def telewire_hangup(self, call: CallContext, reason: str) -> None:
        self.hangups.append(reason)

    @hookimpl
    def telewire_transfer_request(self, call: CallContext, target: str) -> OutboundRequest:
        self.transfers.append(target)
        return OutboundRequest(method="POST", url=f"{self.base}/transfer",
                               form=(("Target", target),))

    @hookimpl
    def telewire_dial_request(self, to: str, from_: str, stream_url: str,
                              parameters: Mapping[str, str], answer_url: str, status_url: str,
                              machine_detection: str | None) -> OutboundRequest:
        self.dialled.append({"to": to, "from": from_, "stream_url": stream_url,
                             "parameters": dict(parameters), "answer_url": answer_url,
                             "status_url": status_url, "machine_detection": machine_detection})
        headers = {"Authorization": "Basic c2VjcmV0OnNlY3JldA=="}
        if self.as_json:
            return OutboundRequest(method="POST", url=f"{self.base}/calls", headers=headers,
                                   json={"to": to, "from": from_, "answerUrl": answer_url},
                                   id_field="id")
        return OutboundRequest(method="POST", url=f"{self.base}/calls", headers=headers,
                               form=(("To", to), ("From", from_), ("Event", "a"),
                                     ("Event", "b")), id_field="id")


def registry_with(carrier: object) -> CarrierRegistry:
    return CarrierRegistry({"fake": carrier}, discover=False)


def settings(**extra: Any) -> Any:
    values: dict[str, Any] = {"public_url": "https://voice.example.com/pre/",
                              "call_token_secret": SECRET, **extra}
    return load_settings(**values)


# ------------------------------------------------------------------------ URLs and parameters


def test_server_urls_come_from_the_public_url() -> None:
    assert server_urls(settings(), "twilio") == {
        "media": "wss://voice.example.com/pre/media/twilio",
        "answer": "https://voice.example.com/pre/answer/twilio",
        "status": "https://voice.example.com/pre/status/twilio"}
    assert server_urls(settings(public_url="http://127.0.0.1:8080"), "x")["media"] == \
        "ws://127.0.0.1:8080/media/x"
    for bad, match in ((None, "needs TELEWIRE_PUBLIC_URL"), ("voice.example.com", "absolute"),
                       ("https://h/?a=1", "query string"), ("ftp://h", "absolute")):
        with pytest.raises(ConfigError, match=match):
            server_urls(load_settings(public_url=bad), "twilio")


async def test_the_request_is_sent_as_built_with_a_redeemable_call_token(api: FakeApi) -> None:
    carrier = FakeCarrier(api.url)
    result = await dial("+15551230000", "+15559990000", carrier="fake",
                        parameters={"campaign": "spring"},
                        settings=settings(answer_parameters={"tenant": "acme"}),
                        registry=registry_with(carrier), machine_detection="answer")
    assert result == DialResult(carrier="fake", call_id="call-1", to="+15551230000",
                                from_="+15559990000", status="queued", http_status=201,
                                response=result.response)
    assert result.as_dict()["from"] == "+15559990000"
    (asked,) = carrier.dialled
    assert asked["stream_url"] == "wss://voice.example.com/pre/media/fake"
    assert asked["status_url"] == "https://voice.example.com/pre/status/fake"
    assert asked["answer_url"] == "https://voice.example.com/pre/answer/fake"
    assert asked["machine_detection"] == "answer"
    params = asked["parameters"]
    token = params.pop(PARAMETER)
    assert params == {"tenant": "acme", "campaign": "spring"}
    assert CallTokens(SECRET.encode()).redeem("fake", token) is None  # the server's check
    (sent,) = api.seen
    assert (sent["method"], sent["path"], sent["auth"]) == ("POST", "/calls",
                                                            "Basic c2VjcmV0OnNlY3JldA==")
    assert sent["form"] == [("To", "+15551230000"), ("From", "+15559990000"), ("Event", "a"),
                            ("Event", "b")]


async def test_a_json_request_is_sent_as_json(api: FakeApi) -> None:
    carrier = FakeCarrier(api.url, as_json=True)
    await dial("+15551230000", "+15559990000", carrier="fake", settings=settings(),
               registry=registry_with(carrier))
    (sent,) = api.seen
    assert sent["type"] == "application/json"
    assert sent["json"] == {"to": "+15551230000", "from": "+15559990000",
                            "answerUrl": "https://voice.example.com/pre/answer/fake"}


async def test_call_tokens_need_the_shared_secret_or_are_off(api: FakeApi) -> None:
    carrier = FakeCarrier(api.url)
    reg = registry_with(carrier)
    with pytest.raises(ConfigError, match="TELEWIRE_CALL_TOKEN_SECRET"):
        await dial("+1555", "+1666", carrier="fake", registry=reg,
                   settings=load_settings(public_url="https://h"))
    await dial("+1555", "+1666", carrier="fake", registry=reg,
               settings=load_settings(public_url="https://h", call_tokens="off"))
    assert PARAMETER not in carrier.dialled[-1]["parameters"]
    tokens = CallTokens(b"the serving process's key")
    await dial("+1555", "+1666", carrier="fake", registry=reg,
               settings=load_settings(public_url="https://h"), tokens=tokens)
    assert tokens.redeem("fake", carrier.dialled[-1]["parameters"][PARAMETER]) is None
    with pytest.raises(ConfigError, match="reserved for the call token"):
        await dial("+1555", "+1666", carrier="fake", registry=reg, settings=settings(),
                   parameters={PARAMETER: "mine"})
    assert len(api.seen) == 2


# ------------------------------------------------------------------------ the carrier's answer


@pytest.mark.parametrize(("status", "body", "expected"), [
    (400, {"code": 21211, "message": "The 'To' number +1555 is not a valid phone number.",
           "more_info": "https://www.twilio.com/docs/errors/21211"},
     r"fake refused the call to '\+1555': HTTP 400, error 21211: The 'To' number \+1555 is not "
     r"a valid phone number\. \(see https://www\.twilio\.com/docs/errors/21211\)"),
    (422, {"type": "validation", "description": "'from' is not a number of the account"},
     r"HTTP 422, error validation: 'from' is not a number of the account"),
    (401, "Unauthorized", r"HTTP 401: Unauthorized \(the carrier did not accept the "
                          r"credentials"),
    (503, "<html>\n  busy\n</html>", r"HTTP 503: <html> busy </html>"),
])
async def test_a_refusal_gives_status_code_and_the_carriers_message(
        api: FakeApi, status: int, body: Any, expected: str) -> None:
    api.status, api.body = status, body
    with pytest.raises(DialError, match=expected) as err:
        await dial("+1555", "+1666", carrier="fake", settings=settings(),
                   registry=registry_with(FakeCarrier(api.url)))
    assert err.value.http_status == status
    assert "c2VjcmV0" not in str(err.value) and SECRET not in str(err.value)


async def test_an_answer_without_a_call_id_is_an_error(api: FakeApi) -> None:
    api.body = {"status": "queued"}
    with pytest.raises(DialError, match="has no call id in field 'id'"):
        await dial("+1555", "+1666", carrier="fake", settings=settings(),
                   registry=registry_with(FakeCarrier(api.url)))


async def test_an_unreachable_api_is_an_error_naming_where(api: FakeApi) -> None:
    port = api.port
    with pytest.raises(DialError, match=rf"could not reach the REST API at "
                                        rf"http://127\.0\.0\.1:1/calls"):
        await dial("+1555", "+1666", carrier="fake", settings=settings(),
                   registry=registry_with(FakeCarrier("http://127.0.0.1:1")))
    assert port  # the fake itself was not asked


async def test_a_carrier_that_cannot_dial_says_so() -> None:
    class NoDial:
        @hookimpl
        def telewire_carrier_capabilities(self) -> Capabilities:
            return Capabilities()

        @hookimpl
        def telewire_parse_inbound(self, call: CallContext, message: str | bytes) -> Sequence[Frame]:
            return ()

        @hookimpl
        def telewire_wrap_audio(self, call: CallContext, frame: AudioFrame) -> str:
            return ""

    with pytest.raises(ConfigError, match="'fake' cannot place outbound calls"):
        await dial("+1555", "+1666", carrier="fake", settings=settings(),
                   registry=registry_with(NoDial()))


# ------------------------------------------------------------------------ telewire dial


async def _run(*args: str, env: Mapping[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *TELEWIRE, "dial", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **env})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_the_cli_places_the_twilio_call_and_reports_refusals(api: FakeApi) -> None:
    account, token = "AC" + "b2" * 16, "cli-auth-token-0123456789abcdef0"
    env = {"TELEWIRE_PUBLIC_URL": "https://voice.example.com",
           "TELEWIRE_CALL_TOKEN_SECRET": SECRET, "TELEWIRE_TWILIO_ACCOUNT_SID": account,
           "TELEWIRE_TWILIO_AUTH_TOKEN": token, "TELEWIRE_TWILIO_API_BASE_URL": api.url}
    api.body = {"sid": "CA" + "c3" * 16, "status": "queued"}
    code, out, err = await _run("+15005550006", "--from", "+15005550001", "--param",
                                "campaign=spring", env=env)
    assert code == 0, err
    assert json.loads(out) == {"carrier": "twilio", "call_id": "CA" + "c3" * 16,
                               "to": "+15005550006", "from": "+15005550001",
                               "status": "queued", "http_status": 201}
    (sent,) = api.seen
    assert sent["path"] == f"/2010-04-01/Accounts/{account}/Calls.json"
    form = dict(sent["form"])
    assert form["To"] == "+15005550006" and form["From"] == "+15005550001"
    assert '<Parameter name="campaign" value="spring" />' in form["Twiml"]
    api.status = 400
    api.body = {"code": 21212, "message": "The 'From' number +15005550001 is not a valid "
                                          "phone number, shortcode, or alphanumeric sender ID."}
    code, out, err = await _run("+15005550006", "--from", "+15005550001", env=env)
    assert code == 1 and out == ""
    assert "HTTP 400, error 21212: The 'From' number" in err
    assert token not in err and SECRET not in err
    code, _, err = await _run("+15005550006", "--from", "+15005550001", "--param", "novalue",
                              env=env)
    assert code == 2 and "--param 'novalue' is not NAME=VALUE" in err
    assert len(api.seen) == 2


# ------------------------------------------------------------------------ idempotent hang-up


async def test_hang_up_and_transfer_are_idempotent(api: FakeApi) -> None:
    carrier = FakeCarrier(api.url)
    reg = registry_with(carrier)
    sent: list[str | bytes] = []

    async def send(message: str | bytes) -> None:
        sent.append(message)

    call = CallGraph(load_graph(None, ["rt.config.provider=echo"]), reg.get("fake"), send)
    await asyncio.gather(call.hang_up("operator"), call.hang_up("operator"))
    await call.hang_up("end_call")  # after the end: nothing, and no error
    assert carrier.hangups == ["operator"]
    assert call.end_frame is not None and call.end_frame.reason == "operator"
    assert await call.transfer("+15551230000") == "the call is already ending"
    assert carrier.transfers == [] and api.seen == []


async def test_operator_hang_up_of_an_ended_call_is_not_an_error(telewire_server: Any) -> None:
    srv = await telewire_server(operator_token="op-token")
    headers = {"Authorization": "Bearer op-token", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(f"http://127.0.0.1:{srv.port}/api/calls/twilio/"
                                 f"CA{'d4' * 16}/hangup", data="{}", headers=headers) as resp:
                assert resp.status == 200
                assert await resp.json() == {"ok": True, "action": "hangup", "live": False}
        async with http.post(f"http://127.0.0.1:{srv.port}/api/calls/twilio/CA1/steer",
                             data='{"voice": "x"}', headers=headers) as resp:
            assert resp.status == 404  # other actions on a call that is not live still say so


# ------------------------------------------------------------------------ the docs' AMD example


def _voicemail_example() -> type:
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "dialling.md").read_text()
    section = page.split("## Who answered", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/dialling.md", "exec"), namespace)  # noqa: S102 - our own docs
    return namespace["Voicemail"]


@pytest.mark.parametrize(("result", "message", "hung_up", "steered"), [
    ("fax", "Call us back", True, False),
    ("machine_end_beep", "", True, False),
    ("machine_end_beep", "Call us back", False, True),
    ("machine_start", "Call us back", False, False),
    ("human", "Call us back", False, False),
])
async def test_the_voicemail_example_leaves_a_message_or_hangs_up(
        api: FakeApi, result: str, message: str, hung_up: bool, steered: bool) -> None:
    from telewire.frames import AnsweredByFrame, SteerFrame
    from telewire.graph import NodeTypeInfo, build_graph, node_types

    voicemail = _voicemail_example()
    types = {**node_types(), "voicemail": NodeTypeInfo("voicemail", voicemail, "docs",
                                                       "docs", "0")}
    graph = build_graph({
        "nodes": {"tel_in": {"type": "carrier_in"}, "rt": {"type": "realtime_agent"},
                  "tel_out": {"type": "carrier_out"},
                  "vm": {"type": "voicemail", "config": {"message": message}}},
        "edges": ["tel_in.audio -> rt.audio_in", "rt.audio_out -> tel_out.audio_in",
                  "tel_in.answered_by -> vm.answered_by"],
    }, source="dialling.md example", types=types)
    carrier = FakeCarrier(api.url)
    steers: list[Frame] = []

    async def send(message: str | bytes) -> None:
        pass

    call = CallGraph(graph, registry_with(carrier).get("fake"), send,
                     {("vm", "steer"): [lambda n, p, f: steers.append(f)]})
    await call.nodes["tel_in"].dispatch(AnsweredByFrame(result=result))  # type: ignore[attr-defined]
    assert (carrier.hangups == ["answering_machine"]) is hung_up
    assert bool(steers) is steered
    if steered:
        assert isinstance(steers[0], SteerFrame) and "Call us back" in str(steers[0].instructions)


# ------------------------------------------------------------------------ the bar, end to end


async def test_telewire_dial_then_the_answered_call_streams_through_telewire_serve(
        api: FakeApi) -> None:
    """``telewire dial`` (a process) sends the Twilio request; Twilio's side then takes the TwiML
    it received and streams through ``telewire serve`` (another process), signed, with the
    dial's call token checked at the start."""
    import xml.etree.ElementTree as ET

    from conftest import ServeProcess

    from telewire.testing.simulator import CallSimulator

    account, token = "AC" + "e5" * 16, "serve-auth-token-0123456789abcdef"
    call_sid = "CA" + "f6" * 16
    shared = {"TELEWIRE_CALL_TOKEN_SECRET": SECRET, "TELEWIRE_TWILIO_AUTH_TOKEN": token,
              "TELEWIRE_CALL_TOKENS": "required"}
    serve = ServeProcess(env=shared)
    try:
        api.body = {"sid": call_sid, "status": "queued"}
        code, out, err = await _run("+15005550006", "--from", "+15005550001", "--param",
                                    "campaign=spring", env={
                                        **shared, "TELEWIRE_TWILIO_ACCOUNT_SID": account,
                                        "TELEWIRE_TWILIO_API_BASE_URL": api.url,
                                        "TELEWIRE_PUBLIC_URL": f"http://127.0.0.1:{serve.port}"})
        assert code == 0, err
        assert json.loads(out)["call_id"] == call_sid
        (sent,) = api.seen
        twiml = dict(sent["form"])["Twiml"]
        stream = ET.fromstring(twiml).find("./Connect/Stream")
        assert stream is not None and stream.get("url") == serve.url
        params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
        assert params["campaign"] == "spring" and PARAMETER in params
        audio = bytes(range(256)) * 5
        sim = CallSimulator(serve.url, custom_parameters=params, auth_token=token,
                            call_sid=call_sid, pace=0, expect_echo=True, drain_s=10)
        result = await sim.run(audio)
        assert result.received_audio == audio
    finally:
        log = serve.stop()
    assert f"call_sid={call_sid}" in log or call_sid in log
    assert token not in log and SECRET not in log


def test_answered_by_frame_takes_only_documented_results() -> None:
    from telewire.frames import ANSWERED_BY, AnsweredByFrame

    assert {"human", "machine_end_beep", "fax", "unknown"} <= ANSWERED_BY
    assert AnsweredByFrame(result="human").kind == "answered_by"
    for bad in ({"result": "robot"}, {"result": "human", "detection_ms": -1}):
        with pytest.raises(ValueError, match="AnsweredByFrame"):
            AnsweredByFrame(**bad)  # type: ignore[arg-type]
