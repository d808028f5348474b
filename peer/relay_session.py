"""Relay transfers: upload a study as an encrypted drop, download a drop from its link.

The drop format is ``peer.proto.drop`` (docs/protocol.md §9); the HTTP API is
``relay.client``. Uploads resume at the server's offset by regenerating the (deterministic)
stream and skipping what the server has; downloads resume from the receiver's verified
chunks with HTTP Range requests. Both survive a killed process: run the same command again.
"""

from __future__ import annotations

import asyncio
import base64
import getpass
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from peer import warm
from peer.errors import (
    BeamError,
    ConnectionFailed,
    IntegrityError,
    LocalFileError,
    PairingError,
    ServerUnreachable,
    UnknownCodeError,
)
from peer.files import Checkpoints, Destination, SourceFile, SourceReader, collect_sources
from peer.proto import receiver as rx
from peer.proto.drop import RELAY_CHUNK_SIZE, DropReader, DropWriter
from peer.proto.keys import DEFAULT_MEM, DEFAULT_OPS, SALT_SIZE, RelayKeys, password_key
from peer.proto.manifest import FileEntry, Manifest, decode_manifest, encode_manifest
from peer.settings import Settings
from peer.state import Disclosure, DropRecord, LocalState, digest_of, study_uids
from relay.client import DropInfo, RelayClient, RelayError

__all__ = [
    "DropTarget",
    "LinkReady",
    "Retrying",
    "download",
    "parse_drop_link",
    "upload",
]

TRAILER = 20
UPLOAD_BLOCK = 1 << 20
UPLOAD_RETRIES = 5
DOWNLOAD_RETRIES = 3


@dataclass(frozen=True, slots=True)
class LinkReady:
    """The drop is uploaded and sealed: share ``url`` (it holds the key in its fragment)."""

    url: str
    id: str
    expires: float
    max_downloads: int
    password: bool
    resumed_bytes: int = 0  # blob bytes the server already had (an interrupted upload)
    seconds: float = 0.0  # upload time


@dataclass(frozen=True, slots=True)
class Retrying:
    """The relay connection dropped; the download continues from its verified chunks."""

    attempt: int
    of: int
    reason: str


@dataclass(frozen=True, slots=True)
class DropTarget:
    server: str
    id: str
    secret: bytes


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_drop_link(text: str) -> DropTarget | None:
    """``<server>/d/<id>#<secret>`` → DropTarget, or None if it is not a drop link."""
    text = text.strip()
    if "://" not in text or "#" not in text:
        return None
    base, _, frag = text.partition("#")
    parts = urlsplit(base)
    head, sep, drop_id = parts.path.rpartition("/d/")
    if not sep or parts.scheme not in ("http", "https") or len(drop_id) != 22:
        return None
    try:
        secret = _b64d(frag)
    except ValueError:
        return None
    if len(secret) != 32:
        return None
    return DropTarget(f"{parts.scheme}://{parts.netloc}{head}", drop_id, secret)


def _relay_error(exc: RelayError, server: str) -> BeamError:
    code = exc.code
    if code == "unreachable":
        return ServerUnreachable.at(server, str(exc))
    if code == "unknown":
        return UnknownCodeError(
            "unknown drop", user_message="This link is unknown: it may be mistyped or deleted."
        )
    messages = {
        "expired": "This link has expired; ask the sender to send the study again.",
        "used-up": "This link was already used the maximum number of times.",
        "deleted": "The sender deleted this link.",
        "locked": "This link is locked after too many wrong passwords; ask the sender.",
        "busy": "Another download of this link is in progress and it has no downloads left; "
        "try again later.",
        "too-large": "The server refused the upload: the study is larger than it accepts.",
        "rate-limited": "The server is rate-limiting requests; try again in a minute.",
    }
    if code in messages:
        return PairingError(code, user_message=messages[code])
    return ConnectionFailed(
        f"relay error {code} ({exc.status}): {exc.detail}",
        user_message=f"The ScanBeam relay refused the request ({code}).",
    )


# --- upload -------------------------------------------------------------------------------


def _same_sources(record: DropRecord, sources: Sequence[SourceFile]) -> bool:
    try:
        manifest = decode_manifest(bytes.fromhex(record.manifest))
    except (BeamError, ValueError):
        return False
    return [(f.path, f.size, f.mtime_ns) for f in manifest.files] == [
        (s.rel, s.size, s.manifest_mtime_ns) for s in sources
    ]


