"""SVG snapshots of the main screens at 80x24, with the fake service and fixed data.

Update with ``pytest tests/tui --snapshot-update`` and look at the SVGs before committing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from peer.dicom.synth import write_study
from tui.app import ScanBeamApp

from .fake import CODE, FakeService

SIZE = (80, 24)


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """History shows local times: pin the zone so the snapshots do not depend on it."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("snap") / "studies"
    write_study(root / "CT_CHEST", target_bytes=150_000, series=2, seed=3, rows=32, cols=32)
    (root / "letters").mkdir()
    (root / "letters" / "referral.txt").write_text("referral\n")
    (root / "notes.txt").write_text("notes\n")
    return root


async def _settle(pilot: Pilot[Any], times: int = 5) -> None:
    for _ in range(times):
        await pilot.pause(0.05)


def _app(studies: Path, stage: str = "done") -> ScanBeamApp:
    return ScanBeamApp(FakeService(stage), start=studies)


async def _to_review(pilot: Pilot[Any]) -> None:
    await pilot.press("s")
    await _settle(pilot, 10)
    await pilot.press("down", "space", "n")
    await _settle(pilot, 10)


def test_home(snap_compare: Callable[..., bool], studies: Path) -> None:
    assert snap_compare(_app(studies), terminal_size=SIZE)


def test_send_picker(snap_compare: Callable[..., bool], studies: Path) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.press("s")
        await _settle(pilot, 10)
        await pilot.press("down", "space")
        await _settle(pilot)

    assert snap_compare(_app(studies), terminal_size=SIZE, run_before=run_before)


def test_send_review(snap_compare: Callable[..., bool], studies: Path) -> None:
    assert snap_compare(_app(studies), terminal_size=SIZE, run_before=_to_review)


def test_send_code_and_qr(snap_compare: Callable[..., bool], studies: Path) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await _to_review(pilot)
        await pilot.press("ctrl+s")
        await _settle(pilot, 10)

    assert snap_compare(_app(studies, "code"), terminal_size=SIZE, run_before=run_before)


def test_send_progress(snap_compare: Callable[..., bool], studies: Path) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await _to_review(pilot)
        await pilot.press("ctrl+s")
        await _settle(pilot, 10)

    assert snap_compare(_app(studies, "progress"), terminal_size=SIZE, run_before=run_before)


def test_send_link_ready(snap_compare: Callable[..., bool], studies: Path) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await _to_review(pilot)
        await pilot.press("ctrl+s")
        await _settle(pilot, 10)

    assert snap_compare(_app(studies, "link"), terminal_size=SIZE, run_before=run_before)


def test_receive_offer(snap_compare: Callable[..., bool], studies: Path) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.press("r")
        await _settle(pilot)
        await pilot.press(*CODE, "tab")
        pilot.app.screen.query_one("#dest").value = "/data/incoming"  # type: ignore[attr-defined]
        await pilot.press("enter")
        await _settle(pilot, 10)

    assert snap_compare(_app(studies), terminal_size=SIZE, run_before=run_before)


def test_receive_offer_previews(snap_compare: Callable[..., bool], studies: Path) -> None:
    """A taller terminal: both series thumbnails with their labels under the buttons."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.press("r")
        await _settle(pilot)
        await pilot.press(*CODE, "tab")
        pilot.app.screen.query_one("#dest").value = "/data/incoming"  # type: ignore[attr-defined]
        await pilot.press("enter")
        await _settle(pilot, 10)

    assert snap_compare(_app(studies), terminal_size=(80, 36), run_before=run_before)


def test_receive_done_complete(snap_compare: Callable[..., bool], studies: Path) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.press("r")
        await _settle(pilot)
        await pilot.press(*CODE, "tab")
        pilot.app.screen.query_one("#dest").value = "/data/incoming"  # type: ignore[attr-defined]
        await pilot.press("enter")
        await _settle(pilot, 10)
        await pilot.press("a")
        await _settle(pilot, 10)

    assert snap_compare(_app(studies), terminal_size=SIZE, run_before=run_before)


def test_history(snap_compare: Callable[..., bool], studies: Path) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.press("h")
        await _settle(pilot, 10)
        await pilot.press("tab", "l")
        await _settle(pilot, 10)

    assert snap_compare(_app(studies), terminal_size=SIZE, run_before=run_before)
