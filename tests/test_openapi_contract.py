"""What /openapi.json and /docs promise: credentials, error bodies, parameter formats, offline docs."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.helpers import API_KEY

ERROR_REF = {"$ref": "#/components/schemas/Error"}


@pytest.fixture(scope="module")
def spec(shared_server) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return httpx.get(shared_server.url + "/openapi.json").json()  # type: ignore[no-any-return]


def api_operations(spec: dict):  # type: ignore[no-untyped-def,type-arg]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if path.startswith("/api/"):
                yield path, method, op


def test_security_schemes_declared_and_required(spec) -> None:  # type: ignore[no-untyped-def]
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path, method, op in api_operations(spec):
        assert op["security"] == [{"bearer": []}, {"apiKey": []}], (method, path)


def test_every_api_operation_documents_its_errors_with_the_error_body(spec) -> None:  # type: ignore[no-untyped-def]
    error = spec["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["code", "message"]
    for path, method, op in api_operations(spec):
        for status in ("400", "401", "403", "404", "409", "422", "429"):
            assert op["responses"][status]["content"]["application/json"]["schema"] == ERROR_REF, (method, path, status)
        has_if_match = any(p["name"].lower() == "if-match" for p in op.get("parameters", []))
        assert ("412" in op["responses"]) == has_if_match, (method, path)
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_path_and_query_parameters_carry_the_enforced_formats(spec) -> None:  # type: ignore[no-untyped-def]
    patterns = {}
    for path, method, op in api_operations(spec):
        for p in op.get("parameters", []):
            patterns[(path, method, p["name"])] = p["schema"]
            assert "anyOf" not in p["schema"] or p["in"] == "path", (path, p)  # optional means absent, not null
    assert patterns[("/api/presence/{key}", "post", "key")]["pattern"]
    assert patterns[("/api/locks/{key}", "get", "key")]["pattern"]
    assert patterns[("/api/channels/{channel}/publish", "post", "channel")]["pattern"]
    assert patterns[("/api/users/{user_id}/devices", "get", "user_id")]["pattern"]
    assert patterns[("/api/streams/{stream_id}", "get", "stream_id")]["pattern"]
    limit = patterns[("/api/sessions", "get", "limit")]
    assert (limit["minimum"], limit["maximum"]) == (1, 100)
    limit = patterns[("/api/sessions/{session_id}/messages", "get", "limit")]
    assert (limit["minimum"], limit["maximum"]) == (1, 200)


async def test_documented_path_patterns_are_the_ones_the_server_enforces(shared_server, spec) -> None:  # type: ignore[no-untyped-def]
    key = spec["paths"]["/api/locks/{key}"]["get"]["parameters"][0]["schema"]["pattern"]
    async with shared_server.http("alice") as http:
        for value, ok in (("doc-1", True), ("a:b.c=d", True), ("bad key!", False), ("é", False)):
            assert bool(re.match(key, value)) == ok
            r = await http.get(f"/api/locks/{value}")
            assert (r.status_code == 200) == ok, (value, r.text)


def test_every_path_parameter_and_idempotency_key_is_bounded(spec) -> None:  # type: ignore[no-untyped-def]
    """What the server refuses, the document says: a pattern on every path parameter, 1-200 on Idempotency-Key."""
    keys = 0
    for path, method, op in api_operations(spec):
        for p in op.get("parameters", []):
            if p["in"] == "path":
                assert re.search(r"\{1,\d+\}\$$", p["schema"].get("pattern", "")), (method, path, p)
            if p["in"] == "header" and p["name"].lower() == "idempotency-key":
                keys += 1
                assert (p["schema"]["minLength"], p["schema"]["maxLength"]) == (1, 200), (method, path)
    assert keys >= 10


async def test_an_overlong_id_is_refused_and_not_echoed_in_full(shared_server) -> None:
    async with shared_server.http("alice") as http:
        r = await http.get("/api/sessions/" + "x" * 5000)
        assert r.status_code == 400 and r.json()["error"]["field"] == "session_id", r.text
        assert len(r.text) < 400 and "5000 characters" in r.text, r.text
        for path in ("/api/sessions/" + "y" * 128, "/api/sessions/" + "y" * 128 + "/notes",
                     "/api/streams/" + "z" * 128, "/api/collections/c/documents/" + "d" * 128):
            r = await http.get(path)
            assert r.status_code == 404 and len(r.json()["error"]["message"]) < 150, (path, r.text)
        r = await http.post("/api/channels/public.idem/publish", json={"data": 1}, headers={"Idempotency-Key": "k" * 201})
        assert r.status_code == 400 and "1-200" in r.text, r.text


def test_metrics_content_type_documented(spec) -> None:  # type: ignore[no-untyped-def]
    assert "text/plain; version=0.0.4" in spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


async def test_docs_page_needs_no_network(shared_server) -> None:
    async with httpx.AsyncClient(base_url=shared_server.url) as http:
        page = (await http.get("/docs")).text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)""", page) + re.findall(r"url: '([^']+)'", page)
        assert urls and all(u.startswith("/") for u in urls), urls
        for url in urls:
            r = await http.get(url)
            assert r.status_code == 200, url
        assert "SwaggerUIBundle" in (await http.get("/docs/assets/swagger-ui-bundle.js")).text[:200000]


async def test_method_not_allowed_lists_every_method_of_the_path(shared_server) -> None:
    async with shared_server.http("alice") as http:
        r = await http.request("OPTIONS", "/api/locks/doc1")
        assert r.status_code == 405
        assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST", "DELETE"}
        assert r.json()["error"]["code"] == "bad_request"


async def test_whole_numbers_sent_as_doubles_are_integers(shared_server) -> None:
    """Swift's JSONEncoder writes a Double 30 as 30.0: an integer field takes it, and refuses "30" and 30.5."""
    async with shared_server.http("alice") as http:
        r = await http.post("/api/locks/double-ttl", json={"ttl_seconds": 30.0})
        assert r.status_code == 200 and r.json()["acquired"], r.text
        for bad in ("30", 30.5, True):
            r = await http.post("/api/locks/double-ttl-2", json={"ttl_seconds": bad})
            assert r.status_code == 422, (bad, r.text)


async def test_malformed_if_match_is_a_bad_request_not_a_mismatch(shared_server) -> None:
    async with shared_server.http("alice") as http:
        r = await http.post("/api/collections/notes/documents", json={"id": "im1", "data": {}})
        assert r.status_code == 201, r.text
        for header in ("", "null", '"x"'):
            r = await http.put("/api/collections/notes/documents/im1", json={"data": {}}, headers={"If-Match": header})
            assert r.status_code == 400 and "If-Match" in r.json()["error"]["message"], (header, r.text)
        r = await http.put("/api/collections/notes/documents/im1", json={"data": {}}, headers={"If-Match": '"7"'})
        assert r.status_code == 412


async def test_integers_beyond_64_bits_are_not_a_server_error(shared_server) -> None:
    """Refused by name with 422 (the documented JsonValue bound), never a 5xx."""
    big = 9076736714660974664786257117184
    async with shared_server.http(api_key=True) as http:
        r = await http.post("/api/users/bob/events", json={"type": "BIG", "data": {"n": big}})
        assert r.status_code == 422 and r.json()["error"]["field"] == "body.data.n", r.text
        r = await http.post("/api/collections/notes/documents", json={"id": "big1", "data": {"n": big}, "owner": "bob"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "body.data.n", r.text
        spec = (await http.get("/openapi.json")).json()
        bounded = spec["components"]["schemas"]["JsonValue"]["anyOf"]
        assert {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1} in bounded
    assert API_KEY
