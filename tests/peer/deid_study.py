"""A small two-series study with identifiers planted everywhere a de-identifier tends to
miss them: nested sequences, private blocks (also after the pixel data), other patient
IDs, names in references and free text. Shared by the unit and end-to-end tests."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

ROOT = "1.2.826.0.1.3680043.8.498.4242."

# every value here must be absent from the de-identified bytes
PLANTED = [
    "ZEBRAFISH",
    "QUENTIN",
    "Quentin",
    "PHI-ID-99172",
    "99172",
    "19431207",
    "OTHERID-55123",
    "XYZZY",
    "WILHELMINA",
    "KUNIGUNDE",
    "ACC-77881",
    "PRIVATE-SECRET-31337",
    "PRIVNAME",
    "TRAILER-PHI-4242",
    "WIBBLE",
    "Gumdrop",
    "HARTNELL",
    "5551234",
    "20240315",
    "20240316",
    ROOT,  # every original UID starts with this
]


_UID_CHARS = frozenset(b"0123456789.")


def planted_in(data: bytes | str, values: Iterable[str] = PLANTED) -> list[str]:
    """The planted ``values`` found in ``data`` (upper-case variants too).

    A value of digits only does not count inside a UID (a run of digits and dots holding a
    dot): de-identified UIDs are fresh hashes, and any five digits turn up in one now and
    then. The planted numbers themselves stand alone (a description, a date element).
    """
    raw = data.encode() if isinstance(data, str) else data
    found = []
    for value in values:
        needle = value.encode()
        hits = [needle, needle.upper()] if needle.upper() != needle else [needle]
        if any(_standalone(raw, n, n.isdigit()) for n in hits):
            found.append(value)
    return found


def _standalone(raw: bytes, needle: bytes, digits: bool) -> bool:
    start = raw.find(needle)
    while start >= 0:
        if not digits:
            return True
        lo, hi = start, start + len(needle)
        while lo > 0 and raw[lo - 1] in _UID_CHARS:
            lo -= 1
        while hi < len(raw) and raw[hi] in _UID_CHARS:
            hi += 1
        if b"." not in raw[lo:hi]:
            return True
        start = raw.find(needle, start + 1)
    return False


@dataclass(frozen=True)
class Planted:
    root: Path
    files: list[Path]
    sop_uids: list[str]
    pixels: dict[str, bytes]  # original SOP UID -> pixel data


def _uid(n: int) -> str:
    return f"{ROOT}{n}"


def _item(**kw: object) -> Dataset:
    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def write_planted_study(
    dest: Path, *, per_series: int = 3, rows: int = 32, implicit_second: bool = True
) -> Planted:
    """Two series (the second in implicit VR) with a reference from series 2 to 1."""
    dest.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    sops: list[str] = []
    pixels: dict[str, bytes] = {}
    study_uid, for_uid = _uid(1), _uid(2)
    series = [_uid(10), _uid(11)]
    n = 100
    for si, series_uid in enumerate(series):
        for i in range(per_series):
            n += 1
            sop = _uid(n)
            ds = Dataset()
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = sop
            ds.StudyDate = "20240315"
            ds.SeriesDate = "20240315"
            ds.ContentDate = "20240316"
            ds.StudyTime = "101500"
            ds.AcquisitionDateTime = "20240315101500.250000"
            ds.AccessionNumber = "ACC-77881"
            ds.Modality = "CT"
            ds.BurnedInAnnotation = "NO"
            ds.InstitutionName = "ST WIBBLE HOSPITAL"
            ds.InstitutionAddress = "12 Gumdrop Lane"
            ds.ReferringPhysicianName = "DRWHO^HARTNELL"
            ds.StudyDescription = "CT CHEST for ZEBRAFISH 99172"
            ds.SeriesDescription = f"AXIAL {si + 1}"
            ds.OperatorsName = "OPERATOR^KUNIGUNDE"
            ds.PatientName = "ZEBRAFISH^QUENTIN"
            ds.PatientID = "PHI-ID-99172"
            ds.PatientBirthDate = "19431207"
            ds.PatientSex = "M"
            ds.PatientAge = "080Y"
            ds.OtherPatientIDsSequence = Sequence(
                [_item(PatientID="OTHERID-55123", IssuerOfPatientID="XYZZY")]
            )
            ds.ReferencedPatientSequence = Sequence(
                [_item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.1.1", PatientName="X^WILHELMINA")]
            )
            ds.RequestAttributesSequence = Sequence(
                [
                    _item(
                        RequestedProcedureDescription="PROC FOR ZEBRAFISH",
                        RequestedProcedureID="ACC-77881",
                        ScheduledProcedureStepDescription="Quentin at 5551234",
                    )
                ]
            )
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = for_uid
            ds.SeriesNumber = si + 1
            ds.InstanceNumber = i + 1
            ds.ImageComments = "call Quentin at 5551234"
            if si == 1:  # references into series 1, with a name planted in the item
                ds.ReferencedImageSequence = Sequence(
                    [
                        _item(
                            ReferencedSOPClassUID=CTImageStorage,
                            ReferencedSOPInstanceUID=sops[i],
                            OperatorsName="NESTED^KUNIGUNDE",
                        )
                    ]
                )
                ds.ReferencedSeriesSequence = Sequence(
                    [_item(SeriesInstanceUID=series[0], StudyInstanceUID=study_uid)]
                )
                ds.SourceImageSequence = Sequence(
                    [
                        _item(
                            ReferencedSOPClassUID=CTImageStorage,
                            ReferencedSOPInstanceUID=sops[0],
                        )
                    ]
                )
            block = ds.private_block(0x0029, "ACME PHI", create=True)
            block.add_new(0x01, "LO", "PRIVATE-SECRET-31337")
            block.add_new(0x02, "US", 7)
            block.add_new(0x03, "SQ", Sequence([_item(PatientName="PRIVNAME^ZEBRAFISH")]))
            ds.Rows = rows
            ds.Columns = rows
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            pix = os.urandom(rows * rows * 2)
            ds.PixelData = pix
            ds["PixelData"].VR = "OW"
            # a private element after the pixel data (group 7FE1 sorts after 7FE0)
            tail = ds.private_block(0x7FE1, "ACME TRAILER", create=True)
            tail.add_new(0x01, "LO", "TRAILER-PHI-4242")
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = UID(sop)
            implicit = implicit_second and si == 1
            meta.TransferSyntaxUID = UID(
                ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
            )
            meta.SourceApplicationEntityTitle = "WIBBLE_CT"
            ds.file_meta = meta
            path = dest / f"ZEBRAFISH_QUENTIN_S{si + 1}_{i + 1}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
            sops.append(sop)
            pixels[sop] = pix
    return Planted(dest, files, sops, pixels)
