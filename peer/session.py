"""The session facade: pair through signaling, open the direct path, run the transfer.

This is the public API the CLI and the TUI drive. Each call reports progress through an
``on_event`` callback with the frozen event classes below and returns the final ``Done``
or raises a :class:`peer.errors.BeamError` whose ``user_message`` is for the user.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import importlib
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from peer import warm
from peer.compression import CompressionChoice
from peer.dicom.text import format_summary
from peer.errors import (
    BeamError,
    CancelledByUser,
    ConnectionFailed,
    DeclinedError,
    LocalProtocolError,
    NoPathError,
    NoReceiver,
    PairingError,
    PeerGone,
    RemoteProtocolError,
    ServerUnreachable,
    TransferTimeout,
    UnknownCodeError,
    WrongCodeError,
)
from peer.files import Checkpoints, Destination, SourceFile, SourceReader, collect_sources
from peer.lanes import (
    DcLane,
    ReceiverLanes,
    SenderLanes,
    TcpLanes,
    connect_pipe,
)
from peer.proto import receiver as rx
from peer.proto import sender as tx
from peer.proto.handshake import EnvelopeReceived, Handshake, HandshakeFailed, Paired, Role
from peer.proto.manifest import FileEntry, Manifest, SeriesPreview
from peer.proto.paths import lane_key, pipe_id, rendezvous_id, round_master
from peer.proto.wordlist import EVEN, ODD
from peer.relay_session import (
    LinkReady,
    PasswordPrompt,
    Retrying,
    download,
    drop_delete,
    drop_log,
    drop_statuses,
    parse_drop_link,
    upload,
)
from peer.rtc import RtcLink, handed_servers, ice_servers
from peer.settings import Settings
from peer.state import Disclosure, LocalState, digest_of, study_uids
from peer.units import human_bytes, human_duration, human_rate
from signaling.client import SignalingClient, SignalingError
from signaling.ice import IceServer

log = logging.getLogger("scanbeam.session")

if TYPE_CHECKING:
    from peer.dicom.complete import format_completeness
    from peer.dicom.deid.stream import Prepared
    from peer.dicom.summary import Slice, summarize

__all__ = [
    "BeamError",
    "CodeReady",
    "Connected",
    "DeclinedError",
    "Done",
    "Event",
    "LinkReady",
    "LocalState",
    "Offer",
    "Paired_",
    "PathMoved",
    "Progress",
    "Reconnecting",
    "RelayFallback",
    "Retrying",
    "SeriesPreview",
    "Settings",
    "SourceFile",
    "Target",
    "collect_sources",
    "drop_delete",
    "drop_log",
    "drop_statuses",
    "format_completeness",
    "format_summary",
    "human_bytes",
    "human_duration",
    "human_rate",
    "parse_drop_link",
    "parse_target",
    "receive",
    "receive_any",
    "send",
    "send_or_relay",
    "summarize",
]

_FROM_DICOM = {  # re-exported names, loaded on first use (pydicom only for a DICOM file)
    "format_completeness": "peer.dicom.complete",
    "summarize": "peer.dicom.summary",
}


def __getattr__(name: str) -> Any:
    module = _FROM_DICOM.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


@dataclass(frozen=True, slots=True)
class CodeReady:
    """The sender's code and QR link are ready to be shown."""

    code: str
    url: str


@dataclass(frozen=True, slots=True)
class Paired_:
    """Both sides proved they hold the same code (or link secret)."""

    mode: str


@dataclass(frozen=True, slots=True)
class Connected:
    """The data channel is open; ``via`` is "direct" or "turn"."""

    via: str


@dataclass(frozen=True, slots=True)
class Offer:
    """What the sender offers (receiver side), before accepting."""

    files: int
    bytes: int
    held: int
    summary: dict[str, Any]
    paths: tuple[str, ...]
    dest: Path
    previews: tuple[SeriesPreview, ...] = ()  # thumbnails by series UID (display only)


@dataclass(frozen=True, slots=True)
class Progress:
    bytes: int
    total: int
    rate: float  # bytes/s over the last few seconds
    via: str = ""  # the path carrying the data now: direct, turn, tcp, pipe (or "relay")


