"""Series preview thumbnails for the offer (docs/protocol.md §5.1 ``previews``).

`make_previews` picks the middle image of each series (sorted along the slice normal by
ImagePositionPatient, else by InstanceNumber, else by path), decodes that one image (the
middle frame of a multi-frame one) with pydicom, renders it for display and encodes a
small PNG:

- grey images: Modality LUT (RescaleSlope/Intercept or a Modality LUT Sequence), then the
  VOI (the first WindowCenter/WindowWidth pair with its VOILUTFunction, else the first VOI
  LUT, else the image's min..max), MONOCHROME1 inverted;
- colour: RGB as is, YBR_FULL / YBR_FULL_422 converted to RGB by pydicom, PALETTE COLOR
  through its palette (``apply_color_lut``);
- area-averaged down to at most `DEFAULT_SIZE` px on the long side (pixel aspect from
  PixelSpacing / PixelAspectRatio), in NumPy.

Compressed transfer syntaxes are decoded by the permissively licensed pydicom plugins the
project installs (pylibjpeg-openjpeg, pylibjpeg-rle, pyjpegls, python-gdcm, Pillow; never
the GPL pylibjpeg-libjpeg). A series whose image cannot be decoded, has no pixel data or is
too large gets no preview and a `Skipped` reason; nothing here raises on file content.

Only headers and one image per series are read. The whole run is time-boxed (``budget``
seconds, checked before each file and series): a huge study never delays the offer long.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from peer.dicom.summary import Slice, finite_floats
from peer.proto.manifest import MAX_PREVIEW_BYTES, MAX_PREVIEW_PX, MAX_PREVIEWS, SeriesPreview

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_SIZE",
    "MAX_PNG_BYTES",
    "MAX_PREVIEWS",
    "MAX_SIZE",
    "Preview",
    "PreviewResult",
    "Skipped",
    "make_previews",
    "offer_previews",
    "render",
    "render_file",
]

DEFAULT_SIZE = 128  # long side of a thumbnail, px
MAX_SIZE = MAX_PREVIEW_PX  # protocol limits (docs/protocol.md §5.1)
MAX_PNG_BYTES = MAX_PREVIEW_BYTES
DEFAULT_BUDGET = 5.0  # seconds for all previews of one offer
_TRIES = 3  # images tried per series: the middle one, then its neighbours
MAX_PIXELS = 40_000_000  # samples of the one decoded frame (its decode is the memory peak)

_HEADER_KEYWORDS = (
    "SOPClassUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
)
_HEADER_TAGS: list[BaseTag | int] = [Tag(kw) for kw in _HEADER_KEYWORDS]
_LAST_HEADER_TAG = max(int(t) for t in _HEADER_TAGS)
_DEFLATED = "1.2.840.10008.1.2.1.99"
_MAX_DEFLATED = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Preview:
    """One series thumbnail: PNG bytes of ``w`` x ``h`` pixels."""

    series: str
    png: bytes
    w: int
    h: int


@dataclass(frozen=True, slots=True)
class Skipped:
    """A series without a preview and why (plain words, no PHI)."""

    series: str
    reason: str


@dataclass(frozen=True, slots=True)
class PreviewResult:
    previews: tuple[Preview, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    seconds: float = 0.0


class _NoPreview(Exception):
    """This image cannot be previewed; ``str(exc)`` says why in plain words."""


@dataclass(slots=True)
class _Member:
    path: Path
    number: int | None
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None


@dataclass(slots=True)
class _SeriesFiles:
    uid: str
    members: list[_Member] = field(default_factory=list)


# --------------------------------------------------------------------------- choosing


def _past_header(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) > _LAST_HEADER_TAG


def _read_member(path: Path) -> tuple[str, _Member] | None:
    """Series UID and sort keys of one file; None if it is not a usable DICOM file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with path.open("rb") as fp:
                ds = read_partial(
                    fp,
                    stop_when=_past_header,
                    defer_size=1024,
                    force=False,
                    specific_tags=_HEADER_TAGS,
                )
            series = str(ds.get("SeriesInstanceUID", "") or "").strip()
            if not series or not ds.file_meta.get("TransferSyntaxUID"):
                return None
            number: int | None
            try:
                raw = ds.get("InstanceNumber")
                number = None if raw in (None, "") else int(raw)
            except (TypeError, ValueError):
                number = None
            position = finite_floats(ds.get("ImagePositionPatient"), 3)
            orientation = finite_floats(ds.get("ImageOrientationPatient"), 6)
    except Exception:  # not DICOM, malformed, unreadable: not a preview candidate
        return None
    return series, _Member(path, number, position, orientation)


