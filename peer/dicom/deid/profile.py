"""De-identification profiles: the Basic Profile plus a chosen set of Table E.1-1 options.

An action for one attribute is resolved from the generated table (`table_e11`): the
Basic Profile column, overridden by the selected option columns. When several selected
options name the attribute, the one that keeps the most wins (K over C), so that for
example Retain Patient Characteristics keeps what Clean Descriptors would clean.
"""

from __future__ import annotations

from dataclasses import dataclass

from peer.dicom.deid.table_e11 import EDITION, MASKED, OPTION_CODES, OPTION_KEYS, PRIVATE, ROWS
from peer.errors import BeamError

__all__ = ["DEFAULT_PROFILE", "EDITION", "PROFILES", "Profile", "UnknownProfile", "get_profile"]


class UnknownProfile(BeamError):
    code = "usage"
    exit_code = 2


@dataclass(frozen=True, slots=True)
class Profile:
    """A named selection of Table E.1-1 option columns (the Basic Profile always applies)."""

    name: str
    options: tuple[str, ...]
    summary: str

    def __post_init__(self) -> None:
        unknown = [o for o in self.options if o not in OPTION_KEYS]
        if unknown:
            raise ValueError(f"unknown options {unknown}")

    @property
    def codes(self) -> list[tuple[str, str]]:
        """CID 7050 (code value, meaning) of the Basic Profile and each option."""
        return [OPTION_CODES["basic"], *(OPTION_CODES[o] for o in self.options)]

    @property
    def retain_uids(self) -> bool:
        return "rtn_uids" in self.options

    @property
    def shift_dates(self) -> bool:
        return "rtn_long_modif_dates" in self.options

    @property
    def full_dates(self) -> bool:
        return "rtn_long_full_dates" in self.options

    @property
    def safe_private(self) -> bool:
        return "rtn_safe_private" in self.options

    def describe(self) -> str:
        """One line for people, e.g. for the CLI and the report."""
        names = ", ".join(OPTION_CODES[o][1].removesuffix(" Option") for o in self.options)
        return f"{self.name} (Basic Profile{' + ' + names if names else ''}; {EDITION})"

    def action(self, tag: int) -> tuple[str, str] | None:
        """The action code and row name for a public or masked tag, None if not listed."""
        row = ROWS.get(tag)
        if row is None:
            for value, mask, masked in MASKED:
                if tag & mask == value:
                    row = masked
                    break
            else:
                return None
        return self._resolve(row), row[0]

    def private_action(self) -> str:
        return self._resolve(PRIVATE)

    def _resolve(self, row: tuple[str, ...]) -> str:
        chosen = [row[2 + OPTION_KEYS.index(o)] for o in self.options]
        chosen = [c for c in chosen if c]
        if "K" in chosen:
            return "K"
        if "C" in chosen:
            return "C"
        return chosen[0] if chosen else row[1]


_DEFAULT_OPTIONS = ("clean_desc", "rtn_long_modif_dates", "rtn_pat_chars")

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "default",
            _DEFAULT_OPTIONS,
            "cleaned descriptions, dates shifted per patient, age/sex/size kept",
        ),
        Profile("basic", (), "Basic Profile only: no dates, no descriptions"),
        Profile(
            "research",
            (*_DEFAULT_OPTIONS, "rtn_dev_id", "rtn_safe_private"),
            "default + device identity + numeric private attributes",
        ),
        Profile(
            "full-dates",
            ("clean_desc", "rtn_long_full_dates", "rtn_pat_chars"),
            "default with the real dates kept",
        ),
        Profile(
            "strict",
            ("clean_desc", "clean_struct_cont", "clean_graph", "rtn_long_modif_dates"),
            "default without patient characteristics; structured content and graphics cleaned",
        ),
    )
}
DEFAULT_PROFILE = PROFILES["default"]


def get_profile(name: str | None) -> Profile:
    """The named profile (``None``: the default).

    Raises:
        UnknownProfile: no profile has that name.
    """
    if name is None:
        return DEFAULT_PROFILE
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownProfile(
            name,
            user_message=f"Unknown de-identification profile {name!r}; "
            f"choose one of: {', '.join(PROFILES)}.",
        ) from None
