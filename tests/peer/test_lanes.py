"""Lanes over real sockets on this machine's own address (docs/protocol.md §10): the TCP
lane's proofs (a wrong key or garbage is refused without a traceback), the sender and
receiver multiplexers keeping the record order across a move, and the relay pipe."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from peer.errors import PeerGone
from peer.lanes import (
    Lane,
    ReceiverLanes,
    SenderLanes,
    TcpLane,
    TcpLanes,
    connect_pipe,
    local_addresses,
)
from peer.proto.paths import LANE_MAGIC, lane_key, pipe_id
from relay.pipe import PipeHub
from signaling.server import Server, start_server
from signaling.settings import ServerSettings

WAIT = 10.0
KEY = lane_key(bytes(range(32)))


def own_address() -> str:
    addrs = [a for a in local_addresses() if ":" not in a]
    assert addrs, "this test needs a non-loopback IPv4 address (eth0)"
    return addrs[0]


class Collect:
    def __init__(self) -> None:
        self.lanes: list[TcpLane] = []
        self.event = asyncio.Event()

    def __call__(self, lane: TcpLane) -> None:
        self.lanes.append(lane)
        self.event.set()


async def wait_for(cond: Callable[[], object], what: str) -> None:
    """Poll ``cond`` (bounded): the lanes have no event for what the tests look at."""
    async with asyncio.timeout(WAIT):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def open_pair(
    key_a: bytes = KEY, key_b: bytes = KEY
) -> tuple[TcpLanes, Collect, TcpLanes, Collect]:
    got_a, got_b = Collect(), Collect()
    a, b = TcpLanes(key_a, got_a), TcpLanes(key_b, got_b)
    addrs = await a.listen([own_address()])
    assert addrs and addrs[0][0] == own_address() and addrs[0][1] > 0
    b.connect_all(addrs)
    return a, got_a, b, got_b


async def test_tcp_lane_with_the_same_key_carries_messages_both_ways() -> None:
    a, got_a, b, got_b = await open_pair()
    try:
        await wait_for(lambda: got_a.lanes and got_b.lanes, "lanes")
        la, lb = got_a.lanes[0], got_b.lanes[0]
        sink_a, sink_b = ReceiverLanes(), ReceiverLanes()
        sink_a.add(la)
        sink_b.add(lb)
        from peer.proto.paths import MarkerKind, marker

        lb.send(marker(MarkerKind.START, 0))
        for i in range(100):
            lb.send(b"\x01" + os.urandom(i * 500))
        await lb.drain()
        for i in range(100):
            assert len(await asyncio.wait_for(sink_a.recv(), WAIT)) == 1 + i * 500
        sink_a.send(b"\x01answer")  # the receiver answers on the lane it reads from
        await sink_a.drain()
        la2 = await asyncio.wait_for(_raw_next(sink_b), WAIT)
        assert la2 == b"\x01answer"
        assert sink_a.paths == [("tcp", sum(1 + i * 500 for i in range(100)) + 6)]
    finally:
        await a.close()
        await b.close()
        for lane in got_a.lanes + got_b.lanes:
            await lane.close()


async def _raw_next(mux: ReceiverLanes) -> bytes:
    """A message on a lane that started no generation (answers go sender-wards unmarked):
    read it from the lane's merger queue."""
    while True:
        for q in mux._merger._queues.values():
            if q:
                return q.popleft()
        await asyncio.sleep(0.01)


