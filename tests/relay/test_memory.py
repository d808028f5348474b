"""256 MiB through the relay in constant memory: bodies are streamed, never buffered."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

from tests.relay.conftest import relay_env

MiB = 1 << 20
SIZE = 256 * MiB
PEAK_LIMIT = 16 * MiB
"""Python allocations of server and client together (one process) while moving SIZE bytes."""


async def test_256_mib_up_and_down_in_constant_memory(tmp_path: Path) -> None:
    block = os.urandom(MiB)
    expected = hashlib.sha256()
    for _ in range(SIZE // MiB):
        expected.update(block)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(SIZE // MiB):
            yield block  # the same object every time: the source holds 1 MiB

    async with relay_env(tmp_path) as env:
        auth, owner = os.urandom(32), os.urandom(32)
        created = await env.client.create(size=SIZE, auth=auth, owner=owner)
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            assert await env.client.upload(created.id, owner, 0, body()) == SIZE
            upload_peak = tracemalloc.get_traced_memory()[1] - baseline
            tracemalloc.reset_peak()
            await env.client.seal(created.id, owner, SIZE)
            claim = await env.client.claim(created.id, auth)
            received = hashlib.sha256()
            count = 0
            async for chunk in env.client.download(created.id, auth, claim):
                received.update(chunk)
                count += len(chunk)
            download_peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
        assert count == SIZE and received.digest() == expected.digest()
        assert upload_peak < PEAK_LIMIT, f"upload peak {upload_peak / MiB:.1f} MiB"
        assert download_peak < PEAK_LIMIT, f"download peak {download_peak / MiB:.1f} MiB"
