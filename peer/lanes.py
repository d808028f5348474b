"""Protocol v2 paths (docs/protocol.md §10): lanes that carry the same sealed records, and
the two multiplexers the transfer loops use instead of one data channel.

- :class:`DcLane`: the WebRTC data channel (:class:`peer.rtc.RtcLink`).
- :class:`TcpLane`: a direct TCP connection between two CLI peers, opened by
  :class:`TcpLanes` after a mutual proof of the lane key (``u32 length ‖ message`` frames).
- :class:`PipeLane`: the relay's live pipe (``/v1/pipe/<id>``, WebSocket binary messages).
- :class:`SenderLanes`: sends on one lane at a time, measures its throughput and moves the
  rest of the transfer to a faster lane (START/END markers keep the record order); orders
  the receiver's control records by seq.
- :class:`ReceiverLanes`: merges the lanes back into the sender's order
  (:class:`peer.proto.paths.Merger`) and answers on the lane it last took records from.

Both multiplexers have the interface of :class:`peer.rtc.RtcLink` that ``peer.session``'s
transfer loops use (send, drain, recv, recv_nowait, flush_and_close, close, via).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peer import warm
from peer.errors import PeerGone, RemoteProtocolError
from peer.proto.paths import (
    LANE_MAGIC,
    MAX_FRAME,
    NONCE_SIZE,
    PROOF_SIZE,
    MarkerKind,
    Merger,
    SeqOrder,
    check_proof,
    decode_length,
    marker,
    proof,
)
from peer.proto.records import RecordType
from peer.rtc import RtcLink

if TYPE_CHECKING:  # aiohttp is imported on first use (`peer.warm`)
    import aiohttp

__all__ = [
    "PROBE_BYTES",
    "PROBE_SECONDS",
    "REPROBE_MAX_SECONDS",
    "REPROBE_SECONDS",
    "SWITCH_RATIO",
    "DcLane",
    "Lane",
    "PipeLane",
    "ReceiverLanes",
    "SenderLanes",
    "TcpLane",
    "TcpLanes",
    "connect_pipe",
    "local_addresses",
]

log = logging.getLogger("scanbeam.lanes")

# Moving to the fastest path (docs/protocol.md §10.4, README "Paths"):
PROBE_SECONDS = 1.5  # measure a lane this long ...
PROBE_BYTES = 16 * 1024 * 1024  # ... or until this much went through it, whichever first
MIN_PROBE_SECONDS = 0.25  # but never shorter than this
SWITCH_RATIO = 1.3  # a probed lane keeps the transfer only when this much faster
EARLY_RATIO = 2.0  # a probe ends early when the lane is this much slower than the baseline
REPROBE_SECONDS = 20.0  # a slower lane is probed again after this long, doubled after each
REPROBE_MAX_SECONDS = 160.0  # further lost probe in a row up to this
RECHECK_SECONDS = 3.0  # ... or this long, when its last rate says it might win (§10.2)
AUTH_TIMEOUT = 5.0  # a TCP lane's proofs must be done within this
MAX_HANDSHAKES = 16  # inbound TCP lane handshakes in progress at once
DEATH_GRACE = 1.0  # seconds the sender still listens on other lanes after its lane closed
PROBE_HIGH_WATER = 256 * 1024  # data channel bytes queued while it is probed
PROBE_STALL = 0.5  # a probed lane whose drain blocks this long is given up at once
TCP_HIGH_WATER = 1 << 20  # bytes queued on a TCP or pipe lane before drain() waits
# a TCP lane's read buffer: asyncio's default (64 KiB, reading paused at twice that) would
# pause and resume the socket every other record
TCP_READ_LIMIT = 1 << 20
# The fastest a data channel is expected to go: aiortc's SCTP is CPU-bound in Python at
# ~20 MB/s, ~35-40 MB/s with uvloop (2-core reference machine); this leaves room for faster ones.
# It would need SWITCH_RATIO times the current lane's rate to win: above DC_CEILING /
# SWITCH_RATIO (46 MB/s) probing it only costs.
DC_CEILING = 60e6


class LaneSink:
    """Where a lane delivers what it receives (implemented by the multiplexers)."""

    def lane_message(self, lane: Lane, data: bytes) -> None:
        raise NotImplementedError

    def lane_dead(self, lane: Lane) -> None:
        raise NotImplementedError


class Lane:
    """One path to the peer that carries whole messages (records and lane markers)."""

    #: bytes/s this kind of lane cannot beat (`DC_CEILING` for a data channel): it is not
    #: probed while `SWITCH_RATIO` times the current lane's rate is above this
    ceiling: float = math.inf

    def __init__(self, name: str) -> None:
        self.name = name
        self.dead = False
        self.sink: LaneSink | None = None

    def attach(self, sink: LaneSink) -> None:
        self.sink = sink

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        raise NotImplementedError

    async def flush_and_close(self, within: float) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def probing(self, on: bool) -> None:
        """While a lane is being probed, keep less queued on it (a slow lane's backlog must
        drain before the transfer can go back to the faster one)."""

    def _deliver(self, data: bytes) -> None:
        if self.sink is not None and not self.dead:
            self.sink.lane_message(self, data)

    def _die(self) -> None:
        if not self.dead:
            self.dead = True
            if self.sink is not None:
                self.sink.lane_dead(self)


class DcLane(Lane):
    """The data channel as a lane; its name is "direct" or "turn"."""

    ceiling = DC_CEILING

    def __init__(self, link: RtcLink) -> None:
        super().__init__(link.via)
        self.link = link
        self._high = link.high_water

    def probing(self, on: bool) -> None:
        self.link.high_water = min(self._high, PROBE_HIGH_WATER) if on else self._high

    def attach(self, sink: LaneSink) -> None:
        super().attach(sink)
        self.link.set_sink(self._deliver, self._die)

    def send(self, data: bytes) -> None:
        self.link.send(data)

    async def drain(self) -> None:
        await self.link.drain()

    async def flush_and_close(self, within: float) -> None:
        await self.link.flush_and_close(within)

    async def close(self) -> None:
        await self.link.close()


class TcpLane(Lane):
    """An authenticated TCP connection: ``u32 length ‖ message`` frames both ways."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__("tcp")
        self._reader = reader
        self._writer = writer
        self._task: asyncio.Task[None] | None = None
        writer.transport.set_write_buffer_limits(high=TCP_HIGH_WATER)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def peer(self) -> Any:
        return self._writer.get_extra_info("peername")

    def attach(self, sink: LaneSink) -> None:
        super().attach(sink)
        if self._task is None:
            self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                n = decode_length(await self._reader.readexactly(4))
                self._deliver(await self._reader.readexactly(n))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, RemoteProtocolError):
            pass
        finally:
            self._die()
            if self._reader.at_eof():
                self._writer.close()  # the peer ended its side: end ours

    def send(self, data: bytes) -> None:
        if self.dead or self._writer.is_closing():
            raise PeerGone("tcp lane closed")
        if len(data) > MAX_FRAME:
            raise ValueError("lane message too large")
        # one write: two would send the 4-byte length as a packet of its own (TCP_NODELAY)
        # and cost a second system call per record
        self._writer.write(len(data).to_bytes(4, "big") + data)

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, OSError):
            self._die()
            raise PeerGone("tcp lane closed while sending") from None

    async def flush_and_close(self, within: float) -> None:
        """Send what is queued, then end our side and wait (bounded) for the peer to end
        its side: closing at once with unread data would reset the connection and could
        destroy our last records in the peer's buffers."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(within):
                await self._writer.drain()
                if self._writer.can_write_eof():
                    self._writer.write_eof()
                if self._task is not None:
                    await asyncio.shield(self._task)
        await self.close()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._die()


def local_addresses(limit: int = 8) -> list[str]:
    """This computer's non-loopback, non-link-local addresses (IPv4 first)."""
    import ifaddr

    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                continue
            if addr.is_loopback or addr.is_link_local or addr.is_multicast:
                continue
            if text not in found:
                found.append(text)
    found.sort(key=lambda a: ":" in a)
    return found[:limit]


