"""Browser page receive throughput, direct and from the relay, beside the raw aiortc ->
Chromium data-channel rate measured in the same run (the reference).

    make deps-browser && .venv/bin/python bench/browser.py --mib 256

Everything runs on this machine: `scanbeam serve` on its own address, the real CLI sender,
Debian's chromium (headless, Playwright). Rates are MiB/s of file bytes, from the click on
Accept to the page's "Verified" state (so they include decrypting, hashing, zstd and writing
the download). The reference sends 64 KiB messages from aiortc (same backpressure as
ScanBeam) to a bare RTCPeerConnection in the same browser, no crypto, no disk; for
comparison also aiortc -> aiortc (bench/raw_dc.py) in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.raw_dc import measure as raw_aiortc_mbps  # noqa: E402
from bench.raw_dc import send_zeros  # noqa: E402
from tests.browser.conftest import CHROMIUM, own_address  # noqa: E402
from tests.conftest import spawn, start_send, start_server, stop_server  # noqa: E402

MiB = 1024 * 1024

RAW_RECEIVER = """async ([offer, total]) => {
  const pc = new RTCPeerConnection({ iceServers: [] });
  window.rawDone = new Promise((resolve) => {
    pc.ondatachannel = (ev) => {
      const ch = ev.channel;
      ch.binaryType = 'arraybuffer';
      let got = 0;
      let t0 = 0;
      ch.onmessage = (m) => {
        if (!got) t0 = performance.now();
        got += m.data.byteLength;
        if (got >= total) {
          const seconds = (performance.now() - t0) / 1000;
          ch.send('done');
          resolve(seconds);
        }
      };
    };
  });
  await pc.setRemoteDescription({ type: 'offer', sdp: offer });
  await pc.setLocalDescription(await pc.createAnswer());
  await new Promise((r) => {
    if (pc.iceGatheringState === 'complete') return r();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r();
  });
  window.rawPc = pc;
  return pc.localDescription.sdp;
}"""


def _raw_sender(conn: Any, total: int) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    async def run() -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        ch = pc.createDataChannel("raw", ordered=True)
        high = 1 << 20
        ch.bufferedAmountLowThreshold = high // 2
        opened = asyncio.Event()
        done = asyncio.Event()
        ch.on("open", opened.set)
        ch.on("message", lambda m: done.set())
        await pc.setLocalDescription(await pc.createOffer())
        conn.send(pc.localDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(conn.recv(), "answer"))
        await asyncio.wait_for(opened.wait(), 30)
        await send_zeros(ch, total, high)
        await asyncio.wait_for(done.wait(), 600)
        await pc.close()

    import uvloop

    uvloop.run(run())


def raw_rate(page: Any, total: int) -> float:
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=_raw_sender, args=(child, total))
    proc.start()
    try:
        page.goto("about:blank")
        answer = page.evaluate(RAW_RECEIVER, [parent.recv(), total])
        parent.send(answer)
        seconds = float(page.evaluate("window.rawDone"))
    finally:
        proc.join(60)
        if proc.is_alive():
            proc.kill()
    return total / MiB / seconds


def page_rate(page: Any, url: str, size: int) -> float:
    page.goto("about:blank")
    page.goto(url)
    page.wait_for_selector("body[data-state=offer]", timeout=60_000)
    with page.expect_download(timeout=600_000) as info:
        t0 = time.perf_counter()
        page.click("#accept")
    page.wait_for_selector(
        "body[data-state=done], body[data-state=error]", state="attached", timeout=600_000
    )
    seconds = time.perf_counter() - t0
    if page.evaluate("document.body.dataset.state") != "done":
        raise SystemExit(f"page failed: {page.text_content('#error-text')}")
    saved = Path(info.value.path())
    if saved.stat().st_size != size:
        raise SystemExit(f"saved {saved.stat().st_size} bytes, expected {size}")
    return size / MiB / seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=256, help="size of the test file (MiB)")
    args = ap.parse_args()
    size = args.mib * MiB
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="scanbeam-bench-browser-"))
    src = work / "volume.raw"
    with open(src, "wb") as fh:
        block = os.urandom(MiB)
        for i in range(args.mib):
            fh.write(block[:-8] + i.to_bytes(8, "big"))
    srv = start_server(["--host", own_address()])
    report: dict[str, Any] = {"file_mib": args.mib, "cpus": os.cpu_count()}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-features=WebRtcHideLocalIpsWithMdns",
                    "--disable-background-networking",
                    f"--unsafely-treat-insecure-origin-as-secure={srv.url}",
                ],
            )
            page = browser.new_context(accept_downloads=True).new_page()
            print("raw aiortc -> aiortc data channel ...", file=sys.stderr)
            report["raw_aiortc_to_aiortc_mib_s"] = round(raw_aiortc_mbps(size) * 1e6 / MiB, 1)
            print("raw aiortc -> chromium data channel ...", file=sys.stderr)
            report["raw_aiortc_to_chromium_mib_s"] = round(raw_rate(page, size), 1)
            print("page, direct ...", file=sys.stderr)
            sender, _code = start_send(srv, [src])
            report["page_direct_mib_s"] = round(page_rate(page, sender.events[0]["url"], size), 1)
            sender.finish()
            print("page, relay ...", file=sys.stderr)
            up = spawn(["send", str(src), "--server", srv.url, "--json", "--relay"])
            if up.finish(600) != 0:
                raise SystemExit(up.stderr)
            report["page_relay_mib_s"] = round(page_rate(page, up.event("link")["url"], size), 1)
            browser.close()
    finally:
        stop_server(srv)
        src.unlink()
        work.rmdir()
    raw = report["raw_aiortc_to_chromium_mib_s"]
    report["direct_vs_raw"] = round(report["page_direct_mib_s"] / raw, 2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
