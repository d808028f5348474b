"""Relay drops: the blob a sender uploads and a downloader reads back.

Pure: no I/O, no clock, no randomness (docs/relay-draft.md "Blob format" is the spec)::

    "SBDROP1\\n"                                      magic, 8 bytes
    u32 length || MANIFEST record   (parts 0..m-1)   key ``manifest``, LAST on the final part
    per file, in manifest order:
        u32 length || CHUNK record  (chunks 0..n-1)  key ``data``, LAST on the last chunk
        u32 length || FILE_END record                key ``file_end``, index = file index
    u32 length || INDEX record                       key ``index``, zstd binary index
    u64 index_offset || u32 index_length || "SBEND1\\n\\0"     trailer, 20 bytes

Records are docs/protocol.md §5 records (15-byte header ‖ XChaCha20-Poly1305; associated
data = header ‖ transfer id) under the :class:`~peer.proto.keys.RelayKeys` of the drop.
``index_offset`` points at the INDEX record's length prefix and ``index_length`` counts the
prefix too, so the index ends where the trailer starts. The INDEX gives, per file, the
offset of its first record and every framed length (4 + record length), so a reader can
fetch any file, or any chunk of it, with one HTTP Range request.

:class:`DropWriter` regenerates byte-identical output from the same keys, manifest (with its
nonce prefixes) and file bytes: an interrupted upload resumes by regenerating the stream
and skipping what the server already holds.
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import zstandard

from peer.errors import BeamError, IntegrityError, LocalProtocolError, UnsafeManifestError
from peer.proto.common import (
    ChunkPacker,
    Failed,
    json_body,
    require_state,
    transition,
    unpack_chunk,
)
from peer.proto.keys import RelayKeys
from peer.proto.manifest import Manifest, decode_manifest, encode_manifest
from peer.proto.receiver import MAX_MANIFEST_WIRE, ChunkReceived, FileVerified, Offered
from peer.proto.records import (
    CONTROL_FILE,
    OVERHEAD,
    Flags,
    Header,
    RecordType,
    open_record,
    parse_header,
    seal_record,
)
from peer.proto.sender import MANIFEST_PART, ReadRequest

__all__ = [
    "MAGIC",
    "MAX_INDEX",
    "RELAY_CHUNK_SIZE",
    "TRAILER_MAGIC",
    "TRAILER_SIZE",
    "WRONG_KEY_MESSAGE",
    "ChunkReceived",
    "DropReader",
    "DropWriter",
    "Failed",
    "FileVerified",
    "Hasher",
    "Offered",
    "ReadRequest",
    "ReaderState",
    "WriterState",
]

MAGIC = b"SBDROP1\n"
TRAILER_MAGIC = b"SBEND1\n\0"
_TRAILER = struct.Struct("!QI8s")
TRAILER_SIZE = _TRAILER.size
RELAY_CHUNK_SIZE = 1024 * 1024
MAX_INDEX = 64 * 1024 * 1024  # decompressed INDEX body
_U32 = struct.Struct("!I")
_FILE_HEAD = struct.Struct("!QI")
_MIN_FRAME = 4 + OVERHEAD  # an empty record with its length prefix
_MAX_CHUNK_FRAME = _MIN_FRAME + RELAY_CHUNK_SIZE  # a CHUNK body is never longer than its data
_MAX_FILE_END_BODY = 1024
# the manifest records: the receiver's wire limit plus room for their framing
_MAX_HEAD = MAX_MANIFEST_WIRE + (1 << 20)
_MANIFEST_LEVEL = 3
_INDEX_LEVEL = 3

WRONG_KEY_MESSAGE = (
    "Cannot open this drop: the link or the password is wrong (or the stored data is damaged)."
)
_DAMAGED = "The drop is damaged or incomplete; nothing from it was saved as complete."

assert array("I").itemsize == 4  # every CPython platform we support
# The index stores big-endian u32 arrays; array() uses the host order. Swapping is its own
# inverse: the same call converts host -> big-endian (writer) and back (reader).
_swap_big_endian: Callable[[array[int]], None] = (
    array.byteswap if sys.byteorder == "little" else (lambda a: None)
)


def _compress_bound(n: int) -> int:
    """ZSTD_COMPRESSBOUND: the largest zstd frame for ``n`` input bytes."""
    return n + (n >> 8) + (((128 << 10) - n) >> 11 if n < (128 << 10) else 0)


def _file_end_body(digest: str) -> bytes:
    return json.dumps({"sha256": digest}).encode()  # the direct path's exact bytes


def _damaged(detail: str) -> IntegrityError:
    return IntegrityError(detail, user_message=_DAMAGED)


class Hasher(Protocol):
    """A ``hashlib.sha256()`` object (updated in place by :meth:`DropReader.feed`)."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


