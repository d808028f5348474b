"""De-identified copies as a streaming transform of the original files.

For each DICOM file the header (everything before the pixel data) is parsed with
pydicom (large values deferred), de-identified by the profile engine and written back to
bytes; the pixel data element is then streamed raw from the original file at its offset
(`peer.files.Layout`), and elements after it, if any, are de-identified too. The result
is deterministic, so the sizes in the offer come from one pass and the same bytes are
regenerated while sending. Memory per file is bounded by its header, never its pixels.
The original files are opened read-only and never modified; nothing is written to a
temporary copy.
"""

from __future__ import annotations

import io
import json
import os
import struct
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset, read_partial
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from peer.dicom.deid.engine import Deidentifier, Report
from peer.dicom.deid.profile import EDITION, Profile
from peer.errors import BeamError, DestinationExists, LocalFileError, SourceError
from peer.files import Layout, SourceFile

__all__ = [
    "REPORT_NAME",
    "DeidTransform",
    "NotDicom",
    "Prepared",
    "RiskNotAccepted",
    "deidentify_folder",
    "layout_file",
    "prepare",
]

REPORT_NAME = "DEIDENTIFICATION-REPORT.json"
_DEFER = 64 * 1024
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
_DEFLATED = "1.2.840.10008.1.2.1.99"
_DICOMDIR = "1.2.840.10008.1.3.10"
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV"}
_LONG_VRS.add(b"UV")
_PIXEL_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"}
_UNDEFINED = 0xFFFFFFFF
_SC_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
_US_PREFIXES = ("1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3.1")
_DOC_PREFIX = "1.2.840.10008.5.1.4.1.1.104"


class NotDicom(BeamError):
    """A file that is not a DICOM instance this tool can de-identify."""

    code = "not-dicom"
    exit_code = 7


class RiskNotAccepted(BeamError):
    code = "deid-risk"
    exit_code = 6


def _stop(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


def _risks(ds: Dataset) -> list[str]:
    """Why the pixel data or the content may carry identifiers de-identification of the
    header cannot remove (nothing is read from pixel data)."""

    def text(keyword: str) -> str:
        try:
            value = ds.get(keyword)
        except Exception:
            return ""
        if value is None:
            return ""
        if isinstance(value, MultiValue | list | tuple):
            return "\\".join(str(v) for v in value)
        return str(value)

    out: list[str] = []
    sop = text("SOPClassUID") or str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
    burned = text("BurnedInAnnotation").strip().upper()
    if burned and burned != "NO":
        out.append("BurnedInAnnotation is not NO")
    if text("Modality").strip().upper() == "US" or sop.startswith(_US_PREFIXES):
        out.append("ultrasound (text is often burned into the pixels)")
    if sop.startswith(_SC_PREFIX):
        out.append("secondary capture (a screenshot may show identifiers)")
    if "SAVE" in [p.strip().upper() for p in text("ImageType").split("\\")]:
        out.append("ImageType contains SAVE (a saved screen)")
    if sop.startswith(_DOC_PREFIX) or 0x00420011 in ds:
        out.append("encapsulated document (replaced by a dummy; check what remains)")
    return out


def _pixel_end(fd: int, start: int, size: int, little: bool, implicit: bool) -> int:
    """Offset just past the pixel data element that starts at ``start``."""
    e = "<" if little else ">"
    hdr = os.pread(fd, 12, start)
    if len(hdr) < 8:
        raise NotDicom("short pixel header", user_message="the pixel data is cut short")
    if implicit:
        (length,) = struct.unpack(e + "I", hdr[4:8])
        pos = start + 8
    elif hdr[4:6] not in _PIXEL_VRS:
        raise NotDicom(
            "pixel VR", user_message="its pixel data is not encoded as its transfer syntax says"
        )
    elif hdr[4:6] in _LONG_VRS:
        if len(hdr) < 12:
            raise NotDicom("short pixel header", user_message="the pixel data is cut short")
        (length,) = struct.unpack(e + "I", hdr[8:12])
        pos = start + 12
    else:
        (length,) = struct.unpack(e + "H", hdr[6:8])
        pos = start + 8
    if length != _UNDEFINED:
        if pos + length > size:
            raise NotDicom("pixel data cut", user_message="the pixel data is cut short")
        return int(pos + length)
    while pos + 8 <= size:  # encapsulated: items, then the sequence delimiter
        item = os.pread(fd, 8, pos)
        group, elem, ilen = struct.unpack(e + "HHI", item)
        pos += 8
        if (group, elem) == (0xFFFE, 0xE0DD):
            return int(pos)
        if (group, elem) != (0xFFFE, 0xE000) or ilen == _UNDEFINED:
            break
        pos += ilen
    raise NotDicom("bad encapsulation", user_message="the pixel data fragments are malformed")


def layout_file(
    path: Path, deid: Deidentifier, report: Report
) -> tuple[Layout, Dataset, list[str]]:
    """De-identify one file as a layout (new header, raw pixel range, new trailer).

    Returns:
        The layout, the de-identified header dataset, and the risks found.

    Raises:
        NotDicom: not a DICOM Part 10 instance (or a DICOMDIR, or deflated).
        SourceError: the file cannot be read.
    """
    try:
        fp = path.open("rb")
    except OSError as exc:
        raise SourceError(str(exc), user_message=f"Cannot read {str(path)!r}.") from None
    with fp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            size = os.fstat(fp.fileno()).st_size
            ds = read_partial(fp, stop_when=_stop, defer_size=_DEFER, force=False)
            pix_start = fp.tell()
            meta = ds.file_meta
            syntax = str(meta.get("TransferSyntaxUID", "") or "")
            sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
        except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, struct.error) as exc:
            raise NotDicom(str(exc), user_message="not a DICOM file") from None
        except OSError as exc:
            raise SourceError(str(exc), user_message=f"Cannot read {str(path)!r}.") from None
        if not syntax or sop_class == _DICOMDIR:
            raise NotDicom("no syntax", user_message="not a DICOM instance (or a DICOMDIR)")
        if syntax == _DEFLATED:
            raise NotDicom("deflated", user_message="deflated DICOM cannot be streamed")
        little = syntax != "1.2.840.10008.1.2.2"
        implicit = syntax == "1.2.840.10008.1.2"
        risks = _risks(ds)
        ctx = deid.apply(ds, report)
        pix_end = pix_start
        tail = b""
        if pix_start < size:
            pix_end = _pixel_end(fp.fileno(), pix_start, size, little, implicit)
            if pix_end < size:
                fp.seek(pix_end)
                try:
                    trailer = read_dataset(fp, implicit, little, size - pix_end, defer_size=_DEFER)
                except Exception as exc:
                    raise NotDicom(str(exc), user_message="unreadable data after pixels") from None
                deid.apply(trailer, report, mark=False, ctx=ctx)
                buf = DicomBytesIO()
                buf.is_little_endian = little
                buf.is_implicit_VR = implicit
                write_dataset(buf, trailer)
                tail = buf.getvalue()
        ds.preamble = b"\0" * 128
        head = io.BytesIO()
        try:
            dcmwrite(head, ds, enforce_file_format=True)
        except Exception as exc:
            raise NotDicom(str(exc), user_message="its header cannot be rewritten") from None
    found = ctx.residual(head.getvalue() + tail)
    if found:
        risks.append(
            f"{', '.join(found)} still in the header (an attribute the table does not list); "
            "check the report"
        )
    return Layout(head.getvalue(), pix_start, pix_end - pix_start, tail), ds, risks


