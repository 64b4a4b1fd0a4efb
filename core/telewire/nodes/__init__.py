"""Node types of a call graph: the base class and the built-in types.

Depends on ``telewire.frames``, ``telewire.registry`` and ``telewire.realtime``; ``graph`` loads
node types through entry-point group ``telewire.nodes`` (the built-ins too).
"""

from __future__ import annotations

from telewire.nodes.base import CallHandle, Node, NodeConfig

__all__ = ["CallHandle", "Node", "NodeConfig"]