async def test_a_wrong_key_is_refused_on_both_sides(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    a, got_a, b, got_b = await open_pair(KEY, lane_key(bytes(32)))
    try:
        await wait_for(lambda: b.rejected >= 1 and a.rejected >= 1, "rejections")
        await asyncio.sleep(0.2)
        assert not got_a.lanes and not got_b.lanes
        assert "failed authentication" in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize(
    "junk",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 64,  # not a lane
        LANE_MAGIC + os.urandom(32) + os.urandom(32),  # a lane hello, then a wrong proof
        b"",  # connects and closes
        LANE_MAGIC[:4],  # says a little, then nothing (timeout)
    ],
)
async def test_garbage_is_refused_without_traceback(
    junk: bytes, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import peer.lanes

    monkeypatch.setattr(peer.lanes, "AUTH_TIMEOUT", 1.0)
    caplog.set_level(logging.DEBUG)
    got = Collect()
    lanes = TcpLanes(KEY, got)
    ((ip, port),) = await lanes.listen([own_address()])
    try:
        reader, writer = await asyncio.open_connection(ip, port)
        writer.write(junk)
        await writer.drain()
        if not junk:
            writer.close()
        # the listener answers a hello, then closes on the wrong proof / junk / silence
        async with asyncio.timeout(WAIT):
            while await reader.read(4096):
                pass
        writer.close()
        await writer.wait_closed()
        await wait_for(lambda: lanes.rejected == 1, "rejection")
        assert not got.lanes
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        # and it still serves a real peer afterwards
        theirs = Collect()
        other = TcpLanes(KEY, theirs)
        other.connect_all([[ip, port], ["not an address", 1], [ip, 0], "junk"])
        await wait_for(lambda: got.lanes and theirs.lanes, "a good lane after garbage")
        await other.close()
        for lane in theirs.lanes:
            await lane.close()
    finally:
        await lanes.close()
        for lane in got.lanes:
            await lane.close()


async def test_connecting_to_something_that_is_not_a_lane_is_refused() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"x" * 80)
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(http, own_address(), 0)
    port = srv.sockets[0].getsockname()[1]
    got = Collect()
    lanes = TcpLanes(KEY, got)
    try:
        lanes.connect_all([[own_address(), port]])
        await wait_for(lambda: lanes.rejected == 1, "rejection")
        assert not got.lanes
    finally:
        await lanes.close()
        srv.close()


async def test_an_oversized_frame_ends_the_lane_cleanly() -> None:
    a, got_a, b, got_b = await open_pair()
    try:
        await wait_for(lambda: got_a.lanes and got_b.lanes, "lanes")
        mux = ReceiverLanes()
        mux.add(got_a.lanes[0])
        raw = got_b.lanes[0]._writer
        raw.write((1 << 30).to_bytes(4, "big"))
        await raw.drain()
        with pytest.raises(PeerGone):
            await asyncio.wait_for(mux.recv(), WAIT)
        assert got_a.lanes[0].dead
    finally:
        await a.close()
        await b.close()
        for lane in got_a.lanes + got_b.lanes:
            await lane.close()


async def test_records_keep_their_order_when_the_sender_moves_between_lanes() -> None:
    """Two real TCP lanes; the sender moves back and forth while the receiver reads."""
    a, got_a, b, got_b = await open_pair()
    b.connect_all(await a.listen([own_address()]))  # a second lane
    try:
        await wait_for(lambda: len(got_a.lanes) == 2 and len(got_b.lanes) == 2, "two lanes")
        tx = SenderLanes()
        for lane in got_b.lanes:
            tx.lanes.append(lane)  # add() keeps only one TCP lane; this test wants two
            tx.bytes[lane] = 0
            lane.attach(tx)
        rx = ReceiverLanes()
        for lane in got_a.lanes:
            rx.add(lane)
        first, second = got_b.lanes
        tx.move_to(first)
        n = 3000
        for i in range(n):
            if i % 250 == 0:
                tx.move_to(second if tx.current is first else first)
            tx.send(b"\x01" + i.to_bytes(4, "big") + os.urandom(1000))
            await tx.drain()
        got = [
            int.from_bytes((await asyncio.wait_for(rx.recv(), WAIT))[1:5], "big") for _ in range(n)
        ]
        assert got == list(range(n))
        assert len(tx.switches) == 12
        assert {name for name, _ in tx.paths} == {"tcp"}
        # the receiver's answers come back in seq order whatever lane carries them
        from peer.proto.keys import SessionKeys
        from peer.proto.records import RecordType, seal_record

        keys = SessionKeys.from_master(bytes(32))
        recs = [
            seal_record(keys.ctrl_r2s, keys.transfer_id, RecordType.CREDIT, b"c", index=i)
            for i in range(6)
        ]
        for lane, i in [(got_a.lanes[1], 1), (got_a.lanes[1], 2), (got_a.lanes[0], 0)]:
            lane.send(recs[i])
            await lane.drain()
        assert [await asyncio.wait_for(tx.recv(), WAIT) for _ in range(3)] == recs[:3]
        # the current lane dying ends the round; another lane dying does not
        other = first if tx.current is second else second
        await other.close()
        assert tx.recv_nowait() is None
        assert tx.current is not None
        await tx.current.close()
        with pytest.raises(PeerGone):
            await asyncio.wait_for(tx.recv(), WAIT)
    finally:
        await a.close()
        await b.close()
        for lane in got_a.lanes + got_b.lanes:
            await lane.close()


