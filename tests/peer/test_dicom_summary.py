"""Tests for the pre-accept study summary (peer.dicom.summary) and peer.units."""

from __future__ import annotations

import json
import math
import os
import struct
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.errors import InvalidDicomError
from pydicom.uid import MediaStorageDirectoryStorage

from peer.dicom.summary import MAX_OTHER, MAX_TEXT, clean_text, format_summary, summarize
from peer.dicom.synth import StudyInfo, write_study
from peer.units import human_bytes, human_duration, human_rate

HOSTILE = "EVIL\x1b[31m^RED\x07\x1b]0;pwned\x07"


def _offer(root: Path) -> list[tuple[str, Path]]:
    return [(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*")) if p.is_file()]


def _study(tmp_path: Path, **kwargs: Any) -> tuple[Path, StudyInfo]:
    root = tmp_path / "study"
    info = write_study(root, rows=64, cols=64, target_bytes=300_000, seed=5, **kwargs)
    return root, info


def _studies(summary: dict[str, object]) -> list[dict[str, object]]:
    studies = summary["studies"]
    assert isinstance(studies, list)
    return studies


def _series(study: dict[str, object]) -> list[dict[str, object]]:
    series = study["series"]
    assert isinstance(series, list)
    return series


def test_summary_of_generated_study(tmp_path: Path) -> None:
    root, info = _study(tmp_path)
    offer = _offer(root)
    summary = summarize(offer)

    assert json.loads(json.dumps(summary)) == summary
    n_images = sum(s.n_images for s in info.series)
    assert summary["dicom_files"] == n_images
    assert summary["other_files"] == 1
    assert summary["other"] == ["report.pdf"]
    assert summary["bytes"] == info.bytes == sum(p.stat().st_size for _, p in offer)

    (study,) = _studies(summary)
    first = pydicom.dcmread(root / "SE001_Axial_5mm" / "IM0001.dcm")
    date = str(first.StudyDate)
    assert study["study_uid"] == info.study_uid
    assert study["patient_name"] == "DOE, JANE"
    assert study["patient_id"] == "SB-0001"
    assert study["patient_birth_date"] == "1970-01-01"
    assert study["patient_sex"] == "F"
    assert study["study_date"] == f"{date[:4]}-{date[4:6]}-{date[6:]}"
    assert study["study_description"] == "CT CHEST ABDOMEN"
    assert study["accession"] == first.AccessionNumber
    assert study["modalities"] == ["CT"]
    assert study["series_count"] == 3
    assert study["image_count"] == n_images
    assert study["bytes"] == info.bytes - (root / "report.pdf").stat().st_size

    series = _series(study)
    assert [s["number"] for s in series] == [1, 2, 3]
    for got, want in zip(series, info.series, strict=True):
        folder = next(root.glob(f"SE{got['number']:03d}_*"))
        assert got["series_uid"] == want.series_uid
        assert got["modality"] == "CT"
        assert got["description"] == want.description
        assert got["images"] == want.n_images
        assert got["bytes"] == sum(p.stat().st_size for p in folder.iterdir())
        assert got["transfer_syntaxes"] == ["1.2.840.10008.1.2.1"]
    assert [(s["rows"], s["cols"]) for s in series] == [(64, 64), (64, 64), (32, 32)]

    lines = format_summary(summary)
    assert lines[0] == "Patient: DOE, JANE (SB-0001), born 1970-01-01, F"
    assert lines[1].startswith(
        f"Study: {study['study_date']} CT CHEST ABDOMEN — CT, 3 series, {n_images} images, "
    )
    n1 = info.series[0].n_images
    assert any(line.startswith(f"  Series 1 CT Axial 5mm: {n1} images 64x64,") for line in lines)
    assert any(line.startswith("  Series 3 CT Scout: 2 images 32x32,") for line in lines)
    assert "Other files: report.pdf" in lines


def test_summary_survives_garbage(tmp_path: Path) -> None:
    root, info = _study(tmp_path, series=1, report=False)
    good = _offer(root)
    sample = good[0][1].read_bytes()
    junk = tmp_path / "junk"
    junk.mkdir()
    cases = {
        "empty.dcm": b"",
        "random.bin": os.urandom(5000),
        "notes.dcm": b"This is not DICOM, just text pretending to be.\n" * 20,
        "dicm_then_garbage.dcm": bytes(128) + b"DICM" + os.urandom(500),
        "truncated_in_meta.dcm": sample[:300],
        "truncated_in_name.dcm": sample[: sample.index(b"DOE^JANE") + 3],
        # after the UIDs: a value we read (SeriesNumber) or skip (FrameOfReferenceUID)
        "truncated_in_number.dcm": sample[: sample.index(b"\x20\x00\x11\x00IS") + 9],
        "truncated_in_frame.dcm": sample[: sample.index(b"\x20\x00\x52\x00UI") + 20],
        "huge_length.dcm": bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"1.2",
    }
    for name, data in cases.items():
        (junk / name).write_bytes(data)
    (junk / "a_directory").mkdir()
    offer = [*good, *((f"junk/{p.name}", p) for p in sorted(junk.iterdir()))]
    offer.append(("junk/missing.dcm", junk / "missing.dcm"))

    summary = summarize(offer)

    assert summary["dicom_files"] == len(good) == info.series[0].n_images
    assert summary["other_files"] == len(cases) + 2
    assert (
        summary["bytes"]
        == sum(p.stat().st_size for _, p in good)
        + sum(len(data) for data in cases.values())
        + (junk / "a_directory").stat().st_size
    )
    assert [p for p in summary["other"] if "truncated" in p] == [  # type: ignore[attr-defined]
        "junk/truncated_in_frame.dcm",
        "junk/truncated_in_meta.dcm",
        "junk/truncated_in_name.dcm",
        "junk/truncated_in_number.dcm",
    ]
    (study,) = _studies(summary)
    assert study["image_count"] == len(good)
    assert any(line.startswith("Other files: junk/") for line in format_summary(summary))


def test_truncated_pixel_data_still_summarises(tmp_path: Path) -> None:
    root, _ = _study(tmp_path, series=1, report=False)
    path = _offer(root)[0][1]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4000])  # cut half way through the pixels
    summary = summarize([("cut.dcm", path)])
    assert summary["dicom_files"] == 1 and summary["other_files"] == 0
    (series,) = _series(_studies(summary)[0])
    assert (series["rows"], series["cols"], series["images"]) == (64, 64, 1)


