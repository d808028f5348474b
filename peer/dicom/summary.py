"""The study summary a receiver is shown before accepting a transfer.

`summarize` reads only the header of each offered file (it stops at the first element
after Rows/Columns, long before the pixel data), groups the DICOM files by study and series,
and returns a JSON-serialisable dict. Anything that is not a readable DICOM Part 10
file (bad or missing preamble, truncated header, a DICOMDIR, a PDF) is an "other file".

Every string is cleaned for display (`clean_text`): DICOM files come from anywhere, and
a hostile one may carry terminal escape sequences. `format_summary` (`peer.dicom.text`,
re-exported here) cleans again, since the summary it formats may have crossed the network
from an untrusted peer.

Person names (PN) are shown as ``"FAMILY, GIVEN MIDDLE"``: the first non-empty
component group (alphabetic, else ideographic, else phonetic), prefix and suffix
dropped.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from peer.dicom.text import MAX_TEXT, clean_text, format_summary

__all__ = [
    "MAX_OTHER",
    "MAX_TEXT",
    "Slice",
    "clean_text",
    "finite_floats",
    "format_summary",
    "scan",
    "summarize",
]

MAX_OTHER = 20
_DEFER_SIZE = 4096  # larger values are skipped on disk, never read
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage

_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyDate",
    "AccessionNumber",
    "Modality",
    "StudyDescription",
    "SeriesDescription",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "Rows",
    "Columns",
)
_TAGS: dict[str, BaseTag] = {kw: Tag(kw) for kw in _KEYWORDS}
_LAST_TAG = max(int(tag) for tag in _TAGS.values())


def _person_name(value: object) -> str:
    groups = [group for group in str(value).split("=") if group.strip("^ ")]
    if not groups:
        return ""
    parts = [part.strip() for part in groups[0].split("^")]
    family, given = parts[0], " ".join(p for p in parts[1:3] if p)
    return f"{family}, {given}" if family and given else family or given


def _date(value: object) -> str:
    text = str(value).strip()
    if re.fullmatch(r"\d{8}", text) is None:
        return ""
    return f"{text[:4]}-{text[4:6]}-{text[6:]}"


@dataclass(slots=True)
class _Header:
    study_uid: str
    series_uid: str
    patient_name: str
    patient_id: str
    patient_birth_date: str
    patient_sex: str
    study_date: str
    study_description: str
    accession: str
    modality: str
    series_description: str
    series_number: int | None
    rows: int | None
    cols: int | None
    transfer_syntax: str
    sop_uid: str = ""
    sop_class: str = ""
    instance_number: int | None = None
    position: tuple[float, ...] | None = None
    orientation: tuple[float, ...] | None = None


@dataclass(frozen=True, slots=True)
class Slice:
    """Where one DICOM file sits in its series, as the scan read it (`peer.dicom.preview`
    sorts a series by these to pick its middle image without reading the headers again)."""

    path: Path
    series_uid: str
    number: int | None  # InstanceNumber
    position: tuple[float, ...] | None  # ImagePositionPatient, 3 finite floats
    orientation: tuple[float, ...] | None  # ImageOrientationPatient, 6 finite floats


@dataclass(slots=True)
class _Series:
    uid: str
    number: int | None
    modality: str
    description: str
    rows: int | None
    cols: int | None
    images: int = 0
    bytes: int = 0
    syntaxes: set[str] = field(default_factory=set)
    sop_uids: list[str] = field(default_factory=list)
    sop_classes: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Study:
    first: _Header
    series: dict[str, _Series] = field(default_factory=dict)


def _past_header(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) > _LAST_TAG


def _value(ds: Dataset, keyword: str) -> object:
    """The converted value, or None if absent, too large (deferred) or malformed."""
    try:
        elem = ds.get_item(_TAGS[keyword], keep_deferred=True)
        if elem is None or (isinstance(elem, RawDataElement) and elem.value is None):
            return None
        value: object = ds[_TAGS[keyword]].value
    except Exception:
        return None
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return value


def _text(ds: Dataset, keyword: str) -> str:
    value = _value(ds, keyword)
    return "" if value is None else clean_text(value)


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _value(ds, keyword)
    try:
        return None if value is None or value == "" else int(str(value).strip())
    except ValueError:
        return None


def finite_floats(values: object, n: int) -> tuple[float, ...] | None:
    """``values`` (a multi-valued element's items) as exactly ``n`` finite floats, else None."""
    try:
        items = tuple(float(v) for v in values)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    if len(items) != n or not all(math.isfinite(v) for v in items):
        return None
    return items


def _floats(ds: Dataset, keyword: str, n: int) -> tuple[float, ...] | None:
    value = _value(ds, keyword)  # multiple values come joined with "\\"
    return None if value is None else finite_floats(str(value).split("\\"), n)


def _truncated(ds: Dataset, end: int, size: int) -> bool:
    """Whether the header read ran off the end of the file.

    pydicom does not say: a skipped value leaves the position past the end, a read one
    is short. A cut exactly between two elements is not detected.
    """
    if end > size:
        return True
    for tag in _TAGS.values():
        elem = ds.get_item(tag, keep_deferred=True)
        if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes):
            if elem.length != 0xFFFFFFFF and len(elem.value) < elem.length:
                return True
    return False


