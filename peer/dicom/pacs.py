"""PACS bridge, sending side: C-STORE a study into a PACS (pynetdicom as the SCU).

``push`` reads only the file meta of every file first (small), builds presentation
contexts from the (SOP class, transfer syntax) pairs the study actually holds, then sends
one instance at a time:

* an accepted context with the file's own transfer syntax: the file's bytes are streamed
  from disk as they are (``STORE_SEND_CHUNKED_DATASET``), nothing is decoded;
* the syntax was refused but Explicit/Implicit VR Little Endian was accepted: an
  uncompressed file is re-encoded by pynetdicom (``converted``), a compressed one is
  decompressed with pydicom and its permissively licensed plugins (``decompressed``);
* neither: that instance fails with the reason, the others go on.

Each instance gets a result (stored / warning / failed with the DIMSE status code); the
caller prints them as they arrive. Association problems (refused connection, rejected
AE title, timeouts) raise a ``BeamError`` with one line for the user.

The context plan (`plan_contexts`) and the target parser (`parse_target`) are pure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from peer.dicom.summary import clean_text, is_part10
from peer.errors import BeamError, ConnectionFailed, PacsError, TransferTimeout
from peer.settings import DEFAULT_AET

__all__ = [
    "DEFAULT_AET",
    "DEFAULT_CALLED_AET",
    "MAX_CONTEXTS",
    "ContextSpec",
    "Instance",
    "InstanceResult",
    "PacsError",
    "PacsTarget",
    "PushResult",
    "collect",
    "echo",
    "nodelay",
    "parse_target",
    "plan_contexts",
    "push",
    "scan",
    "validate_aet",
]

DEFAULT_CALLED_AET = "ANY-SCP"
MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are odd numbers 1..255
NATIVE: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
UNCOMPRESSED = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian}
    | {DeflatedExplicitVRLittleEndian}
)
_AET_RE = re.compile(r"[A-Za-z0-9 _\-.]{1,16}")

log = logging.getLogger("scanbeam.pacs")


# --------------------------------------------------------------------------- target


@dataclass(frozen=True, slots=True)
class PacsTarget:
    host: str
    port: int
    aet: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port} ({self.aet})"


def validate_aet(text: str, what: str = "AE title") -> str:
    """A DICOM AE title we accept: 1 to 16 letters, digits, space, ``-``, ``_``, ``.``."""
    value = text.strip()
    if not _AET_RE.fullmatch(value):
        raise BeamError(
            f"bad AE title {text!r}",
            user_message=f"Bad {what} {clean_text(text, 40)!r}: use 1 to 16 letters, digits, "
            "spaces, '-', '_' or '.'.",
        )
    return value


def parse_target(text: str) -> PacsTarget:
    """``HOST:PORT[:AET]`` or ``[IPv6]:PORT[:AET]``; the AET defaults to ANY-SCP."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})(?::(.*))?", text) or re.fullmatch(
        r"([A-Za-z0-9.\-_]+):(\d{1,5})(?::(.*))?", text
    )
    if m is None:
        raise BeamError(
            f"bad PACS target {text!r}",
            user_message=f"Bad PACS address {clean_text(text, 60)!r}: use HOST:PORT or "
            "HOST:PORT:AET (for example 127.0.0.1:4242:ORTHANC).",
        )
    port = int(m.group(2))
    if not 0 < port < 65536:
        raise BeamError(f"bad port {port}", user_message=f"Bad PACS port {port}: use 1 to 65535.")
    aet = m.group(3)
    called = validate_aet(aet, "called AE title") if aet is not None else DEFAULT_CALLED_AET
    return PacsTarget(m.group(1), port, called)


# --------------------------------------------------------------------------- scanning


@dataclass(frozen=True, slots=True)
class Instance:
    """One DICOM file to send (file meta only; the dataset stays on disk)."""

    path: Path
    rel: str
    sop_class: str
    sop_uid: str
    syntax: str
    size: int


