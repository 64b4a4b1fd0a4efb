"""Outbound Twilio calls: the exact Calls API request (checked against what the ``twilio`` SDK
sends), then the answered call streaming through a real server, and the AMD status callback.

A local aiohttp server on 127.0.0.1 plays Twilio's REST API: it records each request (method,
path, Basic credentials, every form field) and answers as Twilio does. The test then plays
Twilio's side of the answered call: it takes the TwiML it received, opens the media socket it
names with its ``<Parameter>``s (so the call carries the dial's one-time call token) and
streams audio through the echo model; status callbacks are signed with the SDK's
``RequestValidator``. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from websockets.asyncio.client import connect

from telewire.carrier import HttpRequest
from telewire.dial import dial
from telewire.errors import CarrierProtocolError, ConfigError, DialError
from telewire.frames import AnsweredByFrame, Frame
from telewire.registry import Carrier
from telewire.settings import load_settings
from telewire.testing.simulator import CallSimulator
from telewire_twilio.calls import STATUS_EVENTS, create_call, parse_status
from telewire.testing.local_http import local_http_server

ACCOUNT = "AC" + "a1" * 16
TOKEN = "0123456789abcdef0123456789abcdef"
SECRET = "call-token-secret-shared-by-dialler-and-server"
CALL_SID = "CA" + "5e" * 16
TO, FROM = "+15005550006", "+15005550001"
AUDIO = bytes(range(256)) * 10  # 2560 bytes: 16 media messages of 20 ms, every byte value


@dataclass
class Recorded:
    method: str
    path: str
    authorization: str | None
    content_type: str
    form: list[tuple[str, str]]


@dataclass
class FakeTwilio:
    """Twilio's REST API on 127.0.0.1: records requests, answers ``status``/``body``."""

    port: int = 0
    requests: list[Recorded] = field(default_factory=list)
    status: int = 201
    body: dict[str, Any] = field(default_factory=lambda: {
        "sid": CALL_SID, "account_sid": ACCOUNT, "status": "queued", "to": TO, "from": FROM})

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        form = list((await request.post()).items())
        self.requests.append(Recorded(request.method, request.path,
                                      request.headers.get("Authorization"),
                                      request.content_type, [(k, str(v)) for k, v in form]))
        return web.json_response(self.body, status=self.status)


