"""NAT traversal for real: CLI peers in network namespaces behind nftables NATs, coturn and
`scanbeam serve` on the public segment, every packet between segments through wanemu.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import sha_tree
from tests.net.conftest import transfer
from tests.netlab.lab import Lab, Wan

WAN = Wan(rtt_ms=20)


def _delivered(study: Path, out: Path) -> None:
    got = sha_tree(out / study.name)
    assert got == sha_tree(study), "received files differ from the sent ones"
    assert len(got) > 5


def test_direct_across_endpoint_independent_nats(study: Path, tmp_path: Path) -> None:
    with Lab(nat_a="eim", nat_b="eim", wan=WAN) as lab:
        secret = lab.start_coturn()
        url = lab.start_serve(turn=True, turn_secret=secret)
        out = lab.tmp / "out"
        sender, receiver = transfer(lab, url, study, out, ["--no-relay"])
        assert receiver.proc.returncode == 0, receiver.stderr
        assert sender.proc.returncode == 0, sender.stderr
        # server-reflexive candidates through both NATs: no relay candidate in the pair
        assert sender.event("connected")["via"] == "direct"
        assert sender.event("done")["via"] == "direct"
        assert receiver.event("done")["via"] == "direct"
        _delivered(study, out)


def test_turn_across_a_symmetric_nat(study: Path) -> None:
    with Lab(nat_a="eim", nat_b="symmetric", wan=WAN) as lab:
        secret = lab.start_coturn()
        url = lab.start_serve(turn=True, turn_secret=secret)
        out = lab.tmp / "out"
        sender, receiver = transfer(lab, url, study, out, ["--no-relay"])
        assert receiver.proc.returncode == 0, receiver.stderr
        assert sender.event("done")["via"] == "turn"
        assert receiver.event("done")["via"] == "turn"
        _delivered(study, out)


def test_symmetric_nat_without_turn_finds_no_direct_path(study: Path) -> None:
    """The control for the test above: STUN alone cannot cross this NAT (it is symmetric).
    The relay pipe is turned off: this is about the peer-to-peer paths."""
    with Lab(nat_a="eim", nat_b="symmetric", wan=WAN) as lab:
        lab.start_coturn()
        url = lab.start_serve(extra=["--stun-url", "stun:203.0.113.10:3478"])
        out = lab.tmp / "out"
        sender, receiver = transfer(
            lab, url, study, out, ["--no-relay", "--no-pipe"], SCANBEAM_CONNECT_TIMEOUT="8"
        )
        assert sender.proc.returncode == 4, sender.stdout
        assert receiver.proc.returncode != 0
        assert not [e for e in receiver.events if e["event"] == "done"]
        assert sender.event("error")["code"] == "no-path"
        assert not (out / study.name).exists() or not any((out / study.name).rglob("*.dcm"))


def test_relay_when_udp_is_blocked_entirely(study: Path) -> None:
    """No UDP at all (so no STUN, no TURN over UDP, no data channel): the study streams
    through the server's relay pipe over TCP; without the pipe, it is uploaded to the
    store-and-forward relay and the receiver downloads it."""
    with Lab(nat_a="eim", nat_b="eim", wan=WAN) as lab:
        secret = lab.start_coturn()
        url = lab.start_serve(turn=True, turn_secret=secret)
        lab.block_udp("a")
        out = lab.tmp / "out"
        sender, receiver = transfer(lab, url, study, out, SCANBEAM_CONNECT_TIMEOUT="8")
        assert receiver.proc.returncode == 0, receiver.stderr
        assert sender.event("connected")["via"] == "pipe"
        for peer in (sender, receiver):
            done = peer.event("done")
            assert done["via"] == "pipe"
            assert [p["via"] for p in done["paths"]] == ["pipe"]
        _delivered(study, out)

        out2 = lab.tmp / "out2"
        sender, receiver = transfer(
            lab, url, study, out2, ["--no-pipe"], SCANBEAM_CONNECT_TIMEOUT="8"
        )
        assert receiver.proc.returncode == 0, receiver.stderr
        # no path at all: the sender uploaded, the waiting receiver got the link and downloaded
        assert not [e for e in sender.events if e["event"] == "connected"], sender.events
        assert receiver.event("done")["via"] == "relay"
        _delivered(study, out2)
