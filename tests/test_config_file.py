"""`tether serve --config tether.toml`, flag > env > file > default, `tether config`, and the
generated reference in docs/operations.md."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import click
import httpx
import pytest

from tests.helpers import free_port
from tether.cli import serve
from tether.configfile import generated
from tether.core.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    return {**env, **extra}


def tether(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tether", *args], capture_output=True, text=True,
                          env=env or clean_env(), timeout=60)


def line(output: str, name: str) -> str:
    found = [ln for ln in output.splitlines() if ln.startswith(f"{name} =") or ln.startswith(f"# {name} =")]
    assert len(found) == 1, output
    return " ".join(found[0].split())


def test_one_precedence_order_flag_env_file_default(tmp_path: Path) -> None:
    conf = tmp_path / "tether.toml"
    conf.write_text('port = 1111\nhistory_size = 5\nlog_level = "debug"\n')
    by_file = tether("config", "--config", str(conf)).stdout
    assert line(by_file, "port") == f"port = 1111 # file {conf}"
    assert line(by_file, "history_size") == f"history_size = 5 # file {conf}"
    assert line(by_file, "ping_interval") == "ping_interval = 25.0 # default"
    by_env = tether("config", "--config", str(conf), env=clean_env(TETHER_PORT="2222")).stdout
    assert line(by_env, "port") == "port = 2222 # env TETHER_PORT"
    assert line(by_env, "log_level") == f'log_level = "debug" # file {conf}'
    by_flag = tether("config", "--config", str(conf), "--port", "3333", env=clean_env(TETHER_PORT="2222")).stdout
    assert line(by_flag, "port") == "port = 3333 # flag"
    assert line(tether("config").stdout, "port") == "port = 8080 # default"
    # The config file itself may come from the environment.
    assert line(tether("config", env=clean_env(TETHER_CONFIG=str(conf))).stdout, "port") == f"port = 1111 # file {conf}"


def test_secrets_are_masked(tmp_path: Path) -> None:
    conf = tmp_path / "tether.toml"
    conf.write_text('api_key = "sk-live-123"\njwt_secret = "hush-hush"\n'
                    'database_url = "postgresql://app:pg-pass@db:5432/tether"\n')
    out = tether("config", "--config", str(conf), env=clean_env(TETHER_REDIS_URL="redis://:redis-pass@cache:6379/0")).stdout
    for secret in ("sk-live-123", "hush-hush", "pg-pass", "redis-pass"):
        assert secret not in out
    assert line(out, "api_key").startswith('api_key = "****"')
    assert line(out, "database_url").startswith('database_url = "postgresql://app:****@db:5432/tether"')
    assert line(out, "redis_url").startswith('redis_url = "redis://:****@cache:6379/0"')
    assert line(out, "jwt_public_key") == "# jwt_public_key = (unset) # default"


def test_a_password_in_the_query_is_masked_too() -> None:
    env = clean_env(TETHER_DATABASE_URL="postgresql://u@h/db?schema=app&password=qpw&sslpassword=sslpw",
                    TETHER_REDIS_URL="redis://cache:6379/0?password=rpw")
    out = tether("config", env=env).stdout
    for secret in ("qpw", "sslpw", "rpw"):
        assert secret not in out, out
    assert line(out, "database_url").startswith(
        'database_url = "postgresql://u@h/db?schema=app&password=****&sslpassword=****"')
    assert line(out, "redis_url").startswith('redis_url = "redis://cache:6379/0?password=****"')


@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:pw@h:5432/db", "postgresql://u:****@h:5432/db"),
    ("postgresql://u@h/db?password=pw&schema=s", "postgresql://u@h/db?password=****&schema=s"),
    ("postgresql://u:a:b@c@h/db?sslpassword=x", "postgresql://u:****@h/db?sslpassword=****"),
    ("redis://:pw@h:6379/0", "redis://:****@h:6379/0"),
    ("rediss://h/0?PassWord=pw&token=t&api_key=k", "rediss://h/0?PassWord=****&token=****&api_key=****"),
    ("unix:///run/redis.sock?db=0&password=pw", "unix:///run/redis.sock?db=0&password=****"),
    ("postgresql://u:pw@[::1/db", "postgresql://u:****@[::1/db"),  # not even a valid URL
    ("postgresql://h:5432/db?schema=s", "postgresql://h:5432/db?schema=s"),
])
def test_one_mask_for_every_url_secret(url: str, shown: str) -> None:
    from tether.core.config import mask_url
    from tether.server.preflight import mask

    assert mask_url(url) == shown and mask is mask_url  # the banner's and `tether config`'s are one function


def test_the_printed_configuration_is_itself_a_valid_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "tether.toml"
    conf.write_text("port = 4321\nrate_burst = 7\n")
    printed = tmp_path / "printed.toml"
    printed.write_text(tether("config", "--config", str(conf)).stdout)
    again = tether("config", "--config", str(printed))
    assert again.returncode == 0, again.stderr
    assert line(again.stdout, "port").startswith("port = 4321") and line(again.stdout, "rate_burst").startswith("rate_burst = 7")


def test_a_bad_file_is_refused_in_one_line(tmp_path: Path) -> None:
    conf = tmp_path / "tether.toml"
    cases = {
        "prot = 1\n": "unknown setting 'prot' (did you mean 'port'?)",
        'port = "eighty"\n': "port:",
        "port = \n": "is not valid TOML",
        'auth = "none"\n': "auth:",
    }
    for text, expected in cases.items():
        conf.write_text(text)
        for command in ("config", "serve"):
            out = tether(command, "--config", str(conf))
            assert out.returncode == 2 and expected in out.stderr, (text, out.stderr)
    out = tether("serve", "--config", str(tmp_path / "missing.toml"))
    assert out.returncode == 2 and "cannot read config file" in out.stderr


def test_serve_runs_with_the_file(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "etc" / "tether.toml"
    conf.parent.mkdir()
    conf.write_text(f'port = {port}\ndata_dir = "data"\napi_key = "file-key"\nnode_id = "from-file"\n')
    proc = subprocess.Popen([sys.executable, "-m", "tether", "serve", "--config", str(conf)], env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        nodes = httpx.get(f"http://127.0.0.1:{port}/api/admin/nodes", headers={"X-API-Key": "file-key"}).json()
        assert nodes["nodes"][0]["id"] == "from-file"
        assert (conf.parent / "data").is_dir()  # relative paths are relative to the file
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_every_setting_is_a_flag_a_variable_and_a_file_key() -> None:
    options = {p.name: p for p in serve.params}
    for f in fields(Settings):
        assert f.name in options, f"Settings.{f.name} has no `tether serve` option"
        assert options[f.name].envvar == "TETHER_" + f.name.upper()
    out = tether("config", "--help").stdout
    assert "--drain-timeout" in out and "--config" in out


#: A Settings field's annotation -> the type its row of the reference must start with.
REFERENCE_TYPE = {"int": "integer", "float": "number", "Path": "path", "Path | None": "path", "str": "text",
                  "str | None": "text"}


def test_the_reference_types_follow_the_settings_types() -> None:
    """Each row's type is the field's (a range is still a number: drain_timeout was "text")."""
    from tether.configfile import _type

    options = {p.name: p for p in serve.params if isinstance(p, click.Option)}
    for f in fields(Settings):
        shown, expected = _type(options[f.name]), REFERENCE_TYPE[str(f.type)]
        if isinstance(options[f.name].type, click.Choice):
            assert expected == "text" and "`" in shown, (f.name, shown)
        else:
            assert shown.split(" ")[0] == expected, f"{f.name}: reference says {shown!r}, Settings says {f.type}"
    assert _type(options["drain_timeout"]) == "number ≥ 1" and _type(options["port"]).startswith("integer")
    assert _type(click.Option(["--n"], type=click.IntRange(1, 65535))) == "integer ≥ 1, ≤ 65535"
    with pytest.raises(TypeError, match="--when"):  # an unknown type fails the generator, never "text"
        _type(click.Option(["--when"], type=click.DateTime()))


def test_the_reference_in_docs_is_generated_from_the_settings() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    assert generated(doc, serve) == doc, "docs/operations.md is stale: run `PYTHONPATH=src python scripts/update_docs.py`"
    assert "`--drain-timeout`" in doc and "`TETHER_DRAIN_TIMEOUT`" in doc and "`tether_connections_opened_total`" in doc
