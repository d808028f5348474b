"""A fake TransferService with fixed data, for deterministic snapshots and quick flows."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from peer import session
from tui.service import Decide, OnEvent, Password, SendOptions

CODE = "7-guitarist-revenge"
URL = "http://127.0.0.1:8000/r#7.q3FkZ0lZ2n1vT8yS1k3x9bq5mV0wR2cE4uJ6pA8sD0f"
LINK = "http://127.0.0.1:8000/d/AbCdEfGhIjKlMnOpQrStUv#x9bq5mV0wR2cE4uJ6pA8sD0fq3FkZ0lZ2n1vT8yS1k3"

SUMMARY: dict[str, Any] = {
    "dicom_files": 42,
    "other_files": 1,
    "bytes": 21_500_000,
    "studies": [
        {
            "patient_name": "DOE, JANE",
            "patient_id": "SB-0001",
            "patient_birth_date": "1970-01-01",
            "patient_sex": "F",
            "study_date": "2024-03-05",
            "study_description": "CT CHEST W/O CONTRAST",
            "accession": "A12345",
            "modalities": ["CT"],
            "series_count": 2,
            "image_count": 42,
            "bytes": 21_400_000,
            "series": [
                {
                    "series_uid": "1.2.826.0.1.3680043.8.498.101",
                    "number": 1,
                    "modality": "CT",
                    "description": "Axial 5mm",
                    "images": 40,
                    "bytes": 21_000_000,
                    "rows": 512,
                    "cols": 512,
                    "transfer_syntaxes": [],
                },
                {
                    "series_uid": "1.2.826.0.1.3680043.8.498.102",
                    "number": 2,
                    "modality": "CT",
                    "description": "Scout",
                    "images": 2,
                    "bytes": 400_000,
                    "rows": 256,
                    "cols": 256,
                    "transfer_syntaxes": [],
                },
            ],
        }
    ],
    "other": ["report.pdf"],
}


def _phantom_png(h: int, w: int, scout: bool) -> bytes:
    """A fixed grey CT-like picture (body, lungs, spine), as a preview PNG would be."""
    y, x = np.mgrid[0:h, 0:w]
    cy, cx = h / 2, w / 2
    img = np.zeros((h, w))
    if scout:  # a frontal view: a long body with two lungs
        img[((x - cx) / (w * 0.4)) ** 2 + ((y - cy) / (h * 0.48)) ** 2 <= 1] = 0.45
        for side in (-1, 1):
            lung = ((x - cx - side * w * 0.17) / (w * 0.12)) ** 2 + (
                (y - h * 0.3) / (h * 0.15)
            ) ** 2
            img[lung <= 1] = 0.08
        img[(abs(x - cx) < w * 0.04) & (y > h * 0.1) & (y < h * 0.9)] = 0.95
    else:  # an axial slice
        img[((x - cx) / (w * 0.45)) ** 2 + ((y - cy) / (h * 0.33)) ** 2 <= 1] = 0.5
        for side in (-1, 1):
            lung = ((x - cx - side * w * 0.2) / (w * 0.15)) ** 2 + ((y - cy) / (h * 0.22)) ** 2
            img[lung <= 1] = 0.05
        img[((x - cx) ** 2 + (y - h * 0.72) ** 2) <= (w * 0.06) ** 2] = 1.0
    buf = io.BytesIO()
    Image.fromarray((img * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


PREVIEWS = (
    session.SeriesPreview("1.2.826.0.1.3680043.8.498.101", _phantom_png(128, 128, False), 128, 128),
    session.SeriesPreview("1.2.826.0.1.3680043.8.498.102", _phantom_png(128, 64, True), 64, 128),
)
COMPLETE: dict[str, Any] = {
    "status": "complete",
    "missing": 0,
    "problems": [],
    "series": 2,
    "images": 42,
    "missing_series": [],
}
SIZES = [(f"CT/SE001/IM{i:04d}.dcm", 525_000) for i in range(1, 41)] + [
    ("CT/SE002/IM0001.dcm", 200_000),
    ("CT/SE002/IM0002.dcm", 200_000),
    ("CT/report.pdf", 100_000),
]
TOTAL = sum(s for _, s in SIZES)


def offer_fields(offer: session.Offer, held: int) -> tuple[Any, ...]:
    return (offer.files, offer.bytes, held, offer.summary, offer.paths, offer.dest, offer.previews)


class FakeService:
    """``stage`` says how far a send or receive goes before it waits forever."""

    def __init__(self, stage: str = "done", completeness: dict[str, Any] | None = COMPLETE) -> None:
        self.stage = stage
        self.completeness = completeness
        self.server = "http://127.0.0.1:8000"
        self.sent: list[tuple[list[Path], SendOptions]] = []
        self.deleted: list[str] = []
        self.reconnecting = asyncio.Event()
        self.resume = asyncio.Event()

    def summarize(self, paths: Sequence[Path]) -> tuple[dict[str, Any], list[tuple[str, int]]]:
        return SUMMARY, SIZES

    async def _hold(self) -> None:
        await asyncio.Event().wait()

    async def send(
        self, paths: Sequence[Path], on_event: OnEvent, options: SendOptions
    ) -> session.Done | session.LinkReady:
        self.sent.append((list(paths), options))
        if self.stage == "link" or options.relay == "always":
            on_event(session.RelayFallback("Nobody joined in time: uploading to the relay."))
            on_event(session.Progress(TOTAL, TOTAL, 30e6))
            ready = session.LinkReady(LINK, "AbCdEfGhIjKlMnOpQrStUv", 1.8e9, 1, True)
            on_event(ready)
            return ready
        on_event(session.CodeReady(CODE, URL))
        if self.stage == "code":
            await self._hold()
        on_event(session.Paired_("code"))
        on_event(session.Connected("direct"))
        on_event(session.Progress(8_000_000, TOTAL, 12_500_000.0))
        if self.stage == "progress":
            await self._hold()
        if self.stage == "fail":
            raise session.DeclinedError("declined", user_message="The receiver declined.")
        done = session.Done("direct", len(SIZES), TOTAL, 2.0, TOTAL)
        on_event(done)
        return done

    async def receive(
        self, text: str, dest: Path, on_event: OnEvent, decide: Decide, password: Password
    ) -> session.Done:
        if text.startswith("bad"):
            session.parse_target(text, self.server)  # raises UnknownCodeError
        on_event(session.Paired_("code"))
        on_event(session.Connected("direct"))
        offer = session.Offer(
            len(SIZES), TOTAL, 0, SUMMARY, tuple(p for p, _ in SIZES), dest, PREVIEWS
        )
        on_event(offer)
        if not await decide(offer):
            raise session.DeclinedError("declined", user_message="You declined the transfer.")
        on_event(session.Progress(TOTAL // 2, TOTAL, 25e6))
        if self.stage == "reconnect":  # a drop, then a reconnection round offers again
            on_event(session.Reconnecting(1, "the connection dropped", 290.0))
            self.reconnecting.set()
            await self.resume.wait()
            on_event(session.Paired_("rejoin"))
            on_event(session.Offer(*offer_fields(offer, held=TOTAL // 2)))
            await self._hold()
        if self.stage == "progress":
            await self._hold()
        done = session.Done(
            "direct", len(SIZES), TOTAL, 1.0, TOTAL, dest=dest, completeness=self.completeness
        )
        on_event(done)
        return done

    def free_space(self, dest: Path) -> int | None:
        return 250_000_000_000

    def disclosures(self) -> list[dict[str, Any]]:
        return [
            {
                "time": 1.7e9,
                "how": "direct",
                "to": "code 7",
                "outcome": "delivered",
                "files": 43,
                "bytes": TOTAL,
            },
            {
                "time": 1.7e9 + 3600,
                "how": "relay",
                "to": "link AbCdEfGhIjKlMnOpQrStUv",
                "outcome": "uploaded",
                "files": 43,
                "bytes": TOTAL,
            },
        ]

    async def drops(self) -> list[dict[str, Any]]:
        return [
            {
                "id": "AbCdEfGhIjKlMnOpQrStUv",
                "state": "available",
                "downloads": 0,
                "max_downloads": 1,
                "expires": 1.8e9,
                "bytes": TOTAL,
                "files": 43,
            }
        ]

    async def drop_log(self, drop_id: str) -> list[dict[str, Any]]:
        return [
            {"time": 1.7e9 + 3600, "event": "created", "address": "127.0.0.1"},
            {"time": 1.7e9 + 3700, "event": "uploaded", "address": "127.0.0.1"},
        ]

    async def drop_delete(self, drop_id: str) -> None:
        self.deleted.append(drop_id)
