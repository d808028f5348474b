"""The profile engine: applies Table E.1-1 to one pydicom dataset, in place.

Pure: a dataset and a secret salt go in, the dataset is changed and a per-tag report
counted; no file, clock or randomness of its own. It walks the main dataset and every
item of every sequence (PS3.15 E.1: "whether contained in the main dataset or embedded
in an Item of a Sequence of Items").

* UIDs: every UI value that is not a registry UID (SOP/meta class, transfer syntax,
  coding scheme, context group...) is replaced, wherever it appears (references and the
  file meta included), by ``2.25.<decimal>`` of a keyed BLAKE2b of the UID under the
  sender's secret salt: one old UID always gives the same new UID (stable across
  series, studies and resends), and nobody without the salt can recompute or reverse it.
* Dates: with the Modified Dates option, every DA and DT the table lists is moved back
  by one whole number of days derived from the salt and the patient (PatientID, else the
  name), so intervals (and times of day) are kept.
* Private attributes are removed, unless Retain Safe Private is chosen; then only
  numeric private values (binary numbers, IS, DS) are kept: Table E.3.10-1 of safe
  private attributes is not shipped, and text, dates, names and UIDs are never "safe".
* Clean (C) on text removes every identifier found elsewhere in the same dataset
  (names, IDs, dates, addresses: values of the attributes the profile removes) and any
  run of 5 or more digits.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterable
from datetime import date, timedelta
from typing import Any

from nacl.encoding import RawEncoder
from nacl.hash import blake2b
from pydicom import config as dicom_config
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]

from peer.dicom.deid.profile import EDITION, Profile

__all__ = ["Context", "Deidentifier", "Report"]

_REGISTRY_ROOT = "1.2.840.10008."
_KEEP_UID_KEYWORDS = frozenset(
    {
        "TransferSyntaxUID",
        "CodingSchemeUID",
        "ContextUID",
        "MappingResourceUID",
        "PrivateInformationCreatorUID",
        "CodingSchemeRegistry",
    }
)
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "AS"})
_NUMERIC_VRS = frozenset(
    {"US", "SS", "UL", "SL", "FL", "FD", "OF", "OD", "OL", "OV", "SV", "UV", "IS", "DS"}
)
_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_DUMMY = "ANONYMIZED"
_CONTENT_SEQUENCE = 0x0040A730
_TEXT_VALUE = 0x0040A160
_MAX_SHIFT_DAYS = 3650
_DIGITS = re.compile(r"\d{5,}")
_REMOVE_ACTIONS = frozenset({"X", "X/Z", "X/D", "X/Z/D"})
_ACTION_WORDS = {
    "X": "removed",
    "Z": "emptied",
    "D": "replaced with a dummy",
    "U": "UID replaced",
    "C": "cleaned",
    "shift": "date shifted",
    "private": "private removed",
}


class Report:
    """What changed, per tag and action, counted over many datasets (no values)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[int, str, str, str]] = Counter()
        self.datasets = 0

    def add(self, tag: int, name: str, rule: str, action: str) -> None:
        self.counts[(tag, name, rule, action)] += 1

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "tag": f"({tag >> 16:04X},{tag & 0xFFFF:04X})",
                "keyword": name,
                "rule": rule,
                "action": action,
                "count": n,
            }
            for (tag, name, rule, action), n in sorted(self.counts.items())
        ]

    def merge(self, other: Report) -> None:
        self.counts.update(other.counts)
        self.datasets += other.datasets


def _name(tag: int, fallback: str = "") -> str:
    if tag >> 16 & 1:
        return "(private)"
    return keyword_for_tag(tag) or fallback or "(unknown)"


def _vr_of(elem: DataElement | RawDataElement) -> str:
    vr = elem.VR
    if vr:
        return str(vr)
    try:
        return str(dictionary_VR(elem.tag))
    except KeyError:
        return "UN"


