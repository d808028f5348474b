"""Protocol v2 paths (docs/protocol.md §10): derivations, lane proofs, framing, markers,
the receiver's lane merger, the sender's seq ordering, and the rejoin handshake."""

from __future__ import annotations

import os
import random

import pytest

from peer.errors import LocalProtocolError, RemoteProtocolError
from peer.proto.handshake import Handshake, HandshakeFailed, Paired, Role
from peer.proto.keys import kdf
from peer.proto.paths import (
    MAX_FRAME,
    MarkerKind,
    Merger,
    SeqOrder,
    check_proof,
    decode_length,
    encode_frame,
    lane_key,
    marker,
    parse_marker,
    pipe_id,
    proof,
    rendezvous_id,
    round_master,
)
from peer.proto.records import RecordType, seal_record

from .pair import Pair, session_keys

MASTER = bytes(range(32))


def test_derivations_are_distinct_and_follow_the_spec() -> None:
    assert lane_key(MASTER) == kdf(MASTER, "scanbeam v2 lane key")
    assert pipe_id(MASTER) == kdf(MASTER, "scanbeam v2 pipe id", 16).hex()
    assert rendezvous_id(MASTER, 1) == kdf(MASTER, "scanbeam v2 rendezvous 1", 16).hex()
    assert round_master(MASTER, 2) == kdf(MASTER, "scanbeam v2 round 2")
    ids = {rendezvous_id(MASTER, n) for n in range(1, 50)} | {pipe_id(MASTER)}
    assert len(ids) == 50 and all(len(i) == 32 for i in ids)
    assert round_master(MASTER, 1) != round_master(MASTER, 2)
    for bad in (0, -1):
        with pytest.raises(ValueError):
            rendezvous_id(MASTER, bad)
        with pytest.raises(ValueError):
            round_master(MASTER, bad)


def test_lane_proofs_bind_key_role_and_both_nonces() -> None:
    key = lane_key(MASTER)
    nc, nl = os.urandom(32), os.urandom(32)
    p = proof(key, b"L", nc, nl)
    assert check_proof(key, b"L", nc, nl, p)
    assert not check_proof(key, b"C", nc, nl, p)  # no reflection
    assert not check_proof(lane_key(bytes(32)), b"L", nc, nl, p)  # wrong key
    assert not check_proof(key, b"L", os.urandom(32), nl, p)
    assert not check_proof(key, b"L", nc, os.urandom(32), p)
    assert not check_proof(key, b"L", nc, nl, p[:-1])
    for args in ((b"X", nc, nl), (b"L", nc[:5], nl), (b"L", nc, nl + b"x")):
        with pytest.raises(ValueError):
            proof(key, *args)


