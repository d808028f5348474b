"""Regenerate tests/vectors/v1.json (golden vectors shared with other implementations).

python -m tests.proto.make_vectors
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peer.proto.keys import PairingKeys, kdf
from peer.proto.records import Flags, RecordType, seal_record

OUT = Path(__file__).resolve().parent.parent / "vectors" / "v1.json"


def build() -> dict[str, Any]:
    master = bytes(range(32))
    keys = PairingKeys.from_master(master)
    s = keys.session
    prefix = bytes(range(100, 116))
    chunk = seal_record(
        s.data_s2r,
        s.transfer_id,
        RecordType.CHUNK,
        b"hello scanbeam",
        index=7,
        file_ix=2,
        prefix=prefix,
        flags=Flags.LAST,
    )
    credit = seal_record(
        s.ctrl_r2s, s.transfer_id, RecordType.CREDIT, (128).to_bytes(8, "big"), index=3
    )
    return {
        "kdf": {
            "secret": master.hex(),
            "purpose": "scanbeam v1 session",
            "out": kdf(master, "scanbeam v1 session").hex(),
        },
        "pairing_keys_from_master": {
            "master": master.hex(),
            "env_s2r": keys.env_s2r.hex(),
            "env_r2s": keys.env_r2s.hex(),
            "transfer_id": s.transfer_id.hex(),
            "data_s2r": s.data_s2r.hex(),
            "ctrl_s2r": s.ctrl_s2r.hex(),
            "ctrl_r2s": s.ctrl_r2s.hex(),
            "verifier": keys.verifier,
        },
        "link_master": {
            "link_secret": master.hex(),
            "master": kdf(master, "scanbeam v1 link").hex(),
        },
        "chunk_record": {
            "key": s.data_s2r.hex(),
            "transfer_id": s.transfer_id.hex(),
            "prefix": prefix.hex(),
            "file_ix": 2,
            "chunk_ix": 7,
            "flags": 1,
            "plaintext": b"hello scanbeam".hex(),
            "record": chunk.hex(),
        },
        "credit_record": {
            "key": s.ctrl_r2s.hex(),
            "transfer_id": s.transfer_id.hex(),
            "seq": 3,
            "credit": 128,
            "record": credit.hex(),
        },
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {OUT}")
