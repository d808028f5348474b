"""Pairing over the signaling room (docs/protocol.md §3): SPAKE2 or link secret, then
sealed envelopes.

Bodies exchanged through the signaling server are JSON strings:

- ``{"t": "pake", "m": b64}`` — a SPAKE2 (symmetric) message; password = the full code.
- ``{"t": "link"}`` — the receiver pairs with the secret from the QR link instead.
- ``{"t": "env", "s": seq, "c": b64(nonce24 || ciphertext)}`` — an envelope sealed with
  XChaCha20-Poly1305 under the sender's or receiver's envelope key; associated data
  ``"scanbeam v1 env" || direction || seq u64``. The first envelope each way is
  ``{"type": "hello", "versions": [...]}``; opening the peer's hello is the key
  confirmation: if it fails, the codes differ.
"""

from __future__ import annotations

import base64
import enum
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError
from spake2 import SPAKE2_Symmetric
from spake2.spake2 import SPAKEError

from peer.errors import (
    BeamError,
    IntegrityError,
    LocalProtocolError,
    RemoteProtocolError,
    VersionError,
    WrongCodeError,
)
from peer.proto.keys import PairingKeys, kdf

__all__ = [
    "SUPPORTED_VERSIONS",
    "EnvelopeReceived",
    "Handshake",
    "HandshakeFailed",
    "Paired",
    "Role",
]

SUPPORTED_VERSIONS: tuple[int, ...] = (1, 2)
PAKE_ID = b"scanbeam v1 pake"
MAX_BODY = 48 * 1024


class Role(enum.Enum):
    SENDER = "s"
    RECEIVER = "r"


class _State(enum.Enum):
    IDLE = "idle"
    PAIRING = "pairing"
    PAIRED = "paired"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Paired:
    keys: PairingKeys
    version: int
    mode: str  # "code" or "link"


@dataclass(frozen=True, slots=True)
class EnvelopeReceived:
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    error: BeamError


Event = Paired | EnvelopeReceived | HandshakeFailed


def _b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64d(text: object) -> bytes:
    if not isinstance(text, str):
        raise RemoteProtocolError("envelope field is not text")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise RemoteProtocolError("envelope field is not base64") from None


