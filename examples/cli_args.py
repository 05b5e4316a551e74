"""The command line every example takes: a server URL and tokens, like `tether tail`.

    python examples/<name>.py [URL] [--token T] [--peer-token T]

URL defaults to $TETHER_URL or http://127.0.0.1:8080. On a dev server (the
default, `tether serve`) a token is just 'user:device'; on a JWT server mint
them with `tether token --user alice --device phone` (and one for the peer).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any, Coroutine

from tether.client import ClientError, Failed, ServerError


def parse(description: str, token: str, peer_token: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    parser.add_argument("url", nargs="?", default=os.environ.get("TETHER_URL", "http://127.0.0.1:8080"),
                        help="server URL (env: TETHER_URL; default http://127.0.0.1:8080)")
    parser.add_argument("--token", default=os.environ.get("TETHER_TOKEN", token),
                        help=f"the first party's token (env: TETHER_TOKEN; default {token!r}, a dev token)")
    parser.add_argument("--peer-token", default=os.environ.get("TETHER_PEER_TOKEN", peer_token),
                        help=f"the other party's token (env: TETHER_PEER_TOKEN; default {peer_token!r})")
    return parser.parse_args()


HINT = ("on a JWT server mint them with `tether token --user USER --device DEVICE` (with its TETHER_JWT_SECRET) "
        "and pass them as --token and --peer-token")


def run(main: Coroutine[Any, Any, Any]) -> None:
    """Run an example; a refused token or an unreachable server is one line on stderr and exit status 1."""
    try:
        asyncio.run(main)
    except (Failed, ServerError) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, ServerError) else exc
        if isinstance(cause, ServerError) and cause.code == "unauthorized":
            sys.exit(f"the server refused a token ({cause.message}); {HINT}")
        sys.exit(f"failed: {exc}")
    except ClientError as exc:
        sys.exit(f"failed: {exc}")