@dataclass(frozen=True, slots=True)
class Done:
    via: str
    files: int
    bytes: int
    seconds: float
    sent_bytes: int = 0  # bytes that crossed the channel this run (excludes resumed data)
    dest: Path | None = None
    digests: tuple[str, ...] = field(default=())
    # receiver: `peer.dicom.complete.Completeness.to_dict()` of the placed files, or None
    completeness: dict[str, Any] | None = None
    # protocol v2: bytes (sealed records) per path, in first-use order, over every round
    paths: tuple[tuple[str, int], ...] = ()
    rounds: int = 0  # reconnections that were needed (protocol v2 §10.3)


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The connection dropped; reconnecting through the server under the same pairing."""

    attempt: int
    reason: str
    until: float  # seconds left before giving up


@dataclass(frozen=True, slots=True)
class PathMoved:
    """The rest of the transfer moved to a faster path (protocol v2 §10.4)."""

    old: str
    new: str


@dataclass(frozen=True, slots=True)
class RelayFallback:
    """The sender gives up on the direct path and uploads to the relay; ``reason`` is for
    people (empty when the relay was asked for at once)."""

    reason: str


Event = (
    CodeReady
    | Paired_
    | Connected
    | Offer
    | Progress
    | Done
    | RelayFallback
    | LinkReady
    | Reconnecting
    | PathMoved
)
OnEvent = Callable[[Event], None]

_CODE_RE = re.compile(r"^(\d{1,8})-([a-z]+)-([a-z]+)$")
_SIGNAL_CODES: dict[str, type[BeamError]] = {
    "unknown-nameplate": UnknownCodeError,
    "crowded": UnknownCodeError,
    "timeout": TransferTimeout,
}


@dataclass(frozen=True, slots=True)
class Target:
    """Where a receiver pairs: a server plus a code or a link secret."""

    server: str
    nameplate: str
    code: str | None = None
    link_secret: bytes | None = None


def parse_target(text: str, default_server: str) -> Target:
    """Parse a typed code (``12-word-word``) or a QR link (``<server>/r#12.<secret>``).

    Raises:
        UnknownCodeError: the text is not a ScanBeam code or link.
    """
    text = text.strip()
    if "#" in text and "://" in text:
        base, _, frag = text.partition("#")
        parts = urlsplit(base)
        nameplate, _, secret = frag.partition(".")
        if parts.scheme in ("http", "https") and parts.path.endswith("/r") and nameplate.isdigit():
            try:
                raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
            except ValueError:
                raw = b""
            if len(raw) == 32:
                server = f"{parts.scheme}://{parts.netloc}{parts.path[:-2]}"
                return Target(server=server, nameplate=nameplate, link_secret=raw)
        raise UnknownCodeError("bad link", user_message="This is not a valid ScanBeam link.")
    m = _CODE_RE.match(text.lower())
    if not m or m.group(2) not in EVEN or m.group(3) not in ODD:
        raise UnknownCodeError(
            "bad code",
            user_message="This is not a ScanBeam code: it looks like 12-word-word "
            "(a number and two words from the sender's screen).",
        )
    return Target(server=default_server, nameplate=m.group(1), code=text.lower())


def _signal_error(exc: SignalingError, server: str) -> BeamError:
    code = exc.code
    if code == "unreachable":
        return ServerUnreachable.at(server, str(exc))
    if code == "peer-closed:wrong-code":
        return WrongCodeError("peer reported a wrong code")
    if code == "expired":
        return PairingError(
            "expired", user_message="Nobody used the code before it expired. Start a new send."
        )
    if code == "crowded":
        return UnknownCodeError("crowded", user_message="This code is already in use by others.")
    if code in ("peer-gone", "disconnected") or code.startswith("peer-closed"):
        return PeerGone(code, user_message="The other side left before the transfer could start.")
    cls = _SIGNAL_CODES.get(code)
    if cls is not None:
        return cls(code)
    return ConnectionFailed(
        f"signaling error {code}: {exc}",
        user_message=f"The ScanBeam server refused the request ({code}).",
    )


ENVELOPES = frozenset({"offer", "answer", "lanes", "relay", "error"})  # the types we act on
MAX_QUEUED = 64  # envelopes waiting for the code that reads them (a few in practice)


class _Pairing:
    """Drives a Handshake over a SignalingClient and queues envelopes for the caller."""

    def __init__(self, client: SignalingClient, hs: Handshake, settings: Settings) -> None:
        self.client = client
        self.hs = hs
        self.settings = settings
        self.envelopes: list[dict[str, Any]] = []
        self.paired: Paired | None = None

    async def flush(self) -> None:
        for body in self.hs.data_to_send():
            await self.client.send(body)

    async def run(self) -> Paired:
        self.hs.start()
        await self.flush()
        while self.paired is None:
            await self._step()
        return self.paired

    async def _step(self) -> None:
        body = await self.client.recv(timeout=self.settings.pair_timeout)
        self.hs.receive(body)
        await self.flush()
        for ev in self.hs.events_received():
            if isinstance(ev, Paired):
                self.paired = ev
            elif isinstance(ev, EnvelopeReceived):
                if ev.message.get("type") in ENVELOPES:
                    if len(self.envelopes) >= MAX_QUEUED:
                        raise RemoteProtocolError("too many envelopes")
                    self.envelopes.append(ev.message)
                # other types are ignored (forward compatibility)
            elif isinstance(ev, HandshakeFailed):
                mood = "wrong-code" if isinstance(ev.error, WrongCodeError) else "error"
                with contextlib.suppress(SignalingError):
                    await self.client.close(mood)
                raise ev.error

    async def envelope(self, *kinds: str) -> dict[str, Any]:
        """The first envelope of one of ``kinds``; envelopes of the other known types stay
        queued in order (v2 peers send `lanes` and `offer`/`answer` in either order)."""
        while True:
            for i, msg in enumerate(self.envelopes):
                kind = msg.get("type")
                if kind == "error":
                    raise PeerGone("peer error", user_message="The other side stopped.")
                if kind in kinds:
                    return self.envelopes.pop(i)
            await self._step()

    def send(self, message: dict[str, Any]) -> None:
        self.hs.send(message)


class _Rate:
    def __init__(self, window: float = 3.0) -> None:
        self.window = window
        self.samples: list[tuple[float, int]] = []

    def add(self, now: float, total: int) -> float:
        self.samples.append((now, total))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.pop(0)
        t0, b0 = self.samples[0]
        return (total - b0) / (now - t0) if now > t0 else 0.0


class _Progress:
    def __init__(
        self, on_event: OnEvent, total: int, start: int = 0, via: Callable[[], str] | None = None
    ) -> None:
        self.on_event = on_event
        self.total = total
        self.bytes = start
        self.rate = _Rate()
        self.last = 0.0
        self.via = via

    def add(self, n: int, force: bool = False) -> None:
        self.bytes += n
        now = time.monotonic()
        if force or now - self.last >= 0.25:
            self.last = now
            via = self.via() if self.via is not None else ""
            self.on_event(Progress(self.bytes, self.total, self.rate.add(now, self.bytes), via))


def _make_code(nameplate: str) -> str:
    return f"{nameplate}-{secrets.choice(EVEN)}-{secrets.choice(ODD)}"


def _link_url(server: str, nameplate: str, secret: bytes) -> str:
    frag = base64.urlsafe_b64encode(secret).decode().rstrip("=")
    return f"{server.rstrip('/')}/r#{nameplate}.{frag}"


async def _connect(settings: Settings, server: str) -> SignalingClient:
    try:
        return await SignalingClient.connect(server, open_timeout=settings.open_timeout)
    except SignalingError as exc:
        raise _signal_error(exc, server) from None


HandOff = Callable[[], Awaitable["LinkReady"]]


async def send(
    settings: Settings,
    paths: Sequence[Path],
    on_event: OnEvent,
    *,
    code: str | None = None,
    on_no_path: HandOff | None = None,
    prepared: Prepared | None = None,
) -> Done:
    """Send files and folders to one receiver who joins with the printed code or link.

    ``on_no_path``: when the receiver paired but no direct connection opens, this is
    awaited (it uploads to the relay) and the link it returns is handed to the receiver in
    a sealed envelope (docs/protocol.md §4.2), so its download starts by itself; then
    NoPathError is raised as usual.

    ``prepared``: a de-identified selection (`peer.dicom.deid.prepare`): its sources
    (transforms of the originals) and its summary are sent instead of ``paths``.

    Raises:
        BeamError: any failure, with a user message.
    """
    if prepared is not None:
        sources = prepared.sources
        summary: dict[str, Any] | None = prepared.summary
        remap = prepared.remap_uid
    else:
        sources = collect_sources(paths)
        summary, remap = None, None
    # aiortc (once the receiver joins), aiohttp and pydicom are imported in the background,
    # so the code is shown without waiting for them; only once the scan is done (an import
    # beside it slows it down several times, peer.warm), unless it needs pydicom first
    warm.start(("aiortc", "aiohttp", "pydicom"), hold=True)
    # headers and one image per series are read off the event loop (the TUI stays live),
    # while the code is shown and the receiver joins: the offer waits for it (§5.2)
    scan = _Scan(sources, settings, summary, remap)
    deid_label = prepared.label if prepared is not None else ""
    try:
        client = await _connect(settings, settings.server)
    except BaseException:
        await scan.close()
        raise
    try:
        try:
            nameplate = await client.allocate()
            full_code = code or _make_code(nameplate)
            link_secret = secrets.token_bytes(32)
            on_event(CodeReady(full_code, _link_url(settings.server, nameplate, link_secret)))
            try:
                await client.wait_peer(timeout=settings.wait_timeout)
            except SignalingError as exc:
                if exc.code == "timeout":
                    raise NoReceiver(
                        "wait",
                        user_message=f"Nobody used the code within {settings.wait_timeout:.0f} s.",
                    ) from None
                raise
            hs = Handshake(Role.SENDER, code=full_code, link_secret=link_secret, entropy=os.urandom)
            pairing = _Pairing(client, hs, settings)
            paired = await pairing.run()
            on_event(Paired_(paired.mode))
            if paired.version >= 2:  # several paths, reconnection (docs/protocol.md §10)
                return await _send_v2(
                    settings,
                    client,
                    pairing,
                    paired,
                    scan,
                    sources,
                    on_event,
                    nameplate,
                    on_no_path,
                    deid_label,
                )
            link = RtcLink(
                await _servers(settings, client.ice_servers),
                high_water=settings.buffered_high,
                relay_only=settings.turn_only,
            )
            try:
                offer_sdp = await link.create_offer()
                pairing.send({"type": "offer", "sdp": offer_sdp, "version": paired.version})
                await pairing.flush()
                answer = await pairing.envelope("answer")
                sdp = answer.get("sdp")
                if not isinstance(sdp, str):
                    raise RemoteProtocolError("answer without SDP")
                await link.accept_answer(sdp)
            except BaseException:
                await link.close()
                raise
        except SignalingError as exc:
            raise _signal_error(exc, settings.server) from None
        try:
            try:
                await _open(link, settings)
            except NoPathError:
                if on_no_path is None:
                    raise
                await link.close()
                ready = await on_no_path()
                with contextlib.suppress(SignalingError, LocalProtocolError):
                    pairing.send({"type": "relay", "url": ready.url})
                    await pairing.flush()
                    await client.close("happy")
                raise
            with contextlib.suppress(SignalingError):
                await client.close("happy")
            on_event(Connected(link.via))
            manifest = await scan.result()
            try:
                done = await _send_over(link, paired, manifest, sources, settings, on_event)
            except BeamError as exc:
                _disclose(
                    settings, manifest, link.via, f"code {nameplate}", exc, (), deid=deid_label
                )
                raise
            _disclose(
                settings,
                manifest,
                done.via,
                f"code {nameplate}",
                None,
                done.digests,
                deid=deid_label,
            )
            return done
        finally:
            await link.close()
    finally:
        await scan.close()
        with contextlib.suppress(Exception):
            await client.close("error")


class _ScanCancelled(Exception):
    """The offer is no longer needed (the send stopped before it was sent)."""


class _Scan:
    """The offer's manifest, built in a worker thread from the moment ``send`` starts.

    The code is shown at once; headers and previews are read while the receiver types
    it and the connection opens. :meth:`close` stops an unfinished scan at the next file
    (a thread cannot be cancelled), so a stopped send does not wait for a large study.
    """

    def __init__(
        self,
        sources: Sequence[SourceFile],
        settings: Settings,
        summary: dict[str, Any] | None,
        remap: Callable[[str], str] | None,
    ) -> None:
        self._stop = threading.Event()
        watched = _Watched(sources, self._stop)
        self._job = asyncio.ensure_future(
            asyncio.to_thread(_build_manifest, watched, settings, summary, remap)
        )
        started = time.monotonic()

        def scanned(job: object) -> None:
            log.debug("offer scan finished in %.2f s", time.monotonic() - started)
            warm.drop("pydicom")  # the scan imported it if it found a DICOM file
            warm.go()

        self._job.add_done_callback(scanned)

    async def result(self) -> Manifest:
        """The manifest (waits for the scan).

        Raises:
            BeamError: the scan failed.
        """
        return await asyncio.shield(self._job)

    def ready(self) -> Manifest | None:
        """The manifest when the scan has finished, else None."""
        if self._job.done() and not self._job.cancelled() and self._job.exception() is None:
            return self._job.result()
        return None

    async def close(self) -> None:
        """Stop the scan if it still runs and wait for its thread (idempotent)."""
        self._stop.set()
        with contextlib.suppress(BaseException):
            await self._job


class _Watched(Sequence[SourceFile]):
    """``sources`` for the scan: iterating stops with ``_ScanCancelled`` once ``stop`` is set."""

    def __init__(self, sources: Sequence[SourceFile], stop: threading.Event) -> None:
        self._sources = sources
        self._stop = stop

    def __len__(self) -> int:
        return len(self._sources)

    def __getitem__(self, index: Any) -> Any:
        return self._sources[index]

    def __iter__(self) -> Iterator[SourceFile]:
        for source in self._sources:
            if self._stop.is_set():
                raise _ScanCancelled
            yield source


def _disclose(
    settings: Settings,
    manifest: Manifest,
    how: str,
    to: str,
    error: BeamError | None,
    digests: Sequence[str],
    *,
    expires: float | None = None,
    outcome: str | None = None,
    deid: str = "",
) -> None:
    """Append to the sender's disclosure log (what, to whom, how, outcome)."""
    if outcome is None:
        outcome = "delivered" if error is None else f"failed: {error.code}"
    LocalState(settings.home).record(
        Disclosure(
            time=time.time(),
            how=how,
            to=to,
            outcome=outcome,
            files=len(manifest.files),
            bytes=manifest.total_bytes,
            study_uids=study_uids(manifest.summary),
            sha256_list_digest=digest_of(digests) if digests else "",
            expires=expires,
            server=settings.server,
            deidentified=deid,
        )
    )


async def _open(link: RtcLink, settings: Settings) -> None:
    try:
        await link.wait_open(settings.connect_timeout)
    except NoPathError:
        raise NoPathError(
            "ICE failed",
            user_message="No direct connection could be made between the two computers "
            f"within {settings.connect_timeout:.0f} s.",
        ) from None


async def _servers(settings: Settings, handed: Sequence[IceServer] = ()) -> list[Any]:
    """Locally configured ICE servers first, then the ones the signaling server handed out
    for this room (aiortc uses only the first STUN and the first TURN server it is given).
    Waits, without blocking the event loop, for aiortc's import (`peer.warm`)."""
    await warm.ready("aiortc")
    servers = ice_servers(settings.stun, settings.turn, settings.turn_user, settings.turn_password)
    return servers + handed_servers(handed)


def _build_manifest(
    sources: Sequence[SourceFile],
    settings: Settings | None = None,
    summary: dict[str, Any] | None = None,
    remap: Callable[[str], str] | None = None,
) -> Manifest:
    from peer.dicom.summary import scan  # imports pydicom only for a DICOM file

    slices: list[Slice] | None = None  # one header pass for the summary and the previews
    if summary is None:
        summary, slices = scan((s.rel, s.path) for s in sources)
    files = tuple(
        FileEntry(
            path=s.rel, size=s.size, mtime_ns=s.manifest_mtime_ns, prefix=secrets.token_bytes(16)
        )
        for s in sources
    )
    previews = build_previews(sources, settings, remap, slices)
    return Manifest(files=files, summary=summary, previews=previews)


def build_previews(
    sources: Sequence[SourceFile],
    settings: Settings | None,
    remap: Callable[[str], str] | None = None,
    slices: Sequence[Slice] | None = None,
) -> tuple[SeriesPreview, ...]:
    """Series thumbnails for the manifest, unless ``settings.previews`` is off.

    ``remap`` maps a series UID as the source files hold it to the one the offer shows
    (de-identified sends: the pixels are the originals', the UIDs are not). ``slices``:
    what `peer.dicom.summary.scan` read of the same sources (their headers are then not
    read again).
    """
    if settings is not None and not settings.previews:
        return ()
    if slices is not None and not slices:
        return ()  # no DICOM file among the sources
    warm.need("pydicom")
    from peer.dicom.preview import DEFAULT_BUDGET, offer_previews

    budget = DEFAULT_BUDGET if settings is None else settings.preview_seconds
    previews = offer_previews((s.path for s in sources), budget=budget, slices=slices)
    if remap is None:
        return previews
    return tuple(dataclasses.replace(p, series=remap(p.series)) for p in previews)


async def _tell_cancelled(
    machine: tx.Sender | rx.Receiver,
    flush: Callable[[], None],
    link: RtcLink | SenderLanes | ReceiverLanes,
) -> None:
    """Ctrl-C: tell the peer (ERROR ``cancelled``, bounded) so it stops instead of waiting
    for a reconnection."""
    with contextlib.suppress(BaseException):
        machine.fail(CancelledByUser("cancelled"))
        flush()
        await link.flush_and_close(2.0)


BATCH_MESSAGES = 64  # records the receiver authenticates and unpacks in one worker call


def _queued(link: RtcLink | ReceiverLanes, first: bytes) -> list[bytes]:
    """``first`` and the records already queued behind it (at most `BATCH_MESSAGES`).
    A closed link ends the batch; the next receive reports it."""
    batch = [first]
    with contextlib.suppress(BeamError):
        while len(batch) < BATCH_MESSAGES:
            more = link.recv_nowait()
            if more is None:
                break
            batch.append(more)
    return batch


def _feed_all(
    machine: rx.Receiver, batch: Sequence[bytes], dest: Destination | None
) -> list[rx.Event]:
    """Feed ``batch`` to the receiver core and write each authenticated chunk to ``dest``
    at once, in order; returns the core's events (their chunks already written)."""
    events: list[rx.Event] = []
    for item in batch:
        machine.receive_message(item)
        for ev in machine.events_received():
            if isinstance(ev, rx.ChunkReceived):
                assert dest is not None  # the core takes chunks only once accepted
                dest.write(ev.file_ix, ev.offset, ev.data)
            events.append(ev)
    return events


async def _feed_off_loop(
    machine: rx.Receiver, batch: Sequence[bytes], dest: Destination | None
) -> list[rx.Event]:
    """`_feed_all` in a worker thread: decryption, decompression, hashing and the file
    writes release the GIL, so the event loop keeps reading the network meanwhile. The
    core and the destination are never used by two threads at once: a cancellation waits
    for the worker before it is passed on (the caller then tells the sender)."""
    work = asyncio.get_running_loop().run_in_executor(None, _feed_all, machine, batch, dest)
    try:
        return await asyncio.shield(work)
    except BaseException:
        with contextlib.suppress(BaseException):
            await work
        raise


async def _recv(link: RtcLink | SenderLanes | ReceiverLanes, idle: float | None) -> bytes:
    data = link.recv_nowait()  # fast path: no timer or task per message
    if data is not None:
        return data
    try:
        # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a cancellation
        # (Ctrl-C) that races with the message arriving
        async with asyncio.timeout(idle):
            return await link.recv()
    except TimeoutError:
        raise TransferTimeout("idle") from None


async def _send_over(
    link: RtcLink | SenderLanes,
    paired: Paired,
    manifest: Manifest,
    sources: Sequence[SourceFile],
    settings: Settings,
    on_event: OnEvent,
    stats: dict[str, int] | None = None,
) -> Done:
    started = time.monotonic()
    machine = tx.Sender(paired.keys.session, manifest, compress=settings.compress)
    reader = SourceReader(sources)
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    progress: _Progress | None = None
    held = 0
    # compression only while it pays (§5.2): measured once the transfer is fast
    now = time.monotonic
    choice = CompressionChoice(now()) if settings.compress else None
    fed = 0

    def moves() -> int:
        return len(link.switches) if isinstance(link, SenderLanes) else 0

    def flush() -> None:
        for rec in machine.data_to_send():
            link.send(rec)

    async def pump() -> None:
        while machine.state not in (tx.SenderState.DONE, tx.SenderState.FAILED):
            waiting = machine.state is tx.SenderState.OFFERED
            data = await _recv(link, None if waiting else settings.idle_timeout)
            machine.receive_message(data)
            flush()
            wake.set()

    credit0: list[int] = []
    if isinstance(link, SenderLanes):
        link.bind(
            lambda: machine.sent_chunks,
            lambda: machine.credit - credit0[0] if credit0 else 0,
        )
    machine.start()
    flush()
    pump_task = asyncio.ensure_future(pump())
    completed: tx.Completed | None = None
    try:
        while completed is None:
            for ev in machine.events_received():
                if isinstance(ev, tx.Accepted):
                    held = ev.resume_bytes
                    credit0.append(machine.credit)
                    if stats is not None:
                        stats["held"] = held
                    progress = _Progress(on_event, manifest.total_bytes, held, via=lambda: link.via)
                elif isinstance(ev, tx.Declined):
                    raise DeclinedError("declined")
                elif isinstance(ev, tx.Failed):
                    raise ev.error
                elif isinstance(ev, tx.Completed):
                    completed = ev
            if completed is not None:
                break
            req = machine.next_read()
            if req is None:
                if pump_task.done():
                    pump_task.result()
                    continue
                wake.clear()
                waiter = asyncio.ensure_future(wake.wait())
                await asyncio.wait({waiter, pump_task}, return_when="FIRST_COMPLETED")
                waiter.cancel()
                continue
            try:
                data = reader.cached(req.file_ix, req.offset, req.length)
                if data is None:  # read the next block off the event loop
                    data = await loop.run_in_executor(
                        None, reader.read, req.file_ix, req.offset, req.length
                    )
                if req.chunk_ix == manifest.files[req.file_ix].n_chunks(manifest.chunk_size) - 1:
                    reader.check_unchanged(req.file_ix)
            except BeamError as exc:
                machine.fail(exc)
                flush()
                await link.flush_and_close(2.0)
                raise
            if machine.state is not tx.SenderState.SENDING:
                continue  # the receiver's answer arrived during the read; handle it first
            machine.feed(req, data)
            flush()
            if req.transmit:
                if progress is not None:
                    progress.add(req.length)
                fed += req.length
                change = None if choice is None else choice.update(now(), fed, moves())
                if change is not None:
                    machine.set_compression(change)
                    log.info("compression %s", "on" if change else "off")
                if choice is not None and choice.level != machine.compression_level:
                    machine.set_compression_level(choice.level)
                    log.info("compression level %d", choice.level)
            await link.drain()
        if progress is not None:
            progress.add(0, force=True)
        await link.flush_and_close()
    except PeerGone:
        if machine.state is tx.SenderState.FAILED and machine.error is not None:
            raise machine.error from None  # the receiver said why before it closed
        if machine.state is tx.SenderState.AWAITING_RECEIPT:
            raise PeerGone(
                "no receipt",
                user_message="The connection dropped before the receiver confirmed; "
                "run the same command again to resume.",
            ) from None
        raise PeerGone(
            "receiver gone",
            user_message="The receiver disconnected. Run the same command again to resume; "
            "what the receiver verified is not sent twice.",
        ) from None
    except BeamError as exc:
        if machine.state is not tx.SenderState.FAILED:
            machine.fail(exc)
        with contextlib.suppress(BeamError):
            flush()
            await link.flush_and_close(2.0)
        raise
    except (asyncio.CancelledError, KeyboardInterrupt):
        await _tell_cancelled(machine, flush, link)
        raise
    finally:
        pump_task.cancel()
        with contextlib.suppress(BaseException):
            await pump_task
        reader.close()
    seconds = time.monotonic() - started
    done = Done(
        via=link.via,
        files=completed.files,
        bytes=completed.bytes,
        seconds=seconds,
        sent_bytes=manifest.total_bytes - held,
        digests=completed.digests,
    )
    on_event(done)
    return done


Decide = Callable[[Offer], Awaitable[bool]]


async def receive(
    settings: Settings,
    target: Target,
    dest: Path,
    on_event: OnEvent,
    decide: Decide,
    password: PasswordPrompt | None = None,
) -> Done:
    """Pair with a sender by code or link and receive into ``dest``.

    ``decide`` is awaited with the offer and returns True to accept. When no direct
    connection opens and the sender hands over a relay link instead, the download
    continues from the relay (``password`` is asked for a protected link).

    Raises:
        BeamError: any failure, with a user message.
    """
    warm.start()  # aiortc is needed once paired, pydicom for the completeness check
    client = await _connect(settings, target.server)
    try:
        try:
            await client.join(target.nameplate)
            hs = Handshake(
                Role.RECEIVER, code=target.code, link_secret=target.link_secret, entropy=os.urandom
            )
            pairing = _Pairing(client, hs, settings)
            paired = await pairing.run()
            on_event(Paired_(paired.mode))
            if paired.version >= 2:  # several paths, reconnection (docs/protocol.md §10)
                return await _receive_v2(
                    settings,
                    target.server,
                    client,
                    pairing,
                    paired,
                    dest,
                    on_event,
                    decide,
                    password,
                )
            offer = await pairing.envelope("offer")
            sdp = offer.get("sdp")
            if not isinstance(sdp, str):
                raise RemoteProtocolError("offer without SDP")
            link = RtcLink(
                await _servers(settings, client.ice_servers),
                high_water=settings.buffered_high,
                relay_only=settings.turn_only,
            )
            try:
                answer_sdp = await link.create_answer(sdp)
                pairing.send({"type": "answer", "sdp": answer_sdp})
                await pairing.flush()
            except BaseException:
                await link.close()
                raise
        except SignalingError as exc:
            raise _signal_error(exc, target.server) from None
        try:
            try:
                await _open(link, settings)
            except NoPathError as exc:
                await link.close()
                return await _receive_handed_off(
                    exc, pairing, settings, dest, on_event, decide, password
                )
            with contextlib.suppress(SignalingError):
                await client.close("happy")
            on_event(Connected(link.via))
            return await _receive_over(link, paired, dest, settings, on_event, decide)
        finally:
            await link.close()
    finally:
        with contextlib.suppress(Exception):
            await client.close("error")


async def _receive_handed_off(
    no_path: NoPathError,
    pairing: _Pairing,
    settings: Settings,
    dest: Path,
    on_event: OnEvent,
    decide: Decide,
    password: PasswordPrompt | None,
) -> Done:
    """No direct path opened: download the relay link the sender hands over, or re-raise
    ``no_path`` when none comes."""
    url = await _await_hand_off(pairing, settings, on_event)
    drop = parse_drop_link(url) if url else None
    if drop is None:
        raise no_path from None
    with contextlib.suppress(SignalingError):
        await pairing.client.close("happy")

    async def no_password() -> str:
        raise PairingError(
            "no prompt", user_message="A password is needed: use --password-file FILE."
        )

    done: Done = await download(settings, drop, dest, on_event, decide, password or no_password)
    return done


async def _await_hand_off(pairing: _Pairing, settings: Settings, on_event: OnEvent) -> str | None:
    """After a failed direct connection, wait (bounded) for the sender's relay link."""
    on_event(
        RelayFallback(
            "No direct connection: waiting for the sender to upload the study to the relay."
        )
    )
    try:
        async with asyncio.timeout(settings.handoff_timeout):
            msg = await pairing.envelope("relay")
    except (SignalingError, TimeoutError, BeamError):
        return None  # the sender gave up, left, or does not use the relay
    url = msg.get("url")
    return url if isinstance(url, str) else None


async def check_completeness(manifest: Manifest, root: Path) -> dict[str, Any] | None:
    """The completeness check of placed files (in a worker thread); None if it failed.
    pydicom is imported (`peer.warm`) only if a placed file has the Part 10 marker."""
    from peer.dicom.complete import check_study

    try:
        result = await asyncio.to_thread(
            check_study, manifest.summary, root, [f.path for f in manifest.files]
        )
    except Exception:  # a report, never a reason to fail a verified transfer
        return None
    return result.to_dict()


async def _receive_over(
    link: RtcLink | ReceiverLanes,
    paired: Paired,
    root: Path,
    settings: Settings,
    on_event: OnEvent,
    decide: Decide,
    stats: dict[str, int] | None = None,
) -> Done:
    started = time.monotonic()
    machine = rx.Receiver(paired.keys.session, window=settings.window)
    loop = asyncio.get_running_loop()
    dest: Destination | None = None
    ckpts: Checkpoints | None = None
    progress: _Progress | None = None
    held = 0
    finished = False

    def flush() -> None:
        for rec in machine.data_to_send():
            link.send(rec)

    try:
        while True:
            # before the offer the sender may still be reading a large study's headers
            # (§5.2): a dead sender closes the connection, so wait as long as for a join
            timeout = (
                max(settings.pair_timeout, settings.wait_timeout)
                if machine.manifest is None
                else settings.idle_timeout
            )
            try:
                data = await _recv(link, timeout)
            except PeerGone:
                if finished:
                    break  # the receipt went out; the files are verified and in place
                if machine.state is rx.ReceiverState.FAILED and machine.error is not None:
                    raise machine.error from None  # the sender said why before it closed
                raise
            batch = _queued(link, data)
            if len(batch) > 1 and machine.state is rx.ReceiverState.RECEIVING:
                events = await _feed_off_loop(machine, batch, dest)
            else:
                events = _feed_all(machine, batch, dest)
            for ev in events:
                if isinstance(ev, rx.Offered):
                    if machine.state is not rx.ReceiverState.OFFERED:
                        continue
                    if not ev.manifest.summary.get("dicom_files"):
                        warm.drop("pydicom")  # for the completeness check of DICOM only
                    dest = Destination(root, ev.manifest)
                    ckpts = Checkpoints(dest)
                    try:
                        resume, hashes, held = await loop.run_in_executor(None, dest.preflight)
                    except BeamError as exc:
                        machine.fail(exc)
                        flush()
                        raise
                    m = ev.manifest
                    offer = Offer(
                        files=len(m.files),
                        bytes=m.total_bytes,
                        held=held,
                        summary=dict(m.summary),
                        paths=tuple(f.path for f in m.files),
                        dest=root,
                        previews=m.previews,
                    )
                    on_event(offer)
                    try:
                        if not await decide(offer):
                            raise DeclinedError(
                                "declined", user_message="You declined the transfer."
                            )
                    except DeclinedError:
                        machine.decline()
                        flush()
                        await link.flush_and_close(1.0)
                        raise
                    machine.accept(resume, hashes)
                    if stats is not None:
                        stats["held"] = held
                    progress = _Progress(on_event, m.total_bytes, held, via=lambda: link.via)
                elif isinstance(ev, rx.ChunkReceived):  # written by _feed_all
                    assert ckpts is not None and progress is not None
                    await ckpts.maybe()
                    machine.release(1)
                    progress.add(len(ev.data))
                elif isinstance(ev, rx.FileVerified):
                    assert dest is not None
                    dest.file_verified(ev.file_ix)
                    assert ckpts is not None
                    await ckpts.maybe()
                elif isinstance(ev, rx.AllVerified):
                    assert dest is not None and ckpts is not None
                    if machine.state is not rx.ReceiverState.VERIFIED:
                        continue  # a failure in the same batch follows; it is handled below
                    await ckpts.drain()
                    await loop.run_in_executor(None, dest.place_all)
                    machine.finish()
                    finished = True
                elif isinstance(ev, rx.Closed):
                    finished = True
                elif isinstance(ev, rx.Failed):
                    raise ev.error
            flush()
            if machine.state is rx.ReceiverState.DONE:
                break
    except BeamError as exc:
        if ckpts is not None and not finished:
            await ckpts.save()
        if machine.state not in (rx.ReceiverState.FAILED, rx.ReceiverState.DECLINED):
            machine.fail(exc)
        with contextlib.suppress(BeamError):
            flush()  # the ERROR record tells the sender why
            await link.flush_and_close(2.0)
        raise
    except BaseException as exc:
        if ckpts is not None and not finished:
            await ckpts.save()
        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt) and not finished:
            await _tell_cancelled(machine, flush, link)
        raise
    assert machine.manifest is not None
    if progress is not None:
        progress.add(0, force=True)
    await link.flush_and_close(1.0)
    m = machine.manifest
    seconds = time.monotonic() - started  # the transfer, not the check below
    completeness = await check_completeness(m, root)
    done = Done(
        via=link.via,
        files=len(m.files),
        bytes=m.total_bytes,
        seconds=seconds,
        sent_bytes=m.total_bytes - held,
        dest=root,
        completeness=completeness,
    )
    on_event(done)
    return done


