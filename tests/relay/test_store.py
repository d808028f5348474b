"""Pure core of the relay: no event loop, no disk, a fake clock."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relay.settings import RelaySettings
from relay.store import (
    Claim,
    CreateRequest,
    Drop,
    Event,
    Kdf,
    LogEntry,
    Outcome,
    RateLimiter,
    Refused,
    Rules,
    State,
    Write,
    client_key,
    decode_secret,
    parse_range,
    valid_id,
)

ROOT = Path(__file__).resolve().parents[2]
DAY = 86_400.0
ID = "AAAAAAAAAAAAAAAAAAAAAA"
AUTH = hashlib.sha256(b"auth key").hexdigest()
OWNER = hashlib.sha256(b"owner token").hexdigest()
WRONG = hashlib.sha256(b"wrong").hexdigest()
IP = "192.0.2.7"


def rules(**kwargs: Any) -> Rules:
    return Rules(**{"min_free_bytes": 0, **kwargs})


def request(**kwargs: Any) -> CreateRequest:
    fields: dict[str, Any] = {
        "size": 1000,
        "expires_in": None,
        "max_downloads": 1,
        "verifier": AUTH,
        "owner": OWNER,
        "kdf": None,
    }
    return CreateRequest(**{**fields, **kwargs})


def created(r: Rules, now: float = 0.0, **kwargs: Any) -> Drop:
    outcome = r.create(
        request(**kwargs), drop_id=ID, now=now, address=IP, free_bytes=1 << 40, reserved_bytes=0
    )
    assert outcome.error is None and outcome.drop is not None
    return outcome.drop


def available(r: Rules, now: float = 0.0, **kwargs: Any) -> Drop:
    drop = created(r, now, **kwargs)
    sealed = r.seal(drop, now=now, owner=OWNER, length=drop.size, stored=drop.size)
    assert sealed.error is None and sealed.drop is not None
    return sealed.drop


def claim_digest(n: int) -> str:
    return hashlib.sha256(b"claim %d" % n).hexdigest()


def claimed(r: Rules, drop: Drop, n: int, now: float) -> Outcome:
    return r.claim(drop, now=now, auth=AUTH, claim=claim_digest(n), address=IP)


# -- ids, secrets, ranges, rate limits ----------------------------------------------------------


def test_ids() -> None:
    assert valid_id(ID)
    assert valid_id("abcdefghijklmnopqrstuw")  # last char in A, Q, g, w: 16 bytes exactly
    assert not valid_id("abcdefghijklmnopqrstuv")  # would carry bits beyond 16 bytes
    assert not valid_id("AAAAAAAAAAAAAAAAAAAAA")  # 21
    assert not valid_id("AAAAAAAAAAAAAAAAAAAAAAA")  # 23
    assert not valid_id("AAAAAAAAAAAAAAAAAAAA/A")
    assert not valid_id("../../../etc/passwdAAA")


def test_decode_secret() -> None:
    assert decode_secret("AAEC") == b"\x00\x01\x02"
    assert decode_secret("AAECAw") == b"\x00\x01\x02\x03"
    assert decode_secret("AAECAw==") == b"\x00\x01\x02\x03"
    assert decode_secret("-_8") == b"\xfb\xff"
    for bad in ("", "a b", "AAECA+", "A", "****"):
        assert decode_secret(bad) is None, bad


@pytest.mark.parametrize(
    ("header", "length", "expected"),
    [
        (None, 10, None),
        ("bytes=0-9", 10, (0, 10)),
        ("bytes=2-4", 10, (2, 5)),
        ("bytes=2-", 10, (2, 10)),
        ("bytes=5-100", 10, (5, 10)),
        ("bytes=-3", 10, (7, 10)),
        ("bytes=-30", 10, (0, 10)),
        (" bytes = 1 - 1 ", 10, (1, 2)),
    ],
)
def test_ranges(header: str | None, length: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, length) == expected


@pytest.mark.parametrize(
    ("header", "length"),
    [
        ("bytes=10-", 10),
        ("bytes=10-20", 10),
        ("bytes=5-4", 10),
        ("bytes=-0", 10),
        ("bytes=-", 10),
        ("bytes=0-", 0),
        ("bytes=-5", 0),
        ("bytes=0-1,3-4", 10),
        ("items=0-1", 10),
        ("bytes=a-b", 10),
    ],
)
def test_unsatisfiable_ranges(header: str, length: int) -> None:
    with pytest.raises(Refused) as info:
        parse_range(header, length)
    assert (info.value.status, info.value.code) == (416, "range")


def test_rate_limiter_sliding_window() -> None:
    limiter = RateLimiter(2, window=60.0)
    assert limiter.allow("a", 0.0) and limiter.allow("a", 1.0)
    assert not limiter.allow("a", 2.0)
    assert limiter.allow("b", 2.0)  # per key
    assert not limiter.allow("a", 59.9)
    assert limiter.allow("a", 60.0)  # the first one left the window
    limiter.prune(200.0)
    assert len(limiter) == 0


def test_client_key() -> None:
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("2001:db8::1") == client_key("2001:db8::2") == "2001:db8::/64"
    assert client_key("unknown") == "unknown"


# -- create --------------------------------------------------------------------------------------


def test_parse_create() -> None:
    body = {
        "size": 5,
        "expires_in": 60,
        "max_downloads": 2,
        "verifier": AUTH.upper(),
        "owner": OWNER,
        "kdf": {"salt": "AAAAAAAAAAAAAAAAAAAAAA==", "ops": 3, "mem": 1 << 26},
        "extra": "ignored",
    }
    assert Rules.parse_create(body) == CreateRequest(
        size=5,
        expires_in=60.0,
        max_downloads=2,
        verifier=AUTH,
        owner=OWNER,
        kdf=Kdf("AAAAAAAAAAAAAAAAAAAAAA==", 3, 1 << 26),
    )
    minimal = {"size": 0, "max_downloads": 1, "verifier": AUTH, "owner": OWNER}
    assert Rules.parse_create(minimal).expires_in is None


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"size": -1}, "'size' must be an integer from 0 to"),
        ({"size": True}, "'size' must be an integer"),
        ({"size": 1.5}, "'size' must be an integer"),
        ({"expires_in": 0}, "'expires_in' must be a positive number of seconds."),
        ({"expires_in": "1"}, "'expires_in' must be a positive number of seconds."),
        ({"max_downloads": 0}, "'max_downloads' must be an integer from 1 to 10000."),
        ({"verifier": "ab"}, "'verifier' must be 64 hexadecimal digits."),
        ({"owner": None}, "'owner' must be 64 hexadecimal digits."),
        ({"kdf": "x"}, "'kdf' must be null or an object."),
        ({"kdf": {"salt": "AAAA", "ops": 1, "mem": 1}}, "'kdf.salt' must be 16 bytes in base64."),
        (
            {"kdf": {"salt": "AAAAAAAAAAAAAAAAAAAAAA", "ops": 0, "mem": 1}},
            "'kdf.ops' must be an integer",
        ),
    ],
)
def test_parse_create_errors(change: dict[str, Any], detail: str) -> None:
    body = {"size": 5, "max_downloads": 1, "verifier": AUTH, "owner": OWNER, **change}
    with pytest.raises(Refused) as info:
        Rules.parse_create(body)
    assert (info.value.status, info.value.code) == (400, "malformed")
    assert info.value.detail.startswith(detail)
    with pytest.raises(Refused):
        Rules.parse_create([body])


def test_create_clamps_expiry_to_the_maximum() -> None:
    r = rules(default_expiry=7 * DAY, max_expiry=60 * DAY)
    assert created(r, now=100.0).expires_at == 100.0 + 7 * DAY
    assert created(r, now=100.0, expires_in=3600.0).expires_at == 100.0 + 3600.0
    assert created(r, now=100.0, expires_in=365 * DAY).expires_at == 100.0 + 60 * DAY
    outcome = r.create(
        request(), drop_id=ID, now=5.0, address=IP, free_bytes=1 << 40, reserved_bytes=0
    )
    assert outcome.write is Write.SAVE
    assert outcome.events == (LogEntry(5.0, Event.CREATED, IP),)
    assert outcome.drop is not None and outcome.drop.state is State.UPLOADING


def test_create_too_large_and_no_space() -> None:
    r = rules(max_drop_size=1000, min_free_bytes=100)
    big = r.create(
        request(size=1001), drop_id=ID, now=0, address=IP, free_bytes=1 << 40, reserved_bytes=0
    )
    assert big.error is not None and (big.error.status, big.error.code) == (413, "too-large")
    assert "at most 1000 bytes" in big.error.detail
    # 2000 free, 900 promised to other uploads, 1000 asked: 100 would be left: just fine.
    ok = r.create(request(), drop_id=ID, now=0, address=IP, free_bytes=2000, reserved_bytes=900)
    assert ok.error is None
    full = r.create(request(), drop_id=ID, now=0, address=IP, free_bytes=2000, reserved_bytes=901)
    assert full.error is not None and full.error.code == "too-large"
    assert "free disk space" in full.error.detail
    assert full.drop is None and full.write is Write.KEEP


# -- upload and seal -----------------------------------------------------------------------------


def test_upload_checks() -> None:
    r = rules()
    drop = created(r, size=100)
    assert r.check_upload(drop, now=1, offset=0, stored=0, length=100) is None
    assert r.check_upload(drop, now=1, offset=40, stored=40, length=None) is None
    wrong = r.check_upload(drop, now=1, offset=0, stored=40, length=10)
    assert wrong == Refused(409, "offset", "The upload must continue at byte 40.", offset=40)
    over = r.check_upload(drop, now=1, offset=40, stored=40, length=61)
    assert over is not None and (over.status, over.code) == (413, "too-large")
    late = r.check_upload(drop, now=drop.expires_at, offset=0, stored=0, length=1)
    assert late is not None and (late.status, late.code) == (410, "expired")
    assert Rules.uploaded(drop, 40).drop == Drop(**{**_fields(drop), "stored": 40})
    assert Rules.uploaded(drop, 0).write is Write.KEEP
    assert Rules.uploaded(None, 40).write is Write.KEEP


def test_seal() -> None:
    r = rules()
    drop = created(r, size=100)
    wrong_owner = r.seal(drop, now=1, owner=WRONG, length=50, stored=50)
    assert wrong_owner.error == Refused(403, "owner", "The owner token is wrong.")
    short = r.seal(drop, now=1, owner=OWNER, length=60, stored=50)
    assert short.error is not None and (short.error.code, short.error.offset) == ("offset", 50)
    sealed = r.seal(drop, now=1, owner=OWNER, length=50, stored=50, address=IP)
    assert sealed.drop is not None
    assert (sealed.drop.state, sealed.drop.size) == (State.AVAILABLE, 50)  # the real size now
    assert sealed.events == (LogEntry(1, Event.UPLOADED, IP),)
    again = r.seal(sealed.drop, now=2, owner=OWNER, length=50, stored=50)
    assert again.error is None and again.write is Write.KEEP  # idempotent
    other = r.seal(sealed.drop, now=2, owner=OWNER, length=40, stored=50)
    assert other.error is not None and other.error.code == "sealed"
    assert r.check_upload(sealed.drop, now=2, offset=50, stored=50, length=1) == Refused(
        409, "sealed", "This drop is sealed; it cannot change."
    )


# -- claims and downloads ------------------------------------------------------------------------


def test_claim_limit_counts_completed_and_live_claims() -> None:
    r = rules(claim_ttl=100.0)
    drop = available(r, max_downloads=2)
    first = claimed(r, drop, 1, now=10)
    assert first.events == (LogEntry(10, Event.DOWNLOAD_STARTED, IP),)
    assert first.drop is not None
    second = claimed(r, first.drop, 2, now=11)
    assert second.drop is not None and len(second.drop.claims) == 2
    third = claimed(r, second.drop, 3, now=12)
    assert third.error is not None and (third.error.status, third.error.code) == (409, "busy")
    assert third.write is Write.KEEP
    done = r.complete(second.drop, now=20, auth=AUTH, claim=claim_digest(1), address=IP)
    assert done.drop is not None and done.drop.downloads == 1
    assert done.events == (LogEntry(20, Event.DOWNLOAD_COMPLETED, IP),)
    # one completed + one live claim = 2 = max: still busy
    busy = claimed(r, done.drop, 3, now=21)
    assert busy.error is not None and busy.error.code == "busy"


def test_concurrent_claims_never_exceed_the_limit() -> None:
    r = rules()
    drop = available(r, max_downloads=3)
    granted = 0
    for n in range(10):  # the metadata store applies steps one at a time
        outcome = claimed(r, drop, n, now=5)
        if outcome.error is None:
            granted += 1
            assert outcome.drop is not None
            drop = outcome.drop
    assert granted == 3 and len(drop.claims) == 3


def test_concurrent_claims_are_capped() -> None:
    r = rules(max_live_claims=2)
    drop = available(r, max_downloads=100)
    for n in range(2):
        outcome = claimed(r, drop, n, now=5)
        assert outcome.drop is not None
        drop = outcome.drop
    busy = claimed(r, drop, 9, now=5)
    assert busy.error is not None and busy.error.code == "busy"


def test_claims_expire_after_their_last_use() -> None:
    r = rules(claim_ttl=100.0)
    drop = available(r, max_downloads=1)
    outcome = claimed(r, drop, 1, now=0)
    assert outcome.drop is not None
    assert claimed(r, outcome.drop, 2, now=99).error is not None  # still live
    used = r.use_claim(outcome.drop, now=90, auth=AUTH, claim=claim_digest(1), address=IP)
    assert used.drop is not None and used.drop.claims == (Claim(claim_digest(1), 90),)
    assert claimed(r, used.drop, 2, now=189).error is not None  # refreshed at 90
    taken = claimed(r, used.drop, 2, now=190)  # expired: the slot is free again
    assert taken.error is None and taken.drop is not None
    assert [c.digest for c in taken.drop.claims] == [claim_digest(2)]
    stale = r.complete(taken.drop, now=191, auth=AUTH, claim=claim_digest(1), address=IP)
    assert stale.error == Refused(
        409, "claim", "This download claim is unknown or expired; claim again."
    )
    assert r.use_claim(taken.drop, now=191, auth=AUTH, claim=WRONG, address=IP).error == (
        stale.error
    )


def test_completion_uses_up_the_drop() -> None:
    r = rules()
    drop = available(r, max_downloads=1)
    outcome = claimed(r, drop, 1, now=1)
    assert outcome.drop is not None
    done = r.complete(outcome.drop, now=2, auth=AUTH, claim=claim_digest(1), address=IP)
    assert done.delete_blob and done.write is Write.SAVE
    assert done.events == (
        LogEntry(2, Event.DOWNLOAD_COMPLETED, IP),
        LogEntry(2, Event.USED_UP),
    )
    assert done.drop is not None and done.drop.state is State.USED_UP
    assert Rules.visible(done.drop, 3) == Refused(
        410, "used-up", "This drop reached its download limit and was deleted."
    )
    again = claimed(r, done.drop, 2, now=3)
    assert again.error is not None and again.error.code == "used-up"
    # the owner still sees the tombstone until it expires
    assert r.check_owner(done.drop, now=3, owner=OWNER) is None
    assert Rules.status(done.drop, now=3, stored=0)["state"] == "used-up"


def test_claim_before_sealing_is_not_ready() -> None:
    r = rules()
    drop = created(r)
    outcome = claimed(r, drop, 1, now=1)
    assert outcome.error is not None and (outcome.error.status, outcome.error.code) == (
        409,
        "not-ready",
    )


def test_wrong_keys_are_counted_and_lock_at_max_failures() -> None:
    r = rules(max_failures=3)
    drop = available(r)
    for attempt in (1, 2):
        outcome = r.claim(drop, now=attempt, auth=WRONG, claim=claim_digest(0), address=IP)
        assert outcome.error == Refused(403, "auth", "The key or password is wrong.")
        assert outcome.events == (LogEntry(attempt, Event.AUTH_FAILED, IP),)
        assert outcome.write is Write.SAVE and not outcome.delete_blob
        assert outcome.drop is not None
        drop = outcome.drop
    assert drop.failed_attempts == 2
    assert claimed(r, drop, 1, now=2.5).error is None  # the right key still works
    last = r.complete(drop, now=3, auth=WRONG, claim=claim_digest(0), address=IP)
    assert last.error is not None and (last.error.status, last.error.code) == (410, "locked")
    assert last.events == (LogEntry(3, Event.AUTH_FAILED, IP), LogEntry(3, Event.LOCKED))
    assert last.delete_blob and last.drop is not None and last.drop.state is State.LOCKED
    # locked for good, even with the right key; no more counting
    after = claimed(r, last.drop, 1, now=4)
    assert after.error is not None and after.error.code == "locked"
    assert after.write is Write.KEEP and after.events == ()
    status = Rules.status(last.drop, now=4, stored=0)
    assert (status["locked"], status["failed_attempts"], status["state"]) == (True, 3, "locked")


def test_owner_checks() -> None:
    r = rules()
    drop = available(r)
    assert r.check_owner(None, now=1, owner=OWNER) == Refused(
        404, "unknown", "There is no such drop."
    )
    assert r.check_owner(drop, now=1, owner=WRONG) == Refused(
        403, "owner", "The owner token is wrong."
    )
    assert r.check_owner(drop, now=drop.expires_at, owner=OWNER) == Refused(
        410, "expired", "This drop has expired."
    )


def test_delete_leaves_a_scrubbed_tombstone_until_the_original_expiry() -> None:
    r = rules(tombstone_ttl=1000.0)
    drop = available(r, kdf=Kdf("AAAAAAAAAAAAAAAAAAAAAA", 3, 1 << 26))
    outcome = r.delete(drop, now=5, owner=OWNER, address=IP)
    assert outcome.write is Write.CLEAR and outcome.delete_blob
    assert outcome.events == (LogEntry(5, Event.DELETED, IP),)
    assert outcome.drop == tombstone(drop, State.DELETED, drop.expires_at)
    tomb = outcome.drop
    assert Rules.visible(tomb, 6) == Refused(410, "deleted", "This drop was deleted by its sender.")
    assert r.check_owner(tomb, now=6, owner=OWNER) == Refused(
        410, "deleted", "This drop was deleted by its sender."
    )
    assert Rules.visible(tomb, tomb.expires_at) == Refused(410, "expired", "This drop has expired.")
    # at the original expiry it becomes an expired tombstone, then goes
    expired = r.sweep(tomb, tomb.expires_at)
    assert expired == Outcome(
        tombstone(drop, State.EXPIRED, drop.expires_at + 1000), Write.CLEAR, delete_blob=True
    )


def test_sweeper_decisions() -> None:
    r = rules(default_expiry=100.0, tombstone_ttl=1000.0)
    drop = available(r, now=0.0)
    assert drop.sweep_at == drop.expires_at == 100.0
    assert not Rules.due(drop, 99.9)
    assert r.sweep(drop, 99.9) == Outcome(drop)
    assert Rules.visible(drop, 99.9) is None
    assert Rules.visible(drop, 100.0) == Refused(410, "expired", "This drop has expired.")
    assert Rules.due(drop, 100.0)
    expired = r.sweep(drop, 100.5)
    assert expired == Outcome(
        tombstone(drop, State.EXPIRED, 1100.0),
        Write.CLEAR,
        (LogEntry(100.5, Event.EXPIRED),),
        delete_blob=True,
    )
    assert expired.drop is not None
    assert Rules.visible(expired.drop, 500) == Refused(410, "expired", "This drop has expired.")
    assert r.sweep(expired.drop, 1099.9) == Outcome(expired.drop)
    assert r.sweep(expired.drop, 1100.0) == Outcome(None, Write.PURGE)
    assert r.sweep(None, 100.0) == Outcome(None)
    # an unsealed upload, a used-up and a locked drop expire the same way (no event for those
    # that were tombstones already)
    pending = created(r, now=50.0)
    assert r.sweep(pending, 149.0).write is Write.KEEP
    assert r.sweep(pending, 150.0).events == (LogEntry(150.0, Event.EXPIRED),)
    claim = claimed(r, drop, 1, now=1)
    assert claim.drop is not None
    used = r.complete(claim.drop, now=2, auth=AUTH, claim=claim_digest(1), address=IP).drop
    assert used is not None and used.state is State.USED_UP
    assert r.sweep(used, 100.0) == Outcome(
        tombstone(drop, State.EXPIRED, 1100.0), Write.CLEAR, (), delete_blob=True
    )


def tombstone(drop: Drop, state: State, sweep_at: float) -> Drop:
    """All that is left of a deleted or expired drop."""
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


def test_public_and_status_views() -> None:
    r = rules()
    drop = available(r, kdf=Kdf("AAAAAAAAAAAAAAAAAAAAAA", 3, 1 << 26), max_downloads=4)
    assert Rules.public(drop, 1) == {
        "id": ID,
        "state": "available",
        "size": 1000,
        "expires_at": drop.expires_at,
        "kdf": {"salt": "AAAAAAAAAAAAAAAAAAAAAA", "ops": 3, "mem": 1 << 26},
        "downloads": 0,
        "max_downloads": 4,
    }
    assert Rules.status(drop, now=1, stored=1000) == {
        "state": "available",
        "size": 1000,
        "stored": 1000,
        "expires_at": drop.expires_at,
        "downloads": 0,
        "max_downloads": 4,
        "failed_attempts": 0,
        "locked": False,
    }


# -- settings ------------------------------------------------------------------------------------


def test_settings_defaults_env_and_overrides(tmp_path: Path) -> None:
    loaded = RelaySettings.load({}, {"data_dir": str(tmp_path)})
    assert loaded == RelaySettings(data_dir=tmp_path)
    assert (loaded.default_expiry, loaded.max_expiry) == (7 * DAY, 60 * DAY)
    assert (loaded.max_drop_size, loaded.min_free_bytes) == (1 << 40, 1 << 30)
    assert (loaded.max_failures, loaded.claim_ttl, loaded.sweep_interval) == (10, 1800.0, 15.0)
    assert (loaded.creates_per_minute, loaded.tombstone_ttl) == (30, 30 * DAY)
    env = {
        "SCANBEAM_RELAY_DATA_DIR": str(tmp_path / "env"),
        "SCANBEAM_RELAY_MAX_EXPIRY": "3600",
        "SCANBEAM_RELAY_DEFAULT_EXPIRY": "60",
        "SCANBEAM_RELAY_MAX_FAILURES": " 3 ",
        "SCANBEAM_RELAY_CLAIM_TTL": "",
        "SCANBEAM_MAX_ROOMS": "5",  # not ours
    }
    loaded = RelaySettings.load(env, {"min_free_bytes": 0, "sweep_interval": "0.5"})
    assert loaded == RelaySettings(
        data_dir=tmp_path / "env",
        max_expiry=3600.0,
        default_expiry=60.0,
        max_failures=3,
        min_free_bytes=0,
        sweep_interval=0.5,
    )


@pytest.mark.parametrize(
    ("env", "overrides", "message"),
    [
        ({}, {}, "data_dir is required (set SCANBEAM_RELAY_DATA_DIR or pass data_dir)"),
        ({}, {"data_dir": "/x", "colour": 1}, "unknown relay setting(s): colour"),
        (
            {"SCANBEAM_RELAY_MAX_FAILURES": "ten"},
            {"data_dir": "/x"},
            "SCANBEAM_RELAY_MAX_FAILURES: expected an integer, got 'ten'",
        ),
        ({}, {"data_dir": "/x", "max_failures": 0}, "max_failures must be at least 1"),
        ({}, {"data_dir": "/x", "claim_ttl": "inf"}, "claim_ttl must be a positive, finite"),
        (
            {},
            {"data_dir": "/x", "default_expiry": 10.0, "max_expiry": 5.0},
            "default_expiry must not be larger than max_expiry",
        ),
        ({}, {"data_dir": "/x", "min_free_bytes": -1}, "min_free_bytes must not be negative"),
        ({}, {"data_dir": "/x", "tombstone_ttl": -1}, "tombstone_ttl must be a finite"),
    ],
)
def test_settings_errors(env: dict[str, str], overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        RelaySettings.load(env, overrides)
    assert str(info.value).startswith(message)


def test_store_is_pure_and_servers_import_neither_peer_nor_each_other() -> None:
    code = (
        "import sys, relay.store\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('asyncio', 'aiohttp', 'sqlite3', 'socket', 'peer', 'signaling')]\n"
        "assert not bad, bad\n"
        "import relay, relay.app, relay.client\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('peer', 'signaling')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=30)
    code = (  # and signaling knows the relay only as a generic mount
        "import sys, signaling.server, signaling.client\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('peer', 'relay')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=30)


def _fields(drop: Drop) -> dict[str, Any]:
    return {name: getattr(drop, name) for name in Drop.__dataclass_fields__}
