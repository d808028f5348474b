"""The sender's offer scan (peer.session._Scan): the code is shown while the headers of the
study are read in a worker thread (docs/protocol.md §5.2)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from peer.dicom.synth import write_study
from peer.files import collect_sources
from peer.session import _build_manifest, _Scan, _ScanCancelled
from peer.settings import Settings


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 3000 small DICOM files (copies of one synthetic slice): reading their
    headers takes seconds, so a scan that is stopped at once is seen stopping early."""
    root = tmp_path_factory.mktemp("many")
    write_study(root / "one", target_bytes=200_000, series=1, rows=64, cols=64, report=False)
    first = sorted((root / "one").rglob("*.dcm"))[0]
    folder = root / "study"
    folder.mkdir()
    for i in range(3000):
        shutil.copyfile(first, folder / f"IM{i:05d}.dcm")
    return folder


async def test_scan_gives_the_same_manifest_as_a_direct_build(many: Path) -> None:
    sources = collect_sources([many])
    settings = Settings(previews=False)
    scan = _Scan(sources, settings, None, None)
    got = await scan.result()
    assert scan.ready() is got
    want = _build_manifest(sources, settings)
    assert [f.path for f in got.files] == [f.path for f in want.files]
    assert [f.size for f in got.files] == [f.size for f in want.files]
    assert got.summary == want.summary
    assert got.summary["dicom_files"] == 3000
    await scan.close()  # idempotent after the result
    await scan.close()


async def test_a_closed_scan_stops_at_the_next_file(many: Path) -> None:
    sources = collect_sources([many])
    settings = Settings(previews=False)
    t0 = time.monotonic()
    _build_manifest(sources, settings)
    full = time.monotonic() - t0
    assert full > 0.5  # else the folder is too small to see the scan stop early

    scan = _Scan(sources, settings, None, None)
    t0 = time.monotonic()
    await scan.close()
    stopped = time.monotonic() - t0
    assert stopped < full / 2
    assert scan.ready() is None
    with pytest.raises(_ScanCancelled):
        await scan.result()
