"""`make demo` runs `python -m peer.demo`: it must work end to end, as a newcomer runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import timeout


def test_the_demo_sends_and_verifies_the_sample_study(tmp_path: Path) -> None:
    env = {**os.environ, "SCANBEAM_HOME": str(tmp_path / "home")}  # keep the user's log clean
    proc = subprocess.run(
        [sys.executable, "-m", "peer.demo"],
        capture_output=True,
        text=True,
        timeout=timeout(240),
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Completeness: complete — 3 series, 59 images" in proc.stdout
    assert "Demo OK: 60 files (30.2 MB) arrived byte-identical and verified" in proc.stdout
    assert "Traceback" not in proc.stderr
