"""A device watching progress that another device of the same user reports.

The phone processes a photo shoot and sends ``UPDATE_PROGRESS``; the laptop,
same user, gets ``SHOOT_PROGRESS`` with ``progress`` computed by the server.
Both tokens must name the same user (two devices).

    python examples/device_progress.py [URL] [--token LAPTOP] [--peer-token PHONE]
"""

from __future__ import annotations

import asyncio

from cli_args import parse, run

from tether.client import Client


async def main(url: str, token: str = "alice:laptop", peer_token: str = "alice:phone", total: int = 4) -> list[float]:
    laptop = Client(url, token)
    phone = Client(url, peer_token)
    await laptop.connect()
    await phone.connect()
    if laptop.user_id != phone.user_id:
        await laptop.close()
        await phone.close()
        raise SystemExit(f"the tokens name two users ({laptop.user_id}, {phone.user_id}): progress goes to the "
                         f"reporting user's own devices, so mint both for one user (tether token --user "
                         f"{laptop.user_id} --device laptop, then --device phone)")
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
    try:
        await asyncio.wait_for(finished.wait(), 30)  # only if the server never delivers
    except asyncio.TimeoutError:
        raise SystemExit(f"no SHOOT_PROGRESS 'completed' reached the laptop within 30 s (saw {len(seen)} updates)") from None
    await laptop.close()
    await phone.close()
    return seen


if __name__ == "__main__":
    args = parse(__doc__, "alice:laptop", "alice:phone")
    run(main(args.url, args.token, args.peer_token))
