"""Signaling wire messages (``docs/protocol.md`` § Signaling).

Every frame is one JSON text object ``{"v": 1, "type": "...", ...}``. This module turns frames into
typed, frozen dataclasses and back. It is pure: no I/O, no clock, no randomness. Both the server
(:mod:`signaling.rooms`) and the client (:mod:`signaling.client`) use it, so the two sides share
one definition of the schema.

Parsing rules (§ Signaling, "Frames"):

* unknown keys are ignored;
* a frame that is not JSON, not an object, has a missing or wrong ``v``, or a field of the wrong
  type raises :class:`MalformedFrame`;
* a well-formed frame whose ``type`` this side does not know parses to :class:`Unknown`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar, Final, TypeVar

from signaling.ice import IceServer, as_json, parse_ice

__all__ = [
    "MAX_BODY",
    "MAX_FRAME",
    "MOODS",
    "PROTOCOL_VERSION",
    "Allocate",
    "Allocated",
    "ClientMessage",
    "Close",
    "Error",
    "ErrorCode",
    "Expired",
    "Join",
    "Joined",
    "MalformedFrame",
    "Msg",
    "PeerClosed",
    "PeerGone",
    "PeerJoined",
    "Ping",
    "Pong",
    "Rendezvous",
    "ServerMessage",
    "Unknown",
    "encode",
    "parse_client",
    "parse_server",
]

PROTOCOL_VERSION: Final = 1
MAX_FRAME: Final = 64 * 1024
"""Largest frame either side accepts (websockets ``max_size``), in bytes."""
MAX_BODY: Final = 48 * 1024
"""Largest ``msg`` body, in UTF-8 bytes."""
MOODS: Final = frozenset({"happy", "wrong-code", "error", "declined"})
"""Allowed values of ``close.mood`` / ``peer-closed.mood``."""


class ErrorCode(StrEnum):
    """Stable ``code`` values of the server's ``error`` message (§ Signaling, "Errors")."""

    MALFORMED = "malformed"
    UNKNOWN_TYPE = "unknown-type"
    BAD_STATE = "bad-state"
    CROWDED = "crowded"
    UNKNOWN_NAMEPLATE = "unknown-nameplate"
    NO_PEER = "no-peer"
    TOO_MANY_MESSAGES = "too-many-messages"
    RATE_LIMITED = "rate-limited"
    BUSY = "busy"


class MalformedFrame(ValueError):
    """A frame that breaks the envelope or field rules. ``detail`` is safe to send back."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


# -- client -> server ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Allocate:
    """Ask for a new room; the sender becomes its first member."""

    TYPE: ClassVar[str] = "allocate"


@dataclass(frozen=True, slots=True)
class Join:
    """Join the room named by ``nameplate`` as its second member."""

    TYPE: ClassVar[str] = "join"
    nameplate: str


@dataclass(frozen=True, slots=True)
class Msg:
    """An opaque body for the other member. Used in both directions with the same shape."""

    TYPE: ClassVar[str] = "msg"
    body: str


@dataclass(frozen=True, slots=True)
class Close:
    """Leave and burn the room; ``mood`` is one of :data:`MOODS`."""

    TYPE: ClassVar[str] = "close"
    mood: str


@dataclass(frozen=True, slots=True)
class Rendezvous:
    """Meet the other peer of an earlier pairing in a room named by ``id`` (32 lower-case
    hex characters, derived by both peers from their shared secret; protocol v2 §10.3)."""

    TYPE: ClassVar[str] = "rendezvous"
    id: str


@dataclass(frozen=True, slots=True)
class Ping:
    """Application-level liveness check; answered with :class:`Pong`."""

    TYPE: ClassVar[str] = "ping"


# -- server -> client ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Allocated:
    """Answer to :class:`Allocate`."""

    TYPE: ClassVar[str] = "allocated"
    nameplate: str
    expires_in: int
    ice: tuple[IceServer, ...] = ()  # STUN/TURN servers for this room (§3, "ICE servers")


@dataclass(frozen=True, slots=True)
class Joined:
    """Answer to a successful :class:`Join`, sent to the joiner."""

    TYPE: ClassVar[str] = "joined"
    ice: tuple[IceServer, ...] = ()


@dataclass(frozen=True, slots=True)
class PeerJoined:
    """Sent to the allocator when the second member joined."""

    TYPE: ClassVar[str] = "peer-joined"


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The other member sent :class:`Close`; the room is burned."""

    TYPE: ClassVar[str] = "peer-closed"
    mood: str


@dataclass(frozen=True, slots=True)
class PeerGone:
    """The other member disconnected without :class:`Close`; the room is burned."""

    TYPE: ClassVar[str] = "peer-gone"


