"""Edges of the Receiver machine (docs/protocol.md §5, §7).

Bad records from the sender end in FAILED with one Failed event and an ERROR record
naming the code; our own misuse raises LocalProtocolError.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct

import pytest
import zstandard

from peer.errors import (
    BeamError,
    DiskFull,
    IntegrityError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
    UnsafeManifestError,
)
from peer.proto import receiver as rx
from peer.proto import sender as tx
from peer.proto.manifest import encode_manifest
from peer.proto.records import (
    CONTROL_FILE,
    MAX_RECORD,
    OVERHEAD,
    Flags,
    RecordType,
    open_record,
    parse_header,
    seal_record,
)

from .pair import (
    Transfer,
    error_code,
    expect_failed,
    make_manifest,
    seal_chunk,
    seal_s2r,
    session_keys,
)

R = rx.ReceiverState
LAST = Flags.LAST
ZIP = Flags.COMPRESSED


def _receiving(files: list[bytes] | None = None, window: int = 8) -> Transfer:
    """Receiver RECEIVING file 0 chunk 0; the sender's records are made by hand."""
    t = Transfer([os.urandom(3000), b"yz"] if files is None else files, window=window)
    t.receiver.accept()
    t.receiver.data_to_send()
    return t


def _failed(t: Transfer, error: type[BeamError], detail: str) -> BeamError:
    """The receiver failed and told the sender with an ERROR record."""
    err = expect_failed(t.receiver, error, detail)
    out = t.receiver.data_to_send()
    assert error_code(t.keys, out[-1], s2r=False) == err.code
    t.receiver.receive_message(seal_s2r(t.keys, RecordType.ERROR, b"{}", 99))  # ignored
    assert t.receiver.events_received() == [] and t.receiver.data_to_send() == []
    return err


def _chunk(t: Transfer, file_ix: int, chunk_ix: int, flags: Flags | None = None) -> bytes:
    """The genuine chunk, sealed (uncompressed) with the right LAST flag unless told."""
    cs = t.manifest.chunk_size
    body = t.files[file_ix][chunk_ix * cs : (chunk_ix + 1) * cs]
    if flags is None:
        last = chunk_ix == t.manifest.files[file_ix].n_chunks(cs) - 1
        flags = LAST if last else Flags.NONE
    return seal_chunk(t.keys, t.manifest, file_ix, chunk_ix, body, flags)


def _file_end(t: Transfer, seq: int, file_ix: int, digest: str | None = None) -> bytes:
    d = digest or hashlib.sha256(t.files[file_ix]).hexdigest()
    body = json.dumps({"sha256": d}).encode()
    return seal_s2r(t.keys, RecordType.FILE_END, body, seq, file_ix=file_ix)


def _verified() -> Transfer:
    """Both files received and verified (manifest used seq 0; FILE_ENDs seq 1 and 2)."""
    t = _receiving(window=8)
    for i in range(3):
        t.receiver.receive_message(_chunk(t, 0, i))
    t.receiver.receive_message(_file_end(t, 1, 0))
    t.receiver.receive_message(_chunk(t, 1, 0))
    t.receiver.receive_message(_file_end(t, 2, 1))
    assert t.receiver.state is R.VERIFIED
    t.receiver.events_received()
    return t


# construction and local misuse


@pytest.mark.parametrize("window", [0, -1])
def test_window_must_be_positive(window: int) -> None:
    with pytest.raises(LocalProtocolError, match=r"^window must be positive$"):
        rx.Receiver(session_keys(), window=window)


@pytest.mark.parametrize("resume", [[0], [0, 0, 0], [-1, 0], [4, 0], [0, 2]])
def test_accept_checks_resume_points(resume: list[int]) -> None:
    t = Transfer([b"x" * 3000, b"yz"])  # 3 chunks and 1 chunk
    with pytest.raises(LocalProtocolError, match=r"^resume points do not match the manifest$"):
        t.receiver.accept(resume)
    assert t.receiver.state is R.OFFERED and t.receiver.data_to_send() == []


