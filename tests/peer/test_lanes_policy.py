"""The sender's path choice (docs/protocol.md §10.2) with scripted lanes and a scripted
clock: it measures, probes the other lanes, keeps the faster one, and marks every move."""

from __future__ import annotations

import itertools

import pytest

from peer import lanes
from peer.lanes import Lane, SenderLanes
from peer.proto.paths import MarkerKind, parse_marker


class Scripted(Lane):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        if data is not PAYLOAD:
            self.sent.append(data)  # markers only: the test looks at those

    async def drain(self) -> None:
        return None

    async def flush_and_close(self, within: float) -> None:
        return None

    async def close(self) -> None:
        self._die()


PAYLOAD = b"\x01" + bytes(65535)


def drive(mux: SenderLanes, rates: dict[str, float], seconds: float, t0: float = 0.0) -> float:
    """Send 64 KiB records for ``seconds`` of scripted time, each lane at its rate."""
    t = t0
    while t < t0 + seconds:
        lane = mux.current
        assert lane is not None
        mux.send(PAYLOAD)
        t += 65536 / rates[lane.name]
        mux._tick(t)
    return t


def markers(lane: Scripted) -> list[tuple[str, int]]:
    out = []
    for m in lane.sent:
        mk = parse_marker(m)
        if mk is not None:
            out.append((mk.kind.name, mk.gen))
    return out


def test_probes_the_slower_lane_and_goes_back() -> None:
    moves: list[tuple[str, str]] = []
    mux = SenderLanes(on_switch=lambda a, b: moves.append((a, b)))
    fast, slow = Scripted("tcp"), Scripted("direct")
    mux.add(fast)
    mux.add(slow)
    assert mux.current is fast and mux.via == "tcp"
    drive(mux, {"tcp": 200e6, "direct": 20e6}, 10.0)
    # probed right after the first measurement; ten times slower (hopeless): not again
    # before REPROBE_SECONDS
    assert moves == [("tcp", "direct"), ("direct", "tcp")]
    assert mux.current is fast
    drive(mux, {"tcp": 200e6, "direct": 20e6}, 15.0, 10.0)
    assert len(moves) == 4
    paths = dict(mux.paths)
    assert paths["tcp"] > 10 * paths["direct"] > 0
    # each use of a lane is framed: START(g) ... END(g), g counting up across lanes
    assert markers(fast)[:3] == [("START", 0), ("END", 0), ("START", 2)]
    assert markers(slow)[:2] == [("START", 1), ("END", 1)]


def test_moves_to_a_faster_lane_that_arrives_later() -> None:
    mux = SenderLanes()
    dc = Scripted("direct")
    mux.add(dc)
    t = drive(mux, {"direct": 20e6, "tcp": 200e6}, 2.0)
    tcp = Scripted("tcp")
    mux.add(tcp)
    drive(mux, {"direct": 20e6, "tcp": 200e6}, 30.0, t)
    assert mux.current is tcp
    assert mux.switches[0] == ("direct", "tcp")
    assert ("tcp", "direct") in mux.switches  # the loser is checked again, then left alone
    assert dict(mux.paths)["tcp"] > dict(mux.paths)["direct"]


def test_a_lane_only_slightly_faster_does_not_take_over() -> None:
    mux = SenderLanes()
    a, b = Scripted("pipe"), Scripted("tcp")
    mux.add(a)
    mux.add(b)
    drive(mux, {"pipe": 100e6, "tcp": 120e6}, 5.0)  # 1.2x < SWITCH_RATIO
    assert mux.current is a
    # a close loser is checked again after RECHECK_SECONDS (3 s), not 20 s
    assert mux.switches[:4] == [("pipe", "tcp"), ("tcp", "pipe")] * 2


def test_a_slower_loser_waits_the_full_reprobe_interval() -> None:
    mux = SenderLanes()
    tcp, pipe = Scripted("tcp"), Scripted("pipe")
    mux.add(tcp)
    mux.add(pipe)
    drive(mux, {"tcp": 120e6, "pipe": 90e6}, 15.0)  # slower, not hopeless (> half)
    assert mux.current is tcp
    # probed once after the warm-up, then not again within REPROBE_SECONDS
    assert mux.switches == [("tcp", "pipe"), ("pipe", "tcp")]
    drive(mux, {"tcp": 120e6, "pipe": 90e6}, 10.0, 15.0)
    assert mux.switches[2:] == [("tcp", "pipe"), ("pipe", "tcp")]  # after 20 s: once more


def test_one_slow_window_does_not_hand_the_transfer_to_a_slower_lane() -> None:
    mux = SenderLanes()
    tcp, pipe = Scripted("tcp"), Scripted("pipe")
    mux.add(tcp)
    mux.add(pipe)
    t = drive(mux, {"tcp": 120e6, "pipe": 100e6}, 1.0)  # warm-up, measured, pipe probed
    assert mux.switches == [("tcp", "pipe"), ("pipe", "tcp")]
    t = drive(mux, {"tcp": 120e6, "pipe": 100e6}, lanes.RECHECK_SECONDS, t)
    # one slow window: the pipe's last rate beats it by SWITCH_RATIO, the window before not
    t = drive(mux, {"tcp": 60e6, "pipe": 100e6}, 0.3, t)
    drive(mux, {"tcp": 120e6, "pipe": 100e6}, 10.0, t)
    assert mux.current is tcp
    assert mux.switches == [("tcp", "pipe"), ("pipe", "tcp")]


