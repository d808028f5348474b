"""The page says in plain words what went wrong: damaged, wrong, used-up, unknown and expired
links, a sender that left, a tampered chunk (the download is failed, not completed); and it is
served with the strict headers README "Receiving in a browser" promises."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, Peer, Server, cli_env, spawn, start_send, timeout

from .conftest import shot, wait_state


def _error(page: Any, url: str, test: str, code: str) -> str:
    page.goto("about:blank")
    page.goto(url)
    wait_state(page, "error")
    shot(page, test, code)
    assert page.evaluate("document.body.dataset.error") == code, page.text_content("#error-text")
    return str(page.text_content("#error-text"))


def _src(tmp_path: Path, size: int) -> Path:
    src = tmp_path / "scan.bin"
    src.write_bytes(os.urandom(size))
    return src


def test_damaged_wrong_and_used_up_links(page_server: Server, phone: Any, tmp_path: Path) -> None:
    text = _error(phone, f"{page_server.url}/r#12.tooshort", "errors", "bad-link")
    assert "damaged or incomplete" in text
    # never allocated: unknown
    text = _error(phone, f"{page_server.url}/r#98765.{'A' * 43}", "errors", "unknown-code")
    assert "already used, or it expired" in text
    # a real sender, but a different secret: the sender refuses, both say wrong code
    sender, _code = start_send(page_server, [_src(tmp_path, 1000)])
    url = sender.events[0]["url"]
    nameplate = url.split("#")[1].split(".")[0]
    other = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    wrong = f"{page_server.url}/r#{nameplate}.{other}"
    text = _error(phone, wrong, "errors", "wrong-code")
    assert "does not match the sender" in text
    assert sender.finish() == 3
    # the room is burned: the right link is now used up
    text = _error(phone, url, "errors-used", "unknown-code")
    assert "already used" in text


def test_expired_relay_link(page_server: Server, phone: Any, tmp_path: Path) -> None:
    sender = spawn(
        [
            *("send", str(_src(tmp_path, 1000)), "--server", page_server.url, "--json"),
            *("--relay", "--expires", "2s"),
        ]
    )
    assert sender.finish() == 0, sender.stderr
    link = sender.event("link")["url"]
    time.sleep(2.5)
    text = _error(phone, link, "errors", "expired")
    assert "expired" in text
    text = _error(phone, f"{page_server.url}/d/{'Z' * 22}#{'A' * 43}", "errors", "unknown")
    assert "unknown" in text


def test_sender_gone_after_offer(page_server: Server, phone: Any, tmp_path: Path) -> None:
    sender, _code = start_send(page_server, [_src(tmp_path, 5_000_000)])
    phone.goto(sender.events[0]["url"])
    wait_state(phone, "offer")
    sender.proc.kill()
    sender.proc.wait(10)
    wait_state(phone, "error", 90)  # ICE consent or SCTP notices the dead peer
    shot(phone, "errors", "peer-gone")
    assert phone.evaluate("document.body.dataset.error") == "peer-gone"
    assert "sender left" in (phone.text_content("#error-text") or "")


def test_tampered_chunk_fails_the_download(page_server: Server, phone: Any, tmp_path: Path) -> None:
    evil = subprocess.Popen(
        [
            *(sys.executable, str(ROOT / "tests/e2e/evil_sender.py"), "tamper"),
            *(page_server.url, str(_src(tmp_path, 1_000_000))),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    peer = Peer(evil)
    try:
        url = peer.next_event("code")["url"]
        phone.goto(url)
        wait_state(phone, "offer")
        with phone.expect_download(timeout=timeout(60) * 1000) as info:
            phone.click("#accept")
        wait_state(phone, "error")
        shot(phone, "errors", "integrity")
        assert phone.evaluate("document.body.dataset.error") == "integrity"
        assert "integrity check" in (phone.text_content("#error-text") or "")
        # the browser's download is failed, never completed with unverified bytes
        assert info.value.failure() is not None
        assert peer.finish() == 9  # the sender got the page's ERROR record
    finally:
        if evil.poll() is None:
            evil.kill()
        evil.communicate()


def test_strict_headers(page_server: Server, built_page: Path) -> None:
    for path in ("/r", "/d/AAAAAAAAAAAAAAAAAAAAAA", "/app/app.js", "/app/app.css", "/sw.js"):
        with urllib.request.urlopen(page_server.url + path, timeout=10) as resp:
            assert resp.status == 200
            csp = resp.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp
            assert "script-src 'self' 'wasm-unsafe-eval'" in csp
            assert "img-src 'self' data: blob:" in csp
            assert "unsafe-inline" not in csp and "http" not in csp
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            body = resp.read()
        if path == "/r":
            assert b"<script" in body
            # no inline script or style: every script tag has a same-origin src
            html = body.decode()
            assert html.count("<script") == html.count('<script type="module" src="/app/')
            assert "<style" not in html and " style=" not in html and "onclick" not in html


def test_decline_tells_the_sender(page_server: Server, phone: Any, tmp_path: Path) -> None:
    sender, _code = start_send(page_server, [_src(tmp_path, 100_000)])
    phone.goto(sender.events[0]["url"])
    wait_state(phone, "offer")
    phone.click("#decline")
    wait_state(phone, "error")
    shot(phone, "errors", "declined")
    assert "declined" in (phone.text_content("#error-text") or "")
    assert sender.finish() == 6  # exit code of "declined"
    assert sender.event("error")["code"] == "declined"


def test_browser_that_cannot_stream_a_download(
    page_server: Server, browser: Any, tmp_path: Path
) -> None:
    """No service worker (blocked here, as in some private modes): a plain message, and the
    sender is told (no half-saved file anywhere)."""
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, service_workers="block", accept_downloads=True
    )
    try:
        page = context.new_page()
        page.scanbeam_console = []
        sender, _code = start_send(page_server, [_src(tmp_path, 100_000)])
        page.goto(sender.events[0]["url"])
        wait_state(page, "offer")
        page.click("#accept")
        wait_state(page, "error")
        shot(page, "errors", "no-save")
        assert page.evaluate("document.body.dataset.error") == "no-save"
        assert "cannot save large files" in (page.text_content("#error-text") or "")
        assert sender.finish() == 9  # the page's ERROR record: "the other side stopped"
        assert "The other side stopped" in sender.event("error")["message"]
    finally:
        context.close()


def test_unsafe_name_is_refused(page_server: Server, phone: Any, tmp_path: Path) -> None:
    evil = subprocess.Popen(
        [
            *(sys.executable, str(ROOT / "tests/e2e/evil_sender.py"), "name:../escape.bin"),
            *(page_server.url, str(_src(tmp_path, 1000))),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    peer = Peer(evil)
    try:
        phone.goto(peer.next_event("code")["url"])
        wait_state(phone, "error")
        shot(phone, "errors", "unsafe-manifest")
        assert phone.evaluate("document.body.dataset.error") == "unsafe-manifest"
        text = phone.text_content("#error-text") or ""
        assert text.startswith("Refused the offer") and "'..'" in text, text
        assert peer.finish() == 9  # told by the page's ERROR record
    finally:
        if evil.poll() is None:
            evil.kill()
        evil.communicate()
