"""The Django peer: Channels consumers, rooms as ``channels_redis`` groups, served by uvicorn."""
