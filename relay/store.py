"""Pure core of the relay: drops, expiry, download limits, claims, failed keys, the sweeper.

``docs/relay-draft.md`` (to become ``docs/protocol.md`` §9) is the spec. This module does no
I/O and has no clock or random source: the shim (:mod:`relay.app`) passes ``now`` (unix
seconds), fresh ids and the digests of presented secrets, and performs the :class:`Outcome` a
step returns (persist the drop, append its access-log events, delete the blob, answer the
error). Secrets never reach this module: only their SHA-256 hex digests, compared in constant
time.

Drop life::

    create ──► UPLOADING ──seal──► AVAILABLE ──complete (count reaches max)──► USED_UP
                   │                   │   ──wrong key (max_failures-th)──────► LOCKED
                   │                   │   ──owner delete─────────────────────► DELETED
                   └─────────(any state, now ≥ expires_at)────────────────────► EXPIRED

USED_UP and LOCKED drops keep their metadata and access log (for the owner) but lose their
blob at once. A DELETED drop becomes a *tombstone* at once: only its id, state and expiry time
are kept. The sweeper acts on a drop at its ``sweep_at``: at ``expires_at`` every drop that is
not yet an EXPIRED tombstone becomes one (blob, metadata and access log deleted), so the link
answers ``410 expired`` rather than ``404 unknown``; ``tombstone_ttl`` later the tombstone row
is purged too (then ``404``).

Download limit: ``downloads`` (completed, verified downloads) plus the live claims never exceed
``max_downloads``. A claim lives ``claim_ttl`` seconds after its last use.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
import ipaddress
import math
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

__all__ = [
    "ID_LENGTH",
    "Claim",
    "CreateRequest",
    "Drop",
    "Event",
    "Kdf",
    "LogEntry",
    "Outcome",
    "RateLimiter",
    "Refused",
    "Rules",
    "State",
    "Write",
    "client_key",
    "decode_secret",
    "parse_range",
    "unknown",
    "valid_id",
]

ID_LENGTH: Final = 22
"""Characters of a drop id: 16 random bytes, base64url without padding."""
_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{21}[AQgw]")  # the last char carries 2 bits
_HEX64_RE: Final = re.compile(r"[0-9a-fA-F]{64}")
MAX_DOWNLOADS: Final = 10_000
MAX_LIVE_CLAIMS: Final = 32
"""Concurrent downloads of one drop at most (each claim is a row update; keep rows small)."""
MAX_KDF_OPS: Final = 1 << 32
MAX_KDF_MEM: Final = 1 << 42
RATE_WINDOW: Final = 60.0


def valid_id(drop_id: str) -> bool:
    """True for a well-formed drop id (exactly 22 base64url characters of 16 bytes)."""
    return _ID_RE.fullmatch(drop_id) is not None


def decode_secret(text: str) -> bytes | None:
    """Decode a base64url secret from a header (padding optional); ``None`` if malformed."""
    text = text.strip()
    if not text or not re.fullmatch(r"[A-Za-z0-9_-]+={0,2}", text):
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def client_key(ip: str) -> str:
    """The rate-limit bucket of a client address: the IPv4 address or the IPv6 /64."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class State(enum.StrEnum):
    """Where a drop is in its life (the wire values of ``state``)."""

    UPLOADING = "uploading"
    AVAILABLE = "available"
    USED_UP = "used-up"
    EXPIRED = "expired"
    DELETED = "deleted"
    LOCKED = "locked"


LIVE_STATES: Final = frozenset({State.UPLOADING, State.AVAILABLE})
"""States in which a drop has a blob."""


class Event(enum.StrEnum):
    """Access-log events (the wire values of ``event``)."""

    CREATED = "created"
    UPLOADED = "uploaded"
    DOWNLOAD_STARTED = "download-started"
    DOWNLOAD_COMPLETED = "download-completed"
    AUTH_FAILED = "auth-failed"
    LOCKED = "locked"
    DELETED = "deleted"
    EXPIRED = "expired"
    USED_UP = "used-up"


class Write(enum.Enum):
    """What the metadata store does with an :class:`Outcome`."""

    KEEP = "keep"  # nothing changed: write nothing
    SAVE = "save"  # store the new drop; append the events to its access log
    CLEAR = "clear"  # store the new drop (a tombstone); delete its access log; no events kept
    PURGE = "purge"  # delete the drop and its access log


