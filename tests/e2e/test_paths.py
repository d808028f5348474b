"""End to end, protocol v2 paths (docs/protocol.md §10): real `scanbeam serve`, `send` and
`receive` processes on this machine's own address.

- the session measures its paths and carries the data on the fastest (the TCP lane here),
  and `done` reports every path used with its share;
- the relay pipe carries a transfer when no direct path can open;
- an outage mid-transfer (the server killed and restarted; the TCP lane's socket killed)
  resumes by itself, and nothing verified is sent twice.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import (
    Peer,
    Server,
    cli_env,
    receive,
    sha_tree,
    spawn,
    start_send,
    start_server,
    stop_server,
)


def _src(tmp_path: Path, size: int) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big.bin", "wb") as fh:
        for _ in range(size // (1 << 20)):
            fh.write(os.urandom(1 << 20))
    return src


def _names(done: dict[str, object]) -> list[str]:
    paths = done["paths"]
    assert isinstance(paths, list)
    return [p["via"] for p in paths]


def test_moves_to_the_fastest_path_and_reports_every_path(server: Server, tmp_path: Path) -> None:
    src = _src(tmp_path, 200 << 20)
    sender, code = start_send(server, [src], "--no-pipe")
    rcv = receive(server, code, tmp_path / "out", "--yes", "--no-pipe")
    assert rcv.finish() == 0, rcv.stderr
    assert sender.finish() == 0, sender.stderr
    assert sha_tree(tmp_path / "out" / "src") == sha_tree(src)
    sent, got = sender.event("done"), rcv.event("done")
    # the TCP lane, far faster here, carried (nearly) all of it: the data channel carries
    # only until the TCP lane is ready, and is not probed while the TCP lane is beyond what
    # a data channel reaches (docs/protocol.md §10.2)
    moves = [e for e in sender.events if e["event"] == "moved"]
    for done in (sent, got):
        shares = {p["via"]: p["bytes"] for p in done["paths"]}
        assert set(shares) <= {"tcp", "direct"}, done
        assert shares["tcp"] > 0.9 * sum(shares.values()), done
        assert sum(shares.values()) >= 200 << 20  # sealed records: a little overhead
        assert done["via"] == "direct" and done["rounds"] == 0
        # every lane a move names is reported with its share
        assert {m["old"] for m in moves} | {m["new"] for m in moves} <= set(shares)
    assert {e["via"] for e in sender.events if e["event"] == "progress"} <= {"tcp", "direct"}
    assert "tcp" in {e["via"] for e in rcv.events if e["event"] == "progress"}


def test_no_relay_pipe_is_opened_beside_a_tcp_lane(server: Server, tmp_path: Path) -> None:
    """The pipe is for when no TCP lane comes (docs/protocol.md §10.1): beside one it could
    only cost time and the server's bandwidth."""
    src = _src(tmp_path, 40 << 20)
    sender = spawn(["-v", "send", str(src), "--server", server.url, "--json"])
    code = sender.next_event("code")["code"]
    out = tmp_path / "out"
    rcv = spawn(["-v", "receive", code, "--server", server.url, "-o", str(out), "--json", "--yes"])
    assert rcv.finish() == 0, rcv.stderr
    assert sender.finish() == 0, sender.stderr
    assert sha_tree(out / "src") == sha_tree(src)
    for peer in (sender, rcv):
        assert _names(peer.event("done")) == ["tcp"]
        assert "lane ready: tcp" in peer.stderr
        assert "lane ready: pipe" not in peer.stderr


def test_the_relay_pipe_carries_when_no_direct_path_opens(server: Server, tmp_path: Path) -> None:
    """--turn-only without a TURN server: ICE cannot connect and no TCP lane is offered."""
    src = _src(tmp_path, 20 << 20)
    sender, code = start_send(server, [src], "--turn-only", "--no-tcp-lane")
    rcv = receive(server, code, tmp_path / "out", "--yes", "--turn-only")
    assert rcv.finish() == 0, rcv.stderr
    assert sender.finish() == 0, sender.stderr
    assert sha_tree(tmp_path / "out" / "src") == sha_tree(src)
    for peer in (sender, rcv):
        done = peer.event("done")
        assert done["via"] == "pipe" and _names(done) == ["pipe"]
        assert peer.event("connected")["via"] == "pipe"
    assert "fallback" not in {e["event"] for e in sender.events}  # no store-and-forward


