"""Asyncio shim around :class:`signaling.rooms.Hub`: the ScanBeam signaling server.

One origin serves everything (``docs/protocol.md`` § Signaling, "Endpoints"):

* ``/v1/signal``: the WebSocket endpoint;
* ``GET /v1/health``: ``200`` with ``{"ok": true, "service": "scanbeam", "protocol": [1]}``;
* routes passed to :func:`start_server` (exact paths, or prefixes ending in ``*``);
* anything else: ``404``, plain text.

The shim owns the clock (``time.monotonic``) and the random source (``secrets``); the hub gets
them as arguments. Each connection has a reader (feeds the hub) and a writer (drains a bounded
outbox), so a slow peer never blocks anyone else.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self
from urllib.parse import urlsplit

from websockets.asyncio.server import Server as _WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from signaling.messages import MAX_FRAME, PROTOCOL_VERSION, encode
from signaling.rooms import Action, CloseConnection, Hub, SendFrame
from signaling.settings import ServerSettings

__all__ = [
    "HEALTH_PATH",
    "SIGNAL_PATH",
    "HttpResponse",
    "Route",
    "Server",
    "run",
    "start_server",
]

logger = logging.getLogger("scanbeam.signaling")
# websockets logs every frame (bodies included) at DEBUG; pin its logger above that.
_ws_logger = logging.getLogger("scanbeam.signaling.websockets")
_ws_logger.setLevel(logging.INFO)

SIGNAL_PATH: Final = "/v1/signal"
HEALTH_PATH: Final = "/v1/health"
PING_INTERVAL: Final = 20.0
"""Seconds between WebSocket pings; a peer that misses one for as long again is dropped."""
OUTBOX_HIGH: Final = 64
"""Frames queued for one connection above which the reader that queued them waits until the
queue is empty (backpressure: a peer that does not read slows only its own room)."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What a route returns. The body is sent as is, with ``Content-Length``."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


Route = Callable[[Request], HttpResponse | Awaitable[HttpResponse]]
"""An HTTP route handler. It gets websockets' :class:`~websockets.http11.Request` (``.path``
with the query, ``.headers``, ``.method``) and may be sync or async."""


