"""The header fields of one DICOM file that the study summary needs (`peer.dicom.summary`).

Only `peer.dicom.summary.scan` imports this module, and only once a file has the Part 10
marker: a folder without DICOM files never imports pydicom (0.2-0.3 s, `peer.warm`).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from peer.dicom.summary import finite_floats
from peer.dicom.text import clean_text

__all__ = ["Header", "parse_header"]

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
class Header:
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


def parse_header(fp: BinaryIO, size: int) -> Header | None:
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
            header = Header(
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