@dataclass(frozen=True, slots=True)
class Expired:
    """The room outlived its TTL; the server closes the connection next."""

    TYPE: ClassVar[str] = "expired"


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to :class:`Ping`."""

    TYPE: ClassVar[str] = "pong"


@dataclass(frozen=True, slots=True)
class Error:
    """A request failed. ``code`` is an :class:`ErrorCode` value (or a newer one)."""

    TYPE: ClassVar[str] = "error"
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """A well-formed frame whose ``type`` this side does not know."""

    type: str


ClientMessage = Allocate | Join | Msg | Close | Ping | Rendezvous
ServerMessage = (
    Allocated | Joined | PeerJoined | Msg | PeerClosed | PeerGone | Expired | Pong | Error
)


def encode(message: ClientMessage | ServerMessage) -> str:
    """Serialize one message to its JSON text frame.

    Non-ASCII characters are written as UTF-8, not ``\\u`` escapes, so a forwarded body is never
    larger on the way out than it was on the way in.

    Raises:
        ValueError: a string field holds a lone surrogate (cannot be sent as UTF-8).
    """
    obj: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": message.TYPE}
    for f in fields(message):
        value = getattr(message, f.name)
        if f.name == "ice":
            if value:  # absent key = no ICE servers
                obj["ice"] = as_json(value)
            continue
        obj[f.name] = str(value) if isinstance(value, str) else value
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    _check_utf8(text, "frame")
    return text


def parse_client(data: str | bytes) -> ClientMessage | Unknown:
    """Parse a frame sent by a client (what the server receives).

    Raises:
        MalformedFrame: see the module docstring. ``msg`` bodies larger than :data:`MAX_BODY`
            UTF-8 bytes and ``close`` moods outside :data:`MOODS` are malformed too.
    """
    obj, kind = _envelope(data)
    if kind == Msg.TYPE:
        body = _field(obj, "body", str)
        if len(_check_utf8(body, "body")) > MAX_BODY:
            raise MalformedFrame(f"'body' is larger than {MAX_BODY} bytes.")
        return Msg(body)
    if kind == Join.TYPE:
        return Join(_field(obj, "nameplate", str))
    if kind == Close.TYPE:
        mood = _field(obj, "mood", str)
        if mood not in MOODS:
            raise MalformedFrame("'mood' must be one of: " + ", ".join(sorted(MOODS)) + ".")
        return Close(mood)
    if kind == Allocate.TYPE:
        return Allocate()
    if kind == Rendezvous.TYPE:
        rid = _field(obj, "id", str)
        if len(rid) != 32 or any(c not in "0123456789abcdef" for c in rid):
            raise MalformedFrame("'id' must be 32 lower-case hex characters.")
        return Rendezvous(rid)
    if kind == Ping.TYPE:
        return Ping()
    return Unknown(kind)


def parse_server(data: str | bytes) -> ServerMessage | Unknown:
    """Parse a frame sent by the server (what a client receives).

    Raises:
        MalformedFrame: see the module docstring.
    """
    obj, kind = _envelope(data)
    if kind == Msg.TYPE:
        return Msg(_field(obj, "body", str))
    if kind == Allocated.TYPE:
        return Allocated(_field(obj, "nameplate", str), _field(obj, "expires_in", int), _ice(obj))
    if kind == Joined.TYPE:
        return Joined(_ice(obj))
    if kind == PeerClosed.TYPE:
        return PeerClosed(_field(obj, "mood", str))
    if kind == Error.TYPE:
        return Error(_field(obj, "code", str), _field(obj, "detail", str))
    simple = _SIMPLE_SERVER_TYPES.get(kind)
    return Unknown(kind) if simple is None else simple


_SIMPLE_SERVER_TYPES: Final[dict[str, ServerMessage]] = {
    m.TYPE: m for m in (PeerJoined(), PeerGone(), Expired(), Pong())
}


def _ice(obj: dict[str, Any]) -> tuple[IceServer, ...]:
    try:
        return parse_ice(obj.get("ice"))
    except ValueError as exc:
        raise MalformedFrame(str(exc)) from None


def _envelope(data: str | bytes) -> tuple[dict[str, Any], str]:
    if not isinstance(data, str):
        raise MalformedFrame("Binary frames are not accepted; send JSON text.")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        raise MalformedFrame("The frame is not valid JSON.") from None
    if not isinstance(obj, dict):
        raise MalformedFrame("The frame must be a JSON object.")
    version = obj.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise MalformedFrame(f"'v' must be {PROTOCOL_VERSION}.")
    return obj, _field(obj, "type", str)


_T = TypeVar("_T")


def _field(obj: dict[str, Any], name: str, kind: type[_T]) -> _T:
    value = obj.get(name)
    # ``type(...) is`` rather than isinstance: JSON true/false must not pass for an int.
    if type(value) is not kind:
        raise MalformedFrame(f"'{name}' must be a {_JSON_NAMES[kind]}.")
    return value


_JSON_NAMES: Final[dict[type, str]] = {str: "string", int: "integer"}


def _check_utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedFrame(f"'{what}' is not valid Unicode.") from None
