"""Regenerate tests/vectors/relay_v1.json: golden vectors of relay keys and a whole drop.

python -m tests.proto.make_relay_vectors

The blob holds zstd frames (manifest, index) made by the bundled zstd library; other
implementations should decode the blob, not expect to reproduce it byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peer.proto.drop import RELAY_CHUNK_SIZE, TRAILER_SIZE, DropWriter
from peer.proto.keys import RelayKeys, password_key
from peer.proto.manifest import FileEntry, Manifest

OUT = Path(__file__).resolve().parent.parent / "vectors" / "relay_v1.json"

LINK_SECRET = bytes(range(32))
PASSWORD = "Pässwörd 7"  # NFC; the same password in NFD must give the same key
SALT = bytes(range(0xA0, 0xB0))
OPS = 1  # libsodium's minimum Argon2id cost keeps the vector fast
MEM = 8192
FILES = [
    ("CT/SE1/IM1.dcm", b"hello scanbeam relay\n" * 3, bytes(range(100, 116))),
    ("CT/empty.txt", b"", bytes(range(200, 216))),
]


def _keys(keys: RelayKeys) -> dict[str, str]:
    return {
        "master": keys.master.hex(),
        "auth": keys.auth.hex(),
        "verifier": keys.verifier,
        "transfer_id": keys.transfer_id.hex(),
        "data": keys.data.hex(),
        "manifest": keys.manifest.hex(),
        "file_end": keys.file_end.hex(),
        "index": keys.index.hex(),
    }


def manifest() -> Manifest:
    return Manifest(
        files=tuple(
            FileEntry(path, len(data), 1_700_000_000_000_000_000 + i, prefix)
            for i, (path, data, prefix) in enumerate(FILES)
        ),
        chunk_size=RELAY_CHUNK_SIZE,
        summary={"note": "relay vector"},
    )


def build() -> dict[str, Any]:
    pw = password_key(PASSWORD, SALT, OPS, MEM)
    plain = RelayKeys.derive(LINK_SECRET, None)
    locked = RelayKeys.derive(LINK_SECRET, pw)
    writer = DropWriter(locked, manifest())
    parts = [writer.header()]
    while (req := writer.next_read()) is not None:
        parts.append(writer.feed(req, FILES[req.file_ix][1][req.offset : req.offset + req.length]))
    parts.append(writer.finish())
    blob = b"".join(parts)
    trailer = blob[-TRAILER_SIZE:]
    return {
        "password_key": {
            "password": PASSWORD,
            "salt": SALT.hex(),
            "ops": OPS,
            "mem": MEM,
            "out": pw.hex(),
        },
        "keys_without_password": {"link_secret": LINK_SECRET.hex(), **_keys(plain)},
        "keys_with_password": {
            "link_secret": LINK_SECRET.hex(),
            "password_key": pw.hex(),
            **_keys(locked),
        },
        "drop": {
            "keys": "keys_with_password",
            "files": [
                {"path": path, "content": data.hex(), "prefix": prefix.hex()}
                for path, data, prefix in FILES
            ],
            "digests": list(writer.digests),
            "index_offset": int.from_bytes(trailer[:8], "big"),
            "index_length": int.from_bytes(trailer[8:12], "big"),
            "blob": blob.hex(),
        },
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")