def test_frames_and_their_limit() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert decode_length(b"\x00\x00\x00\x03") == 3
    assert decode_length(MAX_FRAME.to_bytes(4, "big")) == MAX_FRAME
    with pytest.raises(RemoteProtocolError):
        decode_length((MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError):
        decode_length(b"\x00\x01")
    with pytest.raises(ValueError):
        encode_frame(bytes(MAX_FRAME + 1))


def test_markers() -> None:
    m = parse_marker(marker(MarkerKind.END, 7))
    assert m is not None and m.kind is MarkerKind.END and m.gen == 7
    assert parse_marker(b"\x01rest") is None
    assert parse_marker(b"") is None
    for bad in (b"\x00", b"\x00\x03\x00\x00\x00\x00", b"\x00\x01\x00\x00\x00"):
        with pytest.raises(RemoteProtocolError):
            parse_marker(bad)


def _rec(i: int) -> bytes:
    return b"\x01" + i.to_bytes(4, "big")


S0, E0 = marker(MarkerKind.START, 0), marker(MarkerKind.END, 0)
S1, E1 = marker(MarkerKind.START, 1), marker(MarkerKind.END, 1)
S2 = marker(MarkerKind.START, 2)


def test_merger_restores_the_order_across_lanes_whatever_the_arrival() -> None:
    # the sender: records 0-2 on A, 3-5 on B, 6-8 on A again
    lanes = {
        "A": [S0, _rec(0), _rec(1), _rec(2), E0],
        "B": [S1, _rec(3), _rec(4), _rec(5), E1],
        "A2": [S2, _rec(6), _rec(7), _rec(8)],
    }
    rng = random.Random(5)
    for _ in range(200):
        queues = {"A": lanes["A"] + lanes["A2"], "B": list(lanes["B"])}
        merger: Merger[str] = Merger()
        got: list[bytes] = []
        while any(queues.values()):
            name = rng.choice([n for n, q in queues.items() if q])
            got += merger.push(name, queues[name].pop(0))
        assert got == [_rec(i) for i in range(9)]
        assert merger.active == "A" and merger.reply_lane == "A"


def test_merger_between_generations_and_pending() -> None:
    m: Merger[str] = Merger()
    assert m.active is None and m.reply_lane is None
    assert m.push("B", S1) == []
    assert m.push("B", _rec(9)) == []
    assert m.has_pending("B") and not m.has_pending("A") and not m.has_pending("C")
    assert m.push("A", S0) == []
    assert m.active == "A"
    assert m.push("A", _rec(1)) == [_rec(1)]
    assert m.push("A", E0) == [_rec(9)]
    assert m.active == "B" and not m.has_pending("B")


@pytest.mark.parametrize(
    "feed",
    [
        [("A", _rec(0))],  # a record before any start
        [("A", E0)],  # an end before its start
        [("A", S0), ("A", S1)],  # a start inside a generation
        [("A", S0), ("A", E1)],  # the wrong end
        [("A", S0), ("A", E0), ("B", S0)],  # an old generation again
        [("A", b"\x00\x09\x00\x00\x00\x00")],  # a malformed marker
    ],
)
def test_merger_refuses_broken_marker_sequences(feed: list[tuple[str, bytes]]) -> None:
    m: Merger[str] = Merger()
    with pytest.raises(RemoteProtocolError):
        for lane, msg in feed:
            m.push(lane, msg)


def test_merger_bounds_what_waits() -> None:
    m: Merger[str] = Merger(max_pending=3)
    m.push("B", S1)
    m.push("B", _rec(1))
    m.push("B", _rec(2))
    with pytest.raises(RemoteProtocolError, match="too many"):
        m.push("B", _rec(3))


_KEYS = session_keys()
_CTRL = [
    seal_record(_KEYS.ctrl_r2s, _KEYS.transfer_id, RecordType.CREDIT, b"x", index=i)
    for i in range(8)
]


def _ctrl(seq: int) -> bytes:
    return _CTRL[seq]


def test_seq_order_reorders_and_passes_oddities_on() -> None:
    order = SeqOrder()
    assert order.push(_ctrl(1)) == []
    assert order.push(_ctrl(2)) == []
    assert order.push(_ctrl(0)) == [_ctrl(0), _ctrl(1), _ctrl(2)]
    assert order.push(b"\x01\x02") == [b"\x01\x02"]  # too short: the core rejects it
    assert order.push(_ctrl(1)) == [_ctrl(1)]  # a replay goes on to be rejected
    assert order.push(_ctrl(4)) == []
    assert order.push(_ctrl(4)) == []  # the same seq twice: both wait for the gap
    assert order.push(_ctrl(3)) == [_ctrl(3), _ctrl(4), _ctrl(4)]


def test_seq_order_bounds_a_gap() -> None:
    order = SeqOrder(max_pending=2)
    order.push(_ctrl(5))
    order.push(_ctrl(6))
    with pytest.raises(RemoteProtocolError):
        order.push(_ctrl(7))


def test_rejoin_handshake_pairs_under_the_round_master() -> None:
    rm = round_master(MASTER, 1)
    s = Handshake(Role.SENDER, master=rm, entropy=os.urandom)
    r = Handshake(Role.RECEIVER, master=rm, entropy=os.urandom)
    s.start()
    r.start()
    for body in s.data_to_send():
        r.receive(body)
    for body in r.data_to_send():
        s.receive(body)
    (ps,) = s.events_received()
    (pr,) = r.events_received()
    assert isinstance(ps, Paired) and isinstance(pr, Paired)
    assert ps.mode == pr.mode == "rejoin" and ps.version == 2
    assert ps.keys.session.ctrl_s2r == pr.keys.session.ctrl_s2r
    # another round's master cannot open them: a replayed old envelope fails
    old = Handshake(Role.RECEIVER, master=round_master(MASTER, 2), entropy=os.urandom)
    old.start()
    s2 = Handshake(Role.SENDER, master=rm, entropy=os.urandom)
    s2.start()
    for body in old.data_to_send():
        s2.receive(body)
    (failed,) = s2.events_received()
    assert isinstance(failed, HandshakeFailed)


@pytest.mark.parametrize(
    "kw",
    [
        {"master": MASTER, "code": "1-a-b"},
        {"master": MASTER, "link_secret": MASTER},
        {"master": MASTER[:16]},
    ],
)
def test_rejoin_handshake_takes_the_master_alone(kw: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        Handshake(Role.SENDER, entropy=os.urandom, **kw)  # type: ignore[arg-type]


def test_sender_exposes_the_receivers_credit() -> None:
    pair = Pair([os.urandom(5000)])
    assert pair.sender.credit == 0
    pair.run()
    assert pair.sender.credit > 0
