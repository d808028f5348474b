"""The WAN emulator really delays, jitters, drops and limits, for ICMP, UDP and TCP alike
(measured against the configured values, with tolerances for a shared 2-core machine)."""

from __future__ import annotations

import json
import re
import statistics
import sys

from tests.netlab.lab import PUB_IP, Lab, Wan

TCPCOPY = "tests/netlab/tcpcopy.py"
PROBE = "tests/netlab/probe.py"


_CONNECT_TIME = (
    "import socket, time; t = time.monotonic(); "
    f"s = socket.create_connection(('{PUB_IP}', 9001), timeout=10); "
    "print((time.monotonic() - t) * 1000); s.close()"
)


def _ping(lab: Lab, count: int, interval: float = 0.05) -> tuple[float, float, int]:
    """(avg RTT ms, mdev ms, packets lost) from host a to pub."""
    out = lab.sh(
        "a", "ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "2", PUB_IP,
        check=False, timeout=count * interval + 30,
    )  # fmt: skip
    sent, received = map(int, re.findall(r"(\d+) packets transmitted, (\d+) received", out)[0])
    stats = re.search(r"= [\d.]+/([\d.]+)/[\d.]+/([\d.]+) ms", out)
    assert stats is not None, out
    return float(stats.group(1)), float(stats.group(2)), sent - received


def _tcp_rate(lab: Lab, nbytes: int) -> float:
    """Bytes per second of a plain TCP copy from a (behind its NAT) to pub."""
    recv = lab.popen("pub", [sys.executable, TCPCOPY, "recv", "--host", PUB_IP, "--port", "9000"])
    assert recv.stdout is not None
    assert "listening" in recv.stdout.readline()
    argv = [sys.executable, TCPCOPY, "send", "--host", PUB_IP, "--port", "9000"]
    send = lab.popen("a", [*argv, "--bytes", str(nbytes)])
    result = json.loads(recv.stdout.readline())
    assert send.wait(60) == 0
    assert result["bytes"] == nbytes
    return float(result["bytes"] / result["seconds"])


def _udp_rtts(lab: Lab, count: int) -> tuple[list[float], int]:
    echo = lab.popen("pub", [sys.executable, PROBE, "echo", "--host", PUB_IP, "--port", "9100"])
    assert echo.stdout is not None
    assert "listening" in echo.stdout.readline()
    out = lab.sh(
        "a", sys.executable, PROBE, "rtt", "--host", PUB_IP, "--port", "9100",
        "--count", str(count), timeout=120,
    )  # fmt: skip
    result = json.loads(out)
    return result["rtts_ms"], result["lost"]


def test_delay_applies_to_icmp_udp_and_tcp_and_changes_at_runtime() -> None:
    with Lab(wan=Wan(rtt_ms=60)) as lab:
        avg, _, lost = _ping(lab, 10)
        assert lost == 0
        assert 59.5 <= avg <= 70, avg
        rtts, lost = _udp_rtts(lab, 10)
        assert lost == 0
        assert 59.5 <= statistics.median(rtts) <= 72, rtts
        # TCP: connect() returns after one round trip (SYN, SYN-ACK)
        recv = lab.popen(
            "pub", [sys.executable, TCPCOPY, "recv", "--host", PUB_IP, "--port", "9001"]
        )
        assert recv.stdout is not None and "listening" in recv.stdout.readline()
        connect_ms = float(lab.sh("a", sys.executable, "-c", _CONNECT_TIME))
        assert 59.5 <= connect_ms <= 75, connect_ms
        lab.set_wan(Wan(rtt_ms=150))
        avg, _, lost = _ping(lab, 5)
        assert 149.5 <= avg <= 165, avg


def test_jitter_spreads_the_delay_without_reordering_icmp() -> None:
    with Lab(wan=Wan(rtt_ms=40, jitter_ms=10)) as lab:
        avg, mdev, _ = _ping(lab, 40, interval=0.1)
        # uniform ±10 ms each way: mean 40 ms, standard deviation about 8 ms
        assert 35 <= avg <= 48, avg
        assert 3 <= mdev <= 12, mdev


def test_loss_drops_the_configured_share_each_way() -> None:
    with Lab(wan=Wan(loss=0.10)) as lab:
        count = 300
        _, _, lost = _ping(lab, count, interval=0.01)
        # a round trip survives with 0.9 * 0.9 = 0.81: expect 57 lost, binomial sd ~6.8
        assert 30 <= lost <= 85, lost
        stats = json.loads(lab.emu_stats())
        assert stats["loss"] >= lost  # every loss was wanemu's


def test_rate_limits_tcp_throughput() -> None:
    for mbit in (20, 80, 400):
        with Lab(wan=Wan(rtt_ms=10, rate_mbit=mbit)) as lab:
            rate = _tcp_rate(lab, mbit * 1_000_000 // 8 * 3)  # about 3 s of data
            wire = mbit * 1_000_000 / 8
            # payload is below the wire rate (IP/TCP headers, slow start); never above it
            assert 0.70 * wire <= rate <= 1.0 * wire, (mbit, rate / wire)
