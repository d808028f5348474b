"""The receiver's completeness check of a received study.

`check_study` re-reads the header of every received file (never the pixel data: for the
native transfer syntaxes only the pixel data element's header is read, to learn its
length) and compares what arrived with the study summary that travelled in the
encrypted manifest (`peer.dicom.summary`): per-series SOP Instance UIDs, unique SOP
Instance UIDs, one study per series and one patient per study, file meta that matches
the dataset, and native pixel data of the length the header implies.

Problems are short plain-word lines naming series by number and description only.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from peer import warm
from peer.dicom.summary import clean_text, is_part10

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pydicom.tag import BaseTag

__all__ = ["Completeness", "check_study", "format_completeness"]

Status = Literal["complete", "incomplete", "conflicting", "not-dicom"]
MAX_PROBLEMS = 20

_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "PatientID",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
)
_TAGS: dict[str, BaseTag] = {}  # filled when the first DICOM file is read (`_pydicom`)
_FIRST_PIXEL_TAG = 0x7FE00008  # Float Pixel Data, Double Float Pixel Data, Pixel Data
_PIXEL_DATA = 0x7FE00010
_DEFER_SIZE = 1024
# native (uncompressed) syntaxes: (little endian, implicit VR)
_NATIVE = {
    "1.2.840.10008.1.2": (True, True),
    "1.2.840.10008.1.2.1": (True, False),
    "1.2.840.10008.1.2.2": (False, False),
}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}
_UV = b"UV"

# problem kinds; the first ones make the study "conflicting", the others "incomplete"
_CONFLICT_KINDS = {
    "duplicate": "{n} SOP Instance UID{s} shared by files with different content",
    "same_copy": "{n} image{s} received twice (identical copies)",
    "unexpected": "{n} image{s} not listed in the offer",
    "two_studies": "its images name {n} different studies",
    "two_patients": "{n} different patient IDs in one study",
    "meta": "{n} file{s} whose file meta does not match the dataset",
    "pixel_long": "{n} image{s} with more pixel data than the header describes",
}
_INCOMPLETE_KINDS = {
    "missing": "{n} image{s} missing",
    "pixel_short": "{n} image{s} with pixel data cut short",
    "no_uid": "{n} file{s} without a SOP Instance UID",
    "unreadable": "{n} file{s} could not be read as DICOM",
}
_NOT_CONFLICT = {"same_copy"}


@dataclass(frozen=True, slots=True)
class Completeness:
    """The result of `check_study`.

    Attributes:
        status: ``complete``, ``incomplete``, ``conflicting`` or ``not-dicom``.
        missing: Images listed in the offer's summary but not received.
        problems: At most `MAX_PROBLEMS` short lines, worst first.
        series: Series received.
        images: DICOM images received.
        missing_series: Labels (``"series 2"``) of the series with missing images.
    """

    status: Status
    missing: int
    problems: tuple[str, ...]
    series: int
    images: int
    missing_series: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "missing": self.missing,
            "problems": list(self.problems),
            "series": self.series,
            "images": self.images,
            "missing_series": list(self.missing_series),
        }


@dataclass(slots=True)
class _File:
    path: Path
    size: int
    sop_uid: str
    sop_class: str
    study_uid: str
    series_uid: str
    series_number: int | None
    series_description: str
    patient_id: str
    meta_ok: bool
    pixel: str  # "", "short" or "long"


def _pydicom() -> Any:
    """pydicom's `read_partial`, imported only once a received file has the Part 10 marker
    (a transfer without DICOM files never imports pydicom, `peer.warm`)."""
    warm.need("pydicom")
    from pydicom.filereader import read_partial
    from pydicom.tag import Tag

    if not _TAGS:
        _TAGS.update({kw: Tag(kw) for kw in _KEYWORDS})
    return read_partial


def _value(ds: Dataset, keyword: str) -> object:
    from pydicom.dataelem import RawDataElement

    try:
        elem = ds.get_item(_TAGS[keyword], keep_deferred=True)
        if elem is None or (isinstance(elem, RawDataElement) and elem.value is None):
            return None
        value: object = ds[_TAGS[keyword]].value
    except Exception:
        return None
    return value


def _text(ds: Dataset, keyword: str) -> str:
    value = _value(ds, keyword)
    return "" if value is None else str(value).strip().rstrip("\x00").strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _value(ds, keyword)
    try:
        return None if value is None or value == "" else int(str(value).strip())
    except ValueError:
        return None


def _stop(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) >= _FIRST_PIXEL_TAG


def _pixel_length(fp: Any, little: bool, implicit: bool) -> tuple[int, int] | None:
    """(value offset, length) of the Pixel Data element at the file position, or None."""
    start = fp.tell()
    head = fp.read(8)
    if len(head) < 8:
        return None
    order = "<" if little else ">"
    group, elem = struct.unpack(order + "HH", head[:4])
    if (group << 16 | elem) != _PIXEL_DATA:
        return None
    if implicit:
        (length,) = struct.unpack(order + "I", head[4:8])
        return start + 8, length
    vr = head[4:6]
    if vr in _LONG_VRS or vr == _UV:
        more = fp.read(4)
        if len(more) < 4:
            return None
        (length,) = struct.unpack(order + "I", more)
        return start + 12, length
    (length,) = struct.unpack(order + "H", head[6:8])
    return start + 8, length


def _expected_pixels(ds: Dataset) -> int | None:
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    bits = _int(ds, "BitsAllocated")
    if not rows or not cols or not bits:
        return None
    samples = _int(ds, "SamplesPerPixel") or 1
    frames = _int(ds, "NumberOfFrames") or 1
    if _text(ds, "PhotometricInterpretation") == "YBR_FULL_422" and samples == 3:
        n_bits = rows * cols * frames * 2 * bits  # two samples per pixel on average
    else:
        n_bits = rows * cols * samples * frames * bits
    n = (n_bits + 7) // 8
    return n + (n & 1)


def _read(path: Path) -> _File | Literal["unreadable"] | None:
    """Header of one received file; None if it is not a DICOM instance (no preamble and
    "DICM", or no study or series UID, like a DICOMDIR), "unreadable" if it is
    DICOM-looking but could not be parsed."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        with path.open("rb") as fp:
            if not is_part10(fp.read(132)):
                return None
            fp.seek(0)
            read_partial = _pydicom()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = read_partial(
                    fp,
                    stop_when=_stop,
                    defer_size=_DEFER_SIZE,
                    force=False,
                    specific_tags=list(_TAGS.values()),
                )
            if fp.tell() > st.st_size:
                return "unreadable"
            meta = ds.file_meta
            syntax = str(meta.get("TransferSyntaxUID", "") or "").strip()
            study_uid, series_uid = _text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID")
            if not study_uid or not series_uid or not syntax:
                return None  # a DICOMDIR or another non-image object: an "other" file
            sop_uid = _text(ds, "SOPInstanceUID")
            sop_class = _text(ds, "SOPClassUID")
            meta_uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "").strip()
            meta_class = str(meta.get("MediaStorageSOPClassUID", "") or "").strip()
            pixel = ""
            native = _NATIVE.get(syntax)
            if native is not None:
                where = _pixel_length(fp, *native)
                expected = _expected_pixels(ds)
                if where is not None and expected is not None:
                    offset, length = where
                    if length == 0xFFFFFFFF or offset + length > st.st_size:
                        pixel = "short"
                    elif length < expected:
                        pixel = "short"
                    elif length > expected:
                        pixel = "long"
    except Exception:
        return "unreadable"
    return _File(
        path=path,
        size=st.st_size,
        sop_uid=sop_uid,
        sop_class=sop_class,
        study_uid=study_uid,
        series_uid=series_uid,
        series_number=_int(ds, "SeriesNumber"),
        series_description=clean_text(_text(ds, "SeriesDescription"), 40),
        patient_id=_text(ds, "PatientID"),
        meta_ok=meta_uid == sop_uid and meta_class == sop_class,
        pixel=pixel,
    )


