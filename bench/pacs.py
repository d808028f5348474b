"""PACS bridge benchmark on this machine: ScanBeam's DIMSE paths vs dcmtk in the same run.

Over loopback, with a synthetic CT study (512x512 slices, explicit VR little endian):

* reference: dcmtk ``storescu`` -> dcmtk ``storescp``;
* ``scanbeam push`` -> ``storescp`` (files streamed as they are);
* ``storescu`` -> ``scanbeam listen`` (written to disk, fsync'd, renamed into place);
* ``scanbeam push`` of the same study in JPEG-LS -> ``storescp`` that accepts uncompressed
  syntaxes only (decompressed per instance).

Prints MB/s, the ratio to the reference and the peak RSS of the ScanBeam process.

    python bench/pacs.py              # ~200 MB study
    python bench/pacs.py --quick      # ~40 MB
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from peer.dicom.synth import write_study  # noqa: E402


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANBEAM_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(port: int) -> None:
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def _storescp(out: Path, *options: str) -> tuple[subprocess.Popen[bytes], int]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    port = _port()
    proc = subprocess.Popen(
        ["storescp", "-aet", "BENCH", "-od", str(out), *options, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait(port)
    return proc, port


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed: {r.stderr.decode()[-400:]}")
    return time.perf_counter() - t


def _push(study: Path, port: int, rss: Path) -> float:
    return _timed(
        [
            sys.executable,
            str(HERE / "_rss.py"),
            str(rss),
            sys.executable,
            "-m",
            "peer.cli",
            "push",
            str(study),
            "--to-pacs",
            f"127.0.0.1:{port}:BENCH",
            "--json",
        ],
        _env(),
    )


def _storescu(study: Path, port: int, aec: str) -> list[str]:
    scan = ["+sd", "+r", "+sp", "*.dcm"]
    return ["storescu", "-aec", aec, *scan, "127.0.0.1", str(port), str(study)]


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    size = 40_000_000 if args.quick else 200_000_000
    for tool in ("storescu", "storescp", "dcmcjpls"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} missing: run `make deps-pacs`")
    tmp = Path(tempfile.mkdtemp(prefix="scanbeam-bench-pacs-"))
    try:
        study = tmp / "CT"
        write_study(study, target_bytes=size, series=2, seed=5, report=False)
        files = sorted(study.rglob("*.dcm"))
        total = sum(p.stat().st_size for p in files)
        jls = tmp / "CT_JLS"
        for p in files:
            dst = jls / p.relative_to(study)
            dst.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dcmcjpls", str(p), str(dst)], check=True)
        mb = total / 1e6
        print(
            f"machine: {platform.machine()} {os.cpu_count()} cpu, Python "
            f"{platform.python_version()}; study {len(files)} instances, {mb:.1f} MB"
        )

        scp, port = _storescp(tmp / "scp")
        ref = _timed(_storescu(study, port, "BENCH"))
        _stop(scp)
        scp, port = _storescp(tmp / "scp")
        push_s = _push(study, port, tmp / "push.rss")
        _stop(scp)
        push_rss = int((tmp / "push.rss").read_text())

        out = tmp / "listen"
        lport = _port()
        listen = subprocess.Popen(
            [sys.executable, "-m", "peer.cli", "listen", "--port", str(lport), "-o", str(out)],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lport)
        listen_s = _timed(_storescu(study, lport, "SCANBEAM"))
        listen_rss = _hwm_kib(listen.pid)
        _stop(listen, signal.SIGINT)
        got = len(list(out.rglob("*.dcm")))
        assert got == len(files), (got, len(files))

        scp, port = _storescp(tmp / "scp")  # uncompressed syntaxes only
        dec_s = _push(jls, port, tmp / "dec.rss")
        _stop(scp)
        dec_rss = int((tmp / "dec.rss").read_text())

        def row(name: str, secs: float, rss: int | None) -> None:
            rate = mb / secs
            mem = f"  peak RSS {rss / 1024:.0f} MiB" if rss is not None else ""
            print(f"{name:44} {secs:6.2f} s {rate:7.1f} MB/s  x{ref / secs:4.2f} of ref{mem}")

        row("ref: storescu -> storescp", ref, None)
        row("scanbeam push -> storescp (as-is)", push_s, push_rss)
        row("storescu -> scanbeam listen", listen_s, listen_rss)
        row("scanbeam push JPEG-LS -> storescp (decompress)", dec_s, dec_rss)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