# --- writing -------------------------------------------------------------------------------


class WriterState(enum.Enum):
    NEW = "new"  # header() next
    DATA = "data"  # next_read() / feed()
    END = "end"  # every file fed: finish() next
    DONE = "done"


_WRITER_TRANSITIONS: dict[WriterState, frozenset[WriterState]] = {
    WriterState.NEW: frozenset({WriterState.DATA}),
    WriterState.DATA: frozenset({WriterState.END}),
    WriterState.END: frozenset({WriterState.DONE}),
    WriterState.DONE: frozenset(),
}


class DropWriter:
    """Produces the blob of one drop. Call sequentially; not thread-safe.

    Usage: ``header()``; then ``while (req := next_read()) is not None: out(feed(req,
    read(req)))``; then ``finish()``. Each call returns the bytes to append to the blob.
    """

    def __init__(
        self, keys: RelayKeys, manifest: Manifest, *, compress: bool = True, level: int = 1
    ) -> None:
        """Prepare the blob of ``manifest`` (its ``chunk_size`` must be RELAY_CHUNK_SIZE).

        Raises:
            LocalProtocolError: a chunk size other than RELAY_CHUNK_SIZE, or a manifest or
                index larger than a reader accepts.
        """
        cs = manifest.chunk_size
        if cs != RELAY_CHUNK_SIZE:
            raise LocalProtocolError(f"relay chunk size must be {RELAY_CHUNK_SIZE}, not {cs}")
        self.state = WriterState.NEW
        self.manifest = manifest
        self.trace: Callable[[str], None] | None = None
        self._keys = keys
        self._packer = ChunkPacker(level if compress else None)
        encoded = encode_manifest(manifest)
        if len(encoded) > MAX_MANIFEST_WIRE:
            raise LocalProtocolError("manifest too large for a drop")
        self._parts = [
            encoded[i : i + MANIFEST_PART] for i in range(0, len(encoded), MANIFEST_PART)
        ]
        chunks = sum(f.n_chunks(cs) for f in manifest.files)
        index_raw = 4 + len(manifest.files) * (_FILE_HEAD.size + 4) + 4 * chunks
        if index_raw > MAX_INDEX:
            raise LocalProtocolError("too many chunks for a drop index")
        self._max_size = (
            len(MAGIC)
            + len(self._parts) * _MIN_FRAME
            + len(encoded)
            + chunks * _MIN_FRAME
            + manifest.total_bytes
            + len(manifest.files) * (_MIN_FRAME + len(_file_end_body("0" * 64)))
            + _MIN_FRAME
            + _compress_bound(index_raw)
            + TRAILER_SIZE
        )
        self._offset = 0
        self._file = 0
        self._chunk = 0
        self._file_start = 0
        self._lengths: array[int] = array("I")
        self._index = bytearray(_U32.pack(len(manifest.files)))
        self._hash = hashlib.sha256()
        self._digests: list[str] = []

    # public API

    @property
    def offset(self) -> int:
        """Bytes of the blob returned so far."""
        return self._offset

    @property
    def max_blob_size(self) -> int:
        """An upper bound of the final blob size (the ``size`` to declare to the relay)."""
        return self._max_size

    @property
    def digests(self) -> tuple[str, ...]:
        """SHA-256 (hex) of every file fed completely so far, in manifest order."""
        return tuple(self._digests)

    @property
    def bytes_compressed_in(self) -> int:
        return self._packer.bytes_in

    @property
    def bytes_compressed_out(self) -> int:
        return self._packer.bytes_out

    def header(self) -> bytes:
        """The magic and the MANIFEST records: the first bytes of the blob."""
        self._require(WriterState.NEW)
        out = [MAGIC]
        self._offset = len(MAGIC)
        for i, part in enumerate(self._parts):
            last = Flags.LAST if i == len(self._parts) - 1 else Flags.NONE
            self._frame(out, self._keys.manifest, RecordType.MANIFEST, part, index=i, flags=last)
        self._file_start = self._offset
        self._set(WriterState.DATA)
        if not self.manifest.files:
            self._set(WriterState.END)
        return b"".join(out)

    def next_read(self) -> ReadRequest | None:
        """The file bytes :meth:`feed` needs next, or None once every file is fed.

        Raises:
            LocalProtocolError: :meth:`header` was not called.
        """
        if self.state is WriterState.NEW:
            raise LocalProtocolError("call header() before next_read()")
        if self.state is not WriterState.DATA:
            return None
        offset = self._chunk * self.manifest.chunk_size
        length = self.manifest.chunk_length(self._file, self._chunk)
        return ReadRequest(self._file, self._chunk, offset, length, True)

    def feed(self, request: ReadRequest, data: bytes) -> bytes:
        """Seal the bytes read for ``request``; return the framed records to append.

        That is the CHUNK record, followed by the file's FILE_END record after its last
        chunk. The work is one SHA-256 update, at most one zstd attempt and one seal.

        Raises:
            LocalProtocolError: ``request`` is not the current :meth:`next_read`, or
                ``data`` is not exactly the chunk's length.
        """
        self._require(WriterState.DATA)
        file_ix, chunk_ix = self._file, self._chunk
        if (request.file_ix, request.chunk_ix) != (file_ix, chunk_ix):
            raise LocalProtocolError("feed does not match next_read")
        if len(data) != self.manifest.chunk_length(file_ix, chunk_ix):
            raise LocalProtocolError("short read passed to feed")
        entry = self.manifest.files[file_ix]
        n = entry.n_chunks(self.manifest.chunk_size)
        last = chunk_ix == n - 1
        self._hash.update(data)
        body, packed = self._packer.pack(data)
        flags = Flags.COMPRESSED if packed else Flags.NONE
        out: list[bytes] = []
        self._lengths.append(
            self._frame(
                out,
                self._keys.data,
                RecordType.CHUNK,
                body,
                index=chunk_ix,
                file_ix=file_ix,
                prefix=entry.prefix,
                flags=(flags | Flags.LAST) if last else flags,
            )
        )
        self._chunk += 1
        if last:
            digest = self._hash.hexdigest()
            self._digests.append(digest)
            end = self._frame(
                out,
                self._keys.file_end,
                RecordType.FILE_END,
                _file_end_body(digest),
                index=file_ix,
                file_ix=file_ix,
            )
            _swap_big_endian(self._lengths)
            self._index += _FILE_HEAD.pack(self._file_start, n)
            self._index += self._lengths.tobytes()
            self._index += _U32.pack(end)
            self._lengths = array("I")
            self._file_start = self._offset
            self._file += 1
            self._chunk = 0
            self._packer.next_file()
            self._hash = hashlib.sha256()
            if self._file == len(self.manifest.files):
                self._set(WriterState.END)
        return b"".join(out)

    def finish(self) -> bytes:
        """The INDEX record and the trailer: the last bytes of the blob."""
        self._require(WriterState.END)
        body = zstandard.ZstdCompressor(level=_INDEX_LEVEL).compress(bytes(self._index))
        out: list[bytes] = []
        index_offset = self._offset
        length = self._frame(out, self._keys.index, RecordType.INDEX, body, index=0)
        out.append(_TRAILER.pack(index_offset, length, TRAILER_MAGIC))
        self._offset += TRAILER_SIZE
        self._set(WriterState.DONE)
        return b"".join(out)

    # internals

    def _frame(
        self,
        out: list[bytes],
        key: bytes,
        rtype: RecordType,
        body: bytes,
        *,
        index: int,
        file_ix: int = CONTROL_FILE,
        prefix: bytes = bytes(16),
        flags: Flags = Flags.NONE,
    ) -> int:
        """Seal one record, append it framed to ``out``; return its framed length."""
        record = seal_record(
            key,
            self._keys.transfer_id,
            rtype,
            body,
            index=index,
            file_ix=file_ix,
            prefix=prefix,
            flags=flags,
        )
        out.append(_U32.pack(len(record)))
        out.append(record)
        self._offset += 4 + len(record)
        return 4 + len(record)

    def _require(self, state: WriterState) -> None:
        require_state("drop writer", self.state, state)

    def _set(self, state: WriterState) -> None:
        self.state = transition(
            "drop writer", _WRITER_TRANSITIONS, self.state, state, self.trace, "drop-writer"
        )