def _progress_until(peer: Peer, min_bytes: int, via: str | None = None) -> None:
    while True:
        ev = peer.next_event("progress", 60)
        if ev["bytes"] >= min_bytes and (via is None or ev["via"] == via):
            return


def test_server_outage_mid_transfer_resumes_by_itself(tmp_path: Path) -> None:
    """The transfer streams through the relay pipe; the server dies and comes back 3 s
    later on the same port: both sides meet again at the rendezvous and finish."""
    srv = start_server()
    port = srv.url.rsplit(":", 1)[1]
    src = _src(tmp_path, 300 << 20)
    try:
        sender, code = start_send(srv, [src], "--turn-only")
        rcv = receive(srv, code, tmp_path / "out", "--yes", "--turn-only")
        _progress_until(rcv, 20 << 20)
        srv.proc.kill()
        srv.proc.wait(10)
        rcv.next_event("reconnecting", 30)
        time.sleep(3)
        stop_server(srv)
        srv = start_server(["--port", port])
        assert rcv.finish(180) == 0, rcv.stderr
        assert sender.finish(60) == 0, sender.stderr
    finally:
        stop_server(srv)
    assert sha_tree(tmp_path / "out" / "src") == sha_tree(src)
    offers = [e for e in rcv.events if e["event"] == "offer"]
    assert len(offers) == 2 and offers[1]["held"] >= 16 << 20  # verified data was kept
    for peer in (sender, rcv):
        done = peer.event("done")
        assert done["rounds"] == 1 and _names(done) == ["pipe"]
        assert [e["event"] for e in peer.events].count("reconnecting") == 1
    assert sender.event("done")["sent_bytes"] == 300 << 20


def _kill_tcp_lanes(pid: int) -> int:
    """Kill (ss -K) the established TCP connections of process ``pid`` to this machine's
    non-loopback address: its TCP lanes (signaling and pipe use 127.0.0.1)."""
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True)
    killed = 0
    for line in out.stdout.splitlines():
        if f"pid={pid}," not in line:
            continue
        fields = line.split()
        local, peer = fields[2], fields[3]
        if local.startswith(("127.", "[::ffff:127")) or peer.startswith("127."):
            continue
        (lip, lport), (pip, pport) = (a.rsplit(":", 1) for a in (local, peer))
        res = subprocess.run(
            ["ss", "-K", "src", lip, "sport", "=", lport, "dst", pip, "dport", "=", pport],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        killed += 1
    return killed


def test_tcp_lane_killed_mid_transfer_resumes_by_itself(server: Server, tmp_path: Path) -> None:
    """The TCP lane's sockets are reset (ss -K) while it carries the data. Usually the lane
    was carrying the transfer: both sides meet again (a new round) and continue from what
    was verified. If the sender was probing the data channel at that instant, the transfer
    simply stays there. Either way it ends by itself, verified."""
    src = _src(tmp_path, 600 << 20)
    sender, code = start_send(server, [src], "--no-pipe")
    rcv = receive(server, code, tmp_path / "out", "--yes", "--no-pipe")
    _progress_until(sender, 30 << 20, via="tcp")
    assert _kill_tcp_lanes(sender.proc.pid) >= 1
    assert rcv.finish(300) == 0, rcv.stderr
    assert sender.finish(60) == 0, sender.stderr
    assert sha_tree(tmp_path / "out" / "src") == sha_tree(src)
    done = rcv.event("done")
    assert sender.event("done")["rounds"] == done["rounds"] <= 1
    if done["rounds"] == 1:
        for peer in (sender, rcv):
            assert peer.event("reconnecting")["reason"] in ("peer-gone", "timeout")
        offers = [e for e in rcv.events if e["event"] == "offer"]
        assert len(offers) == 2 and offers[1]["held"] > 0
    else:  # the rest went over the data channel
        assert {p["via"] for p in done["paths"]} == {"tcp", "direct"}
        assert "reconnecting" not in {e["event"] for e in rcv.events}


@pytest.mark.parametrize("flag", ["--no-tcp-lane", "--no-pipe", "--reconnect"])
def test_path_flags_are_documented(flag: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "peer.cli", "send", "--help"],
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert re.search(re.escape(flag) + r"\b", out.stdout), out.stdout
