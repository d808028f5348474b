"""The relay's HTTP API on aiohttp (``docs/relay-draft.md``), and its periodic sweeper.

Mount it on the server's one origin::

    relay_settings = RelaySettings.load(os.environ, {"data_dir": data_dir})
    server = await start_server(settings, mounts=[relay.app.mount(relay_settings)])

Every decision is made by the pure :class:`relay.store.Rules`; this module parses requests,
hashes presented secrets (SHA-256; compared in constant time by the rules), streams bodies
between the socket and the :class:`~relay.blobs.BlobStore`, and answers errors as JSON
(``{"v":1,"type":"error","code":..,"detail":..}``), never with a traceback.

Logging (logger ``scanbeam.relay``): drop events with the drop id and the client's TCP peer
address. Never a secret, a token, a verifier or a body.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any, Final

from aiohttp import web
from aiohttp.streams import StreamReader

from relay.blobs import (
    BlobNotFound,
    BlobStore,
    LocalBlobStore,
    NoSpace,
    OffsetMismatch,
    SourceError,
    TooMuchData,
)
from relay.meta import DB_NAME, MetaStore, SqliteMetaStore
from relay.pipe import PipeHub
from relay.settings import RelaySettings
from relay.store import (
    Outcome,
    RateLimiter,
    Refused,
    Rules,
    State,
    Write,
    client_key,
    decode_secret,
    parse_range,
    unknown,
    valid_id,
)

__all__ = ["CLAIM_HEADER", "OWNER_HEADER", "RelayMount", "mount"]

logger = logging.getLogger("scanbeam.relay")

OWNER_HEADER: Final = "X-Owner-Token"
CLAIM_HEADER: Final = "X-Claim"
JSON_LIMIT: Final = 16 * 1024
"""Largest JSON request body, in bytes."""
LOCK_WAIT: Final = 5.0
"""Seconds a request waits for another upload request on the same drop to end."""
IDLE_TIMEOUT: Final = 60.0
"""Seconds without a byte from an uploader after which its upload ends (what came is kept)."""
_API_PATH: Final = re.compile(r"/v1/drops(/[^/]+(/(upload|blob|seal|claim|complete|status|log))?)?")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def mount(settings: RelaySettings, *, clock: Callable[[], float] = time.time) -> RelayMount:
    """The relay, ready to be passed to ``signaling.server.start_server(mounts=[...])``.

    Args:
        settings: The relay's settings.
        clock: Unix time in seconds (tests pass a fake one).
    """
    return RelayMount(settings, clock=clock)


def new_drop_id() -> str:
    """22 base64url characters (128 random bits) that never start with "-", so the id
    cannot be taken for an option when pasted after `scanbeam drops log`."""
    while True:
        drop_id = secrets.token_urlsafe(16)
        if not drop_id.startswith("-"):
            return drop_id


class RelayMount:
    """Routes, storage and sweeper of one relay. Call it with the application to mount it
    (once); storage opens when the application starts and closes when it is cleaned up."""

    def __init__(self, settings: RelaySettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.rules = Rules(
            default_expiry=settings.default_expiry,
            max_expiry=settings.max_expiry,
            max_drop_size=settings.max_drop_size,
            min_free_bytes=settings.min_free_bytes,
            max_failures=settings.max_failures,
            claim_ttl=settings.claim_ttl,
            tombstone_ttl=settings.tombstone_ttl,
        )
        self.clock = clock
        self._limiter = RateLimiter(settings.creates_per_minute)
        self._locks = _Locks()
        self._meta: MetaStore | None = None
        self._blobs: BlobStore | None = None
        self._mounted = False

    # -- mounting ----------------------------------------------------------------------------------

    def __call__(self, app: web.Application) -> None:
        if self._mounted:
            raise RuntimeError("this relay is already mounted")
        self._mounted = True
        g = _guard
        add = app.router.add_route
        add("POST", "/v1/drops", g(self._create))
        add("GET", "/v1/drops/{id}", g(self._public))
        add("DELETE", "/v1/drops/{id}", g(self._delete))
        add("GET", "/v1/drops/{id}/upload", g(self._upload_state))
        app.router.add_route(
            "PUT", "/v1/drops/{id}/blob", g(self._upload), expect_handler=self._upload_expect
        )
        add("GET", "/v1/drops/{id}/blob", g(self._download))
        add("POST", "/v1/drops/{id}/seal", g(self._seal))
        add("POST", "/v1/drops/{id}/claim", g(self._claim))
        add("POST", "/v1/drops/{id}/complete", g(self._complete))
        add("GET", "/v1/drops/{id}/status", g(self._status))
        add("GET", "/v1/drops/{id}/log", g(self._log))
        add("*", "/v1/drops{tail:.*}", g(self._other))
        PipeHub().mount(app)  # the live pipe (docs/protocol.md §10.2): no storage
        app.cleanup_ctx.append(self._lifetime)

    async def _lifetime(self, app: web.Application) -> AsyncIterator[None]:
        data_dir = self.settings.data_dir
        await asyncio.to_thread(data_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
        self._meta = await SqliteMetaStore.open(data_dir / DB_NAME)
        try:
            self._blobs = await asyncio.to_thread(LocalBlobStore, data_dir / "blobs")
            sweeper = asyncio.create_task(self._sweep_forever(), name="scanbeam-relay-sweeper")
            logger.info("relay ready (data in %s)", data_dir)
            try:
                yield
            finally:
                sweeper.cancel()
                await asyncio.wait([sweeper])
        finally:
            await self._meta.close()

    @property
    def meta(self) -> MetaStore:
        if self._meta is None:
            raise RuntimeError("the relay is not running")
        return self._meta

    @property
    def blobs(self) -> BlobStore:
        if self._blobs is None:
            raise RuntimeError("the relay is not running")
        return self._blobs

    # -- sweeper -----------------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            try:
                await self.sweep()
            except Exception:  # never let one bad sweep stop expiry for good
                logger.exception("relay sweep failed")

    async def sweep(self) -> int:
        """Act on every drop whose time has come: at its expiry a drop's blob, metadata and
        access log are deleted (an EXPIRED tombstone stays for ``tombstone_ttl``); a tombstone
        past that is purged. Blobs that no live drop owns are deleted too. Returns the number
        of drops expired or purged."""
        now = self.clock()
        blob_ids = await self.blobs.ids()  # listed before the live rows are read: see below
        changed = 0
        for drop_id in await self.meta.due(now):
            outcome = await self.meta.apply(drop_id, lambda d: self.rules.sweep(d, now))
            if outcome.write is not Write.KEEP:
                changed += 1
                if outcome.write is Write.PURGE:
                    logger.info("drop %s: tombstone purged", drop_id)
                else:
                    logger.info("drop %s: expired; blob, metadata and log deleted", drop_id)
            if outcome.delete_blob:
                await self.blobs.delete(drop_id)
        # A drop's row is written before its blob is created, so every blob listed above that
        # belongs to a live drop has its row in live_ids.
        live = await self.meta.live_ids()
        orphans = [drop_id for drop_id in blob_ids if drop_id not in live]
        for drop_id in orphans:
            if await self.blobs.delete(drop_id):
                logger.info("drop %s: deleted a blob no live drop owns", drop_id)
        if changed or orphans:
            await self.meta.compact()
        self._limiter.prune(now)
        return changed

    # -- creating and uploading --------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.StreamResponse:
        address = _address(request)
        now = self.clock()
        if not self._limiter.allow(client_key(address or "unknown"), now):
            raise Refused(429, "rate-limited", "Too many new drops from this address; wait.")
        body = await _read_json(request)
        create = self.rules.parse_create(body)
        free = (await asyncio.to_thread(shutil.disk_usage, self.settings.data_dir)).free
        reserved = await self.meta.reserved_bytes(now)
        drop_id = new_drop_id()
        outcome = self.rules.create(
            create,
            drop_id=drop_id,
            now=now,
            address=address,
            free_bytes=free,
            reserved_bytes=reserved,
        )
        if outcome.error is not None:
            raise outcome.error
        assert outcome.drop is not None
        await self.meta.insert(outcome.drop, outcome.events)
        try:
            await self.blobs.create(drop_id)
        except BaseException:
            await self.meta.apply(drop_id, lambda d: Outcome(None, Write.PURGE))
            raise
        _log_events(drop_id, outcome)
        answer = {
            "id": drop_id,
            "expires_at": outcome.drop.expires_at,
            "max_expires_in": self.settings.max_expiry,
        }
        return _json(201, answer)

    async def _upload_state(self, request: web.Request) -> web.StreamResponse:
        drop_id = _drop_id(request)
        owner = _owner(request)
        async with self._locks.hold(drop_id):
            now = self.clock()
            drop = await self.meta.get(drop_id)
            refusal = self.rules.check_owner(drop, now=now, owner=owner) or self.rules.visible(
                drop, now
            )
            if refusal is not None:
                raise refusal
            assert drop is not None
            stored = await self.blobs.length(drop_id)
        return _json(200, {"offset": stored, "sealed": drop.state is State.AVAILABLE})

    async def _upload_expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse before the body is sent when the request cannot
        succeed (bad owner token, offset, state or size); else let the client send it."""
        try:
            if request.headers.get("Expect", "").lower() != "100-continue":
                raise Refused(417, "expectation", "Only 'Expect: 100-continue' is supported.")
            drop_id = _drop_id(request)
            owner = _owner(request)
            offset = _offset(request)
            async with self._locks.hold(drop_id):
                await self._check_upload(drop_id, owner, offset, request.content_length)
        except Refused as refusal:
            return _error(request, refusal)
        except Exception as exc:
            return _internal(request, exc, "upload-expect")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    async def _check_upload(
        self, drop_id: str, owner: str, offset: int, length: int | None
    ) -> tuple[int, int]:
        """Raise the refusal of an upload request; else return (declared size, stored)."""
        now = self.clock()
        drop = await self.meta.get(drop_id)
        refusal = self.rules.check_owner(drop, now=now, owner=owner)
        if refusal is not None:
            raise refusal
        assert drop is not None
        stored = await self.blobs.length(drop_id) if drop.state is State.UPLOADING else 0
        refusal = self.rules.check_upload(
            drop, now=now, offset=offset, stored=stored, length=length
        )
        if refusal is not None:
            raise refusal
        if length is not None:
            free = (await asyncio.to_thread(shutil.disk_usage, self.settings.data_dir)).free
            if free - length < self.settings.min_free_bytes:
                raise self.rules.no_space()
        return drop.size, stored

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        drop_id = _drop_id(request)
        owner = _owner(request)
        offset = _offset(request)
        async with self._locks.hold(drop_id):
            size, stored = await self._check_upload(drop_id, owner, offset, request.content_length)
            refusal: Refused | None = None
            gone = False
            try:
                length = await self.blobs.append(
                    drop_id,
                    offset,
                    _body(request.content),
                    limit=size - stored,
                    min_free=self.settings.min_free_bytes,
                )
            except TooMuchData as exc:
                length, refusal = (
                    exc.length,
                    Refused(413, "too-large", f"The drop would exceed its declared size ({size})."),
                )
            except NoSpace as exc:
                length, refusal = exc.length, self.rules.no_space()
            except SourceError as exc:
                length, gone = exc.length, True
            except OffsetMismatch as exc:  # cannot happen under the lock; be safe anyway
                detail = f"The upload must continue at byte {exc.length}."
                raise Refused(409, "offset", detail, offset=exc.length) from None
            except BlobNotFound:
                raise unknown() from None
            await self.meta.apply(drop_id, lambda d: Rules.uploaded(d, length))
        if gone:
            logger.info("drop %s: upload interrupted; %d bytes kept", drop_id, length)
            raise Refused(400, "interrupted", "The upload body ended early.")
        if refusal is not None:
            raise refusal
        return _json(200, {"offset": length})

    async def _seal(self, request: web.Request) -> web.StreamResponse:
        drop_id = _drop_id(request)
        owner = _owner(request)
        address = _address(request)
        body = await _read_json(request)
        length = body.get("length") if isinstance(body, dict) else None
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise Refused(400, "malformed", "'length' must be a non-negative integer.")
        async with self._locks.hold(drop_id):
            try:
                stored = await self.blobs.length(drop_id)
            except BlobNotFound:
                stored = 0
            now = self.clock()
            outcome = await self._step(
                drop_id,
                lambda d: self.rules.seal(
                    d, now=now, owner=owner, length=length, stored=stored, address=address
                ),
            )
        assert outcome.drop is not None
        return _json(200, {"state": outcome.drop.state.value, "size": outcome.drop.size})

    # -- looking -----------------------------------------------------------------------------------

    async def _public(self, request: web.Request) -> web.StreamResponse:
        drop_id = _drop_id(request)
        now = self.clock()
        drop = await self.meta.get(drop_id)
        refusal = self.rules.visible(drop, now)
        if refusal is not None:
            raise refusal
        assert drop is not None
        return _json(200, self.rules.public(drop, now))

    async def _status(self, request: web.Request) -> web.StreamResponse:
        drop_id = _drop_id(request)
        owner = _owner(request)
        now = self.clock()
        drop = await self.meta.get(drop_id)
        refusal = self.rules.check_owner(drop, now=now, owner=owner)
        if refusal is not None:
            raise refusal
        assert drop is not None
        try:
            stored = await self.blobs.length(drop_id)
        except BlobNotFound:
            stored = 0
        return _json(200, self.rules.status(drop, now=now, stored=stored))

    async def _log(self, request: web.Request) -> web.StreamResponse:
        drop_id = _drop_id(request)
        owner = _owner(request)
        drop = await self.meta.get(drop_id)
        refusal = self.rules.check_owner(drop, now=self.clock(), owner=owner)
        if refusal is not None:
            raise refusal
        events = await self.meta.log(drop_id)
        return _json(200, {"events": [e.to_json() for e in events]})

    # -- downloading -------------------------------------------------------------------------------

    async def _claim(self, request: web.Request) -> web.StreamResponse:
        drop_id = _drop_id(request)
        auth = _auth(request)
        address = _address(request)
        token = secrets.token_bytes(32)
        digest = hashlib.sha256(token).hexdigest()
        now = self.clock()
        await self._step(
            drop_id,
            lambda d: self.rules.claim(d, now=now, auth=auth, claim=digest, address=address),
        )
        claim = base64.urlsafe_b64encode(token).decode().rstrip("=")
        return _json(200, {"claim": claim, "expires_in": self.settings.claim_ttl})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        drop_id = _drop_id(request)
        auth = _auth(request)
        claim = _claim(request)
        address = _address(request)

        async def touch() -> Outcome:
            now = self.clock()
            return await self._step(
                drop_id,
                lambda d: self.rules.use_claim(d, now=now, auth=auth, claim=claim, address=address),
            )

        drop = (await touch()).drop
        assert drop is not None
        length = drop.size
        try:
            byte_range = parse_range(request.headers.get("Range"), length)
        except Refused as bad_range:
            refused = _error(request, bad_range)
            refused.headers["Content-Range"] = f"bytes */{length}"
            return refused
        start, end = byte_range or (0, length)
        response = web.StreamResponse(status=200 if byte_range is None else 206)
        response.headers["Content-Type"] = "application/octet-stream"
        response.headers["Content-Length"] = str(end - start)
        response.headers["Accept-Ranges"] = "bytes"
        response.headers["Cache-Control"] = "no-store"
        if byte_range is not None:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{length}"
        loop = asyncio.get_running_loop()
        async with aclosing(self.blobs.read(drop_id, start, end)) as blocks:
            try:
                first = await anext(blocks, b"")
            except BlobNotFound:  # deleted between the claim check and here
                gone = self.rules.visible(await self.meta.get(drop_id), self.clock())
                raise gone or unknown() from None
            await response.prepare(request)
            sent = 0
            refreshed = loop.time()
            try:
                await response.write(first)
                sent += len(first)
                async for block in blocks:
                    await response.write(block)
                    sent += len(block)
                    if loop.time() - refreshed > self.settings.claim_ttl / 4:
                        refreshed = loop.time()
                        await touch()  # a long download keeps its claim alive
                await response.write_eof()
            except Refused as stopped:  # the drop went away during the download
                logger.info("drop %s: download stopped (%s)", drop_id, stopped.code)
                response.force_close()
            except (ConnectionError, BlobNotFound) as exc:
                logger.info(
                    "drop %s: download interrupted after %d bytes (%s)",
                    drop_id,
                    sent,
                    type(exc).__name__,
                )
                response.force_close()
            except Exception:
                logger.exception("drop %s: download failed after %d bytes", drop_id, sent)
                response.force_close()
        return response

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        drop_id = _drop_id(request)
        auth = _auth(request)
        claim = _claim(request)
        address = _address(request)
        now = self.clock()
        outcome = await self._step(
            drop_id,
            lambda d: self.rules.complete(d, now=now, auth=auth, claim=claim, address=address),
        )
        assert outcome.drop is not None
        answer = {"downloads": outcome.drop.downloads, "max_downloads": outcome.drop.max_downloads}
        return _json(200, answer)

    # -- ending ------------------------------------------------------------------------------------

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        drop_id = _drop_id(request)
        owner = _owner(request)
        address = _address(request)
        now = self.clock()
        await self._step(
            drop_id, lambda d: self.rules.delete(d, now=now, owner=owner, address=address)
        )
        return _json(200, {"state": State.DELETED.value})

    async def _other(self, request: web.Request) -> web.StreamResponse:
        if _API_PATH.fullmatch(request.path):
            raise Refused(405, "method", "This method is not allowed here.")
        raise Refused(404, "not-found", "There is no such API path.")

    # -- helpers -----------------------------------------------------------------------------------

    async def _step(self, drop_id: str, step: Callable[[Any], Outcome]) -> Outcome:
        """Apply a pure step atomically, perform its side effects, raise its refusal."""
        outcome = await self.meta.apply(drop_id, step)
        _log_events(drop_id, outcome)
        if outcome.delete_blob:
            try:
                await self.blobs.delete(drop_id)
            except OSError:  # the sweeper deletes orphans later
                logger.exception("drop %s: could not delete the blob", drop_id)
        if outcome.error is not None:
            raise outcome.error
        return outcome


