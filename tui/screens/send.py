"""Send: pick files and folders, review the study and options, then the transfer."""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_right
from itertools import accumulate
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.widgets import (
    Button,
    Checkbox,
    Footer,
    Header,
    Input,
    Label,
    ProgressBar,
    Select,
    Static,
)

from peer.session import (
    CodeReady,
    Connected,
    Done,
    LinkReady,
    Paired_,
    PathMoved,
    Progress,
    Reconnecting,
    RelayFallback,
    format_summary,
    human_bytes,
    human_duration,
    human_rate,
)
from tui.screens.base import (
    ServiceScreen,
    TransferEvent,
    TransferFailed,
    parse_duration,
    plain_error,
    rate_line,
)
from tui.service import SendOptions
from tui.widgets import DicomTree, big_code, qr_text

__all__ = ["PickScreen", "ReviewScreen", "SendScreen"]


class PickScreen(ServiceScreen):
    """Mark files and folders in a directory tree (folders holding DICOM are tagged)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "mark", "Mark/unmark", priority=True),
        Binding("n", "next", "Next"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def compose(self) -> ComposeResult:
        start: Path = getattr(self.app, "start", Path.cwd())
        yield Header(show_clock=False)
        with Horizontal(id="pick"):
            yield DicomTree(start, id="tree")
            with Vertical(id="marked-box"):
                yield Label("To send", classes="title")
                yield Static("Nothing marked yet.\nSpace marks the highlighted entry.", id="marked")
        yield Footer()

    def on_mount(self) -> None:
        tree = self.query_one(DicomTree)
        tree.root.set_label(tree.path.name if isinstance(tree.path, Path) else str(tree.path))
        tree.focus()

    def on_directory_tree_file_selected(self, event: DicomTree.FileSelected) -> None:
        """Enter or a click on a file marks it too (folders: Space)."""
        event.stop()
        self.action_mark()

    def action_mark(self) -> None:
        tree = self.query_one(DicomTree)
        tree.toggle_mark()
        text = "\n".join(p.name + ("/" if p.is_dir() else "") for p in tree.marked)
        self.query_one("#marked", Static).update(text or "Nothing marked yet.")

    def action_next(self) -> None:
        marked = self.query_one(DicomTree).marked
        if not marked:
            self.notify("Mark at least one file or folder with Space.", severity="warning")
            return
        self.app.push_screen(ReviewScreen(list(marked)))


class ReviewScreen(ServiceScreen):
    """The study summary with warnings, and the send options."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "start", "Send", priority=True),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, paths: list[Path]) -> None:
        super().__init__()
        self.paths = paths
        self.summary: dict[str, Any] | None = None
        self.sizes: list[tuple[str, int]] = []

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with VerticalScroll(id="review"):
            yield Static("Reading the study…", id="summary")
            yield Static("", id="warnings")
            with Grid(id="options"):
                yield Label("Relay")
                yield Select(
                    [
                        ("If nobody joins", "auto"),
                        ("At once", "always"),
                        ("Never", "never"),
                    ],
                    value="auto",
                    allow_blank=False,
                    id="relay",
                    compact=True,
                )
                yield Label("Wait")
                yield Input("2m", id="wait", compact=True, tooltip="wait for the receiver")
                yield Label("Expires")
                yield Input("7d", id="expires", compact=True)
                yield Label("Downloads")
                yield Input("1", id="max-downloads", type="integer", compact=True)
                yield Label("Password")
                yield Input("", id="password", password=True, placeholder="none", compact=True)
                yield Label("De-identify")
                yield Checkbox("not available yet", disabled=True, id="deid", compact=True)
            yield Button(
                "Send  (Ctrl+S)", id="start", variant="primary", disabled=True, compact=True
            )
        yield Footer()

    def on_mount(self) -> None:
        self.read_study()

    @work(exclusive=True, thread=True)
    def read_study(self) -> None:
        try:
            summary, sizes = self.service.summarize(self.paths)
        except Exception as exc:
            self.app.call_from_thread(self._study_failed, plain_error(exc))
            return
        self.app.call_from_thread(self._study_ready, summary, sizes)

    def _study_failed(self, text: str) -> None:
        self.query_one("#summary", Static).update(f"Cannot read the files: {text}")
        self.notify(text, severity="error", title="Cannot read")

    def _study_ready(self, summary: dict[str, Any], sizes: list[tuple[str, int]]) -> None:
        self.summary, self.sizes = summary, sizes
        self.query_one("#summary", Static).update("\n".join(format_summary(summary)))
        warnings = []
        dicom = int(summary.get("dicom_files") or 0)
        other = int(summary.get("other_files") or 0)
        if dicom == 0:
            warnings.append("Warning: no DICOM files found; this does not look like a study.")
        elif other:
            warnings.append(f"Warning: {other} file(s) are not DICOM (listed above).")
        for study in summary.get("studies") or []:
            if study.get("image_count", 0) and any(
                not s.get("images") for s in study.get("series") or []
            ):
                warnings.append("Warning: a series has no images; the study may be incomplete.")
        self.query_one("#warnings", Static).update("\n".join(warnings))
        self.query_one("#start", Button).disabled = False

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            self.action_start()

    def options(self) -> SendOptions:
        relay = self.query_one("#relay", Select).value
        try:
            wait = parse_duration(self.query_one("#wait", Input).value)
            expires = parse_duration(self.query_one("#expires", Input).value)
        except ValueError:
            raise ValueError("Wait and expiry are durations such as 30s, 2m, 12h or 7d.") from None
        try:
            downloads = int(self.query_one("#max-downloads", Input).value)
        except ValueError:
            downloads = 0
        if downloads < 1:
            raise ValueError("Downloads must be a whole number of at least 1.")
        password = self.query_one("#password", Input).value or None
        return SendOptions(
            relay=str(relay),
            wait=wait,
            expires_in=expires,
            max_downloads=downloads,
            password=password,
        )

    def action_start(self) -> None:
        if self.summary is None:
            self.notify("Still reading the study…", severity="warning")
            return
        try:
            options = self.options()
        except ValueError as exc:
            self.notify(str(exc), severity="error", title="Check the options")
            return
        self.app.push_screen(SendScreen(self.paths, self.sizes, options))