class Refused(Exception):
    """A request the relay refuses; the shim answers it as the spec's JSON error.

    Attributes:
        status: HTTP status.
        code: Stable error code (``unknown``, ``expired``, ``busy``, ...).
        detail: One sentence for people: no secret, no echo of client input.
        offset: For ``409 offset``: the bytes the server holds.
    """

    def __init__(self, status: int, code: str, detail: str, offset: int | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.offset = offset

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Refused):
            return NotImplemented
        return (self.status, self.code, self.detail, self.offset) == (
            other.status,
            other.code,
            other.detail,
            other.offset,
        )

    def __hash__(self) -> int:
        return hash((self.status, self.code, self.detail, self.offset))


@dataclass(frozen=True, slots=True)
class Kdf:
    """Public password-KDF parameters of a drop (stored and shown as given)."""

    salt: str
    ops: int
    mem: int

    def to_json(self) -> dict[str, Any]:
        return {"salt": self.salt, "ops": self.ops, "mem": self.mem}


@dataclass(frozen=True, slots=True)
class Claim:
    """A live download reservation: the SHA-256 hex of its token and when it was last used."""

    digest: str
    last_used: float


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One access-log event. ``address`` is the client's TCP peer address, when there is one."""

    time: float
    event: Event
    address: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time, "event": self.event.value, "address": self.address}


