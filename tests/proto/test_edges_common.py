"""Edges of the small shared modules: common.py, keys.py, records.py, wordlist.py."""

from __future__ import annotations

import pytest

from peer.errors import IntegrityError, RemoteError, RemoteProtocolError, VersionError
from peer.proto.common import json_body, remote_error
from peer.proto.keys import kdf
from peer.proto.records import (
    CONTROL_FILE,
    HEADER_SIZE,
    MAX_RECORD,
    OVERHEAD,
    Flags,
    Header,
    RecordType,
    open_record,
    parse_header,
    seal_record,
)
from peer.proto.wordlist import EVEN, ODD

KEY = bytes(range(32))
TID = bytes(16)

# common.py: JSON control bodies and the peer's ERROR record


def test_json_body_parses_an_object() -> None:
    assert json_body(b'{"a": 1}') == {"a": 1}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"", "control record is not JSON"),
        (b"{nope", "control record is not JSON"),
        (b"\xff\xfe", "control record is not JSON"),
        (b"[1, 2]", "control record is not an object"),
        (b'"text"', "control record is not an object"),
    ],
)
def test_json_body_rejects_bad_bodies(body: bytes, detail: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        json_body(body)
    assert type(info.value) is RemoteProtocolError
    assert str(info.value) == detail


def test_remote_error_names_a_known_code() -> None:
    err = remote_error(b'{"code": "disk-full"}')
    assert type(err) is RemoteError
    assert str(err) == "peer error 'disk-full'"
    assert err.user_message == (
        "The other side stopped: Not enough free disk space in the destination folder."
    )


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        (b"not json", "None"),  # the ERROR body itself is malformed
        (b"[]", "None"),
        (b"{}", "None"),
        (b'{"code": 42}', "42"),  # not text
        (b'{"code": "no-such-code"}', "'no-such-code'"),  # unknown code
        (b'{"code": "internal"}', "'internal'"),  # maps to the root class
    ],
)
def test_remote_error_with_an_unknown_or_missing_code(body: bytes, shown: str) -> None:
    err = remote_error(body)
    assert type(err) is RemoteError
    assert str(err) == f"peer error {shown}"
    assert err.user_message == "The other side reported an error and stopped."


# keys.py


def test_kdf_refuses_a_short_secret() -> None:
    with pytest.raises(ValueError, match=r"^secret too short$"):
        kdf(bytes(15), "scanbeam v1 code")
    assert len(kdf(bytes(16), "scanbeam v1 code")) == 32
    assert len(kdf(bytes(16), "scanbeam v1 transfer id", 16)) == 16


# records.py: header checks (docs/protocol.md §5)


def _record(rtype: int = RecordType.CREDIT, flags: int = 0, version: int = 1) -> bytes:
    rec = bytearray(seal_record(KEY, TID, RecordType.CREDIT, bytes(8), index=0))
    rec[0], rec[1], rec[2] = version, rtype, flags
    return bytes(rec)


def test_parse_header_accepts_the_size_bounds() -> None:
    smallest = seal_record(KEY, TID, RecordType.DECLINE, b"", index=3)
    assert len(smallest) == OVERHEAD
    assert parse_header(smallest) == Header(RecordType.DECLINE, Flags.NONE, CONTROL_FILE, 3)
    largest = seal_record(KEY, TID, RecordType.MANIFEST, bytes(MAX_RECORD - OVERHEAD), index=0)
    assert parse_header(largest).type is RecordType.MANIFEST


@pytest.mark.parametrize(
    ("data", "error", "detail"),
    [
        (b"", RemoteProtocolError, "record too short (0 bytes)"),
        (bytes(OVERHEAD - 1), RemoteProtocolError, f"record too short ({OVERHEAD - 1} bytes)"),
        (bytes(MAX_RECORD + 1), RemoteProtocolError, f"record too long ({MAX_RECORD + 1} bytes)"),
        (_record(version=0), VersionError, "record version 0"),
        (_record(version=2), VersionError, "record version 2"),
        (_record(rtype=0), RemoteProtocolError, "unknown record type 0"),
        (_record(rtype=11), RemoteProtocolError, "unknown record type 11"),
        (_record(flags=4), RemoteProtocolError, "unknown record flags 0x4"),
        (_record(flags=0x83), RemoteProtocolError, "unknown record flags 0x83"),
    ],
    ids=[
        "empty",
        "short",
        "long",
        "version-0",
        "version-2",
        "type-0",
        "type-11",
        "flag-4",
        "flags-0x83",
    ],
)
def test_parse_header_rejects(data: bytes, error: type[Exception], detail: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_header(data)
    assert type(info.value) is error
    assert str(info.value) == detail


def test_parse_header_keeps_known_flags() -> None:
    hdr = parse_header(_record(flags=Flags.LAST | Flags.COMPRESSED))
    assert hdr.flags == Flags.LAST | Flags.COMPRESSED


def test_open_record_names_the_record_that_failed() -> None:
    prefix = bytes(range(16))
    rec = seal_record(KEY, TID, RecordType.CHUNK, b"data", index=7, file_ix=2, prefix=prefix)
    hdr = parse_header(rec)
    assert open_record(KEY, TID, rec, hdr, prefix=prefix) == b"data"
    for key, tid, pfx in [(bytes(32), TID, prefix), (KEY, b"x" * 16, prefix), (KEY, TID, TID)]:
        with pytest.raises(IntegrityError) as info:
            open_record(key, tid, rec, hdr, prefix=pfx)
        assert str(info.value) == "record CHUNK file=2 index=7 failed authentication"
    moved = rec[: HEADER_SIZE - 1] + b"\x08" + rec[HEADER_SIZE:]  # another chunk index
    with pytest.raises(IntegrityError):
        open_record(KEY, TID, moved, parse_header(moved), prefix=prefix)


# wordlist.py: data for the pairing code (docs/protocol.md §2.1)


@pytest.mark.parametrize("words", [EVEN, ODD], ids=["even", "odd"])
def test_word_lists_have_256_unique_lowercase_words(words: tuple[str, ...]) -> None:
    assert len(words) == 256
    assert len(set(words)) == 256
    for w in words:
        assert w.isascii() and w.isalpha() and w == w.lower(), w


def test_word_lists_are_disjoint() -> None:
    # a code is "<nameplate>-<even>-<odd>": a swapped pair must not look valid
    assert not set(EVEN) & set(ODD)
    assert (EVEN[0], ODD[0], EVEN[-1], ODD[-1]) == ("aardvark", "adroitness", "zulu", "yucatan")
