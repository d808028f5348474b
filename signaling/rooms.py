"""Pure core of the signaling server: connections, rooms, nameplates, limits.

``docs/protocol.md`` § Signaling is the spec. This module does no I/O: the shim
(:mod:`signaling.server`) feeds it frames and the current time, and performs the
:data:`Action` values it returns, in order. Randomness comes in through ``randbelow``.

Room life::

    allocate ──► WAITING (1 member, deadline = now + nameplate_ttl)
    join     ──► PAIRED  (2 members, deadline = now + room_ttl; nameplate burned for joins)
    close / member gone / deadline / too many messages ──► removed, nameplate "recently used"

A removed room is never found again; its nameplate is not handed out again for ``reuse_after``
seconds. A connection that was in a room is closed by the server when the room ends, so a
connection holds at most one room in its whole life.

Call sequentially; not thread-safe. Bad client input never raises: it yields an ``error`` frame
(and, for protocol violations, a close). Misuse by the shim raises :class:`LocalProtocolError`.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from signaling.ice import IceServer
from signaling.messages import (
    Allocate,
    Allocated,
    Close,
    Error,
    ErrorCode,
    Expired,
    Join,
    Joined,
    MalformedFrame,
    Msg,
    PeerClosed,
    PeerGone,
    PeerJoined,
    Ping,
    Pong,
    Rendezvous,
    ServerMessage,
    Unknown,
    parse_client,
)

__all__ = [
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "Action",
    "CloseConnection",
    "Hub",
    "LocalProtocolError",
    "SendFrame",
    "Stats",
    "client_key",
]

logger = logging.getLogger("scanbeam.signaling")

CLOSE_NORMAL: Final = 1000
CLOSE_POLICY: Final = 1008
RATE_WINDOW: Final = 60.0
"""Seconds over which failed joins are counted."""
UNKNOWN_NAMEPLATE_DETAIL: Final = "This code is unknown, expired or already used."
_MIN_DIGITS: Final = 3


def client_key(ip: str) -> str:
    """The rate-limit bucket of a client address (see :meth:`Hub.connect`)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class LocalProtocolError(Exception):
    """The caller (the shim) misused the hub, e.g. fed an unknown connection id."""


@dataclass(frozen=True, slots=True)
class SendFrame:
    """Send ``message`` on connection ``conn``."""

    conn: int
    message: ServerMessage


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close connection ``conn`` with a WebSocket close ``code``, after the frames before it."""

    conn: int
    code: int
    reason: str = ""


Action = SendFrame | CloseConnection


@dataclass(frozen=True, slots=True)
class Stats:
    """Sizes of the hub's tables (for logs, tests and monitoring; no nameplates)."""

    connections: int
    rooms: int
    waiting: int
    paired: int
    recent_nameplates: int
    tracked_ips: int


class _ConnState(enum.Enum):
    IDLE = "idle"  # no room yet: may allocate or join
    ALLOCATED = "allocated"  # alone in a WAITING room it allocated
    PAIRED = "paired"  # in a room with two members
    CLOSED = "closed"  # the hub asked to close it; input is ignored


@dataclass(slots=True, eq=False)
class _Conn:
    id: int
    ip: str
    state: _ConnState = _ConnState.IDLE
    room: _Room | None = None


@dataclass(slots=True, eq=False)
class _Room:
    nameplate: str
    members: list[_Conn]
    deadline: float
    msgs: int = 0
    ice: tuple[IceServer, ...] = ()

    @property
    def paired(self) -> bool:
        return len(self.members) == 2


