"""Reference: raw aiortc data-channel throughput between two Python peers in one process
pair, 64 KiB messages, same backpressure as ScanBeam (bufferedAmount + bufferedamountlow),
no crypto, no disk. Runs sender and receiver in two processes, like ScanBeam does.

    python bench/raw_dc.py --mib 256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import time
from typing import Any

import uvloop
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

MSG = 65536


async def send_zeros(ch: Any, total: int, high: int) -> None:
    """Send ``total`` bytes of MSG-sized messages, paced by the buffered-amount low event."""
    payload = bytes(MSG)
    sent = 0
    while sent < total:
        ch.send(payload)
        sent += MSG
        if ch.bufferedAmount > high:
            low = asyncio.Event()
            ch.once("bufferedamountlow", low.set)
            await low.wait()


async def _sender(conn, total: int, high: int) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    ch = pc.createDataChannel("raw", ordered=True)
    ch.bufferedAmountLowThreshold = high // 2
    opened = asyncio.Event()
    ch.on("open", opened.set)
    done = asyncio.Event()
    ch.on("message", lambda m: done.set())
    await pc.setLocalDescription(await pc.createOffer())
    conn.send(pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(conn.recv(), "answer"))
    await opened.wait()
    await send_zeros(ch, total, high)
    await asyncio.wait_for(done.wait(), 600)
    await pc.close()


async def _receiver(conn, total: int, result) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    got = 0
    t0 = 0.0
    finished = asyncio.Event()

    @pc.on("datachannel")
    def on_dc(ch):
        @ch.on("message")
        def on_msg(m):
            nonlocal got, t0
            if got == 0:
                t0 = time.perf_counter()
            got += len(m)
            if got >= total:
                result.value = total / (time.perf_counter() - t0) / 1e6
                ch.send(b"done")
                finished.set()

    await pc.setRemoteDescription(RTCSessionDescription(conn.recv(), "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    conn.send(pc.localDescription.sdp)
    await asyncio.wait_for(finished.wait(), 600)
    await asyncio.sleep(0.2)
    await pc.close()


def measure(total: int, high: int = 1 << 20) -> float:
    """Return MB/s of a raw aiortc data channel for ``total`` bytes."""
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    result = ctx.Value("d", 0.0)
    ps = ctx.Process(target=lambda: None)
    ps = ctx.Process(target=_run_sender, args=(a, total, high))
    pr = ctx.Process(target=_run_receiver, args=(b, total, result))
    pr.start()
    ps.start()
    ps.join(900)
    pr.join(900)
    return float(result.value)


def _run_sender(conn, total, high):
    uvloop.run(_sender(conn, total, high))


def _run_receiver(conn, total, result):
    uvloop.run(_receiver(conn, total, result))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    args = ap.parse_args()
    rate = measure(args.mib << 20)
    print(json.dumps({"raw_dc_MBps": round(rate, 1), "mib": args.mib}))
