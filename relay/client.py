"""Asyncio client of the relay API (``docs/relay-draft.md``), on ``aiohttp.ClientSession``.

Typical use, sender side::

    async with RelayClient("https://beam.example.org") as relay:
        created = await relay.create(size=n, auth=auth, owner=owner_token, max_downloads=1)
        offset = (await relay.upload_offset(created.id, owner_token)).offset
        offset = await relay.upload(created.id, owner_token, offset, chunks_from(offset))
        await relay.seal(created.id, owner_token, offset)

and receiver side::

    async with RelayClient(server) as relay:
        claim = await relay.claim(drop_id, auth)
        async for block in relay.download(drop_id, auth, claim, start=held):
            ...
        await relay.complete(drop_id, auth, claim)

Secrets (the auth key, the owner token, a claim) are ``bytes`` (raw) or ``str`` (already
base64url). They travel only in headers; :meth:`RelayClient.create` sends their SHA-256
digests, never the secrets. Bodies are streamed both ways: memory stays constant.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import types
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:  # aiohttp is imported on first use: it costs 0.2 s at start-up
    import aiohttp

__all__ = [
    "AccessEvent",
    "Completed",
    "Created",
    "DropInfo",
    "DropStatus",
    "RelayClient",
    "RelayError",
    "Secret",
    "UploadState",
]

Secret = bytes | str
"""Raw secret bytes, or their base64url text (padding optional)."""

_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{22}")
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]+={0,2}")
_ERROR_LIMIT: Final = 64 * 1024
_ANSWER_LIMIT: Final = 16 << 20


class RelayError(Exception):
    """A relay request failed.

    Attributes:
        code: The server's error code (``unknown``, ``expired``, ``used-up``, ``deleted``,
            ``locked``, ``auth``, ``owner``, ``busy``, ``offset``, ``too-large``, ``range``,
            ``rate-limited``, ...) or a local one: ``unreachable`` (connection refused, lost or
            timed out; status 0), ``bad-url``, ``bad-id``, ``protocol`` (not a relay answer).
        status: The HTTP status (0 when there was no answer).
        detail: A sentence for people; never contains a secret.
        offset: For ``offset``: the bytes the server holds.
    """

    def __init__(self, code: str, status: int, detail: str, offset: int | None = None) -> None:
        super().__init__(f"{code} ({status}): {detail}")
        self.code = code
        self.status = status
        self.detail = detail
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Created:
    """Answer of :meth:`RelayClient.create`."""

    id: str
    expires_at: float
    max_expires_in: float


@dataclass(frozen=True, slots=True)
class UploadState:
    """Answer of :meth:`RelayClient.upload_offset`."""

    offset: int
    sealed: bool


@dataclass(frozen=True, slots=True)
class DropInfo:
    """Answer of :meth:`RelayClient.meta` (public)."""

    id: str
    state: str
    size: int
    expires_at: float
    kdf: dict[str, Any] | None
    downloads: int
    max_downloads: int


@dataclass(frozen=True, slots=True)
class DropStatus:
    """Answer of :meth:`RelayClient.status` (owner)."""

    state: str
    size: int
    stored: int
    expires_at: float
    downloads: int
    max_downloads: int
    failed_attempts: int
    locked: bool


@dataclass(frozen=True, slots=True)
class Completed:
    """Answer of :meth:`RelayClient.complete`."""

    downloads: int
    max_downloads: int


@dataclass(frozen=True, slots=True)
class AccessEvent:
    """One line of :meth:`RelayClient.log`."""

    time: float
    event: str
    address: str | None


class RelayClient:
    """A connection pool to one relay. Use it as an async context manager.

    Args:
        server_url: ``http(s)://host[:port][/prefix]`` (query and fragment are ignored).
        connect_timeout: Seconds to open a connection.
        read_timeout: Seconds without a byte from the server before a request fails.

    Raises:
        RelayError: ``bad-url``.
    """

    def __init__(
        self, server_url: str, *, connect_timeout: float = 10.0, read_timeout: float = 60.0
    ) -> None:
        parts = urlsplit(server_url.strip())
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise RelayError("bad-url", 0, f"Not a relay address: {server_url!r}.")
        self._server = server_url
        self._base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        import aiohttp

        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        import aiohttp

        self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection. Idempotent."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- sender ------------------------------------------------------------------------------------

    async def create(
        self,
        *,
        size: int,
        auth: Secret,
        owner: Secret,
        max_downloads: int = 1,
        expires_in: float | None = None,
        kdf: Mapping[str, Any] | None = None,
    ) -> Created:
        """Create a drop of (at most) ``size`` bytes.

        Args:
            size: Bytes the sender plans to upload.
            auth: The download key; the server gets ``hex(SHA-256(auth))`` only.
            owner: The owner token; the server gets ``hex(SHA-256(owner))`` only.
            max_downloads: Complete downloads allowed.
            expires_in: Seconds to live (``None``: the server's default); the server clamps
                it to its maximum (see ``Created.expires_at``).
            kdf: ``{"salt": b64, "ops": int, "mem": int}`` when a password protects the drop.

        Raises:
            RelayError: ``too-large``, ``rate-limited``, ``malformed``, ``unreachable``, ...
        """
        body: dict[str, Any] = {
            "size": size,
            "max_downloads": max_downloads,
            "verifier": hashlib.sha256(_raw(auth)).hexdigest(),
            "owner": hashlib.sha256(_raw(owner)).hexdigest(),
            "kdf": None if kdf is None else dict(kdf),
        }
        if expires_in is not None:
            body["expires_in"] = expires_in
        answer = await self._json("POST", "/v1/drops", json=body, expect=201)
        return Created(
            id=_str(answer, "id"),
            expires_at=_time(answer, "expires_at"),
            max_expires_in=_time(answer, "max_expires_in"),
        )

    async def upload_offset(self, drop_id: str, owner: Secret) -> UploadState:
        """How many bytes the relay holds, and whether the drop is sealed."""
        answer = await self._json("GET", self._path(drop_id, "upload"), headers=_owner(owner))
        return UploadState(_int(answer, "offset"), _bool(answer, "sealed"))

    async def upload(
        self, drop_id: str, owner: Secret, offset: int, body: AsyncIterable[bytes]
    ) -> int:
        """Append ``body`` at ``offset`` (which must be what the relay holds); return the new
        length. The body is streamed (chunked); it is only sent once the relay accepted the
        request (``Expect: 100-continue``). If the connection breaks, the relay keeps what
        arrived: ask :meth:`upload_offset` and continue from there.

        Raises:
            RelayError: ``offset`` (with ``.offset``), ``too-large``, ``sealed``, ``busy``,
                ``unreachable``, ...
        """
        if offset < 0:
            raise ValueError("offset must not be negative")
        answer = await self._json(
            "PUT",
            self._path(drop_id, "blob"),
            headers={**_owner(owner), "Content-Type": "application/octet-stream"},
            params={"offset": str(offset)},
            data=body,
            expect100=True,
        )
        return _int(answer, "offset")

    async def seal(self, drop_id: str, owner: Secret, length: int) -> None:
        """Make the drop downloadable; ``length`` must be what the relay holds."""
        await self._json(
            "POST", self._path(drop_id, "seal"), headers=_owner(owner), json={"length": length}
        )

    async def status(self, drop_id: str, owner: Secret) -> DropStatus:
        """The owner's view of the drop."""
        answer = await self._json("GET", self._path(drop_id, "status"), headers=_owner(owner))
        return DropStatus(
            state=_str(answer, "state"),
            size=_int(answer, "size"),
            stored=_int(answer, "stored"),
            expires_at=_time(answer, "expires_at"),
            downloads=_int(answer, "downloads"),
            max_downloads=_int(answer, "max_downloads"),
            failed_attempts=_int(answer, "failed_attempts"),
            locked=_bool(answer, "locked"),
        )

    async def log(self, drop_id: str, owner: Secret) -> list[AccessEvent]:
        """The drop's access log, oldest first."""
        answer = await self._json("GET", self._path(drop_id, "log"), headers=_owner(owner))
        events = _field(answer, "events", list)
        try:
            return [
                AccessEvent(float(e["time"]), str(e["event"]), e.get("address")) for e in events
            ]
        except (TypeError, KeyError, ValueError, AttributeError):
            raise RelayError("protocol", 200, "The relay sent a malformed log.") from None

    async def delete(self, drop_id: str, owner: Secret) -> None:
        """Delete the drop now (blob, metadata and log)."""
        await self._json("DELETE", self._path(drop_id), headers=_owner(owner))

    # -- receiver ----------------------------------------------------------------------------------

    async def meta(self, drop_id: str) -> DropInfo:
        """The public facts of a drop (no key needed).

        Raises:
            RelayError: ``unknown`` (404), ``expired``/``used-up``/``deleted``/``locked`` (410).
        """
        answer = await self._json("GET", self._path(drop_id))
        kdf = answer.get("kdf")
        if kdf is not None and not isinstance(kdf, dict):
            raise RelayError("protocol", 200, "The relay sent malformed KDF parameters.")
        return DropInfo(
            id=_str(answer, "id"),
            state=_str(answer, "state"),
            size=_int(answer, "size"),
            expires_at=_time(answer, "expires_at"),
            kdf=kdf,
            downloads=_int(answer, "downloads"),
            max_downloads=_int(answer, "max_downloads"),
        )

    async def claim(self, drop_id: str, auth: Secret) -> str:
        """Reserve one download; returns the claim token (base64url) for the next calls.

        Raises:
            RelayError: ``auth`` (wrong key, counted), ``locked``, ``busy``, ``not-ready``, ...
        """
        answer = await self._json("POST", self._path(drop_id, "claim"), headers=_bearer(auth))
        return _str(answer, "claim")

    async def download(
        self, drop_id: str, auth: Secret, claim: Secret, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Stream bytes ``[start, end)`` of the blob (``end=None``: to its end).

        An async generator: errors are raised at the first iteration. Close it (``aclose``,
        or ``contextlib.aclosing``) when stopping early.

        Raises:
            RelayError: ``claim`` (unknown or expired claim), ``range`` (416), ``auth``,
                ``unreachable`` (also when the connection breaks mid-body), ``protocol``.
        """
        if start < 0 or (end is not None and end <= start):
            raise ValueError("need 0 <= start < end")
        headers = {**_bearer(auth), "X-Claim": _text(claim)}
        ranged = start > 0 or end is not None
        if ranged:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        async with self._request("GET", self._path(drop_id, "blob"), headers=headers) as response:
            await _check(response, 206 if ranged else 200)
            import aiohttp

            if ranged and not response.headers.get("Content-Range", "").startswith(
                f"bytes {start}-"
            ):
                raise RelayError("protocol", response.status, "The relay sent another range.")
            try:
                async for block in response.content.iter_any():
                    yield block
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self._unreachable(exc) from exc

    async def complete(self, drop_id: str, auth: Secret, claim: Secret) -> Completed:
        """Count this (verified, complete) download and end the claim."""
        headers = {**_bearer(auth), "X-Claim": _text(claim)}
        answer = await self._json("POST", self._path(drop_id, "complete"), headers=headers)
        return Completed(_int(answer, "downloads"), _int(answer, "max_downloads"))

    # -- internals ---------------------------------------------------------------------------------

    def _path(self, drop_id: str, *rest: str) -> str:
        if not isinstance(drop_id, str) or _ID_RE.fullmatch(drop_id) is None:
            raise RelayError("bad-id", 0, "Not a relay drop id.")
        return "/".join(("/v1/drops", drop_id, *rest))

    @asynccontextmanager
    async def _request(
        self, method: str, path: str, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        if self._session is None:
            raise RuntimeError("use RelayClient as an async context manager")
        import aiohttp

        try:
            async with self._session.request(method, self._base + path, **kwargs) as response:
                yield response
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc

    async def _json(
        self, method: str, path: str, *, expect: int = 200, **kwargs: Any
    ) -> dict[str, Any]:
        async with self._request(method, path, **kwargs) as response:
            await _check(response, expect)
            body = await _read(response, _ANSWER_LIMIT)
            try:
                answer = json.loads(body)
            except ValueError:
                answer = None
        if not isinstance(answer, dict):
            raise RelayError("protocol", expect, "The relay sent a malformed answer.")
        return answer

    def _unreachable(self, exc: BaseException) -> RelayError:
        return RelayError(
            "unreachable",
            0,
            f"Lost or no connection to the relay at {self._server} ({type(exc).__name__}).",
        )


async def _check(response: aiohttp.ClientResponse, expect: int) -> None:
    """Raise the relay's error unless the status is ``expect``."""
    if response.status == expect:
        return
    body = await _read(response, _ERROR_LIMIT)
    try:
        error = _loads(body)
        code, detail = error["code"], error["detail"]
        offset = error.get("offset")
        if not isinstance(code, str) or not isinstance(detail, str):
            raise TypeError
        if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int)):
            raise TypeError
    except (ValueError, TypeError, KeyError):
        detail = f"The server answered HTTP {response.status}, not as a ScanBeam relay."
        raise RelayError("protocol", response.status, detail) from None
    raise RelayError(code, response.status, detail, offset)