class Hub:
    """All rooms of one signaling server.

    Args:
        randbelow: ``randbelow(n)`` returns a uniform int in ``[0, n)``; the shim passes
            ``secrets.randbelow``.
        nameplate_ttl: Seconds a WAITING room lives.
        room_ttl: Seconds a PAIRED room lives, counted from the join.
        max_rooms: Open rooms at most; more allocations get ``busy``.
        max_msgs_per_room: ``msg`` frames per room; the next one ends the room.
        join_failures_per_minute: Failed joins (unknown nameplate or crowded) per IP within
            60 s after which further joins from that IP get ``rate-limited``.
        reuse_after: Seconds before a released nameplate may be allocated again.
        max_recent: Bound on remembered released nameplates (oldest forgotten first).
        ice: Called once per room for the STUN/TURN servers handed out in ``allocated`` and
            ``joined`` (the shim mints a TURN credential with the wall clock and ``secrets``,
            see :func:`signaling.ice.mint`). None: hand out nothing.
    """

    def __init__(
        self,
        *,
        randbelow: Callable[[int], int],
        nameplate_ttl: float = 600.0,
        room_ttl: float = 3600.0,
        max_rooms: int = 10_000,
        max_msgs_per_room: int = 200,
        join_failures_per_minute: int = 20,
        reuse_after: float = 3600.0,
        max_recent: int = 100_000,
        ice: Callable[[], tuple[IceServer, ...]] | None = None,
    ) -> None:
        self._randbelow = randbelow
        self._ice = ice
        self._nameplate_ttl = nameplate_ttl
        self._room_ttl = room_ttl
        self._max_rooms = max_rooms
        self._max_msgs = max_msgs_per_room
        self._max_failures = join_failures_per_minute
        self._reuse_after = reuse_after
        self._max_recent = max_recent
        self._next_id = 1
        self._conns: dict[int, _Conn] = {}
        self._rooms: dict[str, _Room] = {}
        self._recent: OrderedDict[str, float] = OrderedDict()  # nameplate -> release time
        self._failures: dict[str, deque[float]] = {}

    # -- inputs -----------------------------------------------------------------------------

    def connect(self, ip: str) -> int:
        """Register a new WebSocket connection from ``ip``; returns its id.

        Rate limits count per IPv4 address and per IPv6 /64 (one host usually owns a whole
        /64); an IPv4-mapped IPv6 address counts as its IPv4 address.
        """
        conn = _Conn(self._next_id, client_key(ip))
        self._next_id += 1
        self._conns[conn.id] = conn
        return conn.id

    def receive(self, conn_id: int, data: str | bytes, now: float) -> list[Action]:
        """Feed one frame received on ``conn_id``. Never raises on bad input.

        Raises:
            LocalProtocolError: ``conn_id`` is not connected.
        """
        conn = self._conn(conn_id)
        if conn.state is _ConnState.CLOSED:
            return []
        try:
            message = parse_client(data)
        except MalformedFrame as exc:
            logger.info("malformed frame; closing connection")
            return self._reject(conn, ErrorCode.MALFORMED, exc.detail, close_at=now)
        if isinstance(message, Allocate):
            return self._allocate(conn, now)
        if isinstance(message, Join):
            return self._join(conn, message.nameplate, now)
        if isinstance(message, Msg):
            return self._msg(conn, message.body, now)
        if isinstance(message, Close):
            return self._close(conn, message.mood, now)
        if isinstance(message, Ping):
            return [SendFrame(conn.id, Pong())]
        if isinstance(message, Rendezvous):
            return self._rendezvous(conn, message.id, now)
        assert isinstance(message, Unknown)
        return self._reject(conn, ErrorCode.UNKNOWN_TYPE, "Unknown message type.")

    def disconnect(self, conn_id: int, now: float) -> list[Action]:
        """The WebSocket of ``conn_id`` is gone (for whatever reason). Forgets it.

        Raises:
            LocalProtocolError: ``conn_id`` is not connected.
        """
        conn = self._conn(conn_id)
        del self._conns[conn_id]
        room = conn.room
        if room is None:
            return []
        logger.info("member gone (rooms=%d)", len(self._rooms) - 1)
        return self._end_room(room, now, lambda _: [PeerGone()], skip=conn)

    def prune(self, now: float) -> list[Action]:
        """Expire rooms past their deadline and forget stale nameplates and IP counters."""
        actions: list[Action] = []
        for room in [r for r in self._rooms.values() if now >= r.deadline]:
            actions += self._expire(room, now)
        while self._recent:
            nameplate, released = next(iter(self._recent.items()))
            if released > now - self._reuse_after:
                break
            del self._recent[nameplate]
        stale = [ip for ip, times in self._failures.items() if times[-1] <= now - RATE_WINDOW]
        for ip in stale:
            del self._failures[ip]
        return actions

    @property
    def stats(self) -> Stats:
        """Current table sizes."""
        paired = sum(1 for room in self._rooms.values() if room.paired)
        return Stats(
            connections=len(self._conns),
            rooms=len(self._rooms),
            waiting=len(self._rooms) - paired,
            paired=paired,
            recent_nameplates=len(self._recent),
            tracked_ips=len(self._failures),
        )

    # -- requests ---------------------------------------------------------------------------

    def _allocate(self, conn: _Conn, now: float) -> list[Action]:
        if conn.state is not _ConnState.IDLE:
            return self._reject(conn, ErrorCode.BAD_STATE, "This connection already has a room.")
        if len(self._rooms) >= self._max_rooms:
            logger.warning("room limit reached (rooms=%d)", len(self._rooms))
            return self._reject(conn, ErrorCode.BUSY, "The server is busy; try again later.")
        nameplate = self._new_nameplate()
        room = _Room(nameplate, [conn], deadline=now + self._nameplate_ttl)
        if self._ice is not None:
            room.ice = self._ice()  # one TURN credential per room, for both members
        self._rooms[nameplate] = room
        conn.state, conn.room = _ConnState.ALLOCATED, room
        logger.info("room allocated (rooms=%d)", len(self._rooms))
        logger.debug("allocated nameplate %s", nameplate)
        expires_in = math.ceil(self._nameplate_ttl)
        return [SendFrame(conn.id, Allocated(nameplate, expires_in, room.ice))]

    def _join(self, conn: _Conn, nameplate: str, now: float) -> list[Action]:
        if conn.state is not _ConnState.IDLE:
            return self._reject(conn, ErrorCode.BAD_STATE, "This connection already has a room.")
        if self._rate_limited(conn.ip, now):
            logger.warning("join rate limit hit; closing connection")
            return self._reject(
                conn,
                ErrorCode.RATE_LIMITED,
                "Too many failed attempts; wait a minute and try again.",
                close_at=now,
            )
        actions: list[Action] = []
        room = self._rooms.get(nameplate)
        if room is not None and now >= room.deadline:
            actions += self._expire(room, now)  # the sweep has not run yet
            room = None
        if room is None:
            self._record_failure(conn.ip, now)
            logger.info("join to unknown nameplate")
            return actions + self._reject(
                conn, ErrorCode.UNKNOWN_NAMEPLATE, UNKNOWN_NAMEPLATE_DETAIL
            )
        if room.paired:
            self._record_failure(conn.ip, now)
            logger.info("join to a full room")
            return self._reject(conn, ErrorCode.CROWDED, "This room already has two members.")
        owner = room.members[0]
        room.members.append(conn)
        room.deadline = now + self._room_ttl
        conn.state, conn.room = _ConnState.PAIRED, room
        owner.state = _ConnState.PAIRED
        logger.info("room paired (rooms=%d)", len(self._rooms))
        logger.debug("paired nameplate %s", nameplate)
        return [SendFrame(conn.id, Joined(room.ice)), SendFrame(owner.id, PeerJoined())]

    def _rendezvous(self, conn: _Conn, rid: str, now: float) -> list[Action]:
        """Protocol v2 reconnection (docs/protocol.md §10.3): the first connection with an id
        waits in a room named by it, the second one with the same id pairs with it. The id
        is never a nameplate (it starts with "~"), never rate-limited (128 random-looking
        bits cannot be guessed) and may be used again once its room ended."""
        if conn.state is not _ConnState.IDLE:
            return self._reject(conn, ErrorCode.BAD_STATE, "This connection already has a room.")
        key = "~" + rid
        actions: list[Action] = []
        room = self._rooms.get(key)
        if room is not None and now >= room.deadline:
            actions += self._expire(room, now)
            room = None
        if room is None:
            if len(self._rooms) >= self._max_rooms:
                return self._reject(conn, ErrorCode.BUSY, "The server is busy; try again later.")
            room = _Room(key, [conn], deadline=now + self._nameplate_ttl)
            if self._ice is not None:  # fresh TURN credentials for the round, for both
                room.ice = self._ice()
            self._rooms[key] = room
            conn.state, conn.room = _ConnState.ALLOCATED, room
            logger.info("rendezvous waiting (rooms=%d)", len(self._rooms))
            return [*actions, SendFrame(conn.id, Joined(room.ice))]
        if room.paired:
            return self._reject(conn, ErrorCode.CROWDED, "This room already has two members.")
        owner = room.members[0]
        room.members.append(conn)
        room.deadline = now + self._room_ttl
        conn.state, conn.room = _ConnState.PAIRED, room
        owner.state = _ConnState.PAIRED
        logger.info("rendezvous paired (rooms=%d)", len(self._rooms))
        return [
            *actions,
            SendFrame(conn.id, Joined(room.ice)),
            SendFrame(conn.id, PeerJoined()),
            SendFrame(owner.id, PeerJoined()),
        ]

    def _msg(self, conn: _Conn, body: str, now: float) -> list[Action]:
        room = conn.room
        if room is None:
            return self._reject(conn, ErrorCode.BAD_STATE, "Allocate or join a room first.")
        if now >= room.deadline:
            return self._expire(room, now)
        if not room.paired:
            return self._reject(conn, ErrorCode.NO_PEER, "The other side has not joined yet.")
        room.msgs += 1
        if room.msgs > self._max_msgs:
            logger.warning("room message limit hit; closing room")
            error = Error(ErrorCode.TOO_MANY_MESSAGES, "This room carried too many messages.")
            return self._end_room(room, now, lambda _: [error], code=CLOSE_POLICY)
        (other,) = (m for m in room.members if m is not conn)
        return [SendFrame(other.id, Msg(body))]

    def _close(self, conn: _Conn, mood: str, now: float) -> list[Action]:
        room = conn.room
        if room is None:
            conn.state = _ConnState.CLOSED
            return [CloseConnection(conn.id, CLOSE_NORMAL)]
        logger.info("room closed by a member (mood=%s, rooms=%d)", mood, len(self._rooms) - 1)

        def notify(member: _Conn) -> list[ServerMessage]:
            return [] if member is conn else [PeerClosed(mood)]

        return self._end_room(room, now, notify)

    # -- helpers ----------------------------------------------------------------------------

    def _conn(self, conn_id: int) -> _Conn:
        conn = self._conns.get(conn_id)
        if conn is None:
            raise LocalProtocolError(f"unknown connection id {conn_id}")
        return conn

    def _reject(
        self, conn: _Conn, code: ErrorCode, detail: str, *, close_at: float | None = None
    ) -> list[Action]:
        """Answer ``error``; with ``close_at`` (the current time) also drop the connection."""
        actions: list[Action] = [SendFrame(conn.id, Error(code, detail))]
        if close_at is not None:
            room = conn.room
            if room is not None:  # burn it: the peer sees peer-gone
                actions += self._end_room(room, close_at, lambda _: [PeerGone()], skip=conn)
            conn.state, conn.room = _ConnState.CLOSED, None
            actions.append(CloseConnection(conn.id, CLOSE_POLICY))
        return actions

    def _expire(self, room: _Room, now: float) -> list[Action]:
        logger.info("room expired (paired=%s, rooms=%d)", room.paired, len(self._rooms) - 1)
        return self._end_room(room, now, lambda _: [Expired()])

    def _end_room(
        self,
        room: _Room,
        now: float,
        notify: Callable[[_Conn], list[ServerMessage]],
        *,
        skip: _Conn | None = None,
        code: int = CLOSE_NORMAL,
    ) -> list[Action]:
        """Remove ``room``; tell and close every member except ``skip``."""
        del self._rooms[room.nameplate]
        if not room.nameplate.startswith("~"):  # rendezvous ids are not nameplates
            self._remember(room.nameplate, now)
        actions: list[Action] = []
        for member in room.members:
            member.room = None
            if member is skip:
                continue
            member.state = _ConnState.CLOSED
            actions += [SendFrame(member.id, message) for message in notify(member)]
            actions.append(CloseConnection(member.id, code))
        return actions

    def _remember(self, nameplate: str, now: float) -> None:
        self._recent[nameplate] = now
        self._recent.move_to_end(nameplate)
        while len(self._recent) > self._max_recent:
            self._recent.popitem(last=False)

    def _new_nameplate(self) -> str:
        """A random decimal nameplate that is neither in use nor recently used.

        Three digits at most while fewer than 500 nameplates are taken; one digit more each
        time the pool would be at least half taken, so a random pick succeeds quickly.
        """
        taken = len(self._rooms) + len(self._recent)
        digits = _MIN_DIGITS
        while 2 * taken >= 10**digits:
            digits += 1
        size = 10**digits - 1  # candidates are 1 .. 10**digits - 1
        pick = self._randbelow(size)
        for _ in range(32):
            candidate = str(pick + 1)
            if candidate not in self._rooms and candidate not in self._recent:
                return candidate
            pick = self._randbelow(size)
        # Unlucky (or a bad random source): probe on from the last pick. At least half the
        # pool is free, so this ends.
        for step in range(size):
            candidate = str((pick + step) % size + 1)
            if candidate not in self._rooms and candidate not in self._recent:
                return candidate
        raise AssertionError("nameplate pool exhausted")  # pragma: no cover

    def _rate_limited(self, ip: str, now: float) -> bool:
        times = self._failures.get(ip)
        if times is None:
            return False
        while times and times[0] <= now - RATE_WINDOW:
            times.popleft()
        if not times:
            del self._failures[ip]
            return False
        return len(times) >= self._max_failures

    def _record_failure(self, ip: str, now: float) -> None:
        times = self._failures.setdefault(ip, deque(maxlen=self._max_failures))
        times.append(now)