# -- request parsing -----------------------------------------------------------------------------


def _drop_id(request: web.Request) -> str:
    drop_id = request.match_info["id"]
    if not valid_id(drop_id):
        raise unknown()
    return drop_id


def _digest(value: str) -> str:
    """SHA-256 hex of a presented secret (base64url; anything else is hashed as is)."""
    secret = decode_secret(value)
    return hashlib.sha256(secret if secret is not None else value.encode()).hexdigest()


def _owner(request: web.Request) -> str:
    value = request.headers.get(OWNER_HEADER, "").strip()
    if not value:
        raise Refused(401, "owner", f"This needs the owner token ({OWNER_HEADER}).")
    return _digest(value)


def _auth(request: web.Request) -> str:
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Refused(401, "auth", "This needs the download key (Authorization: Bearer).")
    return _digest(value.strip())


def _claim(request: web.Request) -> str:
    value = request.headers.get(CLAIM_HEADER, "").strip()
    if not value:
        raise Refused(400, "malformed", f"This needs a download claim ({CLAIM_HEADER}).")
    return _digest(value)


def _offset(request: web.Request) -> int:
    raw = request.query.get("offset", "")
    if not raw.isdecimal() or len(raw) > 19:
        raise Refused(400, "malformed", "'offset' must be a non-negative integer.")
    return int(raw)


