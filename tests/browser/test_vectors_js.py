"""The page's JavaScript protocol module agrees byte for byte with the Python side.

Runs node on tests/browser/vectors.mjs with the golden vectors (docs/protocol.md §8) and with
a whole transfer and link-mode envelopes made here by peer/proto; what the JavaScript side
produced (its hello, answer, ACCEPT/CREDIT/RECEIPT records) is then opened by the Python code.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from peer.proto.handshake import EnvelopeReceived, Handshake, Paired, Role
from peer.proto.keys import kdf
from peer.proto.paths import MarkerKind, marker, rendezvous_id, round_master
from peer.proto.records import RecordType, open_record, parse_header
from tests.conftest import ROOT
from tests.proto.pair import Pair

from .conftest import node_bin, web_dir


def _transfer_case() -> tuple[dict[str, object], Pair, int]:
    files = [os.urandom(5000), b"", b"A" * 3000 + os.urandom(100)]
    records: list[bytes] = []

    def capture(batch: list[bytes]) -> list[bytes]:
        records.extend(batch)
        return batch

    pair = Pair(files, chunk_size=1024, window=4, tamper_s2r=capture)
    pair.run()
    assert pair.receiver.state.value == "done"
    case: dict[str, object] = {
        "window": 4,
        "records": [r.hex() for r in records],
        "contents": [f.hex() for f in files],
    }
    return case, pair, sum(len(f) for f in files)


def _envelope_case(secret: bytes) -> dict[str, object]:
    sender = Handshake(
        Role.SENDER, code="7-aardvark-adroitness", link_secret=secret, entropy=os.urandom
    )
    probe = Handshake(Role.RECEIVER, link_secret=secret, entropy=os.urandom)
    sender.start()
    probe.start()
    bodies = sender.data_to_send()  # the sender's PAKE message (ignored in link mode)
    for body in probe.data_to_send():  # {"t":"link"} and the receiver's hello
        sender.receive(body)
    bodies += sender.data_to_send()  # the sender's hello
    assert any(isinstance(e, Paired) for e in sender.events_received())
    offer = {"type": "offer", "sdp": "v=0 offer ünïcode", "version": 1}
    sender.send(offer)
    bodies += sender.data_to_send()
    assert len(bodies) == 3
    return {"link_secret": secret.hex(), "sender_bodies": bodies, "offer": offer}


def _v2_case(secret: bytes) -> tuple[dict[str, object], Handshake]:
    """Protocol v2 for the page: round derivations, lane markers, and a rejoin pairing (the
    Python sender's hello and offer of round 2, sealed with that round's master)."""
    master0 = kdf(secret, "scanbeam v1 link")
    rounds = {
        str(n): [rendezvous_id(master0, n), round_master(master0, n).hex()] for n in (1, 2, 17)
    }
    sender = Handshake(Role.SENDER, master=round_master(master0, 2), entropy=os.urandom)
    sender.start()
    bodies = sender.data_to_send()  # its hello, sent at once in mode rejoin
    markers = [marker(MarkerKind.START, 0).hex(), marker(MarkerKind.END, 0).hex()]
    markers.append(marker(MarkerKind.START, 1).hex())
    return {"rounds": rounds, "rejoin_bodies": bodies, "markers": markers}, sender


def test_js_module_matches_vectors_and_python(tmp_path: Path) -> None:
    secret = os.urandom(32)
    case, pair, total = _transfer_case()
    keys = pair.keys
    v2, rejoin_sender = _v2_case(secret)
    extra = {**_envelope_case(secret), **case, **v2}
    # Pair derives its session keys from a random master; hand node the same session keys
    extra_path = tmp_path / "extra.json"
    extra["session_keys"] = {
        "transfer_id": keys.transfer_id.hex(),
        "data_s2r": keys.data_s2r.hex(),
        "ctrl_s2r": keys.ctrl_s2r.hex(),
        "ctrl_r2s": keys.ctrl_r2s.hex(),
    }
    extra_path.write_text(json.dumps(extra))
    proc = subprocess.run(
        [
            node_bin(),
            str(ROOT / "tests/browser/vectors.mjs"),
            str(ROOT / "tests/vectors/v1.json"),
            str(ROOT / "tests/vectors/relay_v1.json"),
            str(extra_path),
        ],
        cwd=web_dir(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lines[-1] == "all ok"
    oks = [ln for ln in lines if ln.startswith("ok ")]
    assert len(oks) >= 60, lines

    # the JS side's hello and answer open in the Python sender
    js_bodies = json.loads(next(ln for ln in lines if ln.startswith("js_bodies "))[10:])
    sender = Handshake(
        Role.SENDER, code="7-aardvark-adroitness", link_secret=secret, entropy=os.urandom
    )
    sender.start()
    events = []
    for body in js_bodies:
        sender.receive(body)
        events += sender.events_received()
    assert isinstance(events[0], Paired) and events[0].mode == "link"
    assert isinstance(events[1], EnvelopeReceived)
    assert events[1].message == {"type": "answer", "sdp": "v=0 answer"}

    # the JS side's rejoin hello (round 2) opens in the Python sender of that round: v2 chosen
    rejoin = json.loads(next(ln for ln in lines if ln.startswith("rejoin_bodies "))[14:])
    assert len(rejoin) == 1  # no {"t":"link"} in a round: only the hello
    rejoin_sender.receive(rejoin[0])
    paired = [e for e in rejoin_sender.events_received() if isinstance(e, Paired)]
    assert paired and paired[0].mode == "rejoin" and paired[0].version == 2

    # the JS receiver's records open with the Python keys, in order, with the right content
    replies = [
        bytes.fromhex(h)
        for h in json.loads(next(ln for ln in lines if ln.startswith("replies "))[8:])
    ]
    kinds = []
    for seq, rec in enumerate(replies):
        hdr = parse_header(rec)
        assert hdr.index == seq
        body = open_record(keys.ctrl_r2s, keys.transfer_id, rec, hdr)
        kinds.append(hdr.type)
        if hdr.type is RecordType.ACCEPT:
            assert json.loads(body) == {"resume": [0, 0, 0], "credit": 4}
        if hdr.type is RecordType.RECEIPT:
            assert json.loads(body) == {
                "files": [{"sha256": d} for d in pair.receiver._digests],
                "bytes": total,
            }
    assert kinds[0] is RecordType.ACCEPT and kinds[-1] is RecordType.RECEIPT
    assert RecordType.CREDIT in kinds
