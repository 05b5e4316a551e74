"""Streams into a live session: a participant (or a backend with the API key) streams a message,
the others see it grow on sessions.{id}, a late subscriber gets the text so far, and the final
text is stored once as a chat message whose MESSAGE_CREATED carries the stream_id."""

from __future__ import annotations

import websockets

from tests.helpers import API_KEY, RequestFailed, ServerProcess, WsClient


async def session_with(server: ServerProcess, host: str, *members: str, private: bool = False) -> str:
    async with server.http(host) as h:
        sid = (await h.post("/api/sessions", json={"title": "Vespers", "is_private": private})).json()["id"]
    for m in members:
        async with server.http(m) as h:
            assert (await h.post(f"/api/sessions/{sid}/join")).status_code == 200
    return sid  # type: ignore[no-any-return]


async def follow(server: ServerProcess, token: str, sid: str) -> WsClient:
    client = await WsClient.connect(server, token)
    await client.request("SUBSCRIBE", {"channel": f"sessions.{sid}"})
    return client


async def backend_socket(server: ServerProcess) -> WsClient:
    ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/ws", additional_headers={"X-API-Key": API_KEY})
    client = WsClient(ws)
    assert (await client.next("CONNECTED"))["data"]["userId"] == "server"
    return client


async def messages(server: ServerProcess, token: str, sid: str) -> list[dict]:  # type: ignore[type-arg]
    async with server.http(token) as h:
        return (await h.get(f"/api/sessions/{sid}/messages", params={"limit": 200})).json()["messages"]  # type: ignore[no-any-return]


async def refused(client: WsClient, type: str, data: dict) -> dict:  # type: ignore[type-arg]
    try:
        await client.request(type, data)
    except RequestFailed as exc:
        return exc.data  # type: ignore[no-any-return]
    raise AssertionError(f"{type} {data} was accepted")


async def test_a_participant_streams_a_message_that_others_see_grow_and_that_is_stored_once(shared_server: ServerProcess) -> None:
    srv = shared_server
    sid = await session_with(srv, "ann", "ben", "cat", "dan")
    channel = f"sessions.{sid}"
    ann, cat = await follow(srv, "ann", sid), await follow(srv, "cat", sid)
    ben = await follow(srv, "ben:phone", sid)
    ben_tablet = await follow(srv, "ben:tablet", sid)  # the writer's other device sees it grow too

    start = await ben.request("STREAM_START", {"channel": channel, "data": {"message_type": "prayer"}})
    stream_id = start["stream_id"]
    started = await ann.next("STREAM_STARTED", channel=channel)
    assert started["data"]["stream_id"] == stream_id
    assert started["data"]["data"] == {"message_type": "prayer", "user_id": "ben", "user_name": "ben"}

    await ben.request("STREAM_DELTA", {"stream_id": stream_id, "delta": "Lord, "})
    await ben.request("STREAM_DELTA", {"stream_id": stream_id, "delta": "hear "})
    seen = ""
    while seen != "Lord, hear ":  # grows on every reader, in order, without gaps
        delta = (await cat.next("STREAM_DELTA", channel=channel))["data"]
        assert delta["start"] == len(seen)
        seen += delta["delta"]
    assert (await ben_tablet.next("STREAM_DELTA", channel=channel))["data"]["stream_id"] == stream_id

    late = await follow(srv, "dan", sid)  # arrives mid-stream: the text so far, before the SUBSCRIBE's ACK
    state = await late.next("STREAM_STATE", channel=channel)
    assert state["data"]["stream_id"] == stream_id and state["data"]["content"] == "Lord, hear "
    assert state["data"]["data"]["message_type"] == "prayer"

    await ben.request("STREAM_DELTA", {"stream_id": stream_id, "delta": "our prayer."})
    end = await ben.request("STREAM_END", {"stream_id": stream_id})
    stored = end["stored"]
    assert end["status"] == "completed" and stored["message"] == "Lord, hear our prayer."
    assert stored["stream_id"] == stream_id and stored["message_type"] == "prayer" and stored["user_id"] == "ben"

    for reader in (ann, cat, late, ben_tablet):
        ended = await reader.next("STREAM_ENDED", channel=channel)
        assert ended["data"]["content"] == "Lord, hear our prayer."
        created = await reader.next("MESSAGE_CREATED", channel=channel)
        assert created["data"] == stored  # carries the stream_id
    # Stored once: one message from ben, in the history with its stream_id; a second END changes nothing.
    again = await refused(ben, "STREAM_END", {"stream_id": stream_id})
    assert again["code"] == "conflict"
    from_ben = [m for m in await messages(srv, "ann", sid) if m["user_id"] == "ben"]
    assert from_ben == [stored]
    await ann.nothing("MESSAGE_CREATED", channel=channel)
    async with srv.http("ann") as h:
        kept = (await h.get(f"/api/streams/{stream_id}")).json()
        assert kept["status"] == "completed" and kept["content"] == stored["message"]
    for c in (ann, cat, ben, ben_tablet, late):
        await c.close()