def test_accept_needs_one_hash_per_file() -> None:
    t = Transfer([b"x" * 3000, b"yz"])
    with pytest.raises(LocalProtocolError, match=r"^one hash state per file needed$"):
        t.receiver.accept([3, 1], [hashlib.sha256()])
    assert t.receiver.state.value == "offered"
    full = [hashlib.sha256(f) for f in t.files]
    t.receiver.accept([3, 1], full)  # everything already held: the bounds are inclusive
    assert t.receiver.state is R.RECEIVING


def test_local_misuse_outside_the_right_state() -> None:
    t = Transfer([b"abc"])
    with pytest.raises(LocalProtocolError, match=r"^receiver is offered, not verified$"):
        t.receiver.finish()
    t.receiver.decline()
    with pytest.raises(LocalProtocolError, match=r"^receiver is declined, not offered$"):
        t.receiver.accept()
    with pytest.raises(LocalProtocolError, match=r"^receiver is declined, not offered$"):
        t.receiver.decline()


def _credit(t: Transfer, rec: bytes) -> int:
    hdr = parse_header(rec)
    assert hdr.type is RecordType.CREDIT
    return int.from_bytes(open_record(t.keys.ctrl_r2s, t.keys.transfer_id, rec, hdr), "big")


def test_release_grants_credit_in_quarter_windows() -> None:
    t = _receiving([b"x" * 8000], window=8)
    for i in range(4):
        t.receiver.receive_message(_chunk(t, 0, i))
    t.receiver.release(1)  # 1 + 8 - 8 < 8 // 4: no record yet
    assert t.receiver.data_to_send() == []
    t.receiver.release(1)
    assert [_credit(t, r) for r in t.receiver.data_to_send()] == [10]
    t.receiver.release(2)
    assert [_credit(t, r) for r in t.receiver.data_to_send()] == [12]


def test_release_reaches_the_sender_as_cumulative_credit() -> None:
    t = Transfer([os.urandom(12_000)], window=8)  # 12 chunks
    t.accept()
    assert t.send_chunks() == 8 and t.sender.next_read() is None
    t.s2r()
    t.receiver.events_received()
    t.receiver.release(1)
    t.r2s()
    assert t.sender.next_read() is None  # 9 - 8 < 2: no CREDIT record yet
    t.receiver.release(1)
    t.r2s()
    assert t.send_chunks() == 2  # 10 granted in all


def test_window_of_one_grants_after_every_chunk() -> None:
    t = Transfer([b"x" * 3000], window=1)
    t.accept()
    for expected in (1, 1, 1):
        assert t.send_chunks() == expected
        t.s2r()
        t.receiver.release(1)
        t.r2s()
    assert t.receiver.state is R.VERIFIED


def test_release_more_than_received_is_misuse() -> None:
    t = _receiving()
    t.receiver.receive_message(_chunk(t, 0, 0))
    with pytest.raises(LocalProtocolError, match=r"^released more chunks than received$"):
        t.receiver.release(2)


def test_release_outside_receiving_is_ignored() -> None:
    t = Transfer([b"abc"])
    t.receiver.release(5)
    assert t.receiver.data_to_send() == [] and t.receiver.state is R.OFFERED


def test_local_fail_sends_error_once() -> None:
    t = _receiving()
    err = DiskFull("no space")
    t.receiver.fail(err)
    assert t.receiver.state is R.FAILED and t.receiver.error is err
    assert t.receiver.events_received() == [rx.Failed(err)]
    (rec,) = t.receiver.data_to_send()
    assert error_code(t.keys, rec, s2r=False) == "disk-full"
    t.receiver.fail(DiskFull("again"))
    assert t.receiver.events_received() == [] and t.receiver.data_to_send() == []
    assert t.receiver.error is err


def test_local_fail_reaches_the_sender() -> None:
    t = Transfer([b"abc"])
    t.accept()
    t.receiver.fail(DiskFull("no space"))
    t.r2s()
    err = expect_failed(t.sender, RemoteError, "peer error 'disk-full'")
    assert err.user_message == (
        "The other side stopped: Not enough free disk space in the destination folder."
    )
    assert t.sender.data_to_send() == []  # an ERROR is not answered


