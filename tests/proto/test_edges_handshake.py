"""Edges of the pairing machine (docs/protocol.md §4): every bad body fails it cleanly.

Envelopes are sealed here straight from the spec (§4: key ``env_s2r``/``env_r2s``,
associated data ``"scanbeam v1 env" || direction || seq u64``), not with Handshake itself.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

from peer.errors import (
    BeamError,
    IntegrityError,
    LocalProtocolError,
    RemoteProtocolError,
    VersionError,
    WrongCodeError,
)
from peer.proto.handshake import (
    MAX_BODY,
    EnvelopeReceived,
    Handshake,
    HandshakeFailed,
    Paired,
    Role,
)
from peer.proto.keys import PairingKeys, kdf

CODE = "7-adroitness-aftermath"
LINK = bytes(range(32))
LINK_KEYS = PairingKeys.from_master(kdf(LINK, "scanbeam v1 link"))


def _sender(**kw: Any) -> Handshake:
    return Handshake(Role.SENDER, code=CODE, link_secret=LINK, entropy=os.urandom, **kw)


def _link_receiver(**kw: Any) -> Handshake:
    return Handshake(Role.RECEIVER, link_secret=LINK, entropy=os.urandom, **kw)


def _envelope(plain: bytes, *, seq: int = 0, direction: bytes = b"s") -> str:
    """An envelope sealed as the peer in ``direction`` would, with the link keys."""
    key = LINK_KEYS.env_s2r if direction == b"s" else LINK_KEYS.env_r2s
    nonce = os.urandom(24)
    ad = b"scanbeam v1 env" + direction + seq.to_bytes(8, "big")
    ct = crypto_aead_xchacha20poly1305_ietf_encrypt(plain, ad, nonce, key)
    return json.dumps({"t": "env", "s": seq, "c": base64.b64encode(nonce + ct).decode()})


def _hello(versions: object = (1,), role: str = "s") -> bytes:
    v = list(versions) if isinstance(versions, tuple) else versions
    return json.dumps({"type": "hello", "versions": v, "role": role}).encode()


def _started_link_receiver() -> Handshake:
    """A receiver by link that sent ``link`` and its hello and waits for the sender's hello."""
    r = _link_receiver()
    r.start()
    link, hello = r.data_to_send()
    assert json.loads(link) == {"t": "link"}
    assert json.loads(hello)["s"] == 0
    return r


def _expect_failed(hs: Handshake, error: type[BeamError], detail: str) -> BeamError:
    events = hs.events_received()
    assert len(events) == 1 and isinstance(events[0], HandshakeFailed), events
    err = events[0].error
    assert type(err) is error, err
    assert str(err) == detail
    assert hs.failed and not hs.paired
    return err


def _pair(s: Handshake, r: Handshake) -> tuple[list[object], list[object]]:
    s.start()
    r.start()
    se: list[object] = []
    re_: list[object] = []
    for _ in range(4):
        for b in s.data_to_send():
            r.receive(b)
        for b in r.data_to_send():
            s.receive(b)
        se += s.events_received()
        re_ += r.events_received()
    return se, re_


# construction and local misuse


def test_a_sender_needs_a_code() -> None:
    with pytest.raises(LocalProtocolError, match=r"^a sender needs a code"):
        Handshake(Role.SENDER, link_secret=LINK, entropy=os.urandom)


def test_misuse_messages() -> None:
    with pytest.raises(LocalProtocolError, match=r"^need a code or a link secret$"):
        Handshake(Role.RECEIVER, entropy=os.urandom)
    with pytest.raises(
        LocalProtocolError, match=r"^a receiver pairs by code or by link, not both$"
    ):
        Handshake(Role.RECEIVER, code=CODE, link_secret=LINK, entropy=os.urandom)
    s = _sender()
    with pytest.raises(LocalProtocolError, match=r"^cannot send an envelope before pairing$"):
        s.send({"type": "offer"})
    s.start()
    with pytest.raises(LocalProtocolError, match=r"^handshake already started$"):
        s.start()
    s.receive("[]")
    assert s.failed
    with pytest.raises(LocalProtocolError, match=r"^cannot send an envelope before pairing$"):
        s.send({"type": "offer"})


def test_bodies_before_start_are_ignored() -> None:
    r = Handshake(Role.RECEIVER, code=CODE, entropy=os.urandom)
    r.receive("garbage")
    r.receive(json.dumps({"t": "pake", "m": "AAAA"}))
    assert r.events_received() == [] and r.data_to_send() == []
    assert not r.failed and not r.paired


# the states are visible, and traced


