"""Edges of the Sender machine (docs/protocol.md §5, §7).

Bad records from the receiver end in FAILED with one Failed event and an ERROR record
naming the code; our own misuse raises LocalProtocolError.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest

from peer.errors import (
    BeamError,
    DeclinedError,
    IntegrityError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
    SourceError,
)
from peer.proto import receiver as rx
from peer.proto import sender as tx
from peer.proto.manifest import Manifest
from peer.proto.records import MAX_RECORD, OVERHEAD, Flags, RecordType

from .pair import Transfer, error_code, expect_failed, seal_r2s, session_keys

S = tx.SenderState


def _offered(files: list[bytes] | None = None, **kw: Any) -> Transfer:
    """Sender OFFERED; the receiver's records are made by hand (seq from 0)."""
    return Transfer([b"x" * 3000, b"yz"] if files is None else files, **kw)


def _accept_body(resume: object = (0, 0), credit: object = 4) -> bytes:
    r = list(resume) if isinstance(resume, tuple) else resume
    return json.dumps({"resume": r, "credit": credit}).encode()


def _sending(credit: int = 4) -> Transfer:
    t = _offered()
    t.sender.receive_message(seal_r2s(t.keys, RecordType.ACCEPT, _accept_body(credit=credit), 0))
    assert t.sender.state is S.SENDING
    assert [type(e) for e in t.sender.events_received()] == [tx.Accepted]
    return t


def _awaiting_receipt() -> Transfer:
    t = _sending(credit=100)
    t.send_chunks()
    assert t.sender.state is S.AWAITING_RECEIPT
    t.sender.data_to_send()
    return t


def _failed(t: Transfer, error: type[BeamError], detail: str) -> BeamError:
    """The sender failed and told the receiver with an ERROR record."""
    err = expect_failed(t.sender, error, detail)
    out = t.sender.data_to_send()
    assert error_code(t.keys, out[-1], s2r=True) == err.code
    t.sender.receive_message(seal_r2s(t.keys, RecordType.ERROR, b"{}", 99))  # ignored
    assert t.sender.events_received() == [] and t.sender.data_to_send() == []
    return err


# construction and local misuse


def test_chunk_size_must_fit_one_record() -> None:
    keys = session_keys()
    largest = MAX_RECORD - OVERHEAD
    tx.Sender(keys, Manifest(files=(), chunk_size=largest))
    with pytest.raises(LocalProtocolError, match=r"^chunk size too large for one record$"):
        tx.Sender(keys, Manifest(files=(), chunk_size=largest + 1))


def test_feed_must_match_next_read() -> None:
    t = _sending()
    req = t.sender.next_read()
    assert req == tx.ReadRequest(0, 0, 0, 1024, True)
    with pytest.raises(LocalProtocolError, match=r"^feed does not match next_read$"):
        t.sender.feed(tx.ReadRequest(0, 1, 1024, 1024, True), bytes(1024))
    with pytest.raises(LocalProtocolError, match=r"^feed does not match next_read$"):
        t.sender.feed(tx.ReadRequest(1, 0, 0, 2, True), b"yz")
    with pytest.raises(LocalProtocolError, match=r"^short read passed to feed$"):
        t.sender.feed(req, bytes(1023))
    assert t.sender.data_to_send() == []  # nothing was sealed
    t.sender.feed(req, b"x" * 1024)
    assert t.sender.sent_chunks == 1


def test_feed_outside_sending_is_misuse() -> None:
    t = _offered()
    with pytest.raises(LocalProtocolError, match=r"^sender is offered, not sending$"):
        t.sender.feed(tx.ReadRequest(0, 0, 0, 1024, True), bytes(1024))
    assert t.sender.next_read() is None


def test_local_fail_sends_error_once() -> None:
    t = _sending()
    err = SourceError("gone")
    t.sender.fail(err)
    assert t.sender.state is S.FAILED and t.sender.error is err
    assert t.sender.events_received() == [tx.Failed(err)]
    (rec,) = t.sender.data_to_send()
    assert error_code(t.keys, rec, s2r=True) == "source"
    t.sender.fail(SourceError("again"))  # already failed: nothing more
    assert t.sender.events_received() == [] and t.sender.data_to_send() == []
    assert t.sender.error is err