@pytest.mark.parametrize("end", ["declined", "done"])
def test_local_fail_after_the_end_is_ignored(end: str) -> None:
    if end == "declined":
        t = Transfer([b"abc"])
        t.receiver.decline()
    else:
        t = _verified()
        t.receiver.finish()
        t.receiver.receive_message(seal_s2r(t.keys, RecordType.CLOSE, b"", 3))
    t.receiver.data_to_send()
    t.receiver.events_received()
    state = t.receiver.state
    t.receiver.fail(DiskFull("late"))
    t.receiver.receive_message(b"garbage")
    assert t.receiver.state is state and t.receiver.error is None
    assert t.receiver.events_received() == [] and t.receiver.data_to_send() == []


# control records


@pytest.mark.parametrize(
    "rtype", [RecordType.ACCEPT, RecordType.DECLINE, RecordType.CREDIT, RecordType.RECEIPT]
)
def test_receiver_only_record_types_fail(rtype: RecordType) -> None:
    t = _receiving()
    t.receiver.receive_message(seal_s2r(t.keys, rtype, b"", 1))
    _failed(t, RemoteProtocolError, f"sender sent a {rtype.name} record")


def test_control_record_out_of_sequence() -> None:
    t = _receiving()
    t.receiver.receive_message(seal_s2r(t.keys, RecordType.CLOSE, b"", 2))
    _failed(t, IntegrityError, "control record out of sequence (2)")


def test_error_from_the_sender() -> None:
    t = _receiving()
    t.receiver.receive_message(seal_s2r(t.keys, RecordType.ERROR, b'{"code": "source"}', 1))
    err = expect_failed(t.receiver, RemoteError, "peer error 'source'")
    assert err.user_message == "The other side stopped: A file to send could not be read."
    assert t.receiver.data_to_send() == []


@pytest.mark.parametrize("when", ["offered", "receiving", "verified"])
def test_close_before_the_receipt(when: str) -> None:
    if when == "offered":
        t, seq = Transfer([b"abc"]), 1
    elif when == "receiving":
        t, seq = _receiving(), 1
    else:  # all verified, but finish() has not sent the receipt yet
        t, seq = _verified(), 3
    t.receiver.receive_message(seal_s2r(t.keys, RecordType.CLOSE, b"", seq))
    _failed(t, RemoteProtocolError, "close before the receipt")


def test_close_after_the_receipt() -> None:
    t = _verified()
    t.receiver.finish()
    (receipt,) = t.receiver.data_to_send()
    assert receipt[1] == RecordType.RECEIPT
    t.receiver.receive_message(seal_s2r(t.keys, RecordType.CLOSE, b"", 3))
    assert t.receiver.state is R.DONE
    assert t.receiver.events_received() == [rx.Closed()]


# the manifest


def test_manifest_sent_twice() -> None:
    t = Transfer([b"abc"])
    blob = encode_manifest(t.manifest)
    t.receiver.receive_message(seal_s2r(t.keys, RecordType.MANIFEST, blob, 1, flags=LAST))
    _failed(t, RemoteProtocolError, "manifest sent twice")


def test_manifest_in_several_parts() -> None:
    files = [os.urandom(1) for _ in range(3000)]  # random prefixes: ~100 KB compressed
    keys = session_keys()
    s = tx.Sender(keys, make_manifest(files))
    r = rx.Receiver(keys)
    s.start()
    parts = s.data_to_send()
    assert len(parts) > 1
    assert [p[2] for p in parts] == [0] * (len(parts) - 1) + [LAST]
    for p in parts[:-1]:
        r.receive_message(p)
        assert r.events_received() == [] and r.state is R.WAIT_MANIFEST
    r.receive_message(parts[-1])
    (ev,) = r.events_received()
    assert isinstance(ev, rx.Offered) and ev.manifest.files == s.manifest.files