def _read_header(path: Path, size: int) -> _Header | None:
    try:
        with path.open("rb") as fp:
            return _parse_header(fp, size)
    except OSError:
        return None


def _parse_header(fp: BinaryIO, size: int) -> _Header | None:
    """Parse the header of one file; None unless it is a usable DICOM instance.

    That is a Part 10 file (preamble, "DICM", file meta with a transfer syntax), not a
    DICOMDIR, whose header up to Rows/Columns is complete and names its study and
    series. Pixel data is never read, so a file cut in its pixel data still counts.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_partial(
                fp,
                stop_when=_past_header,
                defer_size=_DEFER_SIZE,
                force=False,
                specific_tags=list(_TAGS.values()),
            )
            if _truncated(ds, fp.tell(), size):
                return None
            meta = ds.file_meta
            sop_class = str(meta.get("MediaStorageSOPClassUID", "") or _value(ds, "SOPClassUID"))
            syntax = clean_text(meta.get("TransferSyntaxUID", ""))
            if sop_class.strip() == _DICOMDIR_CLASS or not syntax:
                return None
            header = _Header(
                study_uid=_text(ds, "StudyInstanceUID"),
                series_uid=_text(ds, "SeriesInstanceUID"),
                patient_name=clean_text(_person_name(_value(ds, "PatientName") or "")),
                patient_id=_text(ds, "PatientID"),
                patient_birth_date=_date(_value(ds, "PatientBirthDate") or ""),
                patient_sex=_text(ds, "PatientSex"),
                study_date=_date(_value(ds, "StudyDate") or ""),
                study_description=_text(ds, "StudyDescription"),
                accession=_text(ds, "AccessionNumber"),
                modality=_text(ds, "Modality"),
                series_description=_text(ds, "SeriesDescription"),
                series_number=_int(ds, "SeriesNumber"),
                rows=_int(ds, "Rows"),
                cols=_int(ds, "Columns"),
                transfer_syntax=syntax,
                sop_uid=clean_text(_value(ds, "SOPInstanceUID") or "", 64),
                sop_class=clean_text(_value(ds, "SOPClassUID") or sop_class, 64),
                instance_number=_int(ds, "InstanceNumber"),
                position=_floats(ds, "ImagePositionPatient", 3),
                orientation=_floats(ds, "ImageOrientationPatient", 6),
            )
    except Exception:  # not DICOM, malformed, unreadable: an "other" file
        return None
    return header if header.study_uid and header.series_uid else None


def _file_size(path: Path) -> tuple[int, bool]:
    """Size and whether it is a regular file (FIFOs and devices are never opened)."""
    try:
        st = os.stat(path)
    except OSError:
        return 0, False
    return st.st_size, stat.S_ISREG(st.st_mode)


def summarize(files: Iterable[tuple[str, Path | tuple[int, bytes]]]) -> dict[str, object]:
    """The study summary of an offered file list (`scan` without the slices)."""
    return scan(files)[0]


def scan(
    files: Iterable[tuple[str, Path | tuple[int, bytes]]],
) -> tuple[dict[str, object], list[Slice]]:
    """Summarise an offered file list by study and series, reading headers only.

    Never raises on file content: unreadable, non-DICOM, truncated or malformed files
    and DICOMDIRs count as other files (see `_read_header` for what counts as DICOM).
    Memory and time do not depend on image size.

    Args:
        files: ``(relative path, absolute path)`` pairs, e.g. a whole offer; instead of
            a path, ``(size, header bytes)`` of a transformed file (`peer.dicom.deid`).

    Returns:
        A JSON-serialisable dict with ``dicom_files``, ``other_files``, ``bytes`` (all
        files), ``studies`` (sorted by date then UID, each with patient and study
        fields, ``modalities``, ``series_count``, ``image_count``, ``bytes`` and
        ``series`` sorted by number then UID) and ``other`` (the first `MAX_OTHER`
        other relative paths, sorted). Transfer syntaxes are listed as UIDs; each
        series also lists its ``sop_classes`` and the sorted ``sop_uids`` of its
        instances (for the receiver's completeness check, `peer.dicom.complete`).
        Then, in offer order, the `Slice` of each DICOM file read from a path (for the
        offer's previews).
    """
    studies: dict[str, _Study] = {}
    slices: list[Slice] = []
    other: list[str] = []
    dicom_files = 0
    total = 0
    for rel, path in files:
        if isinstance(path, tuple):  # a transformed file: its new header, its new size
            size, head = path
            header = _parse_header(io.BytesIO(head), size)
        else:
            size, regular = _file_size(path)
            header = _read_header(path, size) if regular else None
            if header is not None:
                slices.append(
                    Slice(
                        path,
                        header.series_uid,
                        header.instance_number,
                        header.position,
                        header.orientation,
                    )
                )
        total += size
        if header is None:
            other.append(clean_text(rel))
            continue
        dicom_files += 1
        study = studies.setdefault(header.study_uid, _Study(header))
        series = study.series.get(header.series_uid)
        if series is None:
            series = study.series[header.series_uid] = _Series(
                uid=header.series_uid,
                number=header.series_number,
                modality=header.modality,
                description=header.series_description,
                rows=header.rows,
                cols=header.cols,
            )
        series.images += 1
        series.bytes += size
        if header.transfer_syntax:
            series.syntaxes.add(header.transfer_syntax)
        if header.sop_uid:
            series.sop_uids.append(header.sop_uid)
        if header.sop_class:
            series.sop_classes.add(header.sop_class)

    out_studies = [_study_dict(uid, study) for uid, study in studies.items()]
    out_studies.sort(key=lambda s: (str(s["study_date"]), str(s["study_uid"])))
    summary: dict[str, object] = {
        "dicom_files": dicom_files,
        "other_files": len(other),
        "bytes": total,
        "studies": out_studies,
        "other": sorted(other)[:MAX_OTHER],
    }
    return summary, slices


def _study_dict(uid: str, study: _Study) -> dict[str, object]:
    first = study.first
    series = sorted(
        study.series.values(),
        key=lambda s: (s.number is None, s.number if s.number is not None else 0, s.uid),
    )
    return {
        "study_uid": uid,
        "patient_name": first.patient_name,
        "patient_id": first.patient_id,
        "patient_birth_date": first.patient_birth_date,
        "patient_sex": first.patient_sex,
        "study_date": first.study_date,
        "study_description": first.study_description,
        "accession": first.accession,
        "modalities": sorted({s.modality for s in series if s.modality}),
        "series_count": len(series),
        "image_count": sum(s.images for s in series),
        "bytes": sum(s.bytes for s in series),
        "series": [
            {
                "series_uid": s.uid,
                "number": s.number,
                "modality": s.modality,
                "description": s.description,
                "images": s.images,
                "bytes": s.bytes,
                "rows": s.rows,
                "cols": s.cols,
                "transfer_syntaxes": sorted(s.syntaxes),
                "sop_classes": sorted(s.sop_classes),
                "sop_uids": sorted(s.sop_uids),
            }
            for s in series
        ],
    }
