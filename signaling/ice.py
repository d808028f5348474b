"""ICE servers handed out by the signaling server (``docs/protocol.md`` §3, "ICE servers").

The server knows a STUN/TURN deployment (usually coturn) and a secret it shares with it
(coturn ``use-auth-secret`` / ``static-auth-secret``, the "TURN REST API" scheme). For each room
it mints one short-lived credential::

    username   = "<expiry unix seconds>:<random>"
    credential = base64(HMAC-SHA1(secret, username))

coturn recomputes the HMAC from the username, so nothing is stored and a credential stops
working at its expiry. Pure: the caller passes the clock and the random token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["MAX_ICE_SERVERS", "MAX_URLS", "IceConfig", "IceServer", "mint", "parse_ice"]

MAX_ICE_SERVERS: Final = 8
MAX_URLS: Final = 8
_SCHEMES: Final = ("stun:", "turn:", "turns:")


@dataclass(frozen=True, slots=True)
class IceServer:
    """One entry of the ``ice`` list (W3C RTCIceServer shape)."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None and self.credential is not None:
            obj["username"] = self.username
            obj["credential"] = self.credential
        return obj


@dataclass(frozen=True, slots=True)
class IceConfig:
    """What ``scanbeam serve`` hands out. ``secret`` is the bytes shared with coturn."""

    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    secret: bytes = b""
    ttl: int = 3600

    def __post_init__(self) -> None:
        for url in (*self.stun_urls, *self.turn_urls):
            check_url(url)
        if self.turn_urls and not self.secret:
            raise ValueError("TURN URLs need the secret shared with the TURN server")
        if not 60 <= self.ttl <= 7 * 86400:
            raise ValueError("the TURN credential lifetime must be between 60 s and 7 days")

    def __repr__(self) -> str:  # never print the secret
        return (
            f"IceConfig(stun_urls={self.stun_urls!r}, turn_urls={self.turn_urls!r}, ttl={self.ttl})"
        )

    @property
    def enabled(self) -> bool:
        return bool(self.stun_urls or self.turn_urls)


def check_url(url: str) -> str:
    """Raise ValueError unless ``url`` is a plausible stun:/turn:/turns: URI."""
    if not url.startswith(_SCHEMES) or len(url) > 256 or any(c.isspace() for c in url):
        raise ValueError(f"not a STUN/TURN URL (stun:HOST[:PORT] or turn:HOST[:PORT]): {url!r}")
    host = url.split(":", 1)[1].split("?", 1)[0]
    if not host or host.startswith(":"):
        raise ValueError(f"STUN/TURN URL without a host: {url!r}")
    return url


def mint(config: IceConfig, now: float, token: str) -> tuple[IceServer, ...]:
    """The ICE servers for one room: STUN and TURN URLs with a fresh TURN REST credential.

    ``token`` is random (URL-safe text, no colon); the credential expires at ``now + ttl``.
    """
    if not config.enabled:
        return ()
    urls = (*config.stun_urls, *config.turn_urls)
    if not config.turn_urls:
        return (IceServer(urls),)
    username = f"{int(now) + config.ttl}:{token}"
    digest = hmac.new(config.secret, username.encode("ascii"), hashlib.sha1).digest()
    return (IceServer(urls, username, base64.b64encode(digest).decode("ascii")),)


def parse_ice(value: object) -> tuple[IceServer, ...]:
    """Parse the ``ice`` field of an ``allocated``/``joined`` frame (absent = none).

    Raises:
        ValueError: wrong JSON types, too many entries, or URLs that are not STUN/TURN.
    """
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_ICE_SERVERS:
        raise ValueError(f"'ice' must be a list of at most {MAX_ICE_SERVERS} objects.")
    servers = []
    for entry in value:
        if not isinstance(entry, Mapping):
            raise ValueError("'ice' entries must be objects.")
        urls = entry.get("urls")
        if isinstance(urls, str):
            urls = [urls]
        if (
            not isinstance(urls, list)
            or not 0 < len(urls) <= MAX_URLS
            or not all(isinstance(u, str) for u in urls)
        ):
            raise ValueError(f"'ice' urls must be a list of 1 to {MAX_URLS} strings.")
        for url in urls:
            check_url(url)
        username, credential = entry.get("username"), entry.get("credential")
        if not isinstance(username, str | None) or not isinstance(credential, str | None):
            raise ValueError("'ice' username and credential must be strings.")
        servers.append(IceServer(tuple(urls), username, credential))
    return tuple(servers)


def as_json(servers: Sequence[IceServer]) -> list[dict[str, Any]]:
    return [s.to_json() for s in servers]