class TcpLanes:
    """Listens for and opens TCP lanes; each authenticated connection goes to ``on_lane``.

    Proofs (docs/protocol.md §10.1): the connector sends ``MAGIC ‖ nonce_c``, the
    listener ``MAGIC ‖ nonce_l ‖ proof("L")``, the connector ``proof("C")``. Anything else,
    or nothing within :data:`AUTH_TIMEOUT`, closes the connection.
    """

    def __init__(self, key: bytes, on_lane: Callable[[TcpLane], None]) -> None:
        self._key = key
        self._on_lane = on_lane
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshakes = 0
        self.rejected = 0

    async def listen(self, addresses: Sequence[str] | None = None) -> list[list[Any]]:
        """Listen on an ephemeral port of each address; returns ``[[ip, port], ...]``."""
        out: list[list[Any]] = []
        for ip in local_addresses() if addresses is None else addresses:
            try:
                server = await asyncio.start_server(self._accept, ip, 0, limit=TCP_READ_LIMIT)
            except OSError as exc:
                log.debug("cannot listen on an address: %s", type(exc).__name__)
                continue
            self._servers.append(server)
            port = server.sockets[0].getsockname()[1]
            out.append([ip, port])
        return out

    def connect_all(self, addresses: object) -> None:
        """Try every ``[ip, port]`` of the peer's (untrusted) list in the background."""
        if not isinstance(addresses, list):
            return
        for item in addresses[:8]:
            if (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], str)
                and isinstance(item[1], int)
                and 0 < item[1] < 65536
            ):
                try:
                    ipaddress.ip_address(item[0])
                except ValueError:
                    continue
                self._spawn(self._connect(item[0], item[1]))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._handshakes >= MAX_HANDSHAKES:  # someone floods the port: refuse at once
            await self._reject(writer, "inbound, too many at once")
            return
        self._handshakes += 1
        try:
            await self._accept_one(reader, writer)
        finally:
            self._handshakes -= 1

    async def _accept_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(AUTH_TIMEOUT):
                hello = await reader.readexactly(len(LANE_MAGIC) + NONCE_SIZE)
                if hello[: len(LANE_MAGIC)] != LANE_MAGIC:
                    raise ValueError("not a lane")
                nonce_c = hello[len(LANE_MAGIC) :]
                nonce_l = os.urandom(NONCE_SIZE)
                writer.write(LANE_MAGIC + nonce_l + proof(self._key, b"L", nonce_c, nonce_l))
                await writer.drain()
                got = await reader.readexactly(PROOF_SIZE)
                if not check_proof(self._key, b"C", nonce_c, nonce_l, got):
                    raise ValueError("wrong proof")
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, ConnectionError, OSError):
            await self._reject(writer, "inbound")
            return
        self._on_lane(TcpLane(reader, writer))

    async def _connect(self, ip: str, port: int) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(AUTH_TIMEOUT):
                reader, writer = await asyncio.open_connection(ip, port, limit=TCP_READ_LIMIT)
                nonce_c = os.urandom(NONCE_SIZE)
                writer.write(LANE_MAGIC + nonce_c)
                await writer.drain()
                answer = await reader.readexactly(len(LANE_MAGIC) + NONCE_SIZE + PROOF_SIZE)
                if answer[: len(LANE_MAGIC)] != LANE_MAGIC:
                    raise ValueError("not a lane")
                nonce_l = answer[len(LANE_MAGIC) : len(LANE_MAGIC) + NONCE_SIZE]
                got = answer[len(LANE_MAGIC) + NONCE_SIZE :]
                if not check_proof(self._key, b"L", nonce_c, nonce_l, got):
                    raise ValueError("wrong proof")
                writer.write(proof(self._key, b"C", nonce_c, nonce_l))
                await writer.drain()
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, ConnectionError, OSError):
            if writer is not None:
                await self._reject(writer, "outbound")
            return
        self._on_lane(TcpLane(reader, writer))

    async def _reject(self, writer: asyncio.StreamWriter, way: str) -> None:
        self.rejected += 1
        log.info("a TCP lane connection (%s) failed authentication or timed out", way)
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()

    async def close(self) -> None:
        """Stop listening and connecting (lanes already handed out stay open)."""
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        self._servers.clear()


