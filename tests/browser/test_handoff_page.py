"""No direct path: the sender uploads to the relay and hands the link to the page inside the
sealed signaling room; the page switches to the relay download by itself."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from tests.conftest import Server, cli_env, spawn

from .conftest import shot, wait_state


def test_page_follows_the_relay_handoff(page_server: Server, phone: Any, tmp_path: Path) -> None:
    src = tmp_path / "scan.bin"
    src.write_bytes(os.urandom(3_000_000))
    # --turn-only without a TURN server: no direct connection can open
    sender = spawn(
        ["send", str(src), "--server", page_server.url, "--json", "--turn-only"],
        env=cli_env(SCANBEAM_CONNECT_TIMEOUT="3"),
    )
    url = sender.next_event("code")["url"]
    phone.goto(url)
    wait_state(phone, "offer", 90)
    shot(phone, "handoff", "relay-offer")
    assert "relay" in (phone.text_content("#offer-note") or "")
    with phone.expect_download() as info:
        phone.click("#accept")
    wait_state(phone, "done", 90)
    shot(phone, "handoff", "verified")
    saved = Path(info.value.path())
    assert hashlib.sha256(saved.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
    sender.finish()
    assert any(e["event"] == "link" for e in sender.events), sender.events


def test_no_path_and_no_relay_is_said_plainly(
    page_server: Server, phone: Any, tmp_path: Path
) -> None:
    src = tmp_path / "scan.bin"
    src.write_bytes(os.urandom(10_000))
    sender = spawn(
        ["send", str(src), "--server", page_server.url, "--json", "--turn-only", "--no-relay"],
        env=cli_env(SCANBEAM_CONNECT_TIMEOUT="3"),
    )
    phone.goto(sender.next_event("code")["url"])
    wait_state(phone, "error", 90)
    shot(phone, "handoff", "no-path")
    assert phone.evaluate("document.body.dataset.error") == "no-path"
    assert "No direct connection" in (phone.text_content("#error-text") or "")
    assert sender.finish() == 4
