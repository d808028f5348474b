"""The heavy libraries, imported in the background while the network is awaited.

aiortc, aiohttp and pydicom take 0.2-0.3 s each to import, about two thirds of the CLI's
start-up. A sender needs none of them to show its code, and a receiver none to pair.
`start` imports them one after the other in a single daemon thread; `peer.session` calls
it as a send or a receive starts, before connecting to the server. Code that uses one of them calls
`need` (or `await ready`) first, which moves that import to the front of the queue and
waits for it to finish.

One thread imports them all, one after the other, so no two threads import overlapping
libraries at once (circular imports inside them could then deadlock). Code that needs one
waits for that thread with `need`, outside any module body, so it holds no import lock
while it waits.

A start can be *held* (`start(..., hold=True)`): until `go`, the thread imports only what a
`need` asks for. A sender holds it while it scans the study: an import running beside the
scan slows the scan down (each of the scan's system calls waits for the importing thread to
hand back the GIL; 1905 non-DICOM files took 0.34-0.80 s instead of 0.05 s, a 1 GB CT study's
headers and previews about 2.0 s instead of 1.4 s). `drop` takes an import off the queue
when it turns out not to be needed (a receiver offered no DICOM file skips pydicom).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
import threading
from collections.abc import Sequence

__all__ = ["HEAVY", "drop", "go", "need", "ready", "start"]

# in the order a receiver needs them: aiortc once paired, pydicom for the completeness
# check (imported while the offer is awaited), aiohttp for the relay pipe (never the only
# path at first)
HEAVY = ("aiortc", "pydicom", "aiohttp")

_done = {name: threading.Event() for name in HEAVY}
_cond = threading.Condition()
_queue: list[str] = []  # imports still to do, the next one first
_asked: set[str] = set()  # imports a `need` asked for: done even while held
_current: str | None = None  # the import under way
_started = False
_held = False


def start(order: Sequence[str] = HEAVY, *, hold: bool = False) -> None:
    """Import the `HEAVY` libraries in a daemon thread, those in ``order`` first
    (idempotent); with ``hold``, only those a `need` asks for until `go` is called."""
    global _started, _held
    with _cond:
        if _started:
            return
        _started = True
        _held = hold
        _queue[:] = [*order, *(n for n in HEAVY if n not in order)]
    threading.Thread(target=_run, name="scanbeam-imports", daemon=True).start()


def go() -> None:
    """Release a held start."""
    global _held
    with _cond:
        _held = False
        _cond.notify_all()


def drop(name: str) -> None:
    """Do not import ``name`` in the background after all, unless it is already under
    way (a later `need` queues it again)."""
    with _cond:
        if name in _queue:
            _queue.remove(name)


def _run() -> None:
    global _current
    while True:  # a daemon thread: waits for a `need` of a dropped import until exit
        with _cond:
            while (name := _next()) is None:
                _cond.wait()
            _queue.remove(name)
            _current = name
        try:
            importlib.import_module(name)
        except BaseException:  # the user's own import of it raises it again
            pass
        finally:
            _done[name].set()


def _next() -> str | None:
    """The next import to do: the first queued, or while held the first one asked for."""
    for name in _queue:
        if not _held or name in _asked:
            return name
    return None


def _want(name: str) -> bool:
    """Put ``name`` first in the queue (again, if it was dropped), to be imported even while
    the start is held; False when no background import was started."""
    if _done[name].is_set():
        return True  # the common case, once imported: no lock, no wake-up
    with _cond:
        if not _started:
            return False
        _asked.add(name)
        if not _done[name].is_set() and name != _current:
            if name in _queue:
                _queue.remove(name)
            _queue.insert(0, name)
        _cond.notify_all()
        return True


def need(name: str) -> None:
    """Wait until the background import of ``name`` (one of `HEAVY`) has finished; returns
    at once when none was started. The caller then imports it as usual."""
    if _want(name):
        _done[name].wait()


async def ready(name: str, patience: float = 0.0) -> None:
    """`need` without blocking the event loop; with no background import started, imports
    ``name`` in a worker thread. With ``patience``, first waits that long for a held start
    to reach ``name`` on its own."""
    if patience > 0 and _started and not _done[name].is_set():
        await asyncio.to_thread(_done[name].wait, patience)
    if _want(name):
        if not _done[name].is_set():
            await asyncio.to_thread(_done[name].wait)
    elif name not in sys.modules:
        with contextlib.suppress(Exception):  # the caller's own import raises it again
            await asyncio.to_thread(importlib.import_module, name)
