"""The page's JavaScript heap (CDP Runtime.getHeapUsage) and the whole browser's memory (PSS of
all chromium processes) stay flat while the page receives 512 MiB:
credit flow control plus the pull-based download stream hold at most a window of chunks."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from tests.conftest import Server, start_send, timeout

from .conftest import shot, wait_state

SIZE = 512 * 1024 * 1024
MiB = 1024 * 1024


def _chromium_pss(marker: str) -> int:
    """Summed PSS (shared pages split between sharers) of the test's chromium (found by a
    flag only it has) and all its children: renderers, the service worker's, network, GPU."""
    procs: dict[int, tuple[int, int, str]] = {}  # pid -> (ppid, rss, cmdline)
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            rollup = (d / "smaps_rollup").read_text().splitlines()
            rss = 1024 * next(int(ln.split()[1]) for ln in rollup if ln.startswith("Pss:"))
        except (OSError, IndexError, ValueError, StopIteration):
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        procs[int(d.name)] = (ppid, rss, cmd)
    roots = {pid for pid, (_, _, cmd) in procs.items() if marker in cmd and "--type=" not in cmd}
    assert roots, "the test's chromium was not found in /proc"
    total, todo = 0, set(roots)
    while todo:
        pid = todo.pop()
        total += procs[pid][1]
        todo |= {c for c, (pp, _, _) in procs.items() if pp == pid}
    return total


def _quarter_max(samples: list[tuple[int, int]], q: int) -> int:
    return max([v for got, v in samples if q * SIZE / 4 <= got <= (q + 1) * SIZE / 4] or [0])


def test_heap_stays_flat_over_512_mib(page_server: Server, phone: Any, tmp_path: Path) -> None:
    src = tmp_path / "big.raw"
    want = hashlib.sha256()
    with open(src, "wb") as fh:
        block = os.urandom(MiB)
        for i in range(SIZE // MiB):
            piece = block[:-8] + i.to_bytes(8, "big")  # incompressible and never repeating
            want.update(piece)
            fh.write(piece)
    sender, _code = start_send(page_server, [src])
    page = phone
    page.goto(sender.events[0]["url"])
    wait_state(page, "offer")
    cdp = page.context.new_cdp_session(page)
    with page.expect_download(timeout=timeout(600) * 1000) as info:
        page.click("#accept")
    samples: list[tuple[int, int]] = []  # (bytes received, JS heap used)
    rss: list[tuple[int, int]] = []  # (bytes received, chromium RSS)
    halfway = False
    marker = f"--unsafely-treat-insecure-origin-as-secure={page_server.url}"
    deadline = time.monotonic() + timeout(600)
    while time.monotonic() < deadline:
        state = page.evaluate("document.body.dataset.state")
        if state in ("done", "error"):
            break
        got = int(page.evaluate("Number(document.body.dataset.bytes || 0)"))
        samples.append((got, int(cdp.send("Runtime.getHeapUsage")["usedSize"])))
        rss.append((got, _chromium_pss(marker)))
        if got >= SIZE // 2 and not halfway:
            halfway = True
            shot(page, "memory-512MiB", "halfway")
        time.sleep(0.5)
    wait_state(page, "done", 30)
    shot(page, "memory-512MiB", "verified")
    saved = info.value.path()
    h = hashlib.sha256()
    with open(saved, "rb") as fh:
        for piece in iter(lambda: fh.read(MiB), b""):
            h.update(piece)
    assert h.hexdigest() == want.hexdigest()
    assert sender.finish() == 0, sender.stderr

    early = [heap for got, heap in samples if SIZE * 0.05 <= got <= SIZE * 0.25]
    late = [heap for got, heap in samples if got >= SIZE * 0.75]
    assert len(early) >= 2 and len(late) >= 2, samples
    peak = max(heap for _, heap in samples)
    print(
        f"\nJS heap while receiving 512 MiB: early max {max(early) / MiB:.1f} MiB, "
        f"late max {max(late) / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB, {len(samples)} samples"
    )
    rss_early = [r for got, r in rss if SIZE * 0.05 <= got <= SIZE * 0.25]
    rss_late = [r for got, r in rss if got >= SIZE * 0.75]
    print(
        f"chromium PSS (all its processes): early max {max(rss_early) / MiB:.0f} MiB, "
        f"late max {max(rss_late) / MiB:.0f} MiB; by quarter: "
        + ", ".join(f"{_quarter_max(rss, q) / MiB:.0f}" for q in range(4))
    )
    # flat: the heap late in the transfer is not larger than early on by more than a window
    assert max(late) - max(early) < 16 * MiB, samples
    assert peak < 64 * MiB, samples  # never anywhere near the file size
    # and the whole browser (page, service worker, download) does not grow with the file
    assert max(rss_late) - max(rss_early) < 128 * MiB, rss  # a buffered file would add 384+
