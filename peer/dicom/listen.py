"""PACS bridge, receiving side: a C-STORE SCP that groups instances into studies.

A modality or PACS stores into ``scanbeam listen``; each instance is written as
``ROOT/<study>/<series>/<sop>.dcm`` where every name comes from a UID that is checked to be
digits and dots (anything else becomes a hash: a peer never chooses a path). The dataset is
never decoded in memory: pynetdicom spools it to a temporary Part 10 file
(``STORE_RECV_CHUNKED_DATASET``) in ``ROOT/.scanbeam-incoming`` (so received PHI never lands
in a shared /tmp), the header is read to find the study and series, then the file is
fsync'd and renamed into place. The dataset bytes are the peer's bytes; the file meta is
written by pynetdicom from the negotiated transfer syntax.

Duplicates: the same bytes again are a no-op; different bytes under a known SOP Instance
UID are kept beside it as ``<sop>~2.dcm`` (the completeness check then reports the
conflict) rather than silently replacing data.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from peer.dicom.pacs import nodelay, validate_aet
from peer.dicom.summary import clean_text
from peer.errors import BeamError

__all__ = [
    "INCOMING",
    "ListenConfig",
    "StudySink",
    "preferred_syntaxes",
    "safe_name",
    "serve",
]

INCOMING = ".scanbeam-incoming"
_UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_MAX_DUPLICATES = 100

log = logging.getLogger("scanbeam.listen")

OnEvent = Callable[[str, dict[str, Any]], None]


def safe_name(uid: object, fallback: str) -> str:
    """A file or folder name for a peer-supplied UID: the UID itself when it is digits and
    dots (at most 64 characters), else ``x`` + 32 hex digits of its SHA-256."""
    text = str(uid if uid is not None else "").strip().rstrip("\x00").strip()
    if not text:
        return fallback
    if len(text) <= 64 and _UID_RE.fullmatch(text):
        return text
    return "x" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]


def _digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True, slots=True)
class Placed:
    """Where one received instance went."""

    study_dir: Path
    path: Path
    bytes: int
    duplicate: str  # "", "same" (identical copy, nothing written), "conflict" (kept beside)


class StudySink:
    """Places received Part 10 files under ``root``. Thread-safe (one per listener)."""

    def __init__(self, root: Path, *, min_free: int = 64 << 20) -> None:
        self.root = root
        self.min_free = min_free
        self._lock = threading.Lock()

    def place(self, src: Path, sop_uid: str) -> tuple[int, Placed | None]:
        """Move the spooled file ``src`` into place; returns (DIMSE status, placement)."""
        try:
            size = src.stat().st_size
        except OSError:
            return 0xA700, None
        if shutil.disk_usage(self.root).free - size < self.min_free:
            return 0xA700, None  # Refused: out of resources
        try:
            # peer data: invalid values are handled below (hashed names), not warned about
            with self._lock, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(
                    src,
                    stop_before_pixels=True,
                    specific_tags=["StudyInstanceUID", "SeriesInstanceUID"],
                )
                study_uid = str(ds.get("StudyInstanceUID", "") or "")
                series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        except Exception:  # cannot parse what was sent
            return 0xC210, None
        study = safe_name(study_uid, "unknown-study")
        series = safe_name(series_uid, "unknown-series")
        name = safe_name(sop_uid, "unknown-instance")
        folder = self.root / study / series
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / f".{name}.{os.getpid()}.{threading.get_ident()}.partial"
        try:
            try:
                os.replace(src, staged)
            except OSError:  # another file system: stream a copy
                with open(src, "rb") as fin, open(staged, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
            with open(staged, "rb+") as fh:
                os.fsync(fh.fileno())
            with self._lock:
                final, duplicate = self._final_name(folder, name, staged)
                if duplicate == "same":
                    staged.unlink()
                else:
                    os.replace(staged, final)
                    _fsync_dir(folder)
        except OSError:
            with contextlib.suppress(OSError):
                staged.unlink()
            return 0xA700, None
        return 0x0000, Placed(self.root / study, final, size, duplicate)

    @staticmethod
    def _final_name(folder: Path, name: str, staged: Path) -> tuple[Path, str]:
        final = folder / f"{name}.dcm"
        if not final.exists():
            return final, ""
        mine = _digest(staged)
        for n in range(1, _MAX_DUPLICATES + 1):
            candidate = final if n == 1 else folder / f"{name}~{n}.dcm"
            if not candidate.exists():
                return candidate, "conflict"
            if _digest(candidate) == mine:
                return candidate, "same"
        raise OSError("too many conflicting copies")


@dataclass
class _Assoc:
    calling_aet: str
    address: str
    started: float
    instances: int = 0
    failed: int = 0
    conflicts: int = 0
    bytes: int = 0
    studies: dict[Path, int] = field(default_factory=dict)
    done: bool = False


@dataclass(frozen=True, slots=True)
class ListenConfig:
    root: Path
    host: str = "127.0.0.1"
    port: int = 11112
    aet: str = "SCANBEAM"
    timeout: float = 60.0  # idle association, ACSE and DIMSE


class _Listener:
    def __init__(self, config: ListenConfig, on_event: OnEvent) -> None:
        self.config = config
        self.sink = StudySink(config.root)
        self.on_event = on_event
        self._lock = threading.Lock()
        self._assocs: dict[int, _Assoc] = {}

    def emit(self, name: str, fields: dict[str, Any]) -> None:
        with self._lock:
            self.on_event(name, fields)

    def _get(self, event: Any) -> _Assoc:
        key = id(event.assoc)
        with self._lock:
            st = self._assocs.get(key)
            if st is None:
                req = event.assoc.requestor
                st = _Assoc(
                    calling_aet=clean_text(str(req.ae_title or "").strip(), 16),
                    address=f"{req.address}:{req.port}",
                    started=time.monotonic(),
                )
                self._assocs[key] = st
            return st

    def on_accepted(self, event: Any) -> None:
        self._get(event)

    def on_store(self, event: Any) -> int:
        st = self._get(event)
        try:
            src = event.dataset_path
        except AttributeError:
            return 0xC211
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        status, placed = self.sink.place(Path(src), sop_uid)
        with self._lock:
            if placed is None:
                st.failed += 1
            else:
                st.instances += 1
                st.bytes += placed.bytes
                st.conflicts += placed.duplicate == "conflict"
                st.studies[placed.study_dir] = st.studies.get(placed.study_dir, 0) + 1
        return status

    def on_rejected(self, event: Any) -> None:
        req = event.assoc.requestor
        prim = getattr(req, "primitive", None)
        called = clean_text(str(getattr(prim, "called_ae_title", "") or "").strip(), 16)
        with self._lock:
            self._assocs.pop(id(event.assoc), None)
        self.emit(
            "rejected",
            {
                "calling_aet": clean_text(str(req.ae_title or "").strip(), 16),
                "called_aet": called,
                "address": f"{req.address}:{req.port}",
            },
        )

    def on_end(self, event: Any, how: str) -> None:
        key = id(event.assoc)
        with self._lock:
            st = self._assocs.pop(key, None)
        if st is None or st.done:
            return
        st.done = True
        studies = []
        for study_dir, n in st.studies.items():
            total = sum(1 for _ in study_dir.rglob("*.dcm"))
            studies.append({"dir": str(study_dir), "received": n, "instances": total})
        self.emit(
            "association",
            {
                "calling_aet": st.calling_aet,
                "address": st.address,
                "end": how,
                "instances": st.instances,
                "failed": st.failed,
                "conflicts": st.conflicts,
                "bytes": st.bytes,
                "seconds": round(time.monotonic() - st.started, 3),
                "studies": studies,
            },
        )


_LOSSLESS_FIRST = (
    JPEGLSLossless,
    RLELossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEG2000Lossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000MCLossless,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
)


def preferred_syntaxes(known: Iterable[str]) -> list[str]:
    """Our order of preference as an SCP (pynetdicom picks, per context, the first of ours
    that the peer proposed): lossless compressed first, so a modality that offers the
    syntax its files are in keeps them as they are; then uncompressed; lossy syntaxes last,
    so that a peer offering both never has to compress lossily for us."""
    rest = [s for s in known if s not in _LOSSLESS_FIRST]
    return [*_LOSSLESS_FIRST, *rest]


def _clean_incoming(path: Path) -> None:
    """The spool folder, private to us, emptied of what a crashed run left."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    for leftover in path.iterdir():
        with contextlib.suppress(OSError):
            leftover.unlink()