def _address(request: web.Request) -> str | None:
    """The TCP peer's address (forwarded headers are not trusted)."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if peer else None


async def _read_json(request: web.Request) -> object:
    too_large = Refused(413, "too-large", f"The request body is over {JSON_LIMIT} bytes.")
    if request.content_length is not None and request.content_length > JSON_LIMIT:
        raise too_large
    data = bytearray()
    while True:
        try:
            chunk = await request.content.readany()
        except ConnectionError:
            raise
        except Exception:  # a malformed chunked body, ...
            raise Refused(400, "malformed", "The request body could not be read.") from None
        if not chunk:
            break
        data += chunk
        if len(data) > JSON_LIMIT:
            raise too_large
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "malformed", "The body is not valid JSON.") from None


async def _body(content: StreamReader) -> AsyncIterator[bytes]:
    """The request body as it arrives; a silent client ends it after :data:`IDLE_TIMEOUT`."""
    while True:
        async with asyncio.timeout(IDLE_TIMEOUT):
            chunk = await content.readany()
        if not chunk:
            return
        yield chunk


# -- answers ---------------------------------------------------------------------------------------


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


def _error(request: web.Request, refusal: Refused) -> web.Response:
    body: dict[str, Any] = {"v": 1, "type": "error", "code": refusal.code, "detail": refusal.detail}
    if refusal.offset is not None:
        body["offset"] = refusal.offset
    response = _json(refusal.status, body)
    if refusal.status == 429:
        response.headers["Retry-After"] = "60"
    if not request.content.is_eof():
        response.force_close()  # do not read (or linger on) a body we refused
    return response


def _internal(request: web.Request, exc: BaseException, where: str) -> web.Response:
    logger.error("relay: internal error in %s (%s)", where, type(exc).__name__, exc_info=exc)
    return _error(request, Refused(500, "internal", "The relay failed; try again later."))


def _guard(handler: Handler) -> Handler:
    """Answer refusals and unexpected errors as JSON (never a traceback)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Refused as refusal:
            return _error(request, refusal)
        except ConnectionError as exc:  # the client went away; nobody will read an answer
            logger.info("relay: client gone in %s (%s)", handler.__name__, type(exc).__name__)
            return _error(request, Refused(400, "interrupted", "The request was interrupted."))
        except Exception as exc:
            return _internal(request, exc, handler.__name__.lstrip("_"))

    guarded.__name__ = handler.__name__
    return guarded


def _log_events(drop_id: str, outcome: Outcome) -> None:
    for entry in outcome.events:
        if entry.address is None:
            logger.info("drop %s: %s", drop_id, entry.event.value)
        else:
            logger.info("drop %s: %s from %s", drop_id, entry.event.value, entry.address)


class _Locks:
    """One upload lock per drop (created on demand, dropped when nobody holds or waits)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, drop_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(drop_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            try:
                async with asyncio.timeout(LOCK_WAIT):
                    await lock.acquire()
            except TimeoutError:
                detail = "Another upload to this drop is in progress; try again later."
                raise Refused(409, "busy", detail) from None
            try:
                yield
            finally:
                lock.release()
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[drop_id]

    def __len__(self) -> int:
        return len(self._locks)
