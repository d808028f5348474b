"""Command-line parts of de-identification: ``scanbeam deidentify SRC DST`` and the
``--deidentify`` flags of ``scanbeam send`` (kept here so ``peer/cli.py`` only wires them)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from peer.dicom.deid.profile import PROFILES, get_profile
from peer.errors import DestinationExists, LocalFileError
from peer.files import collect_sources
from peer.settings import Settings
from peer.state import LocalState

if TYPE_CHECKING:  # the engine and the streaming writer import pydicom: loaded when used
    from peer.dicom.deid.stream import Prepared

__all__ = ["add_options", "add_parser", "prepare_for_send", "run_deidentify"]

_MAX_LISTED = 5
_MAX_ROWS = 12


class Out(Protocol):
    json: bool

    def event(self, name: str, **fields: Any) -> None: ...

    def line(self, text: str) -> None: ...


def add_options(sp: argparse.ArgumentParser, *, flag: bool) -> None:
    """The de-identification options of ``send`` (``flag``: with --deidentify)."""
    if flag:
        sp.add_argument(
            "--deidentify",
            action="store_true",
            help="send de-identified copies (DICOM PS3.15 Basic Profile + options; "
            "the originals are never changed)",
        )
    sp.add_argument(
        "--profile",
        default=None,
        choices=list(PROFILES),
        help="de-identification profile (default: default = Basic + Clean Descriptors + "
        "Modified Dates + Patient Characteristics)",
    )
    sp.add_argument(
        "--accept-risk",
        action="store_true",
        help="go on without asking when files may show identifiers in their pixels "
        "(burned-in text, ultrasound, screenshots, documents)",
    )
    sp.add_argument(
        "--include-non-dicom",
        action="store_true",
        help="also send files that are not DICOM, as they are (not de-identified)",
    )


def add_parser(sub: Any) -> None:
    dd = sub.add_parser("deidentify", help="write de-identified copies of DICOM files to a folder")
    dd.add_argument("src", nargs="+", type=Path, metavar="SRC", help="files or folders")
    dd.add_argument("dst", type=Path, metavar="DST", help="destination folder (new files only)")
    dd.add_argument("--json", action="store_true", help="print one JSON event per line")
    add_options(dd, flag=False)


def _prepare(args: argparse.Namespace, settings: Settings, out: Out, paths: list[Path]) -> Prepared:
    from peer.dicom.deid.engine import Deidentifier
    from peer.dicom.deid.stream import prepare

    profile = get_profile(args.profile)
    out.event("deid-profile", profile=profile.name, description=profile.describe())
    out.line(f"De-identification profile: {profile.describe()}")
    out.line(f"  {profile.summary}")
    salt = LocalState(settings.home).deid_salt()
    prepared = prepare(
        collect_sources(paths),
        Deidentifier(profile, salt),
        include_other=args.include_non_dicom,
    )
    if prepared.excluded:
        out.event("deid-excluded", files=len(prepared.excluded))
        out.line(
            f"Left out {len(prepared.excluded)} file(s) that cannot be de-identified "
            "(use --include-non-dicom to send non-DICOM files as they are):"
        )
        for rel, why in prepared.excluded[:_MAX_LISTED]:
            out.line(f"  {rel}: {why}")
        if len(prepared.excluded) > _MAX_LISTED:
            out.line(f"  … and {len(prepared.excluded) - _MAX_LISTED} more")
    _confirm(args, out, prepared)
    doc = prepared.report_doc()
    out.event(
        "deid-report",
        profile=profile.name,
        table=doc["table"],
        files=doc["files"],
        changed_elements=doc["changed_elements"],
        changes=doc["changes"],
    )
    out.line(
        f"De-identified {doc['instances']} DICOM instance(s): {doc['changed_elements']} "
        f"element(s) changed across {len(doc['changes'])} tag/action pair(s):"
    )
    rows = sorted(doc["changes"], key=lambda r: (r["keyword"] == "(private)", r["tag"]))
    for r in rows[:_MAX_ROWS]:
        out.line(f"  {r['tag']} {r['keyword']}: {r['action']} ({r['rule']}) x{r['count']}")
    if len(rows) > _MAX_ROWS:
        out.line(f"  … and {len(rows) - _MAX_ROWS} more (every row: --json, or the report)")
    return prepared


def _confirm(args: argparse.Namespace, out: Out, prepared: Prepared) -> None:
    from peer.dicom.deid.stream import RiskNotAccepted

    if not prepared.risks:
        return
    out.event("deid-risk", files=len(prepared.risks))
    out.line(
        f"Warning: {len(prepared.risks)} file(s) may show identifiers that de-identifying "
        "the header cannot remove (pixel data is kept untouched):"
    )
    for rel, reasons in prepared.risks[:_MAX_LISTED]:
        out.line(f"  {rel}: {'; '.join(reasons)}")
    if len(prepared.risks) > _MAX_LISTED:
        out.line(f"  … and {len(prepared.risks) - _MAX_LISTED} more")
    if args.accept_risk:
        out.line("  Going on (--accept-risk).")
        return
    if not sys.stdin.isatty() or out.json:
        raise RiskNotAccepted(
            "risk",
            user_message="Stopped: some files may show identifiers in their pixels; "
            "check them and add --accept-risk to go on.",
        )
    answer = input("Include them anyway? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise RiskNotAccepted("declined", user_message="Stopped: nothing was sent or written.")


def prepare_for_send(args: argparse.Namespace, settings: Settings, out: Out) -> Prepared | None:
    """For ``send``: the de-identified selection, or None without --deidentify."""
    if not args.deidentify:
        if args.profile is not None:
            out.line("Note: --profile has no effect without --deidentify.")
        return None
    return _prepare(args, settings, out, list(args.paths))


def run_deidentify(args: argparse.Namespace, settings: Settings, out: Out) -> int:
    from peer.dicom.deid.stream import REPORT_NAME, deidentify_folder

    dst: Path = args.dst
    if (dst / REPORT_NAME).exists() or (dst / "deidentified").exists():
        raise DestinationExists(
            str(dst),
            user_message=f"{str(dst)!r} already holds de-identified files; "
            "nothing was overwritten. Choose another folder.",
        )
    for src in args.src:
        try:
            if dst.resolve().is_relative_to(src.resolve()) and src.is_dir():
                raise LocalFileError(
                    "dst inside src",
                    user_message="The destination must not be inside a source folder.",
                )
        except OSError:
            pass

    prepared = _prepare(args, settings, out, list(args.src))
    written = deidentify_folder(prepared, dst)
    out.event("deid-done", files=len(written), dest=str(dst), report=str(dst / REPORT_NAME))
    out.line(f"Wrote {len(written)} file(s) to {dst}/deidentified and the report {REPORT_NAME}.")
    return 0
