from __future__ import annotations

import itertools
import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.errors import (
    DeclinedError,
    IntegrityError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
)
from peer.proto import receiver as rx
from peer.proto import sender as tx
from peer.proto.records import RecordType, parse_header

from .pair import Pair, make_manifest, session_keys

SIZES = [0, 1, 1023, 1024, 1025, 5000]


def _failed(events: list[object]) -> rx.Failed | tx.Failed:
    fails = [e for e in events if isinstance(e, rx.Failed | tx.Failed)]
    assert fails, events
    return fails[0]


def test_round_trip_files_of_every_boundary_size() -> None:
    files = [os.urandom(n) for n in SIZES] + [b"A" * 10_000]
    p = Pair(files)
    p.run()
    assert p.received() == files
    assert p.sender.state is tx.SenderState.DONE
    assert p.receiver.state is rx.ReceiverState.DONE
    done = [e for e in p.s_events if isinstance(e, tx.Completed)]
    assert done and done[0].files == len(files)
    assert isinstance(p.r_events[-1], rx.Closed)


def test_compressible_data_is_compressed_and_random_data_is_not() -> None:
    p = Pair([b"\x00\x01" * 50_000])
    p.run()
    assert p.sender.bytes_compressed_out < p.sender.bytes_compressed_in / 10
    q = Pair([os.urandom(100_000)])
    q.run()
    assert q.received() == q.files
    # after one chunk that did not pay, compression pauses for a while
    assert q.sender.bytes_compressed_in < 100_000 / 2


def test_compression_can_be_paused_and_resumed_at_any_chunk() -> None:
    data = b"\x00\x01" * 50_000
    p = Pair([data])
    p.sender.set_compression(False)
    assert not p.sender.compressing
    p.run()
    assert p.received() == [data]
    assert p.sender.bytes_compressed_in == 0  # nothing was compressed
    q = Pair([data, data])
    batches: list[int] = []

    def resume_after_a_few(batch: list[bytes]) -> list[bytes]:
        batches.append(len(batch))
        if len(batches) == 20:  # the offer, then chunks sent as they are, then compressed
            q.sender.set_compression(True)
        return batch

    q.tamper = resume_after_a_few
    q.sender.set_compression(False)
    q.run()
    assert q.sender.compressing
    assert q.received() == [data, data]
    assert 0 < q.sender.bytes_compressed_in < 2 * len(data) - 10 * 1024


def test_the_compression_level_can_change_at_any_chunk() -> None:
    # 12-bit samples in 16 bits, a random walk (like CT pixels): level 3 packs it smaller
    rng = random.Random(7)
    walk = list(itertools.accumulate(rng.randint(-3, 3) for _ in range(60_000)))
    data = struct.pack(f"<{len(walk)}H", *(1000 + v % 3000 for v in walk))
    sizes = {}
    for level in (1, 3):
        p = Pair([data], chunk_size=65472, window=64)
        assert p.sender.compression_level == 1  # the default
        p.sender.set_compression_level(level)
        p.sender.set_compression_level(level)  # the same level again: kept
        assert p.sender.compression_level == level
        p.run()
        assert p.received() == [data]
        sizes[level] = p.sender.bytes_compressed_out
    assert sizes[3] < sizes[1]
    q = Pair([data], compress=False)
    q.sender.set_compression_level(3)  # no compressor: nothing to change
    assert q.sender.compression_level is None
    q.run()
    assert q.received() == [data] and q.sender.bytes_compressed_in == 0


def test_empty_transfer() -> None:
    p = Pair([])
    p.run()
    assert p.sender.state is tx.SenderState.DONE


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=4000), max_size=5), st.booleans())
def test_round_trip_property(files: list[bytes], compress: bool) -> None:
    p = Pair(files, compress=compress)
    p.run()
    assert p.received() == files


def test_window_bounds_records_in_flight() -> None:
    p = Pair([os.urandom(50_000)], window=4)
    p.run()
    assert p.received() == p.files
    assert p.max_in_flight <= 4


def test_resume_sends_only_missing_chunks() -> None:
    data = os.urandom(10 * 1024 + 7)
    p = Pair([data, b"xyz" * 100], resume=[6, 1])
    p.run()
    assert p.received() == p.files
    chunks = [e for e in p.r_events if isinstance(e, rx.ChunkReceived)]
    assert [c.chunk_ix for c in chunks] == [6, 7, 8, 9, 10]
    assert next(e for e in p.s_events if isinstance(e, tx.Accepted)).resume_bytes == 6 * 1024 + 300


def test_declined() -> None:
    p = Pair([b"abc"], accept=False)
    p.run()
    assert p.receiver.state is rx.ReceiverState.DECLINED
    assert any(isinstance(e, tx.Declined) for e in p.s_events)
    assert isinstance(p.sender.error, DeclinedError)


def _flip_in_chunk(batch: list[bytes]) -> list[bytes]:
    out = []
    for rec in batch:
        if parse_header(rec).type is RecordType.CHUNK and parse_header(rec).index == 2:
            rec = rec[:-20] + bytes([rec[-20] ^ 1]) + rec[-19:]
        out.append(rec)
    return out


