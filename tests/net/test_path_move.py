"""Moving to the fastest path under emulated loss (issue 7, docs/protocol.md §10.2).

The lab is imported inside the tests: it lives on the `netlab` branch; on `paths` alone
these tests fail loudly (ModuleNotFoundError) until both are merged.

Needs the network lab (tests/netlab, branch `netlab`): two LANs behind endpoint-independent
NATs (no TCP lane can cross them), `scanbeam serve` on the public segment, and a long lossy
WAN, where aiortc's data channel collapses while TCP through the server's relay pipe keeps
going. The session must carry the study on the pipe and say so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.conftest import sha_tree


def test_path_move_under_emulated_loss(tmp_path: Path) -> None:
    from tests.net.conftest import transfer
    from tests.netlab.lab import Lab, Wan

    study = tmp_path / "scan"
    study.mkdir()
    with open(study / "series.bin", "wb") as fh:  # big enough for several measurements
        for _ in range(40):
            fh.write(os.urandom(1 << 20))
    with Lab(nat_a="eim", nat_b="eim", wan=Wan(rtt_ms=80, loss=0.01, rate_mbit=50)) as lab:
        secret = lab.start_coturn()
        url = lab.start_serve(turn=True, turn_secret=secret)
        out = lab.tmp / "out"
        sender, receiver = transfer(lab, url, study, out, ["--no-relay"], limit=300.0)
        assert receiver.proc.returncode == 0, receiver.stderr
        assert sender.proc.returncode == 0, sender.stderr
        assert sha_tree(out / study.name) == sha_tree(study)
        for peer in (sender, receiver):
            done = peer.event("done")
            shares = {p["via"]: p["bytes"] for p in done["paths"]}
            assert "tcp" not in shares  # no TCP lane across two NATs
            assert shares.get("pipe", 0) > 0.8 * sum(shares.values()), shares
            assert done["via"] == "pipe"
        # the data channel was measured too (it opened through the NATs) and lost
        assert "direct" in {p["via"] for p in sender.event("done")["paths"]}
        assert any(e["new"] == "pipe" for e in sender.events if e["event"] == "moved")


def _outage(
    tmp_path: Path, hosts: tuple[str, ...], seconds: float, wan: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send 60 MiB between two hosts behind endpoint-independent NATs; once 10 MiB arrived,
    take ``hosts``' interfaces down for ``seconds``. Both must finish by themselves with the
    study intact; returns the receiver's ``done`` event and all its events."""
    import time

    from tests.net.conftest import start_peer
    from tests.netlab.lab import Lab

    study = tmp_path / "scan"
    study.mkdir()
    with open(study / "series.bin", "wb") as fh:
        for _ in range(60):
            fh.write(os.urandom(1 << 20))
    with Lab(nat_a="eim", nat_b="eim", wan=wan) as lab:
        secret = lab.start_coturn()
        url = lab.start_serve(turn=True, turn_secret=secret)
        out = lab.tmp / "out"
        sender = start_peer(lab, "a", ["send", str(study), "--server", url, "--json", "--no-relay"])
        code = sender.next_event("code", limit=30)["code"]
        receiver = start_peer(
            lab, "b", ["receive", code, "--server", url, "-o", str(out), "--json", "--yes"]
        )
        while receiver.next_event("progress", limit=60)["bytes"] < 10 << 20:
            pass
        for host in hosts:
            lab.link(host, up=False)
        time.sleep(seconds)
        for host in hosts:
            lab.link(host, up=True)
        assert receiver.finish(limit=300) == 0, receiver.stderr
        assert sender.finish(limit=60) == 0, sender.stderr
        assert sha_tree(out / study.name) == sha_tree(study)
        done = receiver.event("done")
        assert done["bytes"] == 60 << 20
        return done, receiver.events


def test_interface_down_mid_transfer_resumes_by_itself(tmp_path: Path) -> None:
    """The receiver's interface goes down for 8 s in the middle of the transfer; the session
    carries on (or reconnects under the same pairing) and loses nothing verified."""
    from tests.netlab.lab import Wan

    done, events = _outage(tmp_path, ("b",), 8, Wan(rtt_ms=20, rate_mbit=50))
    offers = [e for e in events if e["event"] == "offer"]
    if done["rounds"]:  # it reconnected: what was verified was not sent again
        assert len(offers) == done["rounds"] + 1 and offers[-1]["held"] > 0


def test_an_outage_of_two_minutes_reconnects_and_resumes(tmp_path: Path) -> None:
    """Both hosts lose the network for 120 s mid-transfer: longer than ICE consent (~30 s)
    and the TCP lane survive, shorter than the 5-minute reconnection window. Both sides
    meet again through the server under the same pairing (a reconnection round) and the
    transfer continues from what the receiver verified (docs/protocol.md §10.3)."""
    from tests.netlab.lab import Wan

    done, events = _outage(tmp_path, ("a", "b"), 120, Wan(rtt_ms=20, rate_mbit=20))
    assert done["rounds"] >= 1  # the connection was lost and met again
    assert any(e["event"] == "reconnecting" for e in events)
    offers = [e for e in events if e["event"] == "offer"]
    assert len(offers) == done["rounds"] + 1
    assert offers[-1]["held"] >= 10 << 20  # what was verified was not sent again
