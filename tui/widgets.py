"""Small widgets and helpers shared by the screens."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from rich.columns import Columns
from rich.console import Group, RenderableType
from rich.style import Style
from rich.text import Text
from textual.widgets import DirectoryTree
from textual.widgets._directory_tree import DirEntry
from textual.widgets._tree import TreeNode

__all__ = ["DicomTree", "big_code", "has_dicom", "preview_strip", "qr_text", "thumbnail"]

_SCAN_LIMIT = 64  # entries looked at per folder (the picker must stay instant)


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


@lru_cache(maxsize=4096)
def has_dicom(path: Path, depth: int = 2) -> bool:
    """True when ``path`` (a folder) holds a DICOM file within ``depth`` levels."""
    try:
        with os.scandir(path) as it:
            entries = [e for _, e in zip(range(_SCAN_LIMIT), it, strict=False)]
    except OSError:
        return False
    subdirs = []
    for e in entries:
        try:
            if e.is_file() and _is_dicom(Path(e.path)):
                return True
            if e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
                subdirs.append(Path(e.path))
        except OSError:
            continue
    return depth > 0 and any(has_dicom(d, depth - 1) for d in subdirs[:16])


class DicomTree(DirectoryTree):
    """A directory tree that tags folders holding DICOM and shows marked entries."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.marked: list[Path] = []

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        return [p for p in paths if not p.name.startswith(".")]

    def render_label(self, node: TreeNode[DirEntry], base_style: Any, style: Any) -> Text:
        label = super().render_label(node, base_style, style)
        if node.data is None or node is self.root:
            return label
        path = node.data.path
        if path in self.marked:
            label = Text.assemble(("[x] ", "bold"), label)
        if node.data.path.is_dir() and has_dicom(Path(path)):
            label.append("  (DICOM)", style="bold")
        return label

    def toggle_mark(self) -> Path | None:
        node = self.cursor_node
        if node is None or node.data is None or node is self.root:
            return None
        path = Path(node.data.path)
        if path in self.marked:
            self.marked.remove(path)
        else:
            self.marked.append(path)
        node.refresh()
        return path


def qr_text(url: str) -> str:
    """The QR code of ``url`` in half blocks (light modules drawn, as in the CLI)."""
    import qrcode

    qr = qrcode.QRCode(border=1, error_correction=qrcode.constants.ERROR_CORRECT_L)
    qr.add_data(url)
    qr.make(fit=True)
    buf = io.StringIO()
    qr.print_ascii(out=buf, invert=True)
    return buf.getvalue().rstrip("\n")


def big_code(code: str) -> Text:
    """The code spaced out in bold capitals, readable across a room or over the phone."""
    return Text("  ".join(" ".join(part.upper()) for part in code.split("-")), style="bold")


_SHADES = " ░▒▓█"  # NO_COLOR: one character per cell, by brightness


def thumbnail(png: bytes, cols: int = 16, rows: int = 8, *, color: bool = True) -> Text:
    """A PNG drawn in text: each cell is two pixels, the upper half block "▀" in the top
    pixel's colour on the bottom pixel's colour (24-bit). Without colour, a brightness ramp.

    The image is area-averaged to fit ``cols`` x ``2 * rows`` pixels, keeping its aspect
    (a terminal cell is about twice as tall as wide, so two pixels per cell are square).

    Raises:
        ValueError: ``png`` is not a decodable image.
    """
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        if im.width > 256 or im.height > 256:
            raise ValueError("thumbnail too large")
        rgb = im.convert("RGB")
    scale = min(cols / rgb.width, 2 * rows / rgb.height, 1.0)
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    small = rgb.resize(size, Image.Resampling.BOX) if size != rgb.size else rgb
    width, height = small.size
    pixels = [tuple(int(v) for v in px) for px in np.asarray(small).reshape(-1, 3)]
    text = Text(no_wrap=True, overflow="crop")
    for y in range(0, height, 2):
        for x in range(width):
            top = pixels[y * width + x]
            bottom = pixels[(y + 1) * width + x] if y + 1 < height else None
            if not color:
                both = [top] if bottom is None else [top, bottom]
                level = sum(sum(p) for p in both) / (3 * 255 * len(both))
                text.append(_SHADES[min(len(_SHADES) - 1, int(level * len(_SHADES)))])
                continue
            style = Style(color=f"#{top[0]:02x}{top[1]:02x}{top[2]:02x}")
            if bottom is not None:
                style += Style(bgcolor=f"#{bottom[0]:02x}{bottom[1]:02x}{bottom[2]:02x}")
            text.append("▀", style)
        if y + 2 < height:
            text.append("\n")
    return text


def preview_strip(
    items: Iterable[tuple[bytes, str, str]],
    *,
    cols: int = 16,
    rows: int = 8,
    color: bool = True,
) -> RenderableType | None:
    """Thumbnails side by side, each over two label lines (e.g. "Series 1 CT", the
    series description). An image that does not decode is left out; None if none does."""
    cells: list[RenderableType] = []
    for png, head, description in items:
        try:
            image = thumbnail(png, cols, rows, color=color)
        except Exception:  # display only: a bad thumbnail never stops the offer
            continue
        width = max(cols, 12)
        label = Text(head, style="bold", no_wrap=True, overflow="ellipsis")
        label.truncate(width, overflow="ellipsis")
        desc = Text(description, no_wrap=True, overflow="ellipsis")
        desc.truncate(width, overflow="ellipsis")
        cells.append(Group(image, label, desc))
    if not cells:
        return None
    return Columns(cells, padding=(0, 2), width=max(cols, 12))
