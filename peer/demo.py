"""``make demo``: a local server, a synthetic CT study sent from one CLI process to another
over the direct path, and every file's SHA-256 compared.

    python -m peer.demo [--size 30MB] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from peer.units import human_bytes, human_rate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sha_tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            out[p.relative_to(root).as_posix()] = h.hexdigest()
    return out


def _wait_health(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/v1/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"demo: the server at {url} did not start")


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m peer.demo")
    ap.add_argument("--size", default="30MB", help="synthetic study size (default 30MB)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scanbeam-demo-"))
    py = sys.executable
    port = _free_port()
    server = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen[str]] = []
    env = {**os.environ, "SCANBEAM_HOME": str(work / "home")}
    try:
        study = work / "CT_STUDY"
        print(f"1/4 Generating a synthetic CT study ({args.size}) in {study}", flush=True)
        subprocess.run(
            [py, "-m", "peer.dicom.synth", str(study), "--size", args.size, "--series", "3"],
            check=True,
        )
        print(f"2/4 Starting the ScanBeam server on {server}", flush=True)
        srv = subprocess.Popen(
            [py, "-m", "peer.cli", "serve", "--port", str(port), "--data", str(work / "server")],
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        procs.append(srv)
        _wait_health(server)
        print("3/4 Sending from one CLI process, receiving in another", flush=True)
        sender = subprocess.Popen(
            [py, "-m", "peer.cli", "send", str(study), "--server", server, "--json", "--no-relay"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs.append(sender)
        assert sender.stdout is not None
        code = ""
        for line in sender.stdout:
            ev = json.loads(line)
            if ev["event"] == "code":
                code = ev["code"]
                break
            if ev["event"] == "error":
                raise SystemExit(f"demo: sender failed: {ev['message']}")
        print(f"    code: {code}", flush=True)
        out = work / "received"
        recv = subprocess.run(
            [py, "-m", "peer.cli", "receive", code, "--server", server, "-o", str(out), "--yes"],
            text=True,
            env=env,
        )
        sender_events = [json.loads(line) for line in sender.stdout]
        sender.wait(60)
        if recv.returncode != 0 or sender.returncode != 0:
            raise SystemExit(
                f"demo: FAILED (receiver exit {recv.returncode}, sender exit {sender.returncode})"
            )
        done = next(e for e in sender_events if e["event"] == "done")
        print("4/4 Comparing SHA-256 of every file", flush=True)
        src = _sha_tree(study)
        dst = _sha_tree(out / study.name)
        if src != dst:
            missing = sorted(set(src) - set(dst))
            differ = sorted(k for k in src if k in dst and src[k] != dst[k])
            raise SystemExit(f"demo: FAILED: missing {missing[:5]}, different {differ[:5]}")
        total = sum((study / k).stat().st_size for k in src)
        rate = total / done["seconds"] if done["seconds"] else 0.0
        print(
            f"Demo OK: {len(src)} files ({human_bytes(total)}) arrived byte-identical and "
            f"verified, {_carried_by(done)}, {human_rate(rate)}.",
            flush=True,
        )
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"(kept {work})")


_PATH_NAMES = {
    "direct": "the WebRTC data channel",
    "turn": "the WebRTC data channel through TURN",
    "tcp": "the direct TCP lane",
    "pipe": "the relay pipe",
}


def _carried_by(done: dict[str, Any]) -> str:
    """Which paths carried the data, with their shares (the `done` event's `paths`)."""
    paths = [(p["via"], p["bytes"]) for p in done.get("paths") or [] if p.get("bytes")]
    total = sum(n for _, n in paths)
    if not total:
        return f"{done['via']} over WebRTC"
    return "carried by " + ", ".join(
        f"{_PATH_NAMES.get(name, name)} ({round(100 * n / total)} %)" for name, n in paths
    )


if __name__ == "__main__":
    sys.exit(main())
