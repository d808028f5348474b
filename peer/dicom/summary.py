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
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from peer import warm
from peer.dicom.text import MAX_TEXT, clean_text, format_summary

if TYPE_CHECKING:
    from peer.dicom.header import Header

__all__ = [
    "MAX_OTHER",
    "MAX_TEXT",
    "Slice",
    "clean_text",
    "finite_floats",
    "format_summary",
    "is_part10",
    "scan",
    "summarize",
]

MAX_OTHER = 20


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
    first: Header
    series: dict[str, _Series] = field(default_factory=dict)


def finite_floats(values: object, n: int) -> tuple[float, ...] | None:
    """``values`` (a multi-valued element's items) as exactly ``n`` finite floats, else None."""
    try:
        items = tuple(float(v) for v in values)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    if len(items) != n or not all(math.isfinite(v) for v in items):
        return None
    return items


def is_part10(head: bytes) -> bool:
    """Whether a file starts like DICOM Part 10: a 128-byte preamble, then "DICM". Any
    other file is an "other" file without asking pydicom (which requires the same)."""
    return head[128:132] == b"DICM"


def _parse_header(fp: BinaryIO, size: int) -> Header | None:
    warm.need("pydicom")  # never two threads importing it at once (peer.warm)
    from peer.dicom.header import parse_header

    return parse_header(fp, size)


def _read_header(path: Path, size: int) -> Header | None:
    try:
        with path.open("rb") as fp:
            if not is_part10(fp.read(132)):
                return None
            fp.seek(0)
            return _parse_header(fp, size)
    except OSError:
        return None


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
    and DICOMDIRs count as other files (`peer.dicom.header.parse_header` says what counts
    as DICOM). pydicom is imported only once a file has the Part 10 marker.
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
            header = _parse_header(io.BytesIO(head), size) if is_part10(head) else None
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
