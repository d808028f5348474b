"""Tests for the synthetic study generator, peer.dicom.synth."""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import validate_file_meta
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from peer.dicom.synth import StudyInfo, main, parse_size, write_study

SMALL: dict[str, Any] = {"rows": 64, "cols": 64, "target_bytes": 400_000}


def _dcm_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.dcm"))


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_study_is_valid_ct_dicom(tmp_path: Path) -> None:
    dest = tmp_path / "study"
    info = write_study(dest, seed=1, **SMALL)

    assert isinstance(info, StudyInfo)
    assert [s.description for s in info.series] == ["Axial 5mm", "Axial 1.25mm Lung", "Scout"]
    folders = sorted(p.name for p in dest.iterdir() if p.is_dir())
    assert folders == ["SE001_Axial_5mm", "SE002_Axial_1_25mm_Lung", "SE003_Scout"]
    files = _dcm_files(dest)
    assert len(files) == sum(s.n_images for s in info.series)
    assert info.files == len(files) + 1  # + report.pdf
    assert info.bytes == sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())

    sop_uids: set[str] = set()
    study_uids: set[str] = set()
    frames: set[str] = set()
    for folder, series in zip(folders, info.series, strict=True):
        assert re.fullmatch(r"SE\d{3}_[A-Za-z0-9_]+", folder)
        paths = _dcm_files(dest / folder)
        assert [p.name for p in paths] == [f"IM{i:04d}.dcm" for i in range(1, len(paths) + 1)]
        assert len(paths) == series.n_images
        positions = []
        for number, path in enumerate(paths, start=1):
            assert path.read_bytes()[128:132] == b"DICM"
            ds = pydicom.dcmread(path, force=False)
            meta = ds.file_meta
            validate_file_meta(meta, enforce_standard=True)
            assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert ds.original_encoding == (False, True)  # explicit VR, little endian
            assert meta.MediaStorageSOPClassUID == ds.SOPClassUID == CTImageStorage
            assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert UID(ds.SOPInstanceUID).is_valid
            assert ds.SeriesInstanceUID == series.series_uid
            assert ds.Modality == series.modality == "CT"
            assert ds.SeriesDescription == series.description
            assert ds.InstanceNumber == number
            assert ds.StudyDescription == "CT CHEST ABDOMEN"
            assert ds.PatientName == "DOE^JANE" and ds.PatientID == "SB-0001"
            assert ds.PatientBirthDate and ds.PatientSex and ds.StudyDate and ds.StudyTime
            assert ds.AccessionNumber and ds.BodyPartExamined
            assert ds.BitsAllocated == 16 and ds.BitsStored in (12, 16)
            assert ds.PixelRepresentation == 1
            assert (ds.RescaleIntercept, ds.RescaleSlope) == (-1024, 1)
            assert "WindowCenter" in ds and "WindowWidth" in ds
            assert len(ds.ImageOrientationPatient) == 6 and len(ds.PixelSpacing) == 2
            arr = ds.pixel_array
            assert arr.shape == (ds.Rows, ds.Columns)
            assert arr.dtype == np.int16
            sop_uids.add(ds.SOPInstanceUID)
            study_uids.add(ds.StudyInstanceUID)
            frames.add(ds.FrameOfReferenceUID)
            positions.append([float(v) for v in ds.ImagePositionPatient])
        if series.description.startswith("Axial"):
            thickness = float(ds.SliceThickness)
            steps = np.diff(np.array(positions)[:, 2])
            assert np.allclose(np.abs(steps), thickness)
            assert ds.Rows == SMALL["rows"] and ds.Columns == SMALL["cols"]
        else:
            assert (ds.Rows, ds.Columns) == (32, 32)  # the scout is smaller
            assert "LOCALIZER" in ds.ImageType
    assert len(sop_uids) == len(files)
    assert study_uids == {info.study_uid}
    assert len(frames) == 1
    assert len({s.series_uid for s in info.series}) == 3


