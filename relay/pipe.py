"""The relay pipe (docs/protocol.md §10.2): two peers of one session meet on
``GET /v1/pipe/<id>`` (WebSocket) and the server forwards their binary messages (sealed
peer records and lane markers) both ways as they come, without storing anything.

Bounded: at most ``max_pipes`` pipes at once, one message at a time in flight per direction
(the forwarder awaits the other socket's write, so a slow reader slows its sender through
TCP), messages of at most :data:`MAX_MESSAGE` bytes, a lonely member waits ``wait`` seconds.
The id is derived by the peers from their session secret; the server learns nothing from it
and cannot forge records (every record is authenticated by the peers).

Logging: pipe opened / paired / closed with byte counts; never a body or an id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field
from typing import Final

from aiohttp import WSMsgType, web

__all__ = ["MAX_MESSAGE", "PipeHub"]

logger = logging.getLogger("scanbeam.relay")

MAX_MESSAGE: Final = 256 * 1024 + 64
_ID: Final = re.compile(r"[0-9a-f]{32}")


@dataclass(eq=False)
class _Pipe:
    members: list[web.WebSocketResponse] = field(default_factory=list)
    paired: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class PipeHub:
    """All pipes of one server. Mount with :meth:`mount`."""

    def __init__(self, *, max_pipes: int = 256, wait: float = 60.0) -> None:
        self.max_pipes = max_pipes
        self.wait = wait
        self._pipes: dict[str, _Pipe] = {}
        self._sockets: set[web.WebSocketResponse] = set()

    def mount(self, app: web.Application) -> None:
        app.router.add_route("GET", "/v1/pipe/{id}", self._handle)
        app.on_shutdown.append(self._shutdown)

    async def _shutdown(self, app: web.Application) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"server shutdown")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        pid = request.match_info["id"]
        if not _ID.fullmatch(pid):
            return _refuse(400, "malformed", "The pipe id must be 32 lower-case hex characters.")
        pipe = self._pipes.get(pid)
        if pipe is not None and len(pipe.members) >= 2:
            return _refuse(409, "crowded", "This pipe already has two members.")
        if pipe is None and len(self._pipes) >= self.max_pipes:
            return _refuse(503, "busy", "The server is busy; try again later.")
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=20.0, compress=False)
        if not ws.can_prepare(request).ok:
            return _refuse(400, "malformed", "Open the pipe with a WebSocket.")
        await ws.prepare(request)
        if pipe is None:
            pipe = self._pipes[pid] = _Pipe()
        if len(pipe.members) >= 2:  # another member arrived while this one prepared
            await ws.close(code=1008, message=b"crowded")
            return ws
        pipe.members.append(ws)
        self._sockets.add(ws)
        try:
            if len(pipe.members) == 2:
                for member in pipe.members:  # both start sending only after this
                    await member.send_str("paired")
                pipe.paired.set()
                logger.info("pipe paired (pipes=%d)", len(self._pipes))
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.wait):
                        await pipe.paired.wait()
                if not pipe.paired.is_set():
                    await ws.close(code=1000, message=b"nobody came")
                    return ws
            (other,) = (m for m in pipe.members if m is not ws)
            moved = await _forward(ws, other)
            logger.info("pipe direction closed after %d bytes", moved)
        finally:
            self._sockets.discard(ws)
            pipe.ended.set()
            if self._pipes.get(pid) is pipe:
                del self._pipes[pid]
            for member in pipe.members:
                with contextlib.suppress(Exception):
                    await member.close()
        return ws


async def _forward(src: web.WebSocketResponse, dst: web.WebSocketResponse) -> int:
    """Copy binary messages from ``src`` to ``dst`` until either side ends; text ends it."""
    moved = 0
    async for msg in src:
        if msg.type is not WSMsgType.BINARY:
            break
        try:
            await dst.send_bytes(msg.data)
        except (ConnectionError, RuntimeError):
            break
        moved += len(msg.data)
    return moved


def _refuse(status: int, code: str, detail: str) -> web.Response:
    return web.json_response(
        {"v": 1, "type": "error", "code": code, "detail": detail},
        status=status,
        headers={"Cache-Control": "no-store"},
    )
