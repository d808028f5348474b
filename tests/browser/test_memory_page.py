"""The page's JavaScript heap stays flat while it receives 512 MiB (CDP Runtime.getHeapUsage):
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
    deadline = time.monotonic() + timeout(600)
    while time.monotonic() < deadline:
        state = page.evaluate("document.body.dataset.state")
        if state in ("done", "error"):
            break
        got = int(page.evaluate("Number(document.body.dataset.bytes || 0)"))
        samples.append((got, int(cdp.send("Runtime.getHeapUsage")["usedSize"])))
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
    # flat: the heap late in the transfer is not larger than early on by more than a window
    assert max(late) - max(early) < 16 * MiB, samples
    assert peak < 64 * MiB, samples  # never anywhere near the file size
