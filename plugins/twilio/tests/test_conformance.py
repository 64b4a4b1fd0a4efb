"""The twilio carrier against telewire's carrier conformance kit."""

from telewire.testing.conformance import CarrierConformanceTests
from telewire_twilio.testing import TwilioFixtures


class TestTwilio(TwilioFixtures, CarrierConformanceTests):
    """Every conformance test, fed with Twilio's own messages."""


def test_every_hook_is_implemented() -> None:
    """The plugin implements the whole carrier contract it has a use for, not only the required hooks."""
    import inspect

    import telewire_twilio
    from telewire import hookspecs

    # Twilio delivers everything on the media socket: it has no event webhooks.
    not_twilio = {"telewire_parse_webhook"}
    specs = {n for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
             if n.startswith("telewire_")} - not_twilio
    impls = {n for n in specs if hasattr(getattr(telewire_twilio, n, None), "telewire_impl")}
    assert specs and impls == specs, f"not implemented: {sorted(specs - impls)}"
