"""De-identification (DICOM PS3.15 Annex E): the generated Table E.1-1
(`table_e11`), named profiles (`profile`), the pure engine (`engine`) and the streaming
transform used by ``scanbeam send --deidentify`` and ``scanbeam deidentify`` (`stream`).
"""

from __future__ import annotations

from peer.dicom.deid.engine import Deidentifier, Report
from peer.dicom.deid.profile import DEFAULT_PROFILE, EDITION, PROFILES, Profile, get_profile
from peer.dicom.deid.stream import (
    REPORT_NAME,
    DeidTransform,
    NotDicom,
    Prepared,
    RiskNotAccepted,
    deidentify_folder,
    layout_file,
    prepare,
)

__all__ = [
    "DEFAULT_PROFILE",
    "EDITION",
    "PROFILES",
    "REPORT_NAME",
    "DeidTransform",
    "Deidentifier",
    "NotDicom",
    "Prepared",
    "Profile",
    "Report",
    "RiskNotAccepted",
    "deidentify_folder",
    "get_profile",
    "layout_file",
    "prepare",
]
