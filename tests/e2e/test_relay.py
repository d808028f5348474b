"""End to end through the relay: real `scanbeam serve`, `send` and `receive` processes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from peer.dicom.synth import write_study

from ..conftest import (
    Peer,
    Server,
    cli_env,
    receive,
    sha_tree,
    spawn,
    start_server,
    stop_server,
    timeout,
)

MARKER = "ZZMARKERQX"


def _send_relay(server: Server, paths: list[Path], *extra: str) -> Peer:
    return spawn(["send", *map(str, paths), "--server", server.url, "--json", "--relay", *extra])


def _link(peer: Peer) -> str:
    return str(peer.event("link")["url"])


@pytest.fixture
def study(tmp_path: Path) -> Path:
    root = tmp_path / "STUDY"
    write_study(
        root,
        target_bytes=3_000_000,
        series=2,
        seed=11,
        rows=128,
        cols=128,
        patient_name=f"{MARKER}^PATIENT",
    )
    (root / f"notes_{MARKER}.txt").write_text(f"private {MARKER} notes\n")
    return root


def test_no_receiver_falls_back_to_relay_then_link_downloads(
    server: Server, study: Path, tmp_path: Path
) -> None:
    sender = spawn(["send", str(study), "--server", server.url, "--json", "--wait", "1s"])
    assert sender.finish() == 0, sender.stderr
    link = _link(sender)
    assert link.startswith(server.url + "/d/") and "#" in link
    assert sender.event("link")["max_downloads"] == 1
    out = tmp_path / "out"
    rcv = receive(server, link, out, "--yes")
    assert rcv.finish() == 0, rcv.stderr
    assert rcv.event("done")["via"] == "relay"
    assert rcv.event("done")["completeness"]["status"] == "complete"
    assert sha_tree(out / "STUDY") == sha_tree(study)
    assert rcv.event("offer")["summary"]["studies"][0]["series_count"] == 2
    assert len(rcv.event("offer")["previews"]) == 2  # thumbnails travel in the drop's manifest


def test_server_disk_holds_no_plaintext(server: Server, study: Path) -> None:
    sender = _send_relay(server, [study])
    assert sender.finish() == 0, sender.stderr
    secret = _link(sender).split("#", 1)[1]
    found = []
    for p in server.data.rglob("*"):
        if MARKER in p.name or secret in p.name:
            found.append(p)
        if p.is_file():
            blob = p.read_bytes()
            if MARKER.encode() in blob or secret.encode() in blob:
                found.append(p)
    assert list(server.data.rglob("*")), "the relay stored nothing?"
    assert found == []


def test_download_limit_of_one(server: Server, study: Path, tmp_path: Path) -> None:
    sender = _send_relay(server, [study], "--max-downloads", "1")
    assert sender.finish() == 0
    link = _link(sender)
    first = receive(server, link, tmp_path / "a", "--yes")
    assert first.finish() == 0, first.stderr
    second = receive(server, link, tmp_path / "b", "--yes")
    assert second.finish() == 3
    assert second.event("error")["message"] == (
        "This link was already used the maximum number of times."
    )


def test_password_wrong_then_right(server: Server, study: Path, tmp_path: Path) -> None:
    good = tmp_path / "pw"
    good.write_text("1970-01-01\n")
    bad = tmp_path / "bad"
    bad.write_text("1970-01-02\n")
    sender = _send_relay(server, [study], "--password-file", str(good))
    assert sender.finish() == 0, sender.stderr
    assert sender.event("link")["password"] is True
    link = _link(sender)
    nopw = receive(server, link, tmp_path / "o", "--yes")
    assert nopw.finish() == 3
    assert nopw.event("error")["message"] == "A password is needed: use --password-file FILE."
    wrong = receive(server, link, tmp_path / "o", "--yes", "--password-file", str(bad))
    assert wrong.finish() == 3
    assert wrong.event("error")["message"].startswith("The password is wrong")
    right = receive(server, link, tmp_path / "o", "--yes", "--password-file", str(good))
    assert right.finish() == 0, right.stderr
    assert sha_tree(tmp_path / "o" / "STUDY") == sha_tree(study)


@pytest.fixture
def strict_server() -> Iterator[Server]:
    srv = start_server(
        SCANBEAM_RELAY_MAX_FAILURES="3",
        SCANBEAM_RELAY_SWEEP_INTERVAL="0.5",
    )
    try:
        yield srv
    finally:
        stop_server(srv)


def test_lockout_after_failed_passwords(strict_server: Server, study: Path, tmp_path: Path) -> None:
    good = tmp_path / "pw"
    good.write_text("secret horse\n")
    bad = tmp_path / "bad"
    bad.write_text("guess\n")
    sender = _send_relay(strict_server, [study], "--password-file", str(good))
    assert sender.finish() == 0
    link = _link(sender)
    for _ in range(3):
        wrong = receive(strict_server, link, tmp_path / "o", "--yes", "--password-file", str(bad))
        assert wrong.finish() == 3
    right = receive(strict_server, link, tmp_path / "o", "--yes", "--password-file", str(good))
    assert right.finish() == 3
    assert "locked" in right.event("error")["message"]
    drop_id = link.split("/d/")[1].split("#")[0]
    log = spawn(["drops", "log", drop_id, "--json"])
    assert log.finish() == 0, log.stderr
    kinds = [e["event"] for e in log.events]
    assert kinds.count("auth-failed") == 3 and "locked" in kinds


def test_expired_link_is_refused_and_deleted(
    strict_server: Server, study: Path, tmp_path: Path
) -> None:
    sender = _send_relay(strict_server, [study], "--expires", "2s")
    assert sender.finish() == 0
    link = _link(sender)
    time.sleep(2.5)
    late = receive(strict_server, link, tmp_path / "o", "--yes")
    assert late.finish() == 3
    assert late.event("error")["message"] == (
        "This link has expired; ask the sender to send the study again."
    )
    deadline = time.monotonic() + timeout(20)
    while time.monotonic() < deadline:
        blobs = [p for p in (strict_server.data / "blobs").rglob("*") if p.is_file()]
        if not blobs:
            break
        time.sleep(0.2)
    assert blobs == []


def test_concurrent_downloads_never_exceed_the_limit(
    server: Server, study: Path, tmp_path: Path
) -> None:
    sender = _send_relay(server, [study], "--max-downloads", "2")
    assert sender.finish() == 0
    link = _link(sender)
    peers = [  # four recipients on four machines (each its own local state)
        receive(
            server,
            link,
            tmp_path / f"o{i}",
            "--yes",
            env=cli_env(SCANBEAM_HOME=str(tmp_path / f"home{i}")),
        )
        for i in range(4)
    ]
    codes = [p.finish() for p in peers]
    assert codes.count(0) == 2, [p.stderr for p in peers]
    assert all(c == 3 for c in codes if c != 0)


def test_drops_list_log_delete(server: Server, study: Path, tmp_path: Path) -> None:
    sender = _send_relay(server, [study], "--max-downloads", "3")
    assert sender.finish() == 0
    link = _link(sender)
    drop_id = link.split("/d/")[1].split("#")[0]
    rcv = receive(server, link, tmp_path / "o", "--yes")
    assert rcv.finish() == 0
    listing = spawn(["drops", "--json"])
    assert listing.finish() == 0
    (row,) = [e for e in listing.events if e["id"] == drop_id]
    assert row["downloads"] == 1 and row["max_downloads"] == 3
    log = spawn(["drops", "log", drop_id, "--json"])
    assert log.finish() == 0
    kinds = [e["event"] for e in log.events]
    assert kinds[0] == "created"
    assert "download-started" in kinds and "download-completed" in kinds
    assert all(e.get("address") for e in log.events if e["event"].startswith("download"))
    delete = spawn(["drops", "delete", drop_id])
    assert delete.finish() == 0
    after = receive(server, link, tmp_path / "p", "--yes")
    assert after.finish() == 3
    assert after.event("error")["message"] == "The sender deleted this link."
    disclosures = spawn(["log", "--json"])
    assert disclosures.finish() == 0
    assert any(e["how"] == "relay" and e["to"] == f"link {drop_id}" for e in disclosures.events)


def _kill_when(peer: Peer, victim: Peer, min_bytes: int) -> None:
    while peer.next_event("progress", 60)["bytes"] < min_bytes:
        pass
    victim.proc.kill()


def test_upload_killed_and_resumed(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(150_000_000))
    sender = _send_relay(server, [src])
    _kill_when(sender, sender, 30_000_000)
    sender.finish()
    again = _send_relay(server, [src])
    assert again.finish() == 0, again.stderr
    assert again.event("link")["resumed_bytes"] >= 30_000_000
    rcv = receive(server, _link(again), tmp_path / "o", "--yes")
    assert rcv.finish() == 0, rcv.stderr
    assert (tmp_path / "o" / "big.bin").read_bytes() == src.read_bytes()


def test_download_killed_and_resumed(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(150_000_000))
    sender = _send_relay(server, [src])
    assert sender.finish() == 0
    link = _link(sender)
    out = tmp_path / "o"
    rcv = receive(server, link, out, "--yes")
    _kill_when(rcv, rcv, 60_000_000)
    rcv.finish()
    again = receive(server, link, out, "--yes")
    assert again.finish() == 0, again.stderr
    assert again.event("offer")["held"] >= 16 * 1024 * 1024
    assert (out / "big.bin").read_bytes() == src.read_bytes()


def test_download_survives_a_server_restart(tmp_path: Path) -> None:
    """The connection drops mid-download (the server is killed and restarted on the same
    port and data folder): the same `receive` continues from its verified chunks."""
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "server-data"

    def serve() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "peer.cli", "serve", "--port", str(port), "--data", str(data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=cli_env(),
        )
        assert proc.stdout is not None
        assert "http://" in proc.stdout.readline()
        return proc

    srv = serve()
    url = f"http://127.0.0.1:{port}"
    try:
        src = tmp_path / "big.bin"
        src.write_bytes(os.urandom(150_000_000))
        sender = spawn(["send", str(src), "--server", url, "--json", "--relay"])
        assert sender.finish() == 0, sender.stderr
        rcv = spawn(["receive", _link(sender), "-o", str(tmp_path / "o"), "--yes", "--json"])
        while rcv.next_event("progress", 60)["bytes"] < 20_000_000:
            pass
        srv.send_signal(signal.SIGKILL)
        srv.wait(10)
        assert srv.stdout is not None
        srv.stdout.close()
        srv = serve()
        assert rcv.finish() == 0, rcv.stderr
        assert rcv.event("done")["via"] == "relay"
        assert rcv.event("retry")["attempt"] >= 1  # it really was cut off mid-download
        assert (tmp_path / "o" / "big.bin").read_bytes() == src.read_bytes()
    finally:
        srv.terminate()
        srv.wait(10)
        if srv.stdout is not None:
            srv.stdout.close()


def test_no_direct_path_hands_the_relay_link_to_the_waiting_receiver(
    server: Server, study: Path, tmp_path: Path
) -> None:
    """The receiver pairs but no direct connection can open (it allows only TURN and has
    none): the sender uploads to the relay and hands the link over the sealed signaling
    room; the receiver's download starts by itself."""
    env = cli_env(SCANBEAM_CONNECT_TIMEOUT="3")
    sender = spawn(["send", str(study), "--server", server.url, "--json"], env)
    code = sender.next_event("code")["code"]
    rcv = spawn(
        [
            "receive",
            code,
            "--server",
            server.url,
            "-o",
            str(tmp_path / "o"),
            "--yes",
            "--json",
            "--turn-only",
            "--no-pipe",  # the relay's live pipe (protocol v2) would carry it otherwise
        ],
        env,
    )
    assert rcv.finish() == 0, rcv.stderr
    assert sender.finish() == 0, sender.stderr
    assert sender.event("fallback")["reason"].startswith("No direct connection")
    assert sender.event("link")["url"].startswith(server.url + "/d/")
    assert rcv.event("fallback")["reason"].startswith("No direct connection")
    assert rcv.event("done")["via"] == "relay"
    assert sha_tree(tmp_path / "o" / "STUDY") == sha_tree(study)