def test_tampered_chunk_fails_with_integrity_error_and_sender_learns() -> None:
    p = Pair([os.urandom(8000)], tamper_s2r=_flip_in_chunk)
    p.run()
    fail = _failed(p.r_events)
    assert isinstance(fail.error, IntegrityError)
    assert p.receiver.state is rx.ReceiverState.FAILED
    assert isinstance(p.sender.error, RemoteError)
    assert p.sender.error.user_message == (
        "The other side stopped: Data failed its integrity check; "
        "the damaged file was not saved as complete."
    )
    # nothing after the bad chunk was handed out
    assert len(p.out[0]) == 2 * 1024


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_flipped_byte_in_any_record_fails_integrity(data: st.DataObject) -> None:
    target = data.draw(st.integers(0, 12))
    raw_pos = data.draw(st.integers(0, 1 << 16))
    bit = data.draw(st.integers(0, 7))
    seen = [0]
    flipped: list[RecordType] = []

    def flip(batch: list[bytes]) -> list[bytes]:
        out = []
        for rec in batch:
            if seen[0] == target:
                flipped.append(parse_header(rec).type)
                pos = raw_pos % len(rec)
                rec = rec[:pos] + bytes([rec[pos] ^ (1 << bit)]) + rec[pos + 1 :]
            seen[0] += 1
            out.append(rec)
        return out

    p = Pair([os.urandom(3000), os.urandom(2000)], tamper_s2r=flip)
    p.run()
    if seen[0] <= target:
        return  # fewer records than the target: nothing was flipped
    fail = _failed(p.r_events)
    assert isinstance(fail.error, RemoteProtocolError)
    assert p.receiver.state is rx.ReceiverState.FAILED
    if flipped != [RecordType.CLOSE]:  # CLOSE follows the sender's verified receipt
        assert not any(isinstance(e, tx.Completed) for e in p.s_events)


def _reorder(batch: list[bytes]) -> list[bytes]:
    return list(reversed(batch)) if len(batch) > 1 else batch


def test_reordered_records_fail() -> None:
    state: dict[str, bytes | None] = {"held": None}

    def swap(batch: list[bytes]) -> list[bytes]:
        out = []
        for rec in batch:
            h = parse_header(rec)
            if h.type is RecordType.CHUNK and h.index == 1 and state["held"] is None:
                state["held"] = rec
                continue
            out.append(rec)
            if h.type is RecordType.CHUNK and h.index == 2 and state["held"] is not None:
                out.append(state["held"])
        return out

    p = Pair([os.urandom(5000)], window=8, tamper_s2r=swap)
    p.run()
    assert isinstance(_failed(p.r_events).error, IntegrityError)


def test_truncated_file_fails() -> None:
    def drop_last_chunk(batch: list[bytes]) -> list[bytes]:
        return [r for r in batch if not (parse_header(r).type is RecordType.CHUNK and r[2] & 1)]

    p = Pair([os.urandom(5000)], window=8, tamper_s2r=drop_last_chunk)
    p.run()
    fail = _failed(p.r_events)
    assert isinstance(fail.error, IntegrityError)
    assert "truncated" in str(fail.error)


def test_replayed_chunk_fails() -> None:
    def dup(batch: list[bytes]) -> list[bytes]:
        out = []
        for r in batch:
            out.append(r)
            if parse_header(r).type is RecordType.CHUNK:
                out.append(r)
        return out

    p = Pair([os.urandom(3000)], tamper_s2r=dup)
    p.run()
    assert isinstance(_failed(p.r_events).error, IntegrityError)


def test_sender_exceeding_credit_fails() -> None:
    keys = session_keys()
    manifest = make_manifest([os.urandom(20_000)])
    s = tx.Sender(keys, manifest)
    r = rx.Receiver(keys, window=2)
    s.start()
    for rec in s.data_to_send():
        r.receive_message(rec)
    assert isinstance(r.events_received()[0], rx.Offered)
    r.accept()
    for rec in r.data_to_send():
        s.receive_message(rec)
    s._credit = 10  # a misbehaving sender ignores the window
    while (req := s.next_read()) is not None:
        s.feed(req, manifest_bytes(req))
    for rec in s.data_to_send():
        r.receive_message(rec)
    fails = [e for e in r.events_received() if isinstance(e, rx.Failed)]
    assert fails and "credit" in str(fails[0].error)


def manifest_bytes(req: tx.ReadRequest) -> bytes:
    return bytes(req.length)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(blob: bytes) -> None:
    keys = session_keys()
    r = rx.Receiver(keys)
    r.receive_message(blob)
    s = tx.Sender(keys, make_manifest([b"x"]))
    s.start()
    s.receive_message(blob)
    assert r.state is rx.ReceiverState.FAILED
    assert s.state is tx.SenderState.FAILED


def test_misuse_raises_local_protocol_error() -> None:
    keys = session_keys()
    r = rx.Receiver(keys)
    with pytest.raises(LocalProtocolError):
        r.accept()
    with pytest.raises(LocalProtocolError):
        r.finish()
    s = tx.Sender(keys, make_manifest([b"x"]))
    with pytest.raises(LocalProtocolError):
        s.feed(tx.ReadRequest(0, 0, 0, 1, True), b"x")
    s.start()
    with pytest.raises(LocalProtocolError):
        s.start()


def test_receipt_mismatch_is_reported_to_sender() -> None:
    keys = session_keys()
    files = [b"hello world"]
    manifest = make_manifest(files)
    s = tx.Sender(keys, manifest)
    r = rx.Receiver(keys)
    s.start()
    for rec in s.data_to_send():
        r.receive_message(rec)
    r.events_received()
    r.accept()
    for rec in r.data_to_send():
        s.receive_message(rec)
    req = s.next_read()
    assert req is not None
    s.feed(req, files[0])
    for rec in s.data_to_send():
        r.receive_message(rec)
    r._digests[0] = "0" * 64  # a receiver that wrote something else
    r.finish()
    for rec in r.data_to_send():
        s.receive_message(rec)
    assert isinstance(s.error, IntegrityError)
    assert "receipt" in s.error.user_message
