"""Pure core of the signaling server: no event loop, a fake clock, a seeded random source."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from signaling import messages
from signaling.messages import (
    MAX_BODY,
    Allocated,
    Error,
    Expired,
    Joined,
    MalformedFrame,
    Msg,
    PeerClosed,
    PeerGone,
    PeerJoined,
    Pong,
    encode,
    parse_client,
    parse_server,
)
from signaling.rooms import (
    UNKNOWN_NAMEPLATE_DETAIL,
    Action,
    CloseConnection,
    Hub,
    LocalProtocolError,
    SendFrame,
    client_key,
)

ROOT = Path(__file__).resolve().parents[2]


def frame(kind: str, **fields: Any) -> str:
    return json.dumps({"v": 1, "type": kind, **fields})


def make_hub(seed: int = 0, **kwargs: Any) -> Hub:
    return Hub(randbelow=random.Random(seed).randrange, **kwargs)


def allocate(hub: Hub, conn: int, now: float = 0.0) -> str:
    (action,) = hub.receive(conn, frame("allocate"), now)
    assert isinstance(action, SendFrame) and isinstance(action.message, Allocated)
    return action.message.nameplate


def pair(hub: Hub, now: float = 0.0, ip: str = "10.0.0.1") -> tuple[int, int, str]:
    a, b = hub.connect(ip), hub.connect(ip)
    nameplate = allocate(hub, a, now)
    assert hub.receive(b, frame("join", nameplate=nameplate), now) == [
        SendFrame(b, Joined()),
        SendFrame(a, PeerJoined()),
    ]
    return a, b, nameplate


def error(conn: int, code: str, detail: str) -> Action:
    return SendFrame(conn, Error(code, detail))


def unknown(conn: int) -> list[Action]:
    return [SendFrame(conn, Error("unknown-nameplate", UNKNOWN_NAMEPLATE_DETAIL))]


# -- messages ------------------------------------------------------------------------------------


def test_encode_exact_frames() -> None:
    assert encode(Allocated("42", 600)) == (
        '{"v":1,"type":"allocated","nameplate":"42","expires_in":600}'
    )
    assert encode(PeerJoined()) == '{"v":1,"type":"peer-joined"}'
    assert encode(Msg("h\u00e9\n")) == '{"v":1,"type":"msg","body":"h\u00e9\\n"}'
    assert encode(Error(messages.ErrorCode.BUSY, "x")) == (
        '{"v":1,"type":"error","code":"busy","detail":"x"}'
    )


def test_parse_ignores_unknown_keys_and_reports_unknown_types() -> None:
    assert parse_client(frame("join", nameplate="7", extra=[1])) == messages.Join("7")
    assert parse_client(frame("future")) == messages.Unknown("future")
    assert parse_server(frame("future", x=1)) == messages.Unknown("future")
    assert parse_server(frame("pong")) == Pong()
    assert parse_server(frame("error", code="busy", detail="d")) == Error("busy", "d")


@given(
    st.one_of(
        st.builds(Allocated, st.text(), st.integers()),
        st.builds(Msg, st.text()),
        st.builds(PeerClosed, st.text()),
        st.builds(Error, st.text(), st.text()),
        st.sampled_from([Joined(), PeerJoined(), PeerGone(), Expired(), Pong()]),
    )
)
def test_server_messages_round_trip(message: messages.ServerMessage) -> None:
    assert parse_server(encode(message)) == message


@given(st.text() | st.binary())
def test_parse_client_raises_only_malformed(data: str | bytes) -> None:
    try:
        parse_client(data)
    except MalformedFrame:
        pass


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        ("nope", "The frame is not valid JSON."),
        ("[1]", "The frame must be a JSON object."),
        ('{"type":"ping"}', "'v' must be 1."),
        ('{"v":2,"type":"ping"}', "'v' must be 1."),
        ('{"v":true,"type":"ping"}', "'v' must be 1."),
        ('{"v":"1","type":"ping"}', "'v' must be 1."),
        ('{"v":1}', "'type' must be a string."),
        ('{"v":1,"type":3}', "'type' must be a string."),
        ('{"v":1,"type":"join","nameplate":12}', "'nameplate' must be a string."),
        ('{"v":1,"type":"msg"}', "'body' must be a string."),
        ('{"v":1,"type":"msg","body":"\\ud800"}', "'body' is not valid Unicode."),
        ('{"v":1,"type":"close"}', "'mood' must be a string."),
        (
            '{"v":1,"type":"close","mood":"sad"}',
            "'mood' must be one of: declined, error, happy, wrong-code.",
        ),
        ("[" * 100_000, "The frame is not valid JSON."),
        (b'{"v":1,"type":"ping"}', "Binary frames are not accepted; send JSON text."),
        (frame("msg", body="x" * (MAX_BODY + 1)), f"'body' is larger than {MAX_BODY} bytes."),
    ],
)
def test_malformed_frames(data: str | bytes, detail: str) -> None:
    with pytest.raises(MalformedFrame) as info:
        parse_client(data)
    assert info.value.detail == detail
    hub = make_hub()
    conn = hub.connect("ip")
    assert hub.receive(conn, data, 0.0) == [
        error(conn, "malformed", detail),
        CloseConnection(conn, 1008),
    ]
    assert hub.receive(conn, frame("ping"), 0.0) == []  # a closing connection is ignored


def test_body_limit_counts_utf8_bytes() -> None:
    assert parse_client(frame("msg", body="x" * MAX_BODY)) == Msg("x" * MAX_BODY)
    with pytest.raises(MalformedFrame):
        parse_client(frame("msg", body="\u00e9" * (MAX_BODY // 2 + 1)))


# -- rooms -----------------------------------------------------------------------------------


def test_allocate_join_and_forward_both_ways() -> None:
    hub = make_hub(nameplate_ttl=600.0)
    a = hub.connect("10.0.0.1")
    (action,) = hub.receive(a, frame("allocate"), 0.0)
    assert isinstance(action, SendFrame) and isinstance(action.message, Allocated)
    nameplate = action.message.nameplate
    assert action == SendFrame(a, Allocated(nameplate, 600))
    assert nameplate.isdigit() and 1 <= len(nameplate) <= 3 and not nameplate.startswith("0")
    b = hub.connect("10.0.0.2")
    assert hub.receive(b, frame("join", nameplate=nameplate), 1.0) == [
        SendFrame(b, Joined()),
        SendFrame(a, PeerJoined()),
    ]
    assert hub.receive(a, frame("msg", body='{"not": "parsed"}'), 2.0) == [
        SendFrame(b, Msg('{"not": "parsed"}'))
    ]
    assert hub.receive(b, frame("msg", body=""), 2.0) == [SendFrame(a, Msg(""))]
    assert hub.receive(a, frame("ping"), 2.0) == [SendFrame(a, Pong())]
    assert hub.stats.paired == 1 and hub.stats.connections == 2


def test_third_claimant_is_crowded_and_stays_open() -> None:
    hub = make_hub()
    a, b, nameplate = pair(hub)
    c = hub.connect("10.0.0.3")
    assert hub.receive(c, frame("join", nameplate=nameplate), 1.0) == [
        error(c, "crowded", "This room already has two members.")
    ]
    assert hub.receive(c, frame("ping"), 1.0) == [SendFrame(c, Pong())]
    assert hub.receive(a, frame("msg", body="still"), 1.0) == [SendFrame(b, Msg("still"))]


def test_nameplate_is_single_use_after_a_member_leaves() -> None:
    hub = make_hub()
    a, b, nameplate = pair(hub)
    assert hub.disconnect(b, 1.0) == [SendFrame(a, PeerGone()), CloseConnection(a, 1000)]
    assert hub.receive(a, frame("msg", body="x"), 1.0) == []  # closing; ignored
    c = hub.connect("10.0.0.3")
    assert hub.receive(c, frame("join", nameplate=nameplate), 2.0) == unknown(c)
    assert hub.disconnect(a, 2.0) == []
    assert hub.stats.rooms == 0


def test_close_burns_the_room_and_tells_the_peer_the_mood() -> None:
    hub = make_hub()
    a, b, nameplate = pair(hub)
    assert hub.receive(b, frame("close", mood="wrong-code"), 1.0) == [
        SendFrame(a, PeerClosed("wrong-code")),
        CloseConnection(a, 1000),
        CloseConnection(b, 1000),
    ]
    c = hub.connect("10.0.0.3")
    assert hub.receive(c, frame("join", nameplate=nameplate), 2.0) == unknown(c)


def test_allocator_leaving_or_closing_frees_the_nameplate_for_nobody() -> None:
    hub = make_hub()
    a = hub.connect("ip")
    nameplate = allocate(hub, a)
    assert hub.disconnect(a, 1.0) == []
    b = hub.connect("ip")
    assert hub.receive(b, frame("join", nameplate=nameplate), 1.0) == unknown(b)
    c = hub.connect("ip")
    nameplate = allocate(hub, c)
    assert hub.receive(c, frame("close", mood="declined"), 1.0) == [CloseConnection(c, 1000)]
    assert hub.receive(b, frame("join", nameplate=nameplate), 1.0) == unknown(b)
    d = hub.connect("ip")
    assert hub.receive(d, frame("close", mood="happy"), 1.0) == [CloseConnection(d, 1000)]


def test_one_room_per_connection() -> None:
    hub = make_hub()
    a = hub.connect("ip")
    nameplate = allocate(hub, a)
    busy = "This connection already has a room."
    assert hub.receive(a, frame("allocate"), 0.0) == [error(a, "bad-state", busy)]
    assert hub.receive(a, frame("join", nameplate=nameplate), 0.0) == [error(a, "bad-state", busy)]
    b = hub.connect("ip")
    assert hub.receive(b, frame("join", nameplate="999999"), 0.0) == unknown(b)
    hub.receive(b, frame("join", nameplate=nameplate), 0.0)  # a failed join does not count
    assert hub.receive(b, frame("join", nameplate=nameplate), 0.0) == [error(b, "bad-state", busy)]
    assert hub.receive(b, frame("allocate"), 0.0) == [error(b, "bad-state", busy)]


def test_msg_before_room_or_peer() -> None:
    hub = make_hub()
    a = hub.connect("ip")
    assert hub.receive(a, frame("msg", body="x"), 0.0) == [
        error(a, "bad-state", "Allocate or join a room first.")
    ]
    allocate(hub, a)
    assert hub.receive(a, frame("msg", body="x"), 0.0) == [
        error(a, "no-peer", "The other side has not joined yet.")
    ]


def test_unknown_type_keeps_the_connection() -> None:
    hub = make_hub()
    a = hub.connect("ip")
    assert hub.receive(a, frame("hello", versions=[2, 1]), 0.0) == [
        error(a, "unknown-type", "Unknown message type.")
    ]
    assert hub.receive(a, frame("ping", junk={"x": 1}), 0.0) == [SendFrame(a, Pong())]


def test_malformed_frame_in_a_room_burns_it() -> None:
    hub = make_hub()
    a, b, _ = pair(hub)
    assert hub.receive(b, "{", 1.0) == [
        error(b, "malformed", "The frame is not valid JSON."),
        SendFrame(a, PeerGone()),
        CloseConnection(a, 1000),
        CloseConnection(b, 1008),
    ]
    assert hub.stats.rooms == 0


def test_unjoined_nameplate_expires_after_its_ttl() -> None:
    hub = make_hub(nameplate_ttl=600.0)
    a = hub.connect("ip")
    nameplate = allocate(hub, a, now=100.0)
    assert hub.prune(699.9) == []
    assert hub.prune(700.0) == [SendFrame(a, Expired()), CloseConnection(a, 1000)]
    assert hub.stats.rooms == 0
    b = hub.connect("ip")
    assert hub.receive(b, frame("join", nameplate=nameplate), 701.0) == unknown(b)


def test_join_after_deadline_but_before_the_sweep_is_refused() -> None:
    hub = make_hub(nameplate_ttl=10.0)
    a = hub.connect("ip")
    nameplate = allocate(hub, a)
    b = hub.connect("ip")
    assert hub.receive(b, frame("join", nameplate=nameplate), 10.0) == [
        SendFrame(a, Expired()),
        CloseConnection(a, 1000),
        *unknown(b),
    ]


def test_paired_room_expires_after_room_ttl_counted_from_the_join() -> None:
    hub = make_hub(nameplate_ttl=600.0, room_ttl=3600.0)
    a, b = hub.connect("ip"), hub.connect("ip")
    nameplate = allocate(hub, a, now=0.0)
    hub.receive(b, frame("join", nameplate=nameplate), 500.0)
    assert hub.prune(4099.0) == []  # past the nameplate TTL: paired rooms use room_ttl
    assert hub.prune(4100.0) == [
        SendFrame(a, Expired()),
        CloseConnection(a, 1000),
        SendFrame(b, Expired()),
        CloseConnection(b, 1000),
    ]
    assert hub.stats.rooms == 0


def test_msg_after_room_deadline_expires_the_room() -> None:
    hub = make_hub(room_ttl=60.0)
    a, b, _ = pair(hub)
    assert hub.receive(a, frame("msg", body="late"), 60.0) == [
        SendFrame(a, Expired()),
        CloseConnection(a, 1000),
        SendFrame(b, Expired()),
        CloseConnection(b, 1000),
    ]


def test_prune_frees_rooms_nameplates_and_ip_counters() -> None:
    hub = make_hub(nameplate_ttl=10.0, reuse_after=100.0, join_failures_per_minute=5)
    conns = [hub.connect(f"10.0.0.{i}") for i in range(50)]
    for conn in conns:
        allocate(hub, conn)
    for i in range(30):
        prober = hub.connect(f"10.1.0.{i}")
        hub.receive(prober, frame("join", nameplate="0"), 0.0)
        hub.disconnect(prober, 0.0)
    stats = hub.stats
    assert (stats.rooms, stats.tracked_ips, stats.connections) == (50, 30, 50)
    assert len(hub.prune(10.0)) == 100  # expired + close for each
    for conn in conns:
        hub.disconnect(conn, 10.0)
    stats = hub.stats
    assert (stats.rooms, stats.connections, stats.recent_nameplates) == (0, 0, 50)
    assert stats.tracked_ips == 30  # failures at t=0 still count until t=60
    hub.prune(60.0)
    assert hub.stats.tracked_ips == 0
    hub.prune(109.9)
    assert hub.stats.recent_nameplates == 50
    hub.prune(110.0)
    assert hub.stats.recent_nameplates == 0


def test_recent_nameplates_are_bounded() -> None:
    hub = make_hub(max_recent=10)
    for _ in range(25):
        conn = hub.connect("ip")
        allocate(hub, conn)
        hub.disconnect(conn, 0.0)
    assert hub.stats.recent_nameplates == 10


def test_nameplates_are_never_reused_within_the_reuse_window() -> None:
    # A random source that always says the same thing must not produce a clash.
    hub = Hub(randbelow=lambda n: 41, reuse_after=3600.0)
    a, b = hub.connect("ip"), hub.connect("ip")
    first = allocate(hub, a)
    assert first == "42"
    second = allocate(hub, b)
    assert second not in {first}
    hub.disconnect(a, 0.0)
    c = hub.connect("ip")
    third = allocate(hub, c)
    assert third not in {first, second}
    hub.prune(3599.0)
    d = hub.connect("ip")
    assert allocate(hub, d, now=3599.0) not in {first, second, third}
    hub.prune(3600.0)  # "42" was released at t=0
    e = hub.connect("ip")
    assert allocate(hub, e, now=3600.0) == "42"


def test_nameplates_grow_longer_when_busy() -> None:
    hub = make_hub(max_rooms=2000)
    lengths = [len(allocate(hub, hub.connect("ip"))) for _ in range(600)]
    assert max(lengths[:500]) == 3  # while fewer than 500 nameplates are taken
    # Then the pool is 1 .. 9999: mostly four digits, never more.
    assert max(lengths[500:]) == 4 and lengths[500:].count(4) > 50
    assert hub.stats.rooms == 600


def test_max_rooms_gives_busy() -> None:
    hub = make_hub(max_rooms=2)
    a, b, c = (hub.connect("ip") for _ in range(3))
    allocate(hub, a)
    allocate(hub, b)
    assert hub.receive(c, frame("allocate"), 0.0) == [
        error(c, "busy", "The server is busy; try again later.")
    ]
    hub.disconnect(a, 0.0)
    allocate(hub, c)


def test_message_cap_closes_the_room() -> None:
    hub = make_hub(max_msgs_per_room=3)
    a, b, nameplate = pair(hub)
    for i in range(3):
        sender, receiver = (a, b) if i % 2 == 0 else (b, a)
        assert hub.receive(sender, frame("msg", body=str(i)), 1.0) == [
            SendFrame(receiver, Msg(str(i)))
        ]
    detail = "This room carried too many messages."
    assert hub.receive(b, frame("msg", body="3"), 1.0) == [
        error(a, "too-many-messages", detail),
        CloseConnection(a, 1008),
        error(b, "too-many-messages", detail),
        CloseConnection(b, 1008),
    ]
    assert hub.stats.rooms == 0
    c = hub.connect("ip")
    assert hub.receive(c, frame("join", nameplate=nameplate), 1.0) == unknown(c)


def test_failed_joins_are_rate_limited_per_ip() -> None:
    hub = make_hub(join_failures_per_minute=20)
    owner = hub.connect("10.0.0.1")
    nameplate = allocate(hub, owner)
    prober = hub.connect("6.6.6.6")
    for i in range(20):
        now = i * 2.0  # t = 0 .. 38
        assert hub.receive(prober, frame("join", nameplate=f"9{i:04}"), now) == unknown(prober)
    detail = "Too many failed attempts; wait a minute and try again."
    # Even the right nameplate is refused while the IP is limited, and the connection closes.
    assert hub.receive(prober, frame("join", nameplate=nameplate), 39.0) == [
        error(prober, "rate-limited", detail),
        CloseConnection(prober, 1008),
    ]
    hub.disconnect(prober, 39.0)
    other = hub.connect("6.6.6.7")
    assert hub.receive(other, frame("join", nameplate="00000"), 39.0) == unknown(other)
    again = hub.connect("6.6.6.6")
    assert hub.receive(again, frame("join", nameplate=nameplate), 59.0) == [
        error(again, "rate-limited", detail),
        CloseConnection(again, 1008),
    ]
    # At t=60 the first failure (t=0) has left the window: 19 remain, one more try is allowed.
    later = hub.connect("6.6.6.6")
    assert hub.receive(later, frame("join", nameplate=nameplate), 60.0) == [
        SendFrame(later, Joined()),
        SendFrame(owner, PeerJoined()),
    ]


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::/64"),
        ("unknown", "unknown"),
    ],
)
def test_client_key(ip: str, key: str) -> None:
    assert client_key(ip) == key


def test_one_ipv6_host_cannot_dodge_the_limit_by_rotating_addresses() -> None:
    hub = make_hub(join_failures_per_minute=3)
    for i in range(3):
        conn = hub.connect(f"2001:db8::{i + 1}")
        assert hub.receive(conn, frame("join", nameplate="0"), 0.0) == unknown(conn)
    conn = hub.connect("2001:db8::ffff")
    reply = hub.receive(conn, frame("join", nameplate="0"), 0.0)[0]
    assert isinstance(reply, SendFrame) and isinstance(reply.message, Error)
    assert reply.message.code == "rate-limited"
    other = hub.connect("2001:db8:0:1::1")  # another /64
    assert hub.receive(other, frame("join", nameplate="0"), 0.0) == unknown(other)


def test_crowded_counts_as_a_failed_join() -> None:
    hub = make_hub(join_failures_per_minute=2)
    _, _, nameplate = pair(hub)
    c = hub.connect("6.6.6.6")
    for _ in range(2):
        assert hub.receive(c, frame("join", nameplate=nameplate), 1.0)[0] == error(
            c, "crowded", "This room already has two members."
        )
    action = hub.receive(c, frame("join", nameplate=nameplate), 1.0)[0]
    assert isinstance(action, SendFrame) and isinstance(action.message, Error)
    assert action.message.code == "rate-limited"


def test_misuse_by_the_shim_raises() -> None:
    hub = make_hub()
    with pytest.raises(LocalProtocolError, match="unknown connection id 99"):
        hub.receive(99, frame("ping"), 0.0)
    conn = hub.connect("ip")
    hub.disconnect(conn, 0.0)
    with pytest.raises(LocalProtocolError):
        hub.disconnect(conn, 0.0)


def test_core_imports_no_io_library() -> None:
    code = (
        "import sys, signaling.rooms, signaling.messages, signaling.settings\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "{'asyncio', 'websockets', 'socket', 'peer', 'secrets', 'random'}]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=30)


# -- property: any sequence of operations keeps the invariants ----------------------------------

MOODS = sorted(messages.MOODS)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)


class HubMachine(RuleBasedStateMachine):
    """Random clients against one hub. Total simulated time stays below ``reuse_after``."""

    def __init__(self) -> None:
        super().__init__()
        self.hub = Hub(
            randbelow=random.Random(7).randrange,
            nameplate_ttl=20.0,
            room_ttl=40.0,
            max_rooms=4,
            max_msgs_per_room=3,
            join_failures_per_minute=8,
            reuse_after=3600.0,
        )
        self.now = 0.0
        self.live: list[int] = []
        self.closing: set[int] = set()
        self.allocated: list[str] = []
        self.joined: set[str] = set()
        self.roomed: set[int] = set()  # connections that allocated or joined

    def _check(self, actions: list[Action], join_target: str | None = None) -> None:
        for action in actions:
            assert action.conn in self.live, "action for a connection that is gone"
            assert action.conn not in self.closing, "action after close"
            if isinstance(action, CloseConnection):
                assert action.code in (1000, 1008)
                self.closing.add(action.conn)
                continue
            message = action.message
            event(getattr(message, "code", type(message).__name__))
            if isinstance(message, Allocated):
                assert message.nameplate not in self.allocated, "nameplate reused"
                self.allocated.append(message.nameplate)
                self.roomed.add(action.conn)
            elif isinstance(message, Joined):
                assert join_target is not None
                assert join_target not in self.joined, "a nameplate was joined twice"
                self.joined.add(join_target)
                self.roomed.add(action.conn)
            encode(message)  # every frame must be sendable

    @initialize()
    def start(self) -> None:
        self.live += [self.hub.connect(ip) for ip in ("1.1.1.1", "1.1.1.1", "2.2.2.2", "::1")]

    @rule(ip=st.sampled_from(["1.1.1.1", "2.2.2.2", "::1"]))
    def connect(self, ip: str) -> None:
        self.live.append(self.hub.connect(ip))

    def _feed(self, conn: int, data: str | bytes) -> None:
        try:
            parsed = parse_client(data)
        except MalformedFrame:
            parsed = None
        join_target = parsed.nameplate if isinstance(parsed, messages.Join) else None
        self._check(self.hub.receive(conn, data, self.now), join_target)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def allocate(self, data: st.DataObject) -> None:
        self._feed(data.draw(st.sampled_from(self.live)), frame("allocate"))

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def join(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(self.live))
        known = st.sampled_from(self.allocated) if self.allocated else st.nothing()
        target = data.draw(known | st.text(alphabet="0123456789", max_size=4))
        self._feed(conn, frame("join", nameplate=target))

    @precondition(
        lambda self: (
            set(self.live) - self.roomed - self.closing and set(self.allocated) - self.joined
        )
    )
    @rule(data=st.data())
    def join_open_room(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted(set(self.live) - self.roomed - self.closing)))
        target = data.draw(st.sampled_from(sorted(set(self.allocated) - self.joined)))
        self._feed(conn, frame("join", nameplate=target))

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), body=st.text(max_size=20))
    def msg(self, data: st.DataObject, body: str) -> None:
        in_room = sorted(self.roomed.intersection(self.live) - self.closing)
        conn = data.draw(st.sampled_from(in_room or self.live))
        self._feed(conn, frame("msg", body=body))

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), mood=st.sampled_from(MOODS))
    def close(self, data: st.DataObject, mood: str) -> None:
        self._feed(data.draw(st.sampled_from(self.live)), frame("close", mood=mood))

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def junk(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(self.live))
        self._feed(
            conn,
            data.draw(
                st.one_of(
                    st.just(frame("ping")),
                    st.just(frame("whatever")),
                    st.builds(json.dumps, JSONISH),
                    st.builds(
                        lambda d: json.dumps({"v": 1, **d}),
                        st.dictionaries(
                            st.sampled_from(["type", "nameplate", "body", "mood"]), JSONISH
                        ),
                    ),
                    st.text(max_size=20),
                    st.binary(max_size=8),
                )
            ),
        )

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(self.live))
        self.live.remove(conn)
        self.closing.discard(conn)
        self._check(self.hub.disconnect(conn, self.now))

    @rule(dt=st.floats(min_value=0.0, max_value=15.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        self._check(self.hub.prune(self.now))

    @invariant()
    def rooms_are_sane(self) -> None:
        rooms = self.hub._rooms
        assert len(rooms) <= 4
        members = [m.id for room in rooms.values() for m in room.members]
        assert len(members) == len(set(members)), "a connection in two rooms"
        for nameplate, room in rooms.items():
            assert 1 <= len(room.members) <= 2
            assert room.nameplate == nameplate
            assert nameplate not in self.hub._recent
            for member in room.members:
                assert member.room is room
                assert member.id in self.live and member.id not in self.closing
        stats = self.hub.stats
        assert stats.connections == len(self.live)
        assert stats.rooms == stats.waiting + stats.paired


TestHubMachine = HubMachine.TestCase
TestHubMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
