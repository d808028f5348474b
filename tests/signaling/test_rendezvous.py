"""Protocol v2 rendezvous (docs/protocol.md §10.3): the hub pairs two connections by an
id, nothing else; and the real server with real clients."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from signaling.client import SignalingClient, SignalingError
from signaling.messages import Error, Joined, MalformedFrame, Msg, PeerJoined, parse_client
from signaling.rooms import CloseConnection, Hub, SendFrame
from signaling.server import start_server
from signaling.settings import ServerSettings

RID = "0123456789abcdef0123456789abcdef"


def frame(kind: str, **fields: Any) -> str:
    return json.dumps({"v": 1, "type": kind, **fields})


def hub(**kw: Any) -> Hub:
    return Hub(randbelow=random.Random(1).randrange, **kw)


@pytest.mark.parametrize("bad", ["", "ABCDEF0123456789abcdef0123456789", "0" * 31, "g" * 32, 7])
def test_rendezvous_id_must_be_32_lower_hex(bad: object) -> None:
    with pytest.raises(MalformedFrame):
        parse_client(frame("rendezvous", id=bad))


def test_two_connections_meet_and_talk() -> None:
    h = hub()
    a, b = h.connect("192.0.2.1"), h.connect("192.0.2.9")
    assert h.receive(a, frame("rendezvous", id=RID), 0.0) == [SendFrame(a, Joined())]
    assert h.receive(b, frame("rendezvous", id=RID), 1.0) == [
        SendFrame(b, Joined()),
        SendFrame(b, PeerJoined()),
        SendFrame(a, PeerJoined()),
    ]
    assert h.receive(a, frame("msg", body="x"), 2.0) == [SendFrame(b, Msg("x"))]
    c = h.connect("192.0.2.5")
    (crowded,) = h.receive(c, frame("rendezvous", id=RID), 2.0)
    assert isinstance(crowded, SendFrame) and isinstance(crowded.message, Error)
    assert crowded.message.code == "crowded"
    # a second room request on a connection that has one
    (bad,) = h.receive(a, frame("rendezvous", id="f" * 32), 2.0)
    assert isinstance(bad, SendFrame) and isinstance(bad.message, Error)
    assert bad.message.code == "bad-state"


def test_an_id_can_be_used_again_after_its_room_ended() -> None:
    h = hub()
    a = h.connect("192.0.2.1")
    h.receive(a, frame("rendezvous", id=RID), 0.0)
    h.disconnect(a, 1.0)  # e.g. the server restarts or the network drops
    b, c = h.connect("192.0.2.2"), h.connect("192.0.2.3")
    assert h.receive(b, frame("rendezvous", id=RID), 2.0) == [SendFrame(b, Joined())]
    assert SendFrame(b, PeerJoined()) in h.receive(c, frame("rendezvous", id=RID), 3.0)
    assert h.stats.recent_nameplates == 0  # ids are not nameplates


def test_a_waiting_rendezvous_expires_and_rooms_are_capped() -> None:
    h = hub(nameplate_ttl=10.0, max_rooms=1)
    a, b = h.connect("192.0.2.1"), h.connect("192.0.2.2")
    h.receive(a, frame("rendezvous", id=RID), 0.0)
    (busy,) = h.receive(b, frame("rendezvous", id="e" * 32), 1.0)
    assert isinstance(busy, SendFrame) and isinstance(busy.message, Error)
    assert busy.message.code == "busy"
    c = h.connect("192.0.2.3")
    actions = h.receive(c, frame("rendezvous", id=RID), 11.0)  # a's room expired first
    assert CloseConnection(a, 1000) in actions
    assert actions[-1] == SendFrame(c, Joined())


async def test_real_clients_meet_at_a_rendezvous() -> None:
    async with await start_server(ServerSettings(port=0)) as srv:
        a = await SignalingClient.connect(srv.url)
        b = await SignalingClient.connect(srv.url)
        try:
            await a.rendezvous(RID)
            with pytest.raises(SignalingError) as info:
                await a.wait_peer(timeout=0.2)
            assert info.value.code == "timeout"
            await b.rendezvous(RID)
            await a.wait_peer(timeout=5)
            await b.wait_peer(timeout=5)
            await a.send("hello")
            assert await b.recv(timeout=5) == "hello"
        finally:
            await a.close()
            await b.close()


def test_a_rendezvous_room_hands_both_members_fresh_ice_servers() -> None:
    """A reconnection round gets TURN credentials of its own (the first may have expired)."""
    from signaling.ice import IceServer

    minted: list[tuple[IceServer, ...]] = []

    def minter() -> tuple[IceServer, ...]:
        servers = (IceServer(("turn:198.51.100.1:3478",), f"u{len(minted)}", "c"),)
        minted.append(servers)
        return servers

    h = hub(ice=minter)
    a, b = h.connect("192.0.2.1"), h.connect("192.0.2.9")
    assert h.receive(a, frame("rendezvous", id=RID), 0.0) == [SendFrame(a, Joined(minted[0]))]
    assert h.receive(b, frame("rendezvous", id=RID), 1.0)[0] == SendFrame(b, Joined(minted[0]))
    assert len(minted) == 1
