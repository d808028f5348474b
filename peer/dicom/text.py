"""Study summaries as text for a terminal: cleaning untrusted text, and `format_summary`.

No pydicom here: a receiver shows the offer's summary (which crossed the network from an
untrusted peer, so every value is type-checked and cleaned again) without waiting for
pydicom's import, which takes about 0.3 s.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

from peer.units import human_bytes

__all__ = ["MAX_TEXT", "TRANSFER_SYNTAXES", "clean_text", "format_summary"]

MAX_TEXT = 200

# CSI, OSC/DCS/SOS/PM/APC strings, two-character escapes, and 8-bit CSI.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b[\]PX^_][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]"
    r"|\x9b[0-?]*[ -/]*[@-~]"
)
_SPACES = re.compile(r"\s+")
_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def clean_text(value: object, limit: int = MAX_TEXT) -> str:
    """Make any value safe to print on a terminal or a web page.

    Removes escape sequences and control, format (bidi), surrogate and private-use
    characters; whitespace runs become one space; the result is cut to `limit`
    characters, ending with "…" when cut.

    Args:
        value: Anything; ``None`` gives ``""``, other non-strings their ``str()``.
        limit: Maximum length of the result.

    Returns:
        The cleaned, stripped text.
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    text = _ESCAPES.sub("", text[: limit * 8])
    text = "".join(
        (" " if ch.isspace() else "") if unicodedata.category(ch) in _DROP_CATEGORIES else ch
        for ch in text
    )
    text = _SPACES.sub(" ", text).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


# DICOM PS3.6 Table A-1 as pydicom names it, with the newer ones pynetdicom adds to
# pydicom's dictionary (JPEG XL, Deflated Image Frame Compression)
TRANSFER_SYNTAXES: dict[str, str] = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.98": "Encapsulated Uncompressed Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 and 4)",
    "1.2.840.10008.1.2.4.52": "JPEG Extended (Process 3 and 5)",
    "1.2.840.10008.1.2.4.53": "JPEG Spectral Selection, Non-Hierarchical (Process 6 and 8)",
    "1.2.840.10008.1.2.4.54": "JPEG Spectral Selection, Non-Hierarchical (Process 7 and 9)",
    "1.2.840.10008.1.2.4.55": "JPEG Full Progression, Non-Hierarchical (Process 10 and 12)",
    "1.2.840.10008.1.2.4.56": "JPEG Full Progression, Non-Hierarchical (Process 11 and 13)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless, Non-Hierarchical (Process 14)",
    "1.2.840.10008.1.2.4.58": "JPEG Lossless, Non-Hierarchical (Process 15)",
    "1.2.840.10008.1.2.4.59": "JPEG Extended, Hierarchical (Process 16 and 18)",
    "1.2.840.10008.1.2.4.60": "JPEG Extended, Hierarchical (Process 17 and 19)",
    "1.2.840.10008.1.2.4.61": "JPEG Spectral Selection, Hierarchical (Process 20 and 22)",
    "1.2.840.10008.1.2.4.62": "JPEG Spectral Selection, Hierarchical (Process 21 and 23)",
    "1.2.840.10008.1.2.4.63": "JPEG Full Progression, Hierarchical (Process 24 and 26)",
    "1.2.840.10008.1.2.4.64": "JPEG Full Progression, Hierarchical (Process 25 and 27)",
    "1.2.840.10008.1.2.4.65": "JPEG Lossless, Hierarchical (Process 28)",
    "1.2.840.10008.1.2.4.66": "JPEG Lossless, Hierarchical (Process 29)",
    "1.2.840.10008.1.2.4.70": (
        "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])"
    ),
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless Image Compression",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Lossy (Near-Lossless) Image Compression",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Image Compression (Lossless Only)",
    "1.2.840.10008.1.2.4.91": "JPEG 2000 Image Compression",
    "1.2.840.10008.1.2.4.92": "JPEG 2000 Part 2 Multi-component Image Compression (Lossless Only)",
    "1.2.840.10008.1.2.4.93": "JPEG 2000 Part 2 Multi-component Image Compression",
    "1.2.840.10008.1.2.4.94": "JPIP Referenced",
    "1.2.840.10008.1.2.4.95": "JPIP Referenced Deflate",
    "1.2.840.10008.1.2.4.100": "MPEG2 Main Profile / Main Level",
    "1.2.840.10008.1.2.4.100.1": "Fragmentable MPEG2 Main Profile / Main Level",
    "1.2.840.10008.1.2.4.101": "MPEG2 Main Profile / High Level",
    "1.2.840.10008.1.2.4.101.1": "Fragmentable MPEG2 Main Profile / High Level",
    "1.2.840.10008.1.2.4.102": "MPEG-4 AVC/H.264 High Profile / Level 4.1",
    "1.2.840.10008.1.2.4.102.1": "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.1",
    "1.2.840.10008.1.2.4.103": "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1",
    "1.2.840.10008.1.2.4.103.1": (
        "Fragmentable MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1"
    ),
    "1.2.840.10008.1.2.4.104": "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video",
    "1.2.840.10008.1.2.4.104.1": (
        "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video"
    ),
    "1.2.840.10008.1.2.4.105": "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video",
    "1.2.840.10008.1.2.4.105.1": (
        "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video"
    ),
    "1.2.840.10008.1.2.4.106": "MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2",
    "1.2.840.10008.1.2.4.106.1": "Fragmentable MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2",
    "1.2.840.10008.1.2.4.107": "HEVC/H.265 Main Profile / Level 5.1",
    "1.2.840.10008.1.2.4.108": "HEVC/H.265 Main 10 Profile / Level 5.1",
    "1.2.840.10008.1.2.4.201": "High-Throughput JPEG 2000 Image Compression (Lossless Only)",
    "1.2.840.10008.1.2.4.202": (
        "High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)"
    ),
    "1.2.840.10008.1.2.4.203": "High-Throughput JPEG 2000 Image Compression",
    "1.2.840.10008.1.2.4.204": "JPIP HTJ2K Referenced",
    "1.2.840.10008.1.2.4.205": "JPIP HTJ2K Referenced Deflate",
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
    "1.2.840.10008.1.2.5": "RLE Lossless",
    "1.2.840.10008.1.2.6.1": "RFC 2557 MIME encapsulation",
    "1.2.840.10008.1.2.6.2": "XML Encoding",
    "1.2.840.10008.1.2.7.1": "SMPTE ST 2110-20 Uncompressed Progressive Active Video",
    "1.2.840.10008.1.2.7.2": "SMPTE ST 2110-20 Uncompressed Interlaced Active Video",
    "1.2.840.10008.1.2.7.3": "SMPTE ST 2110-30 PCM Digital Audio",
    "1.2.840.10008.1.2.8.1": "Deflated Image Frame Compression",
    "1.2.840.10008.1.20": "Papyrus 3 Implicit VR Little Endian",
}


