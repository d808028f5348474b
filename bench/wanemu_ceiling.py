"""The WAN emulator's own ceiling: a plain TCP copy through wanemu vs one that does not cross it.

    python bench/wanemu_ceiling.py [--mb 200] [--runs 3]

Reference: host a to its own NAT router (same segment: veth only, no wanemu). Then a to pub
through wanemu with no delay and no rate limit, and with a 1 Gbit/s rate (2 ms RTT), which is
the fastest row of bench/wan.py. Prints MB/s per run and the median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.netlab.lab import Lab, Wan  # noqa: E402

TCPCOPY = str(ROOT / "tests" / "netlab" / "tcpcopy.py")


def _copy(lab: Lab, dst: str, nbytes: int) -> float:
    addr = lab.addr(dst)
    recv = lab.popen(dst, [sys.executable, TCPCOPY, "recv", "--host", addr, "--port", "9000"])
    assert recv.stdout is not None
    assert "listening" in recv.stdout.readline()
    send = lab.popen(
        "a", [sys.executable, TCPCOPY, "send", "--host", addr, "--port", "9000",
              "--bytes", str(nbytes)],
    )  # fmt: skip
    out, _ = recv.communicate(timeout=600)
    send.communicate(timeout=60)
    result = json.loads(out.splitlines()[-1])
    assert result["bytes"] == nbytes
    return float(result["bytes"] / result["seconds"] / 1e6)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    nbytes = args.mb * 1_000_000
    cases = [
        ("a -> nat_a (same segment, no wanemu)", Wan(), "nat_a"),
        ("a -> pub through wanemu, no delay, no rate limit", Wan(), "pub"),
        ("a -> pub through wanemu, 2 ms RTT, 1 Gbit/s", Wan(rtt_ms=2, rate_mbit=1000), "pub"),
    ]
    print(f"| path ({args.mb} MB TCP copy) | runs, MB/s | median MB/s |\n|---|---|---|")
    for label, wan, dst in cases:
        rates = []
        for _ in range(args.runs):
            with Lab(wan=wan) as lab:
                rates.append(_copy(lab, dst, nbytes))
        runs = ", ".join(f"{r:.0f}" for r in rates)
        print(f"| {label} | {runs} | {statistics.median(rates):.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
