"""Gateways between the mesh and the agent ecosystem's protocols (the ``gateway`` extra).

``mesh gateway`` serves every live mesh agent as an A2A agent (:mod:`.a2a_server`),
``mesh mcp`` offers their methods as MCP tools (:mod:`.mcp_server`), and ``mesh run a2a``
brings an outside A2A agent into the mesh as a peer (:mod:`.a2a_peer`). Each gateway is a
mesh node with its own certified identity; sealing ends at it (docs/security.md).
"""
