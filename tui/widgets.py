"""Small widgets and helpers shared by the screens."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.widgets import DirectoryTree
from textual.widgets._directory_tree import DirEntry
from textual.widgets._tree import TreeNode

__all__ = ["DicomTree", "big_code", "has_dicom", "qr_text"]

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
