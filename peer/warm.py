"""The heavy libraries, imported in the background while the network is awaited.

aiortc, aiohttp and pydicom take 0.2-0.3 s each to import, about two thirds of the CLI's
start-up. A sender needs none of them to show its code, and a receiver none to pair.
`start` imports them one after the other in a single daemon thread; `peer.session` calls
it as a send or a receive starts, before connecting to the server. Code that uses one of them calls
`need` (or `await ready`) first, which waits for that import to finish.

One thread imports all three, one after the other, so no two threads import overlapping
libraries at once (circular imports inside them could then deadlock). Code that needs one
waits for that thread with `need`, outside any module body, so it holds no import lock
while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
import threading
from collections.abc import Sequence

__all__ = ["HEAVY", "need", "ready", "start"]

# in the order a receiver needs them: aiortc once paired, pydicom for the completeness
# check (imported while the offer is awaited), aiohttp for the relay pipe (never the only
# path at first); a sender's scan needs pydicom at once, so a send starts with it
HEAVY = ("aiortc", "pydicom", "aiohttp")

_done = {name: threading.Event() for name in HEAVY}
_lock = threading.Lock()
_started = False


def start(order: Sequence[str] = HEAVY) -> None:
    """Import the `HEAVY` libraries in a daemon thread, those in ``order`` first
    (idempotent)."""
    global _started
    with _lock:
        if _started:
            return
        _started = True
    names = [*order, *(n for n in HEAVY if n not in order)]
    threading.Thread(target=_run, args=(names,), name="scanbeam-imports", daemon=True).start()


def _run(names: Sequence[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException:  # the user's own import of it raises it again
            pass
        finally:
            _done[name].set()


def need(name: str) -> None:
    """Wait until the background import of ``name`` (one of `HEAVY`) has finished; returns
    at once when none was started. The caller then imports it as usual."""
    if _started:
        _done[name].wait()


async def ready(name: str) -> None:
    """`need` without blocking the event loop; with no background import started, imports
    ``name`` in a worker thread."""
    if _started:
        if not _done[name].is_set():
            await asyncio.to_thread(_done[name].wait)
    elif name not in sys.modules:
        with contextlib.suppress(Exception):  # the caller's own import raises it again
            await asyncio.to_thread(importlib.import_module, name)
