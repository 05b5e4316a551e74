from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import SCALED, ServerProcess, drop_scaled_data


def pytest_report_header() -> str:
    return "tether test backend: " + ("scaled (PostgreSQL + Redis, TETHER_TEST_BACKEND=scaled)" if SCALED else "embedded")


@pytest.fixture(scope="session", autouse=True)
def _scaled_cleanup() -> Iterator[None]:
    """With TETHER_TEST_BACKEND=scaled, drop this process's schemas and Redis keys at the end."""
    yield
    if SCALED:
        import asyncio

        asyncio.run(drop_scaled_data())


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    """Start servers with extra CLI args; all are stopped after the test."""
    started: list[ServerProcess] = []

    def make(*args: str, data_dir: Path | None = None, env: dict[str, str] | None = None, start: bool = True) -> ServerProcess:
        srv = ServerProcess(data_dir or tmp_path / f"data{len(started)}", *args, env=env)
        started.append(srv)
        return srv.start() if start else srv

    yield make
    for srv in started:
        srv.kill()


@pytest.fixture
def server(server_factory) -> ServerProcess:  # type: ignore[no-untyped-def]
    return server_factory()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for a whole test module, for tests that do not restart it."""
    srv = ServerProcess(tmp_path_factory.mktemp("shared")).start()
    yield srv
    srv.kill()