def test_pixel_data_is_never_read(tmp_path: Path) -> None:
    """A header claiming 64 MiB of pixels (a sparse file) costs nothing to summarise."""
    root, _ = _study(tmp_path, series=1, report=False)
    data = _offer(root)[0][1].read_bytes()
    tag = b"\xe0\x7f\x10\x00OW\x00\x00"
    at = data.index(tag) + len(tag)
    pixels = 64 << 20
    big = tmp_path / "big.dcm"
    with big.open("wb") as f:
        f.write(data[:at] + struct.pack("<I", pixels))
        f.truncate(at + 4 + pixels)
    tracemalloc.start()
    try:
        summary = summarize([("big.dcm", big)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary["dicom_files"] == 1
    assert summary["bytes"] == at + 4 + pixels
    assert peak < 2_000_000


def test_hostile_strings_are_cleaned(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="exceeds the maximum length"):  # LO is 64 chars
        root, _ = _study(tmp_path, series=1, patient_name=HOSTILE, patient_id="X" * 500)
    summary = summarize(_offer(root))
    (study,) = _studies(summary)
    assert study["patient_name"] == "EVIL, RED"
    patient_id = study["patient_id"]
    assert isinstance(patient_id, str) and len(patient_id) == MAX_TEXT
    assert patient_id.endswith("…")
    text = json.dumps(summary, ensure_ascii=False) + "\n".join(format_summary(summary))
    for bad in ("\x1b", "\x07", "[31m", "pwned"):
        assert bad not in text


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("plain text", "plain text"),
        ("red \x1b[1;31mALERT\x1b[0m!", "red ALERT!"),
        ("title\x1b]0;owned\x07done", "titledone"),
        ("title\x1b]8;;http://x\x1b\\link", "titlelink"),
        ("bell\x07 and nul\x00", "bell and nul"),
        ("8-bit \x9b2J csi", "8-bit csi"),
        ("line\nbreak\ttab\r\n", "line break tab"),
        ("bidi \u202egnp.exe\u202c", "bidi gnp.exe"),
        ("  padded  ", "padded"),
        (None, ""),
        (42, "42"),
    ],
)
def test_clean_text(raw: object, clean: str) -> None:
    assert clean_text(raw) == clean


def test_clean_text_truncates() -> None:
    assert clean_text("a" * 1000) == "a" * (MAX_TEXT - 1) + "…"
    assert clean_text("abcdef", limit=4) == "abc…"
    assert clean_text("\x1b[31m" * 10_000 + "ok") == ""  # bounded work on hostile input


def test_format_summary_on_hostile_mapping() -> None:
    hostile = {
        "studies": [
            {
                "patient_name": "\x1b[31mMALLORY\x07",
                "study_description": "x" * 5000,
                "series_count": "7",
                "image_count": True,
                "bytes": -5,
                "modalities": ["CT\x1b[2J", 3],
                "series": [{"number": "1", "images": 2, "rows": 10}, "not a dict", None],
            },
            "not a study",
        ],
        "other": [None, "\x1b[2Jx.pdf", 7],
        "other_files": 3,
        "bytes": "lots",
    }
    lines = format_summary(hostile)
    text = "\n".join(lines)
    assert "\x1b" not in text and "\x07" not in text
    assert "Patient: MALLORY" in lines
    assert "Other files: , x.pdf, 7" in lines
    assert all(len(line) < 3 * MAX_TEXT for line in lines)
    assert format_summary({}) == []
    assert format_summary({"studies": "nope", "other": 5}) == []