def test_local_fail_reaches_the_receiver() -> None:
    t = Transfer([b"abc"])
    t.accept()
    t.sender.fail(SourceError("gone"))
    t.s2r()
    rerr = expect_failed(t.receiver, RemoteError, "peer error 'source'")
    assert rerr.user_message == "The other side stopped: A file to send could not be read."
    assert t.receiver.data_to_send() == []  # the receiver does not answer an ERROR


def test_local_fail_after_done_is_ignored() -> None:
    t = Transfer([b"abc"])
    t.accept()
    t.send_chunks()
    t.s2r()
    t.receiver.finish()
    t.r2s()
    assert t.sender.state is S.DONE
    t.sender.events_received()
    t.sender.data_to_send()
    t.sender.fail(SourceError("late"))
    assert t.sender.state is S.DONE and t.sender.error is None
    assert t.sender.events_received() == [] and t.sender.data_to_send() == []
    t.sender.receive_message(b"garbage")  # DONE ignores the peer too
    assert t.sender.state is S.DONE


# records a receiver never sends


@pytest.mark.parametrize(
    "rtype", [RecordType.MANIFEST, RecordType.CHUNK, RecordType.FILE_END, RecordType.CLOSE]
)
def test_sender_only_record_types_fail(rtype: RecordType) -> None:
    t = _offered()
    t.sender.receive_message(seal_r2s(t.keys, rtype, b"", 0))
    _failed(t, RemoteProtocolError, f"receiver sent a {rtype.name} record")


@pytest.mark.parametrize("index", [1, 2**64 - 1])
def test_control_record_out_of_sequence(index: int) -> None:
    t = _offered()
    t.sender.receive_message(seal_r2s(t.keys, RecordType.ACCEPT, _accept_body(), index))
    _failed(t, IntegrityError, f"control record out of sequence ({index})")


def test_replayed_control_record() -> None:
    t = _sending()
    credit = seal_r2s(t.keys, RecordType.CREDIT, (8).to_bytes(8, "big"), 1)
    t.sender.receive_message(credit)
    t.sender.receive_message(credit)
    _failed(t, IntegrityError, "control record out of sequence (1)")


def test_control_record_under_the_wrong_key() -> None:
    t = _offered()
    wrong = session_keys()
    t.sender.receive_message(seal_r2s(wrong, RecordType.ACCEPT, _accept_body(), 0))
    _failed(t, IntegrityError, "record ACCEPT file=4294967295 index=0 failed authentication")


# ACCEPT and DECLINE


@pytest.mark.parametrize(
    ("body", "error", "detail"),
    [
        (b"", RemoteProtocolError, "control record is not JSON"),
        (b"[0, 0]", RemoteProtocolError, "control record is not an object"),
        (b"{}", RemoteProtocolError, "accept record malformed"),
        (_accept_body(resume="00"), RemoteProtocolError, "accept record malformed"),
        (_accept_body(resume=(0,)), RemoteProtocolError, "accept record malformed"),
        (_accept_body(resume=(0, 0, 0)), RemoteProtocolError, "accept record malformed"),
        (_accept_body(resume=(-1, 0)), RemoteProtocolError, "accept resume point out of range"),
        (_accept_body(resume=(4, 0)), RemoteProtocolError, "accept resume point out of range"),
        (_accept_body(resume=(0, 2)), RemoteProtocolError, "accept resume point out of range"),
        (_accept_body(resume=(True, 0)), RemoteProtocolError, "accept resume point out of range"),
        (_accept_body(resume=(0, "0")), RemoteProtocolError, "accept resume point out of range"),
        (_accept_body(resume=(1.0, 0)), RemoteProtocolError, "accept resume point out of range"),
        (_accept_body(credit=None), RemoteProtocolError, "accept credit malformed"),
        (_accept_body(credit=-1), RemoteProtocolError, "accept credit malformed"),
        (_accept_body(credit=True), RemoteProtocolError, "accept credit malformed"),
        (_accept_body(credit=4.0), RemoteProtocolError, "accept credit malformed"),
        (_accept_body(credit="4"), RemoteProtocolError, "accept credit malformed"),
    ],
)
def test_malformed_accept(body: bytes, error: type[BeamError], detail: str) -> None:
    t = _offered()
    t.sender.receive_message(seal_r2s(t.keys, RecordType.ACCEPT, body, 0))
    _failed(t, error, detail)


