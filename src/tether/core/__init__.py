"""The core: connections (sans-I/O), the node and its one event path, hub, auth, namespaces, idempotency."""