async def send_or_relay(
    settings: Settings,
    paths: Sequence[Path],
    on_event: OnEvent,
    *,
    relay: str = "auto",
    expires_in: float = 7 * 86400.0,
    max_downloads: int = 1,
    password: str | None = None,
    prepared: Prepared | None = None,
) -> Done | LinkReady:
    """Send directly; fall back to a relay link when nobody joins or no path opens.

    ``relay`` is ``"auto"`` (fall back), ``"always"`` (upload at once) or ``"never"``.
    The sender waits ``settings.wait_timeout`` for the receiver. Before uploading it emits
    ``RelayFallback(reason)``; the upload reports ``Progress`` and then ``LinkReady``.

    Raises:
        BeamError: any failure, with a user message.
    """
    if relay not in ("auto", "always", "never"):
        raise ValueError(f"relay must be auto, always or never, not {relay!r}")

    async def to_relay(reason: str) -> LinkReady:
        on_event(RelayFallback(reason))
        ready = await upload(
            settings,
            paths,
            on_event,
            expires_in=expires_in,
            max_downloads=max_downloads,
            password=password,
            sources=prepared.sources if prepared is not None else None,
            summary=prepared.summary if prepared is not None else None,
            deid=prepared.label if prepared is not None else "",
            remap=prepared.remap_uid if prepared is not None else None,
        )
        on_event(ready)
        return ready

    if relay == "always":
        return await to_relay("")
    handed: list[LinkReady] = []

    async def hand_off() -> LinkReady:
        handed.append(
            await to_relay(
                "No direct connection: uploading the encrypted study to the relay; "
                "the receiver gets the link automatically."
            )
        )
        return handed[0]

    try:
        return await send(
            settings,
            paths,
            on_event,
            on_no_path=None if relay == "never" else hand_off,
            prepared=prepared,
        )
    except NoReceiver:
        if relay == "never":
            raise
        return await to_relay("Nobody joined in time: uploading the encrypted study to the relay.")
    except NoPathError:
        if handed:
            return handed[0]
        if relay == "never":
            raise
        return await to_relay("No direct connection: uploading the encrypted study to the relay.")


