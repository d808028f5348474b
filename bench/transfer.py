"""Direct-transfer benchmark on this machine: ScanBeam vs the raw aiortc data channel.

Measures in one run: the raw aiortc data-channel rate (bench/raw_dc.py: 64 KiB messages,
same backpressure, no crypto, no disk), then `scanbeam send`/`receive` as separate
processes through a local `scanbeam serve` for an incompressible file and a synthetic CT
study, reporting MB/s, the ratio to raw, and the peak RSS of sender and receiver.

    python bench/transfer.py                      # 1 GiB random + ~1 GB CT + RSS at 64 MiB
    python bench/transfer.py --quick              # 256 MiB / 256 MB, for a smoke run
    python bench/transfer.py --lanes-only         # only the path comparison below

These rows pin the data channel (``--no-tcp-lane --no-pipe``) so the ratio to raw aiortc keeps
its meaning. The path comparison (protocol v2, docs/protocol.md §10) then sends the same
incompressible file in the same run over: the data channel only; the relay pipe only
(``--turn-only --no-tcp-lane``: ICE cannot connect without TURN, no TCP lane); every path
(the default: the session measures and moves to the fastest; shares reported); the TCP
lane and the data channel (``--no-pipe``; the data channel cannot be turned off); and a plain
TCP copy of the file (Python sockets, same address, written to disk) as the reference.
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
sys.path.insert(0, str(ROOT))

from bench import raw_dc  # noqa: E402


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANBEAM_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _rss_wrapped(args: list[str], rss_file: Path) -> list[str]:
    return [
        sys.executable,
        str(HERE / "_rss.py"),
        str(rss_file),
        sys.executable,
        "-m",
        "peer.cli",
        *args,
    ]


def start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "peer.cli", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, "http://" + line.split("http://", 1)[1].split()[0]


DC_ONLY = ("--no-tcp-lane", "--no-pipe")


def transfer(
    server: str, src: Path, work: Path, extra: tuple[str, ...] = DC_ONLY
) -> dict[str, Any]:
    """Send ``src`` from one process to another; return rate and peak RSS of both."""
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    s_rss, r_rss = work / "s.rss", work / "r.rss"
    sender = subprocess.Popen(
        _rss_wrapped(["send", str(src), "--server", server, "--json", *extra], s_rss),
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert sender.stdout is not None
    code = json.loads(sender.stdout.readline())["code"]
    t0 = time.monotonic()
    recv = subprocess.run(
        _rss_wrapped(
            ["receive", code, "--server", server, "-o", str(out), "--yes", "--json", *extra],
            r_rss,
        ),
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    wall = time.monotonic() - t0
    rest = sender.stdout.read()
    sender.wait(60)
    if recv.returncode != 0 or sender.returncode != 0:
        raise SystemExit(f"transfer failed: {recv.stdout[-500:]} {rest[-500:]}")
    events = [json.loads(ln) for ln in recv.stdout.splitlines() if ln.startswith("{")]
    done = [e for e in events if e["event"] == "done"][-1]
    start = next(e["t"] for e in events if e["event"] == "start")
    first = next(e["t"] for e in events if e["event"] == "progress" and e["bytes"] > 0)
    size = done["bytes"]
    shutil.rmtree(out, ignore_errors=True)
    return {
        "bytes": size,
        "seconds": done["seconds"],
        "wall_seconds": round(wall, 2),
        "MBps": round(size / done["seconds"] / 1e6, 1),
        "pairing_to_first_byte_s": round(first - start, 3),
        "sender_rss_MB": round(int(s_rss.read_text()) / 1024, 1),
        "receiver_rss_MB": round(int(r_rss.read_text()) / 1024, 1),
        "paths": {p["via"]: p["bytes"] for p in done.get("paths", [])},
        "moves": sum(1 for ln in rest.splitlines() if '"event": "moved"' in ln),
    }


def plain_tcp(src: Path, work: Path) -> float:
    """MB/s of a plain TCP copy of ``src`` to a file, over this machine's own address."""
    import socket
    import threading

    sys.path.insert(0, str(ROOT))
    from peer.lanes import local_addresses

    host = next(a for a in local_addresses() if ":" not in a)
    dst = work / "tcp_copy.bin"
    lsock = socket.create_server((host, 0))
    port = lsock.getsockname()[1]

    def serve() -> None:
        conn, _ = lsock.accept()
        with conn, open(dst, "wb") as fh:
            while block := conn.recv(1 << 20):
                fh.write(block)

    t = threading.Thread(target=serve)
    t.start()
    t0 = time.monotonic()
    with socket.create_connection((host, port)) as c, open(src, "rb") as fh:
        c.sendfile(fh)
    t.join()
    seconds = time.monotonic() - t0
    lsock.close()
    size = dst.stat().st_size
    dst.unlink()
    return size / seconds / 1e6