def _ordered(members: Sequence[_Member]) -> list[_Member]:
    """Slice order: along the normal when every image has a position and one
    orientation, else by InstanceNumber when all have one, else by path."""
    first = members[0].orientation
    if first is not None and all(
        m.position is not None and m.orientation == first for m in members
    ):
        row, col = np.array(first[:3]), np.array(first[3:])
        normal = np.cross(row, col)

        def along(m: _Member) -> tuple[float, str]:
            return float(np.dot(normal, np.array(m.position))), str(m.path)

        return sorted(members, key=along)
    if all(m.number is not None for m in members):
        return sorted(members, key=lambda m: (m.number, str(m.path)))
    return sorted(members, key=lambda m: str(m.path))


# --------------------------------------------------------------------------- rendering


def _first(value: object) -> float:
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


def _window(
    x: NDArray[np.float32], center: float, width: float, function: str
) -> NDArray[np.float32]:
    """PS3.3 C.11.2.1.2 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT, SIGMOID) onto 0..1."""
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -80.0, 80.0)))
    elif function == "LINEAR_EXACT":
        out = (x - center) / width + 0.5
    else:
        out = (x - (center - 0.5)) / (width - 1.0) + 0.5
    return _unit(out)


def _unit(x: NDArray[Any]) -> NDArray[np.float32]:
    return np.asarray(np.clip(x, 0.0, 1.0), dtype=np.float32)


def _voi_lut(values: NDArray[np.float32], ds: Dataset) -> NDArray[np.float32]:
    """The first VOI LUT, its output range mapped onto 0..1."""
    from pydicom.pixels.processing import apply_voi_lut

    first, n = (
        int(ds.VOILUTSequence[0].LUTDescriptor[1]),
        int(ds.VOILUTSequence[0].LUTDescriptor[0]),
    )
    n = n or 65536
    table = apply_voi_lut(np.arange(first, first + n, dtype=np.int64), ds, prefer_lut=True)
    lo, hi = float(np.min(table)), float(np.max(table))
    mapped = apply_voi_lut(np.rint(values).astype(np.int64), ds, prefer_lut=True)
    if hi <= lo:
        return np.zeros(values.shape, np.float32)
    return _unit((mapped.astype(np.float32) - lo) / (hi - lo))


def _modality(band: NDArray[Any], ds: Dataset) -> NDArray[np.float32]:
    """Stored values to modality values (Modality LUT, else RescaleSlope/Intercept)."""
    from pydicom.pixels.processing import apply_modality_lut

    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(band, ds), dtype=np.float32)
    values = band.astype(np.float32)
    slope = _first(ds.get("RescaleSlope", 1) or 1)
    intercept = _first(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def _grey_mapper(arr: NDArray[Any], ds: Dataset) -> Callable[[NDArray[Any]], NDArray[np.float32]]:
    """A function from a band of stored values to grey 0..1: Modality LUT, then the first
    window (with its VOILUTFunction), else the first VOI LUT, else the whole image's
    min..max (PixelPaddingValue left out); MONOCHROME1 inverted. Bands keep the float
    temporaries small."""
    voi: Callable[[NDArray[np.float32]], NDArray[np.float32]] | None = None
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center not in (None, "") and width not in (None, ""):
        c, w = _first(center), _first(width)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        if math.isfinite(c) and math.isfinite(w) and w >= (1.0 if function == "LINEAR" else 0):
            if w > 0:

                def voi(x: NDArray[np.float32]) -> NDArray[np.float32]:
                    return _window(x, c, w, function)

    if voi is None and "VOILUTSequence" in ds and len(ds.VOILUTSequence):

        def voi(x: NDArray[np.float32]) -> NDArray[np.float32]:
            return _voi_lut(x, ds)

    if voi is None:
        lo, hi = math.inf, -math.inf
        padding = ds.get("PixelPaddingValue")  # outside the body: not part of the range
        for start in range(0, arr.shape[0], _band_rows(arr)):
            band = arr[start : start + _band_rows(arr)]
            if isinstance(padding, int):
                band = band[band != padding]
            if band.size:
                values = _modality(band, ds)
                lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))

        def voi(x: NDArray[np.float32]) -> NDArray[np.float32]:
            if hi <= lo:
                return np.zeros(x.shape, np.float32)
            return _unit((x - np.float32(lo)) / np.float32(hi - lo))

    invert = str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    assert voi is not None

    def grey(band: NDArray[Any]) -> NDArray[np.float32]:
        out = voi(_modality(band, ds))
        if invert:
            np.subtract(np.float32(1.0), out, out=out)
        return out

    return grey