async def receive_any(
    settings: Settings,
    text: str,
    dest: Path,
    on_event: OnEvent,
    decide: Decide,
    password: PasswordPrompt,
) -> Done:
    """Receive by a typed code, a QR link or a relay link (whichever ``text`` is).

    ``password`` is awaited only for a password-protected relay link.

    Raises:
        BeamError: any failure, with a user message (also for text that is neither).
    """
    drop = parse_drop_link(text)
    if drop is not None:
        done: Done = await download(settings, drop, dest, on_event, decide, password)
        return done
    target = parse_target(text, settings.server)
    return await receive(settings, target, dest, on_event, decide)


# -- protocol v2: several paths and reconnection rounds (docs/protocol.md §10) ----------------


class _Round:
    """The paths of one round: the data channel, TCP lanes, the relay pipe, and the tasks
    still opening them in the background."""

    def __init__(self, mux: SenderLanes | ReceiverLanes) -> None:
        self.mux = mux
        self.link: RtcLink | None = None
        self.tcp: TcpLanes | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()
        self.direct = asyncio.Event()  # a lane that does not go through the server
        self.signaled = asyncio.Event()  # the offer/answer exchange is complete
        self.tcp_up = asyncio.Event()  # a TCP lane was added
        self.exchange: asyncio.Task[None] | None = None

    def has_tcp(self) -> bool:
        return any(x.name == "tcp" and not x.dead for x in self.mux.lanes)

    def raise_failed(self) -> None:
        """Raise the error of the offer/answer exchange when it failed (the peer left or
        sent a malformed answer, the server dropped us); a data channel that cannot open
        is not an error."""
        task = self.exchange
        if task is not None and task.done() and not task.cancelled():
            exc = task.exception()
            if exc is not None:
                raise exc

    def close_signaling(self, client: SignalingClient, within: float) -> None:
        """Leave the signaling server (mood ``happy``) once the offer/answer exchange is
        complete, or after ``within`` seconds, or when the round closes."""

        async def leave() -> None:
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(within):
                        await self.signaled.wait()
            finally:
                with contextlib.suppress(Exception):
                    await client.close("happy")

        self.tasks.append(asyncio.ensure_future(leave()))

    def add(self, lane: Any) -> None:
        self.mux.add(lane)
        if lane.name == "tcp":
            self.tcp_up.set()
        if self.mux.lanes:
            self.ready.set()
        if any(x.name != "pipe" for x in self.mux.lanes):
            self.direct.set()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(BaseException):
                await task
        if self.tcp is not None:
            await self.tcp.close()
        await self.mux.close()
        if self.link is not None:
            await self.link.close()


