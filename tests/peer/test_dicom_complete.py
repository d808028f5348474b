"""The receiver's completeness check (peer/dicom/complete.py)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import UID

from peer.dicom.complete import Completeness, check_study, format_completeness
from peer.dicom.summary import summarize
from peer.dicom.synth import StudyInfo, write_study

Sent = tuple[Path, StudyInfo, dict[str, Any]]
Received = tuple[Path, dict[str, Any], list[str]]


def _rels(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> Sent:
    root = tmp_path_factory.mktemp("sent") / "study"
    info = write_study(root, target_bytes=300_000, rows=64, cols=64, noise=0.0)
    summary = summarize((rel, root / rel) for rel in _rels(root))
    return root, info, summary


@pytest.fixture
def received(sent: Sent, tmp_path: Path) -> Received:
    root, _, summary = sent
    copy = tmp_path / "got"
    shutil.copytree(root, copy)
    return copy, summary, _rels(root)


def _first(root: Path, series: int = 2) -> Path:
    return sorted(next(root.glob(f"SE{series:03d}_*")).glob("*.dcm"))[0]


def test_summary_lists_sop_uids_and_classes(sent: Sent) -> None:
    root, info, summary = sent
    (study,) = summary["studies"]
    for series, want in zip(study["series"], info.series, strict=True):
        assert len(series["sop_uids"]) == want.n_images == series["images"]
        assert series["sop_uids"] == sorted(series["sop_uids"])
        assert series["sop_classes"] == ["1.2.840.10008.5.1.4.1.1.2"]
    ds = pydicom.dcmread(_first(root, 1), stop_before_pixels=True)
    assert ds.SOPInstanceUID in study["series"][0]["sop_uids"]


def test_complete_study(received: Received, sent: Sent) -> None:
    root, summary, paths = received
    info: StudyInfo = sent[1]
    got = check_study(summary, root, paths)
    n = sum(s.n_images for s in info.series)
    assert got == Completeness("complete", 0, (), 3, n)
    assert format_completeness(got) == f"Completeness: complete — 3 series, {n} images"
    assert format_completeness(got.to_dict()) == format_completeness(got)


def test_a_deleted_file_is_missing(received: Received) -> None:
    root, summary, paths = received
    _first(root).unlink()
    got = check_study(summary, root, paths)
    assert got.status == "incomplete"
    assert got.missing == 1
    assert got.missing_series == ("series 2",)
    assert any(p.startswith("series 2 (") and "1 image missing" in p for p in got.problems)
    assert format_completeness(got) == "Completeness: 1 image missing (series 2)"


def test_a_duplicate_sop_uid_conflicts(received: Received) -> None:
    root, summary, paths = received
    a, b = sorted(next(root.glob("SE001_*")).glob("*.dcm"))[:2]
    ds = pydicom.dcmread(b)
    ds.SOPInstanceUID = pydicom.dcmread(a, stop_before_pixels=True).SOPInstanceUID
    ds.file_meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
    ds.save_as(b, enforce_file_format=True)
    got = check_study(summary, root, paths)
    assert got.status == "conflicting"
    assert got.missing == 1  # b's own UID is gone
    assert any("shared by files with different content" in p for p in got.problems)
    assert format_completeness(got).startswith("Completeness: conflicting — series 1 (")


def test_tampered_file_meta_is_a_problem(received: Received) -> None:
    root, summary, paths = received
    path = _first(root)
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID).encode()
    data = path.read_bytes()
    at = data.index(uid)  # the first copy is the file meta's (0002,0003)
    assert at < data.index(b"\x08\x00\x18\x00")  # before the dataset's (0008,0018)
    tampered = uid[:-1] + (b"1" if uid[-1:] != b"1" else b"2")
    path.write_bytes(data[:at] + tampered + data[at + len(uid) :])
    got = check_study(summary, root, paths)
    assert got.status == "conflicting"
    assert got.missing == 0
    assert any(
        p.startswith("series 2") and "1 file whose file meta does not match" in p
        for p in got.problems
    )


def test_cut_pixel_data_is_a_problem(received: Received) -> None:
    root, summary, paths = received
    path = _first(root)
    path.write_bytes(path.read_bytes()[:-100])  # the file itself cut short
    other = _first(root, 3)
    ds = pydicom.dcmread(other)
    ds.PixelData = ds.PixelData[:-2]  # a consistent element, but too short for the matrix
    ds.save_as(other, enforce_file_format=True)
    got = check_study(summary, root, paths)
    assert got.status == "incomplete"
    assert got.missing == 0
    cut = [p for p in got.problems if "pixel data cut short" in p]
    assert len(cut) == 2
    assert cut[0].startswith("series 2") and cut[1].startswith("series 3")
    assert format_completeness(got).startswith("Completeness: incomplete — series 2")


def test_two_patients_in_one_study_conflict(received: Received) -> None:
    root, summary, paths = received
    path = _first(root)
    ds = pydicom.dcmread(path)
    ds.PatientID = "SOMEONE-ELSE"
    ds.save_as(path, enforce_file_format=True)
    got = check_study(summary, root, paths)
    assert got.status == "conflicting"
    assert "2 different patient IDs in one study" in got.problems
    assert not any("SOMEONE" in p for p in got.problems)


def test_not_dicom(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.bin").write_bytes(bytes(200))
    paths = ["a.txt", "b.bin"]
    summary = summarize((p, tmp_path / p) for p in paths)
    got = check_study(summary, tmp_path, paths)
    assert got.status == "not-dicom"
    assert format_completeness(got) == "Completeness: no DICOM images to check"


def test_garbage_never_raises(received: Received) -> None:
    root, summary, paths = received
    path = _first(root)
    data = path.read_bytes()
    path.write_bytes(data[:140] + b"\xff" * 64)  # "DICM" then nonsense
    got = check_study({"studies": [{"series": [1, {"series_uid": 5}]}]}, root, paths)
    assert got.status == "complete"  # a summary with no usable series: nothing to compare
    got = check_study(summary, root, [*paths, "nope/missing.dcm"])
    assert (got.status, got.missing, got.missing_series) == ("incomplete", 1, ("series 2",))
    path.write_bytes(data[:-100000] if len(data) > 100000 else data[:300])  # cut in the header
    got = check_study(summary, root, paths)
    assert (got.status, got.missing) == ("incomplete", 1)


def test_a_cut_uid_list_falls_back_to_counts(received: Received) -> None:
    # the manifest decoder keeps at most 1000 items of a summary list
    root, summary, paths = received
    cut = copy.deepcopy(summary)
    series = cut["studies"][0]["series"][1]
    series["sop_uids"] = series["sop_uids"][:3]
    assert check_study(cut, root, paths).status == "complete"
    _first(root).unlink()
    got = check_study(cut, root, paths)
    assert (got.status, got.missing, got.missing_series) == ("incomplete", 1, ("series 2",))


def test_without_a_summary_only_the_files_are_checked(received: Received) -> None:
    root, _, paths = received
    got = check_study({}, root, paths)
    assert (got.status, got.missing, got.series) == ("complete", 0, 3)


def test_a_series_over_a_thousand_images_is_checked_by_uid(sent: Sent, tmp_path: Path) -> None:
    """Every SOP Instance UID crosses the manifest, so a swapped instance in a long series
    is found even though the count still matches."""
    from peer.proto.manifest import Manifest, decode_manifest, encode_manifest

    src = _first(sent[0], 1)
    root = tmp_path / "long"
    series = root / "SE001"
    series.mkdir(parents=True)
    ds = pydicom.dcmread(src)
    for i in range(1200):
        uid = UID(f"1.2.826.0.1.3680043.8.498.777.{i + 1}")
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = i + 1
        ds.save_as(series / f"IM{i:05d}.dcm", enforce_file_format=True)
    paths = _rels(root)
    made = summarize((rel, root / rel) for rel in paths)
    summary: Any = decode_manifest(encode_manifest(Manifest(files=(), summary=made))).summary
    assert len(summary["studies"][0]["series"][0]["sop_uids"]) == 1200
    assert check_study(summary, root, paths).status == "complete"
    swapped = pydicom.dcmread(series / "IM00007.dcm")
    swapped.SOPInstanceUID = UID("1.2.826.0.1.3680043.8.498.777.99999")
    swapped.file_meta.MediaStorageSOPInstanceUID = swapped.SOPInstanceUID
    swapped.save_as(series / "IM00007.dcm", enforce_file_format=True)
    got = check_study(summary, root, paths)
    assert got.status == "conflicting" and got.missing == 1
    assert "1 image not listed in the offer" in format_completeness(got.to_dict())
