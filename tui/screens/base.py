"""Messages and helpers shared by the screens."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Input, Label

from peer.session import BeamError, Progress, human_bytes, human_duration, human_rate
from tui.service import TransferService

__all__ = [
    "ConfirmScreen",
    "PasswordScreen",
    "ServiceScreen",
    "TransferEvent",
    "TransferFailed",
    "parse_duration",
    "plain_error",
    "rate_line",
]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``2m``, ``12h``, ``7d`` → seconds (ValueError otherwise)."""
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:])
    value = float(t[:-1] if unit is not None else t) * (unit or 1.0)
    if not 0 < value < 10 * 365 * 86400:
        raise ValueError(text)
    return value


def plain_error(exc: BaseException) -> str:
    """What the user reads: a BeamError's user message, never a traceback."""
    if isinstance(exc, BeamError):
        return exc.user_message
    return f"Internal error ({type(exc).__name__}); run scanbeam -v from a shell for details."


def rate_line(ev: Progress) -> str:
    eta = (ev.total - ev.bytes) / ev.rate if ev.rate > 0 else float("nan")
    return (
        f"{human_bytes(ev.bytes)} / {human_bytes(ev.total)} · {human_rate(ev.rate)}"
        f" · ETA {human_duration(eta)}"
    )


class TransferEvent(Message):
    """A ``peer.session`` event, delivered to the screen that started the work."""

    def __init__(self, event: Any) -> None:
        super().__init__()
        self.event = event


class TransferFailed(Message):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class ServiceScreen(Screen[None]):
    """A screen with access to the app's TransferService."""

    @property
    def service(self) -> TransferService:
        service: TransferService = getattr(self.app, "service")  # noqa: B009
        return service


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question)
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class PasswordScreen(ModalScreen[str | None]):
    """Ask for the password of a protected relay link."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("This link is protected: enter the password from the sender.")
            yield Input(password=True, id="password", placeholder="password")
            with Horizontal(classes="buttons"):
                yield Button("OK", id="ok", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value or None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self.dismiss(self.query_one("#password", Input).value or None)
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
