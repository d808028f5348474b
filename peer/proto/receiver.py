"""Receiving side of one transfer (docs/protocol.md §4). Pure: no I/O, no clock.

The adapter feeds every channel message to ``receive_message()``, writes each
``ChunkReceived`` to disk, calls ``release(n)`` once ``n`` chunks are written (this grants
the sender more credit: the receive window), and calls ``finish()`` after it has put the
verified files in place, which sends the authenticated receipt.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zstandard

from peer.errors import (
    BeamError,
    IntegrityError,
    LocalProtocolError,
    RemoteProtocolError,
)
from peer.proto.common import (
    Failed,
    json_body,
    remote_error,
    require_state,
    transition,
    unpack_chunk,
)
from peer.proto.keys import SessionKeys
from peer.proto.manifest import Manifest, decode_manifest
from peer.proto.records import (
    CONTROL_FILE,
    Flags,
    RecordType,
    open_record,
    parse_header,
    seal_record,
)

__all__ = [
    "AllVerified",
    "ChunkReceived",
    "Closed",
    "Failed",
    "FileVerified",
    "Offered",
    "Receiver",
    "ReceiverState",
]

MAX_MANIFEST_WIRE = 32 * 1024 * 1024


class ReceiverState(enum.Enum):
    WAIT_MANIFEST = "wait-manifest"
    OFFERED = "offered"
    RECEIVING = "receiving"
    VERIFIED = "verified"
    DONE = "done"
    DECLINED = "declined"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Offered:
    manifest: Manifest


@dataclass(frozen=True, slots=True)
class ChunkReceived:
    """Authenticated plaintext for ``offset`` of file ``file_ix``; write it, then release."""

    file_ix: int
    chunk_ix: int
    offset: int
    data: bytes
    last: bool


@dataclass(frozen=True, slots=True)
class FileVerified:
    """Every byte of the file matched the sender's SHA-256: it may be put in place."""

    file_ix: int
    sha256: str


@dataclass(frozen=True, slots=True)
class AllVerified:
    pass


@dataclass(frozen=True, slots=True)
class Closed:
    """The sender confirmed the receipt; the transfer is complete on both sides."""


Event = Offered | ChunkReceived | FileVerified | AllVerified | Closed | Failed

_TRANSITIONS: dict[ReceiverState, frozenset[ReceiverState]] = {
    ReceiverState.WAIT_MANIFEST: frozenset({ReceiverState.OFFERED}),
    ReceiverState.OFFERED: frozenset({ReceiverState.RECEIVING, ReceiverState.DECLINED}),
    ReceiverState.RECEIVING: frozenset({ReceiverState.VERIFIED}),
    ReceiverState.VERIFIED: frozenset({ReceiverState.DONE}),
    ReceiverState.DONE: frozenset(),
    ReceiverState.DECLINED: frozenset(),
    ReceiverState.FAILED: frozenset(),
}


