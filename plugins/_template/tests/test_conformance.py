"""The __carrier__ carrier against telewire's carrier conformance kit."""

from telewire.testing.conformance import CarrierConformanceTests
from telewire___carrier__.testing import __Carrier__Fixtures


class Test__Carrier__(__Carrier__Fixtures, CarrierConformanceTests):
    """Every conformance test, fed with the carrier's own messages."""
