"""What a hand-built presence + locks REST backend does: FastAPI, redis-py (asyncio), uvicorn.

The REST shapes of Tether's, so the same load generator drives both:
- ``POST /api/presence/{key}`` ``{"user_id"}``: the member's key ``SET … EX`` (its TTL is the
  heartbeat's) and the room's member set ``SADD``, in one pipelined round trip; answers ``{}``;
- ``POST /api/locks/{key}`` ``{"ttl_seconds"}``: ``SET lock NX PX`` with a random token;
  ``DELETE /api/locks/{key}`` ``{"token"}``: a Lua compare-and-delete, so only the holder releases;
- ``GET /livez``: ``{"status": "alive"}`` (the stack's floor, no Redis).
The caller is the ``Authorization: Bearer <user>:<device>`` token's user, as in Tether's dev mode.
No fencing tokens, no durability beyond Redis', no events to subscribers: the minimum.
Keys live under ``bench_rest_<pid>:`` and are deleted at shutdown.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import redis.asyncio as redis
import uvicorn
from fastapi import Body, FastAPI, Header, HTTPException
from pydantic import BaseModel

PREFIX = f"bench_rest_{os.getpid()}:"
PRESENCE_TTL = 30
RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"""

r = redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"))
release_script = r.register_script(RELEASE)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    keys = [k async for k in r.scan_iter(PREFIX + "*", count=1000)]
    for i in range(0, len(keys), 1000):
        await r.delete(*keys[i:i + 1000])
    await r.aclose()


app = FastAPI(lifespan=lifespan)


def caller(authorization: str | None) -> str:
    if not authorization or not authorization.startswith("Bearer "):
        raise HTTPException(401, "missing token")
    return authorization[7:].split(":", 1)[0]


class Heartbeat(BaseModel):
    user_id: str | None = None


class LockRequest(BaseModel):
    ttl_seconds: float = 30


class UnlockRequest(BaseModel):
    token: str


@app.post("/api/presence/{key}")
async def heartbeat(key: str, body: Heartbeat | None = Body(None),
                    authorization: str | None = Header(None)) -> dict[str, Any]:
    user = (body.user_id if body else None) or caller(authorization)
    async with r.pipeline(transaction=False) as p:
        p.set(f"{PREFIX}presence:{key}:{user}", 1, ex=PRESENCE_TTL)
        p.sadd(f"{PREFIX}presence:{key}", user)
        await p.execute()
    return {}


@app.post("/api/locks/{key}")
async def acquire(key: str, body: LockRequest | None = Body(None),
                  authorization: str | None = Header(None)) -> dict[str, Any]:
    caller(authorization)
    ttl = body.ttl_seconds if body else 30
    token = secrets.token_hex(16)
    if await r.set(f"{PREFIX}lock:{key}", token, nx=True, px=int(ttl * 1000)):
        return {"acquired": True, "token": token, "expires_at": time.time() + ttl}
    return {"acquired": False, "token": None}


@app.delete("/api/locks/{key}")
async def release(key: str, body: UnlockRequest, authorization: str | None = Header(None)) -> dict[str, Any]:
    caller(authorization)
    return {"released": bool(await release_script(keys=[f"{PREFIX}lock:{key}"], args=[body.token]))}


@app.get("/livez")
async def livez() -> dict[str, Any]:
    return {"status": "alive"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
