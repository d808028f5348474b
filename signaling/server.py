"""Asyncio shim around :class:`signaling.rooms.Hub`: the ScanBeam server's one origin (aiohttp).

One origin serves everything (``docs/protocol.md`` § Signaling, "Endpoints"):

* ``/v1/signal``: the WebSocket endpoint (text frames, at most 64 KiB each);
* ``GET /v1/health``: ``200`` with ``{"ok": true, "service": "scanbeam", "protocol": [1]}``;
* routes added by *mounts* (the relay API, see :func:`relay.app.mount`): any method, streamed
  bodies, their own error format;
* routes passed to :func:`start_server` (GET; exact paths, or prefixes ending in ``*``);
* anything else: ``404`` for GET, ``405`` for other methods, plain text.

The shim owns the clock (``time.monotonic``) and the random source (``secrets``); the hub gets
them as arguments. Each connection has a reader (feeds the hub) and a writer (drains a bounded
outbox), so a slow peer never blocks anyone else. aiohttp's access log is off: nothing here
logs paths, headers or bodies.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from signaling.ice import IceConfig, IceServer, mint
from signaling.messages import MAX_FRAME, PROTOCOL_VERSION, encode
from signaling.rooms import Action, CloseConnection, Hub, SendFrame
from signaling.settings import ServerSettings

__all__ = [
    "HEALTH_PATH",
    "SIGNAL_PATH",
    "HttpResponse",
    "Mount",
    "Route",
    "Server",
    "run",
    "start_server",
]

logger = logging.getLogger("scanbeam.signaling")

SIGNAL_PATH: Final = "/v1/signal"
HEALTH_PATH: Final = "/v1/health"
PING_INTERVAL: Final = 20.0
"""Seconds between WebSocket pings. aiohttp drops a peer whose pong is later than half that."""
CLOSE_TIMEOUT: Final = 5.0
"""Seconds to wait for the other side's close frame, and for handlers when shutting down."""
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


Route = Callable[[web.Request], HttpResponse | Awaitable[HttpResponse]]
"""A GET route handler. It gets aiohttp's :class:`~aiohttp.web.Request` (``.path``,
``.path_qs``, ``.query``, ``.headers``, ``.method``) and may be sync or async."""

Mount = Callable[[web.Application], Awaitable[None] | None]
"""Adds routes and startup/cleanup hooks to the application before it starts (sync or async).
Mounted routes take precedence over :data:`Route` handlers; ``/v1/signal`` and ``/v1/health``
come first."""