class Deidentifier:
    """Applies one profile with one secret salt. Reusable across files; not thread-safe
    only in that ``report`` is shared."""

    def __init__(self, profile: Profile, salt: bytes) -> None:
        if len(salt) < 16:
            raise ValueError("salt too short")
        self.profile = profile
        self._salt = salt[:64]
        self._uids: dict[str, str] = {}

    # --- keyed derivations ----------------------------------------------------------

    def _mac(self, purpose: bytes, data: str, size: int) -> bytes:
        return bytes(
            blake2b(
                data.encode("utf-8", "surrogateescape"),
                digest_size=size,
                key=self._salt,
                person=purpose.ljust(16, b"\0")[:16],
                encoder=RawEncoder,
            )
        )

    def new_uid(self, uid: str) -> str:
        """``2.25.<decimal>`` of a 128-bit keyed hash shaped as an RFC 9562 version-8 UUID."""
        uid = uid.strip("\0 ")
        cached = self._uids.get(uid)
        if cached is None:
            d = bytearray(self._mac(b"scanbeam uid", uid, 16))
            d[6] = (d[6] & 0x0F) | 0x80
            d[8] = (d[8] & 0x3F) | 0x80
            cached = f"2.25.{int.from_bytes(d, 'big')}"
            if len(self._uids) < 1 << 16:
                self._uids[uid] = cached
        return cached

    def pseudo_mtime_ns(self, rel: str, mtime_ns: int) -> int:
        """An opaque stand-in for a file's mtime: changes when the file does, tells
        nothing about when it was written (0 .. 2^53)."""
        return int.from_bytes(self._mac(b"scanbeam mtime", f"{rel}|{mtime_ns}", 8), "big") >> 11

    def shift_days(self, patient_key: str) -> int:
        """Days to move this patient's dates back: 1..3650, fixed per patient and salt."""
        n = int.from_bytes(self._mac(b"scanbeam dates", patient_key, 8), "big")
        return 1 + n % _MAX_SHIFT_DAYS

    # --- public --------------------------------------------------------------------

    def context(self, ds: Dataset) -> Context:
        """Read what the whole dataset needs (patient key, identifiers) before any change."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Context(self, ds)

    def apply(
        self, ds: Dataset, report: Report, *, mark: bool = True, ctx: Context | None = None
    ) -> Context:
        """De-identify ``ds`` (and its ``file_meta`` if present) in place.

        Args:
            ds: A dataset as read by pydicom (raw and deferred elements allowed).
            report: Counts what changed.
            mark: Add PatientIdentityRemoved and the method attributes (main datasets).
            ctx: The context of the main dataset (for elements read after the pixel data).

        Returns:
            The context used, to clean more elements of the same instance.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            old = dicom_config.settings.writing_validation_mode
            dicom_config.settings.writing_validation_mode = dicom_config.IGNORE
            try:
                if ctx is None:
                    ctx = Context(self, ds)
                self._walk(ds, ctx, report)
                meta = getattr(ds, "file_meta", None)
                if meta is not None:
                    self._meta(meta, report)
                if mark:
                    self._mark(ds)
                    report.datasets += 1
            finally:
                dicom_config.settings.writing_validation_mode = old
        return ctx

    # --- walking -------------------------------------------------------------------

    def _walk(self, ds: Dataset, ctx: Context, report: Report) -> None:
        private_kept: set[tuple[int, int]] = set()
        creators: list[int] = []
        overlays_removed: list[int] = []
        for btag in list(ds.keys()):
            tag = int(btag)
            group, elem_no = tag >> 16, tag & 0xFFFF
            if elem_no == 0 and group != 2:  # group lengths go stale: drop them
                del ds[tag]
                continue
            if group & 1:
                if 0x10 <= elem_no <= 0xFF:
                    creators.append(tag)
                    continue
                if self._private(ds, tag, ctx, report):
                    private_kept.add((group, elem_no >> 8))
                continue
            found = self.profile.action(tag)
            if found is None and tag == _TEXT_VALUE and ctx.content_mode:
                # free text of a structured report: Table E.1-1 handles it through its
                # Content Sequence row (D: dummy content; C with Clean Structured Content)
                self._act(ds, tag, ctx.content_mode, "TextValue", ctx, report)
                continue
            if found is None:
                self._keep(ds, tag, ctx, report, "")
                continue
            action, row = found
            self._act(ds, tag, action, _name(tag, row), ctx, report)
            if tag & 0xFF00FFFF == 0x60003000 and tag not in ds:
                overlays_removed.append(tag)
        # an overlay whose data was removed is removed whole (rows, origin, type... alone
        # make an invalid Overlay Plane module)
        for group in {t >> 16 for t in overlays_removed}:
            for btag in [t for t in ds.keys() if int(t) >> 16 == group]:
                del ds[btag]
                report.add(int(btag), _name(int(btag)), "X", _ACTION_WORDS["X"])
        for tag in creators:  # a private creator stays only if part of its block stayed
            if (tag >> 16, tag & 0xFF) not in private_kept:
                del ds[tag]
                report.add(tag, "(private creator)", "X", _ACTION_WORDS["private"])

    def _element(self, ds: Dataset, tag: int) -> DataElement | None:
        try:
            return ds[tag]
        except Exception:  # unreadable value: the safe side is to drop it
            del ds[tag]
            return None

    def _private(self, ds: Dataset, tag: int, ctx: Context, report: Report) -> bool:
        raw = ds.get_item(tag, keep_deferred=True)
        vr = _vr_of(raw) if raw is not None else "UN"
        if self.profile.private_action() == "C" and (vr in _NUMERIC_VRS or vr == "SQ"):
            if vr == "SQ":
                elem = self._element(ds, tag)
                if elem is None or not isinstance(elem.value, DicomSequence):
                    return False
                for item in elem.value:
                    self._walk(item, ctx, report)
            return True
        del ds[tag]
        report.add(tag, "(private)", "X", _ACTION_WORDS["private"])
        return False

    def _act(
        self, ds: Dataset, tag: int, action: str, name: str, ctx: Context, report: Report
    ) -> None:
        raw = ds.get_item(tag, keep_deferred=True)
        if raw is None:
            return
        vr = _vr_of(raw)
        if action == "K":
            self._keep(ds, tag, ctx, report, action)
            return
        if action == "X/Z/U*" and vr == "SQ":  # keep the references, replace their UIDs
            self._keep(ds, tag, ctx, report, action)
            return
        if action in _REMOVE_ACTIONS or action == "X/Z/U*":
            del ds[tag]
            report.add(tag, name, action, _ACTION_WORDS["X"])
            return
        if action in ("Z", "Z/D"):
            if vr == "SQ":
                ds[tag] = DataElement(tag, "SQ", DicomSequence())
            else:
                ds[tag] = DataElement(tag, vr, None)
            report.add(tag, name, action, _ACTION_WORDS["Z"])
            return
        if action == "U" or (action == "D" and vr == "UI"):
            self._keep(ds, tag, ctx, report, action)
            return
        if action == "D":
            if vr == "SQ":  # a dummy sequence: keep its structure, clean inside
                self._keep(ds, tag, ctx, report, action)
                return
            ds[tag] = DataElement(tag, vr, _dummy(vr))
            report.add(tag, name, action, _ACTION_WORDS["D"])
            return
        if action == "C":
            self._clean(ds, tag, vr, name, ctx, report)
            return
        del ds[tag]  # an unknown code: remove
        report.add(tag, name, action, _ACTION_WORDS["X"])

    def _keep(self, ds: Dataset, tag: int, ctx: Context, report: Report, rule: str) -> None:
        """Keep the element, but recurse into sequences and replace instance UIDs."""
        raw = ds.get_item(tag, keep_deferred=True)
        if raw is None:
            return
        vr = _vr_of(raw)
        if vr == "SQ":
            elem = self._element(ds, tag)
            if elem is not None and isinstance(elem.value, DicomSequence):
                outer = ctx.content_mode
                if tag == _CONTENT_SEQUENCE and rule in ("D", "C"):
                    ctx.content_mode = "C" if rule == "C" or outer == "C" else "D"
                try:
                    for item in elem.value:
                        self._walk(item, ctx, report)
                finally:
                    ctx.content_mode = outer
            return
        if vr == "UI" and not self.profile.retain_uids:
            elem = self._element(ds, tag)
            if elem is not None and self._remap(elem):
                report.add(tag, _name(tag), rule or "U", _ACTION_WORDS["U"])

    def _remap(self, elem: DataElement) -> bool:
        if elem.keyword.endswith("ClassUID") or elem.keyword in _KEEP_UID_KEYWORDS:
            return False
        values = elem.value if isinstance(elem.value, MultiValue | list | tuple) else [elem.value]
        texts = [str(v).strip("\0 ") for v in values if v is not None]
        if not texts or all(not t or _registry(t) for t in texts):
            return False
        new = [t if not t or _registry(t) else self.new_uid(t) for t in texts]
        elem.value = new if len(new) > 1 else new[0]
        return True

    def _clean(
        self, ds: Dataset, tag: int, vr: str, name: str, ctx: Context, report: Report
    ) -> None:
        if vr == "SQ":
            self._keep(ds, tag, ctx, report, "C")
            return
        if vr in ("DA", "DT") and self.profile.shift_dates:
            elem = self._element(ds, tag)
            if elem is None:
                return
            shifted = _shift(elem.value, vr, ctx.shift)
            if shifted is None:
                ds[tag] = DataElement(tag, vr, None)
                report.add(tag, name, "C", _ACTION_WORDS["Z"])
            else:
                elem.value = shifted
                report.add(tag, name, "C", _ACTION_WORDS["shift"])
            return
        if vr == "TM" and self.profile.shift_dates:
            return  # whole-day shifts keep the time of day
        if vr == "UI":
            self._keep(ds, tag, ctx, report, "C")
            return
        if vr in _TEXT_VRS:
            elem = self._element(ds, tag)
            if elem is None:
                return
            values = (
                elem.value if isinstance(elem.value, MultiValue | list | tuple) else [elem.value]
            )
            cleaned = [ctx.scrub(str(v)) if v is not None else v for v in values]
            if cleaned != [str(v) if v is not None else v for v in values]:
                report.add(tag, name, "C", _ACTION_WORDS["C"])
            elem.value = cleaned if len(cleaned) > 1 else cleaned[0]
            return
        if vr in _NUMERIC_VRS or vr in ("TM", "AT"):
            return  # a number or a time of day carries no identifier of its own
        del ds[tag]  # bitmaps (overlays, curves) cannot be cleaned here: remove them
        report.add(tag, name, "C", _ACTION_WORDS["X"])

    def _meta(self, meta: Dataset, report: Report) -> None:
        for btag in list(meta.keys()):
            tag = int(btag)
            if tag in (0x00020016, 0x00020100, 0x00020102):  # source AE, private info
                del meta[tag]
                report.add(tag, _name(tag), "X", _ACTION_WORDS["X"])
            elif tag == 0x00020003 and not self.profile.retain_uids:
                elem = meta[tag]
                if self._remap(elem):
                    report.add(tag, _name(tag), "U", _ACTION_WORDS["U"])

    def _mark(self, ds: Dataset) -> None:
        # YES claims the pixels are clean too (PS3.3 C.12.1.1.6): not when the header itself
        # says text is burned in (the sender accepted that risk; the header must not lie)
        try:
            burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
        except Exception:
            burned = ""
        ds.PatientIdentityRemoved = "NO" if burned == "YES" else "YES"
        methods = [f"ScanBeam profile {self.profile.name}"[:64], EDITION]
        ds.DeidentificationMethod = methods
        items = []
        for value, meaning in self.profile.codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning[:64]
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items
        ds.LongitudinalTemporalInformationModified = (
            "MODIFIED"
            if self.profile.shift_dates
            else "UNMODIFIED"
            if self.profile.full_dates
            else "REMOVED"
        )


