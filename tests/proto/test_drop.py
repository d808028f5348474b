"""Relay drops: keys, the blob writer and reader (docs/relay-draft.md "Keys", "Blob format")."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
import subprocess
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peer.errors import (
    BeamError,
    IntegrityError,
    LocalProtocolError,
    RemoteProtocolError,
    UnsafeManifestError,
    VersionError,
)
from peer.proto import drop
from peer.proto.drop import (
    MAGIC,
    RELAY_CHUNK_SIZE,
    TRAILER_MAGIC,
    TRAILER_SIZE,
    WRONG_KEY_MESSAGE,
    ChunkReceived,
    DropReader,
    DropWriter,
    Failed,
    FileVerified,
    Offered,
    ReaderState,
    ReadRequest,
    WriterState,
)
from peer.proto.keys import (
    DEFAULT_MEM,
    DEFAULT_OPS,
    MAX_MEM,
    MAX_OPS,
    SALT_SIZE,
    RelayKeys,
    kdf,
    password_key,
)
from peer.proto.manifest import DEFAULT_CHUNK_SIZE, FileEntry, Manifest, encode_manifest
from peer.proto.records import CONTROL_FILE, Flags, RecordType, seal_record
from peer.proto.sender import MANIFEST_PART

from .make_relay_vectors import OUT, build

CS = RELAY_CHUNK_SIZE
DAMAGED = "The drop is damaged or incomplete; nothing from it was saved as complete."


# --- helpers: write a drop, download it as the adapter would -------------------------------


def make_manifest(sizes: Sequence[int], *, chunk_size: int = CS, seed: int = 0) -> Manifest:
    return Manifest(
        files=tuple(
            FileEntry(
                f"study/f{i}.dcm",
                n,
                1_700_000_000_000_000_000 + i,
                hashlib.sha256(b"prefix %d %d" % (seed, i)).digest()[:16],
            )
            for i, n in enumerate(sizes)
        ),
        chunk_size=chunk_size,
        summary={"note": "test"},
    )


def new_keys(password: bytes | None = None) -> RelayKeys:
    return RelayKeys.derive(os.urandom(32), password)


def write(
    keys: RelayKeys, files: Sequence[bytes], *, compress: bool = True, seed: int = 0
) -> tuple[Manifest, bytes, DropWriter]:
    manifest = make_manifest([len(f) for f in files], seed=seed)
    writer = DropWriter(keys, manifest, compress=compress)
    out = [writer.header()]
    assert writer.offset == len(out[0])
    while (req := writer.next_read()) is not None:
        out.append(writer.feed(req, files[req.file_ix][req.offset : req.offset + req.length]))
    out.append(writer.finish())
    blob = b"".join(out)
    assert writer.offset == len(blob) <= writer.max_blob_size
    return manifest, blob, writer


@dataclass
class Download:
    reader: DropReader
    data: dict[int, bytearray] = field(default_factory=dict)
    verified: dict[int, str] = field(default_factory=dict)
    events: list[object] = field(default_factory=list)

    @property
    def error(self) -> BeamError | None:
        fails = [e for e in self.events if isinstance(e, Failed)]
        assert len(fails) <= 1
        assert (fails[0].error if fails else None) is self.reader.error
        return self.reader.error

    def files(self, n: int) -> list[bytes]:
        return [bytes(self.data.get(i, b"")) for i in range(n)]

    def collect(self) -> bool:
        for ev in self.reader.events_received():
            self.events.append(ev)
            if isinstance(ev, ChunkReceived):
                buf = self.data.setdefault(ev.file_ix, bytearray())
                assert ev.offset == len(buf) == ev.chunk_ix * CS
                buf += ev.data
            elif isinstance(ev, FileVerified):
                self.verified[ev.file_ix] = ev.sha256
        return self.reader.state is not ReaderState.FAILED


def download(
    keys: RelayKeys,
    blob: bytes,
    *,
    pieces: Sequence[int] = (1 << 40,),
    magic: bool = True,
    size_known: bool = True,
    **limits: Any,
) -> Download:
    """Read the whole drop as the download adapter does; stop at the first failure."""
    d = Download(DropReader(keys, **limits))
    r = d.reader
    off, length = r.parse_trailer(blob[-TRAILER_SIZE:], blob_size=len(blob) if size_known else None)
    if not d.collect():
        return d
    r.read_index(blob[off : off + length])
    if not d.collect():
        return d
    manifest = r.read_manifest(blob[0 if magic else len(MAGIC) : r.manifest_end])
    if not d.collect():
        return d
    assert manifest is not None and d.events[-1] == Offered(manifest)
    k = 0
    for i in range(len(manifest.files)):
        start, end = r.file_range(i, 0)
        r.start_file(i, 0, hashlib.sha256())
        pos = start
        while pos < end and r.state is ReaderState.FILE:
            step = pieces[k % len(pieces)]
            k += 1
            r.feed(blob[pos : min(end, pos + step)])
            pos += step
            if not d.collect():
                return d
    return d


def ok(keys: RelayKeys, blob: bytes, files: Sequence[bytes], **kw: Any) -> Download:
    d = download(keys, blob, **kw)
    assert d.error is None
    assert d.files(len(files)) == list(files)
    assert d.verified == {i: hashlib.sha256(f).hexdigest() for i, f in enumerate(files)}
    return d


def failed(d: Download, error: type[BeamError], detail: str, message: str = DAMAGED) -> None:
    err = d.error
    assert d.reader.state is ReaderState.FAILED
    assert type(err) is error, repr(err)
    assert detail in str(err), str(err)
    assert err.user_message == message


# big: every chunk-boundary size, compressible and random data (about 9 MiB)
BIG_SIZES = [0, 1, CS - 1, CS, CS + 1]


@functools.cache
def big() -> tuple[RelayKeys, list[bytes], bytes, DropWriter]:
    files = [os.urandom(n) for n in BIG_SIZES]
    files.append(b"DICM compressible " * (2 * CS // 18 + 5))
    files.append(os.urandom(3 * CS + 7))
    keys = new_keys()
    _, blob, writer = write(keys, files)
    return keys, files, blob, writer


@functools.cache
def small() -> tuple[RelayKeys, list[bytes], bytes]:
    files = [b"hello", b"", b"z" * 3000, os.urandom(700)]
    keys = new_keys()
    return keys, files, write(keys, files)[1]


# --- helpers: forge drops record by record -------------------------------------------------

_KEY_OF = {
    RecordType.MANIFEST: "manifest",
    RecordType.CHUNK: "data",
    RecordType.FILE_END: "file_end",
    RecordType.INDEX: "index",
}


def seal(
    keys: RelayKeys,
    rtype: RecordType,
    body: bytes,
    *,
    index: int = 0,
    file_ix: int = CONTROL_FILE,
    prefix: bytes = bytes(16),
    flags: Flags = Flags.NONE,
    key: str | None = None,
) -> bytes:
    k = getattr(keys, key or _KEY_OF[rtype])
    return seal_record(
        k, keys.transfer_id, rtype, body, index=index, file_ix=file_ix, prefix=prefix, flags=flags
    )


def frame(record: bytes) -> bytes:
    return struct.pack("!I", len(record)) + record


def head_records(keys: RelayKeys, manifest: Manifest) -> list[bytes]:
    blob = encode_manifest(manifest)
    parts = [blob[i : i + MANIFEST_PART] for i in range(0, len(blob), MANIFEST_PART)]
    return [
        frame(
            seal(
                keys,
                RecordType.MANIFEST,
                p,
                index=i,
                flags=Flags.LAST if i == len(parts) - 1 else Flags.NONE,
            )
        )
        for i, p in enumerate(parts)
    ]


def file_records(keys: RelayKeys, manifest: Manifest, i: int, data: bytes) -> list[bytes]:
    """Uncompressed CHUNK records and the FILE_END of file ``i``."""
    entry = manifest.files[i]
    n = entry.n_chunks(CS)
    recs = [
        seal(
            keys,
            RecordType.CHUNK,
            data[k * CS : (k + 1) * CS],
            index=k,
            file_ix=i,
            prefix=entry.prefix,
            flags=Flags.LAST if k == n - 1 else Flags.NONE,
        )
        for k in range(n)
    ]
    body = json.dumps({"sha256": hashlib.sha256(data).hexdigest()}).encode()
    return [*recs, seal(keys, RecordType.FILE_END, body, index=i, file_ix=i)]


Entry = tuple[int, list[int], int]  # offset, framed chunk lengths, framed FILE_END length


def raw_index(entries: Sequence[Entry]) -> bytes:
    out = struct.pack("!I", len(entries))
    for offset, chunks, end in entries:
        out += struct.pack(f"!QI{len(chunks)}I", offset, len(chunks), *chunks)
        out += struct.pack("!I", end)
    return out


def layout(head: Sequence[bytes], groups: Sequence[Sequence[bytes]]) -> list[Entry]:
    pos = len(MAGIC) + sum(map(len, head))
    entries = []
    for recs in groups:
        lens = [4 + len(r) for r in recs]
        entries.append((pos, lens[:-1], lens[-1]))
        pos += sum(lens)
    return entries


def assemble(
    keys: RelayKeys,
    head: Sequence[bytes],
    groups: Sequence[Sequence[bytes]],
    *,
    raw: bytes | None = None,
    index_record: bytes | None = None,
) -> bytes:
    """A blob from framed manifest records and per-file records, with its index."""
    body = MAGIC + b"".join(head) + b"".join(frame(r) for g in groups for r in g)
    if index_record is None:
        raw = raw_index(layout(head, groups)) if raw is None else raw
        index_record = seal(keys, RecordType.INDEX, zstandard.ZstdCompressor().compress(raw))
    framed = frame(index_record)
    return body + framed + struct.pack("!QI", len(body), len(framed)) + TRAILER_MAGIC


@dataclass
class Forge:
    keys: RelayKeys
    manifest: Manifest
    files: list[bytes]
    head: list[bytes]
    groups: list[list[bytes]]

    def blob(self, **kw: Any) -> bytes:
        return assemble(self.keys, self.head, self.groups, **kw)


def forge(files: Sequence[bytes], manifest: Manifest | None = None) -> Forge:
    keys = new_keys()
    m = manifest or make_manifest([len(f) for f in files])
    head = head_records(keys, m)
    groups = [file_records(keys, m, i, f) for i, f in enumerate(files)]
    return Forge(keys, m, list(files), head, groups)


# --- keys -----------------------------------------------------------------------------------


def test_password_key_is_deterministic_and_depends_on_every_input() -> None:
    salt = bytes(range(SALT_SIZE))
    a = password_key("secret", salt, 1, 8192)
    assert len(a) == 32
    assert password_key("secret", salt, 1, 8192) == a
    assert password_key("secret", bytes(SALT_SIZE), 1, 8192) != a
    assert password_key("Secret", salt, 1, 8192) != a
    assert password_key("secret", salt, 2, 8192) != a
    assert password_key("secret", salt, 1, 16384) != a


def test_password_key_normalises_unicode() -> None:
    salt = os.urandom(SALT_SIZE)
    composed = "caf\u00e9"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    assert password_key(composed, salt, 1, 8192) == password_key(decomposed, salt, 1, 8192)


def test_password_key_defaults_are_the_drafts() -> None:
    assert (DEFAULT_OPS, DEFAULT_MEM, SALT_SIZE) == (3, 64 * 1024 * 1024, 16)
    assert len(password_key("pw", bytes(16), DEFAULT_OPS, DEFAULT_MEM)) == 32


@pytest.mark.parametrize(
    ("salt", "ops", "mem", "detail"),
    [
        (bytes(15), 1, 8192, "salt must be 16 bytes"),
        (bytes(16), 0, 8192, "Argon2id opslimit 0 out of range"),
        (bytes(16), MAX_OPS + 1, 8192, f"Argon2id opslimit {MAX_OPS + 1} out of range"),
        (bytes(16), 1, 8191, "Argon2id memlimit 8191 out of range"),
        (bytes(16), 1, MAX_MEM + 1, f"Argon2id memlimit {MAX_MEM + 1} out of range"),
    ],
)
def test_password_key_refuses_bad_parameters(salt: bytes, ops: int, mem: int, detail: str) -> None:
    with pytest.raises(ValueError) as info:
        password_key("pw", salt, ops, mem)
    assert str(info.value) == detail


def test_relay_keys_follow_the_draft() -> None:
    s = os.urandom(32)
    keys = RelayKeys.derive(s, None)
    master = kdf(s, "scanbeam v1 relay master")
    session = kdf(master, "scanbeam v1 relay session")
    assert keys.master == master
    assert keys.auth == kdf(master, "scanbeam v1 relay auth")
    assert keys.verifier == hashlib.sha256(keys.auth).hexdigest()
    assert keys.transfer_id == kdf(session, "scanbeam v1 transfer id", 16)
    assert keys.data == kdf(session, "scanbeam v1 relay data")
    assert keys.manifest == kdf(session, "scanbeam v1 relay manifest")
    assert keys.file_end == kdf(session, "scanbeam v1 relay file end")
    assert keys.index == kdf(session, "scanbeam v1 relay index")
    pw = os.urandom(32)
    locked = RelayKeys.derive(s, pw)
    assert locked.master == kdf(master, "scanbeam v1 relay password " + pw.hex())
    secrets = [keys.master, keys.auth, keys.data, keys.manifest, keys.file_end, keys.index]
    assert len(set(secrets)) == len(secrets)
    assert locked.auth != keys.auth and locked.data != keys.data
    assert RelayKeys.derive(s, pw) == locked


def test_relay_keys_repr_shows_no_secret() -> None:
    keys = RelayKeys.derive(os.urandom(32), os.urandom(32))
    text = repr(keys) + str(keys)
    for name in ("master", "auth", "transfer_id", "data", "manifest", "file_end", "index"):
        value: bytes = getattr(keys, name)
        assert value.hex()[:8] not in text
    assert text.startswith("RelayKeys(verifier=")


@pytest.mark.parametrize(
    ("secret", "pw", "detail"),
    [
        (bytes(31), None, "link secret must be 32 bytes"),
        (bytes(32), bytes(16), "password key must be 32 bytes"),
    ],
)
def test_relay_keys_refuse_bad_sizes(secret: bytes, pw: bytes | None, detail: str) -> None:
    with pytest.raises(ValueError) as info:
        RelayKeys.derive(secret, pw)
    assert str(info.value) == detail


# --- golden vectors -------------------------------------------------------------------------

VECTORS = json.loads(Path(OUT).read_text(encoding="utf-8"))


def test_relay_vectors_file_matches_the_code() -> None:
    assert build() == VECTORS


def test_relay_vectors_decode_independently() -> None:
    p = VECTORS["password_key"]
    assert p["password"] == unicodedata.normalize("NFC", p["password"])
    nfd = unicodedata.normalize("NFD", p["password"])
    pw = password_key(nfd, bytes.fromhex(p["salt"]), p["ops"], p["mem"])
    assert pw.hex() == p["out"]
    kv = VECTORS["keys_with_password"]
    assert kv["password_key"] == p["out"]
    keys = RelayKeys.derive(bytes.fromhex(kv["link_secret"]), pw)
    assert keys.index.hex() == kv["index"] and keys.verifier == kv["verifier"]
    plain = VECTORS["keys_without_password"]
    assert RelayKeys.derive(bytes.fromhex(plain["link_secret"]), None).data.hex() == plain["data"]
    v = VECTORS["drop"]
    blob = bytes.fromhex(v["blob"])
    assert blob.startswith(MAGIC) and blob.endswith(TRAILER_MAGIC)
    assert v["index_offset"] + v["index_length"] + TRAILER_SIZE == len(blob)
    contents = [bytes.fromhex(f["content"]) for f in v["files"]]
    d = ok(keys, blob, contents)
    assert d.reader.manifest is not None
    assert [f.path for f in d.reader.manifest.files] == [f["path"] for f in v["files"]]
    assert [f.prefix.hex() for f in d.reader.manifest.files] == [f["prefix"] for f in v["files"]]
    assert list(d.verified.values()) == v["digests"]
    # the same link without the password opens nothing
    wrong = download(RelayKeys.derive(bytes.fromhex(kv["link_secret"]), None), blob)
    failed(wrong, IntegrityError, "index failed authentication", WRONG_KEY_MESSAGE)


# --- writing --------------------------------------------------------------------------------


def test_round_trip_of_every_boundary_size() -> None:
    keys, files, blob, writer = big()
    d = ok(keys, blob, files)
    assert writer.digests == tuple(d.verified.values())
    assert d.reader.state is ReaderState.READY
    chunks = [e for e in d.events if isinstance(e, ChunkReceived)]
    assert [(c.file_ix, c.chunk_ix, c.last) for c in chunks if c.file_ix < 5] == [
        (0, 0, True),
        (1, 0, True),
        (2, 0, True),
        (3, 0, True),
        (4, 0, False),
        (4, 1, True),
    ]


def test_compressible_chunks_are_compressed_and_random_ones_probed_rarely() -> None:
    keys = new_keys()
    text = b"0123456789abcdef" * (4 * CS // 16)
    _, blob, w = write(keys, [text])
    assert len(blob) < len(text) / 50
    assert w.bytes_compressed_out < w.bytes_compressed_in / 50
    ok(keys, blob, [text])
    noise = os.urandom(20 * CS)
    _, blob, w = write(keys, [noise])
    # one probe that did not pay, then PROBE_SKIP chunks stored as is, then a probe again
    assert w.bytes_compressed_in == 2 * CS
    assert w.bytes_compressed_out == 2 * CS
    # compression restarts at every file
    _, _, w = write(keys, [noise[:CS], noise[CS : 2 * CS]])
    assert w.bytes_compressed_in == 2 * CS
    _, _, w = write(keys, [text], compress=False)
    assert w.bytes_compressed_in == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(st.integers(1, 64), st.integers(1, 3 * CS)), max_size=7),
    st.integers(CS // 2, 3 * CS),
)
def test_any_split_of_the_stream_reads_back(pieces: list[int], large: int) -> None:
    # pieces are fed in a cycle; one large piece per cycle keeps the test fast
    keys, files, blob, _ = big()
    ok(keys, blob, files, pieces=[*pieces, large])


def test_byte_by_byte_feeding() -> None:
    keys, files, blob = small()
    ok(keys, blob, files, pieces=[1])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.binary(max_size=3000), max_size=4),
    st.booleans(),
    st.lists(st.integers(1, 200), min_size=1, max_size=5),
)
def test_round_trip_property(files: list[bytes], compress: bool, pieces: list[int]) -> None:
    keys = new_keys()
    _, blob, _ = write(keys, files, compress=compress)
    ok(keys, blob, files, pieces=pieces, magic=compress)


def test_an_empty_drop() -> None:
    keys = new_keys()
    manifest, blob, w = write(keys, [])
    assert w.state is WriterState.DONE and w.digests == ()
    d = ok(keys, blob, [])
    off, n = struct.unpack("!QI", blob[-TRAILER_SIZE:-8])
    assert d.reader.manifest_end == d.reader.index_offset == off
    assert off + n + TRAILER_SIZE == len(blob)
    assert d.reader.manifest == manifest


def test_writing_is_deterministic() -> None:
    keys, files, blob, _ = big()
    _, again, _ = write(keys, files)
    assert again == blob
    # another drop of the same files (other keys or prefixes) shares nothing
    _, other, _ = write(new_keys(), files)
    assert other[:8] == blob[:8] and other[8:100] != blob[8:100]
    _, reprefixed, _ = write(keys, files, seed=1)
    assert reprefixed != blob


def test_forged_layout_matches_the_writer() -> None:
    """The forging helpers below build exactly what the writer does (random data)."""
    files = [b"", b"abc", os.urandom(CS + 3)]
    f = forge(files)
    _, blob, _ = write(f.keys, files, compress=False)
    assert f.blob() == blob


def test_writer_state_machine() -> None:
    keys = new_keys()
    m = make_manifest([1])
    w = DropWriter(keys, m)
    trace: list[str] = []
    w.trace = trace.append
    with pytest.raises(LocalProtocolError, match=r"^call header\(\) before next_read\(\)$"):
        w.next_read()
    with pytest.raises(LocalProtocolError, match=r"^drop writer is new, not end$"):
        w.finish()
    w.header()
    with pytest.raises(LocalProtocolError, match=r"^drop writer is data, not new$"):
        w.header()
    req = w.next_read()
    assert req == ReadRequest(0, 0, 0, 1, True)
    with pytest.raises(LocalProtocolError, match=r"^feed does not match next_read$"):
        w.feed(ReadRequest(0, 1, CS, 1, True), b"x")
    with pytest.raises(LocalProtocolError, match=r"^short read passed to feed$"):
        w.feed(req, b"")
    w.feed(req, b"x")
    assert w.next_read() is None
    with pytest.raises(LocalProtocolError, match=r"^drop writer is end, not data$"):
        w.feed(req, b"x")
    w.finish()
    assert w.next_read() is None
    assert trace == [
        "drop-writer[new] -> data",
        "drop-writer[data] -> end",
        "drop-writer[end] -> done",
    ]
    with pytest.raises(LocalProtocolError, match=r"^drop writer done -> data$"):
        w._set(WriterState.DATA)


def test_writer_refuses_what_no_reader_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = new_keys()
    with pytest.raises(LocalProtocolError, match=rf"^relay chunk size must be {CS}, not 65472$"):
        DropWriter(keys, make_manifest([1], chunk_size=DEFAULT_CHUNK_SIZE))
    monkeypatch.setattr(drop, "MAX_INDEX", 4 + 16 + 4 * 3 - 1)
    with pytest.raises(LocalProtocolError, match=r"^too many chunks for a drop index$"):
        DropWriter(keys, make_manifest([3 * CS]))
    monkeypatch.setattr(drop, "MAX_INDEX", 4 + 16 + 4 * 3)
    DropWriter(keys, make_manifest([3 * CS]))
    monkeypatch.setattr(drop, "MAX_MANIFEST_WIRE", 10)
    with pytest.raises(LocalProtocolError, match=r"^manifest too large for a drop$"):
        DropWriter(keys, make_manifest([1]))


def test_a_large_manifest_spans_several_records() -> None:
    keys = new_keys()
    m = Manifest(
        files=(FileEntry("a.bin", 2, 0, bytes(16)),),
        chunk_size=CS,
        summary={"noise": [os.urandom(100).hex() for _ in range(1500)]},
    )
    w = DropWriter(keys, m)
    head = w.header()
    assert len(head) > 2 * MANIFEST_PART
    blob = head + w.feed(ReadRequest(0, 0, 0, 2, True), b"hi") + w.finish()
    d = ok(keys, blob, [b"hi"])
    assert d.reader.manifest is not None and d.reader.manifest.files == m.files


def test_max_blob_size_is_an_upper_bound() -> None:
    keys = new_keys()
    files = [os.urandom(CS), b"", os.urandom(10)]
    _, blob, w = write(keys, files)
    assert len(blob) <= w.max_blob_size < len(blob) + 1024


# --- reading: resume, restart, misuse -------------------------------------------------------


@pytest.mark.parametrize("first", [0, 1, 2, 3, 4])
def test_reading_from_a_resume_point(first: int) -> None:
    keys, files, blob, _ = big()
    d = download(keys, blob)
    r = d.reader
    i = 6  # 3 MiB + 7 random: chunks 0..3, then FILE_END at 4
    data = files[i]
    start, end = r.file_range(i, first)
    assert start == r.chunk_offset(i, first)
    assert end == r.chunk_offset(i + 1, 0) if i + 1 < len(files) else r.index_offset
    held = hashlib.sha256(data[: first * CS])
    r.start_file(i, first, held)
    assert r.next_chunk == first
    r.feed(blob[start:end])
    events = r.events_received()
    chunks = [e for e in events if isinstance(e, ChunkReceived)]
    assert [c.chunk_ix for c in chunks] == list(range(first, 4))
    assert b"".join(c.data for c in chunks) == data[first * CS :]
    assert events[-1] == FileVerified(i, hashlib.sha256(data).hexdigest())
    assert r.next_chunk == 4


def test_a_wrong_held_prefix_fails_the_file() -> None:
    keys, _files, blob, _ = big()
    r = download(keys, blob).reader
    start, end = r.file_range(6, 2)
    r.start_file(6, 2, hashlib.sha256(b"not what the sender had"))
    r.feed(blob[start:end])
    events = r.events_received()
    assert isinstance(events[-1], Failed)
    err = events[-1].error
    assert type(err) is IntegrityError and str(err) == "file 6 SHA-256 mismatch"
    assert err.user_message == (
        "File 'study/f6.dcm' failed its SHA-256 check; it was not saved as complete."
    )


def test_restarting_a_file_after_a_broken_connection() -> None:
    keys, files, blob, _ = big()
    r = download(keys, blob).reader
    start, end = r.file_range(6, 0)
    h = hashlib.sha256()
    r.start_file(6, 0, h)
    r.feed(blob[start : start + CS + 100])  # chunk 0 whole, chunk 1 partly
    assert [e.chunk_ix for e in r.events_received() if isinstance(e, ChunkReceived)] == [0]
    k = r.next_chunk
    assert k == 1
    r.start_file(6, k, h)  # same hasher: it holds exactly the received chunks
    again, _ = r.file_range(6, k)
    r.feed(blob[again:end])
    events = r.events_received()
    assert [e.chunk_ix for e in events if isinstance(e, ChunkReceived)] == [1, 2, 3]
    assert events[-1] == FileVerified(6, hashlib.sha256(files[6]).hexdigest())


def test_reader_misuse_raises_local_protocol_error() -> None:
    keys, _files, blob = small()
    r = DropReader(keys)
    trace: list[str] = []
    r.trace = trace.append
    for call in (
        lambda: r.manifest_end,
        lambda: r.index_offset,
        lambda: r.chunk_offset(0, 0),
        lambda: r.file_range(0, 0),
    ):
        with pytest.raises(LocalProtocolError, match=r"^the drop index has not been read$"):
            call()
    with pytest.raises(LocalProtocolError, match=r"^drop reader is trailer, not index$"):
        r.read_index(b"")
    with pytest.raises(LocalProtocolError, match=r"^drop reader is trailer, not manifest$"):
        r.read_manifest(b"")
    with pytest.raises(LocalProtocolError, match=r"^drop reader is trailer, not file$"):
        r.feed(b"")
    with pytest.raises(LocalProtocolError, match=r"^drop reader is trailer: cannot start a file$"):
        r.start_file(0, 0, hashlib.sha256())
    off, n = r.parse_trailer(blob[-TRAILER_SIZE:])
    with pytest.raises(LocalProtocolError, match=r"^drop reader is index, not trailer$"):
        r.parse_trailer(blob[-TRAILER_SIZE:])
    r.read_index(blob[off : off + n])
    with pytest.raises(LocalProtocolError, match=r"^drop reader is manifest: cannot start a file$"):
        r.start_file(0, 0, hashlib.sha256())
    assert r.chunk_offset(0, 0) == r.manifest_end
    for fi, ci, detail in [
        (-1, 0, "no file -1 in this drop"),
        (4, 0, "no file 4 in this drop"),
        (0, 2, "no chunk 2 in file 0"),
        (0, -1, "no chunk -1 in file 0"),
    ]:
        with pytest.raises(LocalProtocolError, match=rf"^{detail}$"):
            r.chunk_offset(fi, ci)
    r.read_manifest(blob[: r.manifest_end])
    with pytest.raises(LocalProtocolError, match=r"^drop reader is ready, not file$"):
        r.feed(b"x")
    with pytest.raises(LocalProtocolError, match=r"^no chunk 2 in file 1$"):
        r.start_file(1, 2, hashlib.sha256())
    start, end = r.file_range(0, 0)
    r.start_file(0, 0, hashlib.sha256())
    with pytest.raises(LocalProtocolError, match=r"^3 bytes fed past the end of file 0$"):
        r.feed(blob[start:end] + b"abc")
    assert [type(e) for e in r.events_received()] == [Offered, ChunkReceived, FileVerified]
    assert r.state is ReaderState.READY
    assert trace == [
        "drop-reader[trailer] -> index",
        "drop-reader[index] -> manifest",
        "drop-reader[manifest] -> ready",
        "drop-reader[ready] -> file",
        "drop-reader[file] -> ready",
    ]
    with pytest.raises(LocalProtocolError, match=r"^drop reader ready -> index$"):
        r._set(ReaderState.INDEX)


def test_a_failed_reader_ignores_input() -> None:
    keys, _files, blob = small()
    r = DropReader(keys)
    trace: list[str] = []
    r.trace = trace.append
    assert r.parse_trailer(b"short") == (0, 0)
    assert trace == ["drop-reader[trailer] -> failed (integrity)"]
    assert r.parse_trailer(blob[-TRAILER_SIZE:]) == (0, 0)
    r.read_index(blob)
    assert r.read_manifest(blob) is None
    r.feed(blob)
    events = r.events_received()
    assert len(events) == 1 and isinstance(events[0], Failed)
    assert r.events_received() == []
    with pytest.raises(LocalProtocolError):
        r.start_file(0, 0, hashlib.sha256())


# --- reading: damage anywhere fails ---------------------------------------------------------


def test_every_flipped_byte_of_a_small_drop_fails() -> None:
    keys = new_keys()
    files = [b"tiny", b""]
    _, blob, _ = write(keys, files)
    for pos in range(len(blob)):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        d = download(keys, bytes(bad))
        assert isinstance(d.error, RemoteProtocolError), pos
        assert len(d.verified) < len(files), pos


@settings(max_examples=150, deadline=None)
@given(st.data(), st.integers(1, 255))
def test_a_flipped_byte_anywhere_fails(data: st.DataObject, mask: int) -> None:
    keys, _files, blob = small()
    pos = data.draw(st.integers(0, len(blob) - 1))
    bad = bytearray(blob)
    bad[pos] ^= mask
    d = download(keys, bytes(bad), pieces=[data.draw(st.integers(1, 5000))])
    assert isinstance(d.error, RemoteProtocolError)


@pytest.mark.parametrize("where", ["length", "header", "body", "tag"])
def test_a_flipped_byte_in_a_big_chunk_fails(where: str) -> None:
    keys, _files, blob, _ = big()
    r = download(keys, blob).reader
    at = r.chunk_offset(6, 1)
    pos = {"length": at + 2, "header": at + 4 + 9, "body": at + 4 + 500_000, "tag": at + 4 + CS}
    bad = bytearray(blob)
    bad[pos[where]] ^= 0x40
    d = download(keys, bytes(bad))
    assert isinstance(d.error, IntegrityError)
    assert len(d.verified) == 6
    assert [e.chunk_ix for e in d.events if isinstance(e, ChunkReceived) and e.file_ix == 6] == [0]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_a_truncated_drop_fails(data: st.DataObject) -> None:
    keys, _files, blob = small()
    cut = data.draw(st.integers(0, len(blob) - 1))
    for size_known in (True, False):
        d = download(keys, blob[:cut], size_known=size_known)
        assert isinstance(d.error, RemoteProtocolError)


def test_reordered_or_duplicated_records_fail() -> None:
    keys, _files, blob, _ = big()
    r = download(keys, blob).reader
    c0, c1, c2 = (r.chunk_offset(6, k) for k in range(3))
    assert c1 - c0 == c2 - c1  # two full random chunks: same framed length
    first, second = blob[c0:c1], blob[c1:c2]
    for replaced in (second + first, first + first, second + second):
        bad = blob[:c0] + replaced + blob[c2:]
        d = download(keys, bad)
        assert type(d.error) is IntegrityError
        assert "expected chunk" in str(d.error) and d.error.user_message == DAMAGED
        assert len(d.verified) == 6


def test_records_of_another_file_or_position_fail() -> None:
    # two files of the same size: the server swaps their chunks
    f = forge([b"same size A", b"same size B"])
    a, b = f.groups[0][0], f.groups[1][0]
    f.groups[0][0], f.groups[1][0] = b, a
    failed(download(f.keys, f.blob()), IntegrityError, "expected chunk 0 of file 0, got CHUNK 1/0")
    # rewriting the header to match breaks the authentication (the header is in the AD)
    moved = bytearray(b)
    moved[6] = 0  # low byte of the file index: 1 -> 0
    f.groups[0][0], f.groups[1][0] = bytes(moved), a
    failed(
        download(f.keys, f.blob()),
        IntegrityError,
        "record CHUNK file=0 index=0 failed authentication",
    )


# --- reading: wrong keys --------------------------------------------------------------------


def test_a_wrong_link_or_password_fails_at_the_index() -> None:
    salt = os.urandom(SALT_SIZE)
    s = os.urandom(32)
    right = RelayKeys.derive(s, password_key("right", salt, 1, 8192))
    files = [b"data"]
    _, blob, _ = write(right, files)
    ok(right, blob, files)
    for keys in (
        RelayKeys.derive(s, password_key("wrong", salt, 1, 8192)),
        RelayKeys.derive(s, None),
        RelayKeys.derive(os.urandom(32), password_key("right", salt, 1, 8192)),
    ):
        d = download(keys, blob)
        failed(d, IntegrityError, "index failed authentication", WRONG_KEY_MESSAGE)
        assert [type(e) for e in d.events] == [Failed]


# --- reading: forged trailers ---------------------------------------------------------------


def _trailer(offset: int, length: int, magic: bytes = TRAILER_MAGIC) -> bytes:
    return struct.pack("!QI", offset, length) + magic


@pytest.mark.parametrize(
    ("trailer", "size", "detail"),
    [
        (b"", None, "trailer is 0 bytes"),
        (bytes(21), None, "trailer is 21 bytes"),
        (_trailer(100, 50, b"SBEND2\n\0"), None, "no drop trailer"),
        (_trailer(100, 34), None, "index length 34 out of range"),
        (_trailer(100, 35 + drop._compress_bound(drop.MAX_INDEX) + 1), None, "index length"),
        (_trailer(42, 50), None, "index offset 42 out of range"),
        (_trailer(100, 50), 171, "index [100, +50) does not end a 171-byte blob"),
    ],
)
def test_bad_trailers_fail(trailer: bytes, size: int | None, detail: str) -> None:
    r = DropReader(new_keys())
    assert r.parse_trailer(trailer, blob_size=size) == (0, 0)
    assert type(r.error) is IntegrityError and detail in str(r.error)
    assert r.error.user_message == DAMAGED


def test_a_good_trailer_at_the_limits() -> None:
    r = DropReader(new_keys())
    assert r.parse_trailer(_trailer(43, 35), blob_size=98) == (43, 35)
    assert r.state is ReaderState.INDEX


# --- reading: forged indexes ----------------------------------------------------------------


def _index_case(f: Forge, **kw: Any) -> Download:
    return download(f.keys, f.blob(**kw))


def test_index_record_must_be_exact() -> None:
    f = forge([b"abc"])
    raw = raw_index(layout(f.head, f.groups))
    body = zstandard.ZstdCompressor().compress(raw)
    for rec, detail in [
        (seal(f.keys, RecordType.INDEX, body, index=1), "expected INDEX 0xffffffff/0 flags 0"),
        (seal(f.keys, RecordType.INDEX, body, file_ix=0), "got INDEX 0x0/0"),
        (seal(f.keys, RecordType.INDEX, body, flags=Flags.LAST), "got INDEX 0xffffffff/0 flags 1"),
        (seal(f.keys, RecordType.MANIFEST, body, key="index"), "got MANIFEST"),
        (seal(f.keys, RecordType.INDEX, b"not zstd"), "index does not decompress"),
    ]:
        failed(_index_case(f, index_record=rec), IntegrityError, detail)
    version = bytearray(seal(f.keys, RecordType.INDEX, body))
    version[0] = 2
    failed(
        _index_case(f, index_record=bytes(version)),
        VersionError,
        "record version 2",
        VersionError.default_message,
    )


def test_an_index_of_the_wrong_length_fails() -> None:
    f = forge([b"abc"])
    blob = f.blob()
    r = DropReader(f.keys)
    off, n = r.parse_trailer(blob[-TRAILER_SIZE:])
    r.read_index(blob[off : off + n - 1])
    assert type(r.error) is IntegrityError
    assert str(r.error) == f"index is {n - 1} bytes, the trailer says {n}"
    bad = bytearray(blob)
    bad[off + 3] ^= 1  # the INDEX record's length prefix
    r = DropReader(f.keys)
    r.parse_trailer(bytes(bad[-TRAILER_SIZE:]))
    r.read_index(bytes(bad[off : off + n]))
    assert type(r.error) is IntegrityError and "bad length prefix" in str(r.error)


def test_an_index_declaring_too_much_fails() -> None:
    f = forge([b"abc"])
    d = download(f.keys, f.blob(), max_index=10)
    failed(d, IntegrityError, "index declares 24 bytes, more than 10")


def test_too_many_files_in_the_index_are_refused() -> None:
    f = forge([b"a", b"b"])
    d = download(f.keys, f.blob(), max_files=1)
    failed(
        d,
        UnsafeManifestError,
        "2 files",
        "Refused the offer: 2 files is more than the limit of 1.",
    )


def _entries(f: Forge) -> list[Entry]:
    return layout(f.head, f.groups)


def _index_fails(f: Forge, raw: bytes, detail: str) -> None:
    failed(_index_case(f, raw=raw), IntegrityError, detail)


def test_malformed_indexes_fail() -> None:
    f = forge([b"abc", b"defg"])
    (o0, c0, e0), (o1, c1, e1) = _entries(f)
    good = raw_index(_entries(f))
    _index_fails(f, good[:3], "index truncated")
    _index_fails(f, good[:4] + good[4:10], "index truncated")
    _index_fails(f, raw_index([(o0, [], e0), (o1, c1, e1)]), "index entry of file 0 malformed")
    _index_fails(f, good[:4] + struct.pack("!QI", o0, 9) + bytes(8), "entry of file 0 malformed")
    _index_fails(f, raw_index([(8, c0, e0), (o1, c1, e1)]), "file 0 starts at 8")
    _index_fails(f, raw_index([(o0, c0, e0), (o1 + 1, c1, e1)]), "file 1 starts at")
    _index_fails(f, raw_index([(o0, [34], e0 + 1), (o1, c1, e1)]), "chunk length out of range")
    _index_fails(f, raw_index([(o0, [35 + CS + 1], e0), (o1, c1, e1)]), "chunk length out of")
    _index_fails(f, raw_index([(o0, c0, 36), (o1, c1, e1)]), "file end length out of range")
    _index_fails(f, raw_index([(o0, c0, 35 + 1025), (o1, c1, e1)]), "file end length out of")
    _index_fails(f, raw_index([(o0, c0, e0), (o1, [35 + CS], e1)]), "file 1 runs past the index")
    _index_fails(f, good + b"\0", "index has trailing bytes")
    _index_fails(f, raw_index([(o0, c0, e0), (o1, [c1[0] - 1], e1)]), "does not end at the index")
    # the smallest accepted lengths parse (and then fail later, at the manifest)
    rest = c1[0] + e1 - 72 - 35
    small_ok = raw_index([(o0, c0, e0), (o1, [35], 37), (o1 + 72, [35], rest)])
    failed(_index_case(f, raw=small_ok), IntegrityError, "different numbers of files")


def test_an_oversized_manifest_range_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    f = forge([b"abc"])
    monkeypatch.setattr(drop, "_MAX_HEAD", len(b"".join(f.head)) - 1)
    failed(_index_case(f), IntegrityError, "manifest records too large")


# --- reading: forged manifests --------------------------------------------------------------


def test_the_manifest_range_may_include_the_magic_or_not() -> None:
    keys, files, blob = small()
    ok(keys, blob, files, magic=False)
    bad = b"SBDROP2\n" + blob[8:]
    ok(keys, bad, files, magic=False)  # the magic is not authenticated: unread, unchecked
    failed(download(keys, bad), IntegrityError, "not a ScanBeam drop (bad magic)")
    r = DropReader(keys)
    off, n = r.parse_trailer(blob[-TRAILER_SIZE:])
    r.read_index(blob[off : off + n])
    assert r.read_manifest(blob[: r.manifest_end - 1]) is None
    assert str(r.error) == f"manifest range is {r.manifest_end - 1} bytes, the index says " + str(
        r.manifest_end
    )


def _manifest_fails(f: Forge, error: type[BeamError], detail: str, msg: str = DAMAGED) -> None:
    failed(download(f.keys, f.blob()), error, detail, msg)


def test_malformed_manifest_records_fail() -> None:
    f = forge([b"abc"])
    body = encode_manifest(f.manifest)
    k = f.keys
    cases: list[tuple[list[bytes], str]] = [
        ([frame(seal(k, RecordType.MANIFEST, body))], "manifest records truncated"),
        ([struct.pack("!I", 1000) + seal(k, RecordType.MANIFEST, body)], "record truncated"),
        ([struct.pack("!I", 3) + b"abc" + bytes(40)], "bad length prefix 3"),
        (
            [frame(seal(k, RecordType.MANIFEST, body, index=1, flags=Flags.LAST))],
            "expected MANIFEST 0xffffffff/0 flags 1, got MANIFEST 0xffffffff/1",
        ),
        (
            [frame(seal(k, RecordType.MANIFEST, body, flags=Flags.LAST | Flags.COMPRESSED))],
            "got MANIFEST 0xffffffff/0 flags 3",
        ),
        (
            [frame(seal(k, RecordType.MANIFEST, body, flags=Flags.LAST, key="data"))],
            "record MANIFEST file=4294967295 index=0 failed authentication",
        ),
        (
            [frame(seal(k, RecordType.MANIFEST, body, flags=Flags.LAST)), bytes(4)],
            "bytes between the manifest and the first file",
        ),
        (
            [
                frame(seal(k, RecordType.MANIFEST, body[:5])),
                frame(seal(k, RecordType.MANIFEST, body[5:], index=2, flags=Flags.LAST)),
            ],
            "got MANIFEST 0xffffffff/2",
        ),
    ]
    for head, detail in cases:
        f.head = head
        _manifest_fails(f, IntegrityError, detail)
    # the default message names damage, not a wrong key: the index proved the key right
    f.head = [
        frame(seal(k, RecordType.MANIFEST, body[:5])),
        frame(seal(k, RecordType.MANIFEST, body[5:], index=1, flags=Flags.LAST)),
    ]
    ok(f.keys, f.blob(), f.files)


def test_hostile_names_in_a_drop_are_refused() -> None:
    m = Manifest(files=(FileEntry("../evil.sh", 3, 0, bytes(16)),), chunk_size=CS)
    f = forge([b"abc"], m)
    _manifest_fails(
        f,
        UnsafeManifestError,
        "'../evil.sh' contains an empty",
        "Refused the offer: the name '../evil.sh' contains an empty, '.' or '..' part.",
    )


def test_manifest_and_index_must_agree() -> None:
    f = forge([b"abc"], make_manifest([3], chunk_size=DEFAULT_CHUNK_SIZE))
    _manifest_fails(f, IntegrityError, f"drop chunk size {DEFAULT_CHUNK_SIZE}")
    f = forge([b"abc"])
    f.head = head_records(f.keys, make_manifest([3, 4]))
    _manifest_fails(f, IntegrityError, "different numbers of files")
    f = forge([b"abc"])
    f.head = head_records(f.keys, make_manifest([CS + 1]))
    _manifest_fails(f, IntegrityError, "file 0 has 2 chunks, the index lists 1")
    f = forge([b"abc"])
    f.head = head_records(f.keys, make_manifest([2]))
    _manifest_fails(f, IntegrityError, "the last chunk of file 0 is too long")


# --- reading: forged file records -----------------------------------------------------------


def _chunk(f: Forge, body: bytes, **kw: Any) -> bytes:
    args: dict[str, Any] = {"file_ix": 0, "prefix": f.manifest.files[0].prefix, "flags": Flags.LAST}
    args.update(kw)
    return seal(f.keys, RecordType.CHUNK, body, **args)


def _file_fails(f: Forge, detail: str, error: type[BeamError] = IntegrityError) -> None:
    d = download(f.keys, f.blob(), pieces=[7])
    failed(d, error, detail, DAMAGED if error is IntegrityError else error.default_message)
    assert not d.verified


def test_bad_chunk_records_fail() -> None:
    data = b"x" * 1000
    f = forge([data])
    end = f.groups[0][1]
    packed = zstandard.ZstdCompressor().compress
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress
    cases: list[tuple[bytes, str]] = [
        (_chunk(f, data, index=1), "expected chunk 0 of file 0, got CHUNK 0/1"),
        (_chunk(f, data, file_ix=CONTROL_FILE), "got CHUNK 4294967295/0"),
        (seal(f.keys, RecordType.FILE_END, data, index=0, file_ix=0), "got FILE_END 0/0"),
        (_chunk(f, data, key="file_end"), "record CHUNK file=0 index=0 failed authentication"),
        (_chunk(f, data, prefix=bytes(16)), "failed authentication"),
        (_chunk(f, data, flags=Flags.NONE), "last-chunk flag wrong"),
        (_chunk(f, data[:-1]), "chunk length 999, expected 1000"),
        (_chunk(f, packed(data[:-1]), flags=Flags.LAST | Flags.COMPRESSED), "declares length 999"),
        (_chunk(f, b"garbage!", flags=Flags.LAST | Flags.COMPRESSED), "does not decompress"),
        (_chunk(f, unsized(data[:-1]), flags=Flags.LAST | Flags.COMPRESSED), "length 999, exp"),
        (_chunk(f, unsized(data + b"x"), flags=Flags.LAST | Flags.COMPRESSED), "not decompress"),
    ]
    for record, detail in cases:
        f.groups[0] = [record, end]
        _file_fails(f, detail)
    f.groups[0] = [_chunk(f, packed(data), flags=Flags.LAST | Flags.COMPRESSED), end]
    ok(f.keys, f.blob(), [data])
    f.groups[0] = [_chunk(f, unsized(data), flags=Flags.LAST | Flags.COMPRESSED), end]
    ok(f.keys, f.blob(), [data])


def test_a_chunk_not_matching_its_index_length_fails() -> None:
    f = forge([b"abc"])
    blob = bytearray(f.blob())
    r = download(f.keys, bytes(blob)).reader
    at = r.chunk_offset(0, 0)
    blob[at + 3] += 1
    d = download(f.keys, bytes(blob))
    failed(d, IntegrityError, "record 0/0 is 39 bytes framed, the index says 38")


def test_bad_file_end_records_fail() -> None:
    data = b"abc"
    f = forge([data])
    chunk = f.groups[0][0]
    good = json.dumps({"sha256": hashlib.sha256(data).hexdigest()}).encode()
    wrong = json.dumps({"sha256": hashlib.sha256(b"abd").hexdigest()}).encode()
    end = RecordType.FILE_END
    cases: list[tuple[bytes, str, type[BeamError]]] = [
        (seal(f.keys, end, good, index=1, file_ix=0), "got FILE_END 0x0/1", IntegrityError),
        (seal(f.keys, end, good, index=0, file_ix=1), "got FILE_END 0x1/0", IntegrityError),
        (seal(f.keys, end, good, file_ix=0, flags=Flags.LAST), "flags 1", IntegrityError),
        (_chunk(f, good), "expected FILE_END 0x0/0 flags 0, got CHUNK", IntegrityError),
        (seal(f.keys, end, good, file_ix=0, key="data"), "FILE_END file=0", IntegrityError),
        (seal(f.keys, end, b"{nope", file_ix=0), "control record is not JSON", RemoteProtocolError),
        (
            seal(f.keys, end, b"[]", file_ix=0),
            "control record is not an object",
            RemoteProtocolError,
        ),
    ]
    for record, detail, error in cases:
        f.groups[0] = [chunk, record]
        _file_fails(f, detail, error)
    f.groups[0] = [chunk, seal(f.keys, end, wrong, file_ix=0)]
    d = download(f.keys, f.blob())
    failed(
        d,
        IntegrityError,
        "file 0 SHA-256 mismatch",
        "File 'study/f0.dcm' failed its SHA-256 check; it was not saved as complete.",
    )
    assert [type(e) for e in d.events[-2:]] == [ChunkReceived, Failed]


# --- fuzzing: random input never raises ----------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=20, max_size=20), st.binary(max_size=300), st.binary(max_size=300))
def test_random_input_never_raises(trailer: bytes, index: bytes, head: bytes) -> None:
    keys, _files, blob = small()
    r = DropReader(keys)
    r.parse_trailer(trailer)
    r2 = DropReader(keys)
    off, n = r2.parse_trailer(blob[-TRAILER_SIZE:])
    r2.read_index(index)
    assert r2.state is ReaderState.FAILED
    r3 = DropReader(keys)
    r3.parse_trailer(blob[-TRAILER_SIZE:])
    r3.read_index(blob[off : off + n])
    assert r3.read_manifest(head) is None
    r4 = download(keys, blob).reader
    r4.start_file(3, 0, hashlib.sha256())
    start, end = r4.file_range(3, 0)
    r4.feed(head[: end - start])
    assert r4.state in (ReaderState.FILE, ReaderState.FAILED)


# --- purity ----------------------------------------------------------------------------------


def test_drop_imports_no_io_library() -> None:
    code = (
        "import sys, peer.proto.drop\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('asyncio', 'socket', 'ssl', 'selectors', 'aiortc', 'websockets', 'relay'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