def pipe_url(server: str, pid: str) -> str:
    base = server.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return f"{base}/v1/pipe/{pid}"


class PipeLane(Lane):
    """The relay's live pipe as a lane (one WebSocket binary message per lane message)."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        super().__init__("pipe")
        self._session = session
        self._ws = ws
        self._out: deque[bytes] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._reader: asyncio.Task[None] | None = None
        self._writer = asyncio.ensure_future(self._write())

    def attach(self, sink: LaneSink) -> None:
        super().attach(sink)
        if self._reader is None:
            self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        import aiohttp

        try:
            async for msg in self._ws:
                if msg.type is not aiohttp.WSMsgType.BINARY:
                    break
                self._deliver(msg.data)
        except (aiohttp.ClientError, ConnectionError, OSError):
            pass
        finally:
            self._die()
            self._drained.set()

    async def _write(self) -> None:
        import aiohttp

        try:
            while True:
                while self._out:
                    data = self._out.popleft()
                    await self._ws.send_bytes(data)
                    self._queued -= len(data)
                    if self._queued <= TCP_HIGH_WATER // 2:
                        self._drained.set()
                self._wake.clear()
                await self._wake.wait()
        except (aiohttp.ClientError, ConnectionError, OSError, RuntimeError):
            self._die()
            self._drained.set()

    def send(self, data: bytes) -> None:
        if self.dead or self._ws.closed:
            raise PeerGone("pipe closed")
        self._out.append(data)
        self._queued += len(data)
        if self._queued > TCP_HIGH_WATER:
            self._drained.clear()
        self._wake.set()

    async def drain(self) -> None:
        while self._queued > TCP_HIGH_WATER and not self.dead:
            await self._drained.wait()
            if self._queued > TCP_HIGH_WATER:
                self._drained.clear()
        if self.dead:
            raise PeerGone("pipe closed while sending")

    async def flush_and_close(self, within: float) -> None:
        deadline = time.monotonic() + within
        while (self._out or self._queued > 0) and not self.dead and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        await self.close()

    async def close(self) -> None:
        self._writer.cancel()
        with contextlib.suppress(BaseException):
            await self._ws.close()
        with contextlib.suppress(BaseException):
            await self._session.close()
        for task in (self._reader, self._writer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._die()


async def connect_pipe(server: str, pid: str, within: float) -> PipeLane | None:
    """Open the relay pipe ``pid`` and wait (bounded) until the peer is on it; None when the
    server has no pipe, refuses, or the peer does not come."""
    await warm.ready("aiohttp")
    import aiohttp

    session = aiohttp.ClientSession()
    try:
        async with asyncio.timeout(within):
            ws = await session.ws_connect(
                pipe_url(server, pid), max_msg_size=MAX_FRAME, heartbeat=20.0, compress=0
            )
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT or msg.data != "paired":
                await ws.close()
                raise ValueError("pipe not paired")
    except (TimeoutError, ValueError, aiohttp.ClientError, ConnectionError, OSError) as exc:
        log.info("relay pipe not available (%s)", type(exc).__name__)
        await session.close()
        return None
    except BaseException:
        await session.close()
        raise
    return PipeLane(session, ws)


@dataclass
class _Meter:
    sent: int = 0
    rate: float = 0.0  # the last measurement, bytes/s
    prev: float = 0.0  # the one before it
    probed: float | None = None
    losses: int = 0  # comparisons lost in a row (a hopeless one counts twice)
    streak: int = 0  # probes lost in a row: the periodic re-probe backs off

    @property
    def steady(self) -> float:
        """The better of the last two measurements: one slow window (a pause of the peer, a
        burst of other work on the machine) does not make the current lane look slow."""
        return max(self.rate, self.prev)


class _Mux(LaneSink):
    def __init__(self) -> None:
        self.lanes: list[Lane] = []
        self.bytes: dict[Lane, int] = {}
        self._ready: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._error: BaseException | None = None
        self._closed = False

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wake.set()

    def recv_nowait(self) -> bytes | None:
        if self._ready:
            return self._ready.popleft()
        if self._error is not None:
            raise self._error
        return None

    async def recv(self) -> bytes:
        while True:
            data = self.recv_nowait()
            if data is not None:
                return data
            self._wake.clear()
            await self._wake.wait()

    @property
    def paths(self) -> list[tuple[str, int]]:
        """Bytes per lane name (lanes of the same name added up), in first-use order."""
        out: dict[str, int] = {}
        for lane in self.lanes:
            if self.bytes.get(lane):
                out[lane.name] = out.get(lane.name, 0) + self.bytes[lane]
        return list(out.items())

    async def close(self) -> None:
        self._closed = True
        for lane in self.lanes:
            with contextlib.suppress(Exception):
                await lane.close()


class SenderLanes(_Mux):
    """The sender's side of several lanes (docs/protocol.md §10.4)."""

    def __init__(self, on_switch: Callable[[str, str], None] | None = None) -> None:
        super().__init__()
        self.current: Lane | None = None
        self._order = SeqOrder()
        self._gen = 0
        self._meters: dict[Lane, _Meter] = {}
        self._clock: tuple[float, int] | None = None
        self._warm = False  # the first measurement of the transfer is a warm-up, discarded
        self._gate = 0
        self._baseline: Lane | None = None
        self._on_switch = on_switch
        self._sent_chunks: Callable[[], int] = lambda: 0
        self._released: Callable[[], int] = lambda: 0
        self.switches: list[tuple[str, str]] = []

    def bind(self, sent_chunks: Callable[[], int], released: Callable[[], int]) -> None:
        """How many CHUNK records the core sent, and how many the receiver released."""
        self._sent_chunks = sent_chunks
        self._released = released

    def add(self, lane: Lane) -> None:
        """A lane is ready; the first one carries the transfer at once."""
        if self._closed or lane.dead:
            self._spawn_close(lane)
            return
        if lane.name == "tcp" and any(x.name == "tcp" and not x.dead for x in self.lanes):
            self._spawn_close(lane)  # one TCP lane is enough
            return
        lane.attach(self)
        self.lanes.append(lane)
        self._meters[lane] = _Meter()
        self.bytes[lane] = 0
        log.info("lane ready: %s", lane.name)
        if self.current is None:
            self._use(lane)

    def _spawn_close(self, lane: Lane) -> None:
        task = asyncio.ensure_future(lane.close())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    @property
    def via(self) -> str:
        return self.current.name if self.current is not None else "none"

    def lane_message(self, lane: Lane, data: bytes) -> None:
        try:
            self._ready.extend(self._order.push(data))
        except RemoteProtocolError as exc:
            self._fail(exc)
            return
        self._wake.set()

    def lane_dead(self, lane: Lane) -> None:
        log.info("lane closed: %s", lane.name)
        if all(x.dead for x in self.lanes):
            self._fail(PeerGone(f"{lane.name} lane closed"))
        elif lane is self.current:
            # the receiver's last words (an ERROR) may still be on another lane
            loop = asyncio.get_running_loop()
            loop.call_later(DEATH_GRACE, self._fail, PeerGone(f"{lane.name} lane closed"))

    def move_to(self, lane: Lane) -> None:
        """Carry the rest of the transfer on ``lane`` (an added, live lane)."""
        if lane is not self.current:
            self._use(lane)

    def _use(self, lane: Lane) -> None:
        old = self.current
        if old is not None:
            old.send(marker(MarkerKind.END, self._gen))
            self._gen += 1
        lane.send(marker(MarkerKind.START, self._gen))
        self.current = lane
        if old is not None:
            old.probing(False)
        lane.probing(self._baseline is not None)
        self._gate = self._sent_chunks()
        self._clock = None
        if old is not None:
            self.switches.append((old.name, lane.name))
            log.info("moving the transfer from %s to %s", old.name, lane.name)
            if self._on_switch is not None:
                self._on_switch(old.name, lane.name)

    def send(self, data: bytes) -> None:
        lane = self.current
        if lane is None:
            raise PeerGone("no lane")
        lane.send(data)
        self.bytes[lane] += len(data)

    async def drain(self) -> None:
        lane = self.current
        if lane is None:
            raise PeerGone("no lane")
        if self._baseline is None:
            await lane.drain()
        else:
            try:
                async with asyncio.timeout(PROBE_STALL):
                    await lane.drain()
            except TimeoutError:
                self._give_up_probe(lane, time.monotonic())  # its END follows its backlog
                return
        self._tick(time.monotonic())

    def _give_up_probe(self, lane: Lane, now: float) -> None:
        base = self._baseline
        assert base is not None
        self._baseline = None
        meter = self._meters[lane]
        meter.losses = 2  # hopeless: next probe after REPROBE_SECONDS
        meter.streak += 1
        meter.rate = meter.prev = 0.0
        meter.probed = now
        log.info("%s: stalled while probed: going back to %s", lane.name, base.name)
        lane.probing(False)
        if not base.dead:
            self._use(base)

    def _tick(self, now: float) -> None:
        lane = self.current
        assert lane is not None
        if self._clock is None:
            # measure only once the receiver processed what went before the switch
            if self._released() >= self._gate:
                self._clock = (now, self.bytes[lane])
            return
        t0, b0 = self._clock
        elapsed, moved = now - t0, self.bytes[lane] - b0
        if elapsed < MIN_PROBE_SECONDS:
            return
        base = self._baseline
        hopeless = base is not None and moved / elapsed < self._meters[base].steady / EARLY_RATIO
        if not hopeless and elapsed < PROBE_SECONDS and moved < PROBE_BYTES:
            return
        if not self._warm:
            # TCP slow start and the receiver's first files: not the lane's rate
            self._warm = True
            self._clock = (now, self.bytes[lane])
            return
        meter = self._meters[lane]
        meter.prev, meter.rate = meter.rate, moved / elapsed
        self._clock = (now, self.bytes[lane])
        if base is not None:
            self._baseline = None
            meter.prev = 0.0  # a probe's rate is its own; an older one may be stale
            if not base.dead and meter.rate < SWITCH_RATIO * self._meters[base].steady:
                meter.losses += 2 if hopeless else 1
                meter.streak += 1
                log.info(
                    "%s: %.1f MB/s, %s: %.1f MB/s: going back",
                    lane.name,
                    meter.rate / 1e6,
                    base.name,
                    self._meters[base].steady / 1e6,
                )
                self._use(base)
            else:
                lane.probing(False)
                meter.losses = meter.streak = 0
                self._meters[base].losses += 1
                self._meters[base].streak += 1
                self._meters[base].probed = now
            return
        for other in self.lanes:
            if other is lane or other.dead:
                continue
            if SWITCH_RATIO * meter.steady > other.ceiling:
                continue  # it could not win even at its best
            m = self._meters[other]
            if m.rate >= SWITCH_RATIO * meter.steady:
                wait = RECHECK_SECONDS  # this lane slowed: the other's last rate would win
            elif m.losses < 2 and m.rate >= meter.steady:
                wait = RECHECK_SECONDS  # a first close call (measurements are noisy)
            else:  # it measured slower: probing it soon only costs
                wait = min(REPROBE_SECONDS * 2 ** max(0, m.streak - 1), REPROBE_MAX_SECONDS)
            if m.probed is None or now - m.probed > wait:
                m.probed = now
                self._baseline = lane
                self._use(other)
                return

    async def flush_and_close(self, within: float = 5.0) -> None:
        self._closed = True
        if self.current is not None and not self.current.dead:
            with contextlib.suppress(Exception):
                await self.current.flush_and_close(within)
        await self.close()


