"""The real entry point (``python -m peer.cli tui``) in a real terminal, driven with tmux."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests import conftest
from tests.conftest import ROOT, Server, timeout


def _keys(session: str, *keys: str, literal: bool = False) -> None:
    """Type into the pane, one key at a time, as a person would (the app reads each)."""
    for key in keys:
        _tmux("send-keys", "-t", session, *(["-l"] if literal else []), key)
        time.sleep(0.2)


def _tmux(*args: str) -> str:
    done = subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, f"tmux {args[0]} failed: {done.stderr}"
    return done.stdout


def _screen_shows(session: str, text: str, limit: float = 15.0) -> str:
    deadline = time.monotonic() + timeout(limit)
    screen = ""
    while time.monotonic() < deadline:
        screen = _tmux("capture-pane", "-p", "-t", session)
        if text in screen:
            return screen
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared; the screen was:\n{screen}")


def test_entry_point_under_tmux(server: Server, tmp_path: Path) -> None:
    assert shutil.which("tmux"), "tmux is required for this test (make setup installs it)"
    session = f"scanbeam-{uuid.uuid4().hex[:8]}"
    env = {"PYTHONPATH": str(ROOT), "SCANBEAM_HOME": conftest._HOME, "TERM": "xterm-256color"}
    command = " ".join(
        [
            "env",
            *(f"{k}={shlex.quote(v)}" for k, v in env.items()),
            shlex.quote(sys.executable),
            "-m",
            "peer.cli",
            "tui",
            "--server",
            server.url,
            "--start",
            shlex.quote(str(tmp_path)),
        ]
    )
    _tmux("new-session", "-d", "-x", "100", "-y", "30", "-s", session, command)
    try:
        screen = _screen_shows(session, "Receive with a code or link")
        assert server.url in screen
        _keys(session, "r")
        _screen_shows(session, "Code or link from the sender")
        _keys(session, "not-a-code", literal=True)
        _keys(session, "Enter", "Enter")
        _screen_shows(session, "This is not a ScanBeam code")
        _keys(session, "Escape")
        _screen_shows(session, "Send a study")
        _keys(session, "q")
        deadline = time.monotonic() + timeout(10)
        while time.monotonic() < deadline:
            alive = subprocess.run(["tmux", "has-session", "-t", session], capture_output=True)
            if alive.returncode != 0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the app did not quit on q")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
