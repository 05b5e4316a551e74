"""Tether: a self-hosted realtime sync backend."""

__version__ = "0.1.0"
