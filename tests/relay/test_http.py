"""The relay API on loopback: a real server (start_server + mount) and RelayClient."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import relay.app
from relay.client import Created, RelayClient, RelayError
from tests.relay.conftest import WAIT, Env, relay_env, until

MiB = 1 << 20


def b64(secret: bytes) -> str:
    return base64.urlsafe_b64encode(secret).decode().rstrip("=")


async def chunks(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def fails(awaitable: Any, code: str, status: int) -> RelayError:
    with pytest.raises(RelayError) as info:
        await asyncio.wait_for(awaitable, WAIT)
    assert (info.value.code, info.value.status) == (code, status), info.value
    return info.value


async def fetch(client: RelayClient, drop_id: str, auth: bytes, claim: str, *args: int) -> bytes:
    return b"".join([block async for block in client.download(drop_id, auth, claim, *args)])


class Drop:
    """A drop made through the API, with its secrets and content."""

    def __init__(self, created: Created, data: bytes, auth: bytes, owner: bytes) -> None:
        self.id = created.id
        self.created = created
        self.data = data
        self.auth = auth
        self.owner = owner

    def blob_path(self, env: Env) -> Path:
        name = base64.urlsafe_b64decode(self.id + "==").hex()
        return env.data_dir / "blobs" / name[:2] / name


async def make_drop(
    env: Env, data: bytes = b"", *, seal: bool = True, size: int | None = None, **kwargs: Any
) -> Drop:
    auth, owner = os.urandom(32), os.urandom(32)
    created = await env.client.create(
        size=len(data) if size is None else size, auth=auth, owner=owner, **kwargs
    )
    drop = Drop(created, data, auth, owner)
    if data:
        assert await env.client.upload(drop.id, owner, 0, chunks(data)) == len(data)
    if seal:
        await env.client.seal(drop.id, owner, len(data))
    return drop


def db_rows(env: Env, drop_id: str) -> tuple[int, int]:
    """(rows in drops, rows in access_log) for ``drop_id``, read from the SQLite file."""
    with sqlite3.connect(env.db) as db:
        drops = db.execute("SELECT COUNT(*) FROM drops WHERE id = ?", (drop_id,)).fetchone()[0]
        log = db.execute(
            "SELECT COUNT(*) FROM access_log WHERE drop_id = ?", (drop_id,)
        ).fetchone()[0]
    db.close()
    return int(drops), int(log)


# -- the happy path ------------------------------------------------------------------------------


async def test_create_upload_seal_download_complete(env: Env) -> None:
    data = os.urandom(3 * MiB + 123)
    drop = await make_drop(env, data, seal=False, max_downloads=2, expires_in=3600)
    assert drop.created.expires_at == env.clock.now + 3600
    assert drop.created.max_expires_in == 60 * 86_400
    info = await env.client.meta(drop.id)
    assert (info.state, info.size, info.downloads, info.max_downloads) == (
        "uploading",
        len(data),
        0,
        2,
    )
    assert (await env.client.upload_offset(drop.id, drop.owner)).offset == len(data)
    await env.client.seal(drop.id, drop.owner, len(data))
    await env.client.seal(drop.id, drop.owner, len(data))  # idempotent
    state = await env.client.upload_offset(drop.id, drop.owner)
    assert (state.offset, state.sealed) == (len(data), True)
    assert (await env.client.meta(drop.id)).state == "available"

    claim = await env.client.claim(drop.id, drop.auth)
    assert await fetch(env.client, drop.id, drop.auth, claim) == data
    done = await env.client.complete(drop.id, drop.auth, claim)
    assert (done.downloads, done.max_downloads) == (1, 2)
    status = await env.client.status(drop.id, drop.owner)
    assert (status.state, status.stored, status.downloads, status.locked) == (
        "available",
        len(data),
        1,
        False,
    )
    events = await env.client.log(drop.id, drop.owner)
    assert [e.event for e in events] == [
        "created",
        "uploaded",
        "download-started",
        "download-completed",
    ]
    assert {e.address for e in events} == {"127.0.0.1"}
    assert all(e.time == env.clock.now for e in events)


async def test_kdf_parameters_are_public(env: Env) -> None:
    kdf = {"salt": base64.b64encode(os.urandom(16)).decode(), "ops": 3, "mem": 64 * MiB}
    drop = await make_drop(env, b"x", kdf=kdf)
    assert (await env.client.meta(drop.id)).kdf == kdf


async def test_files_are_private(env: Env) -> None:
    drop = await make_drop(env, b"secret-ish ciphertext")
    path = drop.blob_path(env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((env.data_dir / "blobs").stat().st_mode) == 0o700
    assert stat.S_IMODE(env.db.stat().st_mode) == 0o600
    assert path.read_bytes() == drop.data


# -- uploads -------------------------------------------------------------------------------------


async def test_upload_resumes_at_the_servers_offset_after_a_disconnect(env: Env) -> None:
    data = os.urandom(5 * MiB)
    drop = await make_drop(env, seal=False, size=len(data))
    stall = asyncio.Event()

    async def first_part() -> AsyncIterator[bytes]:
        for i in range(3):
            yield data[i * MiB : (i + 1) * MiB]
        await stall.wait()  # the client "hangs" mid-body, then goes away

    upload = asyncio.create_task(env.client.upload(drop.id, drop.owner, 0, first_part()))
    path = drop.blob_path(env)
    await until(lambda: path.stat().st_size >= 2 * MiB)
    await asyncio.sleep(0.2)  # the third MiB is on the server, maybe not yet on disk
    upload.cancel()  # the connection drops mid-body
    with pytest.raises(asyncio.CancelledError):
        await upload
    state = await env.client.upload_offset(drop.id, drop.owner)  # waits for the server's side
    assert state == type(state)(3 * MiB, False)  # every byte that arrived was kept
    with pytest.raises(RelayError) as info:
        await env.client.upload(drop.id, drop.owner, 2 * MiB, chunks(data[2 * MiB :]))
    assert (info.value.code, info.value.status, info.value.offset) == ("offset", 409, 3 * MiB)
    rest = await env.client.upload(drop.id, drop.owner, 3 * MiB, chunks(data[3 * MiB :]))
    assert rest == len(data)
    await env.client.seal(drop.id, drop.owner, len(data))
    claim = await env.client.claim(drop.id, drop.auth)
    assert await fetch(env.client, drop.id, drop.auth, claim) == data


async def test_wrong_offset_and_bad_seal(env: Env) -> None:
    drop = await make_drop(env, seal=False, size=100)
    error = await fails(env.client.upload(drop.id, drop.owner, 5, chunks(b"abc")), "offset", 409)
    assert error.offset == 0
    assert await env.client.upload(drop.id, drop.owner, 0, chunks(b"abc")) == 3
    error = await fails(env.client.upload(drop.id, drop.owner, 0, chunks(b"abc")), "offset", 409)
    assert (error.offset, error.detail) == (3, "The upload must continue at byte 3.")
    error = await fails(env.client.seal(drop.id, drop.owner, 4), "offset", 409)
    assert error.offset == 3
    await env.client.seal(drop.id, drop.owner, 3)
    await fails(env.client.upload(drop.id, drop.owner, 3, chunks(b"d")), "sealed", 409)
    await fails(env.client.claim(drop.id, os.urandom(32)), "auth", 403)


async def test_claim_before_seal_is_not_ready(env: Env) -> None:
    drop = await make_drop(env, seal=False, size=10)
    await fails(env.client.claim(drop.id, drop.auth), "not-ready", 409)


async def test_size_limits_are_413(tmp_path: Path) -> None:
    async with relay_env(tmp_path, max_drop_size=1000) as env:
        auth, owner = os.urandom(32), os.urandom(32)
        error = await fails(env.client.create(size=1001, auth=auth, owner=owner), "too-large", 413)
        assert error.detail == "This relay accepts drops of at most 1000 bytes."
        drop = await make_drop(env, seal=False, size=10)
        # A streamed (chunked) body larger than declared: the first 10 bytes are kept.
        await fails(
            env.client.upload(drop.id, drop.owner, 0, chunks(b"x" * 25, 4)), "too-large", 413
        )
        assert (await env.client.upload_offset(drop.id, drop.owner)).offset == 10
        await env.client.seal(drop.id, drop.owner, 10)


async def test_no_space_is_413(tmp_path: Path) -> None:
    async with relay_env(tmp_path, min_free_bytes=1 << 62) as env:
        error = await fails(env.client.create(size=1, auth=b"a", owner=b"o"), "too-large", 413)
        assert error.detail == "The relay does not have enough free disk space for this."


async def test_a_second_concurrent_upload_is_busy(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay.app, "LOCK_WAIT", 0.2)
    drop = await make_drop(env, seal=False, size=10 * MiB)
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        await release.wait()
        yield b"y" * 1000

    first = asyncio.create_task(env.client.upload(drop.id, drop.owner, 0, slow()))
    await until(lambda: len(env.relay._locks) == 1)
    await fails(env.client.upload(drop.id, drop.owner, 0, chunks(b"z")), "busy", 409)
    await fails(env.client.upload_offset(drop.id, drop.owner), "busy", 409)
    release.set()
    assert await asyncio.wait_for(first, WAIT) == 2000


async def test_a_raw_upload_over_the_declared_size_is_refused_before_reading(env: Env) -> None:
    drop = await make_drop(env, seal=False, size=10)
    async with aiohttp.ClientSession() as raw:
        url = f"{env.url}/v1/drops/{drop.id}/blob?offset=0"
        headers = {"X-Owner-Token": b64(drop.owner)}
        async with raw.put(url, data=b"x" * 11, headers=headers) as response:
            assert (response.status, (await response.json())["code"]) == (413, "too-large")
        async with raw.put(url.replace("=0", "=-1"), data=b"x", headers=headers) as response:
            assert (response.status, (await response.json())["code"]) == (400, "malformed")
        async with raw.put(url, data=b"x" * 10, headers=headers) as response:
            assert (response.status, await response.json()) == (200, {"offset": 10})
    assert (await env.client.upload_offset(drop.id, drop.owner)).offset == 10


async def test_an_empty_drop(env: Env) -> None:
    drop = await make_drop(env, b"")
    claim = await env.client.claim(drop.id, drop.auth)
    assert await fetch(env.client, drop.id, drop.auth, claim) == b""
    await fails(fetch(env.client, drop.id, drop.auth, claim, 0, 1), "range", 416)
    assert (await env.client.complete(drop.id, drop.auth, claim)).downloads == 1


async def test_an_unusable_data_dir_fails_the_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OSError):
        async with relay_env(tmp_path / "file"):
            pass


# -- downloads -----------------------------------------------------------------------------------


async def test_ranges(env: Env) -> None:
    data = os.urandom(3 * MiB)
    drop = await make_drop(env, data)
    claim = await env.client.claim(drop.id, drop.auth)
    assert await fetch(env.client, drop.id, drop.auth, claim, 1000) == data[1000:]
    assert await fetch(env.client, drop.id, drop.auth, claim, 5, 10) == data[5:10]
    assert (
        await fetch(env.client, drop.id, drop.auth, claim, MiB - 1, 2 * MiB + 1)
        == (data[MiB - 1 : 2 * MiB + 1])
    )
    with pytest.raises(RelayError) as info:
        await fetch(env.client, drop.id, drop.auth, claim, len(data))
    assert (info.value.code, info.value.status) == ("range", 416)
    headers = {"Authorization": f"Bearer {b64(drop.auth)}", "X-Claim": claim}
    async with aiohttp.ClientSession() as raw:
        url = f"{env.url}/v1/drops/{drop.id}/blob"
        async with raw.get(url, headers={**headers, "Range": "bytes=-100"}) as response:
            assert response.status == 206
            assert (
                response.headers["Content-Range"]
                == f"bytes {len(data) - 100}-{len(data) - 1}/{len(data)}"
            )
            assert response.headers["Content-Length"] == "100"
            assert await response.read() == data[-100:]
        async with raw.get(url, headers={**headers, "Range": "bytes=9999999-"}) as response:
            assert response.status == 416
            assert response.headers["Content-Range"] == f"bytes */{len(data)}"
            assert (await response.json())["code"] == "range"
        async with raw.get(url, headers=headers) as response:
            assert response.status == 200
            assert response.headers["Accept-Ranges"] == "bytes"
            assert response.headers["Content-Length"] == str(len(data))
            assert await response.read() == data
        async with raw.get(url, headers={"Authorization": headers["Authorization"]}) as response:
            assert response.status == 400  # no claim
        async with raw.get(url, headers={**headers, "X-Claim": b64(os.urandom(32))}) as response:
            assert (response.status, (await response.json())["code"]) == (409, "claim")


async def test_an_abandoned_download_does_not_hurt(env: Env) -> None:
    data = os.urandom(8 * MiB)
    drop = await make_drop(env, data)
    claim = await env.client.claim(drop.id, drop.auth)
    async with aclosing(env.client.download(drop.id, drop.auth, claim)) as blocks:
        async for _ in blocks:
            break  # stop early: the connection is dropped
    assert await fetch(env.client, drop.id, drop.auth, claim, 4 * MiB) == data[4 * MiB :]


async def test_wrong_keys_lock_the_drop(tmp_path: Path) -> None:
    async with relay_env(tmp_path, max_failures=3) as env:
        drop = await make_drop(env, b"ciphertext")
        assert drop.blob_path(env).exists()
        await fails(env.client.claim(drop.id, os.urandom(32)), "auth", 403)
        await fails(env.client.claim(drop.id, "not-base64!"[:3]), "auth", 403)
        claim = await env.client.claim(drop.id, drop.auth)  # the right key still works
        await fails(env.client.complete(drop.id, os.urandom(32), claim), "locked", 410)
        await fails(env.client.claim(drop.id, drop.auth), "locked", 410)
        await fails(env.client.meta(drop.id), "locked", 410)
        await fails(fetch(env.client, drop.id, drop.auth, claim), "locked", 410)
        assert not drop.blob_path(env).exists()
        status = await env.client.status(drop.id, drop.owner)
        assert (status.state, status.locked, status.failed_attempts, status.stored) == (
            "locked",
            True,
            3,
            0,
        )
        events = [e.event for e in await env.client.log(drop.id, drop.owner)]
        assert events == [
            "created",
            "uploaded",
            "auth-failed",
            "auth-failed",
            "download-started",
            "auth-failed",
            "locked",
        ]


async def test_missing_key_is_401_and_not_counted(env: Env) -> None:
    drop = await make_drop(env, b"x")
    async with aiohttp.ClientSession() as raw:
        for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}):
            async with raw.post(f"{env.url}/v1/drops/{drop.id}/claim", headers=headers) as r:
                assert r.status == 401
                assert (await r.json())["code"] == "auth"
    assert (await env.client.status(drop.id, drop.owner)).failed_attempts == 0


async def test_one_download_limit(env: Env) -> None:
    data = os.urandom(MiB)
    drop = await make_drop(env, data, max_downloads=1)
    claim = await env.client.claim(drop.id, drop.auth)
    await fails(env.client.claim(drop.id, drop.auth), "busy", 409)
    assert await fetch(env.client, drop.id, drop.auth, claim) == data
    await fails(env.client.claim(drop.id, drop.auth), "busy", 409)  # not complete yet
    done = await env.client.complete(drop.id, drop.auth, claim)
    assert (done.downloads, done.max_downloads) == (1, 1)
    assert not drop.blob_path(env).exists()
    await fails(env.client.claim(drop.id, drop.auth), "used-up", 410)
    await fails(env.client.meta(drop.id), "used-up", 410)
    await fails(env.client.complete(drop.id, drop.auth, claim), "used-up", 410)
    assert (await env.client.status(drop.id, drop.owner)).state == "used-up"
    events = [e.event for e in await env.client.log(drop.id, drop.owner)]
    assert events[-2:] == ["download-completed", "used-up"]


async def test_concurrent_claims_never_exceed_the_limit(env: Env) -> None:
    drop = await make_drop(env, b"x" * 1000, max_downloads=2)
    results = await asyncio.gather(
        *(env.client.claim(drop.id, drop.auth) for _ in range(5)), return_exceptions=True
    )
    claims = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, RelayError)]
    assert len(claims) == 2 and len(set(claims)) == 2
    assert [(r.code, r.status) for r in refused] == [("busy", 409)] * 3
    for claim in claims:
        await env.client.complete(drop.id, drop.auth, claim)
    await fails(env.client.claim(drop.id, drop.auth), "used-up", 410)


async def test_claims_expire(tmp_path: Path) -> None:
    async with relay_env(tmp_path, claim_ttl=100.0) as env:
        drop = await make_drop(env, b"abc", max_downloads=1)
        first = await env.client.claim(drop.id, drop.auth)
        env.clock.advance(60)
        assert await fetch(env.client, drop.id, drop.auth, first) == b"abc"  # refreshes it
        env.clock.advance(60)
        await fails(env.client.claim(drop.id, drop.auth), "busy", 409)
        env.clock.advance(41)
        await fails(env.client.complete(drop.id, drop.auth, first), "claim", 409)
        second = await env.client.claim(drop.id, drop.auth)
        await env.client.complete(drop.id, drop.auth, second)


# -- expiry and the sweeper ----------------------------------------------------------------------


def db_row(env: Env, drop_id: str) -> tuple[Any, ...] | None:
    with sqlite3.connect(env.db) as db:
        row = db.execute(
            "SELECT state, size, stored, created_at, max_downloads, downloads, failed_attempts,"
            " verifier, owner, kdf, claims FROM drops WHERE id = ?",
            (drop_id,),
        ).fetchone()
    db.close()
    return None if row is None else tuple(row)


async def test_expiry_then_the_sweeper_deletes_everything(tmp_path: Path) -> None:
    settings = {"max_expiry": 600.0, "default_expiry": 60.0, "tombstone_ttl": 1000.0}
    async with relay_env(tmp_path, **settings) as env:
        kdf = {"salt": base64.b64encode(os.urandom(16)).decode(), "ops": 3, "mem": 64 * MiB}
        drop = await make_drop(env, os.urandom(MiB), expires_in=10 * 86_400, kdf=kdf)
        assert drop.created.expires_at == env.clock.now + 600  # clamped
        claim = await env.client.claim(drop.id, drop.auth)
        env.clock.advance(300)
        keep = await make_drop(env, b"lives longer", expires_in=600)
        env.clock.advance(299)
        assert (await env.client.meta(drop.id)).state == "available"  # its last second
        env.clock.advance(1)
        await fails(env.client.meta(drop.id), "expired", 410)
        await fails(env.client.claim(drop.id, drop.auth), "expired", 410)
        await fails(fetch(env.client, drop.id, drop.auth, claim), "expired", 410)
        await fails(env.client.status(drop.id, drop.owner), "expired", 410)
        assert drop.blob_path(env).exists() and db_rows(env, drop.id) == (1, 3)
        assert await env.relay.sweep() == 1
        # blob, metadata and log are gone; a tombstone (id, state, expiry) says "expired"
        assert not drop.blob_path(env).exists()
        assert db_rows(env, drop.id) == (1, 0)
        expires_at = drop.created.expires_at
        assert db_row(env, drop.id) == ("expired", 0, 0, expires_at, 0, 0, 0, "", "", None, "[]")
        await fails(env.client.meta(drop.id), "expired", 410)
        await fails(env.client.claim(drop.id, drop.auth), "expired", 410)
        assert (await env.client.meta(keep.id)).state == "available"
        assert keep.blob_path(env).exists()
        assert await env.relay.sweep() == 0
        env.clock.advance(300)
        assert await env.relay.sweep() == 1  # keep expires
        assert not keep.blob_path(env).exists()
        env.clock.advance(1000)
        assert await env.relay.sweep() == 2  # both tombstones go
        assert db_rows(env, drop.id) == db_rows(env, keep.id) == (0, 0)
        await fails(env.client.meta(drop.id), "unknown", 404)
        with sqlite3.connect(env.db) as db:
            assert db.execute("SELECT COUNT(*) FROM drops").fetchone() == (0,)
            assert db.execute("SELECT COUNT(*) FROM access_log").fetchone() == (0,)
        db.close()
        assert [p for p in (env.data_dir / "blobs").rglob("*") if p.is_file()] == []


async def test_the_periodic_sweeper_runs(tmp_path: Path) -> None:
    async with relay_env(
        tmp_path, sweep_interval=0.05, default_expiry=60.0, tombstone_ttl=10.0
    ) as env:
        drop = await make_drop(env, b"x" * 100)
        unsealed = await make_drop(env, seal=False, size=100)
        await asyncio.sleep(0.15)
        assert drop.blob_path(env).exists()
        env.clock.advance(60)
        await until(lambda: not drop.blob_path(env).exists())
        await until(lambda: not unsealed.blob_path(env).exists())
        await until(lambda: db_rows(env, drop.id) == (1, 0))
        env.clock.advance(10)
        await until(lambda: db_rows(env, drop.id) == (0, 0))
        await until(lambda: db_rows(env, unsealed.id) == (0, 0))


async def test_the_sweeper_deletes_orphan_blobs(env: Env) -> None:
    drop = await make_drop(env, b"x" * 100)
    orphan = env.data_dir / "blobs" / "ab" / ("ab" + "00" * 15)
    orphan.parent.mkdir(mode=0o700, exist_ok=True)
    orphan.write_bytes(b"left behind by a crash")
    stray = env.data_dir / "blobs" / "ab" / "not-a-blob.txt"
    stray.write_bytes(b"")
    assert await env.relay.sweep() == 0
    assert not orphan.exists()
    assert stray.exists()  # not ours: untouched
    assert drop.blob_path(env).exists()


# -- the owner -----------------------------------------------------------------------------------


async def test_owner_status_log_and_delete(env: Env) -> None:
    drop = await make_drop(env, b"x" * 1000)
    async with aiohttp.ClientSession() as raw:
        for method, path in (
            ("GET", "status"),
            ("GET", "log"),
            ("GET", "upload"),
            ("POST", "seal"),
            ("DELETE", ""),
        ):
            url = f"{env.url}/v1/drops/{drop.id}/{path}".rstrip("/")
            async with raw.request(method, url) as response:
                assert (response.status, (await response.json())["code"]) == (401, "owner")
    wrong = os.urandom(32)
    await fails(env.client.status(drop.id, wrong), "owner", 403)
    await fails(env.client.log(drop.id, wrong), "owner", 403)
    await fails(env.client.delete(drop.id, wrong), "owner", 403)
    await fails(env.client.upload_offset(drop.id, wrong), "owner", 403)
    await fails(env.client.upload(drop.id, wrong, 0, chunks(b"x")), "owner", 403)
    assert db_rows(env, drop.id) == (1, 2)
    await env.client.delete(drop.id, drop.owner)
    assert not drop.blob_path(env).exists()
    assert db_rows(env, drop.id) == (1, 0)  # a tombstone row, no log
    assert db_row(env, drop.id) == (
        "deleted",
        0,
        0,
        drop.created.expires_at,
        0,
        0,
        0,
        "",
        "",
        None,
        "[]",
    )
    await fails(env.client.meta(drop.id), "deleted", 410)
    await fails(env.client.status(drop.id, drop.owner), "deleted", 410)
    await fails(env.client.claim(drop.id, drop.auth), "deleted", 410)
    env.clock.advance(7 * 86_400)  # the original expiry
    assert await env.relay.sweep() == 1
    await fails(env.client.meta(drop.id), "expired", 410)
    env.clock.advance(30 * 86_400)
    assert await env.relay.sweep() == 1
    assert db_rows(env, drop.id) == (0, 0)
    await fails(env.client.meta(drop.id), "unknown", 404)


# -- limits, errors, logs ------------------------------------------------------------------------


async def test_creates_are_rate_limited(tmp_path: Path) -> None:
    async with relay_env(tmp_path, creates_per_minute=2) as env:
        await make_drop(env, b"1")
        await make_drop(env, b"2")
        error = await fails(make_drop(env, b"3"), "rate-limited", 429)
        assert "wait" in error.detail
        env.clock.advance(60)
        await make_drop(env, b"4")


async def test_errors_are_json_on_the_shared_origin(env: Env) -> None:
    async with aiohttp.ClientSession() as raw:

        async def call(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
            async with raw.request(method, env.url + path, **kwargs) as response:
                body = await response.read()
                kind = response.headers["Content-Type"]
                return response.status, json.loads(body) if "json" in kind else body

        status, body = await call("GET", "/v1/drops/AAAAAAAAAAAAAAAAAAAAAA")
        assert (status, body) == (
            404,
            {"v": 1, "type": "error", "code": "unknown", "detail": "There is no such drop."},
        )
        assert (await call("GET", "/v1/drops/..%2F..%2Fetc"))[1]["code"] == "unknown"
        assert (await call("GET", "/v1/drops/short"))[1]["code"] == "unknown"
        assert (await call("PATCH", "/v1/drops/AAAAAAAAAAAAAAAAAAAAAA"))[1]["code"] == "method"
        assert (await call("GET", "/v1/drops"))[0] == 405
        assert (await call("GET", "/v1/drops/x/y/z"))[1]["code"] == "not-found"
        status, body = await call("POST", "/v1/drops", data=b"{not json")
        assert (status, body["code"]) == (400, "malformed")
        status, body = await call("POST", "/v1/drops", json={"size": 1})
        assert (status, body["detail"]) == (
            400,
            "'max_downloads' must be an integer from 1 to 10000.",
        )
        status, body = await call("POST", "/v1/drops", data=b" " * 20000)
        assert (status, body["code"]) == (413, "too-large")
        # the signaling side of the origin is unchanged
        status, body = await call("GET", "/v1/health")
        assert (status, body["service"]) == (200, "scanbeam")
        assert await call("GET", "/nothing") == (404, b"Not found.\n")


async def test_internal_errors_are_json_and_logged_without_secrets(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    drop = await make_drop(env, b"x")

    async def broken(drop_id: str) -> None:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(env.relay.meta, "get", broken)
    caplog.set_level(logging.INFO, logger="scanbeam.relay")
    error = await fails(env.client.status(drop.id, drop.owner), "internal", 500)
    assert error.detail == "The relay failed; try again later."
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == "relay: internal error in status (RuntimeError)"
    assert record.exc_info is not None
    assert b64(drop.owner) not in caplog.text


async def test_unreachable_and_bad_ids() -> None:
    async with RelayClient("http://127.0.0.1:9") as client:
        await fails(client.meta("AAAAAAAAAAAAAAAAAAAAAA"), "unreachable", 0)
        await fails(client.meta("../etc/passwd"), "bad-id", 0)
    with pytest.raises(RelayError) as info:
        RelayClient("ftp://example.org")
    assert info.value.code == "bad-url"


async def test_no_secret_reaches_the_database_or_the_logs(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    drop = await make_drop(env, os.urandom(1000), max_downloads=2)
    claim = await env.client.claim(drop.id, drop.auth)
    await fetch(env.client, drop.id, drop.auth, claim)
    await env.client.complete(drop.id, drop.auth, claim)
    claim2 = await env.client.claim(drop.id, drop.auth)
    await fails(env.client.claim(drop.id, os.urandom(32)), "auth", 403)
    await env.client.status(drop.id, drop.owner)
    secrets = [drop.auth, drop.owner, base64.urlsafe_b64decode(claim2 + "=")]
    needles = [*secrets, *(b64(s).encode() for s in secrets), claim.encode()]
    stored = b"".join(p.read_bytes() for p in env.data_dir.glob("relay.sqlite3*"))
    assert stored
    for needle in needles:
        assert needle not in stored
    # what is stored: digests only
    assert hashlib.sha256(drop.auth).hexdigest().encode() in stored
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    for needle in needles:
        assert needle.decode(errors="replace") not in text


def test_drop_ids_never_start_with_a_dash() -> None:
    """An id is pasted after `scanbeam drops log`: a leading "-" would read as an option."""
    from relay.app import new_drop_id

    ids = [new_drop_id() for _ in range(4000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
