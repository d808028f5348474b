"""History: the disclosure log, and the user's relay links (status, access log, delete)."""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Header, Label, Static

from peer.session import human_bytes
from tui.screens.base import ConfirmScreen, ServiceScreen, plain_error

__all__ = ["HistoryScreen"]


def _when(t: object, fmt: str = "%Y-%m-%d %H:%M") -> str:
    try:
        return time.strftime(fmt, time.localtime(float(t)))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return "-"


class HistoryScreen(ServiceScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("l", "access_log", "Access log"),
        Binding("d", "delete", "Delete link"),
        Binding("u", "refresh", "Update"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.drop_ids: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Vertical(id="history"):
            yield Label("Sent (disclosure log)", classes="title")
            yield DataTable(id="log", cursor_type="row", zebra_stripes=True)
            yield Label(
                "Relay links  (Tab to move here; l: access log, d: delete)", classes="title"
            )
            yield DataTable(id="drops", cursor_type="row", zebra_stripes=True)
            yield Static("", id="drop-log")
        yield Footer()

    def on_mount(self) -> None:
        log = self.query_one("#log", DataTable)
        log.add_columns("When", "How", "To", "Outcome", "What")
        drops = self.query_one("#drops", DataTable)
        drops.add_columns("Link id", "State", "Downloads", "Expires", "Size")
        self.action_refresh()

    def action_refresh(self) -> None:
        log = self.query_one("#log", DataTable)
        log.clear()
        try:
            rows = self.service.disclosures()
        except Exception as exc:
            self.notify(plain_error(exc), severity="error")
            rows = []
        for r in reversed(rows):
            log.add_row(
                _when(r.get("time"), "%m-%d %H:%M"),
                str(r.get("how", "")),
                str(r.get("to", "")).removeprefix("link "),
                str(r.get("outcome", "")),
                f"{r.get('files', 0)} files, {human_bytes(int(r.get('bytes', 0) or 0))}",
            )
        if not rows:
            log.add_row("-", "", "nothing sent yet", "", "")
        self.load_drops()

    @work(exclusive=True, group="drops")
    async def load_drops(self) -> None:
        table = self.query_one("#drops", DataTable)
        try:
            rows = await self.service.drops()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.notify(plain_error(exc), severity="error", title="Relay links")
            return
        table.clear()
        self.drop_ids = [str(r["id"]) for r in rows]
        for r in rows:
            table.add_row(
                str(r["id"]),
                str(r.get("state", "")),
                f"{r.get('downloads', 0)}/{r.get('max_downloads', 0)}",
                _when(r.get("expires"), "%y-%m-%d %H:%M"),
                human_bytes(int(r.get("bytes", 0) or 0)),
            )
        if not rows:
            table.add_row("-", "no relay links yet", "", "", "")

    def _selected(self) -> str | None:
        table = self.query_one("#drops", DataTable)
        if not self.drop_ids or table.cursor_row < 0 or table.cursor_row >= len(self.drop_ids):
            self.notify("No relay link selected.", severity="warning")
            return None
        return self.drop_ids[table.cursor_row]

    def action_access_log(self) -> None:
        drop_id = self._selected()
        if drop_id is not None:
            self.show_log(drop_id)

    @work(exclusive=True, group="drop-log")
    async def show_log(self, drop_id: str) -> None:
        try:
            events = await self.service.drop_log(drop_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.notify(plain_error(exc), severity="error", title="Access log")
            return
        lines = [f"Access log of {drop_id}:"] + [
            f"  {_when(e.get('time'), '%Y-%m-%d %H:%M:%S')}  {e.get('event', ''):20} "
            f"{e.get('address') or ''}"
            for e in events
        ]
        self.query_one("#drop-log", Static).update("\n".join(lines))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "drops":
            self.action_access_log()

    def action_delete(self) -> None:
        drop_id = self._selected()
        if drop_id is None:
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.delete_drop(drop_id)

        self.app.push_screen(
            ConfirmScreen(f"Delete relay link {drop_id}? It stops working for everyone."),
            confirmed,
        )

    @work(exclusive=True, group="drop-delete")
    async def delete_drop(self, drop_id: str) -> None:
        try:
            await self.service.drop_delete(drop_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.notify(plain_error(exc), severity="error", title="Delete")
            return
        self.notify(f"Deleted {drop_id}: the link no longer works.")
        self.load_drops()