class Context:
    """Per instance: the patient's date shift and the identifiers to scrub from text,
    both read before anything is changed."""

    def __init__(self, deid: Deidentifier, ds: Dataset) -> None:
        key = _first_text(ds, (0x00100020, 0x00100010, 0x0020000D))
        issuer = _first_text(ds, (0x00100021,))
        self.shift = deid.shift_days(f"{issuer}|{key}")
        self._pattern = _identifier_pattern(_identifiers(ds, deid.profile))
        self.patient_tokens = _patient_tokens(ds)
        self.content_mode = ""  # inside a Content Sequence: its action, "D" or "C"

    def scrub(self, text: str) -> str:
        out = _DIGITS.sub("*", text)
        return self._pattern.sub("*", out) if self._pattern.pattern else out

    def residual(self, data: bytes) -> list[str]:
        """Which of the patient's own identifiers (name parts, IDs, accession, birth date)
        still occur in ``data``: an independent check of the output, since an attribute
        the table does not list (or a vendor's misuse of one) can carry them. Returns the
        kinds found, never the values."""
        text = data.decode("latin-1").casefold()
        return sorted({kind for kind, token in self.patient_tokens if token in text})


_PATIENT_KEYS = (
    ("patient name", 0x00100010),
    ("patient ID", 0x00100020),
    ("other patient IDs", 0x00101000),
    ("other patient names", 0x00101001),
    ("accession number", 0x00080050),
    ("birth date", 0x00100030),
)


