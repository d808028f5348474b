"""PACS bridge, pure parts and the study sink: target parsing, AE titles, the presentation
context plan, safe names for peer-supplied UIDs, placement of received files, scanning."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from peer.dicom.listen import StudySink, safe_name
from peer.dicom.pacs import (
    NATIVE,
    ContextSpec,
    PacsTarget,
    _batch_of,
    collect,
    parse_target,
    plan_contexts,
    scan,
    validate_aet,
)
from peer.errors import BeamError


def test_parse_target_forms() -> None:
    assert parse_target("127.0.0.1:4242:ORTHANC") == PacsTarget("127.0.0.1", 4242, "ORTHANC")
    assert parse_target("pacs.local:104") == PacsTarget("pacs.local", 104, "ANY-SCP")
    assert parse_target("[::1]:11112:MY_PACS") == PacsTarget("::1", 11112, "MY_PACS")
    assert str(parse_target("[::1]:11112:X")) == "[::1]:11112 (X)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("localhost", "Bad PACS address 'localhost': use HOST:PORT or HOST:PORT:AET"),
        ("host:0:AE", "Bad PACS port 0: use 1 to 65535."),
        ("host:70000", "Bad PACS port 70000: use 1 to 65535."),
        ("host:104:WAY_TOO_LONG_AE_TITLE", "Bad called AE title 'WAY_TOO_LONG_AE_TITLE'"),
        ("host:104:A\\B", "Bad called AE title"),
        ("host:104:", "Bad called AE title ''"),
        ("../x:104", "Bad PACS address"),
    ],
)
def test_parse_target_errors(text: str, message: str) -> None:
    with pytest.raises(BeamError) as info:
        parse_target(text)
    assert info.value.user_message.startswith(message)
    assert "\n" not in info.value.user_message


def test_validate_aet() -> None:
    assert validate_aet(" SCANBEAM ") == "SCANBEAM"
    for bad in ("", "A" * 17, "A\x00B", "É"):
        with pytest.raises(BeamError):
            validate_aet(bad)


def test_context_plan_one_association_per_syntax_plus_fallback() -> None:
    pairs = [
        (CTImageStorage, ExplicitVRLittleEndian),
        (CTImageStorage, JPEGLSLossless),
        (CTImageStorage, JPEGLSLossless),
        (MRImageStorage, RLELossless),
        (MRImageStorage, ImplicitVRLittleEndian),
    ]
    (batch,) = plan_contexts(pairs)
    assert batch == [
        ContextSpec(CTImageStorage, (JPEGLSLossless,)),
        ContextSpec(CTImageStorage, (ExplicitVRLittleEndian,)),
        ContextSpec(CTImageStorage, NATIVE),
        ContextSpec(MRImageStorage, (RLELossless,)),
        ContextSpec(MRImageStorage, (ImplicitVRLittleEndian,)),
        ContextSpec(MRImageStorage, NATIVE),
    ]


def test_context_plan_splits_over_128_without_splitting_a_class() -> None:
    classes = [f"1.2.3.{i}" for i in range(100)]
    syntaxes = [JPEGLSLossless, RLELossless, JPEG2000Lossless]
    pairs = [(c, s) for c in classes for s in syntaxes]
    batches = plan_contexts(pairs)
    assert all(len(b) <= 128 for b in batches)
    assert len(batches) == 4  # 4 contexts per class, 32 classes per association
    seen: dict[str, int] = {}
    for i, b in enumerate(batches):
        for cx in b:
            assert seen.setdefault(cx.sop_class, i) == i  # a class stays in one association
    covered = {(cx.sop_class, cx.syntaxes[0]) for b in batches for cx in b if len(cx.syntaxes) == 1}
    assert covered == set(pairs)


def test_context_plan_huge_class_keeps_a_fallback_in_each_part() -> None:
    pairs = [(CTImageStorage, f"1.2.840.99.{i}") for i in range(10)]
    batches = plan_contexts(pairs, limit=4)
    assert [len(b) for b in batches] == [4, 4, 4, 2]
    for b in batches:
        assert len(b) <= 4
        assert ContextSpec(CTImageStorage, NATIVE) in b
    exact = [cx.syntaxes[0] for b in batches for cx in b if cx.syntaxes != NATIVE]
    assert exact == [s for _, s in pairs]
    with pytest.raises(ValueError):
        plan_contexts(pairs, limit=1)


def _write(path: Path, syntax: str = ExplicitVRLittleEndian, **tags: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = tags.pop("sop", generate_uid())
    ds.StudyInstanceUID = tags.pop("study", "1.2.3")
    ds.SeriesInstanceUID = tags.pop("series", "1.2.3.4")
    ds.PatientName = tags.pop("name", "DOE^JANE")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_scan_and_batch_of(tmp_path: Path) -> None:
    a = _write(tmp_path / "st" / "a.dcm")
    _write(tmp_path / "st" / "b.dcm", ImplicitVRLittleEndian)
    (tmp_path / "st" / "report.pdf").write_bytes(b"%PDF-1.4\n")
    (tmp_path / "st" / ".partial").write_bytes(b"x")
    broken = tmp_path / "st" / "sub" / "broken.dcm"
    broken.parent.mkdir()
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x00")
    files = collect([tmp_path / "st"])
    assert [rel for rel, _ in files] == [
        "st/a.dcm",
        "st/b.dcm",
        "st/report.pdf",
        "st/sub/broken.dcm",
    ]
    instances, skipped, bad = scan(files)
    assert [(i.rel, i.sop_uid, i.syntax) for i in instances] == [
        ("st/a.dcm", a.SOPInstanceUID, ExplicitVRLittleEndian),
        ("st/b.dcm", instances[1].sop_uid, ImplicitVRLittleEndian),
    ]
    assert skipped == ["st/report.pdf"]
    assert [rel for rel, _ in bad] == ["st/sub/broken.dcm"]
    batches = plan_contexts((i.sop_class, i.syntax) for i in instances)
    assert _batch_of(batches, instances[0]) == 0
    with pytest.raises(BeamError) as info:
        collect([tmp_path / "missing"])
    assert "is not a file or folder" in info.value.user_message


@pytest.mark.parametrize(
    ("uid", "expected"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2"),
        ("1.2.3\x00", "1.2.3"),
        ("", "fallback"),
        (None, "fallback"),
    ],
)
def test_safe_name_keeps_real_uids(uid: str | None, expected: str) -> None:
    assert safe_name(uid, "fallback") == expected


@pytest.mark.parametrize("hostile", ["../../etc", "..", ".", "/abs", "a/b", "1." * 40, "1..2"])
def test_safe_name_hashes_anything_else(hostile: str) -> None:
    name = safe_name(hostile, "fallback")
    assert name.startswith("x") and len(name) == 33 and name[1:].isalnum()
    assert name == safe_name(hostile, "other")  # stable


def test_sink_places_by_study_and_series_and_handles_duplicates(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    sink = StudySink(root, min_free=0)
    spool = tmp_path / "spool"
    ds = _write(spool / "one.dcm", study="1.2.9", series="1.2.9.1", sop="1.2.9.1.1")
    status, placed = sink.place(spool / "one.dcm", "1.2.9.1.1")
    assert status == 0 and placed is not None
    assert placed.path == root / "1.2.9" / "1.2.9.1" / "1.2.9.1.1.dcm"
    assert not (spool / "one.dcm").exists()  # moved, not copied
    first = placed.path.read_bytes()
    # the very same bytes again: nothing new
    _write(spool / "again.dcm", study="1.2.9", series="1.2.9.1", sop="1.2.9.1.1")
    assert (spool / "again.dcm").read_bytes() == first
    status, placed = sink.place(spool / "again.dcm", "1.2.9.1.1")
    assert status == 0 and placed is not None and placed.duplicate == "same"
    # other bytes under the same SOP Instance UID: kept beside, the first is untouched
    _write(spool / "other.dcm", study="1.2.9", series="1.2.9.1", sop="1.2.9.1.1", name="X^Y")
    status, placed = sink.place(spool / "other.dcm", "1.2.9.1.1")
    assert status == 0 and placed is not None and placed.duplicate == "conflict"
    assert placed.path.name == "1.2.9.1.1~2.dcm"
    assert (root / "1.2.9" / "1.2.9.1" / "1.2.9.1.1.dcm").read_bytes() == first
    # hostile UIDs never leave the root
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UIDs we plant
        _write(spool / "evil.dcm", study="../../../tmp/evil", series="..", sop="x")
    status, placed = sink.place(spool / "evil.dcm", "../../x")
    assert status == 0 and placed is not None
    assert placed.path.resolve().is_relative_to(root.resolve())
    assert placed.path.parent.parent.name == safe_name("../../../tmp/evil", "")
    assert sorted(p.name for p in root.rglob("*") if p.name.startswith(".")) == []
    assert ds.StudyInstanceUID == "1.2.9"


def test_sink_refuses_garbage_and_full_disk(tmp_path: Path) -> None:
    sink = StudySink(tmp_path, min_free=0)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(os.urandom(64))
    assert sink.place(junk, "1.2")[0] == 0xC210  # cannot understand
    assert sink.place(tmp_path / "missing.dcm", "1.2")[0] == 0xA700
    full = StudySink(tmp_path, min_free=1 << 62)
    _write(tmp_path / "ok.dcm")
    assert full.place(tmp_path / "ok.dcm", "1.2")[0] == 0xA700  # out of resources
    assert (tmp_path / "ok.dcm").exists()  # nothing lost
