"""The protocol core imports no network, async or UI library (STYLE.md §1)."""

from __future__ import annotations

import subprocess
import sys

# Top-level packages that do I/O, networking or async work, or belong to other layers.
FORBIDDEN = (
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "aiortc",
    "aioice",
    "websockets",
    "textual",
    "uvloop",
    "signaling",
    "relay",
    "tui",
)
# Submodules that do network I/O (urllib.parse, pulled in by the import system, is fine).
FORBIDDEN_MODULES = ("http.client", "urllib.request")


def test_core_imports_no_io_library() -> None:
    code = (
        "import sys\n"
        "import peer.proto.handshake, peer.proto.sender, peer.proto.receiver\n"
        "import peer.proto.manifest, peer.proto.records, peer.proto.keys\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}"
        f" or m in {FORBIDDEN_MODULES!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
