"""Synthetic CT studies for tests, ``make demo`` and benchmarks.

The study is fake but realistic enough to exercise the whole pipeline: uncompressed
16-bit CT slices (explicit VR little endian) of a body phantom with lungs, organs and
bone, gaussian noise, a small scout series of another size, and a one-page PDF report.
Output is deterministic for a given seed, and slices are generated and written one at
a time, so memory stays flat whatever the target size.

Command line::

    python -m peer.dicom.synth DEST [--size 20MB] [--series 3] [--seed 0] [--noise 20]
                                    [--no-report]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from peer.units import human_bytes

__all__ = ["SeriesInfo", "StudyInfo", "main", "parse_size", "write_study"]

AIR_HU = -1000.0
_INTERCEPT = -1024
_BITS_STORED = 12
_STORED_MIN = -(1 << (_BITS_STORED - 1))
_STORED_MAX = (1 << (_BITS_STORED - 1)) - 1
_FOV_MM = 350.0
_KEYFRAMES = 5  # phantom shapes rendered per series; slices blend between neighbours
_SCOUT_IMAGES = 2
_UID_ROOT = "scanbeam-synth"

# cx, cy, rx, ry, HU; coordinates are normalised to -1..1 (x right, y down).
_Ellipse = tuple[float, float, float, float, float]
_ShapesFn = Callable[[float], list[_Ellipse]]
_F32 = NDArray[np.float32]


class SeriesInfo(NamedTuple):
    """One written series."""

    series_uid: str
    modality: str
    description: str
    n_images: int


@dataclass(frozen=True, slots=True)
class StudyInfo:
    """What `write_study` wrote.

    Attributes:
        study_uid: The StudyInstanceUID shared by every image.
        series: One entry per series, in SeriesNumber order.
        files: Files written, the report included.
        bytes: Total size of those files.
    """

    study_uid: str
    series: tuple[SeriesInfo, ...]
    files: int
    bytes: int


@dataclass(frozen=True, slots=True)
class _SeriesSpec:
    description: str
    rows: int
    cols: int
    thickness: float
    window: tuple[str, str]
    kernel: str
    image_type: tuple[str, ...]
    orientations: tuple[tuple[float, ...], ...]  # cycled over the images
    step: tuple[float, float, float]  # mm moved per image
    shapes: _ShapesFn


# --------------------------------------------------------------------------- phantom


def _axial_shapes(t: float) -> list[_Ellipse]:
    """Body cross-section at fraction `t` from upper chest (0) to lower abdomen (1)."""
    chest = max(0.0, 1.0 - 1.5 * t)
    belly = min(1.0, max(0.0, (t - 0.25) / 0.5))
    w = 0.84 + 0.06 * math.sin(math.pi * t)
    h = 0.58 + 0.05 * math.sin(math.pi * t)
    shapes: list[_Ellipse] = [
        (0.0, 0.05, w, h, -100.0),  # subcutaneous fat
        (0.0, 0.05, w - 0.06, h - 0.06, 40.0),  # muscle and soft tissue
    ]
    if chest > 0.0:
        lung = math.sqrt(chest)
        shapes += [
            (-0.38, 0.0, 0.30 * lung, 0.40 * lung, -850.0),
            (0.38, 0.0, 0.28 * lung, 0.40 * lung, -850.0),
            (0.08, -0.05, 0.22 * chest, 0.20 * chest, 45.0),  # heart
            (0.0, -h + 0.1, 0.06 * chest, 0.03 * chest, 700.0),  # sternum
        ]
        for deg in (200, 225, 250, 290, 315, 340, 20, 45, 135, 160):
            a = math.radians(deg)
            shapes.append(
                ((w - 0.1) * math.cos(a), 0.05 + (h - 0.1) * math.sin(a), 0.035, 0.035, 700.0)
            )
    if belly > 0.0:
        shapes += [
            (-0.35, 0.02, 0.33 * belly, 0.28 * belly, 60.0),  # liver
            (0.35, -0.05, 0.16 * belly, 0.12 * belly, 45.0),  # spleen
            (-0.28, 0.36, 0.09 * belly, 0.13 * belly, 30.0),  # kidneys
            (0.28, 0.36, 0.09 * belly, 0.13 * belly, 30.0),
            (0.15, 0.10, 0.15 * belly, 0.08 * belly, -300.0),  # bowel gas
        ]
    shapes += [
        (0.06, 0.30, 0.05, 0.05, 50.0),  # aorta
        (0.0, 0.45, 0.11, 0.10, 700.0),  # vertebral body
        (0.0, 0.57, 0.04, 0.035, 20.0),  # spinal canal
    ]
    return shapes


def _scout_shapes(t: float) -> list[_Ellipse]:
    """Frontal (t < 0.5) or lateral projection-like image of the trunk."""
    if t < 0.5:
        return [
            (0.0, 0.05, 0.62, 0.92, 40.0),
            (-0.26, -0.35, 0.2, 0.35, -700.0),
            (0.26, -0.35, 0.2, 0.35, -700.0),
            (0.08, -0.15, 0.16, 0.15, 60.0),
            (-0.2, 0.15, 0.26, 0.15, 80.0),
            (0.0, 0.1, 0.05, 0.9, 400.0),
            (-0.3, 0.78, 0.22, 0.1, 500.0),
            (0.3, 0.78, 0.22, 0.1, 500.0),
        ]
    return [
        (0.0, 0.05, 0.42, 0.92, 40.0),
        (-0.05, -0.35, 0.26, 0.35, -700.0),
        (0.3, 0.1, 0.06, 0.9, 400.0),
        (-0.05, 0.2, 0.25, 0.15, 80.0),
    ]


def _render(shapes: Sequence[_Ellipse], rows: int, cols: int) -> _F32:
    """Rasterise ellipses (later ones on top) over air, slightly blurred."""
    y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, cols, dtype=np.float32)[None, :]
    img = np.full((rows, cols), AIR_HU, dtype=np.float32)
    for cx, cy, rx, ry, hu in shapes:
        if rx < 0.005 or ry < 0.005:
            continue
        img[((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0] = hu
    # [1 2 1]/4 in both directions: soft edges, like partial-volume effects.
    pad = np.pad(img, 1, mode="edge")
    img = (pad[:-2, 1:-1] + 2.0 * pad[1:-1, 1:-1] + pad[2:, 1:-1]) * 0.25
    pad = np.pad(img, 1, mode="edge")
    img = (pad[1:-1, :-2] + 2.0 * pad[1:-1, 1:-1] + pad[1:-1, 2:]) * 0.25
    return img.astype(np.float32)


class _SliceMaker:
    """Blends precomputed keyframes and adds noise; one slice buffer, reused."""

    def __init__(self, spec: _SeriesSpec, rng: np.random.Generator, noise: float) -> None:
        ts = np.linspace(0.0, 1.0, _KEYFRAMES)
        self._frames = [_render(spec.shapes(float(t)), spec.rows, spec.cols) for t in ts]
        self._diffs = [b - a for a, b in zip(self._frames, self._frames[1:], strict=False)]
        self._rng = rng
        self._noise = noise
        self._buf = np.empty((spec.rows, spec.cols), dtype=np.float32)
        self._noise_buf = np.empty((spec.rows, spec.cols), dtype=np.float32)

    def pixels(self, t: float) -> bytes:
        """Stored values (HU - intercept) for fraction `t` of the series, int16 LE."""
        pos = min(max(t, 0.0), 1.0) * (_KEYFRAMES - 1)
        k = min(int(pos), _KEYFRAMES - 2)
        buf = self._buf
        np.multiply(self._diffs[k], np.float32(pos - k), out=buf)
        buf += self._frames[k]
        if self._noise > 0.0:
            self._rng.standard_normal(dtype=np.float32, out=self._noise_buf)
            self._noise_buf *= np.float32(self._noise)
            buf += self._noise_buf
        buf -= np.float32(_INTERCEPT)
        np.rint(buf, out=buf)
        np.clip(buf, _STORED_MIN, _STORED_MAX, out=buf)
        return buf.astype("<i2").tobytes()


# --------------------------------------------------------------------------- DICOM


def _uid(seed: int, *parts: object) -> str:
    """Deterministic UID; the slash-joined source keeps ("1", "23") != ("12", "3")."""
    return str(generate_uid(entropy_srcs=["/".join([_UID_ROOT, str(seed), *map(str, parts)])]))


def _ds(value: float) -> str:
    """A DS value that fits the 16-character limit."""
    for digits in range(12, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            break
    return "0" if text == "-0" else text


def _specs(series: int, rows: int, cols: int) -> list[_SeriesSpec]:
    axial = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    recons = (
        ("Axial 5mm", 5.0, ("40", "400"), "STANDARD"),
        ("Axial 1.25mm Lung", 1.25, ("-600", "1500"), "LUNG"),
        ("Axial 2.5mm Bone", 2.5, ("500", "2000"), "BONE"),
    )
    n_main = series - 1 if series > 1 else 1
    specs = []
    for i in range(n_main):
        desc, thk, window, kernel = recons[i % len(recons)]
        if i >= len(recons):
            desc = f"{desc} recon {i + 1}"
        specs.append(
            _SeriesSpec(
                description=desc,
                rows=rows,
                cols=cols,
                thickness=thk,
                window=window,
                kernel=kernel,
                image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
                orientations=(axial,),
                step=(0.0, 0.0, -thk),
                shapes=_axial_shapes,
            )
        )
    if series > 1:
        specs.append(
            _SeriesSpec(
                description="Scout",
                rows=max(rows // 2, 8),
                cols=max(cols // 2, 8),
                thickness=1.0,
                window=("0", "1200"),
                kernel="STANDARD",
                image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                orientations=((1.0, 0.0, 0.0, 0.0, 0.0, -1.0), (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)),
                step=(0.0, 1.0, 0.0),
                shapes=_scout_shapes,
            )
        )
    return specs


def _series_template(
    spec: _SeriesSpec,
    number: int,
    study: Dataset,
    series_uid: str,
    first_uid: str,
) -> Dataset:
    """Every element of a slice; the per-image ones get placeholder values."""
    ds = Dataset()
    for elem in study:
        ds.add(elem)
    ds.SOPClassUID = CTImageStorage
    ds.ImageType = list(spec.image_type)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = spec.description
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHESTABDOMEN"
    ds.PatientPosition = "HFS"
    ds.ProtocolName = "CT CHEST ABDOMEN"
    ds.ConvolutionKernel = spec.kernel
    ds.KVP = "120"
    ds.AcquisitionNumber = 1
    ds.SliceThickness = _ds(spec.thickness)
    spacing = [_ds(_FOV_MM / spec.rows), _ds(_FOV_MM / spec.cols)]
    ds.PixelSpacing = spacing
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.cols
    ds.BitsAllocated = 16
    ds.BitsStored = _BITS_STORED
    ds.HighBit = _BITS_STORED - 1
    ds.PixelRepresentation = 1
    ds.WindowCenter = spec.window[0]
    ds.WindowWidth = spec.window[1]
    ds.RescaleIntercept = str(_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = bytes(2 * spec.rows * spec.cols)
    ds["PixelData"].VR = "OW"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    _set_instance(ds, spec, 0, first_uid)  # realistic sizes for `_plan`
    return ds


def _set_instance(ds: Dataset, spec: _SeriesSpec, index: int, sop_uid: str) -> None:
    """Fill in the per-image elements of a series template."""
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.InstanceNumber = index + 1
    ds.ImageOrientationPatient = [_ds(v) for v in spec.orientations[index % len(spec.orientations)]]
    half_x = _FOV_MM / 2 - _FOV_MM / spec.cols / 2
    origin = (-half_x, -half_x, 0.0)
    pos = [o + index * s for o, s in zip(origin, spec.step, strict=True)]
    ds.ImagePositionPatient = [_ds(v) for v in pos]
    ds.SliceLocation = _ds(pos[2])


def _file_size(ds: Dataset) -> int:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return len(buf.getvalue())


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "series"


# --------------------------------------------------------------------------- report


def _pdf_text(text: str) -> bytes:
    ascii_text = "".join(c if " " <= c <= "~" else "?" for c in text)
    escaped = ascii_text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return escaped.encode("ascii")


def _report_pdf(lines: Sequence[str]) -> bytes:
    """A one-page PDF 1.4 with a "Radiology report" title and `lines` below it."""
    content = b"BT /F1 18 Tf 72 770 Td (Radiology report) Tj ET\nBT /F1 11 Tf 72 740 Td 16 TL\n"
    content += b"".join(b"(" + _pdf_text(line) + b") Tj T*\n" for line in lines) + b"ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


# --------------------------------------------------------------------------- API


def write_study(
    dest: Path,
    *,
    target_bytes: int = 20_000_000,
    series: int = 3,
    seed: int = 0,
    rows: int = 512,
    cols: int = 512,
    noise: float = 20.0,
    report: bool = True,
    patient_name: str = "DOE^JANE",
    patient_id: str = "SB-0001",
) -> StudyInfo:
    """Write a synthetic CT study into `dest`, one slice at a time.

    Layout: ``dest/SE001_Axial_5mm/IM0001.dcm`` ... plus ``dest/report.pdf``. With
    ``series > 1`` the last series is a two-image scout at half the matrix size; the
    remaining bytes are split evenly over the other series (at least one image each).

    Args:
        dest: Output directory; created if missing, must be empty if present.
        target_bytes: Approximate total size of everything written.
        series: Number of series (>= 1).
        seed: Seed for pixels, UIDs and dates (>= 0); same seed, same bytes.
        rows: Matrix rows of the axial series (>= 16).
        cols: Matrix columns of the axial series (>= 16).
        noise: Gaussian noise sigma in HU (>= 0).
        report: Also write ``report.pdf``.
        patient_name: PatientName (PN, ``FAMILY^GIVEN``).
        patient_id: PatientID.

    Returns:
        UIDs, series and totals of what was written.

    Raises:
        ValueError: An argument is out of range.
        FileExistsError: `dest` exists and is not an empty directory.
    """
    if series < 1 or rows < 16 or cols < 16 or seed < 0 or target_bytes < 0:
        raise ValueError("need series >= 1, rows and cols >= 16, seed >= 0, target_bytes >= 0")
    if not math.isfinite(noise) or noise < 0:
        raise ValueError("noise must be a finite number >= 0")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not an empty directory")

    rng = np.random.default_rng(seed)
    study_uid = _uid(seed, "study")
    when = dt.datetime(2025, 1, 6, 8, 30) + dt.timedelta(days=seed % 1000, minutes=seed % 541)
    study = Dataset()
    if not (patient_name + patient_id).isascii():
        study.SpecificCharacterSet = "ISO_IR 192"
    study.StudyInstanceUID = study_uid
    study.FrameOfReferenceUID = _uid(seed, "frame-of-reference")
    study.StudyDate = when.strftime("%Y%m%d")
    study.StudyTime = when.strftime("%H%M%S")
    study.StudyDescription = "CT CHEST ABDOMEN"
    study.StudyID = "1"
    study.AccessionNumber = f"SB{seed % 10**10:010d}"
    study.ReferringPhysicianName = ""
    study.Manufacturer = "ScanBeam Synthetic"
    study.InstitutionName = "ScanBeam Test Hospital"
    study.PatientName = patient_name
    study.PatientID = patient_id
    study.PatientBirthDate = "19700101"
    study.PatientSex = "F"

    specs = _specs(series, rows, cols)
    templates = [
        _series_template(
            spec, n, study, _uid(seed, "series", n), _uid(seed, "series", n, "image", 1)
        )
        for n, spec in enumerate(specs, start=1)
    ]
    pdf = b""
    if report:
        pdf = _report_pdf(
            [
                f"Patient: {patient_name} ({patient_id})",
                f"Study: CT CHEST ABDOMEN, {when:%Y-%m-%d}, accession {study.AccessionNumber}",
                "Findings: synthetic phantom, no real patient data.",
                "Impression: test data generated by ScanBeam.",
            ]
        )
    counts = _plan(specs, templates, target_bytes - len(pdf))

    dest.mkdir(parents=True, exist_ok=True)
    written = []
    files = 0
    total = 0
    for number, (spec, ds, count) in enumerate(zip(specs, templates, counts, strict=True), 1):
        folder = dest / f"SE{number:03d}_{_safe_name(spec.description)}"
        folder.mkdir()
        maker = _SliceMaker(spec, rng, noise)
        for i in range(count):
            _set_instance(ds, spec, i, _uid(seed, "series", number, "image", i + 1))
            ds.PixelData = maker.pixels(i / (count - 1) if count > 1 else 0.5)
            path = folder / f"IM{i + 1:04d}.dcm"
            ds.save_as(path, enforce_file_format=True, overwrite=False)
            files += 1
            total += path.stat().st_size
        written.append(SeriesInfo(str(ds.SeriesInstanceUID), "CT", spec.description, count))
    if report:
        (dest / "report.pdf").write_bytes(pdf)
        files += 1
        total += len(pdf)
    return StudyInfo(study_uid=study_uid, series=tuple(written), files=files, bytes=total)


def _plan(specs: Sequence[_SeriesSpec], templates: Sequence[Dataset], budget: int) -> list[int]:
    """Images per series so that the DICOM files add up to about `budget` bytes."""
    sizes = [_file_size(ds) for ds in templates]
    counts = [0] * len(specs)
    main = list(range(len(specs)))
    if len(specs) > 1:
        counts[-1] = _SCOUT_IMAGES
        budget -= _SCOUT_IMAGES * sizes[-1]
        main = main[:-1]
    per_image = sizes[main[0]]
    n_total = max(len(main), round(budget / per_image))
    base, extra = divmod(n_total, len(main))
    for rank, index in enumerate(main):
        counts[index] = base + (1 if rank < extra else 0)
    return counts


# --------------------------------------------------------------------------- CLI

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?)b?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Parse ``"20MB"``, ``"1GB"``, ``"1.5 GiB"``, ``"500k"`` or ``"12345"`` to bytes.

    Args:
        text: A number with an optional decimal (kB, MB, ...) or binary (KiB, MiB, ...)
            unit; a bare number is bytes.

    Returns:
        The size in bytes.

    Raises:
        ValueError: `text` is not a size.
    """
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (try 20MB or 1GB)")
    number, prefix, binary = match.groups()
    power = " kmgt".index(prefix.lower() or " ")
    scale: int = (1024 if binary else 1000) ** power
    return round(float(number) * scale)


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m peer.dicom.synth", description="Write a synthetic CT study."
    )
    parser.add_argument("dest", type=Path, help="output directory (new or empty)")
    parser.add_argument("--size", type=_size_arg, default=20_000_000, help="e.g. 20MB, 1GB")
    parser.add_argument("--series", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=20.0, help="noise sigma in HU")
    parser.add_argument("--no-report", action="store_true", help="skip report.pdf")
    args = parser.parse_args(argv)
    try:
        info = write_study(
            args.dest,
            target_bytes=args.size,
            series=args.series,
            seed=args.seed,
            noise=args.noise,
            report=not args.no_report,
        )
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {info.files} files, {info.bytes} bytes ({human_bytes(info.bytes)}) to {args.dest}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
