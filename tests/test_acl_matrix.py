"""The access-control matrix: every feature × operation × caller, over REST and WebSocket,
live events and recovery included, then a leak scan.

Callers: the owner of the resources, a member (shared document, session participant),
another user, an ``admin``-role token, the API key, no credentials, and a forged token
whose ``sub`` is the API key's identity (``server``). Every write carries a marker naming
its class of secret (``LEAK-doc-…``, ``LEAK-session-…``, …); at the end, every body and
every frame each caller received is scanned, and a marker found where its class is not
allowed to be seen fails the test, whichever operation let it through.

One JWT (HS256) server started by the test; deterministic (fixed names, no randomness in
what is asserted), a few hundred requests.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pytest
import websockets

from tests.helpers import API_KEY, ServerProcess, WsClient
from tether.core.auth import mint
from tether.wire.jsonutil import dumps

SECRET = "acl-matrix-secret-" + "k" * 32
ROLES = ("owner", "member", "other", "admin", "api", "anon", "forged")
USERS = {"owner": "olive", "member": "mel", "other": "otto", "admin": "ada"}
RUN = uuid.uuid4().hex[:8]  # keeps names apart between runs on one machine; nothing asserted depends on it
C = f"acl{RUN}"  # the collection
D = "shared"  # owner's document, shared with the member (access: members)

# Who may see each class of secret (the leak scan).
ALLOWED = {
    "doc": {"owner", "member", "api"},  # the shared document's data
    "session": {"owner", "member", "api"},  # the private session: title, chat, presence state
    "user": {"owner", "api"},  # the owner's own channel: publishes, pushed events, streams
    "admin": {"admin", "api"},  # the admin channel
    "lock": {"owner"},  # the owner's lock token (filled in at run time)
}
MARK = re.compile(r"LEAK-([a-z]+)-")

OK, FORBIDDEN, NOT_FOUND, UNAUTHORIZED, BAD = "ok", "forbidden", "not_found", "unauthorized", "bad_request"
STATUS = {OK: range(200, 300), FORBIDDEN: [403], NOT_FOUND: [404], UNAUTHORIZED: [401], BAD: [400, 422]}


def marker(cls: str, where: str) -> str:
    return f"LEAK-{cls}-{where}"


def expect(owner: str, member: str, other: str, admin: str, api: str) -> dict[str, str]:
    return {"owner": owner, "member": member, "other": other, "admin": admin, "api": api,
            "anon": UNAUTHORIZED, "forged": UNAUTHORIZED}


READERS = expect(OK, OK, NOT_FOUND, NOT_FOUND, OK)  # what a private resource says to outsiders: 404
MANAGERS = expect(OK, FORBIDDEN, NOT_FOUND, NOT_FOUND, OK)
ANYONE = expect(OK, OK, OK, OK, OK)
SELF_OR_API = expect(OK, FORBIDDEN, FORBIDDEN, FORBIDDEN, OK)
API_ONLY = expect(FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, OK)
ADMINS = expect(FORBIDDEN, FORBIDDEN, FORBIDDEN, OK, OK)


@dataclass
class Case:
    feature: str
    op: str
    expected: dict[str, str]
    rest: Callable[[str], tuple[str, str, Any]] | None = None  # role -> (method, path, json body)
    ws: Callable[[str], tuple[str, dict[str, Any]]] | None = None  # role -> (frame type, data)


@dataclass
class World:
    srv: ServerProcess
    sid: str = ""  # the private session (owner hosts, member takes part)
    lock_token: str = ""
    stream_id: str = ""
    epochs: dict[str, str] = field(default_factory=dict)
    seen: dict[str, list[str]] = field(default_factory=lambda: {r: [] for r in ROLES})
    results: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)  # feature, op, role, transport, expected, got
    ws: dict[str, WsClient] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)  # per-role sessions to leave and to end
    ops: dict[str, WsClient] = field(default_factory=dict)  # per caller, for requests
    refusals: dict[str, int] = field(default_factory=lambda: {r: 0 for r in ROLES})
    closed: list[WsClient] = field(default_factory=list)

    def token(self, role: str) -> str | None:
        if role == "forged":
            return mint(SECRET, "server", ttl=600)
        if role in USERS:
            return mint(SECRET, USERS[role], ttl=600, roles=["admin"] if role == "admin" else [])
        return None

    def headers(self, role: str) -> dict[str, str]:
        if role == "api":
            return {"X-API-Key": API_KEY}
        token = self.token(role)
        return {"Authorization": f"Bearer {token}"} if token else {}


class Tap:
    """The WebSocket as WsClient sees it, recording every frame text for the leak scan."""

    def __init__(self, ws: Any, seen: list[str]) -> None:
        self._ws, self._seen = ws, seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    def __aiter__(self) -> Any:
        return self._frames()

    async def _frames(self) -> Any:
        async for raw in self._ws:
            self._seen.append(raw if isinstance(raw, str) else raw.decode())
            yield raw


async def open_ws(w: World, role: str) -> WsClient:
    ws = await websockets.connect(f"ws://127.0.0.1:{w.srv.port}/ws", additional_headers=w.headers(role), max_size=None)
    client = WsClient(Tap(ws, w.seen[role]))
    first = await client.next(timeout=10)
    assert first["type"] == "CONNECTED", (role, first)
    return client


async def refused_ws(w: World, role: str) -> str:
    ws = await websockets.connect(f"ws://127.0.0.1:{w.srv.port}/ws", additional_headers=w.headers(role))
    try:
        raw = await asyncio.wait_for(ws.recv(), 10)
        w.seen[role].append(str(raw))
        return OK
    except websockets.ConnectionClosed as exc:
        return UNAUTHORIZED if exc.rcvd is not None and exc.rcvd.code == 4001 else f"closed {exc.rcvd}"
    finally:
        await ws.close()


def outcome_of_status(status: int) -> str:
    for name, codes in STATUS.items():
        if status in codes:
            return name
    return f"http {status}"


# -- the cases ----------------------------------------------------------------------------------

def cases(w: World) -> list[Case]:
    sid = w.sid
    doc = f"/api/collections/{C}/documents"

    def acting(role: str, body: dict[str, Any], as_user: str = "olive") -> dict[str, Any]:
        return {**body, "user_id": as_user} if role == "api" else body  # the API key acts for a user

    return [
        # documents
        Case("documents", "get", READERS, rest=lambda r: ("GET", f"{doc}/{D}", None),
             ws=lambda r: ("DOCUMENT_GET", {"collection": C, "id": D})),
        Case("documents", "list", ANYONE, rest=lambda r: ("GET", doc, None),
             ws=lambda r: ("DOCUMENT_LIST", {"collection": C})),
        Case("documents", "replace", READERS,
             rest=lambda r: ("PUT", f"{doc}/{D}", {"data": {"m": marker("doc", f"put-{r}")}}),
             ws=lambda r: ("DOCUMENT_UPDATE", {"collection": C, "id": D, "data": {"m": marker("doc", f"wsput-{r}")}})),
        Case("documents", "patch", READERS,
             rest=lambda r: ("PATCH", f"{doc}/{D}", {"data": {"p": marker("doc", f"patch-{r}")}}),
             ws=lambda r: ("DOCUMENT_PATCH", {"collection": C, "id": D, "data": {"p": marker("doc", f"wspatch-{r}")}})),
        Case("documents", "share", MANAGERS,
             rest=lambda r: ("PATCH", f"{doc}/{D}", {"members": ["mel", f"z-rest-{r}"]}),
             ws=lambda r: ("DOCUMENT_PATCH", {"collection": C, "id": D, "members": ["mel", f"z-ws-{r}"]})),
        Case("documents", "give away", expect(FORBIDDEN, FORBIDDEN, NOT_FOUND, NOT_FOUND, OK),
             rest=lambda r: ("PATCH", f"{doc}/give-rest-{r}", {"owner": "mel"}),
             ws=lambda r: ("DOCUMENT_PATCH", {"collection": C, "id": f"give-ws-{r}", "owner": "mel"})),
        Case("documents", "create for another owner", expect(OK, FORBIDDEN, FORBIDDEN, FORBIDDEN, OK),
             rest=lambda r: ("POST", doc, {"id": f"planted-rest-{r}", "owner": "olive", "access": "members",
                                           "members": [USERS.get(r, "x")], "data": {}}),
             ws=lambda r: ("DOCUMENT_CREATE", {"collection": C, "id": f"planted-ws-{r}", "owner": "olive",
                                               "access": "members", "members": [USERS.get(r, "x")], "data": {}})),
        Case("documents", "delete", expect(OK, FORBIDDEN, NOT_FOUND, NOT_FOUND, OK),
             rest=lambda r: ("DELETE", f"{doc}/del-rest-{r}", None),
             ws=lambda r: ("DOCUMENT_DELETE", {"collection": C, "id": f"del-ws-{r}"})),
        # live sessions (a private one: outsiders get 404, as if it did not exist)
        Case("sessions", "get", READERS, rest=lambda r: ("GET", f"/api/sessions/{sid}", None),
             ws=lambda r: ("SESSION_GET", {"session_id": sid})),
        Case("sessions", "browse", ANYONE, rest=lambda r: ("GET", "/api/sessions", None),
             ws=lambda r: ("SESSION_LIST", {})),
        Case("sessions", "participants", READERS, rest=lambda r: ("GET", f"/api/sessions/{sid}/participants", None),
             ws=lambda r: ("SESSION_PARTICIPANTS", {"session_id": sid})),
        Case("sessions", "read chat", READERS, rest=lambda r: ("GET", f"/api/sessions/{sid}/messages", None),
             ws=lambda r: ("SESSION_MESSAGES", {"session_id": sid})),
        Case("sessions", "post", READERS,
             rest=lambda r: ("POST", f"/api/sessions/{sid}/messages", acting(r, {"message": marker("session", f"msg-{r}")})),
             ws=lambda r: ("SESSION_MESSAGE", {"session_id": sid, **acting(r, {"message": marker("session", f"wsmsg-{r}")})})),
        Case("sessions", "post as another user", expect(FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, OK),
             rest=lambda r: ("POST", f"/api/sessions/{sid}/messages", {"message": marker("session", f"as-{r}"),
                                                                       "user_id": "mel" if r != "member" else "olive"})),
        Case("sessions", "edit", MANAGERS,
             rest=lambda r: ("PATCH", f"/api/sessions/{sid}", {"title": marker("session", f"title-{r}")}),
             ws=lambda r: ("SESSION_UPDATE", {"session_id": sid, "title": marker("session", f"wstitle-{r}")})),
        Case("sessions", "invite", MANAGERS,
             rest=lambda r: ("POST", f"/api/sessions/{sid}/invite", {"user_id": "mel"}),
             ws=lambda r: ("SESSION_INVITE", {"session_id": sid, "user_id": "mel"})),
        Case("sessions", "join", READERS,
             rest=lambda r: ("POST", f"/api/sessions/{sid}/join", acting(r, {}, "mel")),
             ws=lambda r: ("SESSION_JOIN", {"session_id": sid, **acting(r, {}, "mel")})),
        Case("sessions", "leave", READERS,
             rest=lambda r: ("POST", f"/api/sessions/{w.extra['leave-rest-' + r]}/leave", acting(r, {}, "mel")),
             ws=lambda r: ("SESSION_LEAVE", {"session_id": w.extra["leave-ws-" + r], **acting(r, {}, "mel")})),
        Case("sessions", "end", MANAGERS,
             rest=lambda r: ("DELETE", f"/api/sessions/{w.extra['end-rest-' + r]}", None),
             ws=lambda r: ("SESSION_END", {"session_id": w.extra["end-ws-" + r]})),
        # presence of a key that is the private session's channel: its readers only
        Case("presence", "heartbeat", READERS,
             rest=lambda r: ("POST", f"/api/presence/sessions.{sid}", {"user_id": USERS.get(r, "olive"),
                                                                         "state": {"s": marker("session", f"hb-{r}")}})),
        Case("presence", "heartbeat for another user", expect(FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, OK),
             rest=lambda r: ("POST", "/api/presence/lobby", {"user_id": "mel" if r != "member" else "olive"})),
        Case("presence", "list", READERS, rest=lambda r: ("GET", f"/api/presence/sessions.{sid}?states=true", None)),
        Case("presence", "leave", READERS,
             rest=lambda r: ("DELETE", f"/api/presence/sessions.{sid}/{USERS.get(r, 'olive')}", None)),
        # locks: anyone signed in may lock or look; only the token releases
        Case("locks", "status", ANYONE, rest=lambda r: ("GET", "/api/locks/acl-lock", None),
             ws=lambda r: ("LOCK_STATUS", {"key": "acl-lock"})),
        Case("locks", "acquire held", ANYONE, rest=lambda r: ("POST", "/api/locks/acl-lock", {"ttl_seconds": 600}),
             ws=lambda r: ("LOCK_ACQUIRE", {"key": "acl-lock", "ttl_seconds": 600})),
        Case("locks", "release without the token", ANYONE,
             rest=lambda r: ("DELETE", "/api/locks/acl-lock", {"token": "guess"}),
             ws=lambda r: ("LOCK_RELEASE", {"key": "acl-lock", "token": "guess"})),
        # channels
        Case("channels", "publish users.{owner}", SELF_OR_API,
             rest=lambda r: ("POST", "/api/channels/users.olive/publish", {"data": {"m": marker("user", f"pub-{r}")}}),
             ws=lambda r: ("PUBLISH", {"channel": "users.olive", "data": {"m": marker("user", f"wspub-{r}")}})),
        Case("channels", "publish admin", ADMINS,
             rest=lambda r: ("POST", "/api/channels/admin/publish", {"data": {"m": marker("admin", f"pub-{r}")}}),
             ws=lambda r: ("PUBLISH", {"channel": "admin", "data": {"m": marker("admin", f"wspub-{r}")}})),
        Case("channels", "publish public", ANYONE,
             rest=lambda r: ("POST", f"/api/channels/public.{C}/publish", {"data": {"n": r}}),
             ws=lambda r: ("PUBLISH", {"channel": f"public.{C}", "data": {"n": r}})),
        Case("channels", "publish a domain event type (a user's goes out as PUBLICATION)", ANYONE,
             rest=lambda r: ("POST", f"/api/channels/public.{C}/publish", {"type": "SESSION_ENDED", "data": {}})),
        Case("channels", "publish a protocol frame type (a user's goes out as PUBLICATION)", expect(OK, OK, OK, OK, BAD),
             rest=lambda r: ("POST", f"/api/channels/public.{C}/publish", {"type": "CONNECTED", "data": {}})),
        # server-pushed events, devices, streams
        Case("events", "push", API_ONLY,
             rest=lambda r: ("POST", "/api/users/olive/events", {"type": "CREDIT_UPDATE", "data": {"m": marker("user", f"push-{r}")}})),
        Case("devices", "list", SELF_OR_API, rest=lambda r: ("GET", "/api/users/olive/devices", None)),
        Case("streams", "read", SELF_OR_API, rest=lambda r: ("GET", f"/api/streams/{w.stream_id}", None)),
    ]


def channels(w: World) -> dict[str, dict[str, str]]:
    """Every channel the scenario writes to, and who may subscribe (live and with ``since``)."""
    sess = expect(OK, OK, NOT_FOUND, NOT_FOUND, OK)
    return {
        f"collections.{C}.documents.{D}": expect(OK, OK, FORBIDDEN, FORBIDDEN, OK),
        f"collections.{C}.users.olive": SELF_OR_API,
        f"collections.{C}.users.mel": expect(FORBIDDEN, OK, FORBIDDEN, FORBIDDEN, OK),
        f"collections.{C}": ANYONE,
        f"sessions.{w.sid}": sess,
        f"presence.sessions.{w.sid}": sess,
        "sessions": ANYONE,
        "users.olive": SELF_OR_API,
        "admin": ADMINS,
        f"public.{C}": ANYONE,
    }


# -- running them ---------------------------------------------------------------------------------

async def run_rest(w: World, http: Any, case: Case, role: str) -> None:
    assert case.rest is not None
    method, path, body = case.rest(role)
    r = await http.request(method, path, headers=w.headers(role), **({} if body is None else {"json": body}))
    w.seen[role].append(r.text)
    assert r.status_code < 500, (case.op, role, r.status_code, r.text)
    w.results.append((case.feature, case.op, role, "rest", case.expected[role], outcome_of_status(r.status_code)))


async def run_ws(w: World, case: Case, role: str) -> None:
    assert case.ws is not None
    if role in ("anon", "forged"):
        got = await refused_ws(w, role)
    else:
        type, data = case.ws(role)
        client = await ops_ws(w, role)
        reply = await client.frame(type, data)
        w.seen[role].append(dumps(reply))
        got = OK if reply["type"] == "ACK" else reply["data"]["code"]
        w.refusals[role] += got != OK
    w.results.append((case.feature, case.op, role, "ws", case.expected[role], got))


async def ops_ws(w: World, role: str) -> WsClient:
    """The connection a caller's requests go on; a new one before 20 refusals in 10 s close it
    as abusive (the live subscriptions stay on their own connection)."""
    client = w.ops.get(role)
    if client is None or w.refusals[role] >= 15:
        if client is not None:
            w.closed.append(client)
        client = w.ops[role] = await open_ws(w, role)
        w.refusals[role] = 0
    return client


async def subscribe_all(w: World, clients: dict[str, WsClient], transport: str, since: bool) -> None:
    for channel, expected in channels(w).items():
        for role in ROLES:
            if role in ("anon", "forged"):
                got = await refused_ws(w, role)
            else:
                data: dict[str, Any] = {"channel": channel}
                if since:
                    data["since"] = {"offset": 0, "epoch": w.epochs.get(channel, "none")}
                if channel.startswith("sessions.") and not since:
                    data.update(presence=True, state={"s": marker("session", f"state-{role}")})
                reply = await clients[role].frame("SUBSCRIBE", data)
                got = OK if reply["type"] == "ACK" else reply["data"]["code"]
                if got == OK and role == "api":
                    w.epochs[channel] = reply["data"]["epoch"]
            w.results.append(("channels", f"subscribe {channel.replace(w.sid, '{sid}')}", role, transport, expected[role], got))


async def setup(w: World, http: Any) -> None:
    async def call(role: str, method: str, path: str, body: Any = None) -> Any:
        r = await http.request(method, path, headers=w.headers(role), **({} if body is None else {"json": body}))
        assert r.status_code < 300, (method, path, r.status_code, r.text)
        w.seen[role].append(r.text)
        return r.json()

    doc = f"/api/collections/{C}/documents"
    await call("owner", "POST", doc, {"id": D, "access": "members", "members": ["mel"], "data": {"m": marker("doc", "seed")}})
    for t in ("rest", "ws"):
        for role in ROLES:
            for prefix in ("del", "give"):
                await call("owner", "POST", doc, {"id": f"{prefix}-{t}-{role}", "access": "members", "members": ["mel"],
                                                  "data": {"m": marker("doc", f"{prefix}-{t}-{role}")}})
    w.sid = (await call("owner", "POST", "/api/sessions",
                        {"title": marker("session", "title"), "is_private": True}))["id"]
    await call("owner", "POST", f"/api/sessions/{w.sid}/invite", {"user_id": "mel"})
    await call("member", "POST", f"/api/sessions/{w.sid}/join")
    for t in ("rest", "ws"):
        for role in ROLES:
            for kind in ("leave", "end"):
                s = await call("owner", "POST", "/api/sessions", {"title": marker("session", f"{kind}-{t}-{role}"),
                                                                  "is_private": True})
                await call("owner", "POST", f"/api/sessions/{s['id']}/invite", {"user_id": "mel"})
                await call("member", "POST", f"/api/sessions/{s['id']}/join")
                w.extra[f"{kind}-{t}-{role}"] = s["id"]
    w.lock_token = (await call("owner", "POST", "/api/locks/acl-lock", {"ttl_seconds": 600}))["token"]
    owner = w.ws["owner"]
    started = await owner.request("STREAM_START", {"channel": "users.olive"})
    w.stream_id = started["stream_id"]
    await owner.request("STREAM_DELTA", {"stream_id": w.stream_id, "delta": marker("user", "stream")})


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("acl"), "--auth", "jwt", env={"TETHER_JWT_SECRET": SECRET}).start()
    yield srv
    srv.kill()


async def test_acl_matrix(jwt_server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    import httpx

    w = World(jwt_server)
    for role in ROLES:
        if role not in ("anon", "forged"):
            w.ws[role] = await open_ws(w, role)
    async with httpx.AsyncClient(base_url=jwt_server.url, timeout=20) as http:
        await setup(w, http)
        # Live: every caller tries to follow every channel before anything is written.
        await subscribe_all(w, w.ws, "ws", since=False)
        for case in cases(w):
            for role in ROLES:
                if case.rest is not None:
                    await run_rest(w, http, case, role)
                if case.ws is not None:
                    await run_ws(w, case, role)
        await settle(w)
        # Recovery: fresh connections replay every channel from offset 0.
        fresh = {role: await open_ws(w, role) for role in w.ws}
        await subscribe_all(w, fresh, "ws recovery", since=True)
        for client in [*w.ws.values(), *fresh.values(), *w.ops.values(), *w.closed]:
            await client.close()

    wrong = [r for r in w.results if r[4] != r[5]]
    leaks = scan(w)
    features = sorted({r[0] for r in w.results})
    with capsys.disabled():
        print(f"\nACL matrix: {len(w.results)} cases ({len(features)} features: {', '.join(features)}; "
              f"{len({(r[0], r[1]) for r in w.results})} operations x {len(ROLES)} callers x REST/WS/recovery), "
              f"{sum(len(v) for v in w.seen.values())} bodies and frames scanned, {len(wrong)} wrong, {len(leaks)} leaks")
    assert not wrong, "\n".join(f"{f} {op} as {role} over {t}: expected {e}, got {g}" for f, op, role, t, e, g in wrong)
    assert not leaks, "\n".join(leaks[:20])
    assert len(w.results) >= 400
    # The scan has teeth: whoever may see a class of secret did see it (live and replayed too).
    for cls, roles in ALLOWED.items():
        for role in roles:
            needle = w.lock_token if cls == "lock" else f"LEAK-{cls}-"
            assert any(needle in t for t in w.seen[role]), (cls, role)
    live = [t for t in w.seen["member"] if '"offset"' in t and "LEAK-doc-" in t]
    assert live, "the member received no live or replayed event of the shared document"


async def settle(w: World) -> None:
    """Wait until every live connection has received everything published so far. Every case
    was answered after its events were queued to their subscribers, and a connection sends
    its frames in the order they were queued: a sentinel published now on a caller's own
    channel arrives after all of them, and a last round trip after that."""
    for role, client in w.ws.items():
        own = f"users.{USERS.get(role, 'server')}"
        await client.request("PUBLISH", {"channel": own, "data": {"sentinel": True}})
        while True:
            f = await client.next("PUBLICATION", channel=own, timeout=20)
            if f["data"] == {"sentinel": True}:
                break
    for client in [*w.ws.values(), *w.ops.values()]:
        await client.request("LOCK_STATUS", {"key": "acl-lock"})


def scan(w: World) -> list[str]:
    leaks = []
    for role, texts in w.seen.items():
        for text in texts:
            for m in MARK.finditer(text):
                if role not in ALLOWED[m.group(1)]:
                    leaks.append(f"{role} saw a {m.group(1)} secret: …{text[max(0, m.start() - 150):m.end() + 60]}…")
            if w.lock_token and w.lock_token in text and role not in ALLOWED["lock"]:
                leaks.append(f"{role} saw the owner's lock token: {text[:300]}")
    return leaks