# --- reading -------------------------------------------------------------------------------


class ReaderState(enum.Enum):
    TRAILER = "trailer"  # parse_trailer() next
    INDEX = "index"  # read_index() next
    MANIFEST = "manifest"  # read_manifest() next
    READY = "ready"  # start_file() next
    FILE = "file"  # feed() the records of the current file
    FAILED = "failed"


_READER_TRANSITIONS: dict[ReaderState, frozenset[ReaderState]] = {
    ReaderState.TRAILER: frozenset({ReaderState.INDEX}),
    ReaderState.INDEX: frozenset({ReaderState.MANIFEST}),
    ReaderState.MANIFEST: frozenset({ReaderState.READY}),
    ReaderState.READY: frozenset({ReaderState.FILE}),
    ReaderState.FILE: frozenset({ReaderState.READY, ReaderState.FILE}),
    ReaderState.FAILED: frozenset(),
}

Event = Offered | ChunkReceived | FileVerified | Failed


@dataclass(frozen=True, slots=True)
class _Index:
    """The parsed INDEX: framed lengths of every record of every file."""

    offsets: array[int]  # per file: offset of its chunk 0; then the index offset (files + 1)
    bases: array[int]  # per file: position of its chunk 0 in ``lengths``; then the total
    lengths: array[int]  # framed CHUNK lengths of all files, in order
    ends: array[int]  # per file: framed FILE_END length

    def n_chunks(self, file_ix: int) -> int:
        return self.bases[file_ix + 1] - self.bases[file_ix]

    def frame(self, file_ix: int, chunk_ix: int) -> int:
        """Framed length of chunk ``chunk_ix`` of the file, or of its FILE_END at n."""
        if chunk_ix == self.n_chunks(file_ix):
            return self.ends[file_ix]
        return self.lengths[self.bases[file_ix] + chunk_ix]


