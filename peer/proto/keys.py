"""Key derivation (docs/protocol.md §2; relay keys: docs/relay-draft.md "Keys").

Every key is BLAKE2b-256 keyed by a 32-byte secret over an ASCII purpose string
(libsodium ``crypto_generichash(32, purpose, key)``), so browsers derive the same keys.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass

from nacl.encoding import RawEncoder
from nacl.hash import blake2b
from nacl.pwhash import argon2id

__all__ = [
    "DEFAULT_MEM",
    "DEFAULT_OPS",
    "MAX_MEM",
    "MAX_OPS",
    "SALT_SIZE",
    "SECRET_SIZE",
    "PairingKeys",
    "RelayKeys",
    "SessionKeys",
    "kdf",
    "password_key",
]

SECRET_SIZE = 32
# Argon2id cost of a drop password (libsodium crypto_pwhash, ALG_ARGON2ID13).
DEFAULT_OPS = 3
DEFAULT_MEM = 64 * 1024 * 1024
SALT_SIZE = 16
# The parameters of a download come from the (untrusted) server: refuse absurd costs.
MAX_OPS = 16
MAX_MEM = 1024 * 1024 * 1024


def kdf(secret: bytes, purpose: str, size: int = 32) -> bytes:
    """Derive ``size`` bytes for ``purpose`` from ``secret`` (BLAKE2b keyed hash)."""
    if len(secret) < 16:
        raise ValueError("secret too short")
    return bytes(blake2b(purpose.encode("ascii"), digest_size=size, key=secret, encoder=RawEncoder))


@dataclass(frozen=True, slots=True, repr=False)
class SessionKeys:
    """Keys of one transfer: chunks and control records, one key per direction."""

    transfer_id: bytes
    data_s2r: bytes
    ctrl_s2r: bytes
    ctrl_r2s: bytes

    @classmethod
    def from_master(cls, master: bytes) -> SessionKeys:
        return cls(
            transfer_id=kdf(master, "scanbeam v1 transfer id", 16),
            data_s2r=kdf(master, "scanbeam v1 data s2r"),
            ctrl_s2r=kdf(master, "scanbeam v1 ctrl s2r"),
            ctrl_r2s=kdf(master, "scanbeam v1 ctrl r2s"),
        )


@dataclass(frozen=True, slots=True, repr=False)
class PairingKeys:
    """Keys derived from the pairing secret: signaling envelopes and the session."""

    master: bytes
    env_s2r: bytes
    env_r2s: bytes
    session: SessionKeys
    verifier: str

    @classmethod
    def from_master(cls, master: bytes) -> PairingKeys:
        return cls(
            master=master,
            env_s2r=kdf(master, "scanbeam v1 envelope s2r"),
            env_r2s=kdf(master, "scanbeam v1 envelope r2s"),
            session=SessionKeys.from_master(kdf(master, "scanbeam v1 session")),
            verifier=kdf(master, "scanbeam v1 verifier", 4).hex(),
        )


def password_key(password: str, salt: bytes, ops: int, mem: int) -> bytes:
    """Stretch a drop password with Argon2id (docs/relay-draft.md "Keys").

    Args:
        password: as typed; NFC-normalised and encoded as UTF-8 first, so the same
            password typed on any system gives the same key.
        salt: :data:`SALT_SIZE` random bytes, chosen per drop by the sender.
        ops: Argon2id ``opslimit`` (:data:`DEFAULT_OPS` for new drops).
        mem: Argon2id ``memlimit`` in bytes (:data:`DEFAULT_MEM` for new drops).

    Returns:
        32 bytes for :meth:`RelayKeys.derive`.

    Raises:
        ValueError: wrong salt size, or a cost outside libsodium's minimum and
            :data:`MAX_OPS` / :data:`MAX_MEM` (a download's parameters come from the server).
    """
    if len(salt) != SALT_SIZE:
        raise ValueError(f"salt must be {SALT_SIZE} bytes")
    if not argon2id.OPSLIMIT_MIN <= ops <= MAX_OPS:
        raise ValueError(f"Argon2id opslimit {ops} out of range")
    if not argon2id.MEMLIMIT_MIN <= mem <= MAX_MEM:
        raise ValueError(f"Argon2id memlimit {mem} out of range")
    secret = unicodedata.normalize("NFC", password).encode("utf-8")
    return bytes(argon2id.kdf(32, secret, salt, opslimit=ops, memlimit=mem))


@dataclass(frozen=True, slots=True, repr=False)
class RelayKeys:
    """Keys of one relay drop, from its link secret and optional password key.

    ``auth`` proves to the server that a downloader holds the link (and password); the
    server stores only :attr:`verifier`. The record keys never leave the clients.
    """

    master: bytes
    auth: bytes
    transfer_id: bytes
    data: bytes
    manifest: bytes
    file_end: bytes
    index: bytes

    @classmethod
    def derive(cls, link_secret: bytes, password_key: bytes | None) -> RelayKeys:
        """Derive every key of a drop (docs/relay-draft.md "Keys").

        Args:
            link_secret: the 32 random bytes ``S`` of the link fragment.
            password_key: :func:`password_key` of the drop password, or None.

        Raises:
            ValueError: a secret of the wrong size.
        """
        if len(link_secret) != SECRET_SIZE:
            raise ValueError(f"link secret must be {SECRET_SIZE} bytes")
        master = kdf(link_secret, "scanbeam v1 relay master")
        if password_key is not None:
            if len(password_key) != 32:
                raise ValueError("password key must be 32 bytes")
            master = kdf(master, "scanbeam v1 relay password " + password_key.hex())
        session = kdf(master, "scanbeam v1 relay session")
        return cls(
            master=master,
            auth=kdf(master, "scanbeam v1 relay auth"),
            transfer_id=kdf(session, "scanbeam v1 transfer id", 16),
            data=kdf(session, "scanbeam v1 relay data"),
            manifest=kdf(session, "scanbeam v1 relay manifest"),
            file_end=kdf(session, "scanbeam v1 relay file end"),
            index=kdf(session, "scanbeam v1 relay index"),
        )

    @property
    def verifier(self) -> str:
        """``hex(SHA-256(auth))``: what the server stores to check downloaders."""
        return hashlib.sha256(self.auth).hexdigest()

    def __repr__(self) -> str:
        return f"RelayKeys(verifier={self.verifier[:12]}…)"
