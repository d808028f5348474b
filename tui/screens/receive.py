"""Receive: a code or link, the offer with free space, accept or decline, progress, result."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import Button, Footer, Header, Input, Label, ProgressBar, Static

from peer.session import (
    Connected,
    DeclinedError,
    Done,
    Offer,
    Paired_,
    PathMoved,
    Progress,
    Reconnecting,
    Retrying,
    format_completeness,
    format_summary,
    human_bytes,
    human_duration,
    human_rate,
)
from tui.screens.base import (
    PasswordScreen,
    ServiceScreen,
    TransferEvent,
    TransferFailed,
    plain_error,
    rate_line,
)
from tui.widgets import preview_strip

__all__ = ["ReceiveScreen"]


_STATUS_STYLE = {"complete": "$success", "incomplete": "$warning", "conflicting": "$error"}


def _completeness(result: dict[str, Any] | None) -> Content:
    """The completeness line (peer/dicom/complete.py), coloured by status; nothing when
    there was no DICOM to check."""
    if not result or result.get("status") == "not-dicom":
        return Content("")
    try:
        line = format_completeness(result)
    except Exception:  # a report only: never let it hide the result above
        return Content("")
    style = _STATUS_STYLE.get(str(result.get("status")), "$warning")
    return Content.from_markup(f"[bold {style}]$line[/]\n", line=line)


def _series_label(series: object) -> tuple[str, str]:
    if not isinstance(series, dict):
        return "Series", ""
    number, modality = series.get("number"), series.get("modality")
    head = "Series" if not isinstance(number, int) else f"Series {number}"
    if isinstance(modality, str) and modality:
        head += f" {modality}"
    desc = series.get("description")
    return head, desc if isinstance(desc, str) else ""


def _previews(offer: Offer, *, color: bool) -> Any:
    """The offer's thumbnails in the summary's series order, labelled; None if none."""
    if not offer.previews:
        return None
    by_uid: dict[str, object] = {}
    studies = offer.summary.get("studies")
    for study in studies if isinstance(studies, list) else []:
        series_list = study.get("series") if isinstance(study, dict) else None
        for series in series_list if isinstance(series_list, list) else []:
            if isinstance(series, dict) and isinstance(series.get("series_uid"), str):
                by_uid.setdefault(series["series_uid"], series)
    order = list(by_uid)
    ranked = sorted(
        offer.previews,
        key=lambda p: order.index(p.series) if p.series in by_uid else len(order),
    )
    items = [(p.png, *_series_label(by_uid.get(p.series))) for p in ranked]
    return preview_strip(items, color=color)


class ReceiveScreen(ServiceScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel/Back"),
        Binding("a", "accept", "Accept"),
        Binding("d", "decline", "Decline"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.running = False
        self.decision: asyncio.Future[bool] | None = None
        self.accepted = False  # the user accepted this transfer's offer once
        self.done: Done | None = None
        self.error = ""

    def compose(self) -> ComposeResult:
        start: Path = getattr(self.app, "start", Path.cwd())
        yield Header(show_clock=False)
        with VerticalScroll(id="receive"):
            with Vertical(id="form"):
                yield Label("Code or link from the sender")
                yield Input(placeholder="12-word-word or https://…", id="target")
                yield Label("Save into folder")
                yield Input(str(start), id="dest")
                yield Button("Receive  (Enter)", id="go", variant="primary", compact=True)
            yield Static("", id="from")
            yield Static("", id="state")
            yield Static("", id="offer")
            with Horizontal(id="decide"):
                yield Button("Accept  (a)", id="accept", variant="success", compact=True)
                yield Button("Decline  (d)", id="decline", variant="error", compact=True)
            yield Static("", id="previews")
            yield ProgressBar(show_eta=False, id="bar")
            yield Static("", id="rate")
            yield Static("", id="result")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#decide").display = False
        self.query_one("#bar").display = False
        self.query_one("#previews").display = False
        self._form(True)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "target":
            self.query_one("#dest", Input).focus()
        else:
            self.action_go()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "go":
            self.action_go()
        elif event.button.id == "accept":
            self.action_accept()
        elif event.button.id == "decline":
            self.action_decline()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("accept", "decline"):
            pending = self.decision is not None and not self.decision.done()
            return True if pending else None  # None hides the key until there is an offer
        return True

    def _form(self, show: bool, text: str = "") -> None:
        self.query_one("#form").display = show
        self.query_one("#from", Static).update(text)
        self.query_one("#from").display = not show
        if show:
            self.query_one("#target", Input).focus()

    def _state(self, text: str) -> None:
        self.query_one("#state", Static).update(text)

    def action_go(self) -> None:
        if self.running:
            return
        text = self.query_one("#target", Input).value.strip()
        if not text:
            self.notify("Type the code or paste the link first.", severity="warning")
            return
        dest = Path(self.query_one("#dest", Input).value.strip() or ".").expanduser()
        self.running = True
        self._form(False, f"From {text}  into  {dest}")
        self.query_one("#result", Static).update("")
        self._state("Connecting to the sender…")
        self.run_receive(text, dest)

    @work(exclusive=True)
    async def run_receive(self, text: str, dest: Path) -> None:
        try:
            await self.service.receive(text, dest, self._on_event, self._decide, self._password)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.post_message(TransferFailed(plain_error(exc)))

    def _on_event(self, ev: Any) -> None:
        self.post_message(TransferEvent(ev))

    async def _decide(self, offer: Offer) -> bool:
        self.decision = asyncio.get_running_loop().create_future()
        try:
            self.accepted = await self.decision
            return self.accepted
        finally:
            self.decision = None
            self.refresh_bindings()

    async def _password(self) -> str:
        answer: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

        def done(value: str | None) -> None:
            if not answer.done():
                answer.set_result(value)

        self.app.push_screen(PasswordScreen(), done)
        value = await answer
        if value is None:
            raise DeclinedError("no password", user_message="No password given: not received.")
        return value

    def on_transfer_event(self, message: TransferEvent) -> None:
        ev = message.event
        if isinstance(ev, Paired_):
            self._state("Paired with the sender. Connecting…")
        elif isinstance(ev, Connected):
            self._state(f"Connected ({ev.via}). Waiting for the offer…")
        elif isinstance(ev, Retrying):
            self._state(f"Connection to the relay lost; continuing ({ev.attempt}/{ev.of})…")
        elif isinstance(ev, Reconnecting):
            self._state(
                f"Connection lost; reconnecting through the server (attempt {ev.attempt}, "
                f"{int(ev.until)} s left). Verified data is kept."
            )
        elif isinstance(ev, PathMoved):
            self._state(f"Receiving over {ev.new} (moved from {ev.old}: faster).")
        elif isinstance(ev, Offer):
            self._show_offer(ev)
            if self.accepted:  # a reconnection round offers the same files again
                self._state("Reconnected: continuing where the transfer stopped…")
        elif isinstance(ev, Progress):
            if self.running:
                bar = self.query_one("#bar", ProgressBar)
                bar.display = True
                bar.update(total=max(ev.total, 1), progress=ev.bytes)
                self.query_one("#rate", Static).update(rate_line(ev))
        elif isinstance(ev, Done):
            self.running = False
            self.done = ev
            rate = ev.sent_bytes / ev.seconds if ev.seconds > 0 else 0.0
            where = ev.dest.resolve() if ev.dest else "."
            self._state(f"Done ({ev.via}): every file verified (SHA-256).")
            self.query_one("#previews").display = False
            received = Content(
                f"Received {ev.files} files ({human_bytes(ev.bytes)}) in "
                f"{human_duration(ev.seconds)} at {human_rate(rate)}.\nSaved in {where}\n"
            )
            self.query_one("#result", Static).update(
                Content.assemble(received, _completeness(ev.completeness), "Escape: back.")
            )
            self.query_one("#result").scroll_visible()

    def _show_offer(self, offer: Offer) -> None:
        try:
            lines = format_summary(offer.summary)
        except Exception:  # a hostile summary must not stop the offer from being shown
            lines = ["(no study summary)"]
        free = self.service.free_space(offer.dest)
        need = offer.bytes - offer.held
        lines.insert(0, f"Offered: {offer.files} files, {human_bytes(offer.bytes)}")
        if offer.held:
            lines.append(f"Resuming: {human_bytes(offer.held)} already received and verified.")
        space = "unknown" if free is None else human_bytes(free)
        lines.append(f"Destination: {offer.dest.resolve()}  (free: {space})")
        if free is not None and free < need:
            lines.append("Warning: not enough free space at the destination.")
        self.query_one("#offer", Static).update("\n".join(lines))
        strip = _previews(offer, color=not self.app.no_color)
        previews = self.query_one("#previews", Static)
        previews.update(strip if strip is not None else "")
        previews.display = strip is not None
        self._state("Accept and save? (a = accept, d = decline)")
        self.query_one("#decide").display = True
        self.query_one("#accept", Button).focus()
        self.refresh_bindings()

    def _answer(self, value: bool) -> None:
        if self.decision is None or self.decision.done():
            return
        self.decision.set_result(value)
        self.refresh_bindings()
        self.query_one("#decide").display = False
        self._state("Receiving…" if value else "Declining…")

    def action_accept(self) -> None:
        self._answer(True)

    def action_decline(self) -> None:
        self._answer(False)

    def on_transfer_failed(self, message: TransferFailed) -> None:
        self.running = False
        self.error = message.text
        self.query_one("#decide").display = False
        self._state(f"Not received: {message.text}")
        self.notify(message.text, severity="error", title="Receive failed")
        self._form(True)

    def action_cancel(self) -> None:
        if self.running:
            self.running = False
            self.workers.cancel_node(self)
            self.query_one("#decide").display = False
            self._state(
                "Cancelled. Verified parts are kept aside (not as finished files); "
                "receive again into the same folder to resume."
            )
            self.notify("Transfer cancelled.", severity="warning")
            for widget in ("#target", "#dest", "#go"):
                self.query_one(widget).disabled = False
        else:
            self.app.pop_screen()