class Server:
    """A running server. Build it with :func:`start_server`."""

    def __init__(self, runner: web.AppRunner, shim: _Signaling) -> None:
        self._runner = runner
        self._shim = shim
        self._address = runner.addresses[0]
        self._closing: asyncio.Future[None] | None = None
        self._closed = asyncio.Event()

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
        return self._shim.hub

    async def close(self) -> None:
        """Stop listening, close every WebSocket (1001), end the sweeper and the mounts'
        background work (their cleanup hooks). Idempotent."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        try:
            self._shim.prune_task.cancel()
            await asyncio.wait([self._shim.prune_task])
            await self._runner.cleanup()
        finally:
            self._closed.set()

    async def wait_closed(self) -> None:
        """Return once the server is closed (by :meth:`close`)."""
        await self._closed.wait()

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
    settings: ServerSettings,
    *,
    routes: Mapping[str, Route] | None = None,
    mounts: Iterable[Mount] = (),
) -> Server:
    """Bind and start serving.

    Args:
        settings: ``host``, ``port`` and the room limits are used.
        routes: Extra HTTP GET routes. A key is an exact path (``"/"``) or, when it ends in
            ``*``, a prefix (``"/static/*"`` matches ``/static/app.js``); the exact match wins,
            then the longest prefix. ``/v1/signal``, ``/v1/health`` and mounted routes cannot
            be overridden. The query string is not part of the match.
        mounts: Callables that add their routes and hooks to the application, in order (for
            example ``relay.app.mount(relay_settings)``). Their startup hooks run before the
            socket is bound; their cleanup hooks run in :meth:`Server.close`.

    Raises:
        OSError: the address cannot be bound.
        ValueError: the TURN secret file cannot be read or is empty, or a STUN/TURN URL is bad.
        Exception: whatever a mount or its startup hook raises.
    """
    ice = ice_config(settings)
    hub = Hub(
        randbelow=secrets.randbelow,
        nameplate_ttl=settings.nameplate_ttl,
        room_ttl=settings.room_ttl,
        max_rooms=settings.max_rooms,
        max_msgs_per_room=settings.max_msgs_per_room,
        join_failures_per_minute=settings.join_failures_per_minute,
        ice=_minter(ice, settings.nameplate_ttl) if ice.enabled else None,
    )
    shim = _Signaling(hub, dict(routes or {}), settings.prune_interval)
    app = web.Application()
    app.router.add_get(SIGNAL_PATH, shim.signal, allow_head=False)
    app.router.add_get(HEALTH_PATH, shim.health)
    for mount in mounts:
        result = mount(app)
        if inspect.isawaitable(result):
            await result
    app.router.add_route("*", "/{tail:.*}", shim.fallback)  # resolved last (aiohttp's index)
    app.on_shutdown.append(shim.shutdown)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,  # paths hold drop ids and queries; we log events ourselves
        shutdown_timeout=CLOSE_TIMEOUT,
    )
    try:
        await runner.setup()  # runs the mounts' startup hooks
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()  # runs the cleanup hooks of those that started
        raise
    shim.prune_task = asyncio.create_task(shim.prune_forever(), name="scanbeam-signaling-prune")
    server = Server(runner, shim)
    logger.info("server listening on %s", server.url)
    return server


def ice_config(settings: ServerSettings) -> IceConfig:
    """The STUN/TURN servers to hand out, with the TURN secret read from its file.

    Raises:
        ValueError: unreadable or empty secret file, or a URL that is not stun:/turn:.
    """
    secret = b""
    if settings.turn_secret_file is not None:
        path = settings.turn_secret_file
        try:
            with open(path, "rb") as fh:
                secret = fh.read(4096).strip()
        except OSError as exc:
            raise ValueError(f"cannot read the TURN secret file {path}: {exc.strerror}") from None
        if not secret:
            raise ValueError(f"the TURN secret file {path} is empty")
    return IceConfig(
        stun_urls=settings.stun_url,
        turn_urls=settings.turn_url,
        secret=secret,
        ttl=int(settings.turn_ttl),
    )


def _minter(ice: IceConfig, wait: float) -> Callable[[], tuple[IceServer, ...]]:
    def mint_for_room() -> tuple[IceServer, ...]:
        # valid from now until the room could still be waiting, plus the TTL
        return mint(ice, time.time() + wait, secrets.token_urlsafe(12))

    return mint_for_room


async def run(
    settings: ServerSettings,
    *,
    routes: Mapping[str, Route] | None = None,
    mounts: Iterable[Mount] = (),
    on_ready: Callable[[Server], None] | None = None,
) -> None:
    """Run the server until SIGTERM, cancellation (Ctrl-C under ``asyncio.run``) or
    ``server.close()``; used by ``scanbeam serve``.

    Prints nothing. ``on_ready`` is called once listening, e.g. to print ``server.url``.

    Raises:
        OSError: the address cannot be bound.
    """
    server = await start_server(settings, routes=routes, mounts=mounts)
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
        logger.info("server stopped")


# -- internals ------------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Peer:
    ws: web.WebSocketResponse
    outbox: asyncio.Queue[Action] = field(default_factory=asyncio.Queue)
    drained: asyncio.Event = field(default_factory=asyncio.Event)  # set: outbox empty
    done: bool = False  # the writer stopped: queue nothing more
    closing: bool = False  # the writer is closing the WebSocket


class _Signaling:
    """Glue between aiohttp and the hub. One instance per server."""

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

    async def health(self, request: web.Request) -> web.Response:
        body = {"ok": True, "service": "scanbeam", "protocol": [PROTOCOL_VERSION]}
        return _response(HttpResponse(200, json.dumps(body).encode(), "application/json"))

    async def fallback(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return _response(HttpResponse(405, b"Method not allowed.\n"))
        path = urlsplit(request.raw_path).path
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

    async def signal(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            timeout=CLOSE_TIMEOUT,
            heartbeat=PING_INTERVAL,
            compress=False,  # bodies are ciphertext; deflate would only cost memory
            max_msg_size=MAX_FRAME,
        )
        if not ws.can_prepare(request).ok:
            return _response(
                HttpResponse(426, b"Upgrade required: this is a WebSocket endpoint.\n"),
            )
        await ws.prepare(request)
        peername = request.transport.get_extra_info("peername") if request.transport else None
        ip = str(peername[0]) if peername else "unknown"
        conn = self.hub.connect(ip)
        peer = _Peer(ws)
        self._peers[conn] = peer
        writer = asyncio.create_task(self._write(peer))
        try:
            while True:
                message = await ws.receive()
                if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break  # CLOSE, CLOSING, CLOSED or ERROR (1009 was sent by aiohttp)
                for busy in self._perform(self.hub.receive(conn, message.data, self._clock())):
                    await busy.drained.wait()
        finally:
            del self._peers[conn]
            self._perform(self.hub.disconnect(conn, self._clock()))
            if not writer.done() and peer.closing:  # let its close handshake finish
                await asyncio.wait([writer], timeout=CLOSE_TIMEOUT)
            writer.cancel()
            await asyncio.wait([writer])
            await ws.close()  # no-op when already closed
        return ws

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
                    peer.closing = True
                    await peer.ws.close(code=action.code, message=action.reason.encode())
                    return
                assert isinstance(action, SendFrame)
                await peer.ws.send_str(encode(action.message))
        except ConnectionError:  # the transport is closing or gone
            return
        finally:
            peer.done = True  # nothing more will be sent: never keep a reader waiting
            peer.drained.set()

    async def shutdown(self, app: web.Application) -> None:
        """``on_shutdown``: close every WebSocket with 1001 (going away)."""
        peers = list(self._peers.values())
        for peer in peers:
            peer.done = True
            peer.drained.set()
        await asyncio.gather(
            *(p.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for p in peers),
            return_exceptions=True,
        )

    async def prune_forever(self) -> None:
        while True:
            await asyncio.sleep(self._prune_interval)
            try:
                self._perform(self.hub.prune(self._clock()))
            except Exception:  # never let one bad sweep stop expiry for good
                logger.exception("prune failed")


def _response(reply: HttpResponse) -> web.Response:
    response = web.Response(
        status=reply.status,
        body=reply.body,
        headers={"Content-Type": reply.content_type, "Cache-Control": "no-store"},
    )
    for name, value in reply.headers:
        response.headers[name] = value  # CIMultiDict: replaces
    response.force_close()  # docs/protocol.md § Signaling: these answers carry Connection: close
    return response
