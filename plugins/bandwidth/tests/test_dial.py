"""Outbound Bandwidth calls: the exact create-call request, then the answered call streaming here.

A local aiohttp server on 127.0.0.1 plays Bandwidth's Voice API: it records each request
(method, path, Basic credentials, the JSON body) and answers as Bandwidth does. The test then
plays Bandwidth's side of the answered call: it posts the ``answer`` webhook to the
``answerUrl`` it received (with the Basic credentials and ``tag`` it was given), and streams
over the ``<StartStream>`` the BXML names. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from telewire.dial import dial
from telewire.errors import ConfigError, DialError
from telewire.settings import load_settings
from telewire_bandwidth.auth import basic_authorization
from telewire_bandwidth.calls import tag_parameters
from telewire_bandwidth.testing import BandwidthCall
from telewire.testing.local_http import local_http_server

ACCOUNT, APPLICATION = "9900000", "04e88489-df02-4e34-a0ee-27a91849555f"
API_USER, API_PASSWORD = "api-user", "api-pw-5f4e3d2c1b"
HOOK_USER, HOOK_PASSWORD = "bw-user", "hook-pw-0f9e8d7c"
CALL_ID = "c-15ac29a2-1331029c-2cb0-4a07-b215-b22865662d85"
TO, FROM = "+15553334444", "+15551112222"
SECRET = "call-token-secret-shared-by-dialler-and-server"
AUDIO = bytes(range(256)) * 10


@dataclass
class FakeBandwidth:
    port: int = 0
    requests: list[tuple[str, str, str | None, str, Any]] = field(default_factory=list)
    status: int = 201
    body: dict[str, Any] = field(default_factory=lambda: {
        "accountId": ACCOUNT, "applicationId": APPLICATION, "callId": CALL_ID, "to": TO,
        "from": FROM, "callUrl": f"https://voice.bandwidth.com/api/v2/accounts/{ACCOUNT}/calls/"
                                f"{CALL_ID}"})

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path, request.headers.get("Authorization"),
                              request.content_type, json.loads(await request.read() or b"null")))
        return web.json_response(self.body, status=self.status)


@pytest.fixture
async def fake_bandwidth() -> AsyncIterator[FakeBandwidth]:
    fake = FakeBandwidth()
    async with local_http_server(fake.handle) as fake.port:
        yield fake


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch, fake_bandwidth: FakeBandwidth) -> None:
    for name, value in (("ACCOUNT_ID", ACCOUNT), ("APPLICATION_ID", APPLICATION),
                        ("API_USERNAME", API_USER), ("API_PASSWORD", API_PASSWORD),
                        ("API_BASE_URL", fake_bandwidth.base_url),
                        ("USERNAME", HOOK_USER), ("PASSWORD", HOOK_PASSWORD)):
        monkeypatch.setenv(f"TELEWIRE_BANDWIDTH_{name}", value)


async def test_dial_sends_the_exact_create_call_request(fake_bandwidth: FakeBandwidth,
                                                        configured: None) -> None:
    settings = load_settings(public_url="https://voice.example.com", call_token_secret=SECRET)
    result = await dial(TO, FROM, carrier="bandwidth", parameters={"campaign": "spring"},
                        settings=settings)
    assert (result.carrier, result.call_id, result.http_status) == ("bandwidth", CALL_ID, 201)
    ((method, path, auth, content_type, body),) = fake_bandwidth.requests
    assert (method, path) == ("POST", f"/api/v2/accounts/{ACCOUNT}/calls")
    assert auth == "Basic " + base64.b64encode(f"{API_USER}:{API_PASSWORD}".encode()).decode()
    assert content_type == "application/json"
    assert body == {"to": TO, "from": FROM, "applicationId": APPLICATION,
                    "answerUrl": "https://voice.example.com/answer/bandwidth",
                    "answerMethod": "POST", "username": HOOK_USER, "password": HOOK_PASSWORD,
                    "tag": '{"campaign":"spring"}'}


async def test_the_answered_call_streams_through_this_server(
        fake_bandwidth: FakeBandwidth, configured: None,
        telewire_server: Callable[..., Any]) -> None:
    srv = await telewire_server(call_tokens="required")
    base = f"http://127.0.0.1:{srv.port}"
    settings = load_settings(public_url=base, call_token_secret=SECRET)
    await dial(TO, FROM, carrier="bandwidth", parameters={"campaign": "spring"},
               settings=settings)
    body = fake_bandwidth.requests[-1][4]
    assert body["answerUrl"] == f"{base}/answer/bandwidth"
    # Bandwidth's side: the answer webhook, with the call's tag and the Basic credentials
    answer = {"eventType": "answer", "callId": CALL_ID, "accountId": ACCOUNT,
              "applicationId": APPLICATION, "from": FROM, "to": TO, "direction": "outbound",
              "tag": body["tag"]}
    async with aiohttp.ClientSession() as http:
        async with http.post(body["answerUrl"], json=answer, headers={
                "Authorization": basic_authorization(body["username"], body["password"])}) as r:
            assert r.status == 200
            bxml = await r.text()
        async with http.post(body["answerUrl"], json=answer) as r:  # without them: refused
            assert r.status == 403
    gather, stream, _stop = ET.fromstring(bxml)
    params = {p.get("name", ""): p.get("value", "") for p in stream}
    assert params.pop("telewire_call_token").startswith("v1.")
    assert params == {"campaign": "spring"}
    call = BandwidthCall(stream.get("destination", ""), gather.get("dtmfUrl", ""),
                         stream_params={p.get("name", ""): p.get("value", "") for p in stream},
                         call_id=CALL_ID)
    async with call:
        assert await call.send_audio(AUDIO) == 16
        assert await call.collect_audio(len(AUDIO)) == AUDIO


async def test_a_rest_4xx_is_a_clear_error(fake_bandwidth: FakeBandwidth,
                                           configured: None) -> None:
    fake_bandwidth.status = 400
    fake_bandwidth.body = {"type": "validation",
                           "description": "'to' must be a valid E164 or SIP URI"}
    settings = load_settings(public_url="https://voice.example.com", call_token_secret=SECRET)
    with pytest.raises(DialError) as err:
        await dial(TO, FROM, carrier="bandwidth", settings=settings)
    text = str(err.value)
    assert "HTTP 400" in text and "validation" in text and "'to' must be" in text
    assert API_PASSWORD not in text and HOOK_PASSWORD not in text


@pytest.mark.parametrize(("to", "from_", "field"), [("5553334444", FROM, "to"),
                                                    (TO, "sip:me@example.com", "from")])
async def test_a_number_bandwidth_cannot_dial_is_refused_before_sending(
        fake_bandwidth: FakeBandwidth, configured: None, to: str, from_: str,
        field: str) -> None:
    settings = load_settings(public_url="https://voice.example.com", call_token_secret=SECRET)
    with pytest.raises(ConfigError, match=rf"bandwidth: {field} '"):
        await dial(to, from_, carrier="bandwidth", settings=settings)
    assert fake_bandwidth.requests == []


async def test_missing_settings_and_machine_detection_are_refused(
        fake_bandwidth: FakeBandwidth, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(public_url="https://voice.example.com", call_token_secret=SECRET)
    with pytest.raises(ConfigError, match="TELEWIRE_BANDWIDTH_ACCOUNT_ID, "
                                          "TELEWIRE_BANDWIDTH_APPLICATION_ID"):
        await dial(TO, FROM, carrier="bandwidth", settings=settings)
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_API_USERNAME", API_USER)
    with pytest.raises(ConfigError, match="API_PASSWORD must be set together"):
        await dial(TO, FROM, carrier="bandwidth", settings=settings)
    for name, value in (("ACCOUNT_ID", ACCOUNT), ("APPLICATION_ID", APPLICATION),
                        ("API_PASSWORD", API_PASSWORD)):
        monkeypatch.setenv(f"TELEWIRE_BANDWIDTH_{name}", value)
    with pytest.raises(ConfigError, match="answering-machine detection is not supported"):
        await dial(TO, FROM, carrier="bandwidth", settings=settings, machine_detection="answer")
    assert fake_bandwidth.requests == []


def test_tag_parameters_take_only_string_pairs_and_never_a_token() -> None:
    def body(tag: object) -> bytes:
        return json.dumps({"eventType": "answer", "callId": CALL_ID, "tag": tag}).encode()

    assert tag_parameters(body('{"a":"1","telewire_call_token":"forged"}')) == {"a": "1"}
    for junk in ("not json", "[1]", '{"a":1}', 7, None):
        assert tag_parameters(body(junk)) in ({},), junk
    assert tag_parameters(b"") == {} and tag_parameters(b"{") == {}
