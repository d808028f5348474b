"""The dependency rule (STYLE.md §1): the TUI imports only ``peer.session`` from the core."""

from __future__ import annotations

import ast
from pathlib import Path

TUI = Path(__file__).resolve().parents[2] / "tui"
FORBIDDEN_ROOTS = ("signaling", "relay")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "peer":
                names += [f"peer.{a.name}" for a in node.names]
            else:
                names.append(node.module)
    return names


def test_tui_imports_only_the_public_session_api() -> None:
    files = sorted(TUI.rglob("*.py"))
    assert len(files) >= 5
    bad = []
    for path in files:
        for name in _imports(path):
            root = name.split(".")[0]
            if root == "peer" and name != "peer.session":
                bad.append(f"{path.relative_to(TUI.parent)}: {name}")
            if root in FORBIDDEN_ROOTS:
                bad.append(f"{path.relative_to(TUI.parent)}: {name}")
    assert not bad, "tui must import only peer.session:\n" + "\n".join(bad)
