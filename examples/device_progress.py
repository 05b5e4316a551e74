"""A device watching progress that another device reports (seed websocket-sync-multi-device.md).

The phone processes a photo shoot and sends ``UPDATE_PROGRESS``; the laptop,
same user, gets ``SHOOT_PROGRESS`` with ``progress`` computed by the server.

    python examples/device_progress.py [http://127.0.0.1:8080]
"""

from __future__ import annotations

import asyncio
import sys

from tether.client import Client


async def main(url: str, total: int = 4) -> list[float]:
    laptop = Client(url, "alice:laptop")
    phone = Client(url, "alice:phone")
    await laptop.connect()
    await phone.connect()
    seen: list[float] = []
    finished = asyncio.Event()

    def on_progress(event: dict) -> None:
        data = event["data"]
        seen.append(data["progress"])
        print(f"laptop: shoot {data['shootId']} {data['processedCount']}/{data['totalCount']} ({data.get('status')})")
        if data.get("status") == "completed":
            finished.set()

    laptop.on("SHOOT_PROGRESS", on_progress)
    for done in range(1, total + 1):
        await phone.request("UPDATE_PROGRESS", {
            "shootId": "shoot-1", "processedCount": done, "totalCount": total,
            "currentImage": f"IMG_{done:04}.jpg", "status": "completed" if done == total else "processing",
        })
    await asyncio.wait_for(finished.wait(), 10)
    await laptop.close()
    await phone.close()
    return seen


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"))