def collect(paths: Sequence[Path]) -> list[tuple[str, Path]]:
    """Every regular file under ``paths`` (sorted), labelled relative to its argument's
    parent. Hidden entries (ScanBeam's partial files) are left out."""
    out: list[tuple[str, Path]] = []
    for top in paths:
        if top.is_file():
            out.append((top.name, top))
            continue
        if not top.is_dir():
            raise BeamError(
                f"not found: {top}",
                user_message=f"{clean_text(str(top), 200)} is not a file or folder.",
            )
        base = top.parent
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                p = Path(dirpath) / name
                if p.is_file() and not p.is_symlink():
                    out.append((p.relative_to(base).as_posix(), p))
    return out


def _is_part10(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return is_part10(fh.read(132))
    except OSError:
        return False


def scan(
    files: Iterable[tuple[str, Path]],
) -> tuple[list[Instance], list[str], list[tuple[str, str]]]:
    """Read the file meta of each file: (instances, not-DICOM labels, (label, reason) of
    DICOM files whose file meta is unusable)."""
    instances: list[Instance] = []
    skipped: list[str] = []
    broken: list[tuple[str, str]] = []
    for rel, path in files:
        if not _is_part10(path):
            skipped.append(rel)
            continue
        try:
            meta = read_file_meta_info(path)
            sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
            sop_uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
            syntax = str(meta.get("TransferSyntaxUID", "") or "")
        except Exception as exc:  # pydicom raises many kinds on malformed headers
            broken.append((rel, f"unreadable file meta ({type(exc).__name__})"))
            continue
        if not (sop_class and sop_uid and syntax):
            broken.append((rel, "file meta lacks the SOP class, instance or transfer syntax"))
            continue
        instances.append(Instance(path, rel, sop_class, sop_uid, syntax, path.stat().st_size))
    return instances, skipped, broken


# --------------------------------------------------------------------------- contexts


@dataclass(frozen=True, slots=True)
class ContextSpec:
    """A presentation context to propose: one SOP class, transfer syntaxes in order."""

    sop_class: str
    syntaxes: tuple[str, ...]


def plan_contexts(
    pairs: Iterable[tuple[str, str]], limit: int = MAX_CONTEXTS
) -> list[list[ContextSpec]]:
    """Presentation contexts for the (SOP class, transfer syntax) pairs present, split
    into as few associations as the ``limit`` per association allows.

    Per SOP class: one context per transfer syntax present, each alone so that the PACS
    accepts or refuses it on its own (a context listing several syntaxes lets the PACS pick
    an uncompressed one and would force needless decompression), plus one fallback context
    with Explicit and Implicit VR Little Endian (the latter every SCP must support). A SOP
    class never straddles two associations unless it alone needs more than ``limit``.
    """
    if limit < 2:
        raise ValueError("limit must be >= 2")
    by_class: dict[str, dict[str, None]] = {}
    for sop_class, syntax in pairs:
        by_class.setdefault(sop_class, {})[syntax] = None
    groups: list[list[ContextSpec]] = []
    for sop_class, syntaxes in by_class.items():
        exact = [ContextSpec(sop_class, (s,)) for s in syntaxes if s not in NATIVE]
        exact += [ContextSpec(sop_class, (s,)) for s in NATIVE if s in syntaxes]
        fallback = ContextSpec(sop_class, NATIVE)
        step = limit - 1
        for i in range(0, max(len(exact), 1), step):
            groups.append([*exact[i : i + step], fallback])
    batches: list[list[ContextSpec]] = []
    for group in groups:
        if batches and len(batches[-1]) + len(group) <= limit:
            batches[-1].extend(group)
        else:
            batches.append(list(group))
    return batches


def _batch_of(batches: Sequence[Sequence[ContextSpec]], inst: Instance) -> int:
    """The association an instance goes in: where its exact context is, else where the
    fallback of its SOP class is."""
    fallback = -1
    for i, batch in enumerate(batches):
        for cx in batch:
            if cx.sop_class != inst.sop_class:
                continue
            if cx.syntaxes == (inst.syntax,):
                return i
            if fallback < 0 and cx.syntaxes == NATIVE:
                fallback = i
    return max(fallback, 0)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class InstanceResult:
    """What happened to one file. ``outcome``: stored, warning, failed."""

    rel: str
    sop_uid: str
    outcome: str
    status: int | None  # the DIMSE status; None when nothing was answered
    mode: str  # as-is, converted, decompressed; "" when nothing was sent
    syntax: str  # the transfer syntax sent
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.rel,
            "sop_uid": self.sop_uid,
            "outcome": self.outcome,
            "status": f"0x{self.status:04X}" if self.status is not None else None,
            "mode": self.mode,
            "syntax": self.syntax,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class PushResult:
    target: PacsTarget
    results: tuple[InstanceResult, ...]
    skipped: tuple[str, ...]  # files that are not DICOM Part 10
    bytes: int
    seconds: float
    associations: int

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    def mode(self, mode: str) -> int:
        return sum(1 for r in self.results if r.mode == mode and r.outcome != "failed")

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "pacs": str(self.target),
            "instances": len(self.results),
            "stored": self.count("stored"),
            "warnings": self.count("warning"),
            "failed": self.count("failed"),
            "decompressed": self.mode("decompressed"),
            "converted": self.mode("converted"),
            "skipped": len(self.skipped),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "associations": self.associations,
        }

    def summary_line(self) -> str:
        n = len(self.results)
        done = self.count("stored") + self.count("warning")
        extra = []
        if self.count("warning"):
            extra.append(f"{self.count('warning')} with warnings")
        if self.mode("decompressed"):
            extra.append(
                f"{self.mode('decompressed')} decompressed to Explicit VR Little Endian "
                "because the PACS refused their transfer syntax"
            )
        if self.mode("converted"):
            extra.append(f"{self.mode('converted')} re-encoded to an accepted uncompressed syntax")
        more = f" ({'; '.join(extra)})" if extra else ""
        skipped = f"; {len(self.skipped)} non-DICOM file(s) not sent" if self.skipped else ""
        failed = f"; {self.count('failed')} FAILED" if self.count("failed") else ""
        return (
            f"PACS {self.target}: stored {done} of {n} instances{more}{failed}{skipped}, "
            f"in {self.seconds:.1f} s."
        )