async def upload(
    settings: Settings,
    paths: Sequence[Path],
    on_event: Callable[[Any], None],
    *,
    expires_in: float,
    max_downloads: int,
    password: str | None,
    sources: Sequence[SourceFile] | None = None,
    summary: dict[str, Any] | None = None,
    deid: str = "",
    remap: Callable[[str], str] | None = None,
) -> LinkReady:
    """Upload ``paths`` as a drop (or finish an interrupted upload of the same files)."""
    from peer.session import _Progress

    started = time.monotonic()
    sources = list(sources) if sources is not None else collect_sources(paths)
    state = LocalState(settings.home)
    record = next(
        (
            d
            for d in reversed(state.drops())
            if not d.uploaded
            and d.server == settings.server
            and d.expires > time.time()
            and _same_sources(d, sources)
        ),
        None,
    )
    async with RelayClient(settings.server) as client:
        try:
            if record is None:
                record = await _create(
                    client, settings, sources, expires_in, max_downloads, password, summary, remap
                )
                state.save_drop(record)
            manifest = decode_manifest(bytes.fromhex(record.manifest))
            keys = _keys_for(record)
            owner = _b64d(record.owner_token)
            progress = _Progress(on_event, manifest.total_bytes)
            resumed = (await client.upload_offset(record.id, owner)).offset
            length = await _upload_with_retries(
                client, record, manifest, keys, owner, sources, progress
            )
            await client.seal(record.id, owner, length)
        except RelayError as exc:
            raise _relay_error(exc, settings.server) from None
    progress.add(0, force=True)
    record.uploaded = True
    state.save_drop(record)
    digests = record.extra.get("digests", [])
    state.record(
        Disclosure(
            time=time.time(),
            how="relay",
            to=f"link {record.id}",
            outcome="uploaded",
            files=len(manifest.files),
            bytes=manifest.total_bytes,
            study_uids=study_uids(manifest.summary),
            sha256_list_digest=digest_of(digests) if digests else "",
            expires=record.expires,
            server=settings.server,
            deidentified=deid,
        )
    )
    return LinkReady(
        url=record.link(),
        id=record.id,
        expires=record.expires,
        max_downloads=record.max_downloads,
        password=record.password is not None,
        resumed_bytes=resumed,
        seconds=time.monotonic() - started,
    )


def _keys_for(record: DropRecord) -> RelayKeys:
    pw = bytes.fromhex(record.password["key"]) if record.password else None
    return RelayKeys.derive(_b64d(record.link_secret), pw)


async def _create(
    client: RelayClient,
    settings: Settings,
    sources: Sequence[SourceFile],
    expires_in: float,
    max_downloads: int,
    password: str | None,
    summary: dict[str, Any] | None,
    remap: Callable[[str], str] | None,
) -> DropRecord:
    await warm.ready("pydicom")
    from peer.dicom.summary import summarize

    if summary is None:
        summary = summarize((s.rel, s.path) for s in sources)
    from peer.session import build_previews

    previews = await asyncio.to_thread(build_previews, sources, settings, remap)
    manifest = Manifest(
        files=tuple(
            FileEntry(s.rel, s.size, s.manifest_mtime_ns, secrets.token_bytes(16)) for s in sources
        ),
        chunk_size=RELAY_CHUNK_SIZE,
        summary=summary,
        previews=previews,
    )
    encoded = encode_manifest(manifest)
    link_secret = secrets.token_bytes(32)
    kdf_params: dict[str, Any] | None = None
    pw_key: bytes | None = None
    if password is not None:
        salt = secrets.token_bytes(SALT_SIZE)
        loop = asyncio.get_running_loop()
        pw_key = await loop.run_in_executor(
            None, password_key, password, salt, DEFAULT_OPS, DEFAULT_MEM
        )
        kdf_params = {
            "salt": base64.b64encode(salt).decode(),
            "ops": DEFAULT_OPS,
            "mem": DEFAULT_MEM,
        }
    keys = RelayKeys.derive(link_secret, pw_key)
    owner = secrets.token_bytes(32)
    created = await client.create(
        size=DropWriter(keys, manifest).max_blob_size,
        auth=keys.auth,
        owner=owner,
        expires_in=expires_in,
        max_downloads=max_downloads,
        kdf=kdf_params,
    )
    return DropRecord(
        id=created.id,
        server=settings.server,
        owner_token=_b64e(owner),
        link_secret=_b64e(link_secret),
        password=None
        if kdf_params is None
        else {**kdf_params, "key": pw_key.hex() if pw_key else ""},
        created=time.time(),
        expires=created.expires_at,
        max_downloads=max_downloads,
        files=len(manifest.files),
        bytes=manifest.total_bytes,
        sources=[str(s.path) for s in sources],
        manifest=encoded.hex(),
    )


