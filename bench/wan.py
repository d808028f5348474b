"""ScanBeam vs magic-wormhole vs a plain TCP copy across the emulated WAN (docs/netlab.md).

One synthetic CT study (peer/dicom/synth.py) goes from host a to host b, both on routed
(non-NATed) LANs so all three tools can use a direct path; every packet between segments passes
wanemu with the row's conditions. Per row, in the same run and on the same link:

* ScanBeam: `scanbeam send` / `scanbeam receive` through `scanbeam serve` on pub (time from the
  sender's start to the receiver's exit; zstd compression on, as by default);
* magic-wormhole 0.24 (`make bench-wan` installs it into .venv-wormhole), its mailbox server and
  transit relay on pub; it sends the folder as an uncompressed zip stream;
* a plain TCP copy of the same files (tests/netlab/tcpcopy.py, one stream, no framing).

    python bench/wan.py                         # ~1 GB study, the four rows of issue 7
    python bench/wan.py --size 100MB --limit 300  # a quicker run
    python bench/wan.py --rows 1,2              # some rows only (1-based)
    python bench/wan.py --data random           # the same files, incompressible

A tool that is still running after --limit seconds is stopped; its row then shows the bytes it
moved and the time it would need at that rate (marked ">"). Results go to bench/out/wan.json.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.netlab.lab import Lab, Wan  # noqa: E402

WORMHOLE_BIN = ROOT / ".venv-wormhole" / "bin"
TCPCOPY = ROOT / "tests" / "netlab" / "tcpcopy.py"
ROWS = [
    Wan(rtt_ms=2, loss=0.0, rate_mbit=1000),
    Wan(rtt_ms=40, loss=0.0, rate_mbit=100),
    Wan(rtt_ms=80, loss=0.005, rate_mbit=50),
    Wan(rtt_ms=200, loss=0.01, rate_mbit=20),
]


@dataclass
class Result:
    tool: str
    seconds: float
    moved: int  # payload bytes that reached the receiver (at the end or when stopped)
    total: int
    finished: bool
    note: str = ""

    def cell(self) -> str:
        if self.finished:
            return f"{self.seconds:.1f} s"
        if self.moved <= 0:
            return f"> {self.seconds:.0f} s (nothing moved)"
        estimate = self.seconds * self.total / self.moved
        return f"> {self.seconds:.0f} s (est. {estimate:.0f} s)"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCANBEAM_", "WORMHOLE_"))}
    env["PYTHONPATH"] = str(ROOT)
    env["SCANBEAM_HOME"] = str(home)
    return env


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in _files(root))


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def run_scanbeam(lab: Lab, url: str, study: Path, total: int, limit: float) -> Result:
    out = lab.tmp / "sb-out"
    t0 = time.monotonic()
    send = lab.popen(
        "a", [lab.scanbeam, "send", str(study), "--server", url, "--json", "--no-relay"],
        env=_env(lab.tmp / "home-a"), stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert send.stdout is not None
    code = json.loads(send.stdout.readline())["code"]
    recv = lab.popen(
        "b", [lab.scanbeam, "receive", code, "--server", url, "-o", str(out), "--json", "--yes"],
        env=_env(lab.tmp / "home-b"), stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert recv.stdout is not None
    state: dict[str, Any] = {"moved": 0, "done": False, "via": "?", "error": None, "paths": []}
    marks: dict[str, float] = {}  # seconds from the sender's start to the receiver's events

    def follow() -> None:
        assert recv.stdout is not None
        for line in recv.stdout:
            if not line.startswith("{"):
                continue
            ev = json.loads(line)
            marks.setdefault(str(ev["event"]), time.monotonic() - t0)
            if ev["event"] == "connected":
                state["via"] = str(ev["via"])
            elif ev["event"] == "progress":
                state["moved"] = int(ev["bytes"])
            elif ev["event"] == "done":
                state.update(moved=int(ev["bytes"]), done=True, via=str(ev["via"]))
                state["paths"] = ev.get("paths", [])
            elif ev["event"] == "error":
                state["error"] = ev

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    with contextlib.suppress(subprocess.TimeoutExpired):
        recv.wait(max(1.0, t0 + limit - time.monotonic()))
    reader.join(5)
    if state["error"] is not None:
        raise RuntimeError(f"scanbeam receive failed: {state['error']}")
    moved, done, via = int(state["moved"]), bool(state["done"]), str(state["via"])
    seconds = time.monotonic() - t0
    _stop(recv)
    _stop(send)
    if done and _tree_bytes(out) != total:
        raise RuntimeError("scanbeam: received bytes differ from the study's")
    shutil.rmtree(out, ignore_errors=True)
    shares = ", ".join(f"{p['via']} {p['bytes'] / 1e6:.0f} MB" for p in state["paths"])
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in marks.items() if k != "progress")
    return Result("scanbeam", seconds, moved, total, done, note=f"via {via} [{shares}] ({phases})")


def run_wormhole(lab: Lab, study: Path, total: int, limit: float) -> Result:
    out = lab.tmp / "wh-out"
    out.mkdir()
    relay = [
        "--relay-url",
        "ws://203.0.113.10:4000/v1",
        "--transit-helper",
        "tcp:203.0.113.10:4001",
    ]
    env = _env(lab.tmp / "home-wh")
    code = "7-scanbeam-bench"
    t0 = time.monotonic()
    wh = str(WORMHOLE_BIN / "wormhole")
    send = lab.popen(
        "a", [wh, *relay, "send", "--hide-progress", "--code", code, str(study)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    recv = lab.popen(
        "b",
        [wh, *relay, "receive", "--accept-file", "--hide-progress", "-o", str(out / "x"), code],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=out,
    )  # fmt: skip
    finished = False
    try:
        recv.wait(limit)
        finished = recv.returncode == 0
    except subprocess.TimeoutExpired:
        pass
    seconds = time.monotonic() - t0
    moved = _tree_bytes(out) if finished else _partial(out)
    err = ""
    if recv.poll() is not None and recv.returncode != 0 and recv.stderr is not None:
        err = recv.stderr.read()[-300:]
    _stop(recv)
    _stop(send)
    if recv.returncode not in (0, -9) and not finished:
        raise RuntimeError(f"wormhole receive failed: {err}")
    if finished and _tree_bytes(out) != total:
        raise RuntimeError("wormhole: received bytes differ from the study's")
    shutil.rmtree(out, ignore_errors=True)
    return Result("wormhole", seconds, moved, total, finished)


def _partial(out: Path) -> int:
    # wormhole receives a directory as a zip into a temporary file next to the target
    return _tree_bytes(out)


def run_tcp(lab: Lab, study: Path, total: int, limit: float) -> Result:
    b = lab.addr("b")
    t0 = time.monotonic()
    recv = lab.popen(
        "b", [sys.executable, str(TCPCOPY), "recv", "--host", b, "--port", "9000",
              "--timeout", str(limit)],
    )  # fmt: skip
    assert recv.stdout is not None
    assert "listening" in recv.stdout.readline()
    send = lab.popen(
        "a", [sys.executable, str(TCPCOPY), "send", "--host", b, "--port", "9000", str(study)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    finished, moved = False, 0
    try:
        out, err = recv.communicate(timeout=limit)
        for line in out.splitlines():
            if line.startswith('{"bytes"'):
                moved = int(json.loads(line)["bytes"])
                finished = moved == total
        if not finished:
            print(f"tcp copy failed: {err[-500:]}", file=sys.stderr)
    except subprocess.TimeoutExpired:
        pass
    seconds = time.monotonic() - t0
    _stop(recv)
    _stop(send)
    return Result("tcp", seconds, moved, total, finished)


def _services(lab: Lab) -> str:
    """scanbeam serve, the wormhole mailbox and transit relay on pub; returns serve's URL."""
    url = lab.start_serve()
    twist = str(WORMHOLE_BIN / "twist")
    lab.popen(
        "pub",
        [twist, "wormhole-mailbox", "--port", "tcp:4000:interface=203.0.113.10"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=lab.tmp,
    )  # fmt: skip
    lab.popen(
        "pub",
        [twist, "transitrelay", "--port", "tcp:4001:interface=203.0.113.10"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=lab.tmp,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        listening = lab.sh("pub", "ss", "-tln")
        if ":4000 " in listening and ":4001 " in listening:
            return url
        if time.monotonic() > deadline:
            raise RuntimeError("wormhole mailbox or transit relay did not start")
        time.sleep(0.2)


def _randomize(root: Path) -> None:
    """Overwrite every file under ``root`` with random bytes of the same size (streamed)."""
    for path in _files(root):
        left = path.stat().st_size
        with path.open("r+b") as fh:
            while left > 0:
                n = min(left, 1 << 20)
                fh.write(os.urandom(n))
                left -= n


def _label(w: Wan) -> str:
    return f"{w.rtt_ms:g} ms, {w.loss * 100:g} %, {w.rate_mbit:g} Mbit/s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--size", default="1GB", help="study size (peer.dicom.synth syntax)")
    ap.add_argument("--rows", default="1,2,3,4", help="rows to run, 1-based, comma-separated")
    ap.add_argument("--limit", type=float, default=1200.0, help="seconds per tool and row")
    ap.add_argument("--tools", default="scanbeam,wormhole,tcp")
    ap.add_argument(
        "--data",
        choices=("ct", "random"),
        default="ct",
        help="ct: the synthetic CT study; random: the same files filled with random bytes "
        "(incompressible)",
    )
    ap.add_argument("--out", type=Path, default=HERE / "out" / "wan.json")
    ap.add_argument("--table", type=Path, help="only print the table of a saved --out file")
    args = ap.parse_args(argv)
    if args.table:
        saved = json.loads(args.table.read_text())
        tools = [r["tool"] for r in saved["rows"][0]["results"]]
        _table(saved["rows"], tools, saved["bytes"], saved.get("data", "ct"))
        return 0
    if not (WORMHOLE_BIN / "wormhole").exists():
        print("magic-wormhole is not installed: run `make bench-wan`", file=sys.stderr)
        return 2
    tools = args.tools.split(",")
    # an installed ScanBeam, like the magic-wormhole from PyPI, has its bytecode compiled;
    # a checkout may have none (PYTHONDONTWRITEBYTECODE), and compiling at each start is
    # not what a user's install does
    for package in ("peer", "signaling", "relay"):
        compileall.compile_dir(ROOT / package, quiet=1)
    work = Path(tempfile.mkdtemp(prefix="scanbeam-wan-"))
    try:
        study = work / "study"
        subprocess.run(
            [sys.executable, "-m", "peer.dicom.synth", str(study), "--size", args.size],
            check=True, cwd=ROOT, capture_output=True,
        )  # fmt: skip
        if args.data == "random":
            _randomize(study)
        total = _tree_bytes(study)
        print(f"study: {total / 1e6:.0f} MB, {len(_files(study))} files, {args.data}")
        rows: list[dict[str, Any]] = []
        for index in (int(i) for i in args.rows.split(",")):
            wan = ROWS[index - 1]
            with Lab(nat_a="none", nat_b="none", wan=wan) as lab:
                url = _services(lab)
                results = []
                for tool in tools:
                    os.sync()  # the last tool's written files must not be flushed during this one
                    if tool == "scanbeam":
                        r = run_scanbeam(lab, url, study, total, args.limit)
                    elif tool == "wormhole":
                        r = run_wormhole(lab, study, total, args.limit)
                    else:
                        r = run_tcp(lab, study, total, args.limit)
                    results.append(r)
                    print(f"  {_label(wan)}: {r.tool} {r.cell()} {r.note}", flush=True)
                emu = json.loads(lab.emu_stats())
            rows.append(
                {
                    "wan": {"rtt_ms": wan.rtt_ms, "loss": wan.loss, "rate_mbit": wan.rate_mbit},
                    "results": [r.__dict__ for r in results],
                    "wanemu": emu,
                }
            )
        _table(rows, tools, total, args.data)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "bytes": total,
            "data": args.data,
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
            "rows": rows,
        }
        args.out.write_text(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _ratio(a: Result | None, b: Result | None) -> str:
    if a is None or b is None or not b.finished:
        return "n/a"
    if a.finished:
        return f"{a.seconds / b.seconds:.2f}"
    if a.moved <= 0:
        return f"> {a.seconds / b.seconds:.1f}"
    return f"> {a.seconds / b.seconds:.1f} (est. {a.seconds * a.total / a.moved / b.seconds:.1f})"


def _table(rows: list[dict[str, Any]], tools: list[str], total: int, data: str = "ct") -> None:
    print(f"\n| RTT, loss, rate | {' | '.join(tools)} | ScanBeam ÷ wormhole | ScanBeam ÷ TCP |")
    print("|---" * (len(tools) + 3) + "|")
    for row in rows:
        w = row["wan"]
        res = {r["tool"]: Result(**r) for r in row["results"]}
        label = f"{w['rtt_ms']:g} ms, {w['loss'] * 100:g} %, {w['rate_mbit']:g} Mbit/s"
        cells = [res[t].cell() for t in tools]

        ratios = [_ratio(res.get("scanbeam"), res.get(other)) for other in ("wormhole", "tcp")]
        print(f"| {label} | {' | '.join(cells)} | {' | '.join(ratios)} |")
    print(
        f"\n{total / 1e6:.0f} MB {'synthetic CT' if data == 'ct' else 'of random bytes'}; "
        "times from the sender's start to the receiver's end."
    )


if __name__ == "__main__":
    sys.exit(main())
