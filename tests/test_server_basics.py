"""Auth, ops endpoints, REST error shapes and the CLI, against real server processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets

from tests.helpers import RequestFailed, ServerProcess, WsClient
from tether.core.auth import mint

SECRET = "tests-only-secret-of-at-least-32-bytes!"


async def test_healthz_metrics_openapi(shared_server) -> None:
    async with shared_server.http() as http:
        assert (await http.get("/healthz")).json()["status"] == "ok"
        c = await WsClient.connect(shared_server, "metrics-user")
        await c.request("PUBLISH", {"channel": "public.m", "data": 1})
        text = (await http.get("/metrics")).text
        for name in ("tether_connections", "tether_messages_in_total", "tether_deliveries_total",
                     "tether_publish_latency_seconds_bucket", "tether_errors_total"):
            assert name in text, name
        # frames written are counted once per flush of many sockets, not per frame: still all of them
        out = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("tether_messages_out_total"))
        assert out >= 2  # this client's CONNECTED and ACK at least
        spec = (await http.get("/openapi.json")).json()
        assert "/api/channels/{channel}/publish" in spec["paths"]
        await c.close()


async def test_the_node_serves_the_committed_client_module(shared_server) -> None:
    """`GET /tether-client.js` from a running node: 200, a JavaScript type, the committed build's bytes."""
    committed = (Path(__file__).resolve().parents[1] / "src" / "tether" / "server" / "static" / "tether-client.js").read_bytes()
    async with shared_server.http() as http:
        r = await http.get("/tether-client.js")
    assert r.status_code == 200, r.text[:200]
    assert r.headers["content-type"].split(";")[0].strip() in ("text/javascript", "application/javascript")
    assert r.content == committed


async def test_rest_errors_are_json_with_a_code(shared_server) -> None:
    async with shared_server.http("alice") as http:
        r = await http.post("/api/channels/public.x/publish", content=b"{nope", headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "bad_request"
        assert r.json()["error"]["field"] == "body" and "not valid JSON" in r.json()["error"]["message"]
        r = await http.post("/api/channels/public.x/publish", json={"type": "PUBLICATION"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "data"
        r = await http.post("/api/channels/public.x/publish", json={"type": "lower", "data": 1})
        assert r.status_code == 400 and "UPPER_SNAKE_CASE" in r.json()["error"]["message"]
        r = await http.post("/api/channels/users.bob/publish", json={"data": 1})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        r = await http.get("/api/no/such/route")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    async with shared_server.http() as anon:
        r = await anon.post("/api/channels/public.x/publish", json={"data": 1})
        assert r.status_code == 401 and "token" in r.json()["error"]["message"]
    async with httpx.AsyncClient(base_url=shared_server.url, headers={"X-API-Key": "wrong"}) as bad:
        r = await bad.post("/api/channels/public.x/publish", json={"data": 1})
        assert r.status_code == 401


async def test_api_key_publishes_anywhere_and_subscribers_get_it(shared_server) -> None:
    c = await WsClient.connect(shared_server, "frank")
    async with shared_server.http(api_key=True) as http:
        r = await http.post("/api/channels/users.frank/publish", json={"type": "CREDIT_UPDATE", "data": {"balance": 5}})
        assert r.status_code == 200 and r.json()["offset"] >= 1
    event = await c.next("CREDIT_UPDATE")
    assert event["channel"] == "users.frank" and event["data"] == {"balance": 5}
    await c.close()


async def test_jwt_mode(server_factory) -> None:
    srv = server_factory("--auth", "jwt", env={"TETHER_JWT_SECRET": SECRET})
    good = mint(SECRET, "judy", device="tablet", roles=["admin"])
    c = await WsClient.connect(srv, good)
    assert c.connected["userId"] == "judy" and c.connected["deviceId"] == "tablet"
    assert (await c.request("SUBSCRIBE", {"channel": "admin"}))["channel"] == "admin"
    plain = await WsClient.connect(srv, mint(SECRET, "ivan"))
    with pytest.raises(RequestFailed) as exc:
        await plain.request("SUBSCRIBE", {"channel": "admin"})
    assert exc.value.code == "forbidden"
    for bad in ("judy:tablet", mint("a-different-secret-of-32-bytes-or-more", "judy"), mint(SECRET, "judy", ttl=-10)):
        ws = await websockets.connect(srv.ws_url(bad))
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4001
    async with srv.http(good) as http:
        assert (await http.post("/api/channels/public.j/publish", json={"data": 1})).status_code == 200
    async with srv.http(mint(SECRET, "judy", ttl=-10)) as http:
        r = await http.post("/api/channels/public.j/publish", json={"data": 1})
        assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    await c.close(); await plain.close()


def test_dev_auth_refuses_a_public_address(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "tether", "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "TETHER_JWT_SECRET" in r.stderr


def test_cli_help_everywhere() -> None:
    for cmd in ([], ["serve"], ["token"], ["tail"], ["publish"], ["migrate"]):
        r = subprocess.run([sys.executable, "-m", "tether", *cmd, "--help"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "Usage:" in r.stdout, cmd


def test_cli_token_mints_a_jwt() -> None:
    r = subprocess.run([sys.executable, "-m", "tether", "token", "--user", "u1", "--role", "admin", "--secret", SECRET],
                       capture_output=True, text=True, timeout=30)
    import jwt
    claims = jwt.decode(r.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "u1" and claims["roles"] == ["admin"] and claims["exp"] > claims["iat"]


async def test_cli_tail_and_publish(shared_server: ServerProcess) -> None:
    tail = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tether", "tail", "public.cli", "--url", shared_server.url, "--count", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await asyncio.sleep(1.5)  # let tail subscribe before the first publish
    for n in (1, 2):
        pub = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tether", "publish", "public.cli", f'{{"n": {n}}}', "--url", shared_server.url,
            stdout=asyncio.subprocess.PIPE)
        out, _ = await pub.communicate()
        assert b'"offset"' in out
    out, err = await asyncio.wait_for(tail.communicate(), 30)
    lines = out.decode().strip().splitlines()
    assert len(lines) == 2 and '"n":1' in lines[0] and '"n":2' in lines[1], (out, err)
    bad = subprocess.run([sys.executable, "-m", "tether", "publish", "public.cli", "{not json", "--url", shared_server.url],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "must be JSON" in bad.stderr
    down = subprocess.run([sys.executable, "-m", "tether", "publish", "public.cli", "{}", "--url", "http://127.0.0.1:1"],
                          capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and "tether serve" in down.stderr




async def test_jwt_rs256_with_a_public_key(server_factory, tmp_path) -> None:
    import jwt as pyjwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "pub.pem").write_bytes(pem)
    srv = server_factory("--auth", "jwt", env={"TETHER_JWT_PUBLIC_KEY": str(tmp_path / "pub.pem")})
    import time as _t
    token = pyjwt.encode({"sub": "rita", "exp": int(_t.time()) + 60}, key, algorithm="RS256")
    c = await WsClient.connect(srv, token)
    assert c.connected["userId"] == "rita"
    await c.close()