class Handshake:
    """One side of the pairing. Call sequentially; not thread-safe.

    The sender passes both ``code`` and ``link_secret`` (the receiver may use either);
    the receiver passes exactly one of them.
    """

    def __init__(
        self,
        role: Role,
        *,
        code: str | None = None,
        link_secret: bytes | None = None,
        master: bytes | None = None,
        entropy: Callable[[int], bytes],
        versions: Sequence[int] = SUPPORTED_VERSIONS,
    ) -> None:
        if master is not None:
            if code is not None or link_secret is not None or len(master) != 32:
                raise LocalProtocolError("a rejoin pairs by its round master alone")
        elif code is None and link_secret is None:
            raise LocalProtocolError("need a code or a link secret")
        if role is Role.RECEIVER and code is not None and link_secret is not None:
            raise LocalProtocolError("a receiver pairs by code or by link, not both")
        if role is Role.SENDER and code is None and master is None:
            raise LocalProtocolError("a sender needs a code (the link secret is optional)")
        self.role = role
        self._code = code
        self._link = link_secret
        self._master = master
        self._entropy = entropy
        self._versions = tuple(versions)
        self._state = _State.IDLE
        self._spake: Any = None
        self._keys: PairingKeys | None = None
        self._mode = ""
        self._send_seq = 0
        self._recv_seq = 0
        self._out: list[str] = []
        self._events: list[Event] = []
        self.trace: Callable[[str], None] | None = None

    @property
    def paired(self) -> bool:
        return self._state is _State.PAIRED

    @property
    def failed(self) -> bool:
        return self._state is _State.FAILED

    def start(self) -> None:
        """Both members are in the room: send our first messages."""
        if self._state is not _State.IDLE:
            raise LocalProtocolError("handshake already started")
        self._set(_State.PAIRING)
        if self._master is not None:  # a reconnection round (§10.3): both speak at once
            self._set_keys(PairingKeys.from_master(self._master), "rejoin")
            self._send_hello()
        elif self._code is not None:
            self._spake = SPAKE2_Symmetric(
                self._code.encode("utf-8"), idSymmetric=PAKE_ID, entropy_f=self._entropy
            )
            self._emit({"t": "pake", "m": _b64e(self._spake.start())})
        else:  # receiver by link (a sender always has a code)
            self._emit({"t": "link"})
            self._set_keys(self._link_keys(), "link")
            self._send_hello()

    def receive(self, body: str) -> None:
        """Feed one body from the room. Never raises on bad peer input."""
        if self._state in (_State.FAILED, _State.IDLE):
            return
        try:
            self._receive(body)
        except BeamError as exc:
            self._fail(exc)

    def send(self, message: dict[str, Any]) -> None:
        """Seal ``message`` in an envelope to the peer (after pairing)."""
        if self._state is not _State.PAIRED:
            raise LocalProtocolError("cannot send an envelope before pairing")
        self._seal(message)

    def data_to_send(self) -> list[str]:
        out, self._out = self._out, []
        return out

    def events_received(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # internals

    def _receive(self, body: str) -> None:
        if len(body) > MAX_BODY:
            raise RemoteProtocolError("signaling body too large")
        try:
            msg = json.loads(body)
        except ValueError:
            raise RemoteProtocolError("signaling body is not JSON") from None
        if not isinstance(msg, dict):
            raise RemoteProtocolError("signaling body is not an object")
        kind = msg.get("t")
        if kind == "pake":
            self._on_pake(_b64d(msg.get("m")))
        elif kind == "link":
            if self.role is not Role.SENDER or self._link is None or self._keys is not None:
                raise RemoteProtocolError("unexpected link pairing")
            self._set_keys(self._link_keys(), "link")
        elif kind == "env":
            self._on_envelope(msg)
        else:
            raise RemoteProtocolError("unknown signaling body type")

    def _on_pake(self, inbound: bytes) -> None:
        if self._spake is None or self._keys is not None:
            return  # receiver by link ignores the sender's PAKE; a second PAKE is ignored too
        try:
            key = self._spake.finish(inbound)
        except (SPAKEError, ValueError, AssertionError, TypeError) as exc:
            raise RemoteProtocolError(f"bad PAKE message: {type(exc).__name__}") from None
        self._set_keys(PairingKeys.from_master(kdf(key, "scanbeam v1 code")), "code")
        self._send_hello()

    def _on_envelope(self, msg: dict[str, Any]) -> None:
        if self._keys is None:
            raise RemoteProtocolError("envelope before key agreement")
        seq = msg.get("s")
        if seq != self._recv_seq:
            raise RemoteProtocolError("envelope out of sequence")
        blob = _b64d(msg.get("c"))
        key = self._keys.env_r2s if self.role is Role.SENDER else self._keys.env_s2r
        peer_dir = b"r" if self.role is Role.SENDER else b"s"
        try:
            if len(blob) < 24 + 16:
                raise CryptoError("short")
            plain = crypto_aead_xchacha20poly1305_ietf_decrypt(
                blob[24:], self._ad(peer_dir, self._recv_seq), blob[:24], key
            )
        except CryptoError:
            if self._state is _State.PAIRING:
                raise WrongCodeError("key confirmation failed") from None
            raise IntegrityError("envelope failed authentication") from None
        self._recv_seq += 1
        try:
            message = json.loads(plain)
        except ValueError:
            raise RemoteProtocolError("envelope is not JSON") from None
        if not isinstance(message, dict):
            raise RemoteProtocolError("envelope is not an object")
        if self._state is _State.PAIRING:
            self._on_hello(message)
        else:
            self._events.append(EnvelopeReceived(message))

    def _on_hello(self, message: dict[str, Any]) -> None:
        versions = message.get("versions")
        if message.get("type") != "hello" or not isinstance(versions, list):
            raise RemoteProtocolError("first envelope is not hello")
        common = set(self._versions) & {v for v in versions if isinstance(v, int)}
        if not common:
            raise VersionError(f"no common protocol version (peer offers {versions[:8]})")
        if self.role is Role.SENDER and self._mode == "link":
            self._send_hello()  # in link mode the receiver speaks first
        assert self._keys is not None
        self._set(_State.PAIRED)
        self._events.append(Paired(self._keys, max(common), self._mode))

    def _send_hello(self) -> None:
        self._seal({"type": "hello", "versions": list(self._versions), "role": self.role.value})

    def _link_keys(self) -> PairingKeys:
        assert self._link is not None
        return PairingKeys.from_master(kdf(self._link, "scanbeam v1 link"))

    def _set_keys(self, keys: PairingKeys, mode: str) -> None:
        self._keys = keys
        self._mode = mode

    @staticmethod
    def _ad(direction: bytes, seq: int) -> bytes:
        return b"scanbeam v1 env" + direction + seq.to_bytes(8, "big")

    def _seal(self, message: dict[str, Any]) -> None:
        assert self._keys is not None
        key = self._keys.env_s2r if self.role is Role.SENDER else self._keys.env_r2s
        nonce = self._entropy(24)
        plain = json.dumps(message, separators=(",", ":")).encode("utf-8")
        ct = crypto_aead_xchacha20poly1305_ietf_encrypt(
            plain, self._ad(self.role.value.encode(), self._send_seq), nonce, key
        )
        self._emit({"t": "env", "s": self._send_seq, "c": _b64e(nonce + ct)})
        self._send_seq += 1

    def _emit(self, body: dict[str, Any]) -> None:
        self._out.append(json.dumps(body, separators=(",", ":")))

    def _set(self, state: _State) -> None:
        if self.trace is not None:
            self.trace(f"handshake[{self._state.value}] -> {state.value}")
        self._state = state

    def _fail(self, exc: BeamError) -> None:
        self._set(_State.FAILED)
        self._events.append(HandshakeFailed(exc))
