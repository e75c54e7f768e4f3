"""The runtime over ZeroMQ and asyncio: connections, Node, discovery, topics, delivery."""
