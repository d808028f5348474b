"""Protocol v2 opens the TCP lane before the SDP exchange (docs/protocol.md §10.1): each
side sends its `lanes` envelope first, and the transfer can run on the TCP lane while the
data channel is still being negotiated."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from peer import session
from peer.errors import PeerGone
from peer.rtc import RtcLink
from peer.settings import Settings
from signaling.server import start_server
from signaling.settings import ServerSettings


async def test_the_transfer_runs_on_the_tcp_lane_while_the_answer_is_held_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "scan.bin"
    src.write_bytes(os.urandom(3_000_000))
    envelopes: list[tuple[str, str]] = []
    real_send = session._Pairing.send

    def spy(self: session._Pairing, message: dict[str, Any]) -> None:
        if message.get("type") != "hello":
            envelopes.append((self.hs.role.value, str(message.get("type"))))
        real_send(self, message)

    async def held_answer(self: RtcLink, offer_sdp: str) -> str:
        await asyncio.Event().wait()  # the receiver's answer never comes (until cancelled)
        raise AssertionError("unreachable")

    monkeypatch.setattr(session._Pairing, "send", spy)
    monkeypatch.setattr(RtcLink, "create_answer", held_answer)
    async with await start_server(ServerSettings(port=0)) as srv:
        base = Settings(server=srv.url, home=tmp_path / "home", connect_timeout=20.0, pipe=False)
        codes: asyncio.Queue[str] = asyncio.Queue()

        def on_send(ev: Any) -> None:
            if isinstance(ev, session.CodeReady):
                codes.put_nowait(ev.code)

        async def decide(offer: session.Offer) -> bool:
            return True

        sender = asyncio.ensure_future(session.send(base, [src], on_send))
        code = await asyncio.wait_for(codes.get(), 10)
        target = session.parse_target(code, srv.url)
        done = await asyncio.wait_for(
            session.receive(base, target, tmp_path / "out", lambda ev: None, decide), 60
        )
        sdone = await asyncio.wait_for(sender, 30)
    assert (tmp_path / "out" / "scan.bin").read_bytes() == src.read_bytes()
    assert [name for name, _ in done.paths] == [name for name, _ in sdone.paths] == ["tcp"]
    assert done.via == sdone.via == "direct"
    # each side's lanes envelope went first (the sender's offer, if its SDP was ready in
    # time, after it); the receiver never answered
    assert [t for r, t in envelopes if r == "s"] in (["lanes"], ["lanes", "offer"])
    assert [t for r, t in envelopes if r == "r"] == ["lanes"]


def _pairing(queued: list[dict[str, Any]]) -> session._Pairing:
    pairing = session._Pairing(None, None, Settings())  # type: ignore[arg-type]
    pairing.envelopes[:] = queued
    return pairing


async def test_an_envelope_of_another_known_type_waits_for_its_reader() -> None:
    offer, lanes = {"type": "offer", "sdp": "x"}, {"type": "lanes", "tcp": []}
    pairing = _pairing([offer, lanes])
    assert await pairing.envelope("lanes", "answer") is lanes
    assert await pairing.envelope("offer") is offer
    assert pairing.envelopes == []


async def test_an_error_envelope_ends_the_wait_wherever_it_is_queued() -> None:
    pairing = _pairing([{"type": "offer", "sdp": "x"}, {"type": "error"}])
    with pytest.raises(PeerGone):
        await pairing.envelope("lanes")
