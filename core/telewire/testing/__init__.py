"""telewire.testing: protocol-faithful local peers and the carrier conformance kit.

Depends on the whole public API of telewire; nothing in the core depends on it.
"""