def test_manifest_too_large_on_the_wire() -> None:
    keys = session_keys()
    r = rx.Receiver(keys)
    part = bytes(MAX_RECORD - OVERHEAD)
    n = rx.MAX_MANIFEST_WIRE // len(part)
    for i in range(n):
        r.receive_message(seal_s2r(keys, RecordType.MANIFEST, part, i))
    assert r.state is R.WAIT_MANIFEST and r.events_received() == []
    r.receive_message(seal_s2r(keys, RecordType.MANIFEST, part, n))
    err = expect_failed(r, RemoteProtocolError, "manifest too large")
    assert type(err) is RemoteProtocolError


def test_a_manifest_bomb_fails_without_raising() -> None:
    # a frame that declares 32 TiB of content (zstandard allocated it: MemoryError)
    bomb = b"\x28\xb5\x2f\xfd\xe0" + struct.pack("<Q", 1 << 45) + b"\x01\x00\x00"
    keys = session_keys()
    r = rx.Receiver(keys)
    r.receive_message(seal_s2r(keys, RecordType.MANIFEST, bomb, 0, flags=LAST))
    err = expect_failed(r, UnsafeManifestError, "manifest too large")
    assert err.user_message == "Refused the offer: its file list is too large."


# chunks


@pytest.mark.parametrize("state", ["offered", "verified"])
def test_chunk_outside_receiving(state: str) -> None:
    t = Transfer([b"abc"]) if state == "offered" else _verified()
    t.receiver.receive_message(_chunk(t, 0, 0))
    _failed(t, RemoteProtocolError, f"chunk while {state}")


@pytest.mark.parametrize(
    ("file_ix", "chunk_ix"), [(CONTROL_FILE, 0), (1, 0), (0, 1), (0, 2**64 - 1)]
)
def test_unexpected_chunk_position(file_ix: int, chunk_ix: int) -> None:
    t = _receiving()
    rec = seal_record(
        t.keys.data_s2r,
        t.keys.transfer_id,
        RecordType.CHUNK,
        bytes(1024),
        index=chunk_ix,
        file_ix=file_ix,
        prefix=t.manifest.files[0].prefix,
    )
    t.receiver.receive_message(rec)
    _failed(t, IntegrityError, f"unexpected chunk {file_ix}/{chunk_ix}, expected 0/0")


def test_chunk_beyond_the_end_of_the_file() -> None:
    t = _receiving()
    for i in range(3):
        t.receiver.receive_message(_chunk(t, 0, i))
    t.receiver.events_received()
    t.receiver.receive_message(seal_chunk(t.keys, t.manifest, 0, 3, b"", LAST))
    _failed(t, IntegrityError, "chunk beyond the end of the file")


def test_chunk_under_the_wrong_prefix() -> None:
    t = _receiving()
    rec = seal_chunk(t.keys, t.manifest, 1, 0, t.files[0][:1024])  # file 1's nonce prefix
    t.receiver.receive_message(rec[:3] + bytes(4) + rec[7:])  # relabelled as file 0
    _failed(t, IntegrityError, "record CHUNK file=0 index=0 failed authentication")


@pytest.mark.parametrize(("chunk_ix", "flags"), [(0, LAST), (0, LAST | ZIP), (2, Flags.NONE)])
def test_last_flag_must_match_the_manifest(chunk_ix: int, flags: Flags) -> None:
    t = _receiving()
    for i in range(chunk_ix):
        t.receiver.receive_message(_chunk(t, 0, i))
    t.receiver.events_received()
    t.receiver.receive_message(_chunk(t, 0, chunk_ix, flags))
    err = _failed(t, IntegrityError, "last-chunk flag wrong (truncated or extended file)")
    assert err.user_message == IntegrityError.default_message


@pytest.mark.parametrize(("body", "got"), [(b"", 0), (bytes(1023), 1023), (bytes(1025), 1025)])
def test_uncompressed_chunk_of_the_wrong_length(body: bytes, got: int) -> None:
    t = _receiving()
    t.receiver.receive_message(seal_chunk(t.keys, t.manifest, 0, 0, body))
    _failed(t, IntegrityError, f"chunk length {got}, expected 1024")


