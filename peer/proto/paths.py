"""Protocol version 2: several paths ("lanes") for one transfer, and reconnection rounds
(docs/protocol.md §10). Pure: no I/O, no clock.

- Derivations from a pairing ``master``: the TCP lane key, the relay pipe id, and per
  reconnection round the rendezvous id and that round's master.
- The TCP lane's mutual proof of the lane key (both sides contribute a fresh nonce).
- Lane framing: ``u32 length ‖ message`` on byte streams, and the lane markers
  ``START(gen)`` / ``END(gen)`` that keep the sender's single record order across lanes.
- :class:`Merger`: the receiver's ordering of messages that arrive on several lanes.
- :class:`SeqOrder`: the sender's ordering of the receiver's control records by seq.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from nacl.bindings import sodium_memcmp

from peer.errors import RemoteProtocolError
from peer.proto.keys import kdf
from peer.proto.records import HEADER_SIZE

__all__ = [
    "LANE_MAGIC",
    "MAX_FRAME",
    "NONCE_SIZE",
    "PROOF_SIZE",
    "Marker",
    "MarkerKind",
    "Merger",
    "SeqOrder",
    "check_proof",
    "decode_length",
    "encode_frame",
    "lane_key",
    "marker",
    "parse_marker",
    "pipe_id",
    "proof",
    "rendezvous_id",
    "round_master",
]

LANE_MAGIC = b"SBLANE2\n"
NONCE_SIZE = 32
PROOF_SIZE = 32
# Largest lane message: a record of at most 256 KiB plus its header and tag.
MAX_FRAME = 256 * 1024 + 64
MAX_PENDING = 16384  # messages a receiver buffers across lanes before calling it a flood


def lane_key(master: bytes) -> bytes:
    """Key of the TCP lane proofs."""
    return kdf(master, "scanbeam v2 lane key")


def pipe_id(master: bytes) -> str:
    """The relay pipe's id (32 hex): both peers derive it, the server only pairs by it."""
    return kdf(master, "scanbeam v2 pipe id", 16).hex()


def rendezvous_id(master: bytes, round_no: int) -> str:
    """The signaling rendezvous id (32 hex) of reconnection round ``round_no`` (≥ 1)."""
    if round_no < 1:
        raise ValueError("rounds count from 1")
    return kdf(master, f"scanbeam v2 rendezvous {round_no}", 16).hex()


def round_master(master: bytes, round_no: int) -> bytes:
    """The master secret of reconnection round ``round_no`` (fresh keys every round)."""
    if round_no < 1:
        raise ValueError("rounds count from 1")
    return kdf(master, f"scanbeam v2 round {round_no}")


def proof(key: bytes, role: bytes, nonce_c: bytes, nonce_l: bytes) -> bytes:
    """``BLAKE2b-256(key, "scanbeam v2 lane " ‖ role ‖ nonce_c ‖ nonce_l)``; role is
    ``b"L"`` (listener) or ``b"C"`` (connector), so a proof is never reflected."""
    if role not in (b"L", b"C") or len(nonce_c) != NONCE_SIZE or len(nonce_l) != NONCE_SIZE:
        raise ValueError("bad proof input")
    from nacl.encoding import RawEncoder
    from nacl.hash import blake2b

    msg = b"scanbeam v2 lane " + role + nonce_c + nonce_l
    return bytes(blake2b(msg, digest_size=PROOF_SIZE, key=key, encoder=RawEncoder))


def check_proof(key: bytes, role: bytes, nonce_c: bytes, nonce_l: bytes, got: bytes) -> bool:
    """True when ``got`` is the right proof (compared in constant time by libsodium)."""
    if len(got) != PROOF_SIZE:
        return False
    return bool(sodium_memcmp(proof(key, role, nonce_c, nonce_l), got))


def encode_frame(message: bytes) -> bytes:
    """``u32 length ‖ message`` for a byte-stream lane."""
    if len(message) > MAX_FRAME:
        raise ValueError("lane message too large")
    return len(message).to_bytes(4, "big") + message


def decode_length(prefix: bytes) -> int:
    """The length in a 4-byte frame prefix.

    Raises:
        RemoteProtocolError: a length over :data:`MAX_FRAME` (the peer breaks the framing).
    """
    n = int.from_bytes(prefix, "big")
    if len(prefix) != 4 or n > MAX_FRAME:
        raise RemoteProtocolError("lane frame too large")
    return n


class MarkerKind(enum.IntEnum):
    START = 1
    END = 2