def _patient_tokens(ds: Dataset) -> list[tuple[str, str]]:
    """(kind, casefolded token) of the patient's identifiers, for `Context.residual`."""
    out: list[tuple[str, str]] = []
    for kind, tag in _PATIENT_KEYS:
        try:
            elem = ds.get(tag)
            value = elem.value if elem is not None else None
        except Exception:
            continue
        if not value:
            continue
        values = value if isinstance(value, MultiValue | list | tuple) else [value]
        for v in values:
            text = str(v).strip()
            parts = re.split(r"[\^=,\s]+", text) if kind.endswith(("names", "name")) else [text]
            out += [(kind, p.casefold()) for p in parts if len(p) >= 4]
    for item in ds.get("OtherPatientIDsSequence", None) or []:
        text = str(item.get("PatientID", "") or "").strip()
        if len(text) >= 4:
            out.append(("other patient IDs", text.casefold()))
    return out


def _first_text(ds: Dataset, tags: Iterable[int]) -> str:
    for tag in tags:
        try:
            value = ds.get(tag)
            text = str(value.value).strip() if value is not None and value.value else ""
        except Exception:
            text = ""
        if text:
            return text
    return ""


def _identifiers(ds: Dataset, profile: Profile) -> set[str]:
    """Text values of the attributes the profile does not keep, anywhere in ``ds``, with
    every person-name component: the words a cleaned text must not contain."""
    found: set[str] = set()

    def visit(d: Dataset) -> None:
        for btag in list(d.keys()):
            tag = int(btag)
            raw = d.get_item(tag, keep_deferred=True)
            if raw is None or (isinstance(raw, RawDataElement) and raw.value is None):
                continue
            vr = _vr_of(raw)
            try:
                elem = d[tag]
            except Exception:
                continue
            if vr == "SQ":
                for item in elem.value or []:
                    visit(item)
                continue
            if vr not in _TEXT_VRS and vr not in ("DA", "DT"):
                continue
            action = profile.action(tag) if not tag >> 16 & 1 else ("X", "")
            if vr != "PN" and (action is None or action[0] in ("K", "C")):
                continue
            values = (
                elem.value if isinstance(elem.value, MultiValue | list | tuple) else [elem.value]
            )
            for v in values:
                text = str(v or "").strip()
                if len(text) >= 3:
                    found.add(text)
                for part in re.split(r"[\^=,\s/\\.\-]+", text):
                    if len(part) >= (2 if vr == "PN" else 4):
                        found.add(part)

    try:
        visit(ds)
    except Exception:
        pass
    return found