def test_last_chunk_has_the_remainder_length() -> None:
    t = _receiving()
    for i in range(2):
        t.receiver.receive_message(_chunk(t, 0, i))
    t.receiver.events_received()
    t.receiver.receive_message(seal_chunk(t.keys, t.manifest, 0, 2, bytes(1024), LAST))
    _failed(t, IntegrityError, "chunk length 1024, expected 952")


def _zstd(data: bytes, *, content_size: bool = True) -> bytes:
    return bytes(zstandard.ZstdCompressor(write_content_size=content_size).compress(data))


def test_compressed_chunk_is_decompressed() -> None:
    t = _receiving([b"ab" * 1024])
    body = _zstd(b"ab" * 512)
    t.receiver.receive_message(seal_chunk(t.keys, t.manifest, 0, 0, body, ZIP))
    (ev,) = t.receiver.events_received()
    assert ev == rx.ChunkReceived(0, 0, 0, b"ab" * 512, False)


def test_compressed_chunk_of_unknown_size_is_accepted_when_exact() -> None:
    t = _receiving([b"ab" * 1024])
    body = _zstd(b"ab" * 512, content_size=False)
    t.receiver.receive_message(seal_chunk(t.keys, t.manifest, 0, 0, body, ZIP))
    assert t.receiver.events_received() == [rx.ChunkReceived(0, 0, 0, b"ab" * 512, False)]


@pytest.mark.parametrize("declared", [0, 1023, 1025, 1 << 45])
def test_compressed_chunk_declaring_another_length(declared: int) -> None:
    # the size is checked before decompressing: 32 TiB used to be allocated (MemoryError)
    body = b"\x28\xb5\x2f\xfd\xe0" + struct.pack("<Q", declared) + b"\x01\x00\x00"
    t = _receiving()
    t.receiver.receive_message(seal_chunk(t.keys, t.manifest, 0, 0, body, ZIP))
    _failed(t, IntegrityError, f"chunk declares length {declared}, expected 1024")


@pytest.mark.parametrize(
    "body",
    [
        b"not zstd",
        b"",
        _zstd(bytes(1024))[:-3],  # truncated
        _zstd(bytes(2048), content_size=False),  # more than the chunk holds
    ],
    ids=["garbage", "empty", "truncated", "too-long"],
)
def test_compressed_chunk_that_does_not_decompress(body: bytes) -> None:
    t = _receiving()
    t.receiver.receive_message(seal_chunk(t.keys, t.manifest, 0, 0, body, ZIP))
    _failed(t, IntegrityError, "chunk does not decompress")


def test_compressed_chunk_of_unknown_size_too_short() -> None:
    t = _receiving()
    body = _zstd(bytes(1000), content_size=False)
    t.receiver.receive_message(seal_chunk(t.keys, t.manifest, 0, 0, body, ZIP))
    _failed(t, IntegrityError, "chunk length 1000, expected 1024")


# FILE_END


def test_file_end_while_not_receiving() -> None:
    t = Transfer([b"abc"])
    t.receiver.receive_message(_file_end(t, 1, 0))
    _failed(t, RemoteProtocolError, "file end while not receiving")


@pytest.mark.parametrize(("chunks", "file_ix"), [(2, 0), (3, 1), (0, 0)])
def test_file_end_too_early_or_for_another_file(chunks: int, file_ix: int) -> None:
    t = _receiving()
    for i in range(chunks):
        t.receiver.receive_message(_chunk(t, 0, i))
    t.receiver.events_received()
    t.receiver.receive_message(_file_end(t, 1, file_ix))
    _failed(t, IntegrityError, "file ended early (truncated)")


@pytest.mark.parametrize(
    ("body", "detail"),
    [(b"", "control record is not JSON"), (b'["x"]', "control record is not an object")],
)
def test_file_end_not_json(body: bytes, detail: str) -> None:
    t = _receiving([b"abc"])
    t.receiver.receive_message(_chunk(t, 0, 0))
    t.receiver.events_received()
    t.receiver.receive_message(seal_s2r(t.keys, RecordType.FILE_END, body, 1, file_ix=0))
    _failed(t, RemoteProtocolError, detail)


