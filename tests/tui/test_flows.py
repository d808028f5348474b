"""The TUI against a real ``scanbeam serve`` and a real CLI peer process on loopback."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Input

from peer.dicom.synth import write_study
from peer.session import Settings
from tests import conftest
from tests.conftest import Peer, Server, receive, sha_tree, start_send, timeout
from tui.app import ScanBeamApp, SessionService
from tui.screens.receive import ReceiveScreen
from tui.screens.send import ReviewScreen, SendScreen
from tui.widgets import DicomTree

SIZE = (100, 40)


@pytest.fixture
def study(tmp_path: Path) -> Path:
    root = tmp_path / "pick" / "STUDY"
    write_study(root, target_bytes=1_500_000, series=2, seed=5, rows=64, cols=64)
    (root / "notes.txt").write_text("not dicom\n")
    return root


def _app(server: Server, start: Path) -> ScanBeamApp:
    settings = Settings(server=server.url, home=Path(conftest._HOME))
    return ScanBeamApp(SessionService(settings), start=start)


async def until(pilot: Pilot[Any], cond: Callable[[], object], limit: float, what: str) -> None:
    """Let the app run until ``cond()`` is true (bounded)."""
    deadline = time.monotonic() + timeout(limit)
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def finished(pilot: Pilot[Any], peer: Peer, limit: float = 60.0) -> int:
    """Wait for a CLI peer without blocking the app's event loop."""
    await until(pilot, lambda: peer.proc.poll() is not None, limit, "the CLI peer")
    return peer.finish(5)


async def _start_send(pilot: Pilot[Any], wait: str | None = None) -> SendScreen:
    app = pilot.app
    await pilot.press("s")
    await until(pilot, lambda: app.screen.query(DicomTree), 5, "the picker")
    tree = app.screen.query_one(DicomTree)
    await until(pilot, lambda: len(tree.root.children) > 0, 10, "the tree")
    await pilot.press("down", "space", "n")
    await until(pilot, lambda: isinstance(app.screen, ReviewScreen), 5, "the review")
    review = app.screen
    await until(pilot, lambda: not review.query_one("#start", Button).disabled, 20, "summary")
    if wait is not None:
        review.query_one("#wait", Input).value = wait
    await pilot.press("ctrl+s")
    await until(pilot, lambda: isinstance(app.screen, SendScreen), 5, "the send screen")
    screen = app.screen
    assert isinstance(screen, SendScreen)
    return screen


async def test_tui_send_cli_receive(server: Server, study: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    app = _app(server, study.parent)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _start_send(pilot)
        await until(pilot, lambda: screen.code or screen.error, 20, "the code")
        assert not screen.error
        peer = receive(server, screen.code, out, "--yes")
        assert await finished(pilot, peer) == 0, peer.stderr
        await until(pilot, lambda: screen.done or screen.error, 30, "the receipt")
        assert screen.done is not None, screen.error
        assert screen.done.via == "direct"
        assert "Verified" in str(screen.query_one("#state").render())
    assert sha_tree(out / "STUDY") == sha_tree(study)


async def test_cli_send_tui_receive(server: Server, study: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    peer, code = start_send(server, [study], "--no-relay")
    app = _app(server, tmp_path)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, ReceiveScreen), 5, "receive")
            screen = app.screen
            assert isinstance(screen, ReceiveScreen)
            await pilot.press(*code, "enter")
            screen.query_one("#dest", Input).value = str(out)
            await pilot.press("enter")
            await until(pilot, lambda: screen.decision or screen.error, 30, "the offer")
            assert not screen.error
            offer = str(screen.query_one("#offer").render())
            assert "DOE, JANE" in offer and "free:" in offer
            await pilot.press("a")
            await until(pilot, lambda: screen.done or screen.error, 60, "the result")
            assert screen.done is not None, screen.error
            assert "Saved in" in str(screen.query_one("#result").render())
        assert peer.finish(30) == 0, peer.stderr
    finally:
        if peer.proc.poll() is None:
            peer.proc.kill()
            peer.finish(5)
    assert sha_tree(out / "STUDY") == sha_tree(study)


async def test_tui_relay_fallback_then_cli_receives_link(
    server: Server, study: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    app = _app(server, study.parent)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _start_send(pilot, wait="1s")
        await until(pilot, lambda: screen.link or screen.error, 30, "the relay link")
        assert not screen.error
        assert "/d/" in screen.link
        assert "Link ready" in str(screen.query_one("#state").render())
        peer = receive(server, screen.link, out, "--yes")
        assert await finished(pilot, peer) == 0, peer.stderr
        history = app.service.disclosures()
        assert [r["how"] for r in history] == ["relay"]
    assert sha_tree(out / "STUDY") == sha_tree(study)