class ReceiverLanes(_Mux):
    """The receiver's side of several lanes (docs/protocol.md §10.4)."""

    def __init__(self) -> None:
        super().__init__()
        self._merger: Merger[Lane] = Merger()

    def add(self, lane: Lane) -> None:
        if self._closed or lane.dead:
            task = asyncio.ensure_future(lane.close())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            return
        lane.attach(self)
        self.lanes.append(lane)
        self.bytes[lane] = 0
        log.info("lane ready: %s", lane.name)

    @property
    def via(self) -> str:
        lane = self._merger.reply_lane
        return lane.name if lane is not None else "none"

    def lane_message(self, lane: Lane, data: bytes) -> None:
        self.bytes[lane] = self.bytes.get(lane, 0) + len(data)
        try:
            self._ready.extend(self._merger.push(lane, data))
        except RemoteProtocolError as exc:
            self._fail(exc)
            return
        self._wake.set()

    def lane_dead(self, lane: Lane) -> None:
        log.info("lane closed: %s", lane.name)
        m = self._merger
        if (
            lane is m.active
            or lane is m.reply_lane
            or m.has_pending(lane)
            or all(x.dead for x in self.lanes)
        ):
            self._fail(PeerGone(f"{lane.name} lane closed"))

    def _reply(self) -> Lane:
        lane = self._merger.reply_lane
        if lane is None or lane.dead:
            lane = next((x for x in self.lanes if not x.dead), None)
        if lane is None:
            raise PeerGone("no lane")
        return lane

    def send(self, data: bytes) -> None:
        lane = self._reply()
        lane.send(data)
        if len(data) > 1 and data[1] == RecordType.ERROR:
            # the sender may be reading another lane; it must learn why before the lanes
            # close (the copies are ignored: its core has stopped)
            for other in self.lanes:
                if other is not lane and not other.dead:
                    with contextlib.suppress(PeerGone):
                        other.send(data)

    async def drain(self) -> None:
        await self._reply().drain()

    async def flush_and_close(self, within: float = 5.0) -> None:
        self._closed = True
        lane = self._merger.reply_lane
        if lane is not None and not lane.dead:
            with contextlib.suppress(Exception):
                await lane.flush_and_close(within)
        await self.close()