async def _upload_with_retries(
    client: RelayClient,
    record: DropRecord,
    manifest: Manifest,
    keys: RelayKeys,
    owner: bytes,
    sources: Sequence[SourceFile],
    progress: Any,
) -> int:
    delay = 0.5
    for attempt in range(UPLOAD_RETRIES):
        offset = (await client.upload_offset(record.id, owner)).offset
        writer = DropWriter(keys, manifest)
        total = {"n": 0}
        try:
            body = _stream(writer, sources, offset, total, progress, record)
            length = await client.upload(record.id, owner, offset, body)
            return length
        except RelayError as exc:
            if (
                exc.code not in ("unreachable", "disconnected", "offset")
                or attempt == UPLOAD_RETRIES - 1
            ):
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


async def _stream(
    writer: DropWriter,
    sources: Sequence[SourceFile],
    skip: int,
    total: dict[str, int],
    progress: Any,
    record: DropRecord,
) -> AsyncIterator[bytes]:
    """The blob from byte ``skip`` on, in ~1 MiB blocks (reads files off the event loop)."""
    loop = asyncio.get_running_loop()
    reader = SourceReader(sources, block=4 << 20)
    pos = 0
    pending: list[bytes] = []
    size = 0
    digests: list[str] = []

    def out(data: bytes) -> bytes | None:
        nonlocal pos
        start = pos
        pos += len(data)
        if pos <= skip:
            return None
        return data if start >= skip else data[skip - start :]

    try:
        first = out(writer.header())
        if first:
            pending.append(first)
            size += len(first)
        while (req := writer.next_read()) is not None:
            data = reader.cached(req.file_ix, req.offset, req.length)
            if data is None:
                data = await loop.run_in_executor(
                    None, reader.read, req.file_ix, req.offset, req.length
                )
            framed = writer.feed(req, data)
            if req.length and pos + len(framed) > skip:
                progress.add(req.length)
            elif pos + len(framed) <= skip:
                progress.bytes += req.length  # already on the server
            chunk = out(framed)
            if chunk:
                pending.append(chunk)
                size += len(chunk)
            if size >= UPLOAD_BLOCK:
                yield b"".join(pending)
                pending, size = [], 0
        tail = out(writer.finish())
        if tail:
            pending.append(tail)
        if pending:
            yield b"".join(pending)
        digests = list(writer.digests)
        record.extra["digests"] = digests
    finally:
        reader.close()


# --- download -----------------------------------------------------------------------------


PasswordPrompt = Callable[[], Awaitable[str]]