class DropReader:
    """Reads a drop fetched piece by piece. Call sequentially; not thread-safe.

    Order: :meth:`parse_trailer` (the last 20 bytes), :meth:`read_index`, then
    :meth:`read_manifest`; then, per file to fetch, :meth:`start_file` and :meth:`feed`
    the bytes of :meth:`file_range`. Bad data from the drop never raises: the reader
    becomes FAILED with a ``Failed`` event and ``error`` set, and later input is ignored.
    Misuse by the caller raises :class:`LocalProtocolError` at once.
    """

    def __init__(
        self,
        keys: RelayKeys,
        *,
        max_files: int = 200_000,
        max_manifest: int = 64 * 1024 * 1024,
        max_index: int = MAX_INDEX,
    ) -> None:
        self.state = ReaderState.TRAILER
        self.manifest: Manifest | None = None
        self.error: BeamError | None = None
        self.trace: Callable[[str], None] | None = None
        self._keys = keys
        self._max_files = max_files
        self._max_manifest = max_manifest
        self._max_index = max_index
        self._index_offset = 0
        self._index_length = 0
        self._index: _Index | None = None
        self._decompress = zstandard.ZstdDecompressor()
        self._file = 0
        self._chunk = 0
        self._hash: Hasher | None = None
        self._buf = bytearray()
        self._events: list[Event] = []

    # public API: input

    def parse_trailer(self, trailer: bytes, *, blob_size: int | None = None) -> tuple[int, int]:
        """Parse the last :data:`TRAILER_SIZE` bytes of the blob.

        Args:
            trailer: the last 20 bytes.
            blob_size: the blob's size if known (the relay says it): checked.

        Returns:
            ``(index_offset, index_length)``: fetch that many bytes at that offset for
            :meth:`read_index`. ``(0, 0)`` if the trailer is bad (state FAILED).
        """
        if not self._input(ReaderState.TRAILER):
            return 0, 0
        try:
            if len(trailer) != TRAILER_SIZE:
                raise _damaged(f"trailer is {len(trailer)} bytes")
            offset, length, magic = _TRAILER.unpack(trailer)
            if magic != TRAILER_MAGIC:
                raise _damaged("no drop trailer")
            if not _MIN_FRAME <= length <= _MIN_FRAME + _compress_bound(self._max_index):
                raise _damaged(f"index length {length} out of range")
            if offset < len(MAGIC) + _MIN_FRAME:
                raise _damaged(f"index offset {offset} out of range")
            if blob_size is not None and offset + length + TRAILER_SIZE != blob_size:
                raise _damaged(f"index [{offset}, +{length}) does not end a {blob_size}-byte blob")
        except BeamError as exc:
            self._fail(exc)
            return 0, 0
        self._index_offset, self._index_length = offset, length
        self._set(ReaderState.INDEX)
        return offset, length

    def read_index(self, data: bytes) -> None:
        """Authenticate and parse the framed INDEX record (the range from the trailer).

        This is the first authenticated data: a wrong link secret or password fails here
        with an IntegrityError whose user message is :data:`WRONG_KEY_MESSAGE`.
        """
        if not self._input(ReaderState.INDEX):
            return
        try:
            if len(data) != self._index_length:
                raise _damaged(f"index is {len(data)} bytes, the trailer says {self._index_length}")
            record = self._record_at(memoryview(data), 0, len(data))
            hdr = parse_header(record[:OVERHEAD])
            self._expect(hdr, RecordType.INDEX, CONTROL_FILE, 0, Flags.NONE)
            try:
                body = open_record(self._keys.index, self._keys.transfer_id, record, hdr)
            except IntegrityError:
                raise IntegrityError(
                    "index failed authentication", user_message=WRONG_KEY_MESSAGE
                ) from None
            self._index = self._parse_index(self._inflate(body, self._max_index, "index"))
        except BeamError as exc:
            self._fail(exc)
            return
        self._set(ReaderState.MANIFEST)

    def read_manifest(self, data: bytes) -> Manifest | None:
        """Authenticate and decode the MANIFEST records.

        Args:
            data: the blob bytes ``[8, manifest_end)``, or ``[0, manifest_end)`` to have
                the magic checked too.

        Returns:
            The checked manifest (also sent as an ``Offered`` event), or None if it is bad:
            names are checked as in the direct path (``UnsafeManifestError``).
        """
        if not self._input(ReaderState.MANIFEST):
            return None
        try:
            manifest = self._read_manifest(data)
        except BeamError as exc:
            self._fail(exc)
            return None
        self.manifest = manifest
        self._set(ReaderState.READY)
        self._events.append(Offered(manifest))
        return manifest

    def start_file(self, file_ix: int, first_chunk: int, hasher: Hasher) -> None:
        """Expect the records of file ``file_ix`` from chunk ``first_chunk`` on.

        Args:
            file_ix: the file, in manifest order.
            first_chunk: chunks already held (0..n; n: only the FILE_END is left).
            hasher: ``hashlib.sha256()`` over exactly the held bytes; updated in place
                with every chunk received, so after a broken connection the same object
                can be passed again with :attr:`next_chunk`.

        Raises:
            LocalProtocolError: no manifest read yet, or arguments out of range.
        """
        if self.state not in (ReaderState.READY, ReaderState.FILE):
            raise LocalProtocolError(f"drop reader is {self.state.value}: cannot start a file")
        self._check_position(file_ix, first_chunk)
        self._file, self._chunk = file_ix, first_chunk
        self._hash = hasher
        self._buf = bytearray()
        self._set(ReaderState.FILE)

    def feed(self, data: bytes) -> None:
        """Feed blob bytes of the current file's :meth:`file_range`, split anywhere.

        Emits ``ChunkReceived`` for every authenticated chunk and ``FileVerified`` after
        the file's FILE_END matched. At most one record (≤ 1 MiB + 35 bytes) is buffered.

        Raises:
            LocalProtocolError: no file started, or bytes past the end of the file's range.
        """
        if not self._input(ReaderState.FILE):
            return
        self._buf += data
        try:
            while self.state is ReaderState.FILE and len(self._buf) >= 4:
                frame = self._frame_length()
                (length,) = _U32.unpack_from(self._buf)
                if 4 + length != frame:
                    raise _damaged(
                        f"record {self._file}/{self._chunk} is {4 + length} bytes framed, "
                        f"the index says {frame}"
                    )
                if len(self._buf) < frame:
                    break
                with memoryview(self._buf) as view:
                    record = bytes(view[4:frame])
                del self._buf[:frame]
                self._on_record(record)
        except BeamError as exc:
            self._buf = bytearray()
            self._fail(exc)
            return
        if self.state is ReaderState.READY and self._buf:
            extra = len(self._buf)
            self._buf = bytearray()
            raise LocalProtocolError(f"{extra} bytes fed past the end of file {self._file}")

    # public API: positions (after read_index)

    @property
    def manifest_end(self) -> int:
        """End of the MANIFEST records: the offset of file 0 (or of the index)."""
        return self._need_index().offsets[0]

    @property
    def index_offset(self) -> int:
        return self._need_index().offsets[-1]

    @property
    def next_chunk(self) -> int:
        """The chunk of the current file the reader expects next (n: its FILE_END)."""
        return self._chunk

    def chunk_offset(self, file_ix: int, chunk_ix: int) -> int:
        """Blob offset of chunk ``chunk_ix`` of a file (``n``: its FILE_END record).

        Raises:
            LocalProtocolError: no index read yet, or arguments out of range.
        """
        index = self._check_position(file_ix, chunk_ix)
        base = index.bases[file_ix]
        return index.offsets[file_ix] + sum(index.lengths[base : base + chunk_ix])

    def file_range(self, file_ix: int, first_chunk: int) -> tuple[int, int]:
        """``(start, end)`` of the bytes to fetch for a file from ``first_chunk`` on.

        ``end`` is the end of the file's FILE_END record.
        """
        start = self.chunk_offset(file_ix, first_chunk)
        return start, self._need_index().offsets[file_ix + 1]

    # public API: output

    def events_received(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # internals: index and manifest

    def _parse_index(self, raw: bytes) -> _Index:
        if len(raw) < 4:
            raise _damaged("index truncated")
        (count,) = _U32.unpack_from(raw)
        if count > self._max_files:
            raise UnsafeManifestError(
                f"{count} files",
                user_message=f"Refused the offer: {count} files is more than the limit "
                f"of {self._max_files}.",
            )
        offsets: array[int] = array("Q")
        bases: array[int] = array("Q", [0])
        lengths: array[int] = array("I")
        ends: array[int] = array("I")
        pos = 4
        end = len(MAGIC) + _MIN_FRAME  # the smallest manifest ends here
        for i in range(count):
            if pos + _FILE_HEAD.size > len(raw):
                raise _damaged("index truncated")
            offset, n = _FILE_HEAD.unpack_from(raw, pos)
            pos += _FILE_HEAD.size
            if n < 1 or pos + 4 * n + 4 > len(raw):
                raise _damaged(f"index entry of file {i} malformed")
            if (i == 0 and offset < end) or (i > 0 and offset != end):
                raise _damaged(f"file {i} starts at {offset}, not after the previous one")
            chunks: array[int] = array("I")
            chunks.frombytes(raw[pos : pos + 4 * n])
            _swap_big_endian(chunks)
            pos += 4 * n
            (end_len,) = _U32.unpack_from(raw, pos)
            pos += 4
            if min(chunks) < _MIN_FRAME or max(chunks) > _MAX_CHUNK_FRAME:
                raise _damaged(f"index has a chunk length out of range in file {i}")
            if not _MIN_FRAME + 2 <= end_len <= _MIN_FRAME + _MAX_FILE_END_BODY:
                raise _damaged(f"index has a file end length out of range in file {i}")
            end = offset + sum(chunks) + end_len
            if end > self._index_offset:
                raise _damaged(f"file {i} runs past the index")
            offsets.append(offset)
            lengths.extend(chunks)
            bases.append(len(lengths))
            ends.append(end_len)
        if pos != len(raw):
            raise _damaged("index has trailing bytes")
        if count and end != self._index_offset:
            raise _damaged("the last file does not end at the index")
        offsets.append(self._index_offset)
        if offsets[0] - len(MAGIC) > _MAX_HEAD:
            raise _damaged("manifest records too large")
        return _Index(offsets, bases, lengths, ends)

    def _read_manifest(self, data: bytes) -> Manifest:
        index = self._need_index()
        end = index.offsets[0]
        if len(data) == end:
            if data[: len(MAGIC)] != MAGIC:
                raise _damaged("not a ScanBeam drop (bad magic)")
            pos = len(MAGIC)
        elif len(data) == end - len(MAGIC):
            pos = 0
        else:
            raise _damaged(f"manifest range is {len(data)} bytes, the index says {end}")
        view = memoryview(data)
        parts: list[bytes] = []
        flags = Flags.NONE
        while not flags & Flags.LAST:
            if pos + 4 > len(data):
                raise _damaged("manifest records truncated")
            (length,) = _U32.unpack_from(data, pos)
            record = self._record_at(view, pos, 4 + length)
            pos += 4 + length
            hdr = parse_header(record[:OVERHEAD])
            flags = hdr.flags
            self._expect(hdr, RecordType.MANIFEST, CONTROL_FILE, len(parts), flags & Flags.LAST)
            parts.append(self._open(self._keys.manifest, record, hdr))
        if pos != len(data):
            raise _damaged("bytes between the manifest and the first file")
        manifest = decode_manifest(
            b"".join(parts), max_files=self._max_files, max_json=self._max_manifest
        )
        cs = manifest.chunk_size
        if cs != RELAY_CHUNK_SIZE:
            raise _damaged(f"drop chunk size {cs}")
        if len(manifest.files) != len(index.ends):
            raise _damaged("the manifest and the index list different numbers of files")
        for i, entry in enumerate(manifest.files):
            n = entry.n_chunks(cs)
            if index.n_chunks(i) != n:
                raise _damaged(f"file {i} has {n} chunks, the index lists {index.n_chunks(i)}")
            if index.frame(i, n - 1) > _MIN_FRAME + manifest.chunk_length(i, n - 1):
                raise _damaged(f"the last chunk of file {i} is too long")
        return manifest

    def _record_at(self, view: memoryview, pos: int, frame: int) -> bytes:
        """The record framed at ``pos`` whose framed length must be ``frame``."""
        if pos + frame > len(view):
            raise _damaged("record truncated")
        (length,) = _U32.unpack_from(view, pos)
        if length + 4 != frame or length < OVERHEAD:
            raise _damaged(f"record at {pos} has a bad length prefix {length}")
        return bytes(view[pos + 4 : pos + frame])

    def _inflate(self, body: bytes, limit: int, what: str) -> bytes:
        try:
            declared = zstandard.frame_content_size(body)
            if declared > limit:
                raise _damaged(f"{what} declares {declared} bytes, more than {limit}")
            return self._decompress.decompress(body, max_output_size=limit)
        except zstandard.ZstdError:
            raise _damaged(f"{what} does not decompress") from None

    # internals: file records

    def _frame_length(self) -> int:
        assert self._index is not None  # FILE implies an index
        return self._index.frame(self._file, self._chunk)

    def _on_record(self, record: bytes) -> None:
        assert self._index is not None and self.manifest is not None and self._hash is not None
        hdr = parse_header(record[:OVERHEAD])
        file_ix, chunk_ix = self._file, self._chunk
        n = self._index.n_chunks(file_ix)
        if chunk_ix == n:
            self._on_file_end(record, hdr)
            return
        last = chunk_ix == n - 1
        if hdr.type is not RecordType.CHUNK or (hdr.file_ix, hdr.index) != (file_ix, chunk_ix):
            raise _damaged(
                f"expected chunk {chunk_ix} of file {file_ix}, "
                f"got {hdr.type.name} {hdr.file_ix}/{hdr.index}"
            )
        entry = self.manifest.files[file_ix]
        body = self._open(self._keys.data, record, hdr, entry.prefix)
        if bool(hdr.flags & Flags.LAST) != last:
            raise _damaged("last-chunk flag wrong (truncated or extended file)")
        expected = self.manifest.chunk_length(file_ix, chunk_ix)
        body = unpack_chunk(
            body, bool(hdr.flags & Flags.COMPRESSED), expected, self._decompress, _damaged
        )
        self._hash.update(body)
        self._chunk += 1
        cs = self.manifest.chunk_size
        self._events.append(ChunkReceived(file_ix, chunk_ix, chunk_ix * cs, body, last))

    def _on_file_end(self, record: bytes, hdr: Header) -> None:
        assert self.manifest is not None and self._hash is not None
        file_ix = self._file
        self._expect(hdr, RecordType.FILE_END, file_ix, file_ix, Flags.NONE)
        body = self._open(self._keys.file_end, record, hdr)
        claimed = json_body(body).get("sha256")
        digest = self._hash.hexdigest()
        if claimed != digest:
            raise IntegrityError(
                f"file {file_ix} SHA-256 mismatch",
                user_message=f"File {self.manifest.files[file_ix].path!r} failed its SHA-256 "
                "check; it was not saved as complete.",
            )
        self._set(ReaderState.READY)
        self._events.append(FileVerified(file_ix, digest))

    # internals: helpers

    def _open(self, key: bytes, record: bytes, hdr: Header, prefix: bytes = bytes(16)) -> bytes:
        try:
            return open_record(key, self._keys.transfer_id, record, hdr, prefix=prefix)
        except IntegrityError as exc:
            raise _damaged(str(exc)) from None

    @staticmethod
    def _expect(hdr: Header, rtype: RecordType, file_ix: int, index: int, flags: Flags) -> None:
        if (hdr.type, hdr.file_ix, hdr.index, hdr.flags) != (rtype, file_ix, index, flags):
            raise _damaged(
                f"expected {rtype.name} {file_ix:#x}/{index} flags {int(flags)}, got "
                f"{hdr.type.name} {hdr.file_ix:#x}/{hdr.index} flags {int(hdr.flags)}"
            )

    def _need_index(self) -> _Index:
        if self._index is None:
            raise LocalProtocolError("the drop index has not been read")
        return self._index

    def _check_position(self, file_ix: int, chunk_ix: int) -> _Index:
        index = self._need_index()
        if not 0 <= file_ix < len(index.ends):
            raise LocalProtocolError(f"no file {file_ix} in this drop")
        if not 0 <= chunk_ix <= index.n_chunks(file_ix):
            raise LocalProtocolError(f"no chunk {chunk_ix} in file {file_ix}")
        return index

    def _input(self, state: ReaderState) -> bool:
        """False if FAILED (ignore the input); raise if the call is out of order."""
        if self.state is ReaderState.FAILED:
            return False
        require_state("drop reader", self.state, state)
        return True

    def _set(self, state: ReaderState) -> None:
        self.state = transition(
            "drop reader", _READER_TRANSITIONS, self.state, state, self.trace, "drop-reader"
        )

    def _fail(self, exc: BeamError) -> None:
        if self.trace is not None:
            self.trace(f"drop-reader[{self.state.value}] -> failed ({exc.code})")
        self.state = ReaderState.FAILED
        self.error = exc
        self._events.append(Failed(exc))
