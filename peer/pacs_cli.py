"""Command-line glue of the PACS bridge: ``scanbeam listen``, ``scanbeam push`` and
``scanbeam receive --to-pacs`` (kept out of ``peer.cli`` so that file stays small)."""

from __future__ import annotations

import argparse
import shlex
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from peer.errors import PacsError
from peer.settings import DEFAULT_AET
from peer.units import human_bytes

if TYPE_CHECKING:  # the DICOM networking imports pydicom: loaded when a PACS is used
    from peer.dicom.pacs import InstanceResult, PacsTarget, PushResult

__all__ = ["add_parsers", "add_receive_options", "push_received", "run", "target_of"]


class Out(Protocol):
    json: bool

    def event(self, name: str, **fields: Any) -> None: ...
    def line(self, text: str) -> None: ...


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("use 1 to 3600 seconds")
    return value


def add_receive_options(rc: argparse.ArgumentParser) -> None:
    rc.add_argument(
        "--to-pacs",
        default=None,
        metavar="HOST:PORT[:AET]",
        help="then store the received study into this PACS by DICOM C-STORE",
    )
    rc.add_argument("--aet", default=DEFAULT_AET, help=f"our AE title (default {DEFAULT_AET})")
    rc.add_argument(
        "--pacs-timeout", type=_timeout, default=30.0, metavar="S", help="PACS timeout (30)"
    )


def add_parsers(sub: Any) -> None:
    ls = sub.add_parser("listen", help="receive studies from a modality or PACS (C-STORE SCP)")
    ls.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    ls.add_argument("--port", type=int, default=11112, help="port (default 11112; 0 = any)")
    ls.add_argument("--aet", default=DEFAULT_AET, help=f"our AE title (default {DEFAULT_AET})")
    ls.add_argument("-o", "--output", type=Path, default=Path("."), help="folder for studies")
    ls.add_argument("--json", action="store_true", help="print one JSON event per line")

    pu = sub.add_parser("push", help="store a study folder into a PACS (C-STORE SCU)")
    pu.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    pu.add_argument("--to-pacs", required=True, metavar="HOST:PORT[:AET]", help="the PACS")
    pu.add_argument("--aet", default=DEFAULT_AET, help=f"our AE title (default {DEFAULT_AET})")
    pu.add_argument(
        "--pacs-timeout", type=_timeout, default=30.0, metavar="S", help="PACS timeout (30)"
    )
    pu.add_argument("--json", action="store_true", help="print one JSON event per line")


def target_of(args: argparse.Namespace) -> PacsTarget | None:
    """The parsed ``--to-pacs`` (checked before any transfer starts)."""
    if not getattr(args, "to_pacs", None):
        return None  # without importing pynetdicom and pydicom, which take 0.3 s
    from peer.dicom.pacs import parse_target

    return parse_target(args.to_pacs)


def _report(out: Out, r: InstanceResult) -> None:
    out.event("pacs-instance", **r.to_dict())
    code = f"0x{r.status:04X}" if r.status is not None else "  -   "
    how = {"as-is": "", "converted": " [re-encoded]", "decompressed": " [decompressed]"}
    tag = {"stored": "stored ", "warning": "WARNING", "failed": "FAILED "}[r.outcome]
    extra = f"  {r.detail}" if r.outcome != "stored" or r.mode != "as-is" else ""
    out.line(f"  {tag} {code}  {r.rel}{how.get(r.mode, '')}{extra}")


def _finish(out: Out, result: PushResult) -> int:
    out.event("pacs-done", **result.to_dict())
    out.line(result.summary_line())
    if not result.ok:
        raise PacsError(
            "instances failed",
            user_message=f"{result.count('failed')} of {len(result.results)} instances were "
            f"not stored in the PACS {result.target} (see the lines above).",
        )
    return 0


def _push(
    out: Out,
    items: Sequence[Path] | Sequence[tuple[str, Path]],
    target: PacsTarget,
    aet: str,
    timeout: float,
) -> int:
    from peer.dicom.pacs import push

    out.line(f"Storing into the PACS {target} as {aet}…")
    result = push(
        items, target, calling_aet=aet, timeout=timeout, on_result=lambda r: _report(out, r)
    )
    return _finish(out, result)


def check_target(target: PacsTarget, args: argparse.Namespace) -> None:
    """Before receiving: make sure the PACS answers (C-ECHO) so a typo fails now."""
    from peer.dicom.pacs import echo

    echo(target, calling_aet=args.aet, timeout=args.pacs_timeout)


def push_received(
    out: Out, args: argparse.Namespace, target: PacsTarget, dest: Path, paths: Sequence[str]
) -> int:
    """After ``receive``: store the files of the offer (relative to ``dest``)."""
    return _push(out, [(p, dest / p) for p in paths], target, args.aet, args.pacs_timeout)


def _run_listen(args: argparse.Namespace, out: Out) -> int:
    from peer.dicom.listen import ListenConfig, serve

    root = args.output.resolve()
    stop = threading.Event()

    def on_term(_sig: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)

    def on_event(name: str, fields: dict[str, Any]) -> None:
        out.event(name, **fields)
        if name == "listening":
            out.line(
                f"Listening for DICOM C-STORE on {fields['host']}:{fields['port']} as AE "
                f"{fields['aet']}; studies go to {fields['dir']}. Ctrl-C to stop."
            )
        elif name == "rejected":
            why = (
                f"it called {fields['called_aet']!r}, we are {args.aet.strip()!r}"
                if fields["called_aet"] != args.aet.strip()
                else "too many associations or an unsupported request"
            )
            out.line(
                f"Rejected an association from {fields['calling_aet'] or '?'} at "
                f"{fields['address']}: {why}."
            )
        elif name == "association":
            failed = f", {fields['failed']} FAILED" if fields["failed"] else ""
            conflicts = (
                f", {fields['conflicts']} conflicting duplicate(s) kept beside the first"
                if fields["conflicts"]
                else ""
            )
            what = (
                f"{fields['instances']} instances ({human_bytes(fields['bytes'])}){failed}"
                f"{conflicts}"
                if fields["instances"] or fields["failed"]
                else "no instances (verification only)"
            )
            out.line(
                f"{fields['calling_aet'] or '?'} at {fields['address']} {fields['end']}: "
                f"{what} in {fields['seconds']:.1f} s."
            )
            for st in fields["studies"]:
                out.line(
                    f"  study {st['dir']} ({st['instances']} instances): "
                    f"scanbeam send {shlex.quote(st['dir'])}"
                )

    try:
        serve(ListenConfig(root=root, host=args.host, port=args.port, aet=args.aet), on_event, stop)
    except KeyboardInterrupt:
        pass
    out.event("stopped")
    out.line("Stopped.")
    return 0


def run(args: argparse.Namespace, out: Out) -> int:
    if args.command == "listen":
        return _run_listen(args, out)
    target = target_of(args)
    assert target is not None  # push requires --to-pacs
    return _push(out, list(args.paths), target, args.aet, args.pacs_timeout)