def test_accept_bounds_are_inclusive() -> None:
    t = _offered()  # file 0 has 3 chunks of 1024, file 1 has 1 chunk
    body = _accept_body(resume=(3, 1), credit=0)
    t.sender.receive_message(seal_r2s(t.keys, RecordType.ACCEPT, body, 0))
    assert t.sender.events_received() == [tx.Accepted(3000 + 2)]
    # everything is held: the files are only hashed, nothing is transmitted despite no credit
    assert t.send_chunks() == 0
    assert t.sender.sent_chunks == 0
    assert t.sender.state is S.AWAITING_RECEIPT
    ends = t.sender.data_to_send()
    assert len(ends) == 2  # two FILE_END records


def test_zero_credit_blocks_reads_until_credit_arrives() -> None:
    t = _sending(credit=0)
    assert t.sender.next_read() is None
    t.sender.receive_message(seal_r2s(t.keys, RecordType.CREDIT, (1).to_bytes(8, "big"), 1))
    assert t.sender.next_read() == tx.ReadRequest(0, 0, 0, 1024, True)
    assert t.send_chunks() == 1 and t.sender.next_read() is None


@pytest.mark.parametrize("rtype", [RecordType.ACCEPT, RecordType.DECLINE])
def test_accept_or_decline_after_accept(rtype: RecordType) -> None:
    t = _sending()
    t.sender.receive_message(seal_r2s(t.keys, rtype, _accept_body(), 1))
    _failed(t, RemoteProtocolError, f"{rtype.name} while sending")


def test_decline_ends_with_declined_not_failed() -> None:
    t = _offered()
    t.sender.receive_message(seal_r2s(t.keys, RecordType.DECLINE, b"", 0))
    assert t.sender.state is S.FAILED
    assert t.sender.events_received() == [tx.Declined()]
    assert isinstance(t.sender.error, DeclinedError)
    assert t.sender.error.user_message == "The receiver declined the transfer."
    assert t.sender.data_to_send() == []  # no ERROR answers a DECLINE


# CREDIT


def test_credit_before_accept() -> None:
    t = _offered()
    t.sender.receive_message(seal_r2s(t.keys, RecordType.CREDIT, (8).to_bytes(8, "big"), 0))
    _failed(t, RemoteProtocolError, "credit before accept")


@pytest.mark.parametrize("body", [b"", bytes(7), bytes(9)])
def test_credit_malformed(body: bytes) -> None:
    t = _sending()
    t.sender.receive_message(seal_r2s(t.keys, RecordType.CREDIT, body, 1))
    _failed(t, RemoteProtocolError, "credit record malformed")


def test_credit_may_stay_but_not_go_backwards() -> None:
    t = _sending(credit=4)
    t.sender.receive_message(seal_r2s(t.keys, RecordType.CREDIT, (4).to_bytes(8, "big"), 1))
    assert t.sender.state is S.SENDING and t.sender.events_received() == []
    t.sender.receive_message(seal_r2s(t.keys, RecordType.CREDIT, (3).to_bytes(8, "big"), 2))
    _failed(t, RemoteProtocolError, "credit went backwards")


def test_credit_while_awaiting_receipt_is_accepted() -> None:
    t = _awaiting_receipt()
    t.sender.receive_message(seal_r2s(t.keys, RecordType.CREDIT, (200).to_bytes(8, "big"), 1))
    assert t.sender.state is S.AWAITING_RECEIPT and t.sender.events_received() == []


# RECEIPT


def test_receipt_while_sending() -> None:
    t = _sending()
    t.sender.receive_message(seal_r2s(t.keys, RecordType.RECEIPT, b'{"files": []}', 1))
    _failed(t, RemoteProtocolError, "RECEIPT while sending")


def _digests(t: Transfer) -> list[str]:
    return [hashlib.sha256(f).hexdigest() for f in t.files]