@pytest.fixture
async def pipe_server() -> AsyncIterator[Server]:
    hub = PipeHub(wait=1.0)
    async with await start_server(ServerSettings(port=0), mounts=[hub.mount]) as srv:
        yield srv


async def test_the_relay_pipe_carries_messages_both_ways(pipe_server: Server) -> None:
    pid = pipe_id(bytes(range(32)))
    one, two = await asyncio.gather(
        connect_pipe(pipe_server.url, pid, WAIT), connect_pipe(pipe_server.url, pid, WAIT)
    )
    assert one is not None and two is not None
    third = await connect_pipe(pipe_server.url, pid, WAIT)  # crowded
    assert third is None
    tx, rx = SenderLanes(), ReceiverLanes()
    tx.add(one)
    rx.add(two)
    assert tx.current is one and tx.via == "pipe"
    try:
        blobs = [os.urandom(60_000) for _ in range(200)]  # ~12 MB, more than any buffer
        for blob in blobs:
            tx.send(b"\x01" + blob)
            await tx.drain()
        for blob in blobs:
            assert await asyncio.wait_for(rx.recv(), WAIT) == b"\x01" + blob
        from peer.proto.keys import SessionKeys
        from peer.proto.records import RecordType, seal_record

        keys = SessionKeys.from_master(bytes(32))
        rec = seal_record(keys.ctrl_r2s, keys.transfer_id, RecordType.CREDIT, b"c", index=0)
        rx.send(rec)
        await rx.drain()
        assert await asyncio.wait_for(tx.recv(), WAIT) == rec
        assert rx.via == "pipe" and rx.paths[0][0] == "pipe"
    finally:
        await tx.flush_and_close(2.0)
        with pytest.raises(PeerGone):
            await asyncio.wait_for(rx.recv(), WAIT)
        await rx.close()


async def test_a_lonely_pipe_gives_up_and_bad_ids_are_refused(pipe_server: Server) -> None:
    assert await connect_pipe(pipe_server.url, "ab" * 16, WAIT) is None  # nobody came (1 s)
    assert await connect_pipe(pipe_server.url, "NOT-HEX", WAIT) is None
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(pipe_server.url + "/v1/pipe/" + "cd" * 16) as resp:
            assert resp.status == 400  # not a WebSocket
            assert (await resp.json())["code"] == "malformed"


def test_local_addresses_leave_out_loopback() -> None:
    addrs = local_addresses()
    assert own_address() in addrs
    assert not any(a.startswith("127.") or a == "::1" for a in addrs)
    with socket.socket() as s:  # every address can be bound
        s.bind((addrs[0], 0))


def test_lane_base_is_abstract() -> None:
    lane = Lane("x")
    with pytest.raises(NotImplementedError):
        lane.send(b"")


async def test_a_flood_of_silent_connections_is_bounded() -> None:
    from peer.lanes import MAX_HANDSHAKES

    got = Collect()
    lanes = TcpLanes(KEY, got)
    ((ip, port),) = await lanes.listen([own_address()])
    silent = [await asyncio.open_connection(ip, port) for _ in range(MAX_HANDSHAKES)]
    try:
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection(ip, port)
        async with asyncio.timeout(2.0):  # refused at once, not after the 5 s proof timeout
            assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        assert lanes.rejected == 1
    finally:
        for _, w in silent:
            w.close()
            await w.wait_closed()
        await lanes.close()