async def _establish(
    settings: Settings,
    server: str,
    pairing: _Pairing,
    paired: Paired,
    role: Role,
    on_event: OnEvent,
) -> _Round:
    """Exchange offer/answer and lane addresses in sealed envelopes and open every path at
    once; returns when the first one carries records (§10.1).

    A TCP lane needs neither SDP nor aiortc: each side sends its `lanes` envelope first and
    connects to the peer's addresses as soon as it has them; the offer/answer exchange and
    the data channel go on in the background, so the transfer can start before either.

    Raises:
        NoPathError: no path opened within the connect timeout.
    """
    started = time.monotonic()
    master = paired.keys.master
    if role is Role.SENDER:
        mux: SenderLanes | ReceiverLanes = SenderLanes(
            on_switch=lambda old, new: on_event(PathMoved(old, new))
        )
    else:
        mux = ReceiverLanes()
    rnd = _Round(mux)
    try:
        if settings.tcp_lane and not settings.turn_only:  # --turn-only hides our addresses
            rnd.tcp = TcpLanes(lane_key(master), rnd.add)
        lanes_msg: dict[str, Any] = {"type": "lanes", "pipe": settings.pipe}

        async def new_link() -> RtcLink:
            servers = await _servers(settings, pairing.client.ice_servers)
            link = rnd.link = RtcLink(
                servers, high_water=settings.buffered_high, relay_only=settings.turn_only
            )
            return link

        async def open_dc(link: RtcLink) -> None:
            try:
                await link.wait_open(settings.connect_timeout)
            except NoPathError:
                return
            rnd.add(DcLane(link))

        async def open_pipe() -> None:
            # the pipe is for when no TCP lane comes (§10.1): both run over TCP, the pipe
            # with a detour through the server, so it cannot be expected to beat one
            if rnd.tcp is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, started + PIPE_WAIT - time.monotonic())):
                        await rnd.tcp_up.wait()
                if rnd.has_tcp():
                    return
            lane = await connect_pipe(server, pipe_id(master), settings.connect_timeout)
            if lane is not None:
                rnd.add(lane)

        def other_paths(peer: dict[str, Any]) -> None:
            if rnd.tcp is not None and not rnd.has_tcp():
                rnd.tcp.connect_all(peer.get("tcp"))
            if settings.pipe and peer.get("pipe") is True:
                rnd.tasks.append(asyncio.ensure_future(open_pipe()))

        lanes_msg["tcp"] = await rnd.tcp.listen() if rnd.tcp is not None else []
        if role is Role.SENDER:
            pairing.send(lanes_msg)  # before the offer: a TCP lane needs no aiortc
            await pairing.flush()

            async def exchange() -> None:
                # the offer is useless before the manifest: do not import aiortc beside
                # the scan (which that slows down) unless the scan takes long
                await warm.ready("aiortc", patience=SCAN_GRACE)
                link = await new_link()
                offer_sdp = await link.create_offer()
                pairing.send({"type": "offer", "sdp": offer_sdp, "version": paired.version})
                await pairing.flush()
                answer_sdp: str | None = None
                peer: dict[str, Any] | None = None
                while answer_sdp is None or peer is None:  # a browser sends lanes last
                    msg = await pairing.envelope("answer", "lanes")
                    if msg["type"] == "lanes":
                        peer = msg
                        other_paths(peer)
                        continue
                    sdp = msg.get("sdp")
                    if not isinstance(sdp, str):
                        raise RemoteProtocolError("answer without SDP")
                    answer_sdp = sdp
                rnd.signaled.set()
                await link.accept_answer(answer_sdp)
                await open_dc(link)

        else:
            msg = await pairing.envelope("lanes", "offer")
            offer_sdp: str | None = None
            if msg["type"] == "offer":  # a sender that sends its lanes after the offer
                offer_sdp = _offer_sdp(msg)
                msg = await pairing.envelope("lanes")
            pairing.send(lanes_msg)
            await pairing.flush()
            other_paths(msg)  # before aiortc is even imported

            async def exchange() -> None:
                sdp = offer_sdp or _offer_sdp(await pairing.envelope("offer"))
                link = await new_link()
                answer_sdp = await link.create_answer(sdp)
                pairing.send({"type": "answer", "sdp": answer_sdp})
                await pairing.flush()
                rnd.signaled.set()
                await open_dc(link)

        rnd.exchange = asyncio.ensure_future(exchange())
        rnd.tasks.append(rnd.exchange)
        waiter = asyncio.ensure_future(rnd.ready.wait())
        try:
            await asyncio.wait(
                [waiter, *rnd.tasks],
                timeout=settings.connect_timeout,
                return_when="FIRST_COMPLETED",
            )
            # the data channel and the pipe may fail fast; TCP lanes may still come
            deadline = time.monotonic() + settings.connect_timeout
            while not rnd.ready.is_set() and time.monotonic() < deadline:
                rnd.raise_failed()  # the exchange itself failed (peer gone, bad answer)
                pending = [t for t in rnd.tasks if not t.done()]
                await asyncio.wait(
                    [waiter, *pending],
                    timeout=max(0.0, deadline - time.monotonic()),
                    return_when="FIRST_COMPLETED",
                )
                if not pending and not rnd.ready.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(min(6.0, deadline - time.monotonic())):
                            await rnd.ready.wait()  # TCP proofs take at most 5 s
                    break
        finally:
            waiter.cancel()
        if not rnd.ready.is_set():
            rnd.raise_failed()
            raise NoPathError(
                "no path",
                user_message="No connection could be made between the two computers "
                f"within {settings.connect_timeout:.0f} s.",
            )
        if not rnd.direct.is_set():  # prefer a direct path to the server's bandwidth
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, started + PIPE_GRACE - time.monotonic())):
                    await rnd.direct.wait()
        direct = next((x for x in mux.lanes if x.name != "pipe" and not x.dead), None)
        if isinstance(mux, SenderLanes) and direct is not None:
            mux.move_to(direct)  # before any record: the pipe only carried START(0)
        on_event(Connected((direct or mux.lanes[0]).name))
        return rnd
    except BaseException:
        await rnd.close()
        raise


