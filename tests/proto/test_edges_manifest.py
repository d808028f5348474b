"""Edges of manifest decoding and path safety (docs/protocol.md §5.1)."""

from __future__ import annotations

import base64
import json
import struct

import pytest
import zstandard

from peer.errors import RemoteProtocolError, UnsafeManifestError
from peer.proto.manifest import (
    MAX_FILE_SIZE,
    MAX_PREVIEW_BYTES,
    MAX_PREVIEW_PX,
    MAX_PREVIEWS,
    PNG_SIGNATURE,
    FileEntry,
    Manifest,
    SeriesPreview,
    check_path,
    decode_manifest,
    encode_manifest,
)

PREFIX = "00" * 16


def _raw(doc: object, *, content_size: bool = True) -> bytes:
    raw = json.dumps(doc).encode()
    return bytes(zstandard.ZstdCompressor(write_content_size=content_size).compress(raw))


def _doc(**kw: object) -> dict[str, object]:
    return {"v": 1, "chunk_size": 65472, "files": [["a", 1, 0, PREFIX]], "summary": {}, **kw}


def _frame_declaring(size: int) -> bytes:
    """A zstd frame header that claims ``size`` bytes of content, and one empty block."""
    fhd = (3 << 6) | (1 << 5)  # 8-byte content size, single segment
    return b"\x28\xb5\x2f\xfd" + bytes([fhd]) + struct.pack("<Q", size) + b"\x01\x00\x00"


# path rules


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/".join(["a" * 200] * 6), "is too long"),
        ("/".join(["a" * 255] * 3 + ["a" * 254]) + "/bc", "is too long"),  # 1025 bytes
        ("é" * 128, "has a part that is too long"),  # 128 characters, 256 bytes
        ("a\ud800b", "is not valid Unicode"),  # a lone surrogate (JSON can carry one)
        ("dir/\udcff.dcm", "is not valid Unicode"),
    ],
)
def test_paths_refused_by_size_or_encoding(path: str, why: str) -> None:
    with pytest.raises(UnsafeManifestError) as info:
        check_path(path)
    assert why in str(info.value)
    assert info.value.user_message.startswith("Refused the offer: the name ")
    assert info.value.user_message.endswith(f"{why}.")


def test_path_length_limits_are_inclusive() -> None:
    longest = "/".join(["a" * 255] * 3 + ["a" * 254]) + "/b"
    assert len(longest.encode()) == 1024
    assert check_path(longest) == longest
    assert check_path("é" * 127) == "é" * 127  # 254 bytes
    deepest = "/".join(["d"] * 32)
    assert check_path(deepest) == deepest
    with pytest.raises(UnsafeManifestError, match=r"nested too deeply"):
        check_path(deepest + "/d")


def test_long_names_are_shortened_in_the_message() -> None:
    with pytest.raises(UnsafeManifestError) as info:
        check_path("/".join(["a" * 200] * 6))
    assert "…" in info.value.user_message and len(info.value.user_message) < 200


def test_a_lone_surrogate_from_the_wire_is_refused() -> None:
    raw = (
        b'{"v": 1, "chunk_size": 65472, "files": [["x\\ud800", 1, 0, "' + PREFIX.encode() + b'"]]}'
    )
    with pytest.raises(UnsafeManifestError, match=r"not valid Unicode"):
        decode_manifest(bytes(zstandard.ZstdCompressor().compress(raw)))


# sizes and numbers


def test_file_size_bounds() -> None:
    ok = decode_manifest(_raw(_doc(files=[["a", MAX_FILE_SIZE, -5, PREFIX]])))
    assert ok.files == (FileEntry("a", MAX_FILE_SIZE, -5, bytes(16)),)
    with pytest.raises(UnsafeManifestError) as info:
        decode_manifest(_raw(_doc(files=[["a", MAX_FILE_SIZE + 1, 0, PREFIX]])))
    assert info.value.user_message == "Refused the offer: a file size is impossible."


