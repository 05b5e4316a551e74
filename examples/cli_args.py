"""The command line every example takes: a server URL and tokens, like `tether tail`.

    python examples/<name>.py [URL] [--token T] [--peer-token T]

URL defaults to $TETHER_URL or http://127.0.0.1:8080. On a dev server (the
default, `tether serve`) a token is just 'user:device'; on a JWT server mint
them with `tether token --user alice --device phone` (and one for the peer).
"""

from __future__ import annotations

import argparse
import os


def parse(description: str, token: str, peer_token: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    parser.add_argument("url", nargs="?", default=os.environ.get("TETHER_URL", "http://127.0.0.1:8080"),
                        help="server URL (env: TETHER_URL; default http://127.0.0.1:8080)")
    parser.add_argument("--token", default=os.environ.get("TETHER_TOKEN", token),
                        help=f"the first party's token (env: TETHER_TOKEN; default {token!r}, a dev token)")
    parser.add_argument("--peer-token", default=os.environ.get("TETHER_PEER_TOKEN", peer_token),
                        help=f"the other party's token (env: TETHER_PEER_TOKEN; default {peer_token!r})")
    return parser.parse_args()