def test_bundled_pydicom_files_and_dicomdir(tmp_path: Path) -> None:
    names = ["CT_small.dcm", "MR_small.dcm", "DICOMDIR"]
    paths = [get_testdata_file(name, download=False) for name in names]
    assert all(p is not None for p in paths)
    offer = [(name, Path(str(p))) for name, p in zip(names, paths, strict=True)]
    summary = summarize(offer)

    assert summary["dicom_files"] == 2
    assert summary["other"] == ["DICOMDIR"]
    studies = {s["patient_name"]: s for s in _studies(summary)}
    assert set(studies) == {"CompressedSamples, CT1", "CompressedSamples, MR1"}
    ct, mr = studies["CompressedSamples, CT1"], studies["CompressedSamples, MR1"]
    assert ct["modalities"] == ["CT"] and mr["modalities"] == ["MR"]
    assert ct["study_date"] == "2004-01-19" and mr["study_date"] == "2004-08-26"
    assert [(s["rows"], s["cols"]) for s in _series(ct)] == [(128, 128)]
    assert [(s["rows"], s["cols"]) for s in _series(mr)] == [(64, 64)]
    ct_path = Path(str(paths[0]))
    assert ct["bytes"] == ct_path.stat().st_size
    assert _series(ct)[0]["transfer_syntaxes"] == [
        str(pydicom.dcmread(ct_path).file_meta.TransferSyntaxUID)
    ]


def test_groups_multi_patient_tree_like_a_full_read() -> None:
    dicomdir = get_testdata_file("DICOMDIR", download=False)
    assert dicomdir is not None
    root = Path(str(dicomdir)).parent
    offer = _offer(root)
    expected: Counter[tuple[str, str]] = Counter()
    for _, path in offer:  # a full read of every instance, DICOMDIRs and READMEs aside
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            continue
        if ds.file_meta.MediaStorageSOPClassUID != MediaStorageDirectoryStorage:
            expected[(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))] += 1

    summary = summarize(offer)

    got = Counter(
        {
            (str(study["study_uid"]), str(series["series_uid"])): series["images"]
            for study in _studies(summary)
            for series in _series(study)
        }
    )
    assert got == expected
    assert summary["dicom_files"] == sum(expected.values())
    assert len(_studies(summary)) == len({study for study, _ in expected}) > 1
    assert summary["other_files"] == len(offer) - sum(expected.values())
    assert "DICOMDIR" in summary["other"]  # type: ignore[operator]
    assert "README.txt" in summary["other"]  # type: ignore[operator]


def test_other_list_is_capped(tmp_path: Path) -> None:
    offer = []
    for i in range(MAX_OTHER + 5):
        path = tmp_path / f"note{i:02d}.txt"
        path.write_text("hello")
        offer.append((path.name, path))
    summary = summarize(reversed(offer))
    assert summary["other_files"] == MAX_OTHER + 5
    assert summary["other"] == [f"note{i:02d}.txt" for i in range(MAX_OTHER)]
    assert summary["studies"] == []
    assert format_summary(summary)[0].endswith("(and 5 more)")


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (110_312_345, "110.3 MB"),
        (999_960, "1.0 MB"),
        (1_000_000_000, "1.0 GB"),
        (-2500, "-2.5 kB"),
    ],
)
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


def test_human_rate_and_duration() -> None:
    assert human_rate(12_345_678.9) == "12.3 MB/s"
    assert human_rate(512) == "512 B/s"
    assert human_rate(-1.0) == "0 B/s"
    assert human_rate(math.inf) == "-- B/s"
    assert human_duration(245) == "4:05"
    assert human_duration(3723) == "1:02:03"
    assert human_duration(59.6) == "1:00"
    assert human_duration(0) == "0:00"
    assert human_duration(-3) == "0:00"
    assert human_duration(math.nan) == "--:--"


def test_the_transfer_syntax_names_are_pydicoms() -> None:
    """The offer names transfer syntaxes without importing pydicom (peer.dicom.text): its
    table must stay what pydicom's UID dictionary says, with what pynetdicom adds to it
    (imported here, so the order of the tests does not matter)."""
    import pynetdicom  # noqa: F401  (adds the newer transfer syntaxes to pydicom's)
    from pydicom._uid_dict import UID_dictionary

    from peer.dicom.text import TRANSFER_SYNTAXES

    expected = {uid: v[0] for uid, v in UID_dictionary.items() if v[1] == "Transfer Syntax"}
    assert TRANSFER_SYNTAXES == expected
    summary = {"studies": [{"series": [{"transfer_syntaxes": ["1.2.840.10008.1.2.5", "9.9"]}]}]}
    assert format_summary(summary)[-1].endswith(", RLE Lossless / 9.9")