_BAND_SAMPLES = 1 << 20  # samples mapped at once (float32 temporaries of a few MB)


def _band_rows(arr: NDArray[Any], multiple: int = 1) -> int:
    per_row = max(1, int(np.prod(arr.shape[1:])))
    return multiple * max(1, _BAND_SAMPLES // (per_row * multiple))


def _colour_mapper(
    arr: NDArray[Any], ds: Dataset, photometric: str
) -> Callable[[NDArray[Any]], NDArray[np.float32]]:
    """A function from a band of pixels to RGB 0..1 (pydicom already converted YBR to
    RGB; a palette image goes through its palette)."""
    if photometric == "PALETTE COLOR":
        from pydicom.pixels.processing import apply_color_lut

        if arr.ndim != 2:
            raise _NoPreview("palette image with an unexpected sample layout")

        def palette(band: NDArray[Any]) -> NDArray[np.float32]:
            rgb = apply_color_lut(band, ds)
            top = 255.0 if rgb.dtype == np.uint8 else 65535.0
            return _unit(rgb.astype(np.float32) / np.float32(top))

        return palette
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise _NoPreview("colour image without three samples per pixel")
    bits = int(ds.get("BitsStored", 8) or 8)
    top = np.float32((1 << min(max(bits, 1), 16)) - 1)

    def rgb(band: NDArray[Any]) -> NDArray[np.float32]:
        return _unit(band.astype(np.float32) / top)

    return rgb


def _aspect(ds: Dataset) -> float:
    """Physical height / width of one pixel, clamped to 1/4..4."""
    try:
        if "PixelAspectRatio" in ds:
            v, h = (float(x) for x in ds.PixelAspectRatio)
            ratio = v / h
        elif "PixelSpacing" in ds:
            row, col = (float(x) for x in ds.PixelSpacing)
            ratio = row / col
        else:
            return 1.0
    except (TypeError, ValueError, ZeroDivisionError, AttributeError):
        return 1.0
    return min(4.0, max(0.25, ratio)) if math.isfinite(ratio) and ratio > 0 else 1.0


def _area_axis(img: NDArray[np.float64], n: int, axis: int) -> NDArray[np.float64]:
    """Area-average ``img`` along ``axis`` onto ``n`` samples (exact box filter).

    Integrates the piecewise-constant signal: its cumulative sum, interpolated linearly,
    is exact at fractional box edges.
    """
    m = img.shape[axis]
    if n == m:
        return img
    moved = np.moveaxis(img, axis, 0)
    cum = np.concatenate([np.zeros((1, *moved.shape[1:])), np.cumsum(moved, axis=0)], axis=0)
    edges = np.arange(n + 1, dtype=np.float64) * (m / n)
    lo = np.minimum(np.floor(edges).astype(np.int64), m - 1)
    frac = (edges - lo).reshape((-1,) + (1,) * (moved.ndim - 1))
    at = cum[lo] + (cum[lo + 1] - cum[lo]) * frac
    out = (at[1:] - at[:-1]) / (m / n)
    return np.moveaxis(out, 0, axis)


def downscale(
    img: NDArray[Any],
    out_h: int,
    out_w: int,
    mapper: Callable[[NDArray[Any]], NDArray[np.float32]] | None = None,
) -> NDArray[np.float64]:
    """Area averaging of ``mapper(img)`` to ``out_h`` x ``out_w`` (2-D grey or 3-D RGB).

    Whole-number factors are reduced first by block means, band by band of rows, so
    ``mapper`` (the display mapping) only ever holds one band of floats; the remaining
    fractional step integrates exactly. Up to factor - 1 edge rows/columns are dropped.
    """
    mapper = mapper or (lambda band: band.astype(np.float32))
    h, w = img.shape[:2]
    fy, fx = max(1, h // (2 * out_h)), max(1, w // (2 * out_w))
    hh, ww = (h // fy) * fy, (w // fx) * fx
    step = _band_rows(img, fy)
    parts = []
    for start in range(0, hh, step):
        band = mapper(img[start : min(hh, start + step), :ww])
        shape = (band.shape[0] // fy, fy, ww // fx, fx, *band.shape[2:])
        parts.append(band.reshape(shape).mean(axis=(1, 3), dtype=np.float64))
    reduced = np.concatenate(parts, axis=0)
    out = _area_axis(reduced, out_h, 0)
    return _area_axis(out, out_w, 1)


def _target(h: int, w: int, aspect: float, size: int) -> tuple[int, int]:
    ph = h * aspect  # physical height in column-pixel units
    scale = min(1.0, size / max(ph, w))
    return max(1, round(ph * scale)), max(1, round(w * scale))


def _png(img: NDArray[np.float64]) -> bytes:
    from PIL import Image

    data = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    im = Image.fromarray(data, mode="RGB" if data.ndim == 3 else "L")
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def render(arr: NDArray[Any], ds: Dataset, size: int = DEFAULT_SIZE) -> NDArray[np.float64]:
    """One decoded frame to display values 0..1, at most ``size`` px on the long side.

    Returns:
        A 2-D (grey) or 3-D (RGB) float array.

    Raises:
        _NoPreview: an unsupported photometric interpretation or sample layout.
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 2:
            raise _NoPreview("grey image with an unexpected sample layout")
        mapper = _grey_mapper(arr, ds)
    elif photometric in (
        "RGB",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_ICT",
        "YBR_RCT",
        "PALETTE COLOR",
    ):
        mapper = _colour_mapper(arr, ds, photometric)
    else:
        raise _NoPreview(f"photometric interpretation {photometric or '(none)'} not supported")
    out_h, out_w = _target(arr.shape[0], arr.shape[1], _aspect(ds), size)
    return downscale(arr, out_h, out_w, mapper)


def _decode_one(path: Path) -> tuple[NDArray[Any], Dataset]:
    """The header and the middle frame of one file; raises `_NoPreview` with a reason."""
    from pydicom.pixels.utils import pixel_array

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = dcmread(path, stop_before_pixels=True, defer_size=1 << 20)
            rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
            samples = int(ds.get("SamplesPerPixel", 1) or 1)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except Exception:
            raise _NoPreview("could not read the image header") from None
        if rows <= 0 or cols <= 0:
            raise _NoPreview("no image (no image size in the header)")
        if rows * cols * samples > MAX_PIXELS:
            raise _NoPreview(f"image too large to preview ({cols}x{rows})")
        index = frames // 2 if frames > 1 else None
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        try:
            if syntax == _DEFLATED:
                # pydicom decodes a deflated file only from a dataset read whole
                if path.stat().st_size > _MAX_DEFLATED:
                    raise _NoPreview("deflated file too large to preview")
                arr = pixel_array(dcmread(path), index=index)
            else:
                arr = pixel_array(str(path), index=index)
        except _NoPreview:
            raise
        except Exception as exc:
            raise _NoPreview(_decode_reason(ds, exc)) from None
    return arr, ds


def _decode_reason(ds: Dataset, exc: Exception) -> str:
    syntax = ds.file_meta.get("TransferSyntaxUID")
    name = getattr(syntax, "name", "") or str(syntax or "unknown")
    text = str(exc)
    if "no pixel data" in text.lower() or "no 'pixel data'" in text.lower():
        return "no image (no pixel data)"
    if "does not support" in text or ("missing" in text and "dependenc" in text):
        bits = ds.get("BitsStored")
        detail = f", {bits}-bit" if isinstance(bits, int) else ""
        return f"no permissively licensed decoder for {name}{detail}"
    return f"could not decode ({name})"


def render_file(path: Path, size: int = DEFAULT_SIZE) -> tuple[bytes, int, int]:
    """PNG bytes, width and height of the preview of one file (its middle frame).

    Raises:
        _NoPreview: with a reason in plain words.
    """
    arr, ds = _decode_one(path)
    for attempt in (size, size * 3 // 4, size // 2):
        img = render(arr, ds, attempt)
        png = _png(img)
        if len(png) <= MAX_PNG_BYTES:
            return png, int(img.shape[1]), int(img.shape[0])
    raise _NoPreview("thumbnail larger than 64 KiB")


def _series_preview(uid: str, members: Sequence[_Member], size: int) -> tuple[Preview | None, str]:
    """The middle image's preview; if that one fails, its nearest neighbours' (up to
    `_TRIES` images in all). The reason is the middle image's."""
    ordered = _ordered(members)
    mid = (len(ordered) - 1) // 2
    around = sorted(range(len(ordered)), key=lambda i: (abs(i - mid), i))[:_TRIES]
    reason = ""
    for i in around:
        try:
            png, w, h = render_file(ordered[i].path, size)
        except _NoPreview as exc:
            reason = reason or str(exc)
        except Exception as exc:  # a decoder bug must not stop the offer
            reason = reason or f"could not render ({type(exc).__name__})"
        else:
            return Preview(uid, png, w, h), ""
    return None, reason


def make_previews(
    files: Iterable[Path],
    *,
    size: int = DEFAULT_SIZE,
    budget: float = DEFAULT_BUDGET,
    max_previews: int = MAX_PREVIEWS,
    clock: Callable[[], float] = time.monotonic,
    slices: Iterable[Slice] | None = None,
) -> PreviewResult:
    """One thumbnail per series of the DICOM files among ``files`` (never raises).

    Args:
        files: Paths of the offered files; non-DICOM ones are ignored.
        slices: The files' places in their series as `peer.dicom.summary.scan` read
            them; then ``files`` is not used and no header is read twice.
        size: Long side of each thumbnail in px (1..`MAX_SIZE`).
        budget: Seconds for the whole run; series not reached in time are skipped with
            the reason "time limit".
        max_previews: At most this many series get a preview (protocol limit 64).
        clock: Monotonic seconds (tests pass a fake one).

    Returns:
        Previews in series order of first appearance, and the skipped series with reasons.
    """
    size = min(max(1, size), MAX_SIZE)
    max_previews = min(max(0, max_previews), MAX_PREVIEWS)
    start = clock()
    series: dict[str, _SeriesFiles] = {}
    out_of_time = False
    if slices is not None:
        for sl in slices:
            member = _Member(sl.path, sl.number, sl.position, sl.orientation)
            series.setdefault(sl.series_uid, _SeriesFiles(sl.series_uid)).members.append(member)
    else:
        for path in files:
            if clock() - start > budget:
                out_of_time = True
                break
            found = _read_member(path)
            if found is not None:
                uid, member = found
                series.setdefault(uid, _SeriesFiles(uid)).members.append(member)
    previews: list[Preview] = []
    skipped: list[Skipped] = []
    for s in series.values():
        if out_of_time or clock() - start > budget:
            out_of_time = True
            skipped.append(Skipped(s.uid, "time limit for previews reached"))
            continue
        if len(previews) >= max_previews:
            skipped.append(Skipped(s.uid, f"more than {max_previews} series"))
            continue
        preview, reason = _series_preview(s.uid, s.members, size)
        if preview is not None:
            previews.append(preview)
        else:
            skipped.append(Skipped(s.uid, reason))
    return PreviewResult(tuple(previews), tuple(skipped), clock() - start)


def offer_previews(
    paths: Iterable[Path],
    *,
    budget: float = DEFAULT_BUDGET,
    slices: Iterable[Slice] | None = None,
) -> tuple[SeriesPreview, ...]:
    """The ``previews`` of a manifest for these offered files (`SeriesPreview` records);
    ``slices`` as for `make_previews`."""
    result = make_previews(paths, budget=budget, slices=slices)
    return tuple(SeriesPreview(p.series, p.png, p.w, p.h) for p in result.previews)