@pytest.fixture
async def fake_twilio() -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio()
    async with local_http_server(fake.handle) as fake.port:
        yield fake


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch, fake_twilio: FakeTwilio) -> None:
    monkeypatch.setenv("TELEWIRE_TWILIO_ACCOUNT_SID", ACCOUNT)
    monkeypatch.setenv("TELEWIRE_TWILIO_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("TELEWIRE_TWILIO_API_BASE_URL", fake_twilio.base_url)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def stream_of(twiml: str) -> tuple[str, dict[str, str]]:
    """The ``<Connect><Stream url>`` and its ``<Parameter>``s, as Twilio reads them."""
    root = ET.fromstring(twiml)
    assert [e.tag for e in root] == ["Connect"] and [e.tag for e in root[0]] == ["Stream"]
    stream = root[0][0]
    return stream.get("url", ""), {p.get("name", ""): p.get("value", "") for p in stream}


# ------------------------------------------------------------------------ the request, exactly


def expected_form(twiml: str, status_url: str, *, amd: str | None = None) -> list[tuple[str, str]]:
    form = [("To", TO), ("From", FROM), ("Twiml", twiml), ("StatusCallback", status_url),
            ("StatusCallbackMethod", "POST"),
            *(("StatusCallbackEvent", e) for e in ("initiated", "ringing", "answered",
                                                   "completed"))]
    if amd:
        form += [("MachineDetection", amd), ("AsyncAmd", "true"),
                 ("AsyncAmdStatusCallback", status_url),
                 ("AsyncAmdStatusCallbackMethod", "POST")]
    return form


async def test_dial_sends_the_exact_calls_api_request(fake_twilio: FakeTwilio,
                                                      credentials: None) -> None:
    settings = load_settings(public_url="https://voice.example.com/tw",
                             call_token_secret=SECRET, answer_parameters={"tenant": "acme"})
    result = await dial(TO, FROM, parameters={"campaign": "spring"}, settings=settings,
                        machine_detection="message_end")
    assert (result.call_id, result.status, result.http_status) == (CALL_SID, "queued", 201)
    (req,) = fake_twilio.requests
    assert req.method == "POST"
    assert req.path == f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json"
    assert req.authorization == basic(ACCOUNT, TOKEN)
    assert req.content_type == "application/x-www-form-urlencoded"
    twiml = dict(req.form)["Twiml"]
    assert req.form == expected_form(twiml, "https://voice.example.com/tw/status/twilio",
                                     amd="DetectMessageEnd")
    url, params = stream_of(twiml)
    assert url == "wss://voice.example.com/tw/media/twilio"
    token = params.pop("telewire_call_token")
    assert token.startswith("v1.")
    assert params == {"tenant": "acme", "campaign": "spring"}


class _LocalTwilioHttpClient(TwilioHttpClient):
    """The SDK's own HTTP client, sent to the fake API instead of api.twilio.com."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        assert url.startswith("https://api.twilio.com/")
        return super().request(method, self.base_url + url[len("https://api.twilio.com"):],
                               *args, **kwargs)


@pytest.mark.parametrize("machine_detection", [None, "answer", "message_end"])
async def test_request_is_what_the_twilio_sdk_sends(fake_twilio: FakeTwilio,
                                                    machine_detection: str | None) -> None:
    """Our request and ``Client.calls.create`` with the same values reach the fake API with the
    same method, path, credentials and form fields (order aside)."""
    status_url = "https://voice.example.com/status/twilio"
    ours = create_call(account_sid=ACCOUNT, auth_token=TOKEN, api_base_url=fake_twilio.base_url,
                       to=TO, from_=FROM, stream_url="wss://voice.example.com/media/twilio",
                       parameters={"telewire_call_token": "v1.1.x.y"}, status_url=status_url,
                       machine_detection=machine_detection)  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as http:
        async with http.request(ours.method, ours.url, headers=dict(ours.headers),
                                data=list(ours.form)) as resp:
            assert resp.status == 201
    twiml = dict(ours.form)["Twiml"]
    amd = {}
    if machine_detection:
        amd = {"machine_detection": {"answer": "Enable", "message_end": "DetectMessageEnd"}[
            machine_detection], "async_amd": "true", "async_amd_status_callback": status_url,
            "async_amd_status_callback_method": "POST"}
    client = Client(ACCOUNT, TOKEN, http_client=_LocalTwilioHttpClient(fake_twilio.base_url))
    call = await asyncio.to_thread(
        client.calls.create, to=TO, from_=FROM, twiml=twiml, status_callback=status_url,
        status_callback_method="POST", status_callback_event=list(STATUS_EVENTS), **amd)
    assert call.sid == CALL_SID
    mine, sdk = fake_twilio.requests
    assert (mine.method, mine.path, mine.authorization) == (sdk.method, sdk.path,
                                                            sdk.authorization)
    assert mine.content_type == sdk.content_type == "application/x-www-form-urlencoded"
    assert sorted(mine.form) == sorted(sdk.form)


# ------------------------------------------------------------------------ bad input


async def test_a_rest_4xx_is_a_clear_error_naming_the_field(fake_twilio: FakeTwilio,
                                                            credentials: None) -> None:
    fake_twilio.status = 400
    fake_twilio.body = {"code": 21211, "message": f"The 'To' number {TO} is not a valid phone "
                        "number.", "more_info": "https://www.twilio.com/docs/errors/21211",
                        "status": 400}
    settings = load_settings(public_url="https://voice.example.com", call_token_secret=SECRET)
    with pytest.raises(DialError) as err:
        await dial(TO, FROM, settings=settings)
    text = str(err.value)
    assert "HTTP 400" in text and "21211" in text and "The 'To' number" in text
    assert (err.value.http_status, err.value.code) == (400, "21211")
    assert TOKEN not in text and SECRET not in text


async def test_unauthorized_says_so_without_the_secret(fake_twilio: FakeTwilio,
                                                      credentials: None) -> None:
    fake_twilio.status = 401
    fake_twilio.body = {"code": 20003, "message": "Authenticate", "status": 401}
    settings = load_settings(public_url="https://voice.example.com", call_token_secret=SECRET)
    with pytest.raises(DialError, match=r"HTTP 401, error 20003: Authenticate.*credentials") \
            as err:
        await dial(TO, FROM, settings=settings)
    assert TOKEN not in str(err.value)


@pytest.mark.parametrize(("to", "from_", "field"), [("5550006", FROM, "To"),
                                                    (TO, "sip:me@example.com", "From"),
                                                    ("+1 555 0006; drop", FROM, "To")])
async def test_a_number_twilio_cannot_dial_is_refused_before_sending(
        fake_twilio: FakeTwilio, credentials: None, to: str, from_: str, field: str) -> None:
    settings = load_settings(public_url="https://voice.example.com", call_token_secret=SECRET)
    with pytest.raises(ConfigError, match=rf"twilio: {field} '") as err:
        await dial(to, from_, settings=settings)
    assert repr(to if field == "To" else from_)[:20] in str(err.value)
    assert fake_twilio.requests == []


async def test_dialling_without_credentials_names_the_variables(fake_twilio: FakeTwilio) -> None:
    settings = load_settings(public_url="https://voice.example.com", call_token_secret=SECRET)
    with pytest.raises(ConfigError, match="TELEWIRE_TWILIO_ACCOUNT_SID and "
                                          "TELEWIRE_TWILIO_AUTH_TOKEN"):
        await dial(TO, FROM, settings=settings)
    assert fake_twilio.requests == []


def test_status_callback_parsing_checks_its_fields() -> None:
    def req(**form: str) -> HttpRequest:
        return HttpRequest(method="POST", url="https://x/status/twilio",
                           headers=MappingProxyType({}), form=tuple(form.items()))

    event = parse_status(req(CallSid=CALL_SID, AnsweredBy="machine_end_beep",
                             MachineDetectionDuration="2150"))
    assert event.call_id == CALL_SID
    assert event.frames == (AnsweredByFrame(result="machine_end_beep", detection_ms=2150),)
    assert parse_status(req(CallSid=CALL_SID, CallStatus="ringing")).frames == ()
    for form, field_name in (({}, "CallSid"), ({"CallSid": "CA1"}, "CallSid"),
                             ({"CallSid": CALL_SID, "AnsweredBy": "robot"}, "AnsweredBy"),
                             ({"CallSid": CALL_SID, "AnsweredBy": "human",
                               "MachineDetectionDuration": "-1"}, "MachineDetectionDuration")):
        with pytest.raises(CarrierProtocolError) as err:
            parse_status(req(**form))
        assert err.value.field == field_name and field_name in str(err.value)


# ------------------------------------------------------------------------ the answered call


async def _dial_into(srv: Any, fake: FakeTwilio, **kwargs: Any) -> tuple[str, dict[str, str]]:
    settings = load_settings(public_url=f"http://127.0.0.1:{srv.port}", call_token_secret=SECRET)
    result = await dial(TO, FROM, settings=settings, **kwargs)
    assert result.call_id == CALL_SID
    return stream_of(dict(fake.requests[-1].form)["Twiml"])


async def test_the_answered_call_streams_through_this_server(
        fake_twilio: FakeTwilio, credentials: None, telewire_server: Callable[..., Any]) -> None:
    srv = await telewire_server(call_token_secret=SECRET, call_tokens="required")
    url, params = await _dial_into(srv, fake_twilio, parameters={"campaign": "spring"})
    assert url == f"ws://127.0.0.1:{srv.port}/media/twilio"
    # Twilio's side: the stream the TwiML names, its parameters, a signed upgrade.
    sim = CallSimulator(url, custom_parameters=params, auth_token=TOKEN, call_sid=CALL_SID,
                        pace=0, expect_echo=True, drain_s=10)
    result = await sim.run(AUDIO)
    assert result.received_audio == AUDIO
    assert result.close_code == 1000
    # the call token is spent: the same TwiML cannot start a second call
    again = CallSimulator(url, custom_parameters=params, auth_token=TOKEN, pace=0, drain_s=2)
    replayed = await again.run(AUDIO[:160])
    assert replayed.received_frames == 0


async def test_answered_by_reaches_the_graph_and_forged_callbacks_do_not(
        fake_twilio: FakeTwilio, credentials: None, telewire_server: Callable[..., Any]) -> None:
    seen: list[Frame] = []
    live = asyncio.Event()

    def observers() -> dict[tuple[str, str], list[Callable[[str, str, Frame], None]]]:
        return {("tel_in", "answered_by"): [lambda n, p, f: seen.append(f)],
                ("tel_in", "audio"): [lambda n, p, f: live.set()]}

    srv = await telewire_server(observers=observers, call_token_secret=SECRET,
                                call_tokens="required")
    url, params = await _dial_into(srv, fake_twilio, machine_detection="message_end")
    status_url = f"http://127.0.0.1:{srv.port}/status/twilio"
    validator = RequestValidator(TOKEN)
    amd = {"AccountSid": ACCOUNT, "CallSid": CALL_SID, "AnsweredBy": "machine_end_beep",
           "MachineDetectionDuration": "2150"}

    async def post(form: dict[str, str], signature: str | None) -> int:
        headers = {"X-Twilio-Signature": signature} if signature is not None else {}
        async with aiohttp.ClientSession() as http:
            async with http.post(status_url, data=form, headers=headers) as resp:
                return resp.status

    sim = CallSimulator(url, auth_token=TOKEN)  # only for its Twilio-shaped messages
    sim.call_sid = CALL_SID
    sim.custom_parameters = params
    headers = {"X-Twilio-Signature": validator.compute_signature(url, {})}
    async with connect(url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(sim._start())
        await ws.send(json.dumps({"event": "media", "sequenceNumber": "2",
                                  "streamSid": sim.stream_sid, "media": {
                                      "track": "inbound", "chunk": "1", "timestamp": "0",
                                      "payload": base64.b64encode(AUDIO[:160]).decode()}}))
        await asyncio.wait_for(live.wait(), 10)
        assert ("twilio", CALL_SID) in srv.live
        # unsigned, forged, or signed over other values: 403, and nothing reaches the call
        assert await post(amd, None) == 403
        assert await post(amd, "bm90IGEgc2lnbmF0dXJl") == 403
        human = validator.compute_signature(status_url, {**amd, "AnsweredBy": "human"})
        assert await post(amd, human) == 403
        assert seen == []
        # progress of the call, and the AMD result, signed as Twilio signs them
        ringing = {"AccountSid": ACCOUNT, "CallSid": CALL_SID, "CallStatus": "ringing"}
        assert await post(ringing, validator.compute_signature(status_url, ringing)) == 204
        assert await post(amd, validator.compute_signature(status_url, amd)) == 204
        assert seen == [AnsweredByFrame(result="machine_end_beep", detection_ms=2150)]
        await ws.send(json.dumps({"event": "stop", "sequenceNumber": "3",
                                  "streamSid": sim.stream_sid,
                                  "stop": {"accountSid": ACCOUNT, "callSid": CALL_SID}}))
        await asyncio.wait_for(ws.wait_closed(), 10)
    # a callback for a call that is not live here is acknowledged and dropped
    other = {**amd, "CallSid": "CA" + "0" * 32}
    assert await post(other, validator.compute_signature(status_url, other)) == 204
    assert len(seen) == 1


def test_dial_hook_is_reachable_through_the_facade(twilio: Carrier,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEWIRE_TWILIO_ACCOUNT_SID", ACCOUNT)
    monkeypatch.setenv("TELEWIRE_TWILIO_AUTH_TOKEN", TOKEN)
    req = twilio.dial_request(to=TO, from_=FROM, stream_url="wss://h/media/twilio",
                              parameters={}, answer_url="https://h/answer/twilio",
                              status_url="https://h/status/twilio")
    assert req is not None and req.id_field == "sid"
    assert req.url == f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Calls.json"
    with pytest.raises(ConfigError, match="Twiml is .* characters; Twilio takes at most 4000"):
        twilio.dial_request(to=TO, from_=FROM, stream_url="wss://h/media/twilio",
                            parameters={f"p{i}": "v" * 400 for i in range(12)},
                            answer_url="https://h/answer/twilio",
                            status_url="https://h/status/twilio")
