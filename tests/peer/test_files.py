from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from peer.errors import DestinationExists, LocalFileError, SourceError
from peer.files import (
    CHECKPOINT_BYTES,
    STAGING,
    Checkpoints,
    Destination,
    SourceReader,
    collect_sources,
)
from peer.proto.manifest import FileEntry, Manifest

CS = 1024


def _manifest(files: dict[str, bytes]) -> Manifest:
    return Manifest(
        files=tuple(FileEntry(p, len(b), 5, bytes(16)) for p, b in files.items()), chunk_size=CS
    )


def _receive(dest: Destination, files: dict[str, bytes], resume: list[int] | None = None) -> None:
    for i, data in enumerate(files.values()):
        start = resume[i] if resume else 0
        n = max(1, -(-len(data) // CS))
        for k in range(start, n):
            dest.write(i, k * CS, data[k * CS : (k + 1) * CS])
        dest.file_verified(i)


def test_collect_sources_keeps_relative_paths_and_skips_links(tmp_path: Path) -> None:
    study = tmp_path / "STUDY"
    (study / "SE1").mkdir(parents=True)
    (study / "SE1" / "b.dcm").write_bytes(b"b")
    (study / "SE1" / "a.dcm").write_bytes(b"aa")
    (study / "report.pdf").write_bytes(b"%PDF")
    (study / "link.dcm").symlink_to(study / "report.pdf")
    (study / "dirlink").symlink_to(study / "SE1")
    got = collect_sources([study])
    assert [f.rel for f in got] == ["STUDY/SE1/a.dcm", "STUDY/SE1/b.dcm", "STUDY/report.pdf"]
    assert [f.size for f in got] == [2, 1, 4]


def test_collect_sources_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        collect_sources([tmp_path / "missing"])
    assert info.value.user_message.startswith("Cannot read ")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.dcm").write_text("1")
    (tmp_path / "b" / "X.dcm").write_text("2")
    with pytest.raises(SourceError) as info:
        collect_sources([tmp_path / "a" / "x.dcm", tmp_path / "b" / "X.dcm"])
    assert "Two files would both be named" in info.value.user_message


def test_source_reader_reads_and_detects_changes(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    data = os.urandom(3 * 1024 * 1024 + 5)
    p.write_bytes(data)
    (src,) = collect_sources([p])
    r = SourceReader([src])
    assert r.read(0, 0, 10) == data[:10]
    assert (
        r.read(0, 2 * 1024 * 1024 + 3, 1000) == data[2 * 1024 * 1024 + 3 : 2 * 1024 * 1024 + 1003]
    )
    r.check_unchanged(0)
    p.write_bytes(data[:100])
    with pytest.raises(SourceError) as info:
        r.check_unchanged(0)
    assert info.value.user_message == "The file 'f.bin' changed while it was being sent."
    with pytest.raises(SourceError):
        r.read(0, 3 * 1024 * 1024, 5)
    r.close()


def test_receive_place_and_clean_up(tmp_path: Path) -> None:
    files = {"S/a.dcm": os.urandom(5000), "S/sub/b.dcm": b"", "c.pdf": os.urandom(1024)}
    dest = Destination(tmp_path, _manifest(files))
    resume, _hashes, held = dest.preflight()
    assert resume == [0, 0, 0] and held == 0
    _receive(dest, files)
    # nothing visible under its final name before placement
    assert not (tmp_path / "S").exists() and not (tmp_path / "c.pdf").exists()
    placed = dest.place_all()
    assert [p.read_bytes() for p in placed] == list(files.values())
    assert not (tmp_path / STAGING).exists()
    assert oct((tmp_path / "c.pdf").stat().st_mode & 0o777) == "0o600"


def test_existing_destination_file(tmp_path: Path) -> None:
    (tmp_path / "a.dcm").write_bytes(b"old")
    dest = Destination(tmp_path, _manifest({"a.dcm": b"new"}))
    with pytest.raises(DestinationExists) as info:
        dest.preflight()
    assert "already exists" in info.value.user_message
    assert (tmp_path / "a.dcm").read_bytes() == b"old"


def test_file_appearing_during_transfer_is_not_overwritten(tmp_path: Path) -> None:
    files = {"a.dcm": b"new"}
    dest = Destination(tmp_path, _manifest(files))
    dest.preflight()
    _receive(dest, files)
    (tmp_path / "a.dcm").write_bytes(b"old")
    with pytest.raises(DestinationExists):
        dest.place_all()
    assert (tmp_path / "a.dcm").read_bytes() == b"old"


def test_symlinked_folder_in_destination_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "S").symlink_to(outside)
    files = {"S/a.dcm": b"data"}
    dest = Destination(root, _manifest(files))
    with pytest.raises(LocalFileError) as info:
        dest.preflight()
    assert "is not a plain folder" in info.value.user_message
    # a link planted after the check is still not followed when placing
    dest2 = Destination(root, _manifest({"T/x/b.dcm": b"data"}))
    dest2.preflight()
    _receive(dest2, {"T/x/b.dcm": b"data"})
    (root / "T").symlink_to(outside)
    with pytest.raises(LocalFileError) as info:
        dest2.place_all()
    assert "is not a plain folder" in info.value.user_message
    assert list(outside.iterdir()) == []


def test_resume_from_checkpoint(tmp_path: Path) -> None:
    data = os.urandom(10 * CS + 17)
    files = {"a.bin": data, "b.bin": b"bbb"}
    m = _manifest(files)
    dest = Destination(tmp_path, m)
    dest.preflight()
    for k in range(6):
        dest.write(0, k * CS, data[k * CS : (k + 1) * CS])
    dest.save()  # a failure: checkpoint what was written
    dest2 = Destination(tmp_path, m)
    resume, hashes, held = dest2.preflight()
    assert resume == [6, 0] and held == 6 * CS
    assert hashes[0].hexdigest() == hashlib.sha256(data[: 6 * CS]).hexdigest()
    _receive(dest2, files, resume)
    assert [p.read_bytes() for p in dest2.place_all()] == [data, b"bbb"]


def test_a_checkpoint_records_only_what_was_written_before_it_began(tmp_path: Path) -> None:
    """The fsync runs while the next chunks are written: the resume state it saves counts
    the chunks taken when it began, never one written meanwhile."""
    data = os.urandom(10 * CS)
    files = {"a.bin": b"aaa", "b.bin": data}
    m = _manifest(files)
    dest = Destination(tmp_path, m)
    dest.preflight()
    dest.write(0, 0, b"aaa")
    dest.file_verified(0)
    for k in range(4):
        dest.write(1, k * CS, data[k * CS : (k + 1) * CS])
    job = dest.begin_checkpoint()
    assert job is not None
    for k in range(4, 7):  # written while the job has not run yet
        dest.write(1, k * CS, data[k * CS : (k + 1) * CS])
    job()
    assert Destination(tmp_path, m).preflight()[0] == [1, 4]
    dest.checkpoint()  # the next one takes the rest
    assert Destination(tmp_path, m).preflight()[0] == [1, 7]
    assert dest.begin_checkpoint() is None  # nothing written since


def test_checkpoints_overlap_writing_and_drain_before_placing(tmp_path: Path) -> None:
    big = 4 * 1024 * 1024  # four chunks make a checkpoint
    data = os.urandom(10 * big)
    m = Manifest(files=(FileEntry("a.bin", len(data), 5, bytes(16)),), chunk_size=big)
    dest = Destination(tmp_path, m)
    dest.preflight()
    begun = 0

    async def run() -> list[Path]:
        nonlocal begun
        ckpts = Checkpoints(dest)
        for k in range(10):
            dest.write(0, k * big, data[k * big : (k + 1) * big])
            begun += dest.needs_checkpoint()
            await ckpts.maybe()
        dest.file_verified(0)
        await ckpts.drain()
        return dest.place_all()

    assert [p.read_bytes() for p in asyncio.run(run())] == [data]
    assert begun == 2


def test_a_failed_checkpoint_is_raised_by_drain_and_save_keeps_going(tmp_path: Path) -> None:
    data = os.urandom(CHECKPOINT_BYTES)
    m = Manifest(files=(FileEntry("a.bin", len(data), 5, bytes(16)),), chunk_size=len(data))
    dest = Destination(tmp_path, m)
    dest.preflight()

    async def run() -> None:
        ckpts = Checkpoints(dest)
        dest.write(0, 0, data)
        (dest.staging / "state.json.tmp").mkdir()  # state.json cannot be written
        await ckpts.maybe()
        with pytest.raises(LocalFileError):
            await ckpts.drain()
        await ckpts.save()  # best effort after a failure: no exception

    asyncio.run(run())


def test_resume_state_that_lies_is_ignored(tmp_path: Path) -> None:
    data = os.urandom(4 * CS)
    m = _manifest({"a.bin": data})
    dest = Destination(tmp_path, m)
    dest.preflight()
    dest.write(0, 0, data[:CS])
    dest.save()
    (dest.staging / "f0000000").write_bytes(b"short")
    assert Destination(tmp_path, m).preflight()[0] == [0]
    (dest.staging / "state.json").write_text("{not json")
    assert Destination(tmp_path, m).preflight()[0] == [0]


def test_different_files_do_not_share_resume_state(tmp_path: Path) -> None:
    a = Destination(tmp_path, _manifest({"a.bin": b"x" * 3000}))
    b = Destination(tmp_path, _manifest({"a.bin": b"x" * 3001}))
    assert a.key != b.key
