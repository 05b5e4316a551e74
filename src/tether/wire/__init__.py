"""What crosses the wire: frames, error codes, close codes, JSON and timestamps. No I/O, no state."""