async def _read(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or its first ``limit`` bytes (a hostile server cannot fill our memory)."""
    data = bytearray()
    while len(data) < limit:
        chunk = await response.content.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _loads(body: bytes) -> dict[str, Any]:
    value = json.loads(body)
    if not isinstance(value, dict):
        raise TypeError
    return value


def _field(answer: Mapping[str, Any], key: str, kind: type | types.UnionType) -> Any:
    value = answer.get(key)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise RelayError("protocol", 200, f"The relay sent a malformed '{key}'.")
    return value


def _int(answer: Mapping[str, Any], key: str) -> int:
    value: int = _field(answer, key, int)
    return value


def _str(answer: Mapping[str, Any], key: str) -> str:
    value: str = _field(answer, key, str)
    return value


def _bool(answer: Mapping[str, Any], key: str) -> bool:
    value: bool = _field(answer, key, bool)
    return value


def _time(answer: Mapping[str, Any], key: str) -> float:
    return float(_field(answer, key, int | float))


def _text(secret: Secret) -> str:
    """The base64url text of a secret, for a header."""
    if isinstance(secret, bytes):
        return base64.urlsafe_b64encode(secret).decode().rstrip("=")
    if _B64URL_RE.fullmatch(secret) is None:
        raise ValueError("a secret given as text must be base64url")
    return secret


def _raw(secret: Secret) -> bytes:
    if isinstance(secret, bytes):
        return secret
    text = _text(secret).rstrip("=")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _owner(owner: Secret) -> dict[str, str]:
    return {"X-Owner-Token": _text(owner)}


def _bearer(auth: Secret) -> dict[str, str]:
    return {"Authorization": f"Bearer {_text(auth)}"}
