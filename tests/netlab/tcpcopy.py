"""A plain TCP copy, the reference beside ScanBeam in tests and bench/wan.py.

    python tcpcopy.py recv --host ADDR --port P [--out FILE]     # prints one JSON line at EOF
    python tcpcopy.py send --host ADDR --port P (--bytes N | PATH ...)

The receiver times from the first byte's connection accept to EOF and writes what it gets to
FILE (default: discarded). The sender streams files (folders recursively, sorted) or N zero bytes.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

BLOCK = 1 << 20


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        out += sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["send", "recv"])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--bytes", type=int)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("paths", nargs="*", type=Path)
    args = ap.parse_intermixed_args(argv)
    if args.mode == "recv":
        with socket.create_server((args.host, args.port)) as srv:
            srv.settimeout(args.timeout)
            print(json.dumps({"listening": args.port}), flush=True)
            conn, _ = srv.accept()
            t0 = time.monotonic()
            total = 0
            conn.settimeout(args.timeout)
            sink = open(args.out, "wb") if args.out else None
            try:
                while chunk := conn.recv(BLOCK):
                    total += len(chunk)
                    if sink:
                        sink.write(chunk)
            finally:
                if sink:
                    sink.close()
                conn.close()
            seconds = time.monotonic() - t0
            print(json.dumps({"bytes": total, "seconds": seconds}), flush=True)
        return 0
    with socket.create_connection((args.host, args.port), timeout=args.timeout) as s:
        if args.bytes is not None:
            block = bytes(BLOCK)
            left = args.bytes
            while left > 0:
                n = min(left, BLOCK)
                s.sendall(block[:n])
                left -= n
        else:
            for f in _files(args.paths):
                with open(f, "rb") as fh:
                    s.sendfile(fh)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