def _offer_sdp(offer: dict[str, Any]) -> str:
    sdp = offer.get("sdp")
    if not isinstance(sdp, str):
        raise RemoteProtocolError("offer without SDP")
    return sdp


SCAN_GRACE = 2.0  # seconds a sender's data channel offer waits for its scan (peer.warm)
PIPE_WAIT = 1.0  # seconds from the lanes exchange a TCP lane has to come before the pipe opens
PIPE_GRACE = 2.0  # seconds from the lanes exchange a transfer waits for a direct path
# when the relay pipe came first


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionFailed) and not isinstance(exc, NoReceiver)


async def _rejoin(
    settings: Settings, server: str, master: bytes, round_no: int, role: Role, deadline: float
) -> tuple[SignalingClient, _Pairing, Paired]:
    """Meet the peer again at the rendezvous of ``round_no`` (retrying the server until
    ``deadline``) and pair under that round's fresh keys."""
    rid = rendezvous_id(master, round_no)
    delay = 0.5
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PeerGone(
                "reconnect timed out",
                user_message="The connection dropped and could not be made again in "
                f"{settings.reconnect_timeout:.0f} s. Verified data was kept: run the same "
                "command again to resume.",
            )
        client: SignalingClient | None = None
        try:
            client = await SignalingClient.connect(
                server, open_timeout=min(settings.open_timeout, left)
            )
            await client.rendezvous(rid)
            await client.wait_peer(timeout=max(0.1, deadline - time.monotonic()))
        except SignalingError:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close("error")
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 5.0)
            continue
        hs = Handshake(role, master=round_master(master, round_no), entropy=os.urandom)
        pairing = _Pairing(client, hs, settings)
        try:
            paired = await pairing.run()
        except SignalingError as exc:
            with contextlib.suppress(Exception):
                await client.close("error")
            raise _signal_error(exc, server) from None  # the next round tries again
        except BaseException:
            with contextlib.suppress(Exception):
                await client.close("error")
            raise
        return client, pairing, paired