def _get(mapping: object, key: str) -> object:
    return mapping.get(key) if isinstance(mapping, Mapping) else None


def _s(mapping: object, key: str, limit: int = MAX_TEXT) -> str:
    return clean_text(_get(mapping, key), limit)


def _n(mapping: object, key: str) -> int | None:
    value = _get(mapping, key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _items(mapping: object, key: str) -> list[object]:
    value = _get(mapping, key)
    return list(value) if isinstance(value, list | tuple) else []


def _syntax_name(uid: object) -> str:
    """The transfer syntax's name when it is a standard one, else the cleaned UID."""
    text = clean_text(uid, 64)
    return TRANSFER_SYNTAXES.get(text, text)


def format_summary(summary: Mapping[str, object]) -> list[str]:
    """Human-readable lines for a terminal.

    Safe on any input: the mapping may come from an untrusted peer, so every value is
    type-checked and cleaned again, and missing or mistyped fields are skipped.

    Args:
        summary: A dict as returned by `summarize`.

    Returns:
        Lines such as ``"Patient: DOE, JANE (SB-0001), born 1970-01-01, F"``.
    """
    lines: list[str] = []
    for study in _items(summary, "studies"):
        patient = _s(study, "patient_name") or "(no name)"
        pid = _s(study, "patient_id")
        if pid:
            patient += f" ({pid})"
        birth = _s(study, "patient_birth_date", 10)
        if birth:
            patient += f", born {birth}"
        sex = _s(study, "patient_sex", 16)
        if sex:
            patient += f", {sex}"
        lines.append(f"Patient: {patient}")

        head = " ".join(
            x for x in (_s(study, "study_date", 10), _s(study, "study_description")) if x
        )
        modalities = ", ".join(clean_text(m, 16) for m in _items(study, "modalities"))
        facts = [
            modalities,
            f"{_n(study, 'series_count') or 0} series",
            f"{_n(study, 'image_count') or 0} images",
            human_bytes(_n(study, "bytes") or 0),
        ]
        lines.append(f"Study: {head or '(undated)'} — {', '.join(f for f in facts if f)}")
        accession = _s(study, "accession")
        if accession:
            lines.append(f"  Accession: {accession}")

        for series in _items(study, "series"):
            number = _n(series, "number")
            label = " ".join(
                x
                for x in (
                    "Series" if number is None else f"Series {number}",
                    _s(series, "modality", 16),
                    _s(series, "description"),
                )
                if x
            )
            images = _n(series, "images") or 0
            detail = f"{images} image{'s' if images != 1 else ''}"
            rows, cols = _n(series, "rows"), _n(series, "cols")
            if rows and cols:
                detail += f" {cols}x{rows}"
            detail += f", {human_bytes(_n(series, 'bytes') or 0)}"
            syntaxes = [_syntax_name(u) for u in _items(series, "transfer_syntaxes")]
            if syntaxes:
                detail += f", {' / '.join(s for s in syntaxes if s)}"
            lines.append(f"  {label}: {detail}")

    others = [clean_text(p) for p in _items(summary, "other")]
    count = _n(summary, "other_files") or len(others)
    if count:
        line = f"Other files: {', '.join(others)}"
        if count > len(others):
            line += f" (and {count - len(others)} more)"
        lines.append(line)
    total = _n(summary, "bytes")
    dicom = _n(summary, "dicom_files") or 0
    if total is not None:
        lines.append(f"Total: {dicom} DICOM files, {count} other, {human_bytes(total)}")
    return lines