async def download(
    settings: Settings,
    target: DropTarget,
    root: Path,
    on_event: Callable[[Any], None],
    decide: Callable[[Any], Awaitable[bool]],
    password: PasswordPrompt,
) -> Any:
    """Download, decrypt and verify a drop into ``root``; count it with the server."""
    from peer.session import Done, Offer, _Progress, check_completeness

    started = time.monotonic()
    loop = asyncio.get_running_loop()
    async with RelayClient(target.server) as client:
        try:
            meta = await client.meta(target.id)
            pw_key = None
            if meta.kdf:
                kdf = meta.kdf
                pw = await password()
                pw_key = await loop.run_in_executor(
                    None,
                    password_key,
                    pw,
                    base64.b64decode(kdf["salt"]),
                    int(kdf["ops"]),
                    int(kdf["mem"]),
                )
            keys = RelayKeys.derive(target.secret, pw_key)
            auth = keys.auth
            reader = DropReader(keys)
            blob_size = meta.size
            state = LocalState(settings.home)
            claim = state.load_claim(target.id)
            tail = b""
            if claim is not None:  # resuming: our earlier claim may still hold a download
                try:
                    tail = await _fetch(
                        client, target.id, auth, claim, blob_size - TRAILER, blob_size
                    )
                except RelayError:
                    claim = None
            if claim is None:
                claim = await _claim(client, target, keys, meta)
                state.save_claim(target.id, claim)
                tail = await _fetch(client, target.id, auth, claim, blob_size - TRAILER, blob_size)
            index_offset, index_length = reader.parse_trailer(tail, blob_size=blob_size)
            _check(reader)
            index = await _fetch(
                client, target.id, auth, claim, index_offset, index_offset + index_length
            )
            reader.read_index(index)
            _check(reader)
            head_end = reader.manifest_end
            head = await _fetch(client, target.id, auth, claim, 8, head_end)
            manifest = reader.read_manifest(head)
            _check(reader)
            assert manifest is not None
            dest = Destination(root, manifest)
            resume, hashes, held = await loop.run_in_executor(None, dest.preflight)
            offer = Offer(
                files=len(manifest.files),
                bytes=manifest.total_bytes,
                held=held,
                summary=dict(manifest.summary),
                paths=tuple(f.path for f in manifest.files),
                dest=root,
                previews=manifest.previews,
            )
            on_event(offer)
            if not await decide(offer):
                from peer.errors import DeclinedError

                raise DeclinedError("declined", user_message="You declined the download.")
            progress = _Progress(on_event, manifest.total_bytes, held)
            attempt = 0
            while True:
                ckpts = Checkpoints(dest)
                try:
                    await _download_files(
                        client,
                        target,
                        auth,
                        claim,
                        reader,
                        ckpts,
                        manifest,
                        resume,
                        hashes,
                        progress,
                    )
                    await ckpts.drain()
                    await loop.run_in_executor(None, dest.place_all)
                    break
                except RelayError as exc:
                    # a dropped connection or a lapsed claim: keep what was verified and
                    # continue from there (bounded), instead of failing the whole download
                    await ckpts.save()
                    attempt += 1
                    if exc.code not in ("unreachable", "claim") or attempt > DOWNLOAD_RETRIES:
                        raise
                    on_event(Retrying(attempt, DOWNLOAD_RETRIES, exc.code))
                    await asyncio.sleep(min(0.5 * 2**attempt, 5.0))
                    if exc.code == "claim":
                        claim = await _claim(client, target, keys, meta)
                        state.save_claim(target.id, claim)
                    dest = Destination(root, manifest)
                    resume, hashes, _ = await loop.run_in_executor(None, dest.preflight)
                    progress.bytes = sum(
                        min(f.size, k * manifest.chunk_size)
                        for k, f in zip(resume, manifest.files, strict=True)
                    )
                except BaseException:
                    await ckpts.save()
                    raise
            await _complete(client, target.id, auth, claim)
            state.forget_claim(target.id)
        except RelayError as exc:
            raise _relay_error(exc, target.server) from None
    progress.add(0, force=True)
    seconds = time.monotonic() - started  # the download, not the check below
    completeness = await check_completeness(manifest, root)
    done = Done(
        via="relay",
        files=len(manifest.files),
        bytes=manifest.total_bytes,
        seconds=seconds,
        sent_bytes=manifest.total_bytes - held,
        dest=root,
        completeness=completeness,
    )
    on_event(done)
    return done


async def _complete(client: RelayClient, drop_id: str, auth: bytes, claim: str) -> None:
    """Count the (verified, placed) download. Retried when the connection drops; a
    ``claim`` answer to a retry means an earlier attempt was counted but its answer lost."""
    for attempt in range(DOWNLOAD_RETRIES + 1):
        try:
            await client.complete(drop_id, auth, claim)
            return
        except RelayError as exc:
            if exc.code == "claim" and attempt > 0:
                return
            if exc.code != "unreachable" or attempt == DOWNLOAD_RETRIES:
                raise
        await asyncio.sleep(0.5 * 2**attempt)


async def _claim(client: RelayClient, target: DropTarget, keys: RelayKeys, meta: DropInfo) -> str:
    try:
        return await client.claim(target.id, keys.auth)
    except RelayError as exc:
        if exc.code == "auth":
            if meta.kdf:
                raise PairingError(
                    "wrong password",
                    user_message="The password is wrong (or the link is damaged). "
                    "Too many wrong attempts lock the link.",
                ) from None
            raise PairingError(
                "wrong link", user_message="This link's key is wrong: it may be truncated."
            ) from None
        raise


def _check(reader: DropReader) -> None:
    for ev in reader.events_received():
        if isinstance(ev, rx.Failed):
            raise ev.error
    if reader.error is not None:
        raise reader.error


async def _fetch(
    client: RelayClient, drop_id: str, auth: bytes, claim: str, start: int, end: int
) -> bytes:
    parts = []
    async for block in client.download(drop_id, auth, claim, start, end):
        parts.append(block)
    data = b"".join(parts)
    if len(data) != end - start:
        raise IntegrityError(
            "short read", user_message="The relay returned a truncated download; try again."
        )
    return data


