"""UDP round-trip probe for the WAN emulator tests.

python probe.py echo --host ADDR --port P            # echo datagrams back (runs until killed)
python probe.py rtt --host ADDR --port P [--count N]  # prints {"rtts_ms": [...], "lost": n}
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["echo", "rtt"])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=20)
    args = ap.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if args.mode == "echo":
        sock.bind((args.host, args.port))
        print(json.dumps({"listening": args.port}), flush=True)
        while True:
            data, addr = sock.recvfrom(2048)
            sock.sendto(data, addr)
    sock.settimeout(2.0)
    rtts: list[float] = []
    lost = 0
    for i in range(args.count):
        t0 = time.monotonic()
        sock.sendto(i.to_bytes(4, "big"), (args.host, args.port))
        try:
            while True:
                data, _ = sock.recvfrom(2048)
                if int.from_bytes(data[:4], "big") == i:
                    rtts.append((time.monotonic() - t0) * 1000)
                    break
        except TimeoutError:
            lost += 1
        time.sleep(0.02)
    print(json.dumps({"rtts_ms": rtts, "lost": lost}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
