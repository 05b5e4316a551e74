"""`tether serve` refuses a configuration that cannot work: one line, non-zero, nothing created; then a banner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, free_port
from tests.services import need_postgres, need_redis, unique, with_query

EMBEDDED = {"TETHER_DATABASE_URL": "", "TETHER_REDIS_URL": ""}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    return {**env, **extra}


def serve(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tether", "serve", *args], env=env or clean_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def drop_schema(url: str) -> None:
    import asyncio
    from urllib.parse import parse_qs, urlsplit

    import asyncpg

    schema = parse_qs(urlsplit(url).query)["schema"][0]

    async def drop() -> None:
        conn = await asyncpg.connect(url.split("?")[0])
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    out = (result.stdout + result.stderr).strip()
    assert result.returncode != 0, out
    assert "Traceback" not in out, out
    assert len(out.splitlines()) == 1, out
    assert out.startswith("refusing to start: "), out
    for word in words:
        assert word in out, out
    return out


@pytest.mark.parametrize("url, words", [
    ("mysql://root@localhost/db", ["mysql://", "postgresql://"]),
    ("sqlite:///tmp/x.db", ["sqlite://"]),
    ("localhost:5432", ["not supported"]),
])
def test_unknown_database_scheme_is_refused(tmp_path: Path, url: str, words: list[str]) -> None:
    data = tmp_path / "data"
    assert_refused(serve("--database-url", url, "--data-dir", str(data), "--port", str(free_port())), *words)
    assert not data.exists()  # it did not fall back to SQLite


@pytest.mark.parametrize("port", ["83845", "0", "-1", "65536"])
def test_port_outside_range_is_refused(tmp_path: Path, port: str) -> None:
    data = tmp_path / "data"
    assert_refused(serve("--port", port, "--data-dir", str(data)), "--port", "1-65535")
    assert not data.exists()


def test_data_dir_that_is_a_file_or_under_a_file_is_refused(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_refused(serve("--data-dir", str(afile), "--port", str(free_port())), "is a file")
    assert_refused(serve("--data-dir", str(afile / "sub"), "--port", str(free_port())), "is a file")
    assert afile.read_text() == "x"


def test_unusable_data_dir_is_refused(tmp_path: Path) -> None:
    assert_refused(serve("--data-dir", "/proc/tether-data", "--port", str(free_port())), "--data-dir")


def test_unreachable_postgres_and_redis_are_refused_with_password_masked(tmp_path: Path) -> None:
    data = tmp_path / "data"
    dead = free_port()
    out = assert_refused(serve("--database-url", f"postgresql://u:hunter2@127.0.0.1:{dead}/db", "--data-dir", str(data),
                               "--port", str(free_port())), "PostgreSQL", "--database-url")
    assert "hunter2" not in out and "u:****@" in out
    out = assert_refused(serve("--database-url", f"postgresql://u@127.0.0.1:{dead}/db?password=qpw", "--data-dir", str(data),
                               "--port", str(free_port())), "PostgreSQL", "--database-url")
    assert "qpw" not in out and "password=****" in out
    assert_refused(serve("--redis-url", f"redis://127.0.0.1:{dead}/0", "--data-dir", str(data),
                         "--port", str(free_port())), "Redis", "--redis-url")
    assert not data.exists()


@pytest.mark.parametrize("content, words", [
    ('{"pattern": "a.*"}', ["JSON list"]),
    ("not json", ["channels file"]),
    ('[{"pattern": "a.*", "subscribe": "everyone"}]', ["subscribe must be one of"]),
    ('[{"subscribe": "any"}]', ["pattern"]),
])
def test_bad_channels_file_is_refused(tmp_path: Path, content: str, words: list[str]) -> None:
    path, data = tmp_path / "channels.json", tmp_path / "data"
    path.write_text(content)
    assert_refused(serve("--channels-file", str(path), "--data-dir", str(data), "--port", str(free_port())), *words)
    assert_refused(serve("--channels-file", str(tmp_path / "missing.json"), "--data-dir", str(data),
                         "--port", str(free_port())), "missing.json")
    assert not data.exists()


def test_cors_star_needs_dev_auth(tmp_path: Path) -> None:
    secret = "s" * 40
    assert_refused(serve("--cors-origins", "*", "--auth", "jwt", "--jwt-secret", secret, "--data-dir", str(tmp_path / "d"),
                         "--port", str(free_port())), "--cors-origins")
    assert_refused(serve("--cors-origins", "app.example.com", "--data-dir", str(tmp_path / "d"),
                         "--port", str(free_port())), "scheme://host")


def test_second_node_on_a_served_data_dir_is_refused(server_factory, tmp_path: Path) -> None:
    first = server_factory(data_dir=tmp_path / "shared", env=EMBEDDED)
    out = assert_refused(serve("--data-dir", str(first.data_dir), "--port", str(free_port())), "already served")
    assert str(first.proc.pid) in out  # type: ignore[union-attr]
    # killed without a goodbye, the lock goes with the process: the data dir is free again
    first.kill()
    again = ServerProcess(first.data_dir, env=EMBEDDED)
    try:
        again.start()
    finally:
        again.kill()


def test_port_in_use_is_refused(server_factory, tmp_path: Path) -> None:
    first = server_factory()
    assert_refused(serve("--port", str(first.port), "--data-dir", str(tmp_path / "other")), "already in use")
    assert not (tmp_path / "other").exists()


def test_banner_says_version_auth_storage_broker_key_and_urls(tmp_path: Path) -> None:
    from tether import __version__

    pg, redis_url = with_query(need_postgres(), schema=unique("banner_")), need_redis()
    port = free_port()
    masked = with_query(pg.replace("postgres@", "postgres:hunter2@", 1), password="qpw-secret")  # trust: ignored
    proc = subprocess.Popen([sys.executable, "-m", "tether", "serve", "--port", str(port), "--data-dir", str(tmp_path / "d"),
                             "--database-url", masked, "--redis-url", redis_url, "--redis-prefix", f"banner{port}:"],
                            env=clean_env(TETHER_API_KEY="k", TETHER_LOG_LEVEL="warning"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "ws:" in line:
                break
        banner = "\n".join(lines)
    finally:
        proc.kill()
        proc.wait()
        drop_schema(pg)
    assert f"Tether {__version__}" in banner, banner
    assert "auth:     dev" in banner
    assert "PostgreSQL postgresql://postgres:****@" in banner and "hunter2" not in banner
    assert "password=****" in banner and "qpw-secret" not in banner
    assert "broker:   Redis redis://127.0.0.1:6379" in banner
    assert "API key:  set" in banner
    for url in (f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{port}/docs", f"ws://127.0.0.1:{port}/ws"):
        assert url in banner, banner


def test_postgresql_asyncpg_scheme_is_accepted(tmp_path: Path) -> None:
    pg = with_query(need_postgres(), schema=unique("asyncpg_"))
    try:
        out = subprocess.run([sys.executable, "-m", "tether", "migrate", "--database-url",
                              pg.replace("postgresql://", "postgresql+asyncpg://", 1)],
                             env=clean_env(), capture_output=True, text=True, timeout=60)
    finally:
        drop_schema(pg)
    assert out.returncode == 0, out.stderr
    assert "PostgreSQL postgresql://" in out.stdout


def test_migrate_on_an_empty_dir_says_what_it_created(tmp_path: Path) -> None:
    def migrate() -> str:
        out = subprocess.run([sys.executable, "-m", "tether", "migrate", "--data-dir", str(tmp_path / "d")],
                             env=clean_env(), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    first = migrate()
    assert "created" in first and "documents" in first and "sessions" in first, first
    second = migrate()
    assert "up to date" in second and "created" not in second, second


def test_data_dir_whose_database_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "tether.sqlite3").write_text("garbage\n")
    assert_refused(serve("--data-dir", str(garbage), "--port", str(free_port())), "not an SQLite database")
    assert (garbage / "tether.sqlite3").read_text() == "garbage\n"
    adir = tmp_path / "adir"
    (adir / "tether.sqlite3").mkdir(parents=True)
    assert_refused(serve("--data-dir", str(adir), "--port", str(free_port())), "tether.sqlite3 is not a file")


def test_a_start_that_fails_after_the_checks_exits_non_zero(tmp_path: Path) -> None:
    """Whatever fails while the node starts, the process ends (no thread of a half-opened database keeps it)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "tether.sqlite3").write_text("garbage\n")
    skip_check = ("import tether.server.preflight as p; p.check_database_file = lambda d: None; "
                  "from tether.cli import main; main()")
    out = subprocess.run([sys.executable, "-c", skip_check, "serve", "--data-dir", str(data), "--port", str(free_port())],
                         env=clean_env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 3, out.stderr[-2000:]
    assert "Application startup failed" in out.stderr


def test_jwt_public_key_that_does_not_load_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    for key, words in [(str(tmp_path / "missing.pem"), ["missing.pem", "neither PEM text nor a file"]),
                       (str(garbage), ["garbage.pem", "not a PEM public key"]),
                       ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", ["not a PEM public key"])]:
        assert_refused(serve("--auth", "jwt", "--jwt-public-key", key, "--data-dir", str(data),
                             "--port", str(free_port())), "--jwt-public-key", *words)
    assert not data.exists()


def test_jwt_secret_and_public_key_together_are_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert_refused(serve("--jwt-secret", "s" * 40, "--jwt-public-key", pem, "--data-dir", str(tmp_path / "d"),
                         "--port", str(free_port())), "TETHER_JWT_SECRET", "TETHER_JWT_PUBLIC_KEY", "pick one")


@pytest.mark.parametrize("entry, words", [
    ("https://*.example.com", ["wildcard"]),
    ("ftp://app.example.com", ["http"]),
    ("https://user@app.example.com", ["user info"]),
    ("https://app.example.com/app", ["path"]),
])
def test_cors_origin_that_can_never_match_is_refused(tmp_path: Path, entry: str, words: list[str]) -> None:
    assert_refused(serve("--cors-origins", f"https://ok.example.com,{entry}", "--data-dir", str(tmp_path / "d"),
                         "--port", str(free_port())), "--cors-origins", entry, *words)


@pytest.mark.parametrize("flag, value", [
    ("--ping-interval", "0"), ("--presence-ttl", "-5"), ("--max-frame-bytes", "0"), ("--history-size", "-1"),
    ("--max-subscriptions", "0"), ("--rate-per-connection", "0"), ("--rate-burst", "0"), ("--rate-per-user", "-1"),
    ("--send-queue-frames", "0"), ("--max-body-bytes", "0"), ("--rest-rate-per-user", "0"), ("--rest-rate-burst", "0"),
    ("--max-streams-per-user", "0"), ("--history-ttl", "0"), ("--history-sweep", "0"), ("--idempotency-ttl", "0"),
    ("--device-ttl", "0"), ("--retain-ended", "-1"), ("--stream-timeout", "0"), ("--presence-ttl", "nan"),
])
def test_numeric_setting_that_cannot_work_is_refused(tmp_path: Path, flag: str, value: str) -> None:
    data = tmp_path / "data"
    assert_refused(serve(flag, value, "--data-dir", str(data), "--port", str(free_port())), flag, value)
    env = clean_env(**{"TETHER_" + flag[2:].upper().replace("-", "_"): value})
    assert_refused(serve("--data-dir", str(data), "--port", str(free_port()), env=env), flag)
    assert not data.exists()


def test_every_numeric_setting_has_a_minimum() -> None:
    from dataclasses import fields

    from tether.core.config import MINIMUMS, Settings

    numeric = {f.name for f in fields(Settings) if f.type in ("int", "float")} - {"port"}
    assert numeric == set(MINIMUMS)


@pytest.mark.parametrize("entry, words", [
    ('{"pattern": "a.*", "history_size": -1}', ["history_size"]),
    ('{"pattern": "a.*", "history_ttl": 0}', ["history_ttl"]),
    ('{"pattern": "a.*", "history_size": "10"}', ["history_size"]),
])
def test_channels_file_numbers_that_cannot_work_are_refused(tmp_path: Path, entry: str, words: list[str]) -> None:
    path = tmp_path / "channels.json"
    path.write_text(f"[{entry}]")
    assert_refused(serve("--channels-file", str(path), "--data-dir", str(tmp_path / "d"), "--port", str(free_port())),
                   *words)


def test_migrate_refusal_says_it_cannot_migrate(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "tether.sqlite3").write_text("garbage\n")
    out = subprocess.run([sys.executable, "-m", "tether", "migrate", "--data-dir", str(data)],
                         env=clean_env(), capture_output=True, text=True, timeout=60)
    text = (out.stdout + out.stderr).strip()
    assert out.returncode != 0 and len(text.splitlines()) == 1, text
    assert text.startswith("cannot migrate: ") and "refusing to start" not in text and "not an SQLite" in text, text
