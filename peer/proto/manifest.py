"""The manifest: what a transfer offers (docs/protocol.md §4.3), and path safety rules.

Everything in a manifest comes from the peer and is hostile until checked here:
paths, sizes, counts and the display summary.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import zstandard

from peer.errors import RemoteProtocolError, UnsafeManifestError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_FILE_SIZE",
    "MAX_PREVIEWS",
    "MAX_PREVIEW_BYTES",
    "MAX_PREVIEW_PX",
    "PNG_SIGNATURE",
    "FileEntry",
    "Manifest",
    "SeriesPreview",
    "check_path",
    "clean_text",
    "decode_manifest",
    "encode_manifest",
]

DEFAULT_CHUNK_SIZE = 65536 - 64  # a sealed chunk record fits one 64 KiB message
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 4 * 1024 * 1024
MAX_FILE_SIZE = 1 << 44  # 16 TiB
MAX_PATH_BYTES = 1024
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 32
MAX_PREVIEWS = 64  # series thumbnails per manifest (§5.1 "previews")
MAX_PREVIEW_PX = 256  # width and height limit of one thumbnail
MAX_PREVIEW_BYTES = 64 * 1024  # one decoded PNG
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR = struct.Struct("!I4sII")  # chunk length, type, width, height
_MAX_PREVIEW_B64 = 4 * -(-MAX_PREVIEW_BYTES // 3)

_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"COM{i}" for i in range(10)]
    + [f"LPT{i}" for i in range(10)]
    + ["COM¹", "COM²", "COM³", "LPT¹", "LPT²", "LPT³"]
)
# C0, DEL, C1 controls, bidi embeddings/overrides/isolates, line/paragraph separators,
# zero-width characters and the BOM: they make names lie on a terminal or in a folder view.
_BAD_CHARS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff\ufff9-\ufffb]"
)
_RESERVED = frozenset('\\:*?"<>|')


def check_path(path: object) -> str:
    """Return ``path`` if it is a safe relative file path, else raise.

    Rules: '/'-separated, relative, no empty, '.' or '..' component, no backslash, colon
    (drive letters, NTFS streams) or other character Windows reserves, no control,
    terminal-escape, bidi or zero-width character, no Windows device name, no component
    ending in a dot or space, bounded length and depth, NFC-normalised.

    Raises:
        UnsafeManifestError: with a user message naming the problem.
    """
    if not isinstance(path, str) or not path:
        raise _unsafe("a file name is empty or not text")
    shown = clean_text(path, 80)
    if unicodedata.normalize("NFC", path) != path:
        raise _unsafe(f"the name {shown!r} is not in normalised Unicode form")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise _unsafe(f"the name {shown!r} is too long")
    if _BAD_CHARS.search(path):
        raise _unsafe(f"the name {shown!r} contains control or invisible characters")
    if any(c in _RESERVED for c in path):
        raise _unsafe(f"the name {shown!r} contains a reserved character such as \\ or :")
    if path.startswith("/"):
        raise _unsafe(f"the name {shown!r} is an absolute path")
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        raise _unsafe(f"the name {shown!r} is nested too deeply")
    for part in parts:
        if part in ("", ".", ".."):
            raise _unsafe(f"the name {shown!r} contains an empty, '.' or '..' part")
        if part[-1] in ". ":
            raise _unsafe(f"the name {shown!r} has a part ending in a dot or space")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
            raise _unsafe(f"the name {shown!r} has a part that is too long")
        if part.split(".")[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
            raise _unsafe(f"the name {shown!r} is a reserved device name")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise _unsafe(f"the name {shown!r} is not valid Unicode") from None
    return path


def _unsafe(why: str) -> UnsafeManifestError:
    return UnsafeManifestError(why, user_message=f"Refused the offer: {why}.")


def clean_text(value: object, limit: int = 200) -> str:
    """Make a peer-supplied value safe to show on a terminal: no controls, bounded."""
    text = value if isinstance(value, str) else str(value)
    text = _BAD_CHARS.sub("", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


SUMMARY_LIST_MAX = 200_000


def _clean_summary(value: Any, depth: int = 0) -> Any:
    if depth > 6:
        return None
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        # as many items as a manifest may have files: a series lists every SOP Instance UID
        return [_clean_summary(v, depth + 1) for v in value[:SUMMARY_LIST_MAX]]
    # ``value`` comes from json.loads, so what is left is a dict with str keys
    return {clean_text(k, 64): _clean_summary(v, depth + 1) for k, v in list(value.items())[:100]}


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One offered file. ``prefix`` is its random 16-byte nonce prefix."""

    path: str
    size: int
    mtime_ns: int
    prefix: bytes

    def n_chunks(self, chunk_size: int) -> int:
        """Chunks of this file; an empty file still has one (empty, LAST) chunk."""
        return max(1, -(-self.size // chunk_size))


@dataclass(frozen=True, slots=True)
class SeriesPreview:
    """A thumbnail of one series (display only): PNG bytes of ``w`` x ``h`` pixels."""

    series: str
    png: bytes
    w: int
    h: int


@dataclass(frozen=True, slots=True)
class Manifest:
    files: tuple[FileEntry, ...]
    chunk_size: int = DEFAULT_CHUNK_SIZE
    summary: Mapping[str, Any] = field(default_factory=dict)
    previews: tuple[SeriesPreview, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def chunk_length(self, file_ix: int, chunk_ix: int) -> int:
        entry = self.files[file_ix]
        return max(0, min(self.chunk_size, entry.size - chunk_ix * self.chunk_size))


def encode_manifest(manifest: Manifest) -> bytes:
    """Serialise to zstd-compressed JSON (the MANIFEST record bodies, concatenated)."""
    doc = {
        "v": 1,
        "chunk_size": manifest.chunk_size,
        "files": [[f.path, f.size, f.mtime_ns, f.prefix.hex()] for f in manifest.files],
        "summary": manifest.summary,
    }
    if manifest.previews:
        doc["previews"] = [
            {
                "series": p.series,
                "mime": "image/png",
                "data": base64.b64encode(p.png).decode("ascii"),
                "w": p.w,
                "h": p.h,
            }
            for p in manifest.previews
        ]
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return bytes(zstandard.ZstdCompressor(level=3).compress(raw))


def decode_manifest(
    data: bytes, *, max_files: int = 200_000, max_json: int = 64 * 1024 * 1024
) -> Manifest:
    """Parse and check a manifest from the peer.

    Raises:
        UnsafeManifestError: unsafe or colliding names, oversized manifest.
        RemoteProtocolError: malformed data.
    """
    try:
        declared = zstandard.frame_content_size(data)  # -1: the frame does not say
    except zstandard.ZstdError:
        raise RemoteProtocolError("manifest is not a zstd frame") from None
    # max_output_size only bounds frames of unknown size; a declared size is allocated as is
    if declared > max_json:
        raise UnsafeManifestError(
            "manifest too large", user_message="Refused the offer: its file list is too large."
        )
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=max_json)
    except zstandard.ZstdError as exc:
        raise RemoteProtocolError(f"manifest does not decompress: {exc}") from None
    try:
        doc = json.loads(raw)
    except ValueError:
        raise RemoteProtocolError("manifest is not JSON") from None
    if not isinstance(doc, dict) or doc.get("v") != 1:
        raise RemoteProtocolError("manifest has no version 1")
    chunk_size = doc.get("chunk_size")
    if (
        not isinstance(chunk_size, int)
        or isinstance(chunk_size, bool)
        or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE
    ):
        raise RemoteProtocolError("manifest chunk size out of range")
    files_doc = doc.get("files")
    if not isinstance(files_doc, list):
        raise RemoteProtocolError("manifest has no file list")
    if len(files_doc) > max_files:
        raise UnsafeManifestError(
            f"{len(files_doc)} files",
            user_message=f"Refused the offer: {len(files_doc)} files is more than the limit "
            f"of {max_files}.",
        )
    files = tuple(_entry(item) for item in files_doc)
    _check_collisions([f.path for f in files])
    summary = doc.get("summary", {})
    return Manifest(
        files=files,
        chunk_size=chunk_size,
        summary=_clean_summary(summary) if isinstance(summary, dict) else {},
        previews=_previews(doc.get("previews")),
    )


def _previews(value: object) -> tuple[SeriesPreview, ...]:
    """The valid thumbnails among the first `MAX_PREVIEWS` entries; bad ones are dropped
    (they are display only: never a reason to refuse the offer)."""
    if not isinstance(value, list):
        return ()
    out: list[SeriesPreview] = []
    seen: set[str] = set()
    for item in value[:MAX_PREVIEWS]:
        preview = _preview(item)
        if preview is not None and preview.series not in seen:
            seen.add(preview.series)
            out.append(preview)
    return tuple(out)


def _dimension(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_PREVIEW_PX


def _preview(item: object) -> SeriesPreview | None:
    if not isinstance(item, dict) or item.get("mime") != "image/png":
        return None
    series, data, w, h = item.get("series"), item.get("data"), item.get("w"), item.get("h")
    if not isinstance(series, str) or not series or len(series) > 200:
        return None
    if not isinstance(data, str) or len(data) > _MAX_PREVIEW_B64:
        return None
    if not _dimension(w) or not _dimension(h):
        return None
    try:
        png = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(png) > MAX_PREVIEW_BYTES or not png.startswith(PNG_SIGNATURE):
        return None
    if len(png) < len(PNG_SIGNATURE) + _IHDR.size:
        return None
    length, kind, width, height = _IHDR.unpack_from(png, len(PNG_SIGNATURE))
    if length != 13 or kind != b"IHDR" or (width, height) != (w, h):
        return None
    return SeriesPreview(series=clean_text(series), png=png, w=width, h=height)


def _entry(item: object) -> FileEntry:
    if not isinstance(item, list) or len(item) != 4:
        raise RemoteProtocolError("manifest file entry malformed")
    path, size, mtime_ns, prefix = item
    check_path(path)
    for n in (size, mtime_ns):
        if not isinstance(n, int) or isinstance(n, bool):
            raise RemoteProtocolError("manifest number malformed")
    if not 0 <= size <= MAX_FILE_SIZE:
        raise UnsafeManifestError(
            "file size out of range", user_message="Refused the offer: a file size is impossible."
        )
    if not isinstance(prefix, str) or len(prefix) != 32:
        raise RemoteProtocolError("manifest nonce prefix malformed")
    try:
        raw_prefix = bytes.fromhex(prefix)
    except ValueError:
        raise RemoteProtocolError("manifest nonce prefix malformed") from None
    return FileEntry(path=path, size=size, mtime_ns=mtime_ns, prefix=raw_prefix)


def _check_collisions(paths: Sequence[str]) -> None:
    """Reject duplicates, names equal up to case, and a file that is also a folder."""
    files: set[str] = set()
    dirs: set[str] = set()
    for p in paths:
        key = p.casefold()
        if key in files or key in dirs:
            raise _unsafe(f"the name {clean_text(p, 80)!r} appears twice (ignoring case)")
        files.add(key)
        parts = key.split("/")
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
    clash = files & dirs
    if clash:
        raise _unsafe(f"the name {clean_text(sorted(clash)[0], 80)!r} is both a file and a folder")