async def _download_files(
    client: RelayClient,
    target: DropTarget,
    auth: bytes,
    claim: str,
    reader: DropReader,
    ckpts: Checkpoints,
    manifest: Manifest,
    resume: list[int],
    hashes: list[Any],
    progress: Any,
) -> None:
    dest = ckpts.dest
    cs = manifest.chunk_size
    todo = [i for i, f in enumerate(manifest.files) if resume[i] < f.n_chunks(cs)]
    for i in range(len(manifest.files)):
        if i not in todo:
            dest.file_verified(i)
    if not todo:
        return
    # one Range request from the first missing chunk to the end of the last file
    first = todo[0]
    start, _ = reader.file_range(first, resume[first])
    _, end = reader.file_range(todo[-1], resume[todo[-1]])
    bounds = {i: reader.file_range(i, resume[i]) for i in todo}
    cur = -1
    pos = start
    async for block in client.download(target.id, auth, claim, start, end):
        view = memoryview(block)
        while view:
            if cur < 0 or pos >= bounds[cur][1]:
                nxt = next(i for i in todo if bounds[i][0] <= pos < bounds[i][1])
                cur = nxt
                reader.start_file(cur, resume[cur], hashes[cur])
            take = min(len(view), bounds[cur][1] - pos)
            reader.feed(bytes(view[:take]))
            pos += take
            view = view[take:]
            for ev in reader.events_received():
                if isinstance(ev, rx.ChunkReceived):
                    dest.write(ev.file_ix, ev.offset, ev.data)
                    progress.add(len(ev.data))
                elif isinstance(ev, rx.FileVerified):
                    dest.file_verified(ev.file_ix)
                elif isinstance(ev, rx.Failed):
                    raise ev.error
            await ckpts.maybe()
    if pos != end:
        raise IntegrityError(
            "short download", user_message="The download stopped early; run the same command again."
        )


async def prompt_password(path: Path | None, confirm: bool) -> str:
    """The password from a file (first line) or typed without echo."""
    if path is not None:
        try:
            text = (await asyncio.to_thread(path.read_text, encoding="utf-8")).splitlines()
        except OSError as exc:
            raise LocalFileError(
                str(exc), user_message=f"Cannot read the password file: {exc.strerror or exc}."
            ) from None
        if not text or not text[0]:
            raise LocalFileError("empty", user_message="The password file is empty.")
        return text[0]
    import sys

    if not sys.stdin.isatty():
        raise PairingError("no tty", user_message="A password is needed: use --password-file FILE.")
    loop = asyncio.get_running_loop()
    pw = await loop.run_in_executor(None, getpass.getpass, "Password: ")
    if confirm:
        again = await loop.run_in_executor(None, getpass.getpass, "Repeat password: ")
        if again != pw:
            raise PairingError("mismatch", user_message="The two passwords differ.")
    if not pw:
        raise PairingError("empty", user_message="The password is empty.")
    return pw


# --- owner commands -----------------------------------------------------------------------


def _owned(settings: Settings, drop_id: str) -> DropRecord:
    record = LocalState(settings.home).load_drop(drop_id)
    if record is None:
        raise LocalFileError(
            "no such drop",
            user_message=f"No relay link {drop_id!r} in your local state "
            f"({settings.home}); see scanbeam drops.",
        )
    return record


async def drop_statuses(settings: Settings) -> list[dict[str, Any]]:
    """Status of every drop this sender made (asks each drop's server)."""
    rows = []
    for d in LocalState(settings.home).drops():
        row: dict[str, Any] = {
            "id": d.id,
            "server": d.server,
            "files": d.files,
            "bytes": d.bytes,
            "expires": d.expires,
            "max_downloads": d.max_downloads,
            "downloads": 0,
            "state": "uploading" if not d.uploaded else "available",
        }
        async with RelayClient(d.server) as client:
            try:
                st = await client.status(d.id, _b64d(d.owner_token))
                row.update(
                    state="locked" if st.locked else st.state,
                    downloads=st.downloads,
                    max_downloads=st.max_downloads,
                    expires=st.expires_at,
                )
            except RelayError as exc:
                row["state"] = exc.code if exc.code != "unreachable" else "unreachable"
        rows.append(row)
    return rows


async def drop_log(settings: Settings, drop_id: str) -> list[dict[str, Any]]:
    d = _owned(settings, drop_id)
    async with RelayClient(d.server) as client:
        try:
            events = await client.log(d.id, _b64d(d.owner_token))
            return [{"time": e.time, "event": e.event, "address": e.address} for e in events]
        except RelayError as exc:
            raise _relay_error(exc, d.server) from None


async def drop_delete(settings: Settings, drop_id: str) -> None:
    d = _owned(settings, drop_id)
    async with RelayClient(d.server) as client:
        try:
            await client.delete(d.id, _b64d(d.owner_token))
        except RelayError as exc:
            if exc.code not in ("expired", "used-up", "deleted", "unknown"):
                raise _relay_error(exc, d.server) from None
    d.extra["deleted"] = time.time()
    LocalState(settings.home).save_drop(d)  # kept: its access log stays readable until expiry