@pytest.mark.parametrize(
    ("files", "detail"),
    [
        ([["a", True, 0, PREFIX]], "manifest number malformed"),
        ([["a", 1, 1.5, PREFIX]], "manifest number malformed"),
        ([["a", 1, 0, 16]], "manifest nonce prefix malformed"),
        (["a"], "manifest file entry malformed"),
        ([["a", 1, 0, PREFIX, "extra"]], "manifest file entry malformed"),
    ],
)
def test_malformed_entries(files: list[object], detail: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_manifest(_raw(_doc(files=files)))
    assert type(info.value) is RemoteProtocolError
    assert str(info.value) == detail


@pytest.mark.parametrize("chunk_size", [1024, 4 * 1024 * 1024])
def test_chunk_size_bounds_are_inclusive(chunk_size: int) -> None:
    assert decode_manifest(_raw(_doc(chunk_size=chunk_size))).chunk_size == chunk_size


@pytest.mark.parametrize("chunk_size", [1023, 4 * 1024 * 1024 + 1, "65472", None])
def test_chunk_size_out_of_range(chunk_size: object) -> None:
    with pytest.raises(RemoteProtocolError, match=r"^manifest chunk size out of range$"):
        decode_manifest(_raw(_doc(chunk_size=chunk_size)))


def test_version_must_be_1() -> None:
    for doc in ({**_doc(), "v": 2}, {k: v for k, v in _doc().items() if k != "v"}, [1]):
        with pytest.raises(RemoteProtocolError, match=r"^manifest has no version 1$"):
            decode_manifest(_raw(doc))


# decompression: never trust the frame


@pytest.mark.parametrize("data", [b"", b"not zstd", b"\x28\xb5\x2f"])
def test_data_that_is_not_a_zstd_frame_is_a_protocol_error(data: bytes) -> None:
    # not "its file list is too large" (it used to be, because of a match on "size")
    with pytest.raises(RemoteProtocolError) as info:
        decode_manifest(data)
    assert type(info.value) is RemoteProtocolError
    assert str(info.value) == "manifest is not a zstd frame"


@pytest.mark.parametrize("declared", [1_000_001, 1 << 45, 1 << 63])
def test_a_frame_declaring_too_much_is_refused_before_decompressing(declared: int) -> None:
    # a 20-byte frame claiming 32 TiB made zstandard allocate it: MemoryError
    with pytest.raises(UnsafeManifestError) as info:
        decode_manifest(_frame_declaring(declared), max_json=1_000_000)
    assert info.value.user_message == "Refused the offer: its file list is too large."


def test_the_size_limit_is_inclusive() -> None:
    doc = _doc(summary={"pad": ""})
    size = len(json.dumps(doc).encode())
    assert decode_manifest(_raw(doc), max_json=size).files[0].path == "a"
    with pytest.raises(UnsafeManifestError):
        decode_manifest(_raw(doc), max_json=size - 1)


def test_a_frame_of_unknown_size_is_bounded_while_decompressing() -> None:
    doc = _doc(summary={"pad": "x" * 2_000_000})
    blob = _raw(doc, content_size=False)
    assert zstandard.frame_content_size(blob) == -1
    with pytest.raises(RemoteProtocolError) as info:
        decode_manifest(blob, max_json=1_000_000)
    assert type(info.value) is RemoteProtocolError
    assert str(info.value).startswith("manifest does not decompress: ")
    assert decode_manifest(blob).summary["pad"] == "x" * 199 + "…"  # under the default


@pytest.mark.parametrize("cut", [1, 10])
def test_a_truncated_frame_does_not_decompress(cut: int) -> None:
    blob = _raw(_doc())
    with pytest.raises(RemoteProtocolError, match=r"^manifest does not decompress: "):
        decode_manifest(blob[:-cut])


def test_a_frame_that_lies_about_its_size_does_not_decompress() -> None:
    with pytest.raises(RemoteProtocolError, match=r"^manifest does not decompress: "):
        decode_manifest(_frame_declaring(100))


# the display summary


def test_summary_nesting_is_cut_at_depth_6() -> None:
    deep: object = "leaf"
    for _ in range(9):
        deep = [deep]
    got = decode_manifest(encode_manifest(Manifest(files=(), summary={"d": deep}))).summary
    level: object = got["d"]  # depth 1
    for _ in range(5):  # down to depth 6
        assert isinstance(level, list) and len(level) == 1
        level = level[0]
    assert level == [None]  # the list at depth 6 is kept, its items (depth 7) are dropped


def test_summary_sizes_are_bounded() -> None:
    summary = {
        "k" * 100: 1,
        "many": list(range(200_005)),
        "wide": {f"k{i}": i for i in range(150)},
        "mixed": [True, None, 2.5, -3, "s"],
    }
    got = decode_manifest(encode_manifest(Manifest(files=(), summary=summary))).summary
    assert "k" * 63 + "…" in got
    assert got["many"] == list(range(200_000))
    assert got["wide"] == {f"k{i}": i for i in range(100)}
    assert got["mixed"] == [True, None, 2.5, -3, "s"]


@pytest.mark.parametrize("summary", [["a"], "text", 5, None])
def test_a_summary_that_is_not_an_object_is_dropped(summary: object) -> None:
    assert decode_manifest(_raw(_doc(summary=summary))).summary == {}


def test_a_missing_summary_is_empty() -> None:
    doc = _doc()
    del doc["summary"]
    assert decode_manifest(_raw(doc)).summary == {}


# previews (display only: bad entries are dropped, never fatal)


def _png(w: int = 2, h: int = 3, extra: bytes = b"\x00" * 32) -> bytes:
    """A PNG signature and IHDR chunk (enough for the manifest's checks)."""
    ihdr = struct.pack("!I4sIIBBBBB", 13, b"IHDR", w, h, 8, 0, 0, 0, 0)
    return PNG_SIGNATURE + ihdr + b"\x00\x00\x00\x00" + extra


def _entry(**kw: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "series": "1.2.3",
        "mime": "image/png",
        "data": base64.b64encode(_png()).decode(),
        "w": 2,
        "h": 3,
    }
    doc.update(kw)
    return doc


def _decoded_previews(previews: object) -> tuple[SeriesPreview, ...]:
    return decode_manifest(_raw(_doc(previews=previews))).previews


def test_previews_round_trip() -> None:
    p = SeriesPreview(series="1.2.3", png=_png(), w=2, h=3)
    q = SeriesPreview(series="1.2.4", png=_png(4, 5), w=4, h=5)
    m = Manifest(files=(FileEntry("a", 1, 0, b"\0" * 16),), previews=(p, q))
    assert decode_manifest(encode_manifest(m)).previews == (p, q)
    doc = json.loads(zstandard.ZstdDecompressor().decompress(encode_manifest(m)))
    assert doc["previews"][0] == _entry()  # the wire form of INTERFACES.md, standard base64


def test_manifest_without_previews_has_no_key() -> None:
    m = Manifest(files=(FileEntry("a", 1, 0, b"\0" * 16),))
    doc = json.loads(zstandard.ZstdDecompressor().decompress(encode_manifest(m)))
    assert "previews" not in doc
    assert decode_manifest(encode_manifest(m)).previews == ()


@pytest.mark.parametrize("previews", [None, {}, "x", 3])
def test_previews_not_a_list_are_ignored(previews: object) -> None:
    assert _decoded_previews(previews) == ()


@pytest.mark.parametrize(
    "bad",
    [
        "entry",
        _entry(mime="image/jpeg"),
        _entry(series=7),
        _entry(series=""),
        _entry(series="1" * 201),
        _entry(data=5),
        _entry(data="A" * (4 * ((MAX_PREVIEW_BYTES + 2) // 3) + 4)),
        _entry(data="not base64!"),
        _entry(data=base64.b64encode(b"GIF89a" + b"\0" * 40).decode()),
        _entry(data=base64.b64encode(_png(extra=b"\0" * MAX_PREVIEW_BYTES)).decode()),
        _entry(data=base64.b64encode(PNG_SIGNATURE + b"\0" * 8).decode()),
        _entry(data=base64.b64encode(_png()[:16] + b"IHDX" + _png()[20:]).decode()),
        _entry(data=base64.b64encode(b"\0\0\0\x0e".join([PNG_SIGNATURE, _png()[12:]])).decode()),
        _entry(w=3),
        _entry(h=2),
        _entry(w=True),
        _entry(h="3"),
        _entry(w=0),
        _entry(h=MAX_PREVIEW_PX + 1),
        _entry(data=base64.b64encode(_png(MAX_PREVIEW_PX + 1, 3)).decode(), w=MAX_PREVIEW_PX + 1),
    ],
)
def test_bad_preview_entries_are_dropped_not_fatal(bad: object) -> None:
    good = _entry(series="9.9")
    previews = _decoded_previews([bad, good])
    assert [p.series for p in previews] == ["9.9"]


def test_previews_are_limited_deduplicated_and_cleaned() -> None:
    many = [_entry(series=f"1.{i}") for i in range(MAX_PREVIEWS + 5)]
    assert len(_decoded_previews(many)) == MAX_PREVIEWS
    twice = _decoded_previews([_entry(), _entry(data=base64.b64encode(_png(extra=b"1")).decode())])
    assert len(twice) == 1 and twice[0].png == _png()
    (shown,) = _decoded_previews([_entry(series="1.2\x1b[31m.3\u202e")])
    assert shown.series == "1.2[31m.3"
    big = _png(MAX_PREVIEW_PX, MAX_PREVIEW_PX)
    (edge,) = _decoded_previews(
        [_entry(data=base64.b64encode(big).decode(), w=MAX_PREVIEW_PX, h=MAX_PREVIEW_PX)]
    )
    assert (edge.w, edge.h) == (MAX_PREVIEW_PX, MAX_PREVIEW_PX)
