"""Key derivation (docs/protocol.md §2).

Every key is BLAKE2b-256 keyed by a 32-byte secret over an ASCII purpose string
(libsodium ``crypto_generichash(32, purpose, key)``), so browsers derive the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from nacl.encoding import RawEncoder
from nacl.hash import blake2b

__all__ = ["SECRET_SIZE", "PairingKeys", "SessionKeys", "kdf"]

SECRET_SIZE = 32


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
