"""Asyncio client of the signaling server (``docs/protocol.md`` § Signaling).

Typical use, allocator side::

    client = await SignalingClient.connect("https://beam.example.org")
    nameplate = await client.allocate()
    await client.wait_peer(timeout=600)
    await client.send(body)
    reply = await client.recv(timeout=30)
    await client.close("happy")

A background reader parses every server frame. ``msg`` bodies are queued in arrival order
(bounded: when full, the reader stops reading and TCP pushes back); the end of the room
(``peer-gone``, ``peer-closed``, ``expired``, an unsolicited ``error``, or the connection
dropping) is queued after them, so :meth:`SignalingClient.recv` returns every body that arrived
before it raises.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import FIRST_COMPLETED
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from signaling.ice import IceServer
from signaling.messages import (
    MAX_BODY,
    MAX_FRAME,
    MOODS,
    Allocate,
    Allocated,
    Close,
    Error,
    Expired,
    Join,
    Joined,
    MalformedFrame,
    Msg,
    PeerClosed,
    PeerGone,
    PeerJoined,
    Rendezvous,
    parse_server,
)
from signaling.messages import (
    encode as encode_message,
)

__all__ = ["QUEUE_SIZE", "SignalingClient", "SignalingError", "signal_url"]

logger = logging.getLogger("scanbeam.signaling")
# websockets logs every frame (bodies included) at DEBUG; pin its logger above that.
_ws_logger = logging.getLogger("scanbeam.signaling.websockets")
_ws_logger.setLevel(logging.INFO)

QUEUE_SIZE: Final = 256
"""Bodies (plus the final error) held for :meth:`SignalingClient.recv`."""
_PING_INTERVAL: Final = 20.0
_CLOSE_TIMEOUT: Final = 2.0


class SignalingError(Exception):
    """A signaling operation failed.

    Attributes:
        code: A server error code (``crowded``, ``unknown-nameplate``, ``busy``, ...) or a local
            one: ``unreachable``, ``bad-url``, ``expired``, ``peer-gone``,
            ``peer-closed:<mood>``, ``disconnected``, ``timeout``, ``closed``, ``bad-state``,
            ``no-peer``, ``too-large``, ``protocol``.
        detail: A sentence for people; never contains a secret.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def signal_url(server_url: str) -> str:
    """Map a server's base URL to its WebSocket endpoint.

    ``http://h:p[/prefix][/]`` → ``ws://h:p[/prefix]/v1/signal``; ``https`` → ``wss``. ``ws``
    and ``wss`` URLs are taken as bases too. A path that already ends in ``/v1/signal`` is kept;
    one ending in ``/v1`` gets ``/signal``. Query and fragment are dropped.

    Raises:
        SignalingError: ``bad-url`` when the scheme is not http(s)/ws(s) or the host is missing.
    """
    parts = urlsplit(server_url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise SignalingError("bad-url", f"Not a ScanBeam server address: {server_url!r}.")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path += "/signal"
    elif not path.endswith("/v1/signal"):
        path += "/v1/signal"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class SignalingClient:
    """One connection to the signaling server; at most one room in its life.

    Not safe for concurrent calls of the same method (e.g. two ``recv`` at once).
    """

    def __init__(self, ws: ClientConnection, server_url: str, request_timeout: float) -> None:
        """Use :meth:`connect`."""
        self._ws = ws
        self._server_url = server_url
        self._request_timeout = request_timeout
        self._queue: asyncio.Queue[str | SignalingError] = asyncio.Queue(QUEUE_SIZE)
        self._reply: asyncio.Future[Allocated | Joined] | None = None
        self._expect: type[Allocated | Joined] = Allocated
        self._peer_joined = asyncio.Event()
        self._ended = asyncio.Event()  # set with _end: no more bodies will come
        self._end: SignalingError | None = None
        self._end_taken = False
        self._room = False  # allocated or joined
        self._ice: tuple[IceServer, ...] = ()
        self._closed = False
        self._reader = asyncio.create_task(self._read(), name="scanbeam-signaling-reader")

    @classmethod
    async def connect(cls, server_url: str, *, open_timeout: float = 10.0) -> SignalingClient:
        """Open the WebSocket to ``server_url`` (see :func:`signal_url`).

        ``open_timeout`` also bounds each later :meth:`allocate` / :meth:`join` round trip.

        Raises:
            SignalingError: ``unreachable`` (refused, DNS, TLS, timeout, not a ScanBeam
                server) or ``bad-url``.
        """
        url = signal_url(server_url)
        unreachable = SignalingError(
            "unreachable", f"Cannot reach the ScanBeam server at {server_url}."
        )
        try:
            ws = await ws_connect(
                url,
                open_timeout=open_timeout,
                max_size=2 * MAX_FRAME,
                compression=None,
                ping_interval=_PING_INTERVAL,
                ping_timeout=_PING_INTERVAL,
                close_timeout=_CLOSE_TIMEOUT,
                logger=_ws_logger,
            )
        except InvalidStatus as exc:
            logger.info("signaling handshake refused (HTTP %d)", exc.response.status_code)
            raise unreachable from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            logger.info("signaling server unreachable (%s)", type(exc).__name__)
            raise unreachable from exc
        return cls(ws, server_url, open_timeout)

    # -- requests ----------------------------------------------------------------------------

    async def allocate(self) -> str:
        """Create a room; returns its nameplate (a decimal string).

        Raises:
            SignalingError: ``busy``, ``bad-state`` (already in a room), ``timeout``,
                ``disconnected``.
        """
        reply = await self._request(Allocate(), Allocated)
        assert isinstance(reply, Allocated)
        self._ice = reply.ice
        return reply.nameplate

    async def join(self, nameplate: str) -> None:
        """Join the room ``nameplate`` as its second member.

        A failed join (``unknown-nameplate``, ``crowded``) leaves the connection usable for
        another attempt, until the server answers ``rate-limited`` and closes it.

        Raises:
            SignalingError: the server's code, or ``timeout``, ``disconnected``, ``bad-state``.
        """
        reply = await self._request(Join(nameplate), Joined)
        assert isinstance(reply, Joined)
        self._ice = reply.ice
        self._peer_joined.set()  # the allocator is there by construction

    @property
    def ice_servers(self) -> tuple[IceServer, ...]:
        """STUN/TURN servers the server handed out with ``allocated``/``joined`` (may be
        empty); TURN credentials in them are short-lived and for this room only."""
        return self._ice

    async def rendezvous(self, rid: str) -> None:
        """Enter the rendezvous room ``rid`` (protocol v2 §10.3); then :meth:`wait_peer`.

        Raises:
            SignalingError: the server's code, or ``timeout``, ``disconnected``, ``bad-state``.
        """
        reply = await self._request(Rendezvous(rid), Joined)
        assert isinstance(reply, Joined)
        self._ice = reply.ice

    async def wait_peer(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (API)
        """Wait until the other member joined the room this connection allocated.

        Raises:
            SignalingError: ``expired`` (nobody joined within the nameplate's TTL),
                ``timeout``, ``bad-state`` (no room), or how the room ended.
        """
        if self._peer_joined.is_set():
            return
        if not self._room:
            raise SignalingError("bad-state", "Allocate a room first.")
        joined = asyncio.ensure_future(self._peer_joined.wait())
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait([joined, ended], timeout=timeout, return_when=FIRST_COMPLETED)
        finally:
            joined.cancel()
            ended.cancel()
        if self._peer_joined.is_set():
            return
        if self._end is not None:
            raise self._copy(self._end)
        raise SignalingError("timeout", "The other side did not join in time.")

    async def send(self, body: str) -> None:
        """Send ``body`` to the other member (opaque to the server).

        Raises:
            SignalingError: ``no-peer`` (nobody joined yet), ``too-large`` (over 48 KiB as
                UTF-8), how the room ended, or ``disconnected``.
            ValueError: ``body`` holds a lone surrogate (cannot be sent as UTF-8).
        """
        if self._end is not None:
            raise self._copy(self._end)
        if not self._peer_joined.is_set():
            raise SignalingError("no-peer", "The other side has not joined yet.")
        size = len(body.encode("utf-8"))  # UnicodeEncodeError is a ValueError
        if size > MAX_BODY:
            raise SignalingError("too-large", f"The message is larger than {MAX_BODY} bytes.")
        try:
            await self._ws.send(encode_message(Msg(body)))
        except ConnectionClosed:
            raise self._disconnected() from None

    async def recv(self, timeout: float | None = None) -> str:  # noqa: ASYNC109 (API)
        """Return the next body from the other member, in order.

        Raises:
            SignalingError: ``timeout``; ``peer-gone``; ``peer-closed:<mood>``; ``expired``;
                ``disconnected``; ``closed`` (after :meth:`close`); or a server error code.
                Once the room ended, every later call raises the same.
        """
        if self._closed:
            raise SignalingError("closed", "The signaling connection was closed.")
        if self._end_taken:
            assert self._end is not None
            raise self._copy(self._end)
        try:
            async with asyncio.timeout(timeout):
                item = await self._queue.get()
        except TimeoutError:
            raise SignalingError("timeout", "No message from the other side in time.") from None
        if isinstance(item, SignalingError):
            self._end_taken = True
            raise self._copy(item)
        return item

    async def close(self, mood: str = "happy") -> None:
        """Leave: send ``close`` (burning the room) if still connected, then disconnect.

        Idempotent. ``mood`` is one of ``happy``, ``wrong-code``, ``error``, ``declined``.

        Raises:
            ValueError: unknown ``mood``.
        """
        if mood not in MOODS:
            raise ValueError(f"mood must be one of {sorted(MOODS)}, not {mood!r}")
        if self._closed:
            return
        self._closed = True
        self._reader.cancel()
        await asyncio.wait([self._reader])
        if self._end is None:
            try:
                await self._ws.send(encode_message(Close(mood)))
            except ConnectionClosed:
                pass
        self._finish(SignalingError("closed", "The signaling connection was closed."))
        await self._ws.close()

    async def __aenter__(self) -> SignalingClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close("happy" if exc_info[0] is None else "error")

    # -- internals ---------------------------------------------------------------------------

    async def _request(
        self, message: Allocate | Join | Rendezvous, expect: type[Allocated | Joined]
    ) -> Allocated | Joined:
        """Send ``message`` and wait for ``expect`` or an ``error``.

        After a ``timeout`` the server may still act on the request: close the client.
        """
        if self._end is not None:
            raise self._copy(self._end)
        if self._room or self._reply is not None:
            raise SignalingError("bad-state", "This connection already has a room.")
        reply: asyncio.Future[Allocated | Joined] = asyncio.get_running_loop().create_future()
        self._reply, self._expect = reply, expect
        try:
            await self._ws.send(encode_message(message))
            async with asyncio.timeout(self._request_timeout):
                result = await reply
        except ConnectionClosed:
            raise self._disconnected() from None
        except TimeoutError:
            raise SignalingError("timeout", "The ScanBeam server did not answer.") from None
        finally:
            self._reply = None
        self._room = True
        return result

    async def _read(self) -> None:
        try:
            async for data in self._ws:
                try:
                    message = parse_server(data)
                except MalformedFrame as exc:
                    await self._fail(SignalingError("protocol", f"Bad server frame: {exc}"))
                    return
                if isinstance(message, Msg):
                    await self._queue.put(message.body)
                elif isinstance(message, Allocated | Joined):
                    reply = self._reply
                    if reply is not None and not reply.done() and isinstance(message, self._expect):
                        reply.set_result(message)
                elif isinstance(message, PeerJoined):
                    self._peer_joined.set()
                elif isinstance(message, Error):
                    error = SignalingError(message.code, message.detail)
                    if self._reply is not None and not self._reply.done():
                        self._reply.set_exception(error)  # the connection stays usable
                    else:
                        await self._fail(error)
                        return
                elif isinstance(message, PeerGone):
                    await self._fail(SignalingError("peer-gone", "The other side disconnected."))
                    return
                elif isinstance(message, PeerClosed):
                    detail = f"The other side ended the session ({message.mood})."
                    await self._fail(SignalingError(f"peer-closed:{message.mood}", detail))
                    return
                elif isinstance(message, Expired):
                    await self._fail(SignalingError("expired", "The code expired."))
                    return
                # pong and unknown types: nothing to do
        except ConnectionClosed:
            pass
        await self._fail(self._disconnected())

    async def _fail(self, error: SignalingError) -> None:
        """Record how the room ended and queue it after the bodies already received."""
        if self._finish(error):
            await self._queue.put(error)

    def _finish(self, error: SignalingError) -> bool:
        if self._end is not None:
            return False
        self._end = error
        self._ended.set()
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(error)
        return True

    def _disconnected(self) -> SignalingError:
        return SignalingError(
            "disconnected", f"Lost the connection to the ScanBeam server at {self._server_url}."
        )

    @staticmethod
    def _copy(error: SignalingError) -> SignalingError:
        # A fresh exception per raise, so tracebacks do not pile up on one object.
        return SignalingError(error.code, error.detail)