@pytest.mark.parametrize("digest", ["0" * 64, "", None])
def test_file_end_sha256_mismatch(digest: str | None) -> None:
    t = _receiving([b"abc"])
    t.receiver.receive_message(_chunk(t, 0, 0))
    t.receiver.events_received()
    body = json.dumps({} if digest is None else {"sha256": digest}).encode()
    t.receiver.receive_message(seal_s2r(t.keys, RecordType.FILE_END, body, 1, file_ix=0))
    err = _failed(t, IntegrityError, "file 0 SHA-256 mismatch")
    assert err.user_message == (
        "File 'dir/f0.bin' failed its SHA-256 check; it was not saved as complete."
    )


def test_resumed_file_is_checked_against_the_held_prefix() -> None:
    data = os.urandom(3000)
    t = Transfer([data])
    held = hashlib.sha256(data[:1024])
    t.receiver.accept([1], [held])
    t.receiver.data_to_send()
    t.receiver.receive_message(_chunk(t, 0, 0))  # already held: not expected again
    _failed(t, IntegrityError, "unexpected chunk 0/0, expected 0/1")
    u = Transfer([data])
    u.receiver.accept([1], [hashlib.sha256(b"something else")])
    for i in (1, 2):
        u.receiver.receive_message(_chunk(u, 0, i))
    u.receiver.events_received()
    u.receiver.receive_message(_file_end(u, 1, 0))
    _failed(u, IntegrityError, "file 0 SHA-256 mismatch")


def test_empty_offer_is_verified_at_once() -> None:
    t = Transfer([])
    t.receiver.accept()
    assert t.receiver.state is R.VERIFIED
    assert t.receiver.events_received() == [rx.AllVerified()]


# the state table and the trace hook


def test_trace_shows_every_transition() -> None:
    keys = session_keys()
    s = tx.Sender(keys, make_manifest([b"abc"]))
    r = rx.Receiver(keys)
    lines: list[str] = []
    r.trace = lines.append
    s.start()
    for rec in s.data_to_send():
        r.receive_message(rec)
    r.accept()
    for rec in r.data_to_send():
        s.receive_message(rec)
    req = s.next_read()
    assert req is not None
    s.feed(req, b"abc")
    for rec in s.data_to_send():
        r.receive_message(rec)
    r.finish()
    for rec in r.data_to_send():
        s.receive_message(rec)
    for rec in s.data_to_send():
        r.receive_message(rec)
    assert lines == [
        "receiver[wait-manifest] -> offered",
        "receiver[offered] -> receiving",
        "receiver[receiving] -> verified",
        "receiver[verified] -> done",
    ]
    d = rx.Receiver(keys)
    d.trace = lines.append
    d.receive_message(b"junk")
    assert lines[-1] == "receiver[wait-manifest] -> failed (protocol)"


def test_transition_table_matches_the_spec() -> None:
    # docs/protocol.md §7: failure is reachable from anywhere and bypasses the table
    assert {k: set(v) for k, v in rx._TRANSITIONS.items()} == {
        R.WAIT_MANIFEST: {R.OFFERED},
        R.OFFERED: {R.RECEIVING, R.DECLINED},
        R.RECEIVING: {R.VERIFIED},
        R.VERIFIED: {R.DONE},
        R.DONE: set(),
        R.DECLINED: set(),
        R.FAILED: set(),
    }


@pytest.mark.parametrize("old", list(R))
def test_transitions_outside_the_table_raise(old: rx.ReceiverState) -> None:
    keys = session_keys()
    for new in R:
        if new in rx._TRANSITIONS[old]:
            continue
        r = rx.Receiver(keys)
        r.state = old
        with pytest.raises(LocalProtocolError, match=rf"^receiver {old.value} -> {new.value}$"):
            r._set(new)
        assert r.state is old
