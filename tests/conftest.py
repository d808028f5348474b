"""Shared fixtures: a real `scanbeam serve` process and helpers to run CLI peers.

Every wait is bounded; SCANBEAM_TEST_TIMEOUT_FACTOR scales them on slow machines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

FACTOR = float(os.environ.get("SCANBEAM_TEST_TIMEOUT_FACTOR", "1"))
ROOT = Path(__file__).resolve().parent.parent


def timeout(seconds: float) -> float:
    return seconds * FACTOR


_HOME = tempfile.mkdtemp(prefix="scanbeam-test-home-")


@pytest.fixture(autouse=True)
def _own_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each test's CLI processes get their own local state (drops, claims, log)."""
    global _HOME
    saved = _HOME
    _HOME = str(tmp_path_factory.mktemp("home"))
    try:
        yield
    finally:
        _HOME = saved


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANBEAM_")}
    env["PYTHONPATH"] = str(ROOT)
    env["SCANBEAM_HOME"] = _HOME
    env.update(extra)
    return env


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[str]
    data: Path = Path()


def start_server(extra_args: list[str] | None = None, **env: str) -> Server:
    data = tempfile.mkdtemp(prefix="scanbeam-test-data-")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "peer.cli",
            "serve",
            "--port",
            "0",
            "--data",
            data,
            *(extra_args or []),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(**env),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        raise AssertionError(
            f"server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        )
    url = line.split("http://", 1)[1].split()[0]
    return Server(url=f"http://{url}", proc=proc, data=Path(data))


def stop_server(srv: Server) -> None:
    srv.proc.terminate()
    try:
        srv.proc.wait(timeout(10))
    except subprocess.TimeoutExpired:
        srv.proc.kill()
    assert srv.proc.stdout is not None and srv.proc.stderr is not None
    srv.proc.stdout.close()
    srv.proc.stderr.close()
    shutil.rmtree(srv.data, ignore_errors=True)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = start_server()
    try:
        yield srv
    finally:
        stop_server(srv)


@dataclass
class Peer:
    proc: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr: str = ""
    stdout: str = ""

    def next_event(self, name: str, limit: float = 30.0) -> dict[str, Any]:
        """Read JSON events until one called ``name`` (bounded)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout(limit)
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            ev: dict[str, Any] = json.loads(line)
            self.events.append(ev)
            if ev["event"] == name:
                return ev
        raise AssertionError(f"no {name!r} event; got {self.events}")

    def finish(self, limit: float = 120.0) -> int:
        try:
            out, err = self.proc.communicate(timeout=timeout(limit))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(f"peer did not finish: {err}") from None
        self.events += [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
        self.stdout = out
        self.stderr = err
        return self.proc.returncode

    def event(self, name: str) -> dict[str, Any]:
        found = [e for e in self.events if e["event"] == name]
        assert found, f"no {name!r} event in {self.events} (stderr: {self.stderr})"
        return found[-1]


_SPAWNED: list[Peer] = []


@pytest.fixture(autouse=True)
def _reap_peers() -> Iterator[None]:
    """A test that failed half-way leaves no process or pipe behind for the next one."""
    yield
    while _SPAWNED:
        peer = _SPAWNED.pop()
        if peer.proc.poll() is None:
            peer.proc.kill()
        with contextlib.suppress(Exception):
            peer.proc.communicate(timeout=10)


def spawn(args: list[str], env: dict[str, str] | None = None) -> Peer:
    proc = subprocess.Popen(
        [sys.executable, "-m", "peer.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env or cli_env(),
    )
    peer = Peer(proc)
    _SPAWNED.append(peer)
    return peer


def start_send(server: Server, paths: list[Path], *extra: str) -> tuple[Peer, str]:
    peer = spawn(["send", *map(str, paths), "--server", server.url, "--json", *extra])
    code = peer.next_event("code")["code"]
    return peer, code


def receive(
    server: Server, code: str, out: Path, *extra: str, env: dict[str, str] | None = None
) -> Peer:
    return spawn(["receive", code, "--server", server.url, "-o", str(out), "--json", *extra], env)


def sha_tree(root: Path) -> dict[str, str]:
    result = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            result[p.relative_to(root).as_posix()] = h.hexdigest()
    return result