def _status_text(code: int) -> tuple[str, str]:
    """(outcome, description) of a C-STORE response status."""
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

    category = code_to_category(code)
    described = STORAGE_SERVICE_CLASS_STATUS.get(code)
    text = described[1] if described and described[1] else category
    if category == "Success":
        return "stored", text
    if category == "Warning":
        return "warning", text
    return "failed", text


# --------------------------------------------------------------------------- network


def _why_no_connection(target: PacsTarget, timeout: float) -> str:
    """After pynetdicom could not connect: one probe to say why in words."""
    where = f"{target.host}:{target.port}"
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout):
            return f"Cannot connect to the PACS at {where}."
    except ConnectionRefusedError:
        return f"Nothing is listening at {where} (connection refused): check HOST:PORT."
    except TimeoutError:
        return f"No answer from {where} within {timeout:g} s: check the address and firewall."
    except socket.gaierror:
        return f"Unknown PACS host {clean_text(target.host, 80)!r}."
    except OSError as exc:
        return f"Cannot connect to the PACS at {where}: {exc.strerror or exc}."


def nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: TCP_NODELAY on the association's socket (pynetdicom leaves
    Nagle on; small PDUs then wait for delayed ACKs)."""
    with contextlib.suppress(AttributeError, OSError):
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _make_ae(calling_aet: str, timeout: float) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=validate_aet(calling_aet, "calling AE title"))
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.maximum_pdu_size = 0  # we accept any PDU size in answers
    return ae


def _associate(ae: Any, target: PacsTarget, timeout: float, offered: int) -> Any:
    from pynetdicom import evt

    opened = threading.Event()

    def on_open(event: Any) -> None:
        opened.set()
        nodelay(event)

    assoc = ae.associate(
        target.host,
        target.port,
        ae_title=target.aet,
        evt_handlers=[(evt.EVT_CONN_OPEN, on_open)],
    )
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        prim = getattr(assoc.acceptor, "primitive", None)
        reason = clean_text(getattr(prim, "reason_str", "") or "", 80)
        raise PacsError(
            f"association rejected: {reason}",
            user_message=f"The PACS at {target} rejected the association"
            f"{f' ({reason})' if reason else ''}: check the called AE title (HOST:PORT:AET) and "
            f"that the PACS accepts our AE title {ae.ae_title!r} (--aet).",
        )
    if not opened.is_set():
        raise ConnectionFailed("connect failed", user_message=_why_no_connection(target, timeout))
    if assoc.is_aborted and not assoc.accepted_contexts and assoc.acceptor.primitive is not None:
        raise PacsError(
            "no accepted contexts",
            user_message=f"The PACS at {target} accepted none of the {offered} SOP class and "
            "transfer syntax combinations offered: it does not store these kinds of objects.",
        )
    raise TransferTimeout(
        "association not established",
        user_message=f"The PACS at {target} did not complete the association within "
        f"{timeout:g} s (or closed the connection).",
    )


def echo(target: PacsTarget, *, calling_aet: str = DEFAULT_AET, timeout: float = 30.0) -> None:
    """C-ECHO the PACS: raises the same one-line errors as `push` when it cannot be reached."""
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = _make_ae(calling_aet, timeout)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, target, timeout, 1)
    try:
        status = assoc.send_c_echo()
        code = getattr(status, "Status", None)
        if code != 0x0000:
            raise PacsError(
                f"echo status {code}",
                user_message=f"The PACS at {target} did not answer the verification (C-ECHO).",
            )
    finally:
        if assoc.is_established:
            assoc.release()


class _Sender:
    """Sends one instance over an established association."""

    def __init__(self, assoc: Any) -> None:
        self.assoc = assoc
        self.accepted: dict[str, set[str]] = {}
        for cx in assoc.accepted_contexts:
            self.accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))

    def send(self, inst: Instance) -> InstanceResult:
        from pynetdicom import _config

        accepted = self.accepted.get(inst.sop_class, set())
        native = accepted & set(NATIVE)

        def failed(detail: str, mode: str = "", syntax: str = "") -> InstanceResult:
            return InstanceResult(inst.rel, inst.sop_uid, "failed", None, mode, syntax, detail)

        if not accepted:
            return failed(f"the PACS refused SOP class {UID(inst.sop_class).name}")
        if inst.syntax in accepted:
            mode, syntax = "as-is", inst.syntax
            _config.STORE_SEND_CHUNKED_DATASET = True  # stream the file's own bytes
            payload: Any = inst.path
        elif not native:
            return failed(f"the PACS refused {UID(inst.syntax).name} and every fallback syntax")
        elif inst.syntax in UNCOMPRESSED:
            if inst.syntax == ExplicitVRBigEndian:
                return failed("the PACS refused Explicit VR Big Endian; conversion is not done")
            mode, syntax = "converted", sorted(native)[0]
            payload = self._read(inst)
            if isinstance(payload, InstanceResult):
                return payload
        else:
            mode, syntax = "decompressed", ExplicitVRLittleEndian
            payload = self._read(inst)
            if isinstance(payload, InstanceResult):
                return payload
            try:
                payload.decompress(generate_instance_uid=False)  # same instance, decoded
            except Exception as exc:  # a missing or failing decoder plugin
                return failed(
                    f"the PACS refused {UID(inst.syntax).name} and it could not be decompressed "
                    f"({clean_text(str(exc), 120)})"
                )
            if ExplicitVRLittleEndian not in native:
                syntax = ImplicitVRLittleEndian
        try:
            status = self.assoc.send_c_store(payload)
        except (ValueError, AttributeError, RuntimeError, OSError) as exc:
            return failed(f"could not be sent ({clean_text(str(exc), 160)})", mode, syntax)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
        code = getattr(status, "Status", None)
        if code is None:
            return failed("no answer from the PACS (timeout or connection lost)", mode, syntax)
        outcome, text = _status_text(int(code))
        comment = clean_text(str(getattr(status, "ErrorComment", "") or ""), 120)
        detail = f"{text}{f': {comment}' if comment else ''}"
        return InstanceResult(inst.rel, inst.sop_uid, outcome, int(code), mode, syntax, detail)

    @staticmethod
    def _read(inst: Instance) -> Any:
        try:
            return dcmread(inst.path)
        except Exception as exc:
            return InstanceResult(
                inst.rel,
                inst.sop_uid,
                "failed",
                None,
                "",
                "",
                f"unreadable DICOM ({type(exc).__name__})",
            )


def push(
    paths: Sequence[Path] | Sequence[tuple[str, Path]],
    target: PacsTarget,
    *,
    calling_aet: str = DEFAULT_AET,
    timeout: float = 30.0,
    on_result: Callable[[InstanceResult], None] | None = None,
    limit: int = MAX_CONTEXTS,
) -> PushResult:
    """C-STORE every DICOM file of ``paths`` (folders are walked) into the PACS.

    Args:
        paths: Files or folders, or (label, path) pairs.
        target: Where to send.
        calling_aet: Our AE title.
        timeout: Seconds for connecting, the association and each response.
        on_result: Called with each instance's result as it comes.
        limit: Presentation contexts per association (at most 128).

    Returns:
        Every instance's result; check ``.ok``.

    Raises:
        BeamError: the first association could not be made (nothing was sent); the
            message says why in one line.
    """
    started = time.monotonic()
    labelled: list[tuple[str, Path]] = []
    for item in paths:
        if isinstance(item, tuple):
            labelled.append(item)
        else:
            labelled.extend(collect([item]))
    instances, skipped, broken = scan(labelled)
    results: list[InstanceResult] = []

    def record(r: InstanceResult) -> None:
        results.append(r)
        if on_result is not None:
            on_result(r)

    for rel, why in broken:
        record(InstanceResult(rel, "", "failed", None, "", "", why))
    batches = plan_contexts(((i.sop_class, i.syntax) for i in instances), min(limit, 128))
    per_batch: list[list[Instance]] = [[] for _ in batches]
    for inst in instances:
        per_batch[_batch_of(batches, inst)].append(inst)
    associations = 0
    sent_bytes = 0
    tried = False
    for batch, members in zip(batches, per_batch, strict=True):
        if not members:
            continue
        ae = _make_ae(calling_aet, timeout)
        for cx in batch:
            ae.add_requested_context(cx.sop_class, list(cx.syntaxes))
        try:
            assoc = _associate(ae, target, timeout, len(batch))
        except BeamError as exc:
            if not tried:
                raise
            for inst in members:
                record(
                    InstanceResult(inst.rel, inst.sop_uid, "failed", None, "", "", exc.user_message)
                )
            continue
        tried = True
        associations += 1
        sender = _Sender(assoc)
        try:
            for inst in members:
                if not assoc.is_established:
                    record(
                        InstanceResult(
                            inst.rel, inst.sop_uid, "failed", None, "", "", "association lost"
                        )
                    )
                    continue
                r = sender.send(inst)
                if r.outcome != "failed":
                    sent_bytes += inst.size
                record(r)
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()
    log.debug("pushed %d instances in %d associations", len(results), associations)
    return PushResult(
        target=target,
        results=tuple(results),
        skipped=tuple(skipped),
        bytes=sent_bytes,
        seconds=time.monotonic() - started,
        associations=associations,
    )