def test_paired_and_failed_properties_and_trace() -> None:
    s, r = _sender(), Handshake(Role.RECEIVER, code=CODE, entropy=os.urandom)
    lines: list[str] = []
    s.trace = lines.append
    assert not s.paired and not s.failed
    se, re_ = _pair(s, r)
    assert isinstance(se[0], Paired) and isinstance(re_[0], Paired)
    assert s.paired and not s.failed and r.paired
    assert lines == ["handshake[idle] -> pairing", "handshake[pairing] -> paired"]
    s.receive("{}")
    assert s.failed and not s.paired
    assert lines[-1] == "handshake[paired] -> failed"
    assert isinstance(s.events_received()[0], HandshakeFailed)


def test_the_highest_common_version_is_chosen() -> None:
    s = _sender(versions=(1, 2, 3))
    r = Handshake(Role.RECEIVER, code=CODE, entropy=os.urandom, versions=(4, 3, 2))
    se, re_ = _pair(s, r)
    assert isinstance(se[0], Paired) and isinstance(re_[0], Paired)
    assert se[0].version == re_[0].version == 3


# malformed signaling bodies


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ("x" * (MAX_BODY + 1), "signaling body too large"),
        (" " * MAX_BODY, "signaling body is not JSON"),  # at the limit: parsed
        ("{", "signaling body is not JSON"),
        ('"pake"', "signaling body is not an object"),
        ("{}", "unknown signaling body type"),
        ('{"t": "PAKE"}', "unknown signaling body type"),
        ('{"t": "pake"}', "envelope field is not text"),
        ('{"t": "pake", "m": 5}', "envelope field is not text"),
        ('{"t": "pake", "m": "a b"}', "envelope field is not base64"),
        ('{"t": "env", "s": 0, "c": "AAAA"}', "envelope before key agreement"),
    ],
)
def test_bad_bodies_fail_the_code_sender(body: str, detail: str) -> None:
    s = _sender()
    s.start()
    s.data_to_send()
    s.receive(body)
    _expect_failed(s, RemoteProtocolError, detail)
    assert s.data_to_send() == []
    s.receive(body)  # a failed handshake ignores everything
    assert s.events_received() == []


@pytest.mark.parametrize(
    ("message", "name"),
    [
        (b"S" + bytes(32), "ValueError"),  # not a group element
        (b"A" + bytes(32), "OffSides"),  # an asymmetric side's message
        (bytes(3), ""),  # too short: spake2 asserts (ValueError under -O)
    ],
    ids=["not-in-group", "off-sides", "short"],
)
def test_a_bad_pake_message_fails(message: bytes, name: str) -> None:
    s = _sender()
    s.start()
    s.data_to_send()
    s.receive(json.dumps({"t": "pake", "m": base64.b64encode(message).decode()}))
    (ev,) = s.events_received()
    assert isinstance(ev, HandshakeFailed) and type(ev.error) is RemoteProtocolError
    assert str(ev.error).startswith(f"bad PAKE message: {name}")
    assert s.failed and s.data_to_send() == []


@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (lambda: _link_receiver(), "unexpected link pairing"),  # a receiver never gets one
        (lambda: Handshake(Role.SENDER, code=CODE, entropy=os.urandom), "unexpected link pairing"),
    ],
    ids=["to-receiver", "sender-without-link"],
)
def test_unexpected_link_body(make: Any, detail: str) -> None:
    hs = make()
    hs.start()
    hs.receive('{"t": "link"}')
    _expect_failed(hs, RemoteProtocolError, detail)


def test_a_second_link_body_fails_the_sender() -> None:
    s = _sender()
    s.start()
    s.receive('{"t": "link"}')
    assert s.events_received() == [] and not s.failed
    s.receive('{"t": "link"}')
    _expect_failed(s, RemoteProtocolError, "unexpected link pairing")


def test_link_after_code_pairing_fails() -> None:
    s, r = _sender(), Handshake(Role.RECEIVER, code=CODE, entropy=os.urandom)
    _pair(s, r)
    assert s.paired
    s.receive('{"t": "link"}')
    _expect_failed(s, RemoteProtocolError, "unexpected link pairing")


def test_extra_pake_messages_are_ignored() -> None:
    other = Handshake(Role.RECEIVER, code=CODE, entropy=os.urandom)
    other.start()
    (pake,) = other.data_to_send()
    # a receiver by link ignores the sender's PAKE
    r = _started_link_receiver()
    r.receive(pake)
    assert r.events_received() == [] and r.data_to_send() == [] and not r.failed
    # a side that already agreed on a key ignores a second PAKE
    s, r2 = _sender(), Handshake(Role.RECEIVER, code=CODE, entropy=os.urandom)
    _pair(s, r2)
    s.receive(pake)
    assert s.events_received() == [] and s.data_to_send() == [] and s.paired


# envelopes


