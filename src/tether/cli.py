"""The ``tether`` command line."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from tether import __version__


def _env(name: str) -> str:
    return "TETHER_" + name.upper()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tether")
def main() -> None:
    """Tether: a self-hosted realtime sync backend."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, envvar=_env("host"), help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=int, envvar=_env("port"),
              help="Port to bind (1-65535).")
@click.option("--data-dir", default="./tether-data", show_default=True, type=click.Path(path_type=Path),
              envvar=_env("data_dir"), help="Where the embedded SQLite database lives.")
@click.option("--auth", type=click.Choice(["dev", "jwt"]), default=None, envvar=_env("auth"),
              help="dev: 'user:device' tokens (loopback only); jwt: signed tokens. Default: jwt when a key is set.")
@click.option("--jwt-secret", envvar=_env("jwt_secret"), help="HS256 secret for --auth jwt.")
@click.option("--jwt-public-key", envvar=_env("jwt_public_key"), help="RS256/ES256 public key (PEM text or file).")
@click.option("--api-key", envvar=_env("api_key"), help="Key that backends send as X-API-Key.")
@click.option("--database-url", envvar=_env("database_url"),
              help="postgresql://user:password@host/db to store in PostgreSQL (default: SQLite in --data-dir).")
@click.option("--redis-url", envvar=_env("redis_url"), help="redis://… for broker, history, presence and locks.")
@click.option("--redis-prefix", default="tether:", show_default=True, envvar=_env("redis_prefix"),
              help="Prefix of every Redis key and pub/sub channel (several services may share one Redis).")
@click.option("--presence-ttl", type=float, default=30.0, show_default=True, envvar=_env("presence_ttl"),
              help="Seconds a REST heartbeat keeps a user present.")
@click.option("--ping-interval", type=float, default=25.0, show_default=True, envvar=_env("ping_interval"),
              help="Seconds between server PINGs; silence for twice this closes a connection.")
@click.option("--max-frame-bytes", type=int, default=64 * 1024, show_default=True, envvar=_env("max_frame_bytes"),
              help="Largest WebSocket frame a client may send.")
@click.option("--max-subscriptions", type=int, default=256, show_default=True, envvar=_env("max_subscriptions"),
              help="Channels one connection may subscribe to.")
@click.option("--rate-per-connection", type=float, default=100.0, show_default=True, envvar=_env("rate_per_connection"),
              help="Requests per second a connection may sustain.")
@click.option("--rate-burst", type=int, default=200, show_default=True, envvar=_env("rate_burst"),
              help="Requests a connection may send at once above its sustained rate.")
@click.option("--rate-per-user", type=float, default=300.0, show_default=True, envvar=_env("rate_per_user"),
              help="Requests per second all of one user's connections may sustain together.")
@click.option("--send-queue-frames", type=int, default=2000, show_default=True, envvar=_env("send_queue_frames"),
              help="Frames a connection may have waiting before it is closed as a slow consumer.")
@click.option("--max-body-bytes", type=int, default=1024 * 1024, show_default=True, envvar=_env("max_body_bytes"),
              help="Largest REST request body; a larger one is refused with 413.")
@click.option("--rest-rate-per-user", type=float, default=50.0, show_default=True, envvar=_env("rest_rate_per_user"),
              help="REST requests per second a user may sustain (the API key is exempt); over it: 429.")
@click.option("--rest-rate-burst", type=int, default=100, show_default=True, envvar=_env("rest_rate_burst"),
              help="REST requests a user may send at once above its sustained rate.")
@click.option("--max-streams-per-user", type=int, default=8, show_default=True, envvar=_env("max_streams_per_user"),
              help="Streams a user may have open at once.")
@click.option("--history-size", type=int, default=1000, show_default=True, envvar=_env("history_size"),
              help="Events a channel keeps for recovery after a reconnect.")
@click.option("--history-ttl", type=float, default=3600.0, show_default=True, envvar=_env("history_ttl"),
              help="Seconds a channel's events stay recoverable.")
@click.option("--history-sweep", type=float, default=60.0, show_default=True, envvar=_env("history_sweep"),
              help="Seconds between sweeps that delete channel history older than its window (quiet channels too).")
@click.option("--device-ttl", type=float, default=30.0, show_default=True, envvar=_env("device_ttl"),
              help="Seconds a device stays online after its node stops heartbeating it (cluster).")
@click.option("--retain-ended", type=float, default=5.0, show_default=True, envvar=_env("retain_ended"),
              help="Seconds a completed or failed shoot's progress stays retained.")
@click.option("--stream-timeout", type=float, default=60.0, show_default=True, envvar=_env("stream_timeout"),
              help="Seconds without a delta after which a stream is closed as abandoned.")
