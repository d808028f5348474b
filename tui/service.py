"""The TUI's only door to transfers: a ``TransferService`` Protocol over ``peer.session``.

The real implementation is a thin wrapper; tests substitute a fake with fixed data.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from peer import session

__all__ = ["SendOptions", "SessionService", "TransferService"]

OnEvent = Callable[[Any], None]
Decide = Callable[[session.Offer], Awaitable[bool]]
Password = Callable[[], Awaitable[str]]


@dataclasses.dataclass(frozen=True, slots=True)
class SendOptions:
    relay: str = "auto"  # auto | always | never
    wait: float = 120.0  # seconds to wait for the receiver before the relay
    expires_in: float = 7 * 86400.0
    max_downloads: int = 1
    password: str | None = None


class TransferService(Protocol):
    """What the screens need; every call may raise ``session.BeamError``."""

    @property
    def server(self) -> str: ...

    def summarize(self, paths: Sequence[Path]) -> tuple[dict[str, Any], list[tuple[str, int]]]:
        """The study summary and ``(relative path, size)`` of every file (blocking)."""
        ...

    async def send(
        self, paths: Sequence[Path], on_event: OnEvent, options: SendOptions
    ) -> session.Done | session.LinkReady: ...

    async def receive(
        self, text: str, dest: Path, on_event: OnEvent, decide: Decide, password: Password
    ) -> session.Done: ...

    def free_space(self, dest: Path) -> int | None:
        """Free bytes on the disk that would hold ``dest`` (None if unknown)."""
        ...

    def disclosures(self) -> list[dict[str, Any]]: ...

    async def drops(self) -> list[dict[str, Any]]: ...

    async def drop_log(self, drop_id: str) -> list[dict[str, Any]]: ...

    async def drop_delete(self, drop_id: str) -> None: ...


class SessionService:
    """The real service: ``peer.session`` with one ``Settings``."""

    def __init__(self, settings: session.Settings) -> None:
        self.settings = settings

    @property
    def server(self) -> str:
        return self.settings.server

    def summarize(self, paths: Sequence[Path]) -> tuple[dict[str, Any], list[tuple[str, int]]]:
        sources = session.collect_sources(paths)
        summary = session.summarize((s.rel, s.path) for s in sources)
        return dict(summary), [(s.rel, s.size) for s in sources]

    async def send(
        self, paths: Sequence[Path], on_event: OnEvent, options: SendOptions
    ) -> session.Done | session.LinkReady:
        settings = dataclasses.replace(self.settings, wait_timeout=options.wait)
        return await session.send_or_relay(
            settings,
            paths,
            on_event,
            relay=options.relay,
            expires_in=options.expires_in,
            max_downloads=options.max_downloads,
            password=options.password,
        )

    async def receive(
        self, text: str, dest: Path, on_event: OnEvent, decide: Decide, password: Password
    ) -> session.Done:
        return await session.receive_any(self.settings, text, dest, on_event, decide, password)

    def free_space(self, dest: Path) -> int | None:
        path = dest.expanduser().resolve()
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            return shutil.disk_usage(path).free
        except OSError:
            return None

    def disclosures(self) -> list[dict[str, Any]]:
        return session.LocalState(self.settings.home).disclosures()

    async def drops(self) -> list[dict[str, Any]]:
        return await session.drop_statuses(self.settings)

    async def drop_log(self, drop_id: str) -> list[dict[str, Any]]:
        return await session.drop_log(self.settings, drop_id)

    async def drop_delete(self, drop_id: str) -> None:
        await session.drop_delete(self.settings, drop_id)
