"""Generate ``peer/dicom/deid/table_e11.py`` from machine-readable copies of DICOM PS3.15
Annex E Table E.1-1 that ship in PyPI packages (this machine reaches no other site).

Sources (downloaded with ``pip download``, read as data, none of their code is run or kept):

* ``dicom-anonymizer==2.1.0`` (BSD): ``dicomfields_2026c.py`` lists every row of Table
  E.1-1 of the **2026c** edition with its Basic Profile action code. This pins the edition
  and gives the rows and the Basic Profile column.
* ``idiscore==1.6.0``: ``_public_dicom.py`` holds every column (Basic Profile and all ten
  option columns) scraped from the NEMA web edition on 2025-06-24. It gives the option
  columns. The generator checks that its Basic Profile column agrees with 2026c on every
  common row and fails otherwise; rows that only 2026c has get no option actions (the
  Basic Profile action then applies whatever the options, the conservative side).
  idiscore is GPL-3.0: only the standard's action codes are read from it (facts of the
  DICOM standard, which NEMA publishes for free use); none of its code is copied or run.

Usage::

    python tools/gen_deid_table.py [--wheels DIR]   # downloads the two wheels if needed
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

EDITION = "DICOM PS3.15 2026c Table E.1-1"
ANON = (
    "dicom-anonymizer",
    "2.1.0",
    "dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py",
)
IDIS = ("idiscore", "1.6.0", "idiscore/_public_dicom.py")
OUT = Path(__file__).resolve().parent.parent / "peer" / "dicom" / "deid" / "table_e11.py"

# column key -> idiscore rule set name, CID 7050 code, meaning
OPTIONS = (
    ("rtn_safe_private", "retain_safe_private", "113111", "Retain Safe Private Option"),
    ("rtn_uids", "retain_uid", "113110", "Retain UIDs Option"),
    ("rtn_dev_id", "retain_device_id", "113109", "Retain Device Identity Option"),
    ("rtn_inst_id", "retain_institution_id", "113112", "Retain Institution Identity Option"),
    (
        "rtn_pat_chars",
        "retain_patient_characteristics",
        "113108",
        "Retain Patient Characteristics Option",
    ),
    (
        "rtn_long_full_dates",
        "retain_full_dates",
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    (
        "rtn_long_modif_dates",
        "retain_modified_dates",
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    ("clean_desc", "clean_descriptors", "113105", "Clean Descriptors Option"),
    ("clean_struct_cont", "clean_structured_content", "113104", "Clean Structured Content Option"),
    ("clean_graph", "clean_graphics", "113103", "Clean Graphics Option"),
)
_ANON_GROUPS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
_IDIS_CODES = {
    "DUMMY": "D",
    "EMPTY": "Z",
    "REMOVE": "X",
    "KEEP": "K",
    "CLEAN": "C",
    "UID": "U",
    "EMPTY_OR_DUMMY": "Z/D",
    "REMOVE_OR_EMPTY": "X/Z",
    "REPLACE_OR_DUMMY": "X/Z",
    "REMOVE_OR_DUMMY": "X/D",
    "REMOVE_OR_EMPTY_OR_DUMMY": "X/Z/D",
    "REMOVE_OR_EMPTY_OR_UID": "X/Z/U*",
}


def _wheel(folder: Path, name: str, version: str) -> Path:
    stem = name.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            f"{name}=={version}",
            "-d",
            str(folder),
        ],
        check=True,
    )
    return sorted(folder.glob(f"{stem}-{version}-*.whl"))[0]


def _anon_rows(text: str) -> tuple[dict[int, tuple[str, str]], list[tuple[int, int, str, str]]]:
    """Rows of the 2026c file: tag -> (name, Basic action); masked rows separately."""
    rows: dict[int, tuple[str, str]] = {}
    masked: list[tuple[int, int, str, str]] = []
    current = ""
    for line in text.splitlines():
        m = re.match(r"^(\w+_TAGS) = \[", line)
        if m:
            current = _ANON_GROUPS.get(m.group(1), "")
            continue
        m = re.match(r"^\s*\(([^)]*)\),\s*#\s*(.*)$", line)
        if not m or not current:
            continue
        nums = [int(x, 16) for x in m.group(1).replace(" ", "").split(",") if x]
        name = m.group(2).strip()
        if len(nums) == 2:
            rows[(nums[0] << 16) | nums[1]] = (name, current)
        elif len(nums) == 4:  # group, element, group mask, element mask
            masked.append(((nums[0] << 16) | nums[1], (nums[2] << 16) | nums[3], name, current))
    return rows, masked


def _idis_sets(text: str) -> dict[str, dict[str, str]]:
    """idiscore rule sets: set name -> {"ggggeeee" | "60xx3000" | "private": action}."""
    out: dict[str, dict[str, str]] = {}
    for m in re.finditer(r"^(\w+) = RawNemaRuleSet\((.*?)^\)", text, re.S | re.M):
        body = m.group(2)
        rules: dict[str, str] = {}
        for r in re.finditer(
            r"\(\s*(SingleTag|RepeatingGroup|PrivateTags)\((?:\"([0-9a-fA-Fx]{8})\")?\)\s*,"
            r"\s*ActionCodes\.(\w+)\s*,?\s*\)",
            body,
        ):
            key = "private" if r.group(1) == "PrivateTags" else r.group(2).lower()
            rules[key] = _IDIS_CODES[r.group(3)]
        out[m.group(1)] = rules
    return out


def _mask_key(value: int, mask: int) -> str:
    hexv = f"{value:08x}"
    return "".join(c if (mask >> (28 - 4 * i)) & 0xF else "x" for i, c in enumerate(hexv))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--wheels", type=Path, default=None, help="folder with (or for) the wheels")
    args = ap.parse_args()
    folder = args.wheels or Path(tempfile.mkdtemp(prefix="deid-src-"))
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(_wheel(folder, ANON[0], ANON[1])) as z:
        anon_text = z.read(ANON[2]).decode()
    with zipfile.ZipFile(_wheel(folder, IDIS[0], IDIS[1])) as z:
        idis_text = z.read(IDIS[2]).decode()
    rows, masked = _anon_rows(anon_text)
    sets = _idis_sets(idis_text)
    basic = sets["basic_profile"]
    # the Basic Profile columns must agree wherever both sources have the row
    clash = [
        f"{t:08x}" for t, (_, a) in rows.items() if f"{t:08x}" in basic and basic[f"{t:08x}"] != a
    ]
    if clash:
        sys.exit(f"Basic Profile columns disagree on {len(clash)} rows: {clash[:10]}")
    only_idis = sorted(
        k for k in basic if k not in {f"{t:08x}" for t in rows} and "x" not in k and k != "private"
    )
    if only_idis:  # rows the 2026c edition no longer lists: 2026c wins
        print(f"not in {EDITION}, ignored: {only_idis}")
    if basic.get("private") != "X":
        sys.exit("idiscore has no private-attribute row")

    def options_for(key: str) -> tuple[str, ...]:
        return tuple(sets[idis].get(key, "") for _, idis, _, _ in OPTIONS)

    lines = [
        '"""DICOM PS3.15 Annex E Table E.1-1 as data. GENERATED by tools/gen_deid_table.py;',
        "do not edit by hand.",
        "",
        f"Edition: {EDITION} (rows and Basic Profile column, from",
        "dicom-anonymizer 2.1.0's dicomfields_2026c.py). Option columns: idiscore 1.6.0's",
        "_public_dicom.py (NEMA web edition scraped 2025-06-24); its Basic Profile column",
        "agrees with 2026c on every common row. Rows only in 2026c have no option actions",
        "(the Basic Profile action applies).",
        "",
        "ROWS maps a tag to (name, Basic Profile action, then one action per option column in",
        'the order of OPTION_KEYS; "" = the option does not change the row). MASKED rows',
        "match ``tag & mask == value``. PRIVATE is the row for private attributes.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        f"EDITION = {EDITION!r}",
        "SOURCES = (",
        f"    {f'pypi:{ANON[0]}=={ANON[1]}'!r},",
        f"    {ANON[2]!r},",
        f"    {f'pypi:{IDIS[0]}=={IDIS[1]}'!r},",
        f"    {IDIS[2]!r},",
        ")",
        f"OPTION_KEYS = {tuple(k for k, _, _, _ in OPTIONS)!r}",
        "# option key -> (CID 7050 code value, code meaning)",
        "OPTION_CODES = {",
        '    "basic": ("113100", "Basic Application Confidentiality Profile"),',
    ]
    lines += [f"    {k!r}: ({c!r}, {m!r})," for k, _, c, m in OPTIONS]
    lines += ["}", "", "ROWS: dict[int, tuple[str, ...]] = {"]
    for tag in sorted(rows):
        name, action = rows[tag]
        entry = (name, action, *options_for(f"{tag:08x}"))
        lines.append(f"    0x{tag:08X}: {entry!r},")
    lines += ["}", "", "MASKED: tuple[tuple[int, int, tuple[str, ...]], ...] = ("]
    for value, mask, name, action in masked:
        entry = (name, action, *options_for(_mask_key(value, mask)))
        lines.append(f"    (0x{value:08X}, 0x{mask:08X}, {entry!r}),")
    lines += [")", ""]
    private = ("Private Attributes", "X", *options_for("private"))
    lines += [f"PRIVATE: tuple[str, ...] = {private!r}", ""]
    text = "\n".join(lines)
    ast.parse(text)
    OUT.write_text(text)
    print(f"wrote {OUT}: {len(rows)} rows, {len(masked)} masked rows, {EDITION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