def _same_content(a: Path, b: Path) -> bool:
    def digest(p: Path) -> bytes:
        h = hashlib.sha256()
        with p.open("rb") as fp:
            while block := fp.read(1 << 20):
                h.update(block)
        return h.digest()

    try:
        return a.stat().st_size == b.stat().st_size and digest(a) == digest(b)
    except OSError:
        return False


def _label(number: object, description: object) -> str:
    num = number if isinstance(number, int) and not isinstance(number, bool) else None
    desc = clean_text(description, 40) if description else ""
    head = "series" if num is None else f"series {num}"
    return f"{head} ({desc})" if desc else head


def _short_label(number: object) -> str:
    if isinstance(number, int) and not isinstance(number, bool):
        return f"series {number}"
    return "a series"


@dataclass(slots=True)
class _Expected:
    study_uid: str
    number: object
    description: object
    images: int
    uids: list[str]


def _expected(summary: Mapping[str, Any]) -> dict[str, _Expected]:
    out: dict[str, _Expected] = {}
    studies = summary.get("studies") if isinstance(summary, Mapping) else None
    for study in studies if isinstance(studies, list) else []:
        if not isinstance(study, Mapping):
            continue
        series_list = study.get("series")
        for s in series_list if isinstance(series_list, list) else []:
            if not isinstance(s, Mapping) or not isinstance(s.get("series_uid"), str):
                continue
            images = s.get("images")
            uids = s.get("sop_uids")
            out[s["series_uid"]] = _Expected(
                study_uid=str(study.get("study_uid", "")),
                number=s.get("number"),
                description=s.get("description"),
                images=images if isinstance(images, int) and images >= 0 else 0,
                uids=[u for u in uids if isinstance(u, str)] if isinstance(uids, list) else [],
            )
    return out