def _identifier_pattern(words: set[str]) -> re.Pattern[str]:
    if not words:
        return re.compile("")
    alts = []
    for w in sorted(words, key=len, reverse=True):
        esc = re.escape(w)
        alts.append(esc if len(w) >= 4 else rf"(?<![A-Za-z0-9]){esc}(?![A-Za-z0-9])")
    return re.compile("|".join(alts), re.IGNORECASE)


def _registry(uid: str) -> bool:
    return uid.startswith(_REGISTRY_ROOT) or uid in UID_dictionary


def _dummy(vr: str) -> Any:
    if vr == "DA":
        return "19000101"
    if vr == "DT":
        return "19000101000000"
    if vr == "TM":
        return "000000"
    if vr in ("IS", "DS"):
        return "0"
    if vr in ("US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT"):
        return 0
    if vr in _BINARY_VRS:
        return b"\0\0"
    if vr == "AS":
        return "000Y"
    if vr == "UR":
        return "urn:x"
    return _DUMMY


def _shift_one(text: str, vr: str, days: int) -> str | None:
    text = text.strip()
    if not text:
        return text
    m = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?(.*)", text)
    if m is None or (vr == "DA" and m.group(4)):
        return None
    year, month, day, rest = m.group(1), m.group(2), m.group(3), m.group(4)
    try:
        d = date(int(year), int(month or 1), int(day or 1)) - timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    out = f"{d.year:04d}"
    if month:
        out += f"{d.month:02d}"
    if day:
        out += f"{d.day:02d}"
    return out + (rest if vr == "DT" else "")


def _shift(value: Any, vr: str, days: int) -> Any:
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    out = []
    for v in values:
        shifted = _shift_one(str(v or ""), vr, days)
        if shifted is None:
            return None
        out.append(shifted)
    return out if len(out) > 1 else (out[0] if out else "")