def test_pixels_look_like_ct(tmp_path: Path) -> None:
    info = write_study(tmp_path / "s", rows=128, cols=128, target_bytes=400_000, series=1, seed=2)
    files = _dcm_files(tmp_path / "s")
    ds = pydicom.dcmread(files[len(files) // 2])
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    corner = hu[:12, :12]
    assert abs(corner.mean() - (-1000)) < 15  # air outside the body
    assert 12 < corner.std() < 28  # noise sigma 20 HU
    assert hu.max() > 500  # bone
    body = hu[40:88, 40:88]
    assert np.median(body) > -200  # soft tissue, not air
    assert info.series[0].n_images == len(files)


def test_slices_vary_smoothly(tmp_path: Path) -> None:
    write_study(tmp_path / "s", rows=64, cols=64, target_bytes=300_000, series=1, noise=0.0)
    stack = np.array([pydicom.dcmread(p).pixel_array for p in _dcm_files(tmp_path / "s")])
    stack = stack.astype(np.float64)
    neighbour = np.abs(np.diff(stack, axis=0)).mean(axis=(1, 2))
    assert neighbour.max() > 0  # anatomy changes along the body...
    assert neighbour.max() < np.abs(stack[-1] - stack[0]).mean() / 4  # ...gradually


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = write_study(tmp_path / "a", seed=7, **SMALL)
    b = write_study(tmp_path / "b", seed=7, **SMALL)
    c = write_study(tmp_path / "c", seed=8, **SMALL)
    assert a == b
    assert _all_bytes(tmp_path / "a") == _all_bytes(tmp_path / "b")
    assert c.study_uid != a.study_uid
    first = "SE001_Axial_5mm/IM0001.dcm"
    assert (tmp_path / "c" / first).read_bytes() != (tmp_path / "a" / first).read_bytes()


@pytest.mark.parametrize(
    ("kwargs", "series"),
    [
        ({"target_bytes": 5_000_000}, 3),
        ({"target_bytes": 400_000, "rows": 64, "cols": 64}, 4),
        ({"target_bytes": 400_000, "rows": 64, "cols": 96}, 1),
    ],
)
def test_size_near_target(tmp_path: Path, kwargs: dict[str, Any], series: int) -> None:
    info = write_study(tmp_path / "s", series=series, **kwargs)
    target = kwargs["target_bytes"]
    assert len(info.series) == series
    assert abs(info.bytes - target) <= 0.06 * target
    assert info.bytes == sum(p.stat().st_size for p in (tmp_path / "s").rglob("*") if p.is_file())


def test_compresses_like_real_ct(tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    write_study(tmp_path / "s", target_bytes=2_500_000, series=1, report=False)
    raw = packed = 0
    for path in _dcm_files(tmp_path / "s"):
        data = path.read_bytes()
        raw += len(data)
        packed += len(zstandard.ZstdCompressor(level=1).compress(data))
    assert 1.3 <= raw / packed <= 2.5


def test_memory_stays_flat(tmp_path: Path) -> None:
    # a first small study imports what writing needs (pydicom's lazy modules), which
    # would count as peak memory when this test runs first in its process
    write_study(tmp_path / "warm", rows=128, cols=128, target_bytes=200_000, report=True)
    tracemalloc.start()
    try:
        info = write_study(tmp_path / "s", rows=128, cols=128, target_bytes=5_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.bytes > 4_700_000
    assert peak < 2_500_000  # holding the study (or even half of it) would fail this


def test_report_pdf_is_valid(tmp_path: Path) -> None:
    info = write_study(tmp_path / "s", **SMALL)
    pdf = (tmp_path / "s" / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-1.4\n")
    assert pdf.rstrip().endswith(b"%%EOF")
    assert b"(Radiology report) Tj" in pdf
    startxref = int(pdf.rsplit(b"startxref", 1)[1].split()[0])
    assert pdf[startxref:].startswith(b"xref\n0 6\n")
    entries = pdf[startxref:].split(b"\n")[3:8]
    for number, entry in enumerate(entries, start=1):
        assert len(entry) == 19 and entry.endswith(b" 00000 n ")  # + "\n" = 20 bytes
        offset = int(entry[:10])
        assert pdf[offset:].startswith(b"%d 0 obj\n" % number)
    stream = re.search(rb"<< /Length (\d+) >>\nstream\n", pdf)
    assert stream is not None
    body_end = stream.end() + int(stream.group(1))
    assert pdf[body_end:].startswith(b"\nendstream")
    assert info.files == len(_dcm_files(tmp_path / "s")) + 1


def test_no_report(tmp_path: Path) -> None:
    info = write_study(tmp_path / "s", report=False, **SMALL)
    assert not (tmp_path / "s" / "report.pdf").exists()
    assert info.files == len(_dcm_files(tmp_path / "s"))


def test_refuses_non_empty_dest_and_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        write_study(tmp_path, **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match="series >= 1"):
        write_study(tmp_path / "x", series=0)
    with pytest.raises(ValueError, match="noise"):
        write_study(tmp_path / "x", noise=-1.0)
    assert not (tmp_path / "x").exists()
    write_study(tmp_path / "empty", **SMALL)  # an existing empty directory is fine
    (tmp_path / "empty2").mkdir()
    assert write_study(tmp_path / "empty2", **SMALL).files > 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20MB", 20_000_000),
        ("1GB", 1_000_000_000),
        ("1.5 GiB", 1_610_612_736),
        ("500k", 500_000),
        ("64KiB", 65_536),
        ("12345", 12_345),
        ("2 mb", 2_000_000),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "1 XB", "-1MB", "1e6", "ten"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "demo"
    assert main([str(dest), "--size", "300kB", "--series", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    files = [p for p in dest.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    assert len(out) == 1
    assert f"wrote {len(files)} files, {total} bytes" in out[0]
    assert (dest / "report.pdf").exists()

    assert main([str(dest)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: {dest} exists and is not an empty directory\n"

    other = tmp_path / "bare"
    assert main([str(other), "--size", "100kB", "--series", "1", "--no-report"]) == 0
    assert not (other / "report.pdf").exists()


def test_cli_rejects_bad_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "x"), "--size", "lots"])
    assert exc.value.code == 2
    assert "not a size" in capsys.readouterr().err
