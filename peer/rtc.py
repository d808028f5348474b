"""The aiortc adapter: one WebRTC peer connection with one ordered data channel.

``RtcLink`` hides aiortc behind the small ``Channel`` interface the transfer loops use
(send, drain, recv, close), translating aiortc states into ScanBeam errors. ICE servers
come only from settings: an empty list means no STUN/TURN at all (aiortc would otherwise
contact a public STUN server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from peer import warm
from peer.errors import NoPathError, PeerGone, RemoteProtocolError
from signaling.ice import IceServer

if TYPE_CHECKING:  # aiortc is imported on first use (`peer.warm`)
    from aiortc import RTCDataChannel

__all__ = ["Channel", "RtcLink", "handed_servers", "ice_servers"]

log = logging.getLogger("scanbeam.rtc")
LABEL = "scanbeam"
_CLOSED = object()


class Channel(Protocol):
    """A reliable, ordered, message-based channel to the peer."""

    def send(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def recv_nowait(self) -> bytes | None: ...
    async def recv(self) -> bytes: ...
    async def close(self) -> None: ...


def ice_servers(
    stun: Sequence[str], turn: Sequence[str], username: str | None, credential: str | None
) -> list[Any]:
    """Build aiortc ICE server objects from settings (empty when none configured)."""
    warm.need("aiortc")
    from aiortc import RTCIceServer

    servers: list[Any] = [RTCIceServer(urls=url) for url in stun]
    servers += [RTCIceServer(urls=url, username=username, credential=credential) for url in turn]
    return servers


def handed_servers(servers: Sequence[IceServer]) -> list[Any]:
    """aiortc ICE server objects for the servers the signaling server handed out."""
    warm.need("aiortc")
    from aiortc import RTCIceServer

    return [
        RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
        for s in servers
    ]


class RtcLink:
    """One peer connection. Create with :meth:`offer` (sender) or :meth:`answer` (receiver)."""

    def __init__(
        self,
        servers: Sequence[Any],
        *,
        high_water: int = 1 << 20,
        max_queue: int = 4096,
        relay_only: bool = False,
    ) -> None:
        warm.need("aiortc")
        from aiortc import RTCConfiguration, RTCIceTransportPolicy, RTCPeerConnection

        policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=list(servers), iceTransportPolicy=policy)
        )
        self._high = high_water
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._max_queue = max_queue
        self._channel: RTCDataChannel | None = None
        self._open = asyncio.Event()
        self._dead = asyncio.Event()
        self._closed = False
        self._via = "direct"
        self._sink: tuple[Callable[[bytes], None], Callable[[], None]] | None = None

        @self.pc.on("connectionstatechange")
        def _on_state() -> None:
            state = self.pc.connectionState
            log.debug("connection state %s", state)
            if state in ("failed", "closed"):
                self._mark_dead()

    # setup

    async def create_offer(self) -> str:
        ch = self.pc.createDataChannel(LABEL, ordered=True)
        self._attach(ch)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept_answer(self, sdp: str) -> None:
        from aiortc import RTCSessionDescription

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def create_answer(self, offer_sdp: str) -> str:
        from aiortc import RTCSessionDescription

        @self.pc.on("datachannel")
        def _on_channel(ch: RTCDataChannel) -> None:
            if ch.label == LABEL and self._channel is None:
                self._attach(ch)

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return str(self.pc.localDescription.sdp)

    async def wait_open(self, within: float) -> None:
        """Wait until the data channel is open; NoPathError when ICE/DTLS cannot connect."""
        waiter = asyncio.ensure_future(self._open.wait())
        dead = asyncio.ensure_future(self._dead.wait())
        try:
            await asyncio.wait({waiter, dead}, timeout=within, return_when="FIRST_COMPLETED")
        finally:
            waiter.cancel()
            dead.cancel()
        if not self._open.is_set() or self._dead.is_set():
            raise NoPathError("data channel did not open")

    def _attach(self, ch: RTCDataChannel) -> None:
        self._channel = ch
        ch.bufferedAmountLowThreshold = self._high // 2

        @ch.on("open")
        def _on_open() -> None:
            _ = self.via  # remember the selected pair
            self._open.set()

        if ch.readyState == "open":
            self._open.set()

        @ch.on("message")
        def _on_message(message: object) -> None:
            if not isinstance(message, bytes):
                message = b""  # text frames are not part of the protocol: fail at parse
            if self._sink is not None:
                self._sink[0](message)
                return
            if self._queue.qsize() >= self._max_queue:
                self._queue.put_nowait(RemoteProtocolError("peer floods the channel"))
                return
            self._queue.put_nowait(message)

        @ch.on("close")
        def _on_close() -> None:
            self._mark_dead()

    def _mark_dead(self) -> None:
        if not self._dead.is_set():
            self._dead.set()
            self._queue.put_nowait(_CLOSED)
            if self._sink is not None:
                self._sink[1]()

    def set_sink(self, on_message: Callable[[bytes], None], on_dead: Callable[[], None]) -> None:
        """Deliver messages (and the channel's end) to callbacks instead of :meth:`recv`
        (used by the lane multiplexer, peer.lanes); what was queued is delivered first."""
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, bytes):
                on_message(item)
        self._sink = (on_message, on_dead)
        if self._dead.is_set():
            on_dead()

    @property
    def high_water(self) -> int:
        """Bytes buffered in the channel before :meth:`drain` waits."""
        return self._high

    @high_water.setter
    def high_water(self, value: int) -> None:
        self._high = value
        if self._channel is not None:
            self._channel.bufferedAmountLowThreshold = value // 2

    # Channel interface

    @property
    def via(self) -> str:
        """ "turn" when the selected ICE pair uses a relay candidate (ours or the peer's),
        else "direct". The last pair seen is kept, so this stays true after the link closed
        (aioice forgets its pairs on close)."""
        sctp = self.pc.sctp
        try:
            conn = sctp.transport.transport._connection  # type: ignore[union-attr]
            pairs = list(conn._nominated.values())
        except AttributeError:
            pairs = []
        if pairs:
            relay = any("relay" in (p.local_candidate.type, p.remote_candidate.type) for p in pairs)
            self._via = "turn" if relay else "direct"
        return self._via

    def send(self, data: bytes) -> None:
        if self._dead.is_set() or self._channel is None:
            raise PeerGone("channel closed")
        try:
            self._channel.send(data)
        except Exception as exc:  # aiortc raises InvalidStateError and others when closing
            raise PeerGone(f"send failed: {exc}") from exc

    async def drain(self) -> None:
        ch = self._channel
        if ch is None or ch.bufferedAmount <= self._high:
            return
        low = asyncio.Event()
        ch.once("bufferedamountlow", low.set)
        while ch.bufferedAmount > self._high // 2 and not self._dead.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await low.wait()
            low.clear()
            if ch.bufferedAmount > self._high // 2:
                ch.once("bufferedamountlow", low.set)
        if self._dead.is_set():
            raise PeerGone("channel closed while sending")

    def recv_nowait(self) -> bytes | None:
        """The next message if one is queued, else None (raises like :meth:`recv`)."""
        if self._queue.empty():
            return None
        item = self._queue.get_nowait()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)
            raise PeerGone("channel closed")
        if isinstance(item, Exception):
            raise item
        assert isinstance(item, bytes)
        return item

    async def recv(self) -> bytes:
        item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)
            raise PeerGone("channel closed")
        if isinstance(item, Exception):
            raise item
        assert isinstance(item, bytes)
        return item

    async def flush_and_close(self, within: float = 5.0) -> None:
        """Wait (bounded) until the peer acknowledged everything queued, then close.

        A zero ``bufferedAmount`` only means the records reached SCTP's queues; closing
        then can lose the last ones (a Ctrl-C's ERROR record), so the SCTP association's
        unsent and unacknowledged chunks are waited for too.
        """
        ch = self._channel
        if ch is not None and not self._dead.is_set():
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within
            # no event fires at 'fully delivered', so poll briefly
            while (ch.bufferedAmount > 0 or self._sctp_backlog()) and not self._dead.is_set():
                if loop.time() >= deadline:
                    break
                await asyncio.sleep(0.02)
        await self.close()

    def _sctp_backlog(self) -> bool:
        """Whether SCTP still holds chunks not acknowledged by the peer (aiortc internals,
        read defensively: an aiortc without them counts as delivered)."""
        sctp = self.pc.sctp
        if sctp is None:
            return False
        return bool(getattr(sctp, "_outbound_queue", ())) or bool(getattr(sctp, "_sent_queue", ()))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _ = self.via  # remember the selected pair before aioice forgets it
        with contextlib.suppress(Exception):
            await self.pc.close()
        self._mark_dead()
