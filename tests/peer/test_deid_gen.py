"""The table generator's parsers, on excerpts shaped like its two PyPI sources (the real
run needs the wheels; its output, peer/dicom/deid/table_e11.py, is checked in)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]

ANON = """
D_TAGS = [
    (0x0040, 0xA123),  # Person Name
]
X_TAGS = [
    (0x0008, 0x1030),  # Study Description
    (0x6000, 0x3000, 0xFF00, 0xFFFF),  # Overlay Data
]
X_Z_U_STAR_TAGS = [
    (0x0008, 0x1140),  # Referenced Image Sequence
]
"""

IDIS = """
basic_profile = RawNemaRuleSet(
    name="Basic Application Level Confidentiality Profile",
    code="113100",
    rules=[
        (SingleTag("0040a123"), ActionCodes.DUMMY),  # PersonName
        (
            SingleTag("00081030"),
            ActionCodes.REMOVE,
        ),  # StudyDescription
        (PrivateTags(), ActionCodes.REMOVE),  # Private Attributes
    ],
)

clean_descriptors = RawNemaRuleSet(
    name="Clean Descriptors Option",
    code="113105",
    rules=[
        (SingleTag("00081030"), ActionCodes.CLEAN),  # StudyDescription
    ],
)

clean_graphics = RawNemaRuleSet(
    name="Clean Graphics Option",
    code="113103",
    rules=[
        (RepeatingGroup("60xx3000"), ActionCodes.CLEAN),  # OverlayData
    ],
)
"""


def _gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_deid_table", ROOT / "tools/gen_deid_table.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gen_deid_table"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_parsers_read_both_sources() -> None:
    gen = _gen()
    rows, masked = gen._anon_rows(ANON)
    assert rows == {
        0x0040A123: ("Person Name", "D"),
        0x00081030: ("Study Description", "X"),
        0x00081140: ("Referenced Image Sequence", "X/Z/U*"),
    }
    assert masked == [(0x60003000, 0xFF00FFFF, "Overlay Data", "X")]
    sets = gen._idis_sets(IDIS)
    assert sets["basic_profile"] == {"0040a123": "D", "00081030": "X", "private": "X"}
    assert sets["clean_descriptors"] == {"00081030": "C"}
    assert gen._mask_key(0x60003000, 0xFF00FFFF) == "60xx3000"
    assert sets["clean_graphics"] == {"60xx3000": "C"}


def test_checked_in_table_matches_the_generator_s_layout() -> None:
    from peer.dicom.deid import table_e11

    gen = _gen()
    assert table_e11.EDITION == gen.EDITION
    assert table_e11.OPTION_KEYS == tuple(k for k, _, _, _ in gen.OPTIONS)
    assert {k: v[0] for k, v in table_e11.OPTION_CODES.items() if k != "basic"} == {
        k: c for k, _, c, _ in gen.OPTIONS
    }
    assert table_e11.SOURCES[0] == "pypi:dicom-anonymizer==2.1.0"