class Receiver:
    """Receiving side of one transfer. Call sequentially; not thread-safe."""

    def __init__(
        self,
        keys: SessionKeys,
        *,
        window: int = 64,
        max_files: int = 200_000,
        max_manifest: int = 64 * 1024 * 1024,
    ) -> None:
        if window < 1:
            raise LocalProtocolError("window must be positive")
        self.state = ReceiverState.WAIT_MANIFEST
        self.manifest: Manifest | None = None
        self.error: BeamError | None = None
        self.trace: Callable[[str], None] | None = None
        self._keys = keys
        self._window = window
        self._max_files = max_files
        self._max_manifest = max_manifest
        self._manifest_parts: list[bytes] = []
        self._manifest_len = 0
        self._seq = 0
        self._peer_seq = 0
        self._file = 0
        self._chunk = 0
        self._resume: list[int] = []
        self._hash: Any = None
        self._digests: list[str] = []
        self._received = 0  # CHUNK records received this session
        self._released = 0
        self._granted = 0
        self._receipt_sent = False
        self._decompress = zstandard.ZstdDecompressor()
        self._out: list[bytes] = []
        self._events: list[Event] = []

    # public API

    def receive_message(self, data: bytes) -> None:
        """Feed one message from the sender. Never raises on bad peer input."""
        if self.state in (ReceiverState.FAILED, ReceiverState.DONE, ReceiverState.DECLINED):
            return
        try:
            self._dispatch(data)
        except BeamError as exc:
            self._fail(exc)

    def accept(self, resume: Sequence[int] = (), hashes: Sequence[Any] = ()) -> None:
        """Accept the offer.

        Args:
            resume: per file, the number of leading chunks already held on disk.
            hashes: per file, a ``hashlib.sha256`` object over exactly those held bytes.
        """
        self._require(ReceiverState.OFFERED)
        assert self.manifest is not None
        files = self.manifest.files
        cs = self.manifest.chunk_size
        resume = list(resume) or [0] * len(files)
        if len(resume) != len(files) or any(
            not 0 <= k <= f.n_chunks(cs) for k, f in zip(resume, files, strict=True)
        ):
            raise LocalProtocolError("resume points do not match the manifest")
        hashes = list(hashes) or [hashlib.sha256() for _ in files]
        if len(hashes) != len(files):
            raise LocalProtocolError("one hash state per file needed")
        self._resume = resume
        self._hashes = hashes
        self._granted = self._window
        self._control(
            RecordType.ACCEPT, json.dumps({"resume": resume, "credit": self._granted}).encode()
        )
        self._set(ReceiverState.RECEIVING)
        self._file, self._chunk = 0, 0
        if files:
            self._start_file()
        else:
            self._all_done()

    def decline(self) -> None:
        self._require(ReceiverState.OFFERED)
        self._control(RecordType.DECLINE, b"")
        self._set(ReceiverState.DECLINED)

    def release(self, chunks: int) -> None:
        """``chunks`` received chunks are now safely written: grant more credit."""
        if self.state is not ReceiverState.RECEIVING:
            return
        self._released += chunks
        if self._released > self._received:
            raise LocalProtocolError("released more chunks than received")
        target = self._released + self._window
        if target - self._granted >= max(1, self._window // 4):
            self._granted = target
            self._control(RecordType.CREDIT, target.to_bytes(8, "big"))

    def finish(self) -> None:
        """All files are in place: send the receipt."""
        self._require(ReceiverState.VERIFIED)
        assert self.manifest is not None
        receipt = {
            "files": [{"sha256": d} for d in self._digests],
            "bytes": self.manifest.total_bytes,
        }
        self._control(RecordType.RECEIPT, json.dumps(receipt).encode())
        self._receipt_sent = True

    def fail(self, error: BeamError) -> None:
        """Stop because of a local failure; tells the sender with an ERROR record."""
        if self.state in (ReceiverState.FAILED, ReceiverState.DONE, ReceiverState.DECLINED):
            return
        self._fail(error)

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def events_received(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # internals

    def _dispatch(self, data: bytes) -> None:
        hdr = parse_header(data)
        if hdr.type is RecordType.CHUNK:
            self._on_chunk(data, hdr)
            return
        if hdr.type in (
            RecordType.ACCEPT,
            RecordType.DECLINE,
            RecordType.CREDIT,
            RecordType.RECEIPT,
            RecordType.INDEX,
        ):
            raise RemoteProtocolError(f"sender sent a {hdr.type.name} record")
        if hdr.index != self._peer_seq:
            raise IntegrityError(f"control record out of sequence ({hdr.index})")
        body = open_record(self._keys.ctrl_s2r, self._keys.transfer_id, data, hdr)
        self._peer_seq += 1
        if hdr.type is RecordType.ERROR:
            self._fail(remote_error(body), notify=False)
        elif hdr.type is RecordType.MANIFEST:
            self._on_manifest_part(body, hdr.flags)
        elif hdr.type is RecordType.FILE_END:
            self._on_file_end(body, hdr.file_ix)
        else:  # CLOSE
            if not self._receipt_sent:  # only ever set in VERIFIED, by finish()
                raise RemoteProtocolError("close before the receipt")
            self._set(ReceiverState.DONE)
            self._events.append(Closed())

    def _on_manifest_part(self, body: bytes, flags: Flags) -> None:
        if self.state is not ReceiverState.WAIT_MANIFEST:
            raise RemoteProtocolError("manifest sent twice")
        self._manifest_len += len(body)
        if self._manifest_len > MAX_MANIFEST_WIRE:
            raise RemoteProtocolError("manifest too large")
        self._manifest_parts.append(body)
        if flags & Flags.LAST:
            blob = b"".join(self._manifest_parts)
            self._manifest_parts = []
            self.manifest = decode_manifest(
                blob, max_files=self._max_files, max_json=self._max_manifest
            )
            self._set(ReceiverState.OFFERED)
            self._events.append(Offered(self.manifest))

    def _start_file(self) -> None:
        self._chunk = self._resume[self._file]
        self._hash = self._hashes[self._file]

    def _on_chunk(self, data: bytes, hdr: Any) -> None:
        if self.state is not ReceiverState.RECEIVING:
            raise RemoteProtocolError(f"chunk while {self.state.value}")
        assert self.manifest is not None
        if hdr.file_ix == CONTROL_FILE or (hdr.file_ix, hdr.index) != (self._file, self._chunk):
            raise IntegrityError(
                f"unexpected chunk {hdr.file_ix}/{hdr.index}, expected {self._file}/{self._chunk}"
            )
        entry = self.manifest.files[self._file]
        n = entry.n_chunks(self.manifest.chunk_size)
        if self._chunk >= n:
            raise IntegrityError("chunk beyond the end of the file")
        if self._received >= self._granted:
            raise RemoteProtocolError("sender exceeded its credit")
        body = open_record(
            self._keys.data_s2r, self._keys.transfer_id, data, hdr, prefix=entry.prefix
        )
        last = self._chunk == n - 1
        if bool(hdr.flags & Flags.LAST) != last:
            raise IntegrityError("last-chunk flag wrong (truncated or extended file)")
        expected = self.manifest.chunk_length(self._file, self._chunk)
        body = unpack_chunk(
            body, bool(hdr.flags & Flags.COMPRESSED), expected, self._decompress, IntegrityError
        )
        self._hash.update(body)
        self._received += 1
        self._events.append(
            ChunkReceived(
                self._file, self._chunk, self._chunk * self.manifest.chunk_size, body, last
            )
        )
        self._chunk += 1

    def _on_file_end(self, body: bytes, file_ix: int) -> None:
        if self.state is not ReceiverState.RECEIVING:
            raise RemoteProtocolError("file end while not receiving")
        assert self.manifest is not None
        n = self.manifest.files[self._file].n_chunks(self.manifest.chunk_size)
        if file_ix != self._file or self._chunk != n:
            raise IntegrityError("file ended early (truncated)")
        claimed = json_body(body).get("sha256")
        digest = self._hash.hexdigest()
        if claimed != digest:
            raise IntegrityError(
                f"file {file_ix} SHA-256 mismatch",
                user_message=f"File {self.manifest.files[file_ix].path!r} failed its SHA-256 "
                "check; it was not saved as complete.",
            )
        self._digests.append(digest)
        self._events.append(FileVerified(file_ix, digest))
        self._file += 1
        if self._file == len(self.manifest.files):
            self._all_done()
        else:
            self._start_file()

    def _all_done(self) -> None:
        self._set(ReceiverState.VERIFIED)
        self._events.append(AllVerified())

    def _control(self, rtype: RecordType, body: bytes) -> None:
        self._out.append(
            seal_record(self._keys.ctrl_r2s, self._keys.transfer_id, rtype, body, index=self._seq)
        )
        self._seq += 1

    def _require(self, state: ReceiverState) -> None:
        require_state("receiver", self.state, state)

    def _set(self, state: ReceiverState) -> None:
        self.state = transition("receiver", _TRANSITIONS, self.state, state, self.trace)

    def _fail(self, exc: BeamError, *, notify: bool = True) -> None:
        if notify:
            self._control(RecordType.ERROR, json.dumps({"code": exc.code}).encode())
        if self.trace is not None:
            self.trace(f"receiver[{self.state.value}] -> failed ({exc.code})")
        self.state = ReceiverState.FAILED
        self.error = exc
        self._events.append(Failed(exc))