@dataclass(frozen=True, slots=True)
class DeidTransform:
    """The `peer.files.FileTransform` of a de-identified send (regenerates the layout)."""

    deid: Deidentifier

    def layout(self, path: Path) -> Layout:
        return layout_file(path, self.deid, Report())[0]


@dataclass(slots=True)
class Prepared:
    """A de-identified selection ready to offer: sources with transforms, the summary of
    the de-identified headers, and what to show and log."""

    profile: Profile
    sources: list[SourceFile]
    summary: dict[str, Any]
    report: Report
    risks: list[tuple[str, list[str]]] = field(default_factory=list)  # original rel
    excluded: list[tuple[str, str]] = field(default_factory=list)  # original rel, why
    renamed: dict[str, str] = field(default_factory=dict)  # new rel -> original rel
    deidentifier: Deidentifier | None = None

    def remap_uid(self, uid: str) -> str:
        """The UID the de-identified copies carry in place of ``uid`` (series previews)."""
        if self.deidentifier is None or self.profile.retain_uids:
            return uid
        return self.deidentifier.new_uid(uid)

    @property
    def label(self) -> str:
        """For the disclosure log: profile and table edition."""
        return f"{self.profile.name} ({EDITION})"

    def report_doc(self) -> dict[str, Any]:
        """The JSON report: profile, options, codes, per-tag changes, counts; no values
        and no original file names (they may hold names)."""
        rows = self.report.rows()
        new = {old: rel for rel, old in self.renamed.items()}
        return {
            "tool": "scanbeam deidentify",
            "table": EDITION,
            "profile": self.profile.name,
            "description": self.profile.describe(),
            "method_codes": [
                {"code": c, "scheme": "DCM", "meaning": m} for c, m in self.profile.codes
            ],
            "instances": self.report.datasets,
            "files": len(self.sources),
            "excluded_files": len(self.excluded),
            "risky_files": len(self.risks),
            "changed_elements": sum(r["count"] for r in rows),
            "risks": [
                {"file": new.get(rel, "(left out)"), "reasons": reasons}
                for rel, reasons in self.risks
            ],
            "changes": rows,
        }