async def _rounds(
    settings: Settings,
    server: str,
    client: SignalingClient,
    pairing: _Pairing,
    paired: Paired,
    role: Role,
    on_event: OnEvent,
    run: Callable[[_Round, Paired, int, dict[str, int]], Awaitable[Done]],
    on_no_path: Callable[[_Pairing, SignalingClient], Awaitable[None]] | None = None,
) -> Done:
    """Run the transfer in rounds: when the connection drops, meet again (bounded by the
    reconnect timeout) and continue; the receiver's verified chunks are never sent again."""
    started = time.monotonic()
    master = paired.keys.master
    totals: dict[str, int] = {}
    stats: dict[str, int] = {}
    held0: int | None = None
    deadline: float | None = None
    round_no = 0
    while True:
        own_client = round_no > 0
        established = False
        try:
            if round_no > 0:
                assert deadline is not None
                client, pairing, paired = await _rejoin(
                    settings, server, master, round_no, role, deadline
                )
                on_event(Paired_(paired.mode))
            try:
                rnd = await _establish(settings, server, pairing, paired, role, on_event)
            except NoPathError:
                if round_no == 0 and on_no_path is not None:
                    await on_no_path(pairing, client)
                raise
            except SignalingError as exc:
                raise _signal_error(exc, server) from None
            established = True
            rnd.close_signaling(client, settings.connect_timeout)
            try:
                done = await run(rnd, paired, round_no, stats)
            finally:
                if held0 is None and "held" in stats:
                    held0 = stats["held"]
                for name, n in rnd.mux.paths:
                    totals[name] = totals.get(name, 0) + n
                await rnd.close()
            total_sent = done.bytes - (held0 if held0 is not None else 0)
            done = dataclasses.replace(
                done,
                paths=tuple(totals.items()),
                rounds=round_no,
                seconds=time.monotonic() - started,
                sent_bytes=total_sent,
            )
            on_event(done)
            return done
        except BeamError as exc:
            if not _retryable(exc) or settings.reconnect_timeout <= 0:
                raise
            if round_no == 0 and not established:
                raise  # the first connection never opened (the relay handles that)
            now = time.monotonic()
            if deadline is None:
                deadline = now + settings.reconnect_timeout
            if now >= deadline:
                raise
            round_no += 1
            on_event(Reconnecting(round_no, exc.code, deadline - now))
        finally:
            if own_client:
                with contextlib.suppress(Exception):
                    await client.close("error")


