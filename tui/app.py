"""ScanBeam's terminal app: send, receive and history screens over ``peer.session``.

Run with ``scanbeam tui`` (or plain ``scanbeam`` in a terminal). Every transfer runs in an
exclusive async worker and reports back with messages; the UI never blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Static

from tui.service import SendOptions, SessionService, TransferService

__all__ = ["HomeScreen", "ScanBeamApp", "SendOptions", "SessionService", "TransferService"]


class HomeScreen(Screen[None]):
    """Start here: send, receive, history."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "send", "Send"),
        Binding("r", "receive", "Receive"),
        Binding("h", "history", "History"),
        Binding("q", "app.quit", "Quit"),
    ]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Vertical(id="home"):
            yield Static(
                "Send a study peer to peer, end-to-end encrypted and verified file by file.",
                id="home-intro",
            )
            yield Button("Send a study  (s)", id="home-send", variant="primary")
            yield Button("Receive with a code or link  (r)", id="home-receive")
            yield Button("History: what was sent, relay links  (h)", id="home-history")
            yield Static(f"Server: {self.app_service.server}", id="home-server")
        yield Footer()

    @property
    def app_service(self) -> TransferService:
        app = self.app
        assert isinstance(app, ScanBeamApp)
        return app.service

    def on_button_pressed(self, event: Button.Pressed) -> None:
        actions = {"home-send": self.action_send, "home-receive": self.action_receive}
        actions.get(event.button.id or "", self.action_history)()

    def action_send(self) -> None:
        from tui.screens.send import PickScreen

        self.app.push_screen(PickScreen())

    def action_receive(self) -> None:
        from tui.screens.receive import ReceiveScreen

        self.app.push_screen(ReceiveScreen())

    def action_history(self) -> None:
        from tui.screens.history import HistoryScreen

        self.app.push_screen(HistoryScreen())


class ScanBeamApp(App[int]):
    """The app; ``service`` does all transfer work (``SessionService`` for real use)."""

    CSS_PATH = "app.tcss"
    TITLE = "ScanBeam"
    SUB_TITLE = "imaging studies, end-to-end encrypted"
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, service: TransferService, *, start: Path | None = None) -> None:
        super().__init__()
        self.service = service
        self.start = start or Path.cwd()

    def on_mount(self) -> None:
        self.push_screen(HomeScreen())
