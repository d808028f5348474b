"""A misbehaving sender for tests: the real session code with one thing broken.

    python tests/e2e/evil_sender.py MODE SERVER PATH

MODE is ``name:<hostile name>`` (offer the file under that name) or ``tamper`` (flip one
bit of the ciphertext of chunk 3 of the first file after sealing). Prints JSON events
like ``scanbeam send --json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import uvloop

from peer import files, session
from peer.errors import BeamError
from peer.proto import records
from peer.proto import sender as tx
from peer.settings import Settings


def main() -> int:
    mode, server, path = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if mode.startswith("name:"):
        hostile = mode[5:]
        real = files.collect_sources

        def collect(paths: list[Path]) -> list[files.SourceFile]:
            out = real(paths)
            return [files.SourceFile(hostile, f.path, f.size, f.mtime_ns) for f in out]

        setattr(session, "collect_sources", collect)  # noqa: B010 (patching on purpose)
    elif mode == "tamper":
        real_seal = records.seal_record

        def seal(*args: object, **kw: object) -> bytes:
            rec = real_seal(*args, **kw)  # type: ignore[arg-type]
            if (
                kw.get("file_ix") == 0
                and kw.get("index") == 3
                and args[2] is records.RecordType.CHUNK
            ):
                rec = rec[:-5] + bytes([rec[-5] ^ 0x10]) + rec[-4:]
            return rec

        setattr(tx, "seal_record", seal)  # noqa: B010 (patching on purpose)
    else:
        raise SystemExit(f"unknown mode {mode}")

    def on_event(ev: session.Event) -> None:
        if isinstance(ev, session.CodeReady):
            print(json.dumps({"event": "code", "code": ev.code, "url": ev.url}), flush=True)

    try:
        settings = Settings.load(os.environ, {"server": server})
        uvloop.run(session.send(settings, [path], on_event))
    except BeamError as exc:
        print(json.dumps({"event": "error", "code": exc.code, "message": exc.user_message}))
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
