"""Golden vectors: the wire format must not change by accident (docs/protocol.md §8)."""

from __future__ import annotations

import json
from pathlib import Path

from peer.proto.keys import PairingKeys, kdf
from peer.proto.records import open_record, parse_header

from .make_vectors import OUT, build

VECTORS = json.loads(Path(OUT).read_text())


def test_vectors_file_matches_the_code() -> None:
    assert build() == VECTORS


def test_vectors_decode_independently() -> None:
    v = VECTORS["chunk_record"]
    rec = bytes.fromhex(v["record"])
    hdr = parse_header(rec)
    assert (hdr.file_ix, hdr.index, int(hdr.flags)) == (v["file_ix"], v["chunk_ix"], v["flags"])
    plain = open_record(
        bytes.fromhex(v["key"]),
        bytes.fromhex(v["transfer_id"]),
        rec,
        hdr,
        prefix=bytes.fromhex(v["prefix"]),
    )
    assert plain.hex() == v["plaintext"]
    assert rec[:15].hex() == "0102010000000200000000000000" + "07"
    keys = PairingKeys.from_master(bytes.fromhex(VECTORS["pairing_keys_from_master"]["master"]))
    assert keys.session.data_s2r.hex() == VECTORS["pairing_keys_from_master"]["data_s2r"]
    k = VECTORS["kdf"]
    assert kdf(bytes.fromhex(k["secret"]), k["purpose"]).hex() == k["out"]
