"""telewire-__provider_dist__: the __provider__ realtime model as a telewire provider.

Depends on telewire's public API. The entry point (group ``telewire.providers``, name
``__provider__``) is :class:`~telewire___provider__.session.__Provider__Session`; this package
re-exports it. ``telewire___provider__.testing`` is the kit's fake server, for tests only.
"""

from __future__ import annotations

from telewire___provider__.session import __Provider__Keys, __Provider__Session

__all__ = ["__Provider__Keys", "__Provider__Session"]
__version__ = "0.1.0"
