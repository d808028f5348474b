"""An in-memory pair of Sender and Receiver machines (no event loop), for core tests."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from peer.errors import BeamError
from peer.proto import receiver as rx
from peer.proto import sender as tx
from peer.proto.common import Failed
from peer.proto.keys import PairingKeys, SessionKeys
from peer.proto.manifest import FileEntry, Manifest
from peer.proto.records import (
    CONTROL_FILE,
    Flags,
    RecordType,
    open_record,
    parse_header,
    seal_record,
)

Tamper = Callable[[list[bytes]], list[bytes]]


def make_manifest(files: Sequence[bytes], chunk_size: int = 1024) -> Manifest:
    return Manifest(
        files=tuple(
            FileEntry(f"dir/f{i}.bin", len(b), 1_700_000_000_000_000_000 + i, os.urandom(16))
            for i, b in enumerate(files)
        ),
        chunk_size=chunk_size,
        summary={"note": "test"},
    )


def session_keys() -> SessionKeys:
    return PairingKeys.from_master(os.urandom(32)).session


class Pair:
    """Runs a whole transfer; ``tamper_s2r`` may rewrite each batch of sender records."""

    def __init__(
        self,
        files: Sequence[bytes],
        *,
        chunk_size: int = 1024,
        window: int = 4,
        compress: bool = True,
        resume: Sequence[int] = (),
        tamper_s2r: Tamper | None = None,
        accept: bool = True,
    ) -> None:
        self.files = list(files)
        self.keys = session_keys()
        self.manifest = make_manifest(files, chunk_size)
        self.sender = tx.Sender(self.keys, self.manifest, compress=compress)
        self.receiver = rx.Receiver(self.keys, window=window)
        self.out: dict[int, bytearray] = {}
        self.resume = list(resume)
        self.tamper = tamper_s2r
        self.accept = accept
        self.s_events: list[object] = []
        self.r_events: list[object] = []
        self.max_in_flight = 0

    def _hashes(self) -> list[Any]:
        cs = self.manifest.chunk_size
        hs: list[Any] = []
        for i, k in enumerate(self.resume):
            h = hashlib.sha256(self.files[i][: k * cs])
            self.out[i] = bytearray(self.files[i][: k * cs])
            hs.append(h)
        return hs

    def run(self, max_steps: int = 100_000) -> None:
        self.sender.start()
        in_flight = 0
        for _ in range(max_steps):
            batch = self.sender.data_to_send()
            if self.tamper is not None and batch:
                batch = self.tamper(batch)
            for rec in batch:
                self.receiver.receive_message(rec)
            for ev in self.receiver.events_received():
                self.r_events.append(ev)
                if isinstance(ev, rx.Offered):
                    if self.accept:
                        self.receiver.accept(self.resume, self._hashes() if self.resume else ())
                    else:
                        self.receiver.decline()
                elif isinstance(ev, rx.ChunkReceived):
                    buf = self.out.setdefault(ev.file_ix, bytearray())
                    assert len(buf) == ev.offset
                    buf += ev.data
                    in_flight += 1
                elif isinstance(ev, rx.AllVerified):
                    self.receiver.finish()
            self.max_in_flight = max(self.max_in_flight, in_flight)
            self.receiver.release(in_flight)
            in_flight = 0
            for rec in self.receiver.data_to_send():
                self.sender.receive_message(rec)
            self.s_events += self.sender.events_received()
            while (req := self.sender.next_read()) is not None:
                data = self.files[req.file_ix][req.offset : req.offset + req.length]
                self.sender.feed(req, data)
                if req.transmit:
                    break  # one chunk per step keeps the window observable
            if self._quiet():
                return
        raise AssertionError("transfer did not finish")

    def _quiet(self) -> bool:
        s_end = self.sender.state in (tx.SenderState.DONE, tx.SenderState.FAILED)
        r_end = self.receiver.state in (
            rx.ReceiverState.DONE,
            rx.ReceiverState.FAILED,
            rx.ReceiverState.DECLINED,
        )
        pending = self.sender._out or self.receiver._out
        return s_end and r_end and not pending

    def received(self) -> list[bytes]:
        return [bytes(self.out.get(i, b"")) for i in range(len(self.files))]


# Helpers for edge tests: act as the peer of one machine, with the session keys.


def seal_s2r(
    keys: SessionKeys,
    rtype: RecordType,
    body: bytes,
    index: int,
    *,
    flags: Flags = Flags.NONE,
    file_ix: int = CONTROL_FILE,
) -> bytes:
    """A control record as the sender would seal it."""
    return seal_record(
        keys.ctrl_s2r, keys.transfer_id, rtype, body, index=index, flags=flags, file_ix=file_ix
    )


def seal_r2s(keys: SessionKeys, rtype: RecordType, body: bytes, index: int) -> bytes:
    """A control record as the receiver would seal it."""
    return seal_record(keys.ctrl_r2s, keys.transfer_id, rtype, body, index=index)


def seal_chunk(
    keys: SessionKeys,
    manifest: Manifest,
    file_ix: int,
    chunk_ix: int,
    body: bytes,
    flags: Flags = Flags.NONE,
) -> bytes:
    """A CHUNK record sealed with the right key and nonce prefix."""
    return seal_record(
        keys.data_s2r,
        keys.transfer_id,
        RecordType.CHUNK,
        body,
        index=chunk_ix,
        file_ix=file_ix,
        prefix=manifest.files[file_ix].prefix,
        flags=flags,
    )


def error_code(keys: SessionKeys, record: bytes, *, s2r: bool) -> str:
    """The code in an ERROR record."""
    hdr = parse_header(record)
    assert hdr.type is RecordType.ERROR
    body = open_record(keys.ctrl_s2r if s2r else keys.ctrl_r2s, keys.transfer_id, record, hdr)
    code = json.loads(body)["code"]
    assert isinstance(code, str)
    return code


def expect_failed(
    machine: tx.Sender | rx.Receiver, error_type: type[BeamError], detail: str
) -> BeamError:
    """The machine failed once, with exactly ``error_type`` whose detail contains ``detail``."""
    events = machine.events_received()
    assert machine.state.value == "failed"
    fails = [e for e in events if isinstance(e, Failed)]
    assert len(fails) == 1, events
    err = fails[0].error
    assert type(err) is error_type, err
    assert detail in str(err), str(err)
    assert machine.error is err
    return err


class Transfer:
    """A sender that sent its manifest and a receiver in the OFFERED state."""

    def __init__(
        self, files: Sequence[bytes], *, chunk_size: int = 1024, window: int = 4, **kw: Any
    ) -> None:
        self.files = list(files)
        self.keys = session_keys()
        self.manifest = make_manifest(files, chunk_size)
        self.sender = tx.Sender(self.keys, self.manifest, **kw)
        self.receiver = rx.Receiver(self.keys, window=window)
        self.sender.start()
        self.s2r()
        events = self.receiver.events_received()
        assert [type(e) for e in events] == [rx.Offered]

    def s2r(self) -> None:
        for rec in self.sender.data_to_send():
            self.receiver.receive_message(rec)

    def r2s(self) -> None:
        for rec in self.receiver.data_to_send():
            self.sender.receive_message(rec)

    def accept(self) -> None:
        """Accept with nothing held; the sender is then SENDING."""
        self.receiver.accept()
        self.r2s()
        assert [type(e) for e in self.sender.events_received()] == [tx.Accepted]

    def send_chunks(self, limit: int = 1_000_000) -> int:
        """Feed the sender up to ``limit`` reads; return how many were transmitted."""
        sent = 0
        while sent < limit and (req := self.sender.next_read()) is not None:
            data = self.files[req.file_ix][req.offset : req.offset + req.length]
            self.sender.feed(req, data)
            sent += req.transmit
        return sent
