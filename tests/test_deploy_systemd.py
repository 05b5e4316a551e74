"""deploy/tether.service and deploy/tether.toml, as far as a machine without a running systemd allows:
`systemd-analyze verify` on the unit, then its ExecStart command line run for real with the
example config: the node serves, and the unit's stop signal drains it to exit code 0 in time."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "tether.service"
NODE_TOML = ROOT / "deploy" / "tether.toml"
CLUSTER_TOML = ROOT / "deploy" / "tether-cluster.toml"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze, binary = shutil.which("systemd-analyze"), shutil.which("tether")
    if analyze is None or binary is None:
        pytest.skip("SKIPPED LOUDLY: systemd-analyze or the tether command is not installed")
    # The unit names /usr/local/bin/tether; point it at this machine's command, nothing else changes.
    local = tmp_path / "tether.service"
    local.write_text(UNIT.read_text().replace("/usr/local/bin/tether", binary))
    out = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


def test_the_unit_stops_after_the_drain_not_before() -> None:
    service = unit()["Service"]
    assert service["KillSignal"] == "SIGTERM" and service["Restart"] == "on-failure"
    drain = tomllib.loads(NODE_TOML.read_text())["drain_timeout"]
    assert seconds(service["TimeoutStopSec"]) > drain  # systemd never kills a node that is still draining


def test_the_units_command_line_runs_the_example_config_and_drains_on_stop(tmp_path: Path) -> None:
    service = unit()["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/usr/local/bin/tether" and argv[1:3] == ["serve", "--config"]
    config = tmp_path / "tether.toml"
    shutil.copy(NODE_TOML, config)  # the example as shipped; this machine's port and data dir come from the environment
    secrets = tmp_path / "secrets.env"
    secrets.write_text("TETHER_JWT_SECRET=a-secret-of-at-least-thirty-two-bytes!\nTETHER_API_KEY=ops-key\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(line.split("=", 1) for line in secrets.read_text().splitlines())  # as EnvironmentFile= does
    env.update(TETHER_PORT=str(port), TETHER_DATA_DIR=str(tmp_path / "state"))
    proc = subprocess.Popen([sys.executable, "-m", "tether", *argv[1:3], str(config), *argv[4:]], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the node did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        nodes = httpx.get(f"http://127.0.0.1:{port}/api/admin/nodes", headers={"X-API-Key": "ops-key"})
        assert nodes.status_code == 200
        # Under --auth jwt (from the file) a dev token is refused.
        assert httpx.get(f"http://127.0.0.1:{port}/api/admin/nodes", headers={"Authorization": "Bearer a:b"}).status_code == 401
    finally:
        proc.send_signal(getattr(signal, service["KillSignal"]))
        code = proc.wait(seconds(service["TimeoutStopSec"]))
    assert code == 0
    assert (tmp_path / "state").is_dir()


def test_the_cluster_example_names_only_real_settings() -> None:
    out = subprocess.run([sys.executable, "-m", "tether", "config", "--config", str(CLUSTER_TOML)],
                         capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if not k.startswith("TETHER_")})
    assert out.returncode == 0, out.stderr
    assert 'redis_url = "redis://redis.internal:6379/0"' in out.stdout
