"""Quick Pilot flows with the fake service: cancel, decline, plain errors, delete, NO_COLOR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button
from textual.worker import WorkerState

from peer.session import parse_target
from tui.app import ScanBeamApp
from tui.screens.receive import ReceiveScreen
from tui.screens.send import ReviewScreen, SendScreen

from .fake import CODE, FakeService
from .test_flows import until


@pytest.fixture
def start(tmp_path: Path) -> Path:
    (tmp_path / "STUDY").mkdir()
    (tmp_path / "STUDY" / "a.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    return tmp_path


async def _send(pilot: Pilot[Any]) -> SendScreen:
    app = pilot.app
    await pilot.press("s")
    await pilot.pause(0.3)
    await pilot.press("down", "space", "n")
    await until(pilot, lambda: isinstance(app.screen, ReviewScreen), 5, "review")
    await until(pilot, lambda: not app.screen.query_one("#start", Button).disabled, 5, "summary")
    await pilot.press("ctrl+s")
    await until(pilot, lambda: isinstance(app.screen, SendScreen), 5, "send screen")
    assert isinstance(app.screen, SendScreen)
    return app.screen


async def test_cancel_stops_the_worker(start: Path) -> None:
    app = ScanBeamApp(FakeService("progress"), start=start)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _send(pilot)
        await until(pilot, lambda: screen.phase == "sending", 5, "progress")
        workers = [w for w in screen.workers if w.node is screen]
        assert workers
        await pilot.press("escape")
        await pilot.pause(0.2)
        assert all(w.state is WorkerState.CANCELLED for w in workers)
        assert "Cancelled" in str(screen.query_one("#state").render())
        await pilot.press("escape")
        assert isinstance(app.screen, ReviewScreen)


async def test_decline_is_reported_in_plain_words(start: Path) -> None:
    app = ScanBeamApp(FakeService(), start=start)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("r")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ReceiveScreen)
        await pilot.press(*CODE, "enter", "enter")
        await until(pilot, lambda: screen.decision is not None, 5, "offer")
        await pilot.press("d")
        await until(pilot, lambda: screen.error, 5, "decline")
        assert screen.error == "You declined the transfer."
        assert screen.done is None


async def test_bad_code_shows_the_user_message(start: Path) -> None:
    app = ScanBeamApp(FakeService(), start=start)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("r")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ReceiveScreen)
        await pilot.press(*"bad-code", "enter", "enter")
        await until(pilot, lambda: screen.error, 5, "error")
        with pytest.raises(Exception) as info:
            parse_target("bad-code", "http://x")
        assert screen.error == getattr(info.value, "user_message", None)
        assert "Traceback" not in str(screen.query_one("#state").render())
        assert screen.query_one("#form").display  # the form is back for another try


async def test_failed_send_is_a_plain_message(start: Path) -> None:
    app = ScanBeamApp(FakeService("fail"), start=start)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _send(pilot)
        await until(pilot, lambda: screen.error, 5, "failure")
        assert str(screen.query_one("#state").render()) == "Failed: The receiver declined."


async def test_delete_drop_asks_first(start: Path) -> None:
    service = FakeService()
    app = ScanBeamApp(service, start=start)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("h")
        await pilot.pause(0.2)
        await pilot.press("tab", "d")
        await pilot.pause(0.1)
        await pilot.press("n")
        await pilot.pause(0.1)
        assert service.deleted == []
        await pilot.press("d")
        await pilot.pause(0.1)
        await pilot.press("y")
        await until(pilot, lambda: service.deleted, 5, "delete")
        assert service.deleted == ["AbCdEfGhIjKlMnOpQrStUv"]


async def test_no_color_is_respected(start: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = ScanBeamApp(FakeService(), start=start)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.no_color


async def test_a_reconnection_round_continues_without_asking_again(start: Path) -> None:
    service = FakeService("reconnect")
    app = ScanBeamApp(service, start=start)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("r")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ReceiveScreen)
        await pilot.press(*CODE, "enter", "enter")
        await until(pilot, lambda: screen.decision is not None, 5, "offer")
        await pilot.press("a")
        await until(pilot, service.reconnecting.is_set, 5, "drop")
        await pilot.pause(0.2)
        assert "reconnecting through the server (attempt 1" in str(
            screen.query_one("#state").render()
        )
        service.resume.set()
        await until(
            pilot, lambda: "Reconnected" in str(screen.query_one("#state").render()), 5, "round"
        )
        assert screen.decision is None  # not asked again
        assert "Resuming:" in str(screen.query_one("#offer").render())