async def test_non_participants_are_refused(shared_server: ServerProcess) -> None:
    srv = shared_server
    sid = await session_with(srv, "host1", "mem1")
    private = await session_with(srv, "host1", private=True)
    async with srv.http("host1") as h:
        await h.post(f"/api/sessions/{private}/invite", json={"user_id": "guest1"})
    eve = await WsClient.connect(srv, "eve")
    assert (await refused(eve, "STREAM_START", {"channel": f"sessions.{sid}"}))["code"] == "forbidden"
    # An outsider learns nothing of a private session; an invitee may read but, not seated, not stream.
    assert (await refused(eve, "STREAM_START", {"channel": f"sessions.{private}"}))["code"] == "not_found"
    guest = await WsClient.connect(srv, "guest1")
    assert (await refused(guest, "STREAM_START", {"channel": f"sessions.{private}"}))["code"] == "forbidden"
    assert (await refused(eve, "STREAM_START", {"channel": "sessions.nope"}))["code"] == "not_found"
    # Acting for someone else needs the API key.
    member = await WsClient.connect(srv, "mem1")
    assert (await refused(member, "STREAM_START", {"channel": f"sessions.{sid}",
                                                   "data": {"user_id": "host1"}}))["code"] == "forbidden"
    bad = await refused(member, "STREAM_START", {"channel": f"sessions.{sid}", "data": {"message_type": "system"}})
    assert bad["code"] == "bad_request" and bad["field"] == "data.message_type"
    bad = await refused(member, "STREAM_START", {"channel": f"sessions.{sid}", "data": {"role": "assistant"}})
    assert bad["code"] == "bad_request" and bad["field"] == "data.role"
    # A participant who left may no longer stream; nor anyone into an ended session.
    async with srv.http("mem1") as h:
        await h.post(f"/api/sessions/{sid}/leave")
    assert (await refused(member, "STREAM_START", {"channel": f"sessions.{sid}"}))["code"] == "forbidden"
    async with srv.http("host1") as h:
        await h.delete(f"/api/sessions/{sid}")
    host = await WsClient.connect(srv, "host1")
    assert (await refused(host, "STREAM_START", {"channel": f"sessions.{sid}"}))["code"] == "conflict"
    for c in (eve, guest, member, host):
        await c.close()


async def test_a_chat_stream_is_bounded_like_a_chat_message(shared_server: ServerProcess) -> None:
    srv = shared_server
    sid = await session_with(srv, "long1")
    writer = await WsClient.connect(srv, "long1")
    sid_channel = f"sessions.{sid}"
    stream_id = (await writer.request("STREAM_START", {"channel": sid_channel}))["stream_id"]
    await writer.request("STREAM_DELTA", {"stream_id": stream_id, "delta": "a" * 3990})
    over = await refused(writer, "STREAM_DELTA", {"stream_id": stream_id, "delta": "b" * 11})  # 4,001 characters
    assert over["code"] == "too_large" and "4000" in over["message"]
    blank = await refused(writer, "STREAM_END", {"stream_id": stream_id, "content": "   "})
    assert blank["code"] == "bad_request" and blank["field"] == "content"
    too_long = await refused(writer, "STREAM_END", {"stream_id": stream_id, "content": "c" * 4001})
    assert too_long["code"] == "too_large"
    # Refused ends leave the stream open: the text so far (within the bound) still ends it.
    await writer.request("STREAM_DELTA", {"stream_id": stream_id, "delta": "b" * 10})
    end = await writer.request("STREAM_END", {"stream_id": stream_id})
    assert end["stored"]["message"] == "a" * 3990 + "b" * 10 and end["stored"]["message_type"] == "text"
    await writer.close()


async def test_a_backend_with_the_api_key_streams_into_a_session(shared_server: ServerProcess) -> None:
    srv = shared_server
    sid = await session_with(srv, "host2", "mem2")
    channel = f"sessions.{sid}"
    reader = await follow(srv, "mem2", sid)
    backend = await backend_socket(srv)
    own = (await backend.request("STREAM_START", {"channel": channel, "data": {"message_type": "scripture"}}))["stream_id"]
    await backend.request("STREAM_DELTA", {"stream_id": own, "delta": "In the beginning"})
    as_server = (await backend.request("STREAM_END", {"stream_id": own}))["stored"]
    assert as_server["user_id"] == "server" and as_server["user_name"] == "Server"
    assert as_server["message_type"] == "scripture" and as_server["stream_id"] == own
    # For a participant (an AI answer in their name): the message is theirs.
    theirs = (await backend.request("STREAM_START", {"channel": channel, "data": {"user_id": "mem2"}}))["stream_id"]
    stored = (await backend.request("STREAM_END", {"stream_id": theirs, "content": "Amen"}))["stored"]
    assert stored["user_id"] == "mem2" and stored["message"] == "Amen"
    outsider = await refused(backend, "STREAM_START", {"channel": channel, "data": {"user_id": "nobody"}})
    assert outsider["code"] == "forbidden"
    got = [f["data"]["stream_id"] async for f in _created(reader, channel, 2)]
    assert got == [own, theirs]
    await reader.close()
    await backend.close()


async def _created(client: WsClient, channel: str, n: int):  # type: ignore[no-untyped-def]
    for _ in range(n):
        frame = await client.next("MESSAGE_CREATED", channel=channel)
        yield frame
