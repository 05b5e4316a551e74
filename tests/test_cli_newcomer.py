"""The command line as a newcomer meets it: tail, publish, token, --help, against real servers."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import httpx
import pytest

from tests.helpers import API_KEY

SECRET = "cli-test-secret-0123456789abcdefghij"


def tether(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    return subprocess.run([sys.executable, "-m", "tether", *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def publish_events(url: str, channel: str, n: int) -> str:
    epoch = ""
    for i in range(n):
        r = httpx.post(f"{url}/api/channels/{channel}/publish", json={"data": {"i": i}}, headers={"X-API-Key": API_KEY})
        assert r.status_code == 200, r.text
        epoch = r.json()["epoch"]
    return epoch


def test_tail_count_includes_replayed_events_and_prints_the_epoch(server) -> None:
    epoch = publish_events(server.url, "public.cli1", 5)
    out = tether("tail", "public.cli1", "--url", server.url, "--token", "alice", "--since", "0", "--epoch", epoch,
                 "--count", "3", timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3 and '"i":0' in lines[0] and '"i":2' in lines[2], out.stdout
    assert f"epoch {epoch}" in out.stderr


def test_tail_since_needs_the_epoch_and_says_not_recovered(server) -> None:
    publish_events(server.url, "public.cli2", 2)
    out = tether("tail", "public.cli2", "--url", server.url, "--token", "alice", "--since", "0")
    assert out.returncode == 2 and "--epoch" in out.stderr and "Traceback" not in out.stderr
    proc = subprocess.Popen([sys.executable, "-m", "tether", "tail", "public.cli2", "--url", server.url, "--token", "alice",
                             "--since", "0", "--epoch", "not-the-epoch", "--count", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen = ""
        while "not recovered" not in seen:
            line = proc.stderr.readline()
            assert line, seen
            seen += line
        publish_events(server.url, "public.cli2", 1)  # live events still come
        stdout, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and '"i":0' in stdout
    assert "--epoch not-the-epoch does not match the channel's current epoch" in seen, seen
    assert "history was reset, or the epoch is wrong" in seen and "no longer all in" not in seen, seen


def test_tail_with_a_jwt_not_signed_for_the_server_says_so_in_full(server_factory) -> None:
    import jwt as pyjwt

    from tether.core.auth import mint

    srv = server_factory("--auth", "jwt", env={"TETHER_JWT_SECRET": SECRET})
    for token in ("eyJhbGciOi.e30.x", mint("another-secret-0123456789abcdefghij", "alice"),
                  pyjwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")):
        out = tether("tail", "public.cli5", "--url", srv.url, "--token", token)
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        assert "invalid token: " in out.stderr and "tether token" in out.stderr, out.stderr
        assert "Invalid header string" not in out.stderr and "codec" not in out.stderr, out.stderr
        assert "…" not in out.stderr, out.stderr  # the close reason has room for the whole message
    assert "not a JWT signed for this server (bad signature)" in tether(
        "tail", "public.cli5", "--url", srv.url, "--token", mint("another-secret-0123456789abcdefghij", "alice")).stderr


def test_close_reasons_fit_a_close_frame_and_are_cut_between_words() -> None:
    from tether.wire.protocol import MAX_CLOSE_REASON, close_reason

    assert close_reason("short") == "short"
    long = close_reason("unauthorized: " + "word " * 40)
    assert len(long.encode()) <= MAX_CLOSE_REASON and long.endswith("word…"), long
    wide = close_reason("é" * 100)
    assert len(wide.encode()) <= MAX_CLOSE_REASON and wide.endswith("é…")


def test_tail_gap_is_said(capsys: pytest.CaptureFixture[str]) -> None:
    from tether.tools import _Tail

    printer = _Tail("public.x", 0)
    printer.last = 1
    for offset in (2, 5, 5, 6):
        printer.event({"offset": offset})
    out = capsys.readouterr()
    assert "gap: offsets 3..4 of public.x were missed" in out.err
    assert len(out.out.splitlines()) == 3  # the repeated 5 (at-least-once delivery) is printed once


def test_tail_exits_non_zero_when_the_server_goes_away(server_factory) -> None:
    srv = server_factory()
    proc = subprocess.Popen([sys.executable, "-m", "tether", "tail", "public.cli3", "--url", srv.url, "--token", "alice"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        assert "subscribed" in proc.stderr.readline()
        srv.stop()
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "closed the connection" in err and "Traceback" not in err


def test_tail_with_a_refused_token_says_so_and_how_to_get_one(server_factory) -> None:
    srv = server_factory("--auth", "jwt", env={"TETHER_JWT_SECRET": SECRET})
    out = tether("tail", "public.cli4", "--url", srv.url, "--token", "alice:phone")
    assert out.returncode != 0
    assert "refused the token" in out.stderr and "not a JWT" in out.stderr and "tether token" in out.stderr
    assert "cannot reach" not in out.stderr and "Not enough segments" not in out.stderr
    out = tether("publish", "public.cli4", "{}", "--url", srv.url, "--token", "alice:phone")
    assert out.returncode != 0 and "refused the token" in out.stderr and "tether token" in out.stderr
    assert "Not enough segments" not in out.stderr


def test_a_minted_token_works_where_a_dev_token_is_refused(server_factory) -> None:
    srv = server_factory("--auth", "jwt", env={"TETHER_JWT_SECRET": SECRET})
    minted = tether("token", "--user", "alice", env={"TETHER_JWT_SECRET": SECRET})
    assert minted.returncode == 0 and minted.stderr == "", minted.stderr
    out = tether("publish", "public.cli5", '{"a": 1}', "--url", srv.url, env={"TETHER_TOKEN": minted.stdout.strip()})
    assert out.returncode == 0, out.stderr


def test_empty_token_is_named_not_a_header_error(server) -> None:
    for command in (["publish", "public.cli6", "{}"], ["tail", "public.cli6"]):
        out = tether(*command, "--url", server.url, "--token", "")
        assert out.returncode != 0
        assert "no token" in out.stderr and "TETHER_TOKEN" in out.stderr, out.stderr
        assert "Illegal header" not in out.stderr and "Traceback" not in out.stderr


def test_token_prints_no_pyjwt_warning() -> None:
    out = tether("token", "--user", "alice", "--secret", "short")
    assert out.returncode == 0 and out.stdout.count(".") == 2
    assert "InsecureKeyLengthWarning" not in out.stderr
    assert "32" in out.stderr  # one line saying what a good secret is


def test_help_names_every_environment_twin() -> None:
    from tether.cli import main

    for name, command in main.commands.items():
        help_text = tether(name, "--help").stdout
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                assert str(param.envvar) in help_text, (name, param.name)
    assert "TETHER_URL" in tether("tail", "--help").stdout and "TETHER_TOKEN" in tether("publish", "--help").stdout
    serve = main.commands["serve"]
    for param in serve.params:
        assert isinstance(param, click.Option) and param.help, param.name
        assert param.envvar, param.name


def test_cli_refuses_to_reach_a_dead_server_in_one_line() -> None:
    from tests.helpers import free_port

    out = tether("publish", "public.x", "{}", "--url", f"http://127.0.0.1:{free_port()}", "--token", "a")
    assert out.returncode == 1 and "cannot reach" in out.stderr and len(out.stderr.strip().splitlines()) == 1