@click.option("--retained-progress", default="SHOOT_PROGRESS:shootId,PROGRESS:id", show_default=True,
              envvar=_env("retained_progress"),
              help="Progress events retained per id until --retain-ended s after completed/failed: TYPE:idField,...")
@click.option("--retained-latest", default="CREDIT_UPDATE", show_default=True, envvar=_env("retained_latest"),
              help="Event types whose latest push is retained for devices that connect later: TYPE,...")
@click.option("--message-types", default="text,prayer,scripture", show_default=True, envvar=_env("message_types"),
              help="Chat message types users may post in live sessions (the first is the default unless 'text').")
@click.option("--channels-file", type=click.Path(path_type=Path), envvar=_env("channels_file"),
              help="JSON list of namespace overrides (pattern, subscribe, publish, history_size, history_ttl).")
@click.option("--cors-origins", envvar=_env("cors_origins"),
              help="Comma-separated origins whose web pages may call /api and open /ws "
                   "(e.g. https://app.example.com; '*' only with --auth dev). Default: same origin only.")
@click.option("--log-level", default="info", show_default=True, envvar=_env("log_level"),
              type=click.Choice(["debug", "info", "warning", "error", "critical"], case_sensitive=False),
              help="Least severe log lines written (JSON, one a line, on stderr).")
@click.option("--ws-transport", type=click.Choice(["native", "asgi"]), default="native", show_default=True,
              envvar=_env("ws_transport"),
              help="native: /ws straight from the socket (lean, fast); asgi: /ws through the ASGI app, "
                   "as under any other ASGI server.")
@click.option("--idempotency-ttl", type=float, default=24 * 3600.0, show_default=True, envvar=_env("idempotency_ttl"),
              help="Seconds the first answer of a request with an idempotency key is kept.")
@click.option("--node-id", envvar=_env("node_id"), help="This node's name in the admin API. Default: hostname:port.")
@click.option("--drain-timeout", type=click.FloatRange(min=1), default=30.0, show_default=True, envvar=_env("drain_timeout"),
              help="On SIGTERM the node exits (code 0) at most this many seconds later, drained or not.")
@click.option("--drain-delay", type=click.FloatRange(min=0), default=0.0, show_default=True, envvar=_env("drain_delay"),
              help="Seconds /healthz answers 503 before clients are closed with 1012, so that a load "
                   "balancer which cannot retry a refused upgrade stops sending new clients first.")
@click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False), envvar=_env("config"),
              help="TOML file of settings (keys as in `tether config`). Flags and TETHER_* variables override it.")
def serve(ws_transport: str, **options: Any) -> None:
    """Run a Tether server (embedded SQLite + in-process broker unless URLs are set)."""

    from tether.core import logs
    from tether.core.config import Settings
    from tether.server.app import create_app
    from tether.server import preflight
    from tether.server.drain import run
    from tether.server.wsproto import AsgiWebSocketProtocol, TetherWebSocketProtocol

    config_file = options.pop("config", None)
    if config_file is not None:  # its values replace the defaults only: flag > env > file > default
        from tether.configfile import resolve

        resolved, _ = resolve(click.get_current_context(), config_file)
        ws_transport = resolved.pop("ws_transport")
        options.update({k: v for k, v in resolved.items() if k in options})
    settings = Settings.from_env(**options)
    settings.check()
    preflight.check(settings)
    preflight.lock_data_dir(settings)
    logs.configure(settings.log_level)
    app = create_app(settings)
    click.echo(preflight.banner(settings, ws_transport))
    run(  # uvicorn, except that SIGTERM drains the node (server/drain.py)
        app,
        host=settings.host,
        port=settings.port,
        loop="auto",
        http="auto",
        # uvicorn's, plus batched frame writes and (native) /ws outside ASGI: see server/wsproto.py
        ws=TetherWebSocketProtocol if ws_transport == "native" else AsgiWebSocketProtocol,
        ws_max_size=4 * settings.max_frame_bytes + 1024,
        ws_ping_interval=None,
        ws_per_message_deflate=False,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        drain_timeout=settings.drain_timeout,
        drain_delay=settings.drain_delay,
    )


def _state_minimums(command: click.Command) -> None:
    """Each numeric option's help ends with its least working value (refused below it at start)."""
    from tether.core.config import MINIMUMS

    for param in command.params:
        if isinstance(param, click.Option) and param.name in MINIMUMS and "At least" not in (param.help or ""):
            param.help = f"{param.help} At least {MINIMUMS[param.name]:g}."


_state_minimums(serve)