def _new_rel(study_ix: int, series_ix: int, n: int) -> str:
    return f"deidentified/study{study_ix:02d}/series{series_ix:03d}/{n:05d}.dcm"


def prepare(
    sources: Sequence[SourceFile],
    deid: Deidentifier,
    *,
    include_other: bool = False,
) -> Prepared:
    """One pass over the selection: new names and sizes, the summary, the report, risks.

    Non-DICOM files are excluded unless ``include_other`` (they are then sent as they
    are, under their base name, and listed as risks). Files are renamed
    ``deidentified/studyNN/seriesNNN/NNNNN.dcm``: original names often hold names.

    Raises:
        SourceError: a file cannot be read.
        NotDicom: nothing DICOM is left to send.
    """
    from peer.dicom.summary import summarize

    report = Report()
    transform = DeidTransform(deid)
    out: list[SourceFile] = []
    prepared = Prepared(deid.profile, out, {}, report, deidentifier=deid)
    studies: dict[str, tuple[int, dict[str, list[int]]]] = {}

    def gen() -> Iterator[tuple[str, Path | tuple[int, bytes]]]:
        for src in sources:
            try:
                layout, ds, risks = layout_file(src.path, deid, report)
            except NotDicom as exc:
                if not include_other:
                    prepared.excluded.append((src.rel, exc.user_message))
                    continue
                rel = f"deidentified/other/{src.rel.rsplit('/', 1)[-1]}"
                prepared.risks.append((src.rel, ["not DICOM: sent as it is, not de-identified"]))
                out.append(
                    SourceFile(
                        rel,
                        src.path,
                        src.size,
                        src.mtime_ns,
                        sent_mtime_ns=deid.pseudo_mtime_ns(rel, src.mtime_ns),
                    )
                )
                prepared.renamed[rel] = src.rel
                yield rel, src.path
                continue
            study_uid = str(ds.get("StudyInstanceUID", "") or "")
            series_uid = str(ds.get("SeriesInstanceUID", "") or "")
            study_ix, series = studies.setdefault(study_uid, (len(studies) + 1, {}))
            counter = series.setdefault(series_uid, [len(series) + 1, 0])
            counter[1] += 1
            rel = _new_rel(study_ix, counter[0], counter[1])
            if risks:
                prepared.risks.append((src.rel, risks))
            out.append(
                SourceFile(
                    rel,
                    src.path,
                    layout.size,
                    src.mtime_ns,
                    transform=transform,
                    source_size=src.size,
                    sent_mtime_ns=deid.pseudo_mtime_ns(rel, src.mtime_ns),
                )
            )
            prepared.renamed[rel] = src.rel
            yield rel, (layout.size, layout.head)

    prepared.summary = summarize(gen())
    names = {f.rel.casefold() for f in out}
    if len(names) != len(out):
        raise SourceError(
            "duplicate names", user_message="Two files not de-identified share a name."
        )
    if not any(f.transform is not None for f in out):
        raise NotDicom(
            "nothing to send",
            user_message="No DICOM file to de-identify in the selection "
            f"({len(prepared.excluded)} other file(s) left out).",
        )
    return prepared


def deidentify_folder(prepared: Prepared, dest: Path) -> list[Path]:
    """Write the de-identified copies under ``dest`` (never overwriting) and the report.

    Raises:
        DestinationExists: a file to write exists already.
        LocalFileError, SourceError: reading or writing failed.
    """
    from peer.files import SourceReader

    written: list[Path] = []
    reader = SourceReader(prepared.sources, block=4 << 20)
    try:
        for ix, src in enumerate(prepared.sources):
            target = dest.joinpath(*src.rel.split("/"))
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                raise DestinationExists(
                    str(target), user_message=f"{str(target)!r} exists; nothing was overwritten."
                ) from None
            except OSError as exc:
                raise LocalFileError(
                    str(exc), user_message=f"Cannot write {str(target)!r}: {exc.strerror}."
                ) from None
            with os.fdopen(fd, "wb") as fh:
                pos = 0
                while pos < src.size:
                    n = min(4 << 20, src.size - pos)
                    fh.write(reader.read(ix, pos, n))
                    pos += n
            reader.check_unchanged(ix)
            written.append(target)
    finally:
        reader.close()
    report_path = dest / REPORT_NAME
    try:
        fd = os.open(report_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise DestinationExists(
            str(report_path), user_message=f"{str(report_path)!r} exists; nothing overwritten."
        ) from None
    with os.fdopen(fd, "w") as fh:
        json.dump(prepared.report_doc(), fh, indent=1)
        fh.write("\n")
    return written
