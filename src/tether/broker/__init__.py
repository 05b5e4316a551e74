"""Brokers: publish an event (assigning its offset and storing its history) and fan it out to nodes."""

from tether.broker.base import Broker, Deliver, Position, Stream

__all__ = ["Broker", "Deliver", "Position", "Stream"]