@dataclass(frozen=True, slots=True)
class Marker:
    kind: MarkerKind
    gen: int


def marker(kind: MarkerKind, gen: int) -> bytes:
    """A lane marker: ``0x00 ‖ kind ‖ u32 gen``. Records start with version 1, so a
    message that starts with 0 is never a record."""
    return bytes([0, kind]) + gen.to_bytes(4, "big")


def parse_marker(message: bytes) -> Marker | None:
    """The marker in ``message``, or None when it is a record.

    Raises:
        RemoteProtocolError: it starts with 0 but is not a valid marker.
    """
    if not message or message[0] != 0:
        return None
    if len(message) != 6 or message[1] not in (1, 2):
        raise RemoteProtocolError("malformed lane marker")
    return Marker(MarkerKind(message[1]), int.from_bytes(message[2:], "big"))


L = TypeVar("L")


class Merger(Generic[L]):
    """Receiver side: put messages from several lanes back into the sender's order.

    The sender uses one lane at a time. It starts each use of a lane with ``START(g)``,
    ends it with ``END(g)`` and counts ``g`` up from 0; the records in between are in
    order. So the receiver takes records from the lane that started generation ``g``
    until its ``END(g)``, then from the lane that starts ``g + 1``; everything that
    arrives early on another lane waits (bounded).
    """

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._queues: dict[L, deque[bytes]] = {}
        self._gen = 0
        self._active: L | None = None
        self._last: L | None = None
        self._pending = 0
        self._max = max_pending

    @property
    def active(self) -> L | None:
        """The lane the current generation comes from (None between generations)."""
        return self._active

    @property
    def reply_lane(self) -> L | None:
        """Where the receiver's control records go: the lane it last took records from."""
        return self._last

    def has_pending(self, lane: L) -> bool:
        return bool(self._queues.get(lane))

    def push(self, lane: L, message: bytes) -> list[bytes]:
        """Feed one message from ``lane``; returns the records now in order.

        Raises:
            RemoteProtocolError: malformed or out-of-order markers, or too much waiting.
        """
        self._queues.setdefault(lane, deque()).append(message)
        self._pending += 1
        if self._pending > self._max:
            raise RemoteProtocolError("too many messages waiting across lanes")
        out: list[bytes] = []
        while True:
            if self._active is None:
                found = self._find_start()
                if found is None:
                    return out
                self._active = self._last = found
                continue
            queue = self._queues[self._active]
            if not queue:
                return out
            head = queue.popleft()
            self._pending -= 1
            mark = parse_marker(head)
            if mark is None:
                out.append(head)
            elif mark.kind is MarkerKind.END and mark.gen == self._gen:
                self._gen += 1
                self._active = None
            else:
                raise RemoteProtocolError("lane marker out of order")

    def _find_start(self) -> L | None:
        for lane, queue in self._queues.items():
            if not queue:
                continue
            mark = parse_marker(queue[0])
            if mark is None:
                raise RemoteProtocolError("record on a lane before its start marker")
            if mark.kind is MarkerKind.START and mark.gen == self._gen:
                queue.popleft()
                self._pending -= 1
                return lane
            if mark.kind is MarkerKind.END or mark.gen < self._gen:
                raise RemoteProtocolError("lane marker out of order")
        return None


class SeqOrder:
    """Sender side: the receiver's control records in seq order (they carry seq in the
    header's index field) when they arrive on more than one lane."""

    def __init__(self, max_pending: int = 4096) -> None:
        self._next = 0
        self._heap: list[tuple[int, int, bytes]] = []
        self._count = 0
        self._max = max_pending

    def push(self, record: bytes) -> list[bytes]:
        """Feed one record; returns the records now in order. A record too short to
        carry a header is passed through at once (the sender's core rejects it).

        Raises:
            RemoteProtocolError: too many records waiting for a gap.
        """
        if len(record) < HEADER_SIZE:
            return [record]
        seq = int.from_bytes(record[7:15], "big")
        if seq < self._next:
            return [record]  # a replay: the core rejects it as out of sequence
        self._count += 1
        heapq.heappush(self._heap, (seq, self._count, record))
        if len(self._heap) > self._max:
            raise RemoteProtocolError("too many control records waiting for a gap")
        out: list[bytes] = []
        while self._heap and self._heap[0][0] <= self._next:
            seq, _, rec = heapq.heappop(self._heap)
            out.append(rec)  # a duplicate (seq below next) goes on: the core rejects it
            if seq == self._next:
                self._next += 1
        return out
