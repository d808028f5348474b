"""Bad input and failures, each with its one-line message and exit code (README)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from peer.proto.wordlist import ODD

from ..conftest import (
    ROOT,
    Peer,
    Server,
    cli_env,
    receive,
    sha_tree,
    spawn,
    start_send,
    start_server,
    stop_server,
    timeout,
)


def _error_line(peer: Peer) -> str:
    lines = [ln for ln in peer.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in peer.stderr
    return lines[-1] if lines else ""


def _src(tmp_path: Path, size: int = 200_000, name: str = "scan.bin") -> Path:
    p = tmp_path / "src" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(os.urandom(size))
    return p


def test_wrong_code_fails_both_sides_and_burns_the_code(server: Server, tmp_path: Path) -> None:
    sender, code = start_send(server, [_src(tmp_path)])
    nameplate, even, odd = code.split("-")
    wrong = f"{nameplate}-{even}-{next(w for w in ODD if w != odd)}"
    rcv = spawn(["receive", wrong, "--server", server.url, "-o", str(tmp_path / "o"), "--yes"])
    assert rcv.finish() == 3
    assert _error_line(rcv) == (
        "scanbeam: error: The code was wrong: the two sides did not type the same code. "
        "The code is now used up; start a new send for a fresh code."
    )
    assert sender.finish() == 3
    assert sender.event("error")["code"] == "wrong-code"
    again = spawn(["receive", code, "--server", server.url, "-o", str(tmp_path / "o"), "--yes"])
    assert again.finish() == 3
    assert _error_line(again) == (
        "scanbeam: error: This code is unknown, expired or already used. "
        "Ask the sender for a new one."
    )
    assert not (tmp_path / "o" / "scan.bin").exists()


def test_unknown_and_malformed_codes(server: Server, tmp_path: Path) -> None:
    unknown = spawn(["receive", "98765-aardvark-adroitness", "--server", server.url, "--yes"])
    assert unknown.finish() == 3
    assert "unknown, expired or already used" in _error_line(unknown)
    bad = spawn(["receive", "hello world", "--server", server.url, "--yes"])
    assert bad.finish() == 3
    assert _error_line(bad).startswith("scanbeam: error: This is not a ScanBeam code")


def test_unreachable_server(tmp_path: Path) -> None:
    rcv = spawn(["receive", "5-aardvark-adroitness", "--server", "http://127.0.0.1:9", "--yes"])
    assert rcv.finish(30) == 4
    assert _error_line(rcv).startswith(
        "scanbeam: error: Cannot reach the ScanBeam server at http://127.0.0.1:9."
    )
    snd = spawn(["send", str(_src(tmp_path)), "--server", "http://127.0.0.1:9", "--json"])
    assert snd.finish(30) == 4
    assert snd.event("error")["code"] == "unreachable"


def test_missing_source_file(server: Server, tmp_path: Path) -> None:
    snd = spawn(["send", str(tmp_path / "nope.dcm"), "--server", server.url])
    assert snd.finish() == 7
    assert _error_line(snd).startswith("scanbeam: error: Cannot read ")


def test_decline_without_terminal(server: Server, tmp_path: Path) -> None:
    sender, code = start_send(server, [_src(tmp_path)])
    rcv = receive(server, code, tmp_path / "o")  # no --yes, stdin is not a terminal
    assert rcv.finish() == 6
    assert rcv.event("error")["message"] == "Not accepted: no terminal to ask; add --yes to accept."
    assert sender.finish() == 6
    assert sender.event("error")["message"] == "The receiver declined the transfer."
    assert not (tmp_path / "o" / "scan.bin").exists()


def test_existing_file_is_never_overwritten(server: Server, tmp_path: Path) -> None:
    src = _src(tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    (out / "scan.bin").write_bytes(b"precious")
    sender, code = start_send(server, [src])
    rcv = receive(server, code, out, "--yes")
    assert rcv.finish() == 7
    assert rcv.event("error")["code"] == "exists"
    assert (out / "scan.bin").read_bytes() == b"precious"
    assert sender.finish() == 9
    assert sender.event("error")["message"].startswith("The other side stopped: A file with")


@pytest.mark.parametrize(
    "hostile",
    [
        "../escape.bin",
        "/tmp/abs.bin",
        "a\x1b[31mred.bin",
        "CON",
        "dir\\..\\x.bin",
        "x\u202egpj.exe",
    ],
)
def test_hostile_names_are_refused(server: Server, tmp_path: Path, hostile: str) -> None:
    src = _src(tmp_path)
    evil = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests/e2e/evil_sender.py"),
            f"name:{hostile}",
            server.url,
            str(src),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    peer = Peer(evil)
    code = peer.next_event("code")["code"]
    out = tmp_path / "deep" / "o"
    rcv = receive(server, code, out, "--yes")
    assert rcv.finish() == 8
    msg = rcv.event("error")["message"]
    assert msg.startswith("Refused the offer: the name ")
    assert "\x1b" not in msg and "\u202e" not in msg
    peer.finish()
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "src" not in p.parts]
    assert written == []


def test_tampered_chunk_is_detected_and_not_saved(server: Server, tmp_path: Path) -> None:
    src = _src(tmp_path, 1_000_000)
    evil = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/e2e/evil_sender.py"), "tamper", server.url, str(src)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    peer = Peer(evil)
    code = peer.next_event("code")["code"]
    rcv = receive(server, code, tmp_path / "o", "--yes")
    assert rcv.finish() == 5
    assert rcv.event("error")["code"] == "integrity"
    assert not (tmp_path / "o" / "scan.bin").exists()
    assert peer.finish() == 9


# The data channel only (protocol v2's TCP lane would finish these files before the test
# can interrupt them): these tests are about kills, resumes and full disks, not paths.
DC = ("--no-tcp-lane", "--no-pipe")


def _kill_after(peer: Peer, victim: Peer, min_bytes: int) -> None:
    while True:
        ev = peer.next_event("progress", 60)
        if ev["bytes"] >= min_bytes:
            victim.proc.kill()
            return


def test_sender_killed_mid_transfer_then_resume(server: Server, tmp_path: Path) -> None:
    src = _src(tmp_path, 60_000_000, "big.bin")
    out = tmp_path / "o"
    sender, code = start_send(server, [src], *DC)
    rcv = receive(server, code, out, "--yes", "--reconnect", "0", *DC)  # not wait for the dead
    _kill_after(rcv, sender, 8_000_000)
    sender.finish()
    t0 = time.monotonic()
    assert rcv.finish(90) == 4
    assert time.monotonic() - t0 < timeout(60)
    assert rcv.event("error")["code"] == "peer-gone"
    assert "Verified data was kept" in rcv.event("error")["message"]
    assert not (out / "big.bin").exists()
    # the same command again resumes
    sender2, code2 = start_send(server, [src])
    rcv2 = receive(server, code2, out, "--yes")
    assert rcv2.finish() == 0, rcv2.stderr
    assert sender2.finish() == 0
    held = rcv2.event("offer")["held"]
    assert held >= 8_000_000
    assert sender2.event("done")["sent_bytes"] == src.stat().st_size - held
    assert (out / "big.bin").read_bytes() == src.read_bytes()
    assert not (out / ".scanbeam-partial").exists()


def test_receiver_killed_then_resume(server: Server, tmp_path: Path) -> None:
    src = _src(tmp_path, 60_000_000, "big.bin")
    out = tmp_path / "o"
    sender, code = start_send(server, [src], "--reconnect", "0", *DC)  # not wait for the dead
    rcv = receive(server, code, out, "--yes", *DC)
    _kill_after(rcv, rcv, 40_000_000)
    rcv.finish()
    assert sender.finish(90) == 4
    assert sender.event("error")["code"] in ("peer-gone", "timeout")
    sender2, code2 = start_send(server, [src])
    rcv2 = receive(server, code2, out, "--yes")
    assert rcv2.finish() == 0, rcv2.stderr
    assert sender2.finish() == 0
    assert rcv2.event("offer")["held"] >= 16 * 1024 * 1024  # at least one checkpoint survived
    assert (out / "big.bin").read_bytes() == src.read_bytes()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, (
        f"cannot mount a tmpfs for the full-disk test (needs root): {res.stderr}"
    )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_not_enough_space_is_refused_before_accepting(
    server: Server, tmp_path: Path, small_disk: Path
) -> None:
    src = _src(tmp_path, 40_000_000)
    sender, code = start_send(server, [src])
    rcv = receive(server, code, small_disk / "o", "--yes")
    assert rcv.finish() == 7
    assert rcv.event("error")["message"].startswith(
        f"Not enough free space in '{small_disk / 'o'}'"
    )
    assert sender.finish() == 9
    assert list((small_disk / "o").glob("*")) == []


def test_disk_fills_during_transfer_then_resume(
    server: Server, tmp_path: Path, small_disk: Path
) -> None:
    src = _src(tmp_path, 25_000_000, "study.bin")
    out = small_disk / "o"
    sender, code = start_send(server, [src], *DC)
    rcv = receive(server, code, out, "--yes", *DC)
    rcv.next_event("progress")
    # something else fills the disk while we receive
    filler = small_disk / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass
    assert rcv.finish() == 7
    assert rcv.event("error")["code"] == "disk-full"
    assert "Verified data was kept" in rcv.event("error")["message"]
    assert sender.finish() == 9
    assert not (out / "study.bin").exists()
    filler.unlink()
    sender2, code2 = start_send(server, [src])
    rcv2 = receive(server, code2, out, "--yes")
    assert rcv2.finish() == 0, rcv2.stderr
    assert sender2.finish() == 0
    assert (out / "study.bin").read_bytes() == src.read_bytes()
    assert sha_tree(out) == {"study.bin": sha_tree(src.parent)["study.bin"]}


def test_code_expires_when_nobody_joins(tmp_path: Path) -> None:
    srv = start_server(SCANBEAM_NAMEPLATE_TTL="1.5", SCANBEAM_PRUNE_INTERVAL="0.2")
    try:
        sender, code = start_send(srv, [_src(tmp_path)])
        assert sender.finish(30) == 3
        assert sender.event("error")["message"] == (
            "Nobody used the code before it expired. Start a new send."
        )
        late = spawn(["receive", code, "--server", srv.url, "--yes"])
        assert late.finish() == 3
        assert "unknown, expired or already used" in _error_line(late)
    finally:
        stop_server(srv)


def test_ctrl_c_keeps_verified_data_and_resumes(server: Server, tmp_path: Path) -> None:
    src = _src(tmp_path, 150_000_000, "big.bin")
    out = tmp_path / "o"
    sender, code = start_send(server, [src], *DC)
    rcv = receive(server, code, out, "--yes", *DC)
    while rcv.next_event("progress", 60)["bytes"] < 10_000_000:
        pass
    rcv.proc.send_signal(signal.SIGINT)
    assert rcv.finish() == 6
    assert rcv.event("error")["message"] == "Cancelled. Verified data was kept for a resume."
    assert "Traceback" not in rcv.stderr
    assert sender.finish(90) in (4, 9)
    assert not (out / "big.bin").exists()
    sender2, code2 = start_send(server, [src])
    rcv2 = receive(server, code2, out, "--yes")
    assert rcv2.finish() == 0, rcv2.stderr
    assert sender2.finish() == 0
    assert rcv2.event("offer")["held"] >= 10_000_000 - 65472
    assert (out / "big.bin").read_bytes() == src.read_bytes()
