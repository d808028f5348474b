"""Pieces shared by the sender and receiver machines."""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import zstandard

from peer.errors import (
    BeamError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
    error_for_code,
)

__all__ = [
    "PROBE_SKIP",
    "ChunkPacker",
    "Failed",
    "json_body",
    "remote_error",
    "require_state",
    "transition",
    "unpack_chunk",
]

# Compression is kept for a chunk only when it saves at least 1/16; after a chunk that
# did not pay, the next PROBE_SKIP chunks of that file are sent without trying.
PROBE_SKIP = 16


@dataclass(frozen=True, slots=True)
class Failed:
    """The transfer failed; ``error.user_message`` says why."""

    error: BeamError


def json_body(body: bytes) -> dict[str, Any]:
    """Parse a JSON control body from the peer."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise RemoteProtocolError("control record is not JSON") from None
    if not isinstance(doc, dict):
        raise RemoteProtocolError("control record is not an object")
    return doc


def remote_error(body: bytes) -> BeamError:
    """Turn the peer's ERROR record into a local error naming what the peer reported."""
    try:
        code = json_body(body).get("code")
    except RemoteProtocolError:
        code = None
    cls = error_for_code(code) if isinstance(code, str) else BeamError
    if cls is BeamError:
        return RemoteError(f"peer error {code!r}")
    reason = cls.default_message.rstrip(".")
    return RemoteError(f"peer error {code!r}", user_message=f"The other side stopped: {reason}.")


class ChunkPacker:
    """The sender's adaptive chunk compression (docs/protocol.md §5.2), shared by the
    direct path and relay drops. Call :meth:`next_file` at each file boundary."""

    def __init__(self, level: int | None) -> None:
        self._zstd = zstandard.ZstdCompressor(level=level) if level is not None else None
        self.level = level
        self.enabled = True  # the adapter may pause compression (a fast link, a busy CPU)
        self.skip = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def next_file(self) -> None:
        self.skip = 0

    def set_level(self, level: int) -> None:
        """Compress the next chunks at this zstd level (no effect when built without
        compression); any level decodes the same way."""
        if self._zstd is not None and level != self.level:
            self._zstd = zstandard.ZstdCompressor(level=level)
            self.level = level

    def pack(self, data: bytes) -> tuple[bytes, bool]:
        """Return (body, compressed)."""
        if self._zstd is None or not self.enabled or len(data) < 512:
            return data, False
        if self.skip > 0:
            self.skip -= 1
            return data, False
        packed = self._zstd.compress(data)
        self.bytes_in += len(data)
        if len(packed) <= len(data) - (len(data) >> 4):
            self.bytes_out += len(packed)
            return packed, True
        self.bytes_out += len(data)
        self.skip = PROBE_SKIP
        return data, False


def unpack_chunk(
    body: bytes,
    compressed: bool,
    expected: int,
    decompressor: zstandard.ZstdDecompressor,
    error: Callable[[str], Exception],
) -> bytes:
    """Decompress (bounded) a chunk body and check its exact length.

    Raises:
        whatever ``error(detail)`` builds, for a bad frame or a wrong length.
    """
    if compressed:
        try:
            # max_output_size does not bound a frame that declares its size: check it first
            declared = zstandard.frame_content_size(body)
            if declared not in (-1, expected):
                raise error(f"chunk declares length {declared}, expected {expected}")
            body = decompressor.decompress(body, max_output_size=expected)
        except zstandard.ZstdError:
            raise error("chunk does not decompress") from None
    if len(body) != expected:
        raise error(f"chunk length {len(body)}, expected {expected}")
    return body


S = TypeVar("S", bound=enum.Enum)


def require_state(name: str, current: enum.Enum, wanted: enum.Enum) -> None:
    """Our own call out of order: raise LocalProtocolError ("<name> is X, not Y")."""
    if current is not wanted:
        raise LocalProtocolError(f"{name} is {current.value}, not {wanted.value}")


def transition(
    name: str,
    table: Mapping[S, frozenset[S]],
    current: S,
    new: S,
    trace: Callable[[str], None] | None,
    trace_name: str | None = None,
) -> S:
    """Check ``current -> new`` against the machine's table, trace it, return ``new``."""
    if new not in table[current]:
        raise LocalProtocolError(f"{name} {current.value} -> {new.value}")
    if trace is not None:
        trace(f"{trace_name or name}[{current.value}] -> {new.value}")
    return new
