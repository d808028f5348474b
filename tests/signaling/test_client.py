"""SignalingClient against the real server on loopback (and one scripted websockets server)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from signaling.client import QUEUE_SIZE, SignalingClient, SignalingError, signal_url
from signaling.server import Server, start_server
from signaling.settings import ServerSettings

WAIT = 5.0


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with await start_server(ServerSettings(port=0)) as srv:
        yield srv


async def pair(srv: Server) -> tuple[SignalingClient, SignalingClient]:
    a = await SignalingClient.connect(srv.url)
    b = await SignalingClient.connect(srv.url + "/")
    nameplate = await a.allocate()
    await b.join(nameplate)
    await a.wait_peer(timeout=WAIT)
    return a, b


async def raises(awaitable: Awaitable[Any], code: str) -> SignalingError:
    with pytest.raises(SignalingError) as info:
        await asyncio.wait_for(awaitable, WAIT)
    assert info.value.code == code
    return info.value


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/v1/signal"),
        ("http://127.0.0.1:8000/", "ws://127.0.0.1:8000/v1/signal"),
        ("https://beam.example.org", "wss://beam.example.org/v1/signal"),
        ("HTTPS://beam.example.org/scanbeam/", "wss://beam.example.org/scanbeam/v1/signal"),
        ("https://beam.example.org/v1", "wss://beam.example.org/v1/signal"),
        ("wss://beam.example.org/v1/signal", "wss://beam.example.org/v1/signal"),
        ("http://[::1]:9/?x=1#frag", "ws://[::1]:9/v1/signal"),
    ],
)
def test_signal_url(given: str, expected: str) -> None:
    assert signal_url(given) == expected


@pytest.mark.parametrize("bad", ["ftp://host", "beam.example.org", "http://", ""])
def test_signal_url_rejects_non_server_urls(bad: str) -> None:
    with pytest.raises(SignalingError) as info:
        signal_url(bad)
    assert info.value.code == "bad-url"


async def test_closed_port_is_unreachable_quickly() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    started = asyncio.get_running_loop().time()
    error = await raises(SignalingClient.connect(url, open_timeout=5.0), "unreachable")
    assert asyncio.get_running_loop().time() - started < 1.0
    assert error.detail == f"Cannot reach the ScanBeam server at {url}."


async def test_unresolvable_host_is_unreachable() -> None:
    await raises(SignalingClient.connect("http://scanbeam.invalid", open_timeout=3), "unreachable")


async def test_a_server_that_is_not_scanbeam_is_unreachable(server: Server) -> None:
    await raises(SignalingClient.connect(server.url + "/elsewhere/"), "unreachable")


async def test_silent_server_times_out_as_unreachable() -> None:
    accepted: list[asyncio.StreamWriter] = []
    listener = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        await raises(
            SignalingClient.connect(f"http://127.0.0.1:{port}", open_timeout=0.2), "unreachable"
        )
        for writer in accepted:
            writer.close()
            await writer.wait_closed()
    assert accepted  # the TCP connection was made; only the handshake timed out


async def test_whole_exchange(server: Server) -> None:
    a, b = await pair(server)
    await a.send("offer")
    assert await b.recv(timeout=WAIT) == "offer"
    await b.send("answer \u00e9")
    assert await a.recv(timeout=WAIT) == "answer \u00e9"
    await b.close("happy")
    error = await raises(a.recv(), "peer-closed:happy")
    assert error.detail == "The other side ended the session (happy)."
    await raises(a.recv(), "peer-closed:happy")  # sticky
    await raises(a.send("x"), "peer-closed:happy")
    await a.close()
    await a.close()  # idempotent
    await raises(a.recv(), "closed")
    assert server.hub.stats.rooms == 0


async def test_recv_timeout(server: Server) -> None:
    a, b = await pair(server)
    started = asyncio.get_running_loop().time()
    await raises(a.recv(timeout=0.2), "timeout")
    assert 0.15 < asyncio.get_running_loop().time() - started < 1.0
    await b.send("after the timeout")  # nothing was lost or consumed by the timed-out call
    assert await a.recv(timeout=WAIT) == "after the timeout"
    await a.close()
    await b.close()


async def test_peer_gone(server: Server) -> None:
    a = await SignalingClient.connect(server.url)
    nameplate = await a.allocate()
    async with connect(server.url.replace("http", "ws") + "/v1/signal") as raw:
        await raw.send(json.dumps({"v": 1, "type": "join", "nameplate": nameplate}))
        assert json.loads(await raw.recv())["type"] == "joined"
        await a.wait_peer(timeout=WAIT)
        await raw.send(json.dumps({"v": 1, "type": "msg", "body": "last words"}))
    # raw left without "close": the server reports peer-gone, after the body that came first.
    assert await a.recv(timeout=WAIT) == "last words"
    error = await raises(a.recv(), "peer-gone")
    assert error.detail == "The other side disconnected."
    await a.close()


async def test_early_messages_are_queued_in_order() -> None:
    count = QUEUE_SIZE + 44  # more than the queue holds: the reader must wait, not drop
    async with await start_server(ServerSettings(port=0, max_msgs_per_room=1000)) as srv:
        a, b = await pair(srv)
        for i in range(count):
            await a.send(f"m{i}")
        await a.close("happy")
        await asyncio.sleep(0.1)  # let everything arrive before anyone asks
        assert [await b.recv(timeout=WAIT) for _ in range(count)] == [f"m{i}" for i in range(count)]
        await raises(b.recv(), "peer-closed:happy")
        await b.close()


async def test_message_sent_right_after_join_is_not_lost(server: Server) -> None:
    a = await SignalingClient.connect(server.url)
    b = await SignalingClient.connect(server.url)
    await b.join(await a.allocate())
    await b.send("hello")  # a has not called wait_peer yet
    assert await a.recv(timeout=WAIT) == "hello"  # recv works without wait_peer
    await a.wait_peer(timeout=0)  # and peer-joined was noted
    await a.close()
    await b.close()


async def test_join_errors_and_retry(server: Server) -> None:
    a, b = await pair(server)
    c = await SignalingClient.connect(server.url)
    error = await raises(c.join("0"), "unknown-nameplate")
    assert error.detail == "This code is unknown, expired or already used."
    fresh = await SignalingClient.connect(server.url)
    nameplate = await fresh.allocate()
    await c.join(nameplate)  # the failed join left the connection usable
    await raises(c.join(nameplate), "bad-state")
    for client in (a, b, c, fresh):
        await client.close()


async def test_crowded(server: Server) -> None:
    a = await SignalingClient.connect(server.url)
    nameplate = await a.allocate()
    b = await SignalingClient.connect(server.url)
    await b.join(nameplate)
    c = await SignalingClient.connect(server.url)
    error = await raises(c.join(nameplate), "crowded")
    assert error.detail == "This room already has two members."
    for client in (a, b, c):
        await client.close()


async def test_wait_peer_expired_and_timeout() -> None:
    settings = ServerSettings(port=0, nameplate_ttl=0.3, prune_interval=0.05)
    async with await start_server(settings) as srv:
        a = await SignalingClient.connect(srv.url)
        await raises(a.wait_peer(), "bad-state")
        await a.allocate()
        await raises(a.wait_peer(timeout=0.05), "timeout")
        await raises(a.wait_peer(timeout=WAIT), "expired")
        await raises(a.recv(), "expired")
        await a.close()


async def test_local_misuse(server: Server) -> None:
    a = await SignalingClient.connect(server.url)
    await raises(a.send("x"), "no-peer")
    nameplate = await a.allocate()
    await raises(a.allocate(), "bad-state")
    await raises(a.send("x"), "no-peer")
    b = await SignalingClient.connect(server.url)
    await b.join(nameplate)
    await a.wait_peer(timeout=WAIT)
    await raises(a.send("x" * (48 * 1024 + 1)), "too-large")
    with pytest.raises(ValueError):
        await a.send("\ud800")
    await a.send("x" * (48 * 1024))  # exactly the limit is fine
    assert len(await b.recv(timeout=WAIT)) == 48 * 1024
    with pytest.raises(ValueError, match="mood"):
        await a.close("grumpy")
    await a.close("declined")
    await raises(b.recv(), "peer-closed:declined")
    await b.close()


async def test_server_going_away_is_disconnected() -> None:
    srv = await start_server(ServerSettings(port=0))
    a, b = await pair(srv)
    await srv.close()
    error = await raises(a.recv(), "disconnected")
    assert error.detail.startswith("Lost the connection to the ScanBeam server at http://")
    await raises(b.send("x"), "disconnected")
    await a.close()
    await b.close()


async def test_busy_allocate(server: Server) -> None:
    async with await start_server(ServerSettings(port=0, max_rooms=1)) as srv:
        a = await SignalingClient.connect(srv.url)
        await a.allocate()
        b = await SignalingClient.connect(srv.url)
        await raises(b.allocate(), "busy")
        await a.close()
        await b.close()


Script = Callable[[ServerConnection], Awaitable[None]]


async def scripted(script: Script) -> tuple[Any, str]:
    ws_server = await serve(script, "127.0.0.1", 0)
    port = ws_server.sockets[0].getsockname()[1]
    return ws_server, f"http://127.0.0.1:{port}"


async def test_unknown_server_types_and_pongs_are_ignored() -> None:
    async def script(ws: ServerConnection) -> None:
        assert json.loads(await ws.recv())["type"] == "allocate"
        for frame in (
            {"type": "allocated", "nameplate": "7", "expires_in": 60},
            {"type": "news-from-the-future", "x": 1},
            {"type": "pong"},
            {"type": "peer-joined"},
            {"type": "msg", "body": "ok", "extra": None},
        ):
            await ws.send(json.dumps({"v": 1, **frame}))
        await ws.wait_closed()

    ws_server, url = await scripted(script)
    async with ws_server:
        client = await SignalingClient.connect(url)
        assert await client.allocate() == "7"
        await client.wait_peer(timeout=WAIT)
        assert await client.recv(timeout=WAIT) == "ok"
        await client.close()


async def test_malformed_server_frame_is_a_protocol_error() -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send('{"v": 1, "type": "allocated", "nameplate": 7, "expires_in": 60}')
        await ws.wait_closed()

    ws_server, url = await scripted(script)
    async with ws_server:
        client = await SignalingClient.connect(url)
        error = await raises(client.allocate(), "protocol")
        assert "'nameplate' must be a string." in error.detail
        await client.close()


async def test_silent_server_request_timeout() -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.wait_closed()

    ws_server, url = await scripted(script)
    async with ws_server:
        client = await SignalingClient.connect(url, open_timeout=0.2)
        await raises(client.allocate(), "timeout")
        await client.close()
