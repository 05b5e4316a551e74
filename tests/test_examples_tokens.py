"""Every example runs against a JWT server with tokens given like the CLI's (--token / TETHER_TOKEN)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tether.core.auth import mint

ROOT = Path(__file__).resolve().parents[1]
SECRET = "examples-secret-0123456789abcdefghij"

EXAMPLES = {
    # name: (first party, peer), as (user, device)
    "chat_session.py": (("alice", "phone"), ("bob", "laptop")),
    "editor_lock.py": (("alice", "desktop"), ("bob", "desktop")),
    "device_progress.py": (("alice", "laptop"), ("alice", "phone")),
}


def run(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=120)


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tests.helpers import ServerProcess

    srv = ServerProcess(tmp_path_factory.mktemp("examples"), "--auth", "jwt", env={"TETHER_JWT_SECRET": SECRET}).start()
    yield srv
    srv.kill()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_takes_tokens_as_flags(jwt_server, name: str) -> None:  # type: ignore[no-untyped-def]
    (user, device), (peer, peer_device) = EXAMPLES[name]
    out = run(name, jwt_server.url, "--token", mint(SECRET, user, device=device),
              "--peer-token", mint(SECRET, peer, device=peer_device))
    assert out.returncode == 0, out.stdout + out.stderr
    if name == "chat_session.py":
        seen = [line for line in out.stdout.splitlines() if line.startswith("alice sees")]
        assert len(seen) == 2 and "hello from bob" in seen[0] and "shall we start?" in seen[1], out.stdout
        assert "joined" not in out.stdout  # the server's own notices are filtered out


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_takes_tokens_from_the_environment(jwt_server, name: str) -> None:  # type: ignore[no-untyped-def]
    (user, device), (peer, peer_device) = EXAMPLES[name]
    out = run(name, env={"TETHER_URL": jwt_server.url, "TETHER_TOKEN": mint(SECRET, user, device=device),
                         "TETHER_PEER_TOKEN": mint(SECRET, peer, device=peer_device)})
    assert out.returncode == 0, out.stdout + out.stderr


def test_example_help_names_the_token_flags() -> None:
    out = run("chat_session.py", "--help")
    assert out.returncode == 0 and "--token" in out.stdout and "TETHER_TOKEN" in out.stdout


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_with_tokens_the_server_refuses_says_so_in_one_line(jwt_server, name: str) -> None:  # type: ignore[no-untyped-def]
    out = run(name, jwt_server.url)  # the default tokens are dev tokens, not JWTs
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "tether token" in out.stderr and "unauthorized: unauthorized" not in out.stderr, out.stderr


def test_device_progress_with_tokens_of_two_users_says_so(jwt_server) -> None:  # type: ignore[no-untyped-def]
    out = run("device_progress.py", jwt_server.url, "--token", mint(SECRET, "alice", device="laptop"),
              "--peer-token", mint(SECRET, "bob", device="phone"))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "two users (alice, bob)" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_editor_lock_says_who_holds_the_lock(jwt_server) -> None:  # type: ignore[no-untyped-def]
    out = run("editor_lock.py", jwt_server.url, "--token", mint(SECRET, "alice", device="desktop"),
              "--peer-token", mint(SECRET, "bob", device="desktop"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "bob: chapter-1 is being edited by alice until 20" in out.stdout, out.stdout
