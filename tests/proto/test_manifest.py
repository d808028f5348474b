from __future__ import annotations

import json
import os

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.errors import RemoteProtocolError, UnsafeManifestError
from peer.proto.manifest import (
    FileEntry,
    Manifest,
    check_path,
    clean_text,
    decode_manifest,
    encode_manifest,
)

HOSTILE = [
    "",
    "/etc/passwd",
    "../evil",
    "a/../../evil",
    "a/./b",
    "a//b",
    "a\\..\\b",
    "C:evil",
    "C:/Windows/evil",
    "file\x00.dcm",
    "bad\x1b[31mred",
    "bell\x07",
    "new\nline",
    "\u202eexe.dcm",
    "zero\u200bwidth",
    "CON",
    "con.txt",
    "sub/LPT1.dcm",
    "trailing.",
    "trailing ",
    "a" * 256,
    "/".join(["d"] * 40),
    "e\u0301",  # not NFC
    "what?",
    "pipe|",
]


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_paths_are_refused(path: str) -> None:
    with pytest.raises(UnsafeManifestError) as info:
        check_path(path)
    assert info.value.user_message.startswith("Refused the offer: ")
    assert "\x1b" not in info.value.user_message and "\x00" not in info.value.user_message


@pytest.mark.parametrize(
    "path", ["a.dcm", "STUDY/SE001/IM0001.dcm", "Bericht Müller.pdf", "é", ".hidden", "a b/c"]
)
def test_ordinary_paths_pass(path: str) -> None:
    assert check_path(path) == path


def test_non_string_path() -> None:
    with pytest.raises(UnsafeManifestError):
        check_path(42)


def _manifest(paths: list[str], size: int = 10) -> Manifest:
    return Manifest(files=tuple(FileEntry(p, size, 0, bytes(16)) for p in paths))


@pytest.mark.parametrize(
    "paths",
    [["a.dcm", "a.dcm"], ["A.dcm", "a.dcm"], ["x", "x/y"], ["x/y", "X"], ["d/Ä", "d/ä"]],
)
def test_collisions_are_refused(paths: list[str]) -> None:
    with pytest.raises(UnsafeManifestError):
        decode_manifest(encode_manifest(_manifest(paths)))


def _raw(doc: object) -> bytes:
    return bytes(zstandard.ZstdCompressor().compress(json.dumps(doc).encode()))


def test_malformed_manifests() -> None:
    good = {"v": 1, "chunk_size": 65472, "files": [["a", 1, 0, "00" * 16]], "summary": {}}
    assert decode_manifest(_raw(good)).files[0].path == "a"
    bad_docs = [
        [],
        {"v": 2},
        {**good, "chunk_size": 10},
        {**good, "chunk_size": True},
        {**good, "files": "nope"},
        {**good, "files": [["a", 1, 0]]},
        {**good, "files": [["a", "1", 0, "00" * 16]]},
        {**good, "files": [["a", 1, 0, "zz" * 16]]},
        {**good, "files": [["a", 1, 0, "00"]]},
    ]
    for doc in bad_docs:
        with pytest.raises(RemoteProtocolError):
            decode_manifest(_raw(doc))
    with pytest.raises(UnsafeManifestError):
        decode_manifest(_raw({**good, "files": [["a", -1, 0, "00" * 16]]}))
    with pytest.raises(RemoteProtocolError):
        decode_manifest(b"not zstd")
    with pytest.raises(RemoteProtocolError):
        decode_manifest(bytes(zstandard.ZstdCompressor().compress(b"{not json")))


def test_oversized_manifest_is_refused() -> None:
    doc = {"v": 1, "chunk_size": 65472, "files": [], "summary": {"pad": "x" * 2_000_000}}
    with pytest.raises(UnsafeManifestError):
        decode_manifest(_raw(doc), max_json=1_000_000)
    many = {"v": 1, "chunk_size": 65472, "files": [[f"f{i}", 0, 0, "00" * 16] for i in range(50)]}
    with pytest.raises(UnsafeManifestError) as info:
        decode_manifest(_raw(many), max_files=10)
    assert "50 files" in info.value.user_message


def test_summary_is_cleaned() -> None:
    m = Manifest(
        files=(),
        summary={"patient": "EVIL\x1b]0;title\x07NAME", "nested": [{"k\x1b": "v" * 500}]},
    )
    got = decode_manifest(encode_manifest(m)).summary
    assert got["patient"] == "EVIL]0;titleNAME"
    assert len(got["nested"][0]["k"]) == 200


def test_clean_text() -> None:
    assert clean_text("a\x1b[2Jb\u202ec") == "a[2Jbc"
    assert clean_text(5) == "5"


names = st.text(
    alphabet=st.characters(min_codepoint=0x30, max_codepoint=0x7A, exclude_characters=":<>?\\"),
    min_size=1,
    max_size=12,
)


@settings(max_examples=50)
@given(st.lists(names, unique_by=str.casefold, max_size=20), st.integers(0, 1 << 40))
def test_round_trip(paths: list[str], size: int) -> None:
    m = Manifest(
        files=tuple(FileEntry(f"s/x{p}", size, 7, os.urandom(16)) for p in paths),
        summary={"a": [1, 2.5, None, True]},
    )
    got = decode_manifest(encode_manifest(m))
    assert got.files == m.files
    assert got.summary == m.summary
    assert got.total_bytes == size * len(paths)
