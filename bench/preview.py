"""Cost of series previews against the header-only study summary, in the same run.

    .venv/bin/python bench/preview.py [--slices 300]

Writes a synthetic CT study (512x512 int16 slices in 3 series, peer/dicom/synth.py) to a
temporary folder, then times, best of 3:
  - the study summary (`summarize`, headers only): the reference;
  - the previews (`make_previews`: headers again, then one image per series);
and measures the peak Python heap (tracemalloc) of one preview of a 4096x4096 16-bit
image, against the image's own size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from peer.dicom.preview import make_previews
from peer.dicom.summary import summarize
from peer.dicom.synth import write_study


def _best(fn: object, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t)
    return best


def _big(path: Path, side: int) -> int:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    pixels = np.random.default_rng(0).integers(0, 4096, (side, side), dtype=np.uint16)
    ds.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=12)
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.save_as(path, enforce_file_format=True)
    return pixels.nbytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "study"
        info = write_study(root, target_bytes=args.slices * 527_000, series=3, seed=1, noise=20.0)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in files)
        pairs = [(str(p.relative_to(root)), p) for p in files]
        t_summary = _best(lambda: summarize(pairs))
        result = make_previews(files, budget=60.0)
        t_previews = _best(lambda: make_previews(files, budget=60.0))
        print(
            f"study: {len(files)} files, {size / 1e6:.0f} MB, {len(result.previews)} series "
            f"previews ({', '.join(f'{p.w}x{p.h} {len(p.png)} B' for p in result.previews)})"
        )
        print(f"summary (headers only, reference): {t_summary * 1000:.0f} ms")
        print(
            f"previews: {t_previews * 1000:.0f} ms = {t_previews / t_summary:.1f}x the summary, "
            f"{t_previews / max(1, len(result.previews)) * 1000:.0f} ms per series"
        )
        del info
        big = Path(tmp) / "big.dcm"
        nbytes = _big(big, 4096)
        tracemalloc.start()
        t = time.perf_counter()
        (one,) = make_previews([big], budget=60.0).previews
        seconds = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(
            f"4096x4096 16-bit image: {seconds * 1000:.0f} ms, peak heap {peak / 1e6:.0f} MB "
            f"= {peak / nbytes:.1f}x the image's {nbytes / 1e6:.0f} MB ({one.w}x{one.h})"
        )


if __name__ == "__main__":
    main()
