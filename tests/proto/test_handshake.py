from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.errors import (
    IntegrityError,
    LocalProtocolError,
    RemoteProtocolError,
    VersionError,
    WrongCodeError,
)
from peer.proto.handshake import EnvelopeReceived, Handshake, HandshakeFailed, Paired, Role


def _run(s: Handshake, r: Handshake, steps: int = 6) -> tuple[list[object], list[object]]:
    s.start()
    r.start()
    se: list[object] = []
    re_: list[object] = []
    for _ in range(steps):
        for b in s.data_to_send():
            r.receive(b)
        for b in r.data_to_send():
            s.receive(b)
        se += s.events_received()
        re_ += r.events_received()
    return se, re_


def _sender(code: str = "7-adroitness-aftermath", **kw: object) -> Handshake:
    return Handshake(Role.SENDER, code=code, link_secret=bytes(range(32)), entropy=os.urandom, **kw)  # type: ignore[arg-type]


def test_same_code_pairs_with_equal_keys() -> None:
    s = _sender()
    r = Handshake(Role.RECEIVER, code="7-adroitness-aftermath", entropy=os.urandom)
    se, re_ = _run(s, r)
    assert isinstance(se[0], Paired) and isinstance(re_[0], Paired)
    assert se[0].keys.master == re_[0].keys.master
    assert se[0].keys.session.data_s2r == re_[0].keys.session.data_s2r
    assert (
        se[0].mode == "code" and se[0].version == 2
    )  # both speak v1 and v2 (docs/protocol.md §10)
    s.send({"type": "offer", "sdp": "v=0"})
    for b in s.data_to_send():
        r.receive(b)
    assert r.events_received() == [EnvelopeReceived({"type": "offer", "sdp": "v=0"})]


def test_wrong_code_fails_on_both_sides() -> None:
    s = _sender()
    r = Handshake(Role.RECEIVER, code="7-adroitness-aftermatk", entropy=os.urandom)
    se, re_ = _run(s, r)
    for events in (se, re_):
        assert len(events) == 1 and isinstance(events[0], HandshakeFailed)
        assert isinstance(events[0].error, WrongCodeError)
        assert events[0].error.user_message.startswith("The code was wrong")


def test_link_secret_pairs_without_pake() -> None:
    s = _sender()
    r = Handshake(Role.RECEIVER, link_secret=bytes(range(32)), entropy=os.urandom)
    se, re_ = _run(s, r)
    assert isinstance(se[0], Paired) and se[0].mode == "link"
    assert isinstance(re_[0], Paired) and re_[0].keys.master == se[0].keys.master


def test_wrong_link_secret_fails() -> None:
    s = _sender()
    r = Handshake(Role.RECEIVER, link_secret=bytes(32), entropy=os.urandom)
    se, _ = _run(s, r)
    assert isinstance(se[0], HandshakeFailed) and isinstance(se[0].error, WrongCodeError)


def test_no_common_version() -> None:
    s = _sender(versions=(1,))
    r = Handshake(Role.RECEIVER, code="7-adroitness-aftermath", entropy=os.urandom, versions=(2,))
    se, _ = _run(s, r)
    assert isinstance(se[0], HandshakeFailed) and isinstance(se[0].error, VersionError)


def test_tampered_and_replayed_envelopes_after_pairing() -> None:
    s = _sender()
    r = Handshake(Role.RECEIVER, code="7-adroitness-aftermath", entropy=os.urandom)
    _run(s, r)
    s.send({"type": "x"})
    (body,) = s.data_to_send()
    doc = json.loads(body)
    c = bytearray(doc["c"].encode())
    c[40] = ord("A") if c[40] != ord("A") else ord("B")
    r.receive(json.dumps({**doc, "c": c.decode()}))
    (ev,) = r.events_received()
    assert isinstance(ev, HandshakeFailed) and isinstance(ev.error, IntegrityError)
    # a failed handshake ignores anything further
    r.receive(body)
    assert r.events_received() == []


def test_replay_is_out_of_sequence() -> None:
    s = _sender()
    r = Handshake(Role.RECEIVER, code="7-adroitness-aftermath", entropy=os.urandom)
    _run(s, r)
    s.send({"type": "x"})
    (body,) = s.data_to_send()
    r.receive(body)
    r.receive(body)
    events = r.events_received()
    assert isinstance(events[-1], HandshakeFailed)
    assert "sequence" in str(events[-1].error)


@pytest.mark.parametrize(
    "body",
    [
        "",
        "[]",
        "{}",
        '{"t":"pake","m":"!!"}',
        '{"t":"pake","m":"AAAA"}',
        '{"t":"env","s":0,"c":"AA=="}',
        '{"t":"what"}',
        "x" * 50_000,
        '{"t":"link"}',
    ],
)
def test_malformed_bodies_fail_cleanly(body: str) -> None:
    r = Handshake(Role.RECEIVER, code="7-adroitness-aftermath", entropy=os.urandom)
    r.start()
    r.receive(body)
    (ev,) = r.events_received()
    assert isinstance(ev, HandshakeFailed)
    assert isinstance(ev.error, RemoteProtocolError | WrongCodeError)


@settings(max_examples=100)
@given(st.text(max_size=200))
def test_random_bodies_never_raise(body: str) -> None:
    s = _sender()
    s.start()
    s.receive(body)


def test_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        Handshake(Role.SENDER, entropy=os.urandom)
    with pytest.raises(LocalProtocolError):
        Handshake(Role.RECEIVER, code="1-a-b", link_secret=bytes(32), entropy=os.urandom)
    s = _sender()
    with pytest.raises(LocalProtocolError):
        s.send({})
    s.start()
    with pytest.raises(LocalProtocolError):
        s.start()
