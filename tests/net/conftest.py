"""Fixtures for the network tests: a small synthetic study, CLI peers inside a Lab.

Every test here is marked ``net``: it needs root and ``make deps-net`` (CI has both; a missing
tool fails the test loudly through :class:`tests.netlab.lab.LabError`).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.conftest import ROOT, Peer, timeout
from tests.netlab.lab import Lab

SIZE = "4MB"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.net)


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("net-study") / "study"
    subprocess.run(
        [sys.executable, "-m", "peer.dicom.synth", str(dest), "--size", SIZE],
        check=True,
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    return dest


def peer_env(lab: Lab, name: str, **extra: str) -> dict[str, str]:
    """Environment for a CLI peer in the lab: its own state folder, no inherited settings."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANBEAM_")}
    env["PYTHONPATH"] = str(ROOT)
    env["SCANBEAM_HOME"] = str(lab.tmp / f"home-{name}")
    env.update(extra)
    return env


def start_peer(lab: Lab, host: str, args: Sequence[str], **env: str) -> Peer:
    proc = lab.popen(host, [lab.scanbeam, *args], env=peer_env(lab, host, **env))
    return Peer(proc)


def transfer(
    lab: Lab,
    url: str,
    study: Path,
    out: Path,
    send_extra: Sequence[str] = (),
    limit: float = 120.0,
    **env: str,
) -> tuple[Peer, Peer]:
    """Send ``study`` from host a to host b through the server at ``url``; both finished."""
    sender = start_peer(
        lab, "a", ["send", str(study), "--server", url, "--json", *send_extra], **env
    )
    code = sender.next_event("code", limit=30)["code"]
    receiver = start_peer(
        lab, "b", ["receive", code, "--server", url, "-o", str(out), "--json", "--yes"], **env
    )
    receiver.finish(limit=timeout(limit))
    sender.finish(limit=timeout(60))
    return sender, receiver
