"""A real network outage while the sender keeps running: the page reconnects (protocol v2
reconnection rounds, docs/protocol.md §10.3) and continues from what it already saved.

The outage is an nftables table of the test's own that drops every UDP packet to or from the
sender's WebRTC sockets (nothing else on the machine is touched; the table is deleted in a
``finally``). Both sides notice through ICE consent (~30 s), meet again at the round's
rendezvous on the signaling server (TCP, not blocked), and the page answers ``resume`` from
the chunks it already handed to its saving stream: the download or the folder file goes on
as one stream, and the sender does not send those chunks again.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import Peer, Server, start_send

from .conftest import shot, wait_state
from .test_resume_page import PICK_PRIVATE_FOLDER, SHA_IN_PAGE

SIZE = 40_000_000
DROP_AT = 10_000_000


def _udp_ports(pid: int) -> list[int]:
    """The UDP ports the process ``pid`` has open (its ICE sockets)."""
    out = subprocess.run(["ss", "-H", "-uanp"], capture_output=True, text=True, check=True).stdout
    ports = set()
    for line in out.splitlines():
        if f"pid={pid}," not in line:
            continue
        local = line.split()[3]
        ports.add(int(local.rsplit(":", 1)[1]))
    return sorted(ports)


@contextmanager
def _outage(ports: list[int]) -> Iterator[None]:
    """Drop all UDP traffic of ``ports`` (both directions) in a table of our own."""
    assert ports, "the sender has no UDP socket to block"
    table = f"scanbeam_outage_{os.getpid()}"
    rules = "\n".join(
        f"    udp {way} {{ {', '.join(map(str, ports))} }} drop" for way in ("sport", "dport")
    )
    ruleset = "\n".join(
        [
            f"table inet {table} {{",
            "  chain in {",
            "    type filter hook input priority -10; policy accept;",
            rules,
            "  }",
            "  chain out {",
            "    type filter hook output priority -10; policy accept;",
            rules,
            "  }",
            "}",
        ]
    )
    subprocess.run(["nft", "-f", "-"], input=ruleset, text=True, check=True)
    try:
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], check=True)


def _drop_mid_transfer(page: Any, sender: Peer, test: str) -> None:
    """Cut the sender's UDP once the page holds DROP_AT bytes, until both sides noticed."""
    page.wait_for_selector("body[data-state=receiving]")
    for _ in range(600):
        if int(page.evaluate("Number(document.body.dataset.bytes || 0)")) >= DROP_AT:
            break
        page.wait_for_timeout(50)
    with _outage(_udp_ports(sender.proc.pid)):
        t0 = time.monotonic()
        wait_state(page, "reconnecting", 90)
        shot(page, test, "1-reconnecting")
        status = page.text_content("#status") or ""
        assert "Reconnecting" in status, status
        note = page.text_content("#progress-text") or ""
        assert "Paused at" in note, note
        ev = sender.next_event("reconnecting", 120)  # the sender noticed too
        assert ev["attempt"] == 1, ev
        took = time.monotonic() - t0
    assert took < 120, took
    assert page.evaluate("document.body.dataset.state") == "reconnecting"


def _check_resumed(sender: Peer, size: int) -> dict[str, Any]:
    assert sender.finish() == 0, sender.stderr
    done = sender.event("done")
    assert done["rounds"] >= 1, done
    assert sender.event("paired")["mode"] == "rejoin"
    # what crossed the data channel over all rounds (sealed bytes, ``paths``): the whole file
    # once, plus what was in flight when the outage began (at most the page's credit window
    # of 64 chunks), record overhead and one manifest per round
    sealed = sum(p["bytes"] for p in done["paths"])
    assert sealed <= size * 1.001 + 64 * 65_536 + 100_000, done
    return done


def test_download_continues_after_an_outage(
    page_server: Server, phone: Any, tmp_path: Path
) -> None:
    src = tmp_path / "series.raw"
    src.write_bytes(os.urandom(SIZE))
    sender, _code = start_send(page_server, [src])
    page = phone
    page.goto(sender.events[0]["url"])
    wait_state(page, "offer")
    with page.expect_download(timeout=300_000) as info:
        page.click("#accept")
        _drop_mid_transfer(page, sender, "reconnect-download")
        wait_state(page, "done", 180)
    shot(page, "reconnect-download", "2-verified")
    assert page.evaluate("document.body.dataset.round") != "0"
    _check_resumed(sender, SIZE)
    download = info.value
    assert download.failure() is None
    saved = Path(download.path())
    assert saved.stat().st_size == SIZE
    assert (
        hashlib.sha256(saved.read_bytes()).hexdigest()
        == hashlib.sha256(src.read_bytes()).hexdigest()
    )
    assert re.search(r"[0-9a-f]{16}", page.text_content("#done-files") or "")


def test_folder_continues_after_an_outage(page_server: Server, phone: Any, tmp_path: Path) -> None:
    src = tmp_path / "series.raw"
    src.write_bytes(os.urandom(SIZE))
    page = phone
    page.add_init_script(PICK_PRIVATE_FOLDER)
    sender, _code = start_send(page_server, [src])
    page.goto(sender.events[0]["url"])
    wait_state(page, "offer")
    page.click("#save-folder")
    _drop_mid_transfer(page, sender, "reconnect-folder")
    wait_state(page, "done", 180)
    shot(page, "reconnect-folder", "2-verified")
    _check_resumed(sender, SIZE)
    digest, size, top = page.evaluate(SHA_IN_PAGE, "series.raw")
    assert size == SIZE
    assert digest == hashlib.sha256(src.read_bytes()).hexdigest()
    assert ".scanbeam-partial" not in top


def test_reloaded_page_rejoins_and_restarts_the_download(
    page_server: Server, phone: Any, tmp_path: Path
) -> None:
    """Reloading the tab loses the download stream: the page meets the sender at its next
    rendezvous (the single-use nameplate is gone), says plainly the transfer starts again,
    and the new download is whole."""
    src = tmp_path / "series.raw"
    src.write_bytes(os.urandom(SIZE))
    sender, _code = start_send(page_server, [src])
    page = phone
    page.goto(sender.events[0]["url"])
    wait_state(page, "offer")
    with page.expect_download() as first:
        page.click("#accept")
    page.wait_for_selector("body[data-state=receiving]")
    for _ in range(600):
        if int(page.evaluate("Number(document.body.dataset.bytes || 0)")) >= DROP_AT:
            break
        page.wait_for_timeout(50)
    page.reload()
    wait_state(page, "offer", 120)
    shot(page, "reconnect-reload", "1-offer-again")
    note = page.text_content("#offer-note") or ""
    assert "starts again from the beginning" in note, note
    assert first.value.failure() is not None  # the lost stream never completes
    with page.expect_download(timeout=300_000) as second:
        page.click("#accept")
        wait_state(page, "done", 180)
    done = _check_resumed(sender, SIZE + DROP_AT + 64 * 65_536)
    sealed = sum(p["bytes"] for p in done["paths"])
    assert sealed >= SIZE + DROP_AT, done  # the whole file again: a download cannot resume
    saved = Path(second.value.path())
    assert (
        hashlib.sha256(saved.read_bytes()).hexdigest()
        == hashlib.sha256(src.read_bytes()).hexdigest()
    )