def check_study(summary: Mapping[str, Any], root: Path, paths: Sequence[str]) -> Completeness:
    """Check the received files of a transfer against its study summary.

    Never raises on file content: unreadable or malformed files become problems.
    Reads headers only; memory does not depend on image size.

    Args:
        summary: The ``summary`` of the manifest (`peer.dicom.summary.summarize`).
        root: The folder the files were placed in.
        paths: The manifest's relative ``/``-separated paths.

    Returns:
        The result; ``not-dicom`` when neither the summary nor the files hold DICOM.
    """
    expected = _expected(summary)
    files: list[_File] = []
    unreadable = 0
    for rel in paths:
        read = _read(root.joinpath(*rel.split("/")))
        if read == "unreadable":
            unreadable += 1
        elif isinstance(read, _File):
            files.append(read)
    if not expected and not files and not unreadable:
        return Completeness("not-dicom", 0, (), 0, 0)

    counts: Counter[tuple[str, str]] = Counter()  # (series uid, kind) -> n
    labels: dict[str, str] = {}
    short: dict[str, str] = {}
    for uid, e in expected.items():
        labels[uid] = _label(e.number, e.description)
        short[uid] = _short_label(e.number)

    by_series: dict[str, list[_File]] = {}
    study_of: dict[str, set[str]] = {}
    patients: dict[str, set[str]] = {}
    by_uid: dict[str, _File] = {}
    for f in files:
        by_series.setdefault(f.series_uid, []).append(f)
        labels.setdefault(f.series_uid, _label(f.series_number, f.series_description))
        short.setdefault(f.series_uid, _short_label(f.series_number))
        study_of.setdefault(f.series_uid, set()).add(f.study_uid)
        patients.setdefault(f.study_uid, set()).add(f.patient_id)
        if not f.meta_ok:
            counts[f.series_uid, "meta"] += 1
        if f.pixel:
            counts[f.series_uid, f"pixel_{f.pixel}"] += 1
        if not f.sop_uid:
            counts[f.series_uid, "no_uid"] += 1
            continue
        first = by_uid.get(f.sop_uid)
        if first is None:
            by_uid[f.sop_uid] = f
        elif _same_content(first.path, f.path):
            counts[f.series_uid, "same_copy"] += 1
        else:
            counts[f.series_uid, "duplicate"] += 1

    missing_total = 0
    missing_series: list[str] = []
    for uid in sorted(set(expected) | set(by_series), key=lambda u: labels.get(u, "")):
        exp = expected.get(uid)
        got = by_series.get(uid, [])
        if exp is None:
            if expected:  # with no summary at all there is nothing to compare with
                counts[uid, "unexpected"] += len(got)
            continue
        if exp.uids and len(exp.uids) == exp.images:
            want = Counter(exp.uids)
            have = Counter(f.sop_uid for f in got if f.sop_uid)
            missing = sum((want - have).values())
            extra = sum((have - want).values())
            if extra:
                counts[uid, "unexpected"] += extra
        else:  # no UID list (an older sender) or a cut one: compare counts
            missing = max(0, exp.images - len(got))
        if missing:
            counts[uid, "missing"] += missing
            missing_total += missing
            missing_series.append(short[uid])
        studies = study_of.get(uid, set()) | ({exp.study_uid} if exp.study_uid else set())
        if len(studies) > 1:
            counts[uid, "two_studies"] = len(studies)
    for ids in patients.values():
        if len(ids) > 1:
            counts["", "two_patients"] = max(counts["", "two_patients"], len(ids))

    conflicting = any(
        kind in _CONFLICT_KINDS and kind not in _NOT_CONFLICT for (_, kind), n in counts.items()
    )
    # unreadable files are only reported: the summary counted them as other files too,
    # and if they were images of the study, they are counted missing
    incomplete = any(kind in _INCOMPLETE_KINDS for (_, kind) in counts)
    problems: list[str] = []
    for kinds in (_CONFLICT_KINDS, _INCOMPLETE_KINDS):
        for kind, text in kinds.items():
            for (uid, k), n in sorted(counts.items(), key=lambda kv: labels.get(kv[0][0], "")):
                if k != kind or not n:
                    continue
                line = text.format(n=n, s="" if n == 1 else "s")
                problems.append(f"{labels[uid]}: {line}" if uid else line)
    if unreadable:
        problems.append(
            _INCOMPLETE_KINDS["unreadable"].format(n=unreadable, s="" if unreadable == 1 else "s")
        )
    if len(problems) > MAX_PROBLEMS:
        rest = len(problems) - (MAX_PROBLEMS - 1)
        problems = [*problems[: MAX_PROBLEMS - 1], f"and {rest} more problems"]
    status: Status = "conflicting" if conflicting else "incomplete" if incomplete else "complete"
    series_received = len([uid for uid in by_series if uid])
    return Completeness(
        status=status,
        missing=missing_total,
        problems=tuple(problems),
        series=series_received,
        images=len(files),
        missing_series=tuple(missing_series),
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def format_completeness(c: Completeness | Mapping[str, Any]) -> str:
    """One line for a terminal, e.g. ``"Completeness: complete — 3 series, 212 images"``.

    Accepts a `Completeness` or its `Completeness.to_dict` form (values are cleaned, as
    the dict may have been built elsewhere).
    """
    d = c.to_dict() if isinstance(c, Completeness) else c

    def num(key: str) -> int:
        v = d.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) else 0

    def texts(key: str) -> list[str]:
        v = d.get(key)
        return [clean_text(x, 120) for x in v] if isinstance(v, list | tuple) else []

    status = clean_text(d.get("status"), 20)
    problems = texts("problems")
    first = problems[0] if problems else ""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    if status == "complete":
        line = f"Completeness: complete — {num('series')} series, {_plural(num('images'), 'image')}"
        return line + (f"; note: {first}{more}" if first else "")
    if status == "not-dicom":
        return "Completeness: no DICOM images to check"
    if status == "incomplete" and num("missing"):
        where = ", ".join(texts("missing_series"))
        return f"Completeness: {_plural(num('missing'), 'image')} missing" + (
            f" ({where})" if where else ""
        )
    return f"Completeness: {status or 'unknown'} — {first or 'no details'}{more}"
