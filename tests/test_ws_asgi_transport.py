"""The portable ASGI ``/ws`` (server/ws.py), which any ASGI server runs, stays correct.

``tether serve`` normally serves ``/ws`` natively (server/native.py); these are
the core protocol tests again, on a server started with ``--ws-transport asgi``.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.helpers import ServerProcess
from tests.test_channels_ws import (  # noqa: F401 (collected here, against the ASGI transport)
    test_bad_token_is_refused_with_a_reason,
    test_connected_first_and_ping_pong,
    test_flood_is_rate_limited_then_closed,
    test_oversize_frame_far_over_the_limit_closes_with_1009,
    test_reader_that_never_reads_is_closed_as_slow_consumer,
    test_recovery_replays_exactly_the_missed_events,
    test_silent_connection_is_closed_after_two_ping_intervals,
    test_two_clients_see_publications_in_order,
)

ASGI = ("--ws-transport", "asgi")


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("asgi"), *ASGI).start()
    yield srv
    srv.kill()


@pytest.fixture
def server_factory(server_factory):  # type: ignore[no-untyped-def]
    return lambda *args, **kw: server_factory(*ASGI, *args, **kw)