class Server:
    """A running signaling server. Build it with :func:`start_server`."""

    def __init__(self, ws_server: _WsServer, app: _App) -> None:
        self._ws = ws_server
        self._app = app
        self._closed = False
        self._address = ws_server.sockets[0].getsockname()

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when the settings asked for port 0)."""
        return int(self._address[1])

    @property
    def host(self) -> str:
        """The bound address."""
        return str(self._address[0])

    @property
    def url(self) -> str:
        """``http://host:port`` of this server, for clients."""
        host = self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def hub(self) -> Hub:
        """The pure core (for stats and tests)."""
        return self._app.hub

    async def close(self) -> None:
        """Stop listening, close every connection (1001) and the sweeper. Idempotent."""
        if not self._closed:
            self._closed = True
            self._app.prune_task.cancel()
            self._ws.close()
        await self._ws.wait_closed()
        await asyncio.wait([self._app.prune_task])

    async def wait_closed(self) -> None:
        """Return once the server is closed (by :meth:`close`)."""
        await self._ws.wait_closed()

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` is called or this task is cancelled (then close)."""
        try:
            await self.wait_closed()
        finally:
            await self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def start_server(
    settings: ServerSettings, *, routes: Mapping[str, Route] | None = None
) -> Server:
    """Bind and start serving.

    Args:
        settings: ``host``, ``port`` and the room limits are used.
        routes: Extra HTTP GET routes. A key is an exact path (``"/"``) or, when it ends in
            ``*``, a prefix (``"/static/*"`` matches ``/static/app.js``); the exact match wins,
            then the longest prefix. ``/v1/signal`` and ``/v1/health`` cannot be overridden.
            The query string is not part of the match.

    Raises:
        OSError: the address cannot be bound.
    """
    hub = Hub(
        randbelow=secrets.randbelow,
        nameplate_ttl=settings.nameplate_ttl,
        room_ttl=settings.room_ttl,
        max_rooms=settings.max_rooms,
        max_msgs_per_room=settings.max_msgs_per_room,
        join_failures_per_minute=settings.join_failures_per_minute,
    )
    app = _App(hub, dict(routes or {}), settings.prune_interval)
    ws_server = await serve(
        app.handle,
        settings.host,
        settings.port,
        process_request=app.process_request,
        max_size=MAX_FRAME,
        compression=None,  # bodies are ciphertext; deflate would only cost memory
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_INTERVAL,
        close_timeout=5,
        logger=_ws_logger,
    )
    app.prune_task = asyncio.create_task(app.prune_forever(), name="scanbeam-signaling-prune")
    server = Server(ws_server, app)
    logger.info("signaling server listening on %s", server.url)
    return server


async def run(
    settings: ServerSettings,
    *,
    routes: Mapping[str, Route] | None = None,
    on_ready: Callable[[Server], None] | None = None,
) -> None:
    """Run the server until SIGTERM, cancellation (Ctrl-C under ``asyncio.run``) or
    ``server.close()``; used by ``scanbeam serve``.

    Prints nothing. ``on_ready`` is called once listening, e.g. to print ``server.url``.

    Raises:
        OSError: the address cannot be bound.
    """
    server = await start_server(settings, routes=routes)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    try:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        sigterm = True
    except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
        sigterm = False
    waiters = [
        asyncio.ensure_future(stop.wait()),
        asyncio.ensure_future(server.wait_closed()),
    ]
    try:
        if on_ready is not None:
            on_ready(server)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        if sigterm:
            loop.remove_signal_handler(signal.SIGTERM)
        await server.close()
        logger.info("signaling server stopped")


# -- internals ------------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Peer:
    ws: ServerConnection
    outbox: asyncio.Queue[Action] = field(default_factory=asyncio.Queue)
    drained: asyncio.Event = field(default_factory=asyncio.Event)  # set: outbox empty
    done: bool = False  # the writer stopped: queue nothing more


class _App:
    """Glue between websockets and the hub. One instance per server."""

    def __init__(self, hub: Hub, routes: dict[str, Route], prune_interval: float) -> None:
        self.hub = hub
        self.prune_task: asyncio.Task[None]
        self._routes = routes
        self._prefixes = sorted(
            ((p.removesuffix("*"), r) for p, r in routes.items() if p.endswith("*")),
            key=lambda item: len(item[0]),
            reverse=True,
        )
        self._prune_interval = prune_interval
        self._peers: dict[int, _Peer] = {}
        self._clock = time.monotonic

    # HTTP --------------------------------------------------------------------------------------

    async def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == SIGNAL_PATH:
            return None  # go on with the WebSocket handshake
        if request.method != "GET":
            return _response(HttpResponse(405, b"Method not allowed.\n"))
        if path == HEALTH_PATH:
            body = {"ok": True, "service": "scanbeam", "protocol": [PROTOCOL_VERSION]}
            return _response(
                HttpResponse(200, json.dumps(body).encode(), "application/json"),
            )
        route = self._routes.get(path)
        if route is None:
            route = next((r for p, r in self._prefixes if path.startswith(p)), None)
        if route is None:
            return _response(HttpResponse(404, b"Not found.\n"))
        result = route(request)
        if not isinstance(result, HttpResponse):
            result = await result
        return _response(result)

    # WebSocket -----------------------------------------------------------------------------------

    async def handle(self, ws: ServerConnection) -> None:
        address = ws.remote_address
        ip = str(address[0]) if address else "unknown"
        conn = self.hub.connect(ip)
        peer = _Peer(ws)
        self._peers[conn] = peer
        writer = asyncio.create_task(self._write(peer))
        try:
            async for data in ws:
                for busy in self._perform(self.hub.receive(conn, data, self._clock())):
                    await busy.drained.wait()
        except ConnectionClosed:
            pass
        finally:
            del self._peers[conn]
            self._perform(self.hub.disconnect(conn, self._clock()))
            # The reader only stops once the connection is closed: nothing left can be sent.
            writer.cancel()
            await asyncio.wait([writer])

    def _perform(self, actions: list[Action]) -> list[_Peer]:
        """Queue ``actions``; return the peers whose outbox is above :data:`OUTBOX_HIGH`."""
        busy: list[_Peer] = []
        for action in actions:
            peer = self._peers.get(action.conn)
            if peer is None or peer.done:  # gone or going; its handler tells the hub
                continue
            peer.outbox.put_nowait(action)
            peer.drained.clear()
            if peer.outbox.qsize() > OUTBOX_HIGH and peer not in busy:
                busy.append(peer)
        return busy

    @staticmethod
    async def _write(peer: _Peer) -> None:
        try:
            while True:
                if peer.outbox.empty():
                    peer.drained.set()
                action = await peer.outbox.get()
                if isinstance(action, CloseConnection):
                    await peer.ws.close(action.code, action.reason)
                    return
                assert isinstance(action, SendFrame)
                await peer.ws.send(encode(action.message))
        except ConnectionClosed:
            return
        finally:
            peer.done = True  # nothing more will be sent: never keep a reader waiting
            peer.drained.set()

    async def prune_forever(self) -> None:
        while True:
            await asyncio.sleep(self._prune_interval)
            try:
                self._perform(self.hub.prune(self._clock()))
            except Exception:  # never let one bad sweep stop expiry for good
                logger.exception("prune failed")


def _response(reply: HttpResponse) -> Response:
    status = http.HTTPStatus(reply.status)
    headers = Headers(
        [
            ("Content-Type", reply.content_type),
            ("Content-Length", str(len(reply.body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ]
    )
    for name, value in reply.headers:
        if name in headers:
            del headers[name]  # Headers.__setitem__ appends
        headers[name] = value
    return Response(status.value, status.phrase, headers, reply.body)