@pytest.mark.parametrize(
    "files",
    [None, "x", {"0": 1}, [], ["one"]],
    ids=["missing", "text", "object", "too-few", "too-many"],
)
def test_receipt_malformed(files: object) -> None:
    t = _awaiting_receipt()
    if files == ["one"]:
        files = [{"sha256": d} for d in _digests(t)] + [{"sha256": "0" * 64}]
    body = json.dumps({} if files is None else {"files": files}).encode()
    t.sender.receive_message(seal_r2s(t.keys, RecordType.RECEIPT, body, 1))
    _failed(t, RemoteProtocolError, "receipt malformed")


@pytest.mark.parametrize("bad", ["not a dict", {}, {"sha256": None}, {"sha256": "0" * 64}])
def test_receipt_mismatch(bad: object) -> None:
    t = _awaiting_receipt()
    d = _digests(t)
    body = json.dumps({"files": [{"sha256": d[0]}, bad], "bytes": 3002}).encode()
    t.sender.receive_message(seal_r2s(t.keys, RecordType.RECEIPT, body, 1))
    err = _failed(t, IntegrityError, "receipt mismatch for file 1")
    assert err.user_message == (
        "The receiver's receipt does not match what was sent; the transfer is not confirmed."
    )


def test_good_receipt_completes_and_closes() -> None:
    t = _awaiting_receipt()
    d = _digests(t)
    body = json.dumps({"files": [{"sha256": x, "extra": 1} for x in d]}).encode()
    t.sender.receive_message(seal_r2s(t.keys, RecordType.RECEIPT, body, 1))
    assert t.sender.state is S.DONE
    assert t.sender.events_received() == [tx.Completed(2, 3002, tuple(d))]
    (close,) = t.sender.data_to_send()
    assert close[1] == RecordType.CLOSE


# compression


def test_compression_can_be_off_and_short_chunks_are_not_tried() -> None:
    t = Transfer([b"\x00" * 3000], compress=False)
    t.accept()
    t.send_chunks()
    assert t.sender.bytes_compressed_in == 0
    assert all(rec[2] & Flags.COMPRESSED == 0 for rec in t.sender.data_to_send())
    t = Transfer([b"\x00" * 511])
    t.accept()
    t.send_chunks()
    assert t.sender.bytes_compressed_in == 0


def test_probe_skip_restarts_at_each_file() -> None:
    noise = os.urandom(4 * 1024)
    t = Transfer([noise, b"\x00" * 1024], window=64)
    t.accept()
    t.send_chunks()
    # file 0: the first chunk did not pay, the next 3 were skipped; file 1 is tried again
    assert t.sender.bytes_compressed_in == 1024 + 1024
    t.s2r()
    assert t.receiver.state is rx.ReceiverState.VERIFIED


# the state table and the trace hook


def test_trace_shows_every_transition() -> None:
    t = Transfer([b"abc"])
    lines: list[str] = []
    t.sender.trace = lines.append
    t.accept()
    t.send_chunks()
    t.s2r()
    t.receiver.finish()
    t.r2s()
    assert lines == [
        "sender[offered] -> sending",
        "sender[sending] -> awaiting-receipt",
        "sender[awaiting-receipt] -> done",
    ]
    u = _sending()
    u.sender.trace = lines.append
    u.sender.receive_message(b"junk")
    assert lines[-1] == "sender[sending] -> failed (protocol)"


def test_transition_table_matches_the_spec() -> None:
    # docs/protocol.md §7: failure is reachable from anywhere and bypasses the table
    assert {k: set(v) for k, v in tx._TRANSITIONS.items()} == {
        S.IDLE: {S.OFFERED},
        S.OFFERED: {S.SENDING},
        S.SENDING: {S.AWAITING_RECEIPT},
        S.AWAITING_RECEIPT: {S.DONE},
        S.DONE: set(),
        S.FAILED: set(),
    }


@pytest.mark.parametrize("old", list(S))
def test_transitions_outside_the_table_raise(old: tx.SenderState) -> None:
    keys = session_keys()
    for new in S:
        if new in tx._TRANSITIONS[old]:
            continue
        s = tx.Sender(keys, Manifest(files=()))
        s.state = old
        with pytest.raises(LocalProtocolError, match=rf"^sender {old.value} -> {new.value}$"):
            s._set(new)
        assert s.state is old
