"""Sending side of one transfer (docs/protocol.md §4). Pure: no I/O, no clock.

The adapter loop: ``start()``; then repeatedly ``next_read()`` → read those bytes from
disk → ``feed(request, data)``; flush ``data_to_send()`` to the channel; feed every
message from the channel to ``receive_message()``; handle ``events_received()``.
``next_read()`` returns None while the receiver has granted no credit.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from peer.errors import (
    BeamError,
    DeclinedError,
    IntegrityError,
    LocalProtocolError,
    RemoteProtocolError,
)
from peer.proto.common import (
    ChunkPacker,
    Failed,
    json_body,
    remote_error,
    require_state,
    transition,
)
from peer.proto.keys import SessionKeys
from peer.proto.manifest import Manifest, encode_manifest
from peer.proto.records import (
    CONTROL_FILE,
    OVERHEAD,
    Flags,
    RecordType,
    open_record,
    parse_header,
    seal_record,
)

__all__ = [
    "Accepted",
    "Completed",
    "Declined",
    "Failed",
    "ReadRequest",
    "Sender",
    "SenderState",
]

MANIFEST_PART = 60 * 1024


class SenderState(enum.Enum):
    IDLE = "idle"
    OFFERED = "offered"
    SENDING = "sending"
    AWAITING_RECEIPT = "awaiting-receipt"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """Read ``length`` bytes at ``offset`` of file ``file_ix`` and pass them to ``feed``.

    ``transmit`` is False for chunks the receiver already holds (they are only hashed).
    """

    file_ix: int
    chunk_ix: int
    offset: int
    length: int
    transmit: bool


@dataclass(frozen=True, slots=True)
class Accepted:
    """The receiver accepted; ``resume_bytes`` it already holds are not sent again."""

    resume_bytes: int


@dataclass(frozen=True, slots=True)
class Declined:
    pass


@dataclass(frozen=True, slots=True)
class Completed:
    """The receiver's authenticated receipt matched every file's SHA-256."""

    files: int
    bytes: int
    digests: tuple[str, ...]


Event = Accepted | Declined | Completed | Failed

_TRANSITIONS: dict[SenderState, frozenset[SenderState]] = {
    SenderState.IDLE: frozenset({SenderState.OFFERED}),
    SenderState.OFFERED: frozenset({SenderState.SENDING}),
    SenderState.SENDING: frozenset({SenderState.AWAITING_RECEIPT}),
    SenderState.AWAITING_RECEIPT: frozenset({SenderState.DONE}),
    SenderState.DONE: frozenset(),
    SenderState.FAILED: frozenset(),
}


class Sender:
    """Sending side of one transfer. Call sequentially; not thread-safe."""

    def __init__(
        self, keys: SessionKeys, manifest: Manifest, *, compress: bool = True, level: int = 1
    ) -> None:
        if manifest.chunk_size + OVERHEAD > 256 * 1024:
            raise LocalProtocolError("chunk size too large for one record")
        self.state = SenderState.IDLE
        self.manifest = manifest
        self.error: BeamError | None = None
        self.trace: Callable[[str], None] | None = None
        self._keys = keys
        self._packer = ChunkPacker(level if compress else None)
        self._seq = 0
        self._peer_seq = 0
        self._credit = 0
        self._sent_chunks = 0
        self._resume: list[int] = []
        self._file = 0
        self._chunk = 0
        self._hash = hashlib.sha256()
        self._digests: list[str] = []
        self._out: list[bytes] = []
        self._events: list[Event] = []

    # public API

    def start(self) -> None:
        """Queue the manifest records."""
        self._require(SenderState.IDLE)
        blob = encode_manifest(self.manifest)
        parts = [blob[i : i + MANIFEST_PART] for i in range(0, len(blob), MANIFEST_PART)]
        for i, part in enumerate(parts):
            last = Flags.LAST if i == len(parts) - 1 else Flags.NONE
            self._control(RecordType.MANIFEST, part, last)
        self._set(SenderState.OFFERED)

    def receive_message(self, data: bytes) -> None:
        """Feed one message from the receiver. Never raises on bad peer input."""
        if self.state in (SenderState.FAILED, SenderState.DONE):
            return
        try:
            self._dispatch(data)
        except BeamError as exc:
            self._fail(exc)

    def next_read(self) -> ReadRequest | None:
        """The next read the adapter should do, or None (no credit, or nothing left)."""
        if self.state is not SenderState.SENDING:
            return None
        entry = self.manifest.files[self._file]
        transmit = self._chunk >= self._resume[self._file]
        if transmit and self._sent_chunks >= self._credit:
            return None
        cs = self.manifest.chunk_size
        offset = self._chunk * cs
        return ReadRequest(
            self._file, self._chunk, offset, max(0, min(cs, entry.size - offset)), transmit
        )

    def feed(self, request: ReadRequest, data: bytes) -> None:
        """Hand over the bytes read for ``request`` (from :meth:`next_read`)."""
        self._require(SenderState.SENDING)
        if (request.file_ix, request.chunk_ix) != (self._file, self._chunk):
            raise LocalProtocolError("feed does not match next_read")
        if len(data) != request.length:
            raise LocalProtocolError("short read passed to feed")
        self._hash.update(data)
        entry = self.manifest.files[self._file]
        n = entry.n_chunks(self.manifest.chunk_size)
        last = self._chunk == n - 1
        if request.transmit:
            body, packed = self._packer.pack(data)
            flags = Flags.COMPRESSED if packed else Flags.NONE
            if last:
                flags |= Flags.LAST
            self._out.append(
                seal_record(
                    self._keys.data_s2r,
                    self._keys.transfer_id,
                    RecordType.CHUNK,
                    body,
                    index=self._chunk,
                    file_ix=self._file,
                    prefix=entry.prefix,
                    flags=flags,
                )
            )
            self._sent_chunks += 1
        self._chunk += 1
        if last:
            digest = self._hash.hexdigest()
            self._digests.append(digest)
            self._control(
                RecordType.FILE_END, json.dumps({"sha256": digest}).encode(), index_file=self._file
            )
            self._file += 1
            self._chunk = 0
            self._packer.next_file()
            self._hash = hashlib.sha256()
            if self._file == len(self.manifest.files):
                self._set(SenderState.AWAITING_RECEIPT)

    def fail(self, error: BeamError) -> None:
        """Stop because of a local failure; tells the receiver with an ERROR record."""
        if self.state in (SenderState.FAILED, SenderState.DONE):
            return
        self._control(RecordType.ERROR, json.dumps({"code": error.code}).encode())
        self._fail(error, notify=False)

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def events_received(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    @property
    def sent_chunks(self) -> int:
        return self._sent_chunks

    @property
    def credit(self) -> int:
        """The receiver's latest cumulative credit (0 before ACCEPT)."""
        return self._credit

    def set_compression(self, on: bool) -> None:
        """Compress the chunks sealed from now on (when built with ``compress=True``), or
        send them as they are; every chunk says which (flag COMPRESSED), so this may
        change at any chunk (docs/protocol.md §5.2)."""
        self._packer.enabled = on

    def set_compression_level(self, level: int) -> None:
        """The zstd level of the chunks compressed from now on (the receiver decodes any)."""
        self._packer.set_level(level)

    @property
    def compression_level(self) -> int | None:
        """The zstd level in use; None when built with ``compress=False``."""
        return self._packer.level

    @property
    def compressing(self) -> bool:
        """Whether chunks sealed now are compressed when it pays."""
        return self._packer.enabled

    @property
    def bytes_compressed_in(self) -> int:
        """Plaintext bytes that compression was tried on."""
        return self._packer.bytes_in

    @property
    def bytes_compressed_out(self) -> int:
        """What those bytes became on the wire."""
        return self._packer.bytes_out

    # internals

    def _dispatch(self, data: bytes) -> None:
        hdr = parse_header(data)
        if hdr.type in (
            RecordType.MANIFEST,
            RecordType.CHUNK,
            RecordType.FILE_END,
            RecordType.CLOSE,
            RecordType.INDEX,
        ):
            raise RemoteProtocolError(f"receiver sent a {hdr.type.name} record")
        if hdr.index != self._peer_seq:
            raise IntegrityError(f"control record out of sequence ({hdr.index})")
        body = open_record(self._keys.ctrl_r2s, self._keys.transfer_id, data, hdr)
        self._peer_seq += 1
        if hdr.type is RecordType.ERROR:
            self._fail(remote_error(body), notify=False)
        elif hdr.type is RecordType.DECLINE:
            self._require_peer(SenderState.OFFERED, hdr.type)
            self._fail(DeclinedError("declined"), notify=False, event=Declined())
        elif hdr.type is RecordType.ACCEPT:
            self._require_peer(SenderState.OFFERED, hdr.type)
            self._on_accept(json_body(body))
        elif hdr.type is RecordType.CREDIT:
            if self.state not in (SenderState.SENDING, SenderState.AWAITING_RECEIPT):
                raise RemoteProtocolError("credit before accept")
            if len(body) != 8:
                raise RemoteProtocolError("credit record malformed")
            credit = int.from_bytes(body, "big")
            if credit < self._credit:
                raise RemoteProtocolError("credit went backwards")
            self._credit = credit
        else:  # RECEIPT
            self._require_peer(SenderState.AWAITING_RECEIPT, hdr.type)
            self._on_receipt(json_body(body))

    def _on_accept(self, doc: dict[str, object]) -> None:
        resume = doc.get("resume")
        files = self.manifest.files
        cs = self.manifest.chunk_size
        if not isinstance(resume, list) or len(resume) != len(files):
            raise RemoteProtocolError("accept record malformed")
        for k, f in zip(resume, files, strict=True):
            if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= f.n_chunks(cs):
                raise RemoteProtocolError("accept resume point out of range")
        self._resume = list(resume)
        credit = doc.get("credit")
        if not isinstance(credit, int) or isinstance(credit, bool) or credit < 0:
            raise RemoteProtocolError("accept credit malformed")
        self._credit = credit
        self._set(SenderState.SENDING)
        held = sum(min(f.size, k * cs) for k, f in zip(self._resume, files, strict=True))
        self._events.append(Accepted(held))
        if not files:
            self._set(SenderState.AWAITING_RECEIPT)

    def _on_receipt(self, doc: dict[str, object]) -> None:
        got = doc.get("files")
        if not isinstance(got, list) or len(got) != len(self._digests):
            raise RemoteProtocolError("receipt malformed")
        for i, (item, mine) in enumerate(zip(got, self._digests, strict=True)):
            theirs = item.get("sha256") if isinstance(item, dict) else None
            if theirs != mine:
                raise IntegrityError(
                    f"receipt mismatch for file {i}",
                    user_message="The receiver's receipt does not match what was sent; "
                    "the transfer is not confirmed.",
                )
        self._control(RecordType.CLOSE, b"")
        self._set(SenderState.DONE)
        self._events.append(
            Completed(len(self._digests), self.manifest.total_bytes, tuple(self._digests))
        )

    def _control(
        self,
        rtype: RecordType,
        body: bytes,
        flags: Flags = Flags.NONE,
        index_file: int = CONTROL_FILE,
    ) -> None:
        self._out.append(
            seal_record(
                self._keys.ctrl_s2r,
                self._keys.transfer_id,
                rtype,
                body,
                index=self._seq,
                flags=flags,
                file_ix=index_file,
            )
        )
        self._seq += 1

    def _require(self, state: SenderState) -> None:
        require_state("sender", self.state, state)

    def _require_peer(self, state: SenderState, rtype: RecordType) -> None:
        if self.state is not state:
            raise RemoteProtocolError(f"{rtype.name} while {self.state.value}")

    def _set(self, state: SenderState) -> None:
        self.state = transition("sender", _TRANSITIONS, self.state, state, self.trace)

    def _fail(self, exc: BeamError, *, notify: bool = True, event: Event | None = None) -> None:
        if notify:
            self._control(RecordType.ERROR, json.dumps({"code": exc.code}).encode())
        if self.trace is not None:
            self.trace(f"sender[{self.state.value}] -> failed ({exc.code})")
        self.state = SenderState.FAILED
        self.error = exc
        self._events.append(event if event is not None else Failed(exc))