async def _send_v2(
    settings: Settings,
    client: SignalingClient,
    pairing: _Pairing,
    paired: Paired,
    scan: _Scan,
    sources: Sequence[SourceFile],
    on_event: OnEvent,
    nameplate: str,
    on_no_path: HandOff | None,
    deid_label: str,
) -> Done:
    last: list[Manifest] = []

    async def run(rnd: _Round, paired: Paired, round_no: int, stats: dict[str, int]) -> Done:
        manifest = await scan.result()
        m = manifest if round_no == 0 else _fresh_prefixes(manifest)
        last[:] = [m]
        assert isinstance(rnd.mux, SenderLanes)
        quiet = _quiet_done(on_event)
        done = await _send_over(rnd.mux, paired, m, sources, settings, quiet, stats)
        via = rnd.link.via if rnd.link is not None and rnd.link.pc.sctp is not None else ""
        return dataclasses.replace(done, via=_main_via(rnd.mux.paths, via))

    async def hand_off(pairing: _Pairing, client: SignalingClient) -> None:
        if on_no_path is None:
            return
        ready = await on_no_path()
        with contextlib.suppress(SignalingError, LocalProtocolError):
            pairing.send({"type": "relay", "url": ready.url})
            await pairing.flush()
            await client.close("happy")

    try:
        done = await _rounds(
            settings,
            settings.server,
            client,
            pairing,
            paired,
            Role.SENDER,
            on_event,
            run,
            on_no_path=hand_off,
        )
    except BeamError as exc:
        offered = last[0] if last else scan.ready()
        if not isinstance(exc, NoPathError) and offered is not None:
            _disclose(settings, offered, "direct", f"code {nameplate}", exc, (), deid=deid_label)
        raise
    _disclose(settings, last[0], done.via, f"code {nameplate}", None, done.digests, deid=deid_label)
    return done


def _fresh_prefixes(manifest: Manifest) -> Manifest:
    """The same offer with new chunk nonce prefixes (every round seals under new ones)."""
    files = tuple(dataclasses.replace(f, prefix=secrets.token_bytes(16)) for f in manifest.files)
    return dataclasses.replace(manifest, files=files)


def _quiet_done(on_event: OnEvent) -> OnEvent:
    """``on_event`` without the round's own Done (the rounds loop reports the total)."""

    def forward(ev: Event) -> None:
        if not isinstance(ev, Done):
            on_event(ev)

    return forward


def _main_via(paths: Sequence[tuple[str, int]], dc_via: str) -> str:
    """``done.via`` keeps its v1 meaning, the kind of path that carried most of the data:
    "direct" (the data channel without TURN, or the TCP lane), "turn", or "pipe" (through
    the server). ``done.paths`` has the detail."""
    if not paths:
        return dc_via or "direct"
    name = max(paths, key=lambda p: p[1])[0]
    return "direct" if name == "tcp" else name


async def _receive_v2(
    settings: Settings,
    server: str,
    client: SignalingClient,
    pairing: _Pairing,
    paired: Paired,
    dest: Path,
    on_event: OnEvent,
    decide: Decide,
    password: PasswordPrompt | None,
) -> Done:
    first: list[tuple[tuple[str, ...], int]] = []

    async def decide_once(offer: Offer) -> bool:
        """Ask once; a later round offering the same files continues without asking."""
        key = (offer.paths, offer.bytes)
        if first and first[0] == key:
            return True
        ok = await decide(offer)
        if ok:
            first[:] = [key]
        return ok

    async def run(rnd: _Round, paired: Paired, round_no: int, stats: dict[str, int]) -> Done:
        assert isinstance(rnd.mux, ReceiverLanes)
        quiet = _quiet_done(on_event)
        done = await _receive_over(rnd.mux, paired, dest, settings, quiet, decide_once, stats)
        via = rnd.link.via if rnd.link is not None and rnd.link.pc.sctp is not None else ""
        return dataclasses.replace(done, via=_main_via(rnd.mux.paths, via))

    try:
        return await _rounds(
            settings, server, client, pairing, paired, Role.RECEIVER, on_event, run
        )
    except NoPathError as exc:
        return await _receive_handed_off(exc, pairing, settings, dest, on_event, decide, password)
