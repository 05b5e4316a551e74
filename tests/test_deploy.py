"""deploy/haproxy.cfg: valid, and a cluster behind it survives losing a node.

HAProxy is not a service Tether needs, so without it these tests skip (loudly)
even in CI; on Debian/Ubuntu `apt-get install haproxy` enables them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.cluster import Cluster, wait_until
from tests.helpers import ServerProcess, WsClient, free_port
from tests.services import unique

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg"


def haproxy() -> str:
    path = shutil.which("haproxy")
    if path is None:
        pytest.skip("SKIPPED LOUDLY: haproxy is not installed (apt-get install haproxy)")
    return path


def lb_env(port: int, nodes: list[ServerProcess]) -> dict[str, str]:
    env = {**os.environ, "TETHER_LB_BIND": f"127.0.0.1:{port}"}
    env.update({f"TETHER_NODE{i + 1}": f"127.0.0.1:{n.port}" for i, n in enumerate(nodes)})
    return env


def test_haproxy_config_is_valid() -> None:
    fake = [ServerProcess(Path("/nonexistent"), port=p) for p in (1, 2, 3)]
    out = subprocess.run([haproxy(), "-c", "-f", str(CONFIG)], env=lb_env(9, fake), capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


async def test_clients_behind_haproxy_survive_a_node_kill(tmp_path: Path) -> None:
    binary = haproxy()
    cluster = Cluster(tmp_path).start()
    port = free_port()
    lb = subprocess.Popen([binary, "-db", "-f", str(CONFIG)], env=lb_env(port, cluster.nodes),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    front = ServerProcess(tmp_path / "lb", port=port)  # not started: only its URLs are used
    try:
        async def up() -> bool:
            try:
                return (await asyncio.to_thread(httpx.get, front.url + "/healthz", timeout=1)).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(up)
        channel = f"public.{unique()}"
        clients = [await WsClient.connect(front, f"u{i}") for i in range(6)]
        epoch = ""
        for c in clients:
            epoch = (await c.request("SUBSCRIBE", {"channel": channel}))["epoch"]

        async with httpx.AsyncClient(base_url=front.url, headers={"X-API-Key": "test-api-key"}, timeout=10) as http:
            async def publish(i: int) -> None:
                for _ in range(20):  # until HAProxy has marked the dead node down
                    r = await http.post(f"/api/channels/{channel}/publish", json={"data": {"i": i}})
                    if r.status_code == 200:
                        return
                    await asyncio.sleep(0.2)
                raise AssertionError(r.text)

            for i in range(5):
                await publish(i)
            cluster.nodes[1].kill()
            for i in range(5, 10):
                await publish(i)

        async def follow(client: WsClient) -> list[int]:
            seen: list[int] = []
            while len(seen) < 10:
                try:
                    seen.append((await client.next(channel=channel, timeout=15))["offset"])
                except ConnectionError:
                    client = await WsClient.connect(front, "again")
                    ack = await client.request("SUBSCRIBE", {"channel": channel, "since": {"offset": seen[-1], "epoch": epoch}})
                    assert ack["recovered"]
                    seen.extend(p["offset"] for p in ack["publications"])
            await client.close()
            return seen

        results = await asyncio.wait_for(asyncio.gather(*(follow(c) for c in clients)), 60)
        assert all(seen == list(range(1, 11)) for seen in results), results
    finally:
        lb.kill()
        lb.wait()
        await cluster.cleanup()