def lanes(url: str, src: Path, work: Path) -> dict[str, Any]:
    """The same file over each path, in one run (see the module docstring)."""
    out: dict[str, Any] = {"file_MiB": src.stat().st_size >> 20}
    out["plain_tcp_MBps"] = round(plain_tcp(src, work), 1)
    for name, extra in (
        ("data_channel", DC_ONLY),
        ("relay_pipe", ("--turn-only", "--no-tcp-lane")),
        ("tcp_lane_and_dc", ("--no-pipe",)),
        ("all_paths", ()),
    ):
        print(f"ScanBeam paths: {name} ...", file=sys.stderr)
        r = transfer(url, src, work, extra)
        out[name] = {k: r[k] for k in ("MBps", "seconds", "paths", "moves")}
        out[name]["vs_plain_tcp"] = round(r["MBps"] / out["plain_tcp_MBps"], 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="256 MiB instead of 1 GiB")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--lanes-only", action="store_true", help="only the path comparison")
    args = ap.parse_args()
    big = 256 << 20 if args.quick else 1 << 30
    work = args.work or Path(tempfile.mkdtemp(prefix="scanbeam-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    server, url = start_server()
    try:
        small = work / "random_64MiB.bin"
        large = work / f"random_{big >> 20}MiB.bin"
        for path, size in ((small, 64 << 20), (large, big)):
            with open(path, "wb") as fh:
                for _ in range(size >> 20):
                    fh.write(os.urandom(1 << 20))
        print("path comparison ...", file=sys.stderr)
        report["paths"] = lanes(url, large, work)
        if args.lanes_only:
            print(json.dumps(report, indent=2))
            return 0
        ct = work / "CT_STUDY"
        if not ct.exists():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "peer.dicom.synth",
                    str(ct),
                    "--size",
                    str(big),
                    "--series",
                    "4",
                ],
                check=True,
                env=_env(),
                stdout=subprocess.DEVNULL,
            )
        print("measuring raw aiortc data channel ...", file=sys.stderr)
        raw = raw_dc.measure(big)
        report["raw_dc_MBps"] = round(raw, 1)
        print("ScanBeam: incompressible ...", file=sys.stderr)
        report["random_large"] = transfer(url, large, work)
        print("ScanBeam: 64 MiB (memory baseline) ...", file=sys.stderr)
        report["random_64MiB"] = transfer(url, small, work)
        print("ScanBeam: CT study ...", file=sys.stderr)
        report["ct_study"] = transfer(url, ct, work)
        report["ratio_random_vs_raw"] = round(report["random_large"]["MBps"] / raw, 2)
        report["ratio_ct_vs_raw"] = round(report["ct_study"]["MBps"] / raw, 2)
        for side in ("sender_rss_MB", "receiver_rss_MB"):
            report[f"rss_growth_{side.split('_')[0]}"] = round(
                report["random_large"][side] / report["random_64MiB"][side], 2
            )
    finally:
        server.terminate()
        server.wait(10)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
