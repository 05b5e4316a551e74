"""The HTTP and WebSocket transport: thin adapters from ASGI to the node."""