def _association_thread_died(args: threading.ExceptHookArgs) -> None:
    """One line instead of a traceback when a pynetdicom association thread dies (its
    state machine raises on some peer misbehaviour, e.g. data after a rejection); the
    server and the other associations go on."""
    name = args.exc_type.__name__ if args.exc_type is not None else "error"
    sys.stderr.write(f"scanbeam: a DICOM association ended abnormally ({name}).\n")
    sys.stderr.flush()


def serve(config: ListenConfig, on_event: OnEvent, stop: threading.Event) -> None:
    """Accept C-STORE and C-ECHO until ``stop`` is set (or KeyboardInterrupt).

    Emits ``("listening", {host, port, aet, dir})`` once ready, then one
    ``("association", {...})`` per finished association.

    Raises:
        BeamError: the port cannot be opened or the output folder cannot be written.
    """
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    aet = validate_aet(config.aet, "AE title (--aet)")
    try:
        config.root.mkdir(parents=True, exist_ok=True)
        incoming = config.root / INCOMING
        _clean_incoming(incoming)
    except OSError as exc:
        raise BeamError(
            str(exc),
            user_message=f"Cannot write to {clean_text(str(config.root), 200)}: "
            f"{exc.strerror or exc}.",
        ) from None
    # pynetdicom spools each dataset with NamedTemporaryFile(): keep it next to the output
    # (same file system: a rename, not a copy; no PHI in the shared temp folder).
    tempfile.tempdir = str(incoming)
    _config.STORE_RECV_CHUNKED_DATASET = True

    threading.excepthook = _association_thread_died
    ae = AE(ae_title=aet)
    ae.require_called_aet = True
    ae.acse_timeout = config.timeout
    ae.dimse_timeout = config.timeout
    ae.network_timeout = config.timeout
    ae.maximum_pdu_size = 1 << 18  # advertised only: pynetdicom does not enforce it on receipt
    syntaxes = preferred_syntaxes(ALL_TRANSFER_SYNTAXES)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(str(cx.abstract_syntax), syntaxes)
    ae.add_supported_context(Verification)
    listener = _Listener(config, on_event)
    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, nodelay),
        (evt.EVT_ACCEPTED, listener.on_accepted),
        (evt.EVT_REJECTED, listener.on_rejected),
        (evt.EVT_C_STORE, listener.on_store),
        (evt.EVT_RELEASED, lambda e: listener.on_end(e, "released")),
        (evt.EVT_ABORTED, lambda e: listener.on_end(e, "aborted")),
        (evt.EVT_CONN_CLOSE, lambda e: listener.on_end(e, "closed")),
    ]
    try:
        server = ae.start_server((config.host, config.port), block=False, evt_handlers=handlers)
    except OSError as exc:
        raise BeamError(
            str(exc),
            user_message=f"Cannot listen on {config.host}:{config.port}: {exc.strerror or exc}.",
        ) from None
    assert server is not None  # block=False returns the server
    try:
        host, port = server.server_address[:2]
        listener.emit(
            "listening", {"host": host, "port": port, "aet": aet, "dir": str(config.root)}
        )
        while not stop.wait(0.2):
            pass
    finally:
        ae.shutdown()