def test_link_receiver_pairs_with_a_spec_sealed_hello() -> None:
    r = _started_link_receiver()
    r.receive(_envelope(_hello(role="s")))
    (ev,) = r.events_received()
    assert isinstance(ev, Paired)
    assert (ev.version, ev.mode, ev.keys.master) == (1, "link", LINK_KEYS.master)
    r.receive(_envelope(b'{"type": "offer", "sdp": "v=0", "extra": 1}', seq=1))
    assert r.events_received() == [EnvelopeReceived({"type": "offer", "sdp": "v=0", "extra": 1})]


def test_link_sender_answers_the_receivers_hello() -> None:
    s = _sender()
    s.start()
    (pake,) = s.data_to_send()
    assert json.loads(pake)["t"] == "pake"
    s.receive('{"t": "link"}')
    s.receive(_envelope(_hello(role="r"), direction=b"r"))
    (ev,) = s.events_received()
    assert isinstance(ev, Paired) and ev.mode == "link" and s.paired
    (hello,) = s.data_to_send()
    assert json.loads(hello)["s"] == 0


@pytest.mark.parametrize("seq", [1, -1, "0", None])
def test_envelope_out_of_sequence(seq: object) -> None:
    r = _started_link_receiver()
    doc = json.loads(_envelope(_hello()))
    r.receive(json.dumps({**doc, "s": seq}))
    _expect_failed(r, RemoteProtocolError, "envelope out of sequence")


def test_envelope_ciphertext_not_text() -> None:
    r = _started_link_receiver()
    r.receive(json.dumps({"t": "env", "s": 0, "c": ["x"]}))
    _expect_failed(r, RemoteProtocolError, "envelope field is not text")


@pytest.mark.parametrize("size", [0, 24, 39])
def test_short_envelope_while_pairing_is_a_wrong_code(size: int) -> None:
    r = _started_link_receiver()
    r.receive(json.dumps({"t": "env", "s": 0, "c": base64.b64encode(bytes(size)).decode()}))
    err = _expect_failed(r, WrongCodeError, "key confirmation failed")
    assert err.user_message.startswith("The code was wrong")


def test_envelope_under_another_key_while_pairing_is_a_wrong_code() -> None:
    r = _started_link_receiver()
    r.receive(_envelope(_hello(), direction=b"r"))  # sealed with the other direction's key
    _expect_failed(r, WrongCodeError, "key confirmation failed")


@pytest.mark.parametrize("size", [10, 40])
def test_bad_envelope_after_pairing_is_an_integrity_error(size: int) -> None:
    r = _started_link_receiver()
    r.receive(_envelope(_hello()))
    assert isinstance(r.events_received()[0], Paired)
    r.receive(json.dumps({"t": "env", "s": 1, "c": base64.b64encode(bytes(size)).decode()}))
    err = _expect_failed(r, IntegrityError, "envelope failed authentication")
    assert err.user_message == IntegrityError.default_message


@pytest.mark.parametrize("paired", [False, True], ids=["pairing", "paired"])
@pytest.mark.parametrize(
    ("plain", "detail"),
    [
        (b"\xff not json", "envelope is not JSON"),
        (b"", "envelope is not JSON"),
        (b'["hello"]', "envelope is not an object"),
        (b"1", "envelope is not an object"),
    ],
)
def test_envelope_that_opens_but_is_not_an_object(plain: bytes, detail: str, paired: bool) -> None:
    r = _started_link_receiver()
    seq = 0
    if paired:
        r.receive(_envelope(_hello()))
        assert isinstance(r.events_received()[0], Paired)
        seq = 1
    r.receive(_envelope(plain, seq=seq))
    _expect_failed(r, RemoteProtocolError, detail)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "offer", "versions": [1]},
        {"versions": [1]},
        {"type": "hello"},
        {"type": "hello", "versions": 1},
        {"type": "hello", "versions": {"1": 1}},
    ],
)
def test_first_envelope_must_be_hello(message: dict[str, object]) -> None:
    r = _started_link_receiver()
    r.receive(_envelope(json.dumps(message).encode()))
    _expect_failed(r, RemoteProtocolError, "first envelope is not hello")


@pytest.mark.parametrize(
    ("versions", "shown"),
    [
        ([], "[]"),
        ([3, 4], "[3, 4]"),
        (["1", 1.5, None], "['1', 1.5, None]"),
        (list(range(3, 20)), "[3, 4, 5, 6, 7, 8, 9, 10]"),  # at most 8 shown
    ],
)
def test_no_common_version(versions: list[object], shown: str) -> None:
    r = _started_link_receiver()
    r.receive(_envelope(_hello(versions)))
    err = _expect_failed(r, VersionError, f"no common protocol version (peer offers {shown})")
    assert err.user_message == "The other side runs an incompatible ScanBeam version."
