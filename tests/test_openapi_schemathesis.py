"""The OpenAPI document holds up: schemathesis with every check, as a user and with the API key.

A bounded run (fixed seed, a few dozen examples an operation) against a JWT
server, so that invalid credentials really are invalid. 412 is a stale
precondition, a correct answer to a well-formed If-Match, so it counts as
accepted; everything else is schemathesis' default.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import API_KEY

pytest.importorskip("schemathesis")

SECRET = "openapi-test-secret-0123456789abcdef"
MAX_EXAMPLES = 25
SEED = 1


def config(tmp_path: Path, auth: str) -> Path:
    path = tmp_path / "schemathesis.toml"
    path.write_text(f"""{auth}

[checks.positive_data_acceptance]
expected-statuses = ["2XX", "3XX", "401", "403", "404", "409", "412", "429", "5XX"]
""")
    return path


def run(url: str, cfg: Path) -> subprocess.CompletedProcess[str]:
    """schemathesis in the test's own directory (it keeps a .schemathesis/ cache there)."""
    # --workers 1: Python 3.11's ast.parse is not thread-safe, and hypothesis parses lambdas with it.
    return subprocess.run(
        [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
         "--config-file", str(cfg), "run", f"{url}/openapi.json", "--checks", "all",
         "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=cfg.parent)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("who", ["user", "api-key"])
def test_schemathesis_all_checks_pass(server_factory, tmp_path: Path, who: str) -> None:
    from tether.core.auth import mint

    srv = server_factory("--auth", "jwt", env={"TETHER_JWT_SECRET": SECRET})
    auth = (f'[auth.openapi.bearer]\nbearer = "{mint(SECRET, "alice", device="phone")}"' if who == "user"
            else f'[auth.openapi.apiKey]\napi_key = "{API_KEY}"')
    result = run(srv.url, config(tmp_path, auth))
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    summary = result.stdout.strip().splitlines()[-1]
    assert "failure" not in summary and "error" not in summary, report
