"""The __provider__ provider against telewire's provider conformance kit."""

from telewire.testing.provider_kit import ProviderTests
from telewire___provider__.testing import __Provider__Fake as Fake


class Test__Provider__(ProviderTests):
    provider = "__provider__"
    fake_class = Fake
