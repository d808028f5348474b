"""A peer that speaks only protocol v1 (the browser page) still gets exactly the v1
session: one data channel, no lanes envelope, no markers (docs/protocol.md §10)."""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path
from typing import Any

import pytest

from peer import session
from peer.proto.handshake import Handshake
from peer.settings import Settings
from signaling.server import start_server
from signaling.settings import ServerSettings


@pytest.mark.parametrize("v1_side", ["sender", "receiver"])
async def test_a_v1_peer_gets_the_v1_session(
    v1_side: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "scan.bin"
    src.write_bytes(os.urandom(3_000_000))
    async with await start_server(ServerSettings(port=0)) as srv:
        base = Settings(server=srv.url, home=tmp_path / "home", connect_timeout=20.0)
        sent: list[Any] = []
        got: list[Any] = []
        codes: asyncio.Queue[str] = asyncio.Queue()
        envelopes: list[str] = []
        real_send = session._Pairing.send

        def spy(self: session._Pairing, message: dict[str, Any]) -> None:
            envelopes.append(str(message.get("type")))
            real_send(self, message)

        monkeypatch.setattr(session._Pairing, "send", spy)
        v1 = functools.partial(Handshake, versions=(1,))
        v2 = Handshake

        def handshake(role: Any, **kw: Any) -> Handshake:
            is_v1 = (role.value == "s") == (v1_side == "sender")
            return (v1 if is_v1 else v2)(role, **kw)

        monkeypatch.setattr(session, "Handshake", handshake)

        def on_send(ev: Any) -> None:
            sent.append(ev)
            if isinstance(ev, session.CodeReady):
                codes.put_nowait(ev.code)

        async def decide(offer: session.Offer) -> bool:
            return True

        sender = asyncio.ensure_future(session.send(base, [src], on_send))
        code = await asyncio.wait_for(codes.get(), 10)
        target = session.parse_target(code, srv.url)
        done = await asyncio.wait_for(
            session.receive(base, target, tmp_path / "out", got.append, decide), 60
        )
        sdone = await asyncio.wait_for(sender, 30)
    assert (tmp_path / "out" / "scan.bin").read_bytes() == src.read_bytes()
    assert done.via == sdone.via == "direct"
    assert done.paths == sdone.paths == ()  # v1 reports no paths
    assert "lanes" not in envelopes
    assert not [e for e in sent + got if isinstance(e, session.PathMoved)]
