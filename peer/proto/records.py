"""Peer records: framing and AEAD of everything on the data channel (docs/protocol.md §4).

A record is a 15-byte header followed by an XChaCha20-Poly1305 ciphertext. The header
plus the transfer id is the associated data, so a record cannot be replayed into another
transfer, file or position::

    version u8 | type u8 | flags u8 | file index u32 | index u64 | ciphertext (+16-byte tag)

CHUNK records use the data key and the nonce ``file prefix (16) || chunk index (8)``.
All other records are control records: file index ``0xFFFFFFFF``, ``index`` is a
per-direction sequence number starting at 0, and the nonce is ``16 zero bytes || index``
under the direction's control key (each key is used for one direction of one session).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from peer.errors import IntegrityError, RemoteProtocolError, VersionError

__all__ = [
    "CONTROL_FILE",
    "HEADER_SIZE",
    "MAX_RECORD",
    "OVERHEAD",
    "PROTOCOL_VERSION",
    "TAG_SIZE",
    "Flags",
    "Header",
    "RecordType",
    "open_record",
    "parse_header",
    "seal_record",
]

PROTOCOL_VERSION = 1
CONTROL_FILE = 0xFFFFFFFF
TAG_SIZE = 16
_HDR = struct.Struct("!BBBIQ")
HEADER_SIZE = _HDR.size
OVERHEAD = HEADER_SIZE + TAG_SIZE
MAX_RECORD = 256 * 1024  # largest message any peer must accept (aiortc/browsers)


class RecordType(enum.IntEnum):
    MANIFEST = 1  # sender: part of the compressed manifest; LAST on the final part
    CHUNK = 2  # sender: one chunk of a file
    FILE_END = 3  # sender: JSON {"sha256": hex} after the last chunk of a file
    ACCEPT = 4  # receiver: JSON {"resume": [chunks already held per file]}
    DECLINE = 5  # receiver: empty body
    CREDIT = 6  # receiver: u64 cumulative number of CHUNK records allowed
    RECEIPT = 7  # receiver: JSON {"files": [{"sha256": hex}], "bytes": n}
    ERROR = 8  # either: JSON {"code": str}
    CLOSE = 9  # sender: empty body, after a good receipt
    INDEX = 10  # relay drops only: the blob's record index (docs/relay-draft.md)


class Flags(enum.IntFlag):
    NONE = 0
    LAST = 1
    COMPRESSED = 2


# a plain int: since Python 3.11, ~ on a Flag only inverts within its members (~3 == 0)
_KNOWN_FLAGS = int(Flags.LAST | Flags.COMPRESSED)


@dataclass(frozen=True, slots=True)
class Header:
    type: RecordType
    flags: Flags
    file_ix: int
    index: int


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + index.to_bytes(8, "big")


def seal_record(
    key: bytes,
    transfer_id: bytes,
    rtype: RecordType,
    body: bytes,
    *,
    index: int,
    file_ix: int = CONTROL_FILE,
    prefix: bytes = bytes(16),
    flags: Flags = Flags.NONE,
) -> bytes:
    """Seal one record. ``prefix`` is the file's nonce prefix for CHUNK records."""
    hdr = _HDR.pack(PROTOCOL_VERSION, rtype, flags, file_ix, index)
    ct = crypto_aead_xchacha20poly1305_ietf_encrypt(
        body, hdr + transfer_id, _nonce(prefix, index), key
    )
    return hdr + ct


def parse_header(data: bytes) -> Header:
    """Parse and check a record header. Raises RemoteProtocolError on bad input."""
    if len(data) < OVERHEAD:
        raise RemoteProtocolError(f"record too short ({len(data)} bytes)")
    if len(data) > MAX_RECORD:
        raise RemoteProtocolError(f"record too long ({len(data)} bytes)")
    version, rtype, flags, file_ix, index = _HDR.unpack_from(data)
    if version != PROTOCOL_VERSION:
        raise VersionError(f"record version {version}")
    try:
        rt = RecordType(rtype)
    except ValueError:
        raise RemoteProtocolError(f"unknown record type {rtype}") from None
    if flags & ~_KNOWN_FLAGS:
        raise RemoteProtocolError(f"unknown record flags {flags:#x}")
    return Header(rt, Flags(flags), file_ix, index)


def open_record(
    key: bytes, transfer_id: bytes, data: bytes, hdr: Header, *, prefix: bytes = bytes(16)
) -> bytes:
    """Authenticate and decrypt a record whose header was parsed by :func:`parse_header`.

    Raises:
        IntegrityError: the tag does not verify (tampered, wrong key, wrong position).
    """
    try:
        return bytes(
            crypto_aead_xchacha20poly1305_ietf_decrypt(
                data[HEADER_SIZE:],
                data[:HEADER_SIZE] + transfer_id,
                _nonce(prefix, hdr.index),
                key,
            )
        )
    except CryptoError:
        raise IntegrityError(
            f"record {hdr.type.name} file={hdr.file_ix} index={hdr.index} failed authentication"
        ) from None
