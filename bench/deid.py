"""De-identification cost, measured against a plain read in the same run.

Writes a synthetic CT study (plus one large multi-frame file), then measures:

* reference: reading and SHA-256 hashing every file through `peer.files.SourceReader`
  as a send does (the sender's per-byte work without compression, sealing or network);
* the offer pass of ``send --deidentify`` (parse, de-identify and rewrite every header,
  summary of the new headers; pixel data is never read);
* streaming the de-identified files through the same reader (new header + raw pixels);
* tracemalloc peaks of both reads (memory per file must not grow with pixel data).

With ``--cli``, also ``scanbeam send`` -> ``receive`` of a synthetic CT study as two
processes through a local server, with and without ``--deidentify``, in the same run.

Usage: ``python bench/deid.py [--size 400MB] [--frames 600] [--cli]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from peer.dicom.deid.engine import Deidentifier
from peer.dicom.deid.profile import DEFAULT_PROFILE
from peer.dicom.deid.stream import prepare
from peer.dicom.synth import parse_size, write_study
from peer.files import SourceFile, SourceReader, collect_sources

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BLOCK = 64 * 1024  # the direct path's chunk size, roughly


def _multiframe(path: Path, frames: int) -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.99.1"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.99"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.99.2"
    ds.PatientName = "BENCH^MULTIFRAME"
    ds.NumberOfFrames = frames
    ds.Rows = ds.Columns = 512
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    frame = np.random.default_rng(0).integers(0, 4096, (512, 512), dtype=np.uint16).tobytes()
    ds.PixelData = frame * frames
    ds["PixelData"].VR = "OW"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def _read_all(sources: Sequence[SourceFile], trace: bool = False) -> tuple[float, int, int]:
    """Seconds, bytes and (with ``trace``: tracemalloc slows allocation-heavy code, so
    timed runs are untraced) the peak of traced memory."""
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    reader = SourceReader(sources)
    total = 0
    for ix, f in enumerate(sources):
        digest = hashlib.sha256()  # a send hashes every byte it sends
        for off in range(0, f.size, BLOCK):
            data = reader.read(ix, off, min(BLOCK, f.size - off))
            digest.update(data)
            total += len(data)
        reader.check_unchanged(ix)
    reader.close()
    seconds = time.perf_counter() - started
    peak = 0
    if trace:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return seconds, total, peak


def _cli_send(server: str, src: Path, work: Path, extra: Sequence[str]) -> dict[str, float]:
    """One send -> receive over the CLI; the receiver's rate and the sender's peak RSS."""
    from bench.transfer import _env, _rss_wrapped

    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    s_rss = work / "s.rss"
    env = {**_env(), "SCANBEAM_HOME": str(work / "home")}
    args = ["send", str(src), "--server", server, "--json", "--no-relay", *extra]
    sender = subprocess.Popen(_rss_wrapped(args, s_rss), stdout=subprocess.PIPE, text=True, env=env)
    assert sender.stdout is not None
    started = time.monotonic()
    code = ""
    while not code:  # de-identification events come first
        event = json.loads(sender.stdout.readline())
        code = event.get("code", "")
    offer_pass = time.monotonic() - started
    recv = subprocess.run(
        [
            sys.executable,
            "-m",
            "peer.cli",
            "receive",
            code,
            "--server",
            server,
            "-o",
            str(out),
            "--yes",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    sender.stdout.read()
    sender.wait(60)
    if recv.returncode or sender.returncode:
        raise SystemExit(f"transfer failed: {recv.stderr[-300:]}")
    done = [json.loads(ln) for ln in recv.stdout.splitlines() if '"done"' in ln][-1]
    shutil.rmtree(out, ignore_errors=True)
    return {
        "MBps": done["bytes"] / done["seconds"] / 1e6,
        "seconds": done["seconds"],
        "until_code_s": offer_pass,
        "sender_rss_MB": int(s_rss.read_text()) / 1024,
    }


def _cli(size: int) -> None:
    from bench.transfer import start_server

    with tempfile.TemporaryDirectory(prefix="bench-deid-cli-") as tmp:
        work = Path(tmp)
        study = work / "CT"
        write_study(study, target_bytes=size, series=3, seed=5, report=False)
        proc, url = start_server()
        try:
            plain = _cli_send(url, study, work, [])
            deid = _cli_send(url, study, work, ["--deidentify"])
        finally:
            proc.terminate()
            proc.wait(10)
        for name, r in (("send (reference)", plain), ("send --deidentify", deid)):
            print(
                f"{name:20} {r['MBps']:7.1f} MB/s  transfer {r['seconds']:.2f} s  "
                f"until the code {r['until_code_s']:.2f} s  sender peak RSS "
                f"{r['sender_rss_MB']:.0f} MB"
            )
        print(f"ratio --deidentify / reference: {deid['MBps'] / plain['MBps']:.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=parse_size, default=parse_size("400MB"))
    ap.add_argument("--frames", type=int, default=600, help="frames of the multi-frame file")
    ap.add_argument("--cli", action="store_true", help="also send over the CLI, both ways")
    args = ap.parse_args(argv)
    if args.cli:
        _cli(args.size)
    with tempfile.TemporaryDirectory(prefix="bench-deid-") as tmp:
        root = Path(tmp) / "STUDY"
        info = write_study(root, target_bytes=args.size, series=3, seed=3, report=False)
        _multiframe(root / "multiframe.dcm", args.frames)
        plain = collect_sources([root])
        n_bytes = sum(f.size for f in plain)
        print(
            f"{platform.machine()}, Python {platform.python_version()}; study: {info.files} "
            f"files + a {args.frames}-frame 512x512 file, {n_bytes / 1e6:.0f} MB"
        )
        _read_all(plain)  # warm the page cache for both runs
        t_ref, b_ref, _ = _read_all(plain)
        peak_ref = _read_all(plain, trace=True)[2]
        deid = Deidentifier(DEFAULT_PROFILE, b"\x01" * 32)
        started = time.perf_counter()
        prepared = prepare(plain, deid)
        t_offer = time.perf_counter() - started
        t_deid, b_deid, _ = _read_all(prepared.sources)
        peak_deid = _read_all(prepared.sources, trace=True)[2]
        big = max(f.size for f in prepared.sources)
        rate = b_ref / t_ref / 1e6
        print(f"reference: plain read + SHA-256 {rate:7.1f} MB/s  peak {peak_ref / 1e6:.1f} MB")
        print(
            f"offer pass (headers only)       {t_offer:7.2f} s     "
            f"({len(prepared.sources) / t_offer:.0f} files/s)"
        )
        print(
            f"de-identified read + SHA-256    {b_deid / t_deid / 1e6:8.1f} MB/s  "
            f"peak {peak_deid / 1e6:.1f} MB  ratio vs reference {t_ref / t_deid:.2f}"
        )
        print(f"largest file {big / 1e6:.0f} MB; peak / largest file = {peak_deid / big:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
