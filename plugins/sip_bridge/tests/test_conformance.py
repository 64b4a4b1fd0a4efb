"""The sip_bridge carrier against telewire's carrier conformance kit, once per bundled preset.

mu-law bridges run the whole kit. L16 bridges (jambonz, FreeSWITCH) run every part but the two
whose premise is "no transcoding" (``OutboundTests``, ``MediaRoundTripTests``): their audio is
converted by design; ``test_l16.py`` checks that conversion instead.
"""

from telewire.testing.conformance import (
    CarrierConformanceTests,
    ClearTests,
    DTMFTests,
    InboundParsingTests,
    IsolationTests,
    MalformedInputTests,
    MarkTests,
    RegistrationTests,
)
from telewire_sip_bridge.testing import (
    AsteriskFixtures,
    FreeSwitchFixtures,
    JambonzFixtures,
    SignalWireFixtures,
)


class TestAsteriskChanWebsocket(AsteriskFixtures, CarrierConformanceTests):
    """Every conformance test, with chan_websocket's JSON control events and binary ulaw."""


class TestSignalWire(SignalWireFixtures, CarrierConformanceTests):
    """Every conformance test, with SignalWire's Twilio-compatible messages."""


class _L16Conformance(RegistrationTests, InboundParsingTests, MarkTests, ClearTests, DTMFTests,
                      MalformedInputTests, IsolationTests):
    """The kit minus the parts that assume the wire codec is the graph's codec."""


class TestJambonz(JambonzFixtures, _L16Conformance):
    """jambonz listen: binary L16 8 kHz, JSON dtmf/mark, killAudio."""


class TestFreeSwitchAudioStream(FreeSwitchFixtures, _L16Conformance):
    """mod_audio_stream: binary L16 8 kHz in, JSON streamAudio out; no marks, clear or DTMF."""


def test_every_hook_it_has_a_use_for_is_implemented() -> None:
    """Everything but what a bridge socket cannot have: answer webhooks, signatures, event
    webhooks and settings (a bridge is configured by the graph's envelope spec alone)."""
    import inspect

    import telewire_sip_bridge
    from telewire import hookspecs

    not_a_bridge = {"telewire_parse_webhook", "telewire_answer_document",
                    "telewire_authenticate", "telewire_carrier_settings",
                    "telewire_transfer_request",  # a bridge has no REST API to transfer with
                    "telewire_dial_request"}  # ... nor to place a call with
    specs = {n for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
             if n.startswith("telewire_")} - not_a_bridge
    impls = {n for n in specs if hasattr(getattr(telewire_sip_bridge, n, None), "telewire_impl")}
    assert specs and impls == specs, f"not implemented: {sorted(specs - impls)}"
