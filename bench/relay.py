"""Relay benchmark on this machine: upload and download through `scanbeam serve`.

Runs the real CLI processes against a local server (data folder in a temp dir):
1 GiB incompressible file uploaded (`send --relay`) and downloaded (`receive LINK`),
the server's peak RSS for a 64 MiB round trip vs the 1 GiB one, and N concurrent
downloads of one drop.

    python bench/relay.py [--quick] [--concurrent 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANBEAM_")}
    env["PYTHONPATH"] = str(ROOT)
    env["SCANBEAM_HOME"] = str(home)
    return env


class Server:
    def __init__(self, work: Path) -> None:
        self.data = work / "server-data"
        self.rss = work / "server.rss"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "_rss.py"),
                str(self.rss),
                sys.executable,
                "-m",
                "peer.cli",
                "serve",
                "--port",
                "0",
                "--data",
                str(self.data),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=_env(work),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.url = "http://" + line.split("http://", 1)[1].split()[0]

    def stop(self) -> float:
        """Stop it; return its peak RSS in MB."""
        # stop the server itself, not the wrapper that records its peak RSS
        pattern = f"^[^ ]+ -m peer.cli serve --port 0 --data {self.data}$"
        subprocess.run(["pkill", "-TERM", "-f", pattern], check=False)
        self.proc.wait(30)
        shutil.rmtree(self.data, ignore_errors=True)
        return int(self.rss.read_text()) / 1024


def _cli(args: list[str], home: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "peer.cli", *args, "--json"],
        capture_output=True,
        text=True,
        env=_env(home),
        check=False,
    )
    events = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0:
        raise SystemExit(f"{args[0]} failed: {events[-1:]} {out.stderr[-300:]}")
    return events


def round_trip(server: Server, src: Path, work: Path) -> dict[str, Any]:
    home = work / "home"
    link = next(
        e
        for e in _cli(["send", str(src), "--server", server.url, "--relay"], home)
        if e["event"] == "link"
    )
    out = work / "down"
    shutil.rmtree(out, ignore_errors=True)
    done = next(
        e
        for e in _cli(["receive", link["url"], "-o", str(out), "--yes"], work / "r")
        if e["event"] == "done"
    )
    size = src.stat().st_size
    shutil.rmtree(out, ignore_errors=True)
    return {
        "bytes": size,
        "upload_MBps": round(size / link["seconds"] / 1e6, 1),
        "download_MBps": round(size / done["seconds"] / 1e6, 1),
    }


def concurrent(server: Server, src: Path, work: Path, n: int) -> dict[str, Any]:
    home = work / "home"
    link = next(
        e
        for e in _cli(
            ["send", str(src), "--server", server.url, "--relay", "--max-downloads", str(n)], home
        )
        if e["event"] == "link"
    )
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "peer.cli",
                "receive",
                link["url"],
                "-o",
                str(work / f"c{i}"),
                "--yes",
                "--json",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_env(work / f"h{i}"),
        )
        for i in range(n)
    ]
    codes = [p.wait(1800) for p in procs]
    wall = time.monotonic() - t0
    for i in range(n):
        shutil.rmtree(work / f"c{i}", ignore_errors=True)
    ok = codes.count(0)
    return {
        "downloads": n,
        "succeeded": ok,
        "each_bytes": src.stat().st_size,
        "wall_seconds": round(wall, 1),
        "aggregate_MBps": round(ok * src.stat().st_size / wall / 1e6, 1),
    }


def _random_file(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        for _ in range(size >> 20):
            fh.write(os.urandom(1 << 20))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="256 MiB instead of 1 GiB")
    ap.add_argument("--concurrent", type=int, default=20)
    args = ap.parse_args()
    big = 256 << 20 if args.quick else 1 << 30
    work = Path(tempfile.mkdtemp(prefix="scanbeam-relay-bench-"))
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    try:
        small, large, mid = work / "small.bin", work / "large.bin", work / "mid.bin"
        _random_file(small, 64 << 20)
        _random_file(large, big)
        _random_file(mid, 128 << 20)
        srv = Server(work)
        report["small_64MiB"] = round_trip(srv, small, work)
        report["server_rss_MB_small"] = round(srv.stop(), 1)
        srv = Server(work)
        report["large"] = round_trip(srv, large, work)
        report["server_rss_MB_large"] = round(srv.stop(), 1)
        srv = Server(work)
        report["concurrent"] = concurrent(srv, mid, work, args.concurrent)
        report["server_rss_MB_concurrent"] = round(srv.stop(), 1)
        report["server_rss_growth"] = round(
            report["server_rss_MB_large"] / report["server_rss_MB_small"], 2
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
