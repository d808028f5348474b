"""A real server (signaling + relay on one origin) on 127.0.0.1, port 0, with a fake clock."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.app import RelayMount, mount
from relay.client import RelayClient
from relay.settings import RelaySettings
from signaling.server import Server, start_server
from signaling.settings import ServerSettings

FACTOR = float(os.environ.get("SCANBEAM_TEST_TIMEOUT_FACTOR", "1"))
WAIT = 5.0 * FACTOR


class Clock:
    """Unix time that moves only when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Env:
    server: Server
    relay: RelayMount
    client: RelayClient
    clock: Clock
    data_dir: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def db(self) -> Path:
        return self.data_dir / "relay.sqlite3"


@asynccontextmanager
async def relay_env(tmp_path: Path, **overrides: Any) -> AsyncIterator[Env]:
    data_dir = tmp_path / "relay"
    settings = RelaySettings(**{"data_dir": data_dir, "min_free_bytes": 0, **overrides})
    clock = Clock()
    relay = mount(settings, clock=clock)
    async with await start_server(ServerSettings(port=0), mounts=[relay]) as server:
        async with RelayClient(server.url) as client:
            yield Env(server, relay, client, clock, data_dir)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with relay_env(tmp_path) as e:
        yield e


async def until(condition: Callable[[], bool], limit: float = WAIT) -> None:
    """Poll ``condition`` (server-side state the test cannot await), bounded."""
    async with asyncio.timeout(limit):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
