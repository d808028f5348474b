"""ScanBeam relay: store-and-forward of encrypted drops for offline recipients.

Server side: :func:`mount` (aiohttp routes, storage and sweeper, mounted on the one origin of
``signaling.server.start_server``) with :class:`RelaySettings`. Client side:
:class:`RelayClient`. The pure rules live in :mod:`relay.store`.

The exports are imported on first use, so ``import relay.store`` stays free of asyncio,
aiohttp and sqlite3 (a test checks it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from relay.app import RelayMount, mount
    from relay.client import (
        AccessEvent,
        Completed,
        Created,
        DropInfo,
        DropStatus,
        RelayClient,
        RelayError,
        UploadState,
    )
    from relay.settings import RelaySettings

__all__ = [
    "AccessEvent",
    "Completed",
    "Created",
    "DropInfo",
    "DropStatus",
    "RelayClient",
    "RelayError",
    "RelayMount",
    "RelaySettings",
    "UploadState",
    "mount",
]

_HOMES: Final = {
    "RelayMount": "relay.app",
    "mount": "relay.app",
    "RelaySettings": "relay.settings",
    **{
        name: "relay.client"
        for name in (
            "AccessEvent",
            "Completed",
            "Created",
            "DropInfo",
            "DropStatus",
            "RelayClient",
            "RelayError",
            "UploadState",
        )
    },
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'relay' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
