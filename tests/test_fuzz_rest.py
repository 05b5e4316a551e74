"""Property-based fuzz of every REST operation on a live server: hostile path segments, query
values, headers and JSON bodies (NaN, 1e309, integers past 64 bits, lone surrogates, depth,
size). Whatever arrives: never a 5xx, every refusal is `{"error": {code, message}}`, the
keep-alive connection is never dropped, nothing is logged as a failure, the server stays up."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz_strategies import FUZZ, MISSING, encode, field_values, hostile_values, payload, poisoned
from tests.helpers import API_KEY, ServerProcess
from tether.core.config import Settings
from tether.server.app import create_app
from tether.wire.errors import STATUS


def operations() -> list[tuple[str, str, list[str], list[str], list[str] | None]]:
    """(method, path, path params, query params, body fields or None) of every operation."""
    spec = create_app(Settings()).openapi()
    schemas = spec["components"]["schemas"]
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            params = op.get("parameters", [])
            schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            fields = None
            if schema is not None:
                ref = schema.get("$ref") or next((s["$ref"] for s in schema.get("anyOf", []) if "$ref" in s), None)
                fields = sorted(schemas[ref.rsplit("/", 1)[1]].get("properties", {})) if ref else []
            out.append((method.upper(), path, [p["name"] for p in params if p["in"] == "path"],
                        [p["name"] for p in params if p["in"] == "query"], fields))
    return out


OPERATIONS = operations()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("fuzzrest"), "--rate-per-user", "1000000",
                        "--rest-rate-per-user", "1000000", "--rest-rate-burst", "1000000").start()
    try:
        yield srv
    finally:
        srv.kill()


@pytest.fixture(scope="module")
def http(live: ServerProcess) -> Iterator[httpx.Client]:
    # One client, one keep-alive connection: a dropped connection shows up as a transport error.
    with httpx.Client(base_url=live.url, timeout=15, limits=httpx.Limits(max_connections=1)) as client:
        yield client


def segment(value: Any) -> str:
    if value is MISSING:
        return ""
    text = value if isinstance(value, str) else encode(value)
    return quote(text[:2000].encode("utf-8", "surrogatepass"), safe="")  # (the client refuses URLs past 64 KB)


headers = st.fixed_dictionaries({}, optional={
    "Authorization": st.sampled_from(["Bearer alice", "Bearer bob:phone", "Bearer server", "Bearer ../x", "Bearer",
                                      "Basic YTpi", "Bearer " + "a" * 200]),
    "X-API-Key": st.sampled_from([API_KEY, API_KEY, "wrong"]),
    "Idempotency-Key": st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=300),
    "If-Match": st.sampled_from(['"1"', "*", "W/\"x\"", "garbage", '"99999999999999999999999"']),
    "Content-Type": st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                     "application/json; charset=latin-1"]),
})


def body_for(fields: list[str] | None) -> st.SearchStrategy[str | None]:
    if fields is None:
        return st.one_of(st.none(), hostile_values.map(encode))
    if not fields:
        return st.one_of(st.none(), st.just("{}"), hostile_values.map(encode))
    return st.one_of(payload(fields).map(encode), payload(fields).map(encode), hostile_values.map(encode),
                     st.none(), st.sampled_from(["", "{", "[", '{"data": ' + "[" * 300 + "]" * 300 + "}"]))


@st.composite
def requests(draw: st.DrawFn, op: tuple[str, str, list[str], list[str], list[str] | None]) -> dict[str, Any]:
    method, path, in_path, in_query, fields = op
    for name in in_path:
        path = path.replace("{" + name + "}", segment(draw(field_values(name))))
    query = [f"{quote(name)}={segment(draw(field_values(name)))}" for name in in_query if draw(st.booleans())]
    body = draw(body_for(fields))
    return {"method": method, "url": path + ("?" + "&".join(query) if query else ""),
            "headers": draw(headers), "content": None if body is None else body.encode()}


def check(http: httpx.Client, request: dict[str, Any]) -> None:
    r = http.request(**request)  # a dropped keep-alive connection raises here
    assert r.status_code < 500, (request["method"], request["url"][:200], r.status_code, r.text[:300])
    content = request["content"]
    as_json = "json" in request["headers"].get("Content-Type", "json")
    if content and as_json and poisoned(content.decode()):  # never silently accepted (e.g. NaN stored as null)
        assert 400 <= r.status_code < 500, (request["url"][:200], content[:200], r.status_code, r.text[:300])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["code"] in STATUS and isinstance(error["message"], str), error


@pytest.mark.parametrize("op", OPERATIONS, ids=[f"{m} {p}" for m, p, *_ in OPERATIONS])
@settings(FUZZ, max_examples=25)
@given(data=st.data())
def test_every_operation(live: ServerProcess, http: httpx.Client, op: Any, data: st.DataObject) -> None:
    check(http, data.draw(requests(op)))


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_any_operation(live: ServerProcess, http: httpx.Client, data: st.DataObject) -> None:
    op = data.draw(st.sampled_from(OPERATIONS))
    check(http, data.draw(requests(op)))


def test_server_alive_and_quiet_after_the_fuzz(live: ServerProcess, http: httpx.Client) -> None:
    assert http.get("/healthz").status_code == 200
    assert http.post("/api/channels/public.after/publish", json={"data": 1},
                     headers={"Authorization": "Bearer alice"}).status_code == 200
    log = Path(live.log).read_text()
    assert "Traceback" not in log and " failed: " not in log, log[-3000:]