def _show_config(reference: bool, **_: Any) -> None:
    from tether.configfile import reference as table, render, resolve

    ctx = click.get_current_context()
    if reference:
        click.echo(table(serve))
        return
    values, sources = resolve(ctx, ctx.params.get("config"))
    click.echo(render(values, sources))


# `tether config` takes every option of `tether serve` and prints what serve would run with.
main.add_command(click.Command(
    "config", callback=_show_config,
    params=[*serve.params, click.Option(["--reference"], is_flag=True, help="Print the settings reference (Markdown).")],
    help="Print the effective configuration (flag > TETHER_* > --config file > default), secrets masked.",
))


@main.command()
@click.option("--user", required=True, help="The token's user id (sub).")
@click.option("--device", default=None, help="Device id claim.")
@click.option("--ttl", default=3600, show_default=True, type=int, help="Seconds until the token expires.")
@click.option("--role", "roles", multiple=True, help="Role claim, repeatable (e.g. --role admin).")
@click.option("--secret", envvar=_env("jwt_secret"), required=True, help="HS256 secret (TETHER_JWT_SECRET).")
def token(user: str, device: str | None, ttl: int, roles: tuple[str, ...], secret: str) -> None:
    """Mint an HS256 JWT for --auth jwt."""
    import warnings

    from tether.core.auth import mint

    if len(secret.encode()) < 32:
        click.echo(f"warning: the secret is {len(secret.encode())} bytes; HS256 wants at least 32 "
                   f"(make one: python -c 'import secrets; print(secrets.token_urlsafe(48))')", err=True)
    with warnings.catch_warnings():  # said once above, in one line, instead of PyJWT's warning
        warnings.simplefilter("ignore")
        click.echo(mint(secret, user, device=device, ttl=ttl, roles=list(roles)))


@main.command()
@click.argument("channel")
@click.option("--url", default="http://127.0.0.1:8080", show_default=True, envvar="TETHER_URL", help="Server URL.")
@click.option("--token", "tok", default="cli", show_default=True, envvar="TETHER_TOKEN",
              help="Token to connect with (a dev server takes any user name; a JWT server: `tether token`).")
@click.option("--since", type=click.IntRange(min=0), default=None,
              help="Replay the events after this offset first (needs --epoch).")
@click.option("--epoch", default=None, help="Epoch that --since belongs to (tail prints it when it subscribes).")
@click.option("--count", type=click.IntRange(min=0), default=0,
              help="Stop after this many events, replayed ones included (0: never).")
def tail(channel: str, url: str, tok: str, since: int | None, epoch: str | None, count: int) -> None:
    """Print a channel's events as they arrive, one JSON line each (like `nats sub`)."""
    from tether.tools import tail as run

    sys.exit(asyncio.run(run(url, tok, channel, since, epoch, count)))


@main.command()
@click.argument("channel")
@click.argument("data")
@click.option("--url", default="http://127.0.0.1:8080", show_default=True, envvar="TETHER_URL", help="Server URL.")
@click.option("--token", "tok", default="cli", show_default=True, envvar="TETHER_TOKEN",
              help="Token (Bearer; a dev server takes any user name; a JWT server: `tether token`).")
@click.option("--api-key", envvar=_env("api_key"), help="Publish with the server API key instead of a token.")
@click.option("--type", "etype", default="PUBLICATION", show_default=True, help="Event type.")
def publish(channel: str, data: str, url: str, tok: str, api_key: str | None, etype: str) -> None:
    """Publish DATA (JSON) on CHANNEL and print the assigned offset."""
    from tether.tools import publish as run

    sys.exit(run(url, tok, api_key, channel, data, etype))


@main.command()
@click.option("--database-url", envvar=_env("database_url"), help="postgresql://… (default: SQLite in --data-dir).")
@click.option("--data-dir", default="./tether-data", show_default=True, type=click.Path(path_type=Path), envvar=_env("data_dir"),
              help="Where the embedded SQLite database lives.")
def migrate(database_url: str | None, data_dir: Path) -> None:
    """Create or update the database schema, then exit."""
    from tether.core.config import Settings
    from tether.server import migrate as run
    from tether.server import preflight

    settings = Settings.from_env(database_url=database_url, data_dir=data_dir)
    try:
        preflight.check(settings, listen=False)
    except preflight.Refused as exc:  # the same checks as serve's, said for what was asked
        raise SystemExit(f"cannot migrate: {exc.reason}") from None
    click.echo(asyncio.run(run.migrate(settings)))


# Every option with an environment twin shows it in --help ("[env var: TETHER_PORT]").
for _command in main.commands.values():
    for _param in _command.params:
        if isinstance(_param, click.Option) and _param.envvar:
            _param.show_envvar = True