class SendScreen(ServiceScreen):
    """The code and QR code, the live state, progress, and the receipt or the link."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel/Back"),
        Binding("c", "copy", "Copy link"),
    ]

    def __init__(self, paths: list[Path], sizes: list[tuple[str, int]], options: SendOptions):
        super().__init__()
        self.paths = paths
        self.sizes = sizes
        self.options = options
        self.ends = list(accumulate(size for _, size in sizes))
        self.url = ""
        self.code = ""
        self.link = ""
        self.done: Done | None = None
        self.error = ""
        self.running = False
        self.phase = "starting"
        self.via = ""

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Horizontal(id="send"):
            with Vertical(id="send-left"):
                yield Static("Starting…", id="state")
                yield Static("", id="code")
                yield Static("", id="link")
                yield ProgressBar(show_eta=False, id="bar")
                yield Static("", id="rate")
                yield Static("", id="file")
                yield Static("", id="receipt")
            yield Static("", id="qr")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#code").display = False
        self.query_one("#bar").display = False
        self.running = True
        self.run_send()

    @work(exclusive=True)
    async def run_send(self) -> None:
        try:
            await self.service.send(self.paths, self._on_event, self.options)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.post_message(TransferFailed(plain_error(exc)))

    def _on_event(self, ev: Any) -> None:
        self.post_message(TransferEvent(ev))

    def _state(self, text: str) -> None:
        self.query_one("#state", Static).update(text)

    def on_transfer_event(self, message: TransferEvent) -> None:
        ev = message.event
        if isinstance(ev, CodeReady):
            self.url, self.code = ev.url, ev.code
            self._state("Waiting for the receiver… (they type the code or scan the QR code)")
            self.query_one("#code", Static).update(big_code(ev.code))
            self.query_one("#code").display = True
            self.query_one("#link", Static).update(f"scanbeam receive {ev.code}\n{ev.url}")
            self.query_one("#qr", Static).update(qr_text(ev.url))
        elif isinstance(ev, Paired_):
            self._state("Paired: the receiver has the right code. Connecting…")
        elif isinstance(ev, Reconnecting):
            self._state(
                f"Connection lost; reconnecting through the server (attempt {ev.attempt}, "
                f"{int(ev.until)} s left). What the receiver verified is not sent again."
            )
        elif isinstance(ev, PathMoved):
            self.via = ev.new
            self._state(f"Sending over {ev.new} (moved from {ev.old}: faster).")
        elif isinstance(ev, Connected):
            self.phase, self.via = "connected", ev.via
            self._state(f"Connected ({ev.via}). Waiting for the receiver to accept…")
        elif isinstance(ev, RelayFallback):
            self._state(ev.reason or "Uploading the encrypted study to the relay…")
            self.query_one("#code").display = False
            self.query_one("#link", Static).update("")
            self.query_one("#qr", Static).update("")
        elif isinstance(ev, Progress):
            self._progress(ev)
        elif isinstance(ev, Done):
            self.running = False
            self.done = ev
            self._finished()
            self.query_one("#code").display = False
            self.query_one("#qr", Static).update("")
            self.query_one("#link", Static).update("")
            rate = ev.sent_bytes / ev.seconds if ev.seconds > 0 else 0.0
            self._state(f"Verified ({ev.via}): the receiver confirmed every file's SHA-256.")
            self.query_one("#receipt", Static).update(
                f"Sent {ev.files} files ({human_bytes(ev.bytes)}) in "
                f"{human_duration(ev.seconds)} at {human_rate(rate)}.\nEscape: back."
            )
        elif isinstance(ev, LinkReady):
            self.running = False
            self._finished()
            self.url = self.link = ev.url
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(ev.expires))
            extra = "\nThe recipient also needs the password." if ev.password else ""
            self._state("Link ready: the encrypted study is on the relay.")
            self.query_one("#link", Static).update(ev.url)
            self.query_one("#receipt", Static).update(
                f"Expires {when}, {ev.max_downloads} download(s).{extra}\n"
                "c: copy the link · Escape: back"
            )
            self.query_one("#qr", Static).update(qr_text(ev.url))

    def _finished(self) -> None:
        self.query_one("#rate", Static).update("")
        self.query_one("#file", Static).update("")
        self.query_one("#bar").display = False

    def _progress(self, ev: Progress) -> None:
        if not self.running:
            return
        if self.phase == "connected" and ev.bytes:
            self.phase = "sending"
            self._state(f"Sending ({self.via})…")
        bar = self.query_one("#bar", ProgressBar)
        bar.display = True
        bar.update(total=max(ev.total, 1), progress=ev.bytes)
        self.query_one("#rate", Static).update(rate_line(ev))
        if self.sizes:
            ix = min(bisect_right(self.ends, ev.bytes), len(self.sizes) - 1)
            self.query_one("#file", Static).update(
                f"File {ix + 1} of {len(self.sizes)}: {self.sizes[ix][0]}"
            )

    def on_transfer_failed(self, message: TransferFailed) -> None:
        self.running = False
        self.error = message.text
        self._state(f"Failed: {message.text}")
        self.query_one("#qr", Static).update("")
        self.notify(message.text, severity="error", title="Send failed")

    def action_copy(self) -> None:
        if not self.url:
            self.notify("No link yet.", severity="warning")
            return
        self.app.copy_to_clipboard(self.url)
        self.notify("Link copied to the clipboard.")

    def action_cancel(self) -> None:
        if self.running:
            self.running = False
            self.workers.cancel_node(self)
            self._state("Cancelled. Send again to resume; nothing is sent twice.")
            self.query_one("#qr", Static).update("")
            self.notify("Transfer cancelled.", severity="warning")
        else:
            self.app.pop_screen()
