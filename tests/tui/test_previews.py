"""Series thumbnails on the receive screen's offer and the completeness line on its done
view (Pilot flows with the fake service), and the half-block renderer itself."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from textual.geometry import Region
from textual.pilot import Pilot
from textual.widgets import Static

from peer import session
from tui.app import ScanBeamApp
from tui.screens import receive
from tui.screens.receive import ReceiveScreen
from tui.widgets import preview_strip, thumbnail

from .fake import CODE, PREVIEWS, SUMMARY, FakeService
from .test_flows import until


def _png(arr: np.ndarray[Any, Any]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _text(renderable: Any, width: int = 80) -> str:
    console = Console(width=width, record=True, color_system="truecolor", file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def _shown(widget: Static) -> str:
    """The text the widget draws on screen."""
    region = Region(0, 0, widget.size.width, widget.size.height)
    return "\n".join(strip.text for strip in widget.render_lines(region))


def test_thumbnail_half_blocks_carry_both_pixel_colours() -> None:
    img = np.zeros((4, 2, 3), np.uint8)
    img[0] = (255, 0, 0)  # row 0 red, row 1 blue, rows 2-3 white
    img[1] = (0, 0, 255)
    img[2:] = 255
    text = thumbnail(_png(img), cols=2, rows=2)
    assert text.plain == "▀▀\n▀▀"
    top = text.get_style_at_offset(Console(), 0)
    assert top.color is not None and top.color.triplet is not None
    assert tuple(top.color.triplet) == (255, 0, 0)
    assert top.bgcolor is not None and top.bgcolor.triplet is not None
    assert tuple(top.bgcolor.triplet) == (0, 0, 255)
    white = text.get_style_at_offset(Console(), 3)
    assert white.color is not None and white.color.triplet is not None
    assert tuple(white.color.triplet) == (255, 255, 255)


def test_thumbnail_fits_the_box_and_keeps_the_aspect() -> None:
    wide = _png(np.zeros((64, 128), np.uint8))
    lines = thumbnail(wide, cols=16, rows=8).plain.split("\n")
    assert len(lines) == 4 and {len(ln) for ln in lines} == {16}  # 16 x 8 px: 4 cell rows
    tall = _png(np.zeros((128, 32), np.uint8))
    lines = thumbnail(tall, cols=16, rows=8).plain.split("\n")
    assert len(lines) == 8 and {len(ln) for ln in lines} == {4}
    odd = _png(np.zeros((3, 3), np.uint8))  # an odd pixel row: fg only on the last line
    assert thumbnail(odd).plain == "▀▀▀\n▀▀▀"


def test_thumbnail_without_colour_uses_a_brightness_ramp() -> None:
    img = np.zeros((2, 3), np.uint8)
    img[:, 1] = 128
    img[:, 2] = 255
    assert thumbnail(_png(img), color=False).plain == " ▒█"


def test_bad_thumbnails_are_left_out() -> None:
    good = _png(np.full((8, 8), 200, np.uint8))
    huge = _png(np.zeros((300, 10), np.uint8))
    strip = preview_strip([(b"\x89PNG\r\n\x1a\nbroken", "A", ""), (huge, "B", ""), (good, "C", "")])
    assert strip is not None
    shown = _text(strip)
    assert "C" in shown and "A" not in shown and "B" not in shown
    assert preview_strip([(b"junk", "A", "")]) is None


def test_previews_follow_the_summary_order_with_labels() -> None:
    offer = session.Offer(1, 1, 0, SUMMARY, (), Path("."), tuple(reversed(PREVIEWS)))
    shown = _text(receive._previews(offer, color=True))
    assert shown.index("Series 1 CT") < shown.index("Series 2 CT")
    assert "Axial 5mm" in shown and "Scout" in shown
    stray = session.SeriesPreview("9.9", PREVIEWS[0].png, 128, 128)
    odd = session.Offer(1, 1, 0, {"studies": "x"}, (), Path("."), (stray,))
    assert "Series" in _text(receive._previews(odd, color=True))
    assert receive._previews(session.Offer(1, 1, 0, SUMMARY, (), Path(".")), color=True) is None


async def _offer(pilot: Pilot[Any]) -> ReceiveScreen:
    app = pilot.app
    await pilot.press("r")
    await until(pilot, lambda: isinstance(app.screen, ReceiveScreen), 5, "receive screen")
    await pilot.press(*CODE, "enter", "enter")
    screen = app.screen
    assert isinstance(screen, ReceiveScreen)
    await until(pilot, lambda: screen.decision is not None, 5, "offer")
    return screen


async def test_offer_shows_the_thumbnails(tmp_path: Path) -> None:
    app = ScanBeamApp(FakeService(), start=tmp_path)
    async with app.run_test(size=(80, 40)) as pilot:
        screen = await _offer(pilot)
        previews = screen.query_one("#previews", Static)
        assert previews.display
        shown = _shown(previews)
        assert shown.count("Series") == 2 and "▀" in shown
        await pilot.press("a")
        await until(pilot, lambda: screen.done is not None, 5, "done")
        assert not previews.display  # the done view shows the result, not the offer


async def test_offer_without_previews_hides_the_strip(tmp_path: Path) -> None:
    class NoPreviews(FakeService):
        async def receive(self, text: str, dest: Path, on_event: Any, *a: Any) -> Any:
            def strip(ev: Any) -> None:
                if isinstance(ev, session.Offer):
                    ev = session.Offer(ev.files, ev.bytes, ev.held, ev.summary, ev.paths, dest)
                on_event(ev)

            return await super().receive(text, dest, strip, *a)

    app = ScanBeamApp(NoPreviews(), start=tmp_path)
    async with app.run_test(size=(80, 40)) as pilot:
        screen = await _offer(pilot)
        assert not screen.query_one("#previews").display


async def test_no_color_draws_shades(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = ScanBeamApp(FakeService(), start=tmp_path)
    async with app.run_test(size=(80, 40)) as pilot:
        screen = await _offer(pilot)
        shown = _shown(screen.query_one("#previews", Static))
        assert "▀" not in shown and "░" in shown and "▒" in shown


@pytest.mark.parametrize(
    ("completeness", "expected"),
    [
        (
            {"status": "complete", "missing": 0, "problems": [], "series": 2, "images": 42},
            "Completeness: complete — 2 series, 42 images",
        ),
        (
            {
                "status": "incomplete",
                "missing": 3,
                "problems": ["series 1 (Axial 5mm): 3 images missing"],
                "series": 2,
                "images": 39,
                "missing_series": ["series 1 (Axial 5mm)"],
            },
            "Completeness: 3 images missing (series 1 (Axial 5mm))",
        ),
        (
            {
                "status": "conflicting",
                "missing": 0,
                "problems": ["its images name 2 different studies", "x"],
                "series": 2,
                "images": 42,
            },
            "Completeness: conflicting — its images name 2 different studies (and 1 more)",
        ),
        ({"status": "not-dicom", "missing": 0, "problems": [], "series": 0, "images": 0}, None),
        (None, None),
    ],
)
async def test_done_view_shows_the_completeness(
    tmp_path: Path, completeness: dict[str, Any] | None, expected: str | None
) -> None:
    app = ScanBeamApp(FakeService(completeness=completeness), start=tmp_path)
    async with app.run_test(size=(200, 40)) as pilot:
        screen = await _offer(pilot)
        await pilot.press("a")
        await until(pilot, lambda: screen.done is not None, 5, "done")
        await pilot.pause()
        result = _shown(screen.query_one("#result", Static))
        assert "Received 43 files" in result
        if expected is None:
            assert "Completeness" not in result
        else:
            assert expected in result