@dataclass(frozen=True, slots=True, kw_only=True)
class Drop:
    """Everything the relay keeps about one drop besides its blob and its access log.

    ``verifier`` and ``owner`` are SHA-256 hex digests of the auth key and the owner token
    (empty in a tombstone). ``size`` is the declared size while uploading, the sealed length
    afterwards. ``stored`` is the blob length as of the last finished upload request.
    ``sweep_at`` is when the sweeper must act on the drop next (see :meth:`Rules.sweep`).
    """

    id: str
    state: State
    size: int
    stored: int = 0
    created_at: float
    expires_at: float
    max_downloads: int
    downloads: int = 0
    failed_attempts: int = 0
    verifier: str
    owner: str
    kdf: Kdf | None = None
    claims: tuple[Claim, ...] = ()
    sweep_at: float

    def state_at(self, now: float) -> State:
        """The state as seen at ``now``: past its expiry every drop is EXPIRED."""
        return State.EXPIRED if now >= self.expires_at else self.state


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateRequest:
    """A validated ``POST /v1/drops`` body."""

    size: int
    expires_in: float | None
    max_downloads: int
    verifier: str
    owner: str
    kdf: Kdf | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one step.

    Attributes:
        drop: The drop after the step (``None``: unknown, or purged).
        write: What the metadata store must do.
        events: Events of this step, for the server log and (with ``SAVE``) the access log.
        error: The refusal to answer, if any (the write still happens: e.g. a counted failure).
        delete_blob: The blob must go (used up, locked, deleted, expired).
    """

    drop: Drop | None
    write: Write = Write.KEEP
    events: tuple[LogEntry, ...] = ()
    error: Refused | None = None
    delete_blob: bool = False


_GONE: Final[Mapping[State, str]] = {
    State.EXPIRED: "This drop has expired.",
    State.USED_UP: "This drop reached its download limit and was deleted.",
    State.DELETED: "This drop was deleted by its sender.",
    State.LOCKED: "This drop is locked after too many wrong keys or passwords.",
}


def unknown() -> Refused:
    """``404 unknown`` (a fresh exception each time)."""
    return Refused(404, "unknown", "There is no such drop.")


class Rules:
    """The relay's decisions. Every method is pure: state and time in, an outcome out.

    Args:
        default_expiry: Seconds a drop lives when the request does not say.
        max_expiry: Longest life; longer requests are clamped.
        max_drop_size: Largest declared size, in bytes.
        min_free_bytes: Free disk space a create must leave (besides open reservations).
        max_failures: Wrong keys after which a drop is locked.
        claim_ttl: Seconds a claim lives after its last use.
        tombstone_ttl: Seconds an EXPIRED tombstone lives after the drop's expiry.
        max_live_claims: Concurrent claims of one drop at most.
    """

    def __init__(
        self,
        *,
        default_expiry: float = 7 * 86_400.0,
        max_expiry: float = 60 * 86_400.0,
        max_drop_size: int = 1 << 40,
        min_free_bytes: int = 1 << 30,
        max_failures: int = 10,
        claim_ttl: float = 1800.0,
        tombstone_ttl: float = 30 * 86_400.0,
        max_live_claims: int = MAX_LIVE_CLAIMS,
    ) -> None:
        self.default_expiry = default_expiry
        self.max_expiry = max_expiry
        self.max_drop_size = max_drop_size
        self.min_free_bytes = min_free_bytes
        self.max_failures = max_failures
        self.claim_ttl = claim_ttl
        self.tombstone_ttl = tombstone_ttl
        self.max_live_claims = max_live_claims

    # -- creating and uploading ----------------------------------------------------------------

    @staticmethod
    def parse_create(body: object) -> CreateRequest:
        """Validate a ``POST /v1/drops`` body (unknown keys are ignored).

        Raises:
            Refused: ``400 malformed`` naming the bad field.
        """
        if not isinstance(body, dict):
            raise _malformed("The body must be a JSON object.")
        size = _int_field(body, "size", 0, 1 << 62)
        raw_expiry = body.get("expires_in")
        expires_in: float | None = None
        if raw_expiry is not None:
            if (
                isinstance(raw_expiry, bool)
                or not isinstance(raw_expiry, int | float)
                or not math.isfinite(raw_expiry)
                or raw_expiry <= 0
            ):
                raise _malformed("'expires_in' must be a positive number of seconds.")
            expires_in = float(raw_expiry)
        max_downloads = _int_field(body, "max_downloads", 1, MAX_DOWNLOADS)
        verifier = _hex64_field(body, "verifier")
        owner = _hex64_field(body, "owner")
        raw_kdf = body.get("kdf")
        kdf: Kdf | None = None
        if raw_kdf is not None:
            if not isinstance(raw_kdf, dict):
                raise _malformed("'kdf' must be null or an object.")
            salt = raw_kdf.get("salt")
            if not isinstance(salt, str) or len(_b64_any(salt) or b"") != 16:
                raise _malformed("'kdf.salt' must be 16 bytes in base64.")
            ops = _int_field(raw_kdf, "ops", 1, MAX_KDF_OPS, name="kdf.ops")
            mem = _int_field(raw_kdf, "mem", 1, MAX_KDF_MEM, name="kdf.mem")
            kdf = Kdf(salt, ops, mem)
        return CreateRequest(
            size=size,
            expires_in=expires_in,
            max_downloads=max_downloads,
            verifier=verifier,
            owner=owner,
            kdf=kdf,
        )

    def expires_in(self, requested: float | None) -> float:
        """The life a drop gets: the request (or the default) clamped to the maximum."""
        return min(self.default_expiry if requested is None else requested, self.max_expiry)

    def create(
        self,
        request: CreateRequest,
        *,
        drop_id: str,
        now: float,
        address: str | None,
        free_bytes: int,
        reserved_bytes: int,
    ) -> Outcome:
        """A new UPLOADING drop, or ``413 too-large``.

        Args:
            free_bytes: Free space on the blob store's disk now.
            reserved_bytes: Bytes still to come for the other drops being uploaded.
        """
        if request.size > self.max_drop_size:
            return Outcome(
                None,
                error=Refused(
                    413,
                    "too-large",
                    f"This relay accepts drops of at most {self.max_drop_size} bytes.",
                ),
            )
        if free_bytes - reserved_bytes - request.size < self.min_free_bytes:
            return Outcome(None, error=_no_space())
        expires_at = now + self.expires_in(request.expires_in)
        drop = Drop(
            id=drop_id,
            state=State.UPLOADING,
            size=request.size,
            created_at=now,
            expires_at=expires_at,
            sweep_at=expires_at,
            max_downloads=request.max_downloads,
            verifier=request.verifier.lower(),
            owner=request.owner.lower(),
            kdf=request.kdf,
        )
        return Outcome(drop, Write.SAVE, (LogEntry(now, Event.CREATED, address),))

    def check_upload(
        self, drop: Drop, *, now: float, offset: int, stored: int, length: int | None
    ) -> Refused | None:
        """May ``length`` bytes (``None``: unknown) be appended at ``offset`` now?

        The caller checked the owner token. ``stored`` is the blob's current length.
        """
        refusal = self.visible(drop, now)
        if refusal is not None:
            return refusal
        if drop.state is not State.UPLOADING:
            return Refused(409, "sealed", "This drop is sealed; it cannot change.")
        if offset != stored:
            return Refused(
                409, "offset", f"The upload must continue at byte {stored}.", offset=stored
            )
        if length is not None and stored + length > drop.size:
            return self.over_size(drop)
        return None

    @staticmethod
    def over_size(drop: Drop) -> Refused:
        return Refused(413, "too-large", f"The drop would exceed its declared size ({drop.size}).")

    @staticmethod
    def no_space() -> Refused:
        return _no_space()

    @staticmethod
    def uploaded(drop: Drop | None, stored: int) -> Outcome:
        """Record the blob length after an upload request (even an interrupted one)."""
        if drop is None or drop.state is not State.UPLOADING or drop.stored == stored:
            return Outcome(drop)
        return Outcome(replace(drop, stored=stored), Write.SAVE)

    def seal(
        self,
        drop: Drop | None,
        *,
        now: float,
        owner: str,
        length: int,
        stored: int,
        address: str | None = None,
    ) -> Outcome:
        """Make the drop downloadable. Sealing again with the same length is a no-op."""
        refusal = self.check_owner(drop, now=now, owner=owner)
        if refusal is not None:
            return Outcome(drop, error=refusal)
        assert drop is not None
        if drop.state is State.AVAILABLE and length == drop.size:
            return Outcome(drop)
        if drop.state is not State.UPLOADING:
            return Outcome(drop, error=Refused(409, "sealed", "This drop is already sealed."))
        if length != stored:
            detail = f"The relay holds {stored} bytes, not {length}."
            return Outcome(drop, error=Refused(409, "offset", detail, offset=stored))
        sealed = replace(drop, state=State.AVAILABLE, size=length, stored=length)
        return Outcome(sealed, Write.SAVE, (LogEntry(now, Event.UPLOADED, address),))

    # -- looking ---------------------------------------------------------------------------------

    @staticmethod
    def visible(drop: Drop | None, now: float) -> Refused | None:
        """``None`` when the drop can be seen by anyone; else ``404 unknown`` or ``410``."""
        if drop is None:
            return unknown()
        state = drop.state_at(now)
        if state in LIVE_STATES:
            return None
        return Refused(410, state.value, _GONE[state])

    @staticmethod
    def check_owner(drop: Drop | None, *, now: float, owner: str) -> Refused | None:
        """The owner may see a drop until it expires or is deleted (used up and locked too).

        Args:
            owner: SHA-256 hex of the presented owner token.
        """
        if drop is None:
            return unknown()
        state = drop.state_at(now)
        if state in (State.EXPIRED, State.DELETED):
            return Refused(410, state.value, _GONE[state])
        if not _same(owner, drop.owner):
            return Refused(403, "owner", "The owner token is wrong.")
        return None

    @staticmethod
    def public(drop: Drop, now: float) -> dict[str, Any]:
        """The answer of ``GET /v1/drops/{id}`` (for a visible drop)."""
        return {
            "id": drop.id,
            "state": drop.state_at(now).value,
            "size": drop.size,
            "expires_at": drop.expires_at,
            "kdf": None if drop.kdf is None else drop.kdf.to_json(),
            "downloads": drop.downloads,
            "max_downloads": drop.max_downloads,
        }

    @staticmethod
    def status(drop: Drop, *, now: float, stored: int) -> dict[str, Any]:
        """The answer of ``GET /v1/drops/{id}/status`` (for the owner)."""
        state = drop.state_at(now)
        return {
            "state": state.value,
            "size": drop.size,
            "stored": stored if state in LIVE_STATES else 0,
            "expires_at": drop.expires_at,
            "downloads": drop.downloads,
            "max_downloads": drop.max_downloads,
            "failed_attempts": drop.failed_attempts,
            "locked": state is State.LOCKED,
        }

    # -- downloading -----------------------------------------------------------------------------

    def claim(
        self, drop: Drop | None, *, now: float, auth: str, claim: str, address: str | None
    ) -> Outcome:
        """Reserve one of the remaining downloads for the claim token with digest ``claim``.

        Args:
            auth: SHA-256 hex of the presented auth key.
            claim: SHA-256 hex of the new claim token.
        """
        failed = self._authenticate(drop, now=now, auth=auth, address=address)
        if failed is not None:
            return failed
        assert drop is not None
        if drop.state is State.UPLOADING:
            detail = "This drop is still being uploaded; try again later."
            return Outcome(drop, error=Refused(409, "not-ready", detail))
        live = self._live_claims(drop, now)
        if drop.downloads + len(live) >= drop.max_downloads or len(live) >= self.max_live_claims:
            detail = "Every remaining download is in progress; try again later."
            return Outcome(drop, error=Refused(409, "busy", detail))
        claimed = replace(drop, claims=(*live, Claim(claim, now)))
        return Outcome(claimed, Write.SAVE, (LogEntry(now, Event.DOWNLOAD_STARTED, address),))

    def use_claim(
        self, drop: Drop | None, *, now: float, auth: str, claim: str, address: str | None
    ) -> Outcome:
        """A blob request (or a long download still running): check and refresh the claim."""
        failed = self._authenticate(drop, now=now, auth=auth, address=address)
        if failed is not None:
            return failed
        assert drop is not None
        live = self._live_claims(drop, now)
        if not any(_same(claim, c.digest) for c in live):
            return Outcome(drop, error=_bad_claim())
        claims = tuple(Claim(c.digest, now) if c.digest == claim else c for c in live)
        return Outcome(replace(drop, claims=claims), Write.SAVE)

    def complete(
        self, drop: Drop | None, *, now: float, auth: str, claim: str, address: str | None
    ) -> Outcome:
        """The downloader verified everything: count it and end the claim."""
        failed = self._authenticate(drop, now=now, auth=auth, address=address)
        if failed is not None:
            return failed
        assert drop is not None
        live = self._live_claims(drop, now)
        if not any(_same(claim, c.digest) for c in live):
            return Outcome(drop, error=_bad_claim())
        downloads = drop.downloads + 1
        events = [LogEntry(now, Event.DOWNLOAD_COMPLETED, address)]
        if downloads >= drop.max_downloads:
            done = replace(drop, state=State.USED_UP, downloads=downloads, stored=0, claims=())
            events.append(LogEntry(now, Event.USED_UP))
            return Outcome(done, Write.SAVE, tuple(events), delete_blob=True)
        claims = tuple(c for c in live if c.digest != claim)
        return Outcome(replace(drop, downloads=downloads, claims=claims), Write.SAVE, tuple(events))

    def _live_claims(self, drop: Drop, now: float) -> tuple[Claim, ...]:
        return tuple(c for c in drop.claims if now < c.last_used + self.claim_ttl)

    def _authenticate(
        self, drop: Drop | None, *, now: float, auth: str, address: str | None
    ) -> Outcome | None:
        """``None`` if the drop is visible and the key is right; else the refusal (a wrong key
        is counted, and the ``max_failures``-th one locks the drop and deletes its blob)."""
        refusal = self.visible(drop, now)
        if refusal is not None:
            return Outcome(drop, error=refusal)
        assert drop is not None
        if _same(auth, drop.verifier):
            return None
        failures = drop.failed_attempts + 1
        events = [LogEntry(now, Event.AUTH_FAILED, address)]
        if failures >= self.max_failures:
            locked = replace(
                drop, state=State.LOCKED, failed_attempts=failures, stored=0, claims=()
            )
            events.append(LogEntry(now, Event.LOCKED))
            error = Refused(410, "locked", _GONE[State.LOCKED])
            return Outcome(locked, Write.SAVE, tuple(events), error, delete_blob=True)
        error = Refused(403, "auth", "The key or password is wrong.")
        return Outcome(replace(drop, failed_attempts=failures), Write.SAVE, tuple(events), error)

    # -- ending ------------------------------------------------------------------------------------

    def delete(
        self, drop: Drop | None, *, now: float, owner: str, address: str | None = None
    ) -> Outcome:
        """The owner deletes the drop: blob, metadata and access log go; a tombstone answers
        ``410 deleted`` until the original expiry."""
        refusal = self.check_owner(drop, now=now, owner=owner)
        if refusal is not None:
            return Outcome(drop, error=refusal)
        assert drop is not None
        tombstone = _tombstone(drop, State.DELETED, drop.expires_at)
        events = (LogEntry(now, Event.DELETED, address),)
        return Outcome(tombstone, Write.CLEAR, events, delete_blob=True)

    @staticmethod
    def due(drop: Drop, now: float) -> bool:
        """Must the sweeper act on this drop at ``now``? (Its metadata store selects the same
        rows with ``sweep_at <= now``.)"""
        return now >= drop.sweep_at

    def sweep(self, drop: Drop | None, now: float) -> Outcome:
        """At its expiry a drop becomes an EXPIRED tombstone (blob, metadata and access log
        deleted); ``tombstone_ttl`` later the tombstone is purged."""
        if drop is None or not self.due(drop, now):
            return Outcome(drop)
        if drop.state is State.EXPIRED:
            return Outcome(None, Write.PURGE)
        tombstone = _tombstone(drop, State.EXPIRED, drop.expires_at + self.tombstone_ttl)
        events = (LogEntry(now, Event.EXPIRED),) if drop.state in LIVE_STATES else ()
        return Outcome(tombstone, Write.CLEAR, events, delete_blob=True)


class RateLimiter:
    """At most ``limit`` events per key in any ``window`` seconds (sliding window)."""

    def __init__(self, limit: int, window: float = RATE_WINDOW) -> None:
        self._limit = limit
        self._window = window
        self._times: dict[str, deque[float]] = {}

    def allow(self, key: str, now: float) -> bool:
        """Count one event for ``key`` unless the budget is spent; True if allowed."""
        times = self._times.setdefault(key, deque(maxlen=self._limit))
        while times and times[0] <= now - self._window:
            times.popleft()
        if len(times) >= self._limit:
            return False
        times.append(now)
        return True

    def prune(self, now: float) -> None:
        """Forget keys with no event in the window."""
        for key in [k for k, t in self._times.items() if not t or t[-1] <= now - self._window]:
            del self._times[key]

    def __len__(self) -> int:
        return len(self._times)


def parse_range(header: str | None, length: int) -> tuple[int, int] | None:
    """Parse a ``Range`` header against a blob of ``length`` bytes.

    Returns:
        ``None`` for no header (the whole blob), else ``(start, end)`` with ``end`` exclusive.

    Raises:
        Refused: ``416 range`` for a malformed, multi-range or unsatisfiable header.
    """
    if header is None:
        return None
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if match is None or match.group(1) == match.group(2) == "":
        raise _bad_range(length)
    first, last = match.group(1), match.group(2)
    if first == "":
        suffix = int(last)
        if suffix == 0 or length == 0:
            raise _bad_range(length)
        return max(0, length - suffix), length
    start = int(first)
    end = length if last == "" else min(int(last) + 1, length)
    if start >= length or end <= start:
        raise _bad_range(length)
    return start, end


# -- helpers ---------------------------------------------------------------------------------------


def _tombstone(drop: Drop, state: State, sweep_at: float) -> Drop:
    """What is left of a deleted or expired drop: its id, state and expiry time only."""
    return Drop(
        id=drop.id,
        state=state,
        size=0,
        created_at=drop.expires_at,
        expires_at=drop.expires_at,
        max_downloads=0,
        verifier="",
        owner="",
        sweep_at=sweep_at,
    )


def _same(presented: str, stored: str) -> bool:
    """Constant-time comparison of two hex digests (an empty stored digest never matches)."""
    return bool(stored) and hmac.compare_digest(presented.lower(), stored)


def _malformed(detail: str) -> Refused:
    return Refused(400, "malformed", detail)


def _no_space() -> Refused:
    return Refused(413, "too-large", "The relay does not have enough free disk space for this.")


def _bad_claim() -> Refused:
    return Refused(409, "claim", "This download claim is unknown or expired; claim again.")


def _bad_range(length: int) -> Refused:
    return Refused(416, "range", f"The requested range is not within the {length} bytes.")


def _int_field(
    obj: Mapping[str, object], key: str, low: int, high: int, *, name: str | None = None
) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _malformed(f"'{name or key}' must be an integer from {low} to {high}.")
    return value


def _hex64_field(obj: Mapping[str, object], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or _HEX64_RE.fullmatch(value) is None:
        raise _malformed(f"'{key}' must be 64 hexadecimal digits.")
    return value.lower()


def _b64_any(text: str) -> bytes | None:
    """Standard or URL-safe base64, padding optional."""
    if not re.fullmatch(r"[A-Za-z0-9+/_-]+={0,2}", text):
        return None
    try:
        return base64.b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4), b"-_")
    except (binascii.Error, ValueError):
        return None