def test_the_periodic_probe_of_a_losing_lane_backs_off() -> None:
    probes: list[float] = []
    clock = [0.0]

    def moved(old: str, new: str) -> None:
        if new == "pipe":
            probes.append(clock[0])

    mux = SenderLanes(on_switch=moved)
    tcp, pipe = Scripted("tcp"), Scripted("pipe")
    mux.add(tcp)
    mux.add(pipe)
    t = 0.0
    while t < 400.0:  # in 0.1 s steps: each switch is timed to the step
        t = drive(mux, {"tcp": 120e6, "pipe": 90e6}, 0.1, t)
        clock[0] = t
    gaps = [round(b - a) for a, b in itertools.pairwise(probes)]
    assert gaps == [20, 40, 80, 160, 160][: len(gaps)] and len(gaps) >= 4


class Stalling(Scripted):
    """A lane whose drain blocks (a collapsed data channel)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.probed: list[bool] = []

    async def drain(self) -> None:
        import asyncio

        await asyncio.sleep(3600)

    def probing(self, on: bool) -> None:
        self.probed.append(on)


async def test_a_probe_that_stalls_is_given_up_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanes, "PROBE_STALL", 0.05)
    mux = SenderLanes()
    fast, stuck = Scripted("tcp"), Stalling("direct")
    mux.add(fast)
    mux.add(stuck)
    drive(mux, {"tcp": 200e6, "direct": 1.0}, 0.6)  # warm-up, measured, then the probe starts
    assert mux.current is stuck and stuck.probed == [True]
    mux.send(PAYLOAD)
    await mux.drain()  # blocks: given up after PROBE_STALL
    assert mux.current is fast
    assert stuck.probed[0] and not stuck.probed[-1]  # a small queue only while probed
    assert mux._meters[stuck].losses == 2  # next probe only after REPROBE_SECONDS


async def test_only_one_tcp_lane_and_dead_lanes_are_not_used() -> None:
    mux = SenderLanes()
    first, second = Scripted("tcp"), Scripted("tcp")
    mux.add(first)
    mux.add(second)
    dead = Scripted("pipe")
    dead.dead = True
    mux.add(dead)
    assert mux.lanes == [first]
    mux.move_to(first)  # already there: no marker
    assert markers(first) == [("START", 0)]


def test_no_lane_means_peer_gone() -> None:
    from peer.errors import PeerGone

    mux = SenderLanes()
    assert mux.via == "none"
    with pytest.raises(PeerGone):
        mux.send(b"\x01")


def test_thresholds_are_the_documented_ones() -> None:
    assert (lanes.PROBE_SECONDS, lanes.PROBE_BYTES, lanes.SWITCH_RATIO) == (1.5, 16 << 20, 1.3)
    assert (lanes.REPROBE_SECONDS, lanes.RECHECK_SECONDS, lanes.MIN_PROBE_SECONDS) == (
        20.0,
        3.0,
        0.25,
    )
    assert int(MarkerKind.START) == 1


def _tcp_then_dc() -> tuple[SenderLanes, Scripted, Scripted, list[tuple[str, str]]]:
    """A TCP lane carrying the transfer and a data channel with its real ceiling."""
    moves: list[tuple[str, str]] = []
    mux = SenderLanes(on_switch=lambda a, b: moves.append((a, b)))
    tcp, dc = Scripted("tcp"), Scripted("direct")
    dc.ceiling = lanes.DC_CEILING
    mux.add(tcp)
    mux.add(dc)
    return mux, tcp, dc, moves


def test_a_data_channel_is_not_probed_while_the_lane_is_far_above_its_ceiling() -> None:
    mux, _, _, moves = _tcp_then_dc()
    fast = lanes.DC_CEILING / lanes.SWITCH_RATIO * 1.1
    t = drive(mux, {"tcp": fast, "direct": 20e6}, 30.0)
    assert moves == []  # it could not win even at its ceiling
    # the TCP lane slows down (a congested link): the data channel may now win
    before = dict(mux.paths)
    drive(mux, {"tcp": 10e6, "direct": 20e6}, 30.0, t)
    assert moves[0] == ("tcp", "direct")
    after = dict(mux.paths)
    # twice as fast: it carries most of the rest (the TCP lane is still probed now and then)
    assert after["direct"] - before.get("direct", 0) > 2 * (after["tcp"] - before["tcp"])


def test_the_first_measurement_is_a_warm_up() -> None:
    mux, tcp, _, moves = _tcp_then_dc()
    # slow start: a rate that would make the data channel worth a probe ...
    t = drive(mux, {"tcp": 20e6, "direct": 20e6}, lanes.MIN_PROBE_SECONDS + 0.01)
    # ... then the lane's real rate, far above the data channel's ceiling
    drive(mux, {"tcp": 200e6, "direct": 20e6}, 10.0, t)
    assert moves == []
    assert mux._meters[tcp].rate * lanes.SWITCH_RATIO > lanes.DC_CEILING
