"""The ``scanbeam`` command line: serve, send, receive.

Exit codes (README "Exit codes"): 0 ok, 1 internal error, 2 usage, 3 pairing (wrong,
unknown or expired code), 4 connection (server unreachable, peer gone, no path, timeout),
5 integrity, 6 declined or cancelled, 7 local file problem (exists, disk full, unreadable),
8 protocol violation by the peer, 9 the peer reported an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from peer import pacs_cli, session
from peer.dicom.deid import cli as deid_cli
from peer.dicom.text import format_summary
from peer.errors import BeamError, CancelledByUser, DeclinedError
from peer.settings import DEFAULT_SERVER, Settings
from peer.units import human_bytes, human_duration, human_rate

__all__ = ["main"]


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(text: str) -> float:
    """``90``, ``90s``, ``2m``, ``12h``, ``7d`` → seconds."""
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:], None)
    num = t[:-1] if unit is not None else t
    try:
        value = float(num) * (unit or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (use 30s, 2m, 12h, 7d)"
        ) from None
    if not 0 < value < 10 * 365 * 86400:
        raise argparse.ArgumentTypeError(f"duration out of range: {text!r}")
    return value


def _duration_or_zero(text: str) -> float:
    """Like :func:`_duration`, and ``0`` (never)."""
    if text.strip() in ("0", "0s"):
        return 0.0
    return _duration(text)


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scanbeam",
        description="Send medical imaging studies peer to peer, end-to-end encrypted.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log diagnostics to stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sv = sub.add_parser("serve", help="run the server side (signaling + relay) on one origin")
    sv.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=None, help="port (default 8000; 0 = any free)")
    sv.add_argument("--data", type=Path, default=None, help="data folder (used by the relay)")
    sv.add_argument(
        "--stun-url", action="append", default=None, metavar="URL", help="STUN URL for clients"
    )
    sv.add_argument(
        "--turn-url",
        action="append",
        default=None,
        metavar="URL",
        help="TURN URL for clients, with per-room credentials (needs --turn-secret-file)",
    )
    sv.add_argument(
        "--turn-secret-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="file with the secret shared with coturn (static-auth-secret)",
    )

    def net(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--server",
            default=None,
            help=f"server URL (default $SCANBEAM_SERVER or {DEFAULT_SERVER})",
        )
        sp.add_argument("--json", action="store_true", help="print one JSON event per line")
        sp.add_argument("--stun", action="append", default=None, metavar="URL", help="STUN server")
        sp.add_argument("--turn", action="append", default=None, metavar="URL", help="TURN server")
        sp.add_argument(
            "--turn-user", default=None, help="TURN user (password: $SCANBEAM_TURN_PASSWORD)"
        )
        sp.add_argument(
            "--turn-only",
            action="store_true",
            help="connect only through TURN (the other side never sees this computer's "
            "addresses); without a TURN server no direct connection is possible",
        )
        sp.add_argument(
            "--no-tcp-lane",
            action="store_true",
            help="no direct TCP lane to the other computer (protocol v2 paths)",
        )
        sp.add_argument(
            "--no-pipe", action="store_true", help="never stream through the server's relay pipe"
        )
        sp.add_argument(
            "--reconnect",
            type=_duration_or_zero,
            default=None,
            metavar="DURATION",
            help="after a dropped connection, try to reconnect this long (default 5m; 0 = never)",
        )

    sd = sub.add_parser("send", help="send files and folders; prints a code and a QR code")
    sd.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    sd.add_argument("--no-compress", action="store_true", help="never compress chunks")
    sd.add_argument(
        "--no-previews",
        action="store_true",
        help="offer no series thumbnails (they are made from the middle image of each series)",
    )
    sd.add_argument(
        "--wait",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="how long to wait for the receiver before uploading to the relay "
        "(s/m/h/d; default 2m, or until the code expires with --no-relay)",
    )
    rel = sd.add_mutually_exclusive_group()
    rel.add_argument("--relay", action="store_true", help="upload to the relay at once")
    rel.add_argument("--no-relay", action="store_true", help="never use the relay")
    sd.add_argument(
        "--expires",
        type=_duration,
        default=7 * 86400.0,
        metavar="DURATION",
        help="relay link lifetime (default 7d; the server has a maximum)",
    )
    sd.add_argument(
        "--max-downloads",
        type=int,
        default=1,
        metavar="N",
        help="complete downloads allowed from the relay link (default 1)",
    )
    pw = sd.add_mutually_exclusive_group()
    pw.add_argument("--password", action="store_true", help="protect the relay link (prompts)")
    pw.add_argument(
        "--password-file",
        type=Path,
        default=None,
        metavar="F",
        help="protect the relay link with the first line of F",
    )
    deid_cli.add_options(sd, flag=True)
    net(sd)

    rc = sub.add_parser("receive", help="receive with a code or link from the sender")
    rc.add_argument("target", nargs="?", metavar="CODE", help="code (12-word-word) or link")
    rc.add_argument("-o", "--output", type=Path, default=Path("."), help="destination folder")
    rc.add_argument("--yes", "-y", action="store_true", help="accept without asking")
    rc.add_argument(
        "--password-file",
        type=Path,
        default=None,
        metavar="F",
        help="password of a protected relay link (else asked for)",
    )
    net(rc)
    pacs_cli.add_receive_options(rc)
    pacs_cli.add_parsers(sub)

    tu = sub.add_parser("tui", help="open the terminal app (also: plain scanbeam in a terminal)")
    tu.add_argument("--start", type=Path, default=None, help="folder the file picker opens in")
    net(tu)

    dr = sub.add_parser("drops", help="your relay links: status, access log, delete")
    dr.add_argument("action", nargs="?", choices=["list", "log", "delete"], default="list")
    dr.add_argument("id", nargs="?", help="drop id (for log and delete)")
    dr.add_argument("--json", action="store_true", help="JSON output")
    deid_cli.add_parser(sub)
    lg = sub.add_parser("log", help="show the disclosure log: what was sent, to whom, how")
    lg.add_argument("--csv", action="store_true", help="CSV instead of a table")
    lg.add_argument("--json", action="store_true", help="one JSON object per line")
    return p


def _run_log(args: argparse.Namespace, settings: Settings) -> int:
    from peer.state import LocalState

    state = LocalState(settings.home)
    rows = state.disclosures()
    if args.csv:
        sys.stdout.write(state.as_csv(rows))
        return 0
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    if not rows:
        print(f"No transfers recorded yet ({state.log_path}).")
        return 0
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.get("time", 0)))
        studies = ", ".join(r.get("study_uids") or []) or "-"
        print(
            f"{when}  {r.get('how', ''):6} {r.get('to', ''):28} {r.get('outcome', ''):16} "
            f"{r.get('files', 0)} files {human_bytes(int(r.get('bytes', 0)))}  study {studies}"
            + (f"  de-identified: {r['deidentified']}" if r.get("deidentified") else "")
        )
    return 0


def _run_drops(args: argparse.Namespace, settings: Settings, out: _Out) -> int:
    from peer import relay_session

    if args.action == "list":
        rows = _run(relay_session.drop_statuses(settings))
        if args.json:
            for r in rows:
                print(json.dumps(r))
        elif not rows:
            print("No relay links yet.")
        for r in rows if not args.json else []:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["expires"]))
            print(
                f"{r['id']}  {r['state']:10} {r['downloads']}/{r['max_downloads']} downloads  "
                f"expires {when}  {r['files']} files {human_bytes(r['bytes'])}"
            )
        return 0
    if not args.id:
        raise BeamError("no id", user_message=f"Give the drop id: scanbeam drops {args.action} ID")
    if args.action == "log":
        events = _run(relay_session.drop_log(settings, args.id))
        for e in events:
            if args.json:
                print(json.dumps(e))
            else:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
                print(f"{when}  {e['event']:20} {e.get('address') or ''}")
        return 0
    _run(relay_session.drop_delete(settings, args.id))
    if not args.json:
        print(f"Deleted {args.id}: the link no longer works.")
    return 0


class _Out:
    """Human or JSON-lines output. Human progress goes to stderr when it is a terminal."""

    def __init__(self, json_mode: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr):
        self.json = json_mode
        self.out = out
        self.err = err
        self.tty = err.isatty()
        self._bar = False

    def event(self, name: str, **fields: Any) -> None:
        if self.json:
            record = {"event": name, **fields, "t": round(time.time(), 3)}
            self.out.write(json.dumps(record) + "\n")
            self.out.flush()

    def line(self, text: str) -> None:
        if not self.json:
            self._end_bar()
            self.out.write(text + "\n")
            self.out.flush()

    def progress(self, done: int, total: int, rate: float, via: str = "") -> None:
        self.event("progress", bytes=done, total=total, rate=round(rate, 1), via=via)
        if self.json or not self.tty:
            return
        frac = done / total if total else 1.0
        width = max(10, min(40, shutil.get_terminal_size().columns - 60))
        fill = int(frac * width)
        eta = (total - done) / rate if rate > 0 else 0.0
        text = (
            f"\r[{'#' * fill}{'.' * (width - fill)}] {frac * 100:5.1f}%  "
            f"{human_bytes(done)} / {human_bytes(total)}  {human_rate(rate)}  "
            f"ETA {human_duration(eta)} " + (f"via {via} " if via else "")
        )
        self.err.write(text)
        self.err.flush()
        self._bar = True

    def _end_bar(self) -> None:
        if self._bar:
            self.err.write("\n")
            self.err.flush()
            self._bar = False

    def error(self, exc: BeamError) -> None:
        self._end_bar()
        if self.json:
            self.event("error", code=exc.code, message=exc.user_message, exit=exc.exit_code)
        else:
            self.err.write(f"scanbeam: error: {exc.user_message}\n")
            self.err.flush()


def _settings(args: argparse.Namespace, env: dict[str, str]) -> Settings:
    return Settings.load(
        env,
        {
            "server": args.server,
            "stun": tuple(args.stun) if args.stun else None,
            "turn": tuple(args.turn) if args.turn else None,
            "turn_user": args.turn_user,
            "turn_only": True if args.turn_only else None,
            "tcp_lane": False if getattr(args, "no_tcp_lane", False) else None,
            "pipe": False if getattr(args, "no_pipe", False) else None,
            "reconnect_timeout": getattr(args, "reconnect", None),
            "compress": False if getattr(args, "no_compress", False) else None,
            "previews": False if getattr(args, "no_previews", False) else None,
        },
    )


def _qr_lines(url: str) -> list[str]:
    """The QR code of ``url`` drawn with half-block characters (light modules as blocks,
    which scans on dark and light terminals alike)."""
    import io

    import qrcode

    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_L)
    qr.add_data(url)
    qr.make(fit=True)
    buf = io.StringIO()
    qr.print_ascii(out=buf, invert=True)
    return buf.getvalue().rstrip("\n").split("\n")


def _on_event_common(out: _Out, ev: object) -> None:
    from peer.relay_session import Retrying

    if isinstance(ev, Retrying):
        out.event("retry", attempt=ev.attempt, of=ev.of, reason=ev.reason)
        out.line(f"Connection to the relay lost; continuing ({ev.attempt}/{ev.of})…")
    elif isinstance(ev, session.RelayFallback):
        out.event("fallback", reason=ev.reason)
        out.line(ev.reason)
    elif isinstance(ev, session.Paired_):
        out.event("paired", mode=ev.mode)
    elif isinstance(ev, session.Connected):
        out.event("connected", via=ev.via)
        out.line(f"Connected ({ev.via}).")
    elif isinstance(ev, session.Progress):
        out.progress(ev.bytes, ev.total, ev.rate, ev.via)
    elif isinstance(ev, session.PathMoved):
        out.event("moved", old=ev.old, new=ev.new)
        out.line(f"Now sending over {ev.new} (was {ev.old}): measuring which path is faster.")
    elif isinstance(ev, session.Reconnecting):
        out.event("reconnecting", attempt=ev.attempt, reason=ev.reason, left=round(ev.until, 1))
        out.line(
            f"Connection lost ({ev.reason}); reconnecting (attempt {ev.attempt}, "
            f"up to {human_duration(ev.until)} more)…"
        )


def _paths(done: session.Done) -> list[dict[str, Any]]:
    return [{"via": name, "bytes": n} for name, n in done.paths]


def _path_line(done: session.Done) -> str:
    """``Paths: tcp 91 %, direct 9 %; reconnected once.``"""
    total = sum(n for _, n in done.paths) or 1
    shares = ", ".join(f"{name} {round(100 * n / total)} %" for name, n in done.paths)
    line = f"Paths: {shares}" if shares else "Paths: none"
    if done.rounds:
        line += "; reconnected " + ("once" if done.rounds == 1 else f"{done.rounds} times")
    return line + "."


def _run_send(args: argparse.Namespace, settings: Settings, out: _Out) -> int:
    def on_event(ev: session.Event) -> None:
        if isinstance(ev, session.CodeReady):
            out.event("code", code=ev.code, url=ev.url)
            if not out.json:
                for ln in _qr_lines(ev.url):
                    out.line(ln)
                out.line("Scan the QR code with a phone, or on the receiving computer run:")
                out.line(f"    scanbeam receive {ev.code}")
                out.line(f"Code: {ev.code}   (waiting for the receiver…)")
        elif isinstance(ev, session.RelayFallback):
            out.event("fallback", reason=ev.reason)
            if ev.reason:
                out.line(ev.reason)
        elif isinstance(ev, session.LinkReady):
            on_event_relay(ev)
        elif isinstance(ev, session.Done):
            out.event(
                "done",
                via=ev.via,
                files=ev.files,
                bytes=ev.bytes,
                seconds=round(ev.seconds, 3),
                sent_bytes=ev.sent_bytes,
                paths=_paths(ev),
                rounds=ev.rounds,
            )
            rate = ev.sent_bytes / ev.seconds if ev.seconds > 0 else 0.0
            if len(ev.paths) > 1 or ev.rounds:
                out.line(_path_line(ev))
            out.line(
                f"Sent {ev.files} files ({human_bytes(ev.bytes)}) {ev.via} in "
                f"{human_duration(ev.seconds)} at {human_rate(rate)}; "
                "the receiver confirmed every file's SHA-256."
            )
        else:
            _on_event_common(out, ev)

    async def go() -> None:
        from peer import relay_session

        password: str | None = None
        if args.password or args.password_file is not None:
            password = await relay_session.prompt_password(args.password_file, confirm=True)
        await session.send_or_relay(
            settings,
            args.paths,
            on_event,
            relay="always" if args.relay else "never" if args.no_relay else "auto",
            expires_in=args.expires,
            max_downloads=args.max_downloads,
            password=password,
            prepared=prepared,
        )

    def on_event_relay(ev: object) -> None:
        from peer.relay_session import LinkReady

        if isinstance(ev, LinkReady):
            out.event(
                "link",
                url=ev.url,
                id=ev.id,
                expires=ev.expires,
                max_downloads=ev.max_downloads,
                password=ev.password,
                resumed_bytes=ev.resumed_bytes,
                seconds=round(ev.seconds, 3),
            )
            if not out.json:
                for ln in _qr_lines(ev.url):
                    out.line(ln)
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(ev.expires))
                extra = "; the recipient also needs the password" if ev.password else ""
                out.line(
                    f"Uploaded. Share this link (expires {when}, "
                    f"{ev.max_downloads} download(s){extra}):"
                )
                out.line(ev.url)
        elif isinstance(ev, session.Progress):
            out.progress(ev.bytes, ev.total, ev.rate, ev.via)

    prepared = deid_cli.prepare_for_send(args, settings, out)
    if args.wait is not None:
        settings = dataclasses.replace(settings, wait_timeout=args.wait)
    elif not args.no_relay:
        settings = dataclasses.replace(settings, wait_timeout=120.0)
    _run(go())
    return 0


def _without_uid_lists(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary for the offer event: per-series SOP UID lists (used by the completeness
    check, up to one per file) are left out to keep the line small."""
    studies = summary.get("studies")
    if not isinstance(studies, list):
        return summary
    slim = []
    for st in studies:
        if isinstance(st, dict) and isinstance(st.get("series"), list):
            st = {
                **st,
                "series": [
                    {k: v for k, v in se.items() if k != "sop_uids"} if isinstance(se, dict) else se
                    for se in st["series"]
                ],
            }
        slim.append(st)
    return {**summary, "studies": slim}


def _print_offer(out: _Out, offer: session.Offer) -> None:
    out.event(
        "offer",
        files=offer.files,
        bytes=offer.bytes,
        held=offer.held,
        summary=_without_uid_lists(offer.summary),
        # thumbnails themselves stay out of the JSON line (up to 64 x 64 KiB): only what
        # they are; the TUI draws them, the receiver page shows them
        previews=[
            {"series": p.series, "w": p.w, "h": p.h, "bytes": len(p.png)} for p in offer.previews
        ],
    )
    out.line(f"Offered: {offer.files} files, {human_bytes(offer.bytes)}")
    try:
        for ln in format_summary(offer.summary):
            out.line("  " + ln)
    except Exception:  # a hostile summary must not stop the offer from being shown
        out.line("  (no study summary)")
    if offer.previews:
        n = len(offer.previews)
        out.line(f"  Previews: {n} series thumbnail{'s' if n != 1 else ''} (shown by scanbeam tui)")
    if offer.held:
        out.line(f"  Resuming: {human_bytes(offer.held)} already received and verified.")
    out.line(f"Destination: {offer.dest.resolve()}")


def _run_receive(args: argparse.Namespace, settings: Settings, out: _Out) -> int:
    text = args.target
    if not text:
        if not sys.stdin.isatty():
            raise BeamError("no code", user_message="Give the code: scanbeam receive 12-word-word")
        text = input("Code from the sender: ")
    from peer import relay_session

    drop = relay_session.parse_drop_link(text)
    target = None if drop is not None else session.parse_target(text, settings.server)
    pacs = pacs_cli.target_of(args)
    if pacs is not None:
        pacs_cli.check_target(pacs, args)  # a wrong address fails before the transfer
    offered: list[session.Offer] = []

    def on_event(ev: session.Event) -> None:
        if isinstance(ev, session.Offer):
            offered.append(ev)
            _print_offer(out, ev)
        elif isinstance(ev, session.Done):
            out.event(
                "done",
                via=ev.via,
                files=ev.files,
                bytes=ev.bytes,
                seconds=round(ev.seconds, 3),
                sent_bytes=ev.sent_bytes,
                paths=_paths(ev),
                rounds=ev.rounds,
                dest=str(ev.dest.resolve()) if ev.dest else None,
                completeness=ev.completeness,
            )
            rate = ev.sent_bytes / ev.seconds if ev.seconds > 0 else 0.0
            if len(ev.paths) > 1 or ev.rounds:
                out.line(_path_line(ev))
            out.line(
                f"Received {ev.files} files ({human_bytes(ev.bytes)}) {ev.via} in "
                f"{human_duration(ev.seconds)} at {human_rate(rate)}; every file verified "
                f"(SHA-256) and saved in {ev.dest.resolve() if ev.dest else '.'}"
            )
            if ev.completeness is not None and ev.completeness.get("status") != "not-dicom":
                out.line(session.format_completeness(ev.completeness))
        else:
            _on_event_common(out, ev)

    async def decide(offer: session.Offer) -> bool:
        if args.yes:
            return True
        if not sys.stdin.isatty():
            raise DeclinedError(
                "no tty",
                user_message="Not accepted: no terminal to ask; add --yes to accept.",
            )
        answer = await asyncio.get_running_loop().run_in_executor(
            None, input, "Accept and save? [y/N] "
        )
        return answer.strip().lower() in ("y", "yes")

    out.event("start", mode="relay" if drop is not None else "code")
    if drop is not None:

        async def password() -> str:
            return await relay_session.prompt_password(args.password_file, confirm=False)

        _run(relay_session.download(settings, drop, args.output, on_event, decide, password))
    else:
        assert target is not None

        async def ask_password() -> str:
            return await relay_session.prompt_password(args.password_file, confirm=False)

        _run(session.receive(settings, target, args.output, on_event, decide, ask_password))
    if pacs is not None and offered:
        return pacs_cli.push_received(out, args, pacs, offered[-1].dest, offered[-1].paths)
    return 0


def _server_data(env: dict[str, str]) -> Path:
    """``$SCANBEAM_DATA``, else ``$XDG_DATA_HOME/scanbeam-server``, else
    ``~/.local/share/scanbeam-server``."""
    if env.get("SCANBEAM_DATA"):
        return Path(env["SCANBEAM_DATA"])
    if env.get("XDG_DATA_HOME"):
        return Path(env["XDG_DATA_HOME"]) / "scanbeam-server"
    return Path.home() / ".local" / "share" / "scanbeam-server"


def _run_serve(args: argparse.Namespace, env: dict[str, str]) -> int:
    from relay.app import mount as relay_mount
    from relay.settings import RelaySettings
    from signaling.server import ice_config, start_server
    from signaling.settings import ServerSettings
    from signaling.webpage import routes as web_routes

    try:
        settings = ServerSettings.load(
            env,
            {
                "host": args.host,
                "port": args.port,
                "data_dir": args.data,
                "stun_url": args.stun_url,
                "turn_url": args.turn_url,
                "turn_secret_file": args.turn_secret_file,
            },
        )
        ice_config(settings)  # fail before listening: unreadable secret, bad URL
    except ValueError as exc:
        raise BeamError(str(exc), user_message=f"Bad server setting: {exc}.") from None
    data_dir = args.data or _server_data(env)
    relay_settings = RelaySettings.load(env, {"data_dir": data_dir})

    async def serve() -> None:
        server = await start_server(
            settings, routes=web_routes(), mounts=[relay_mount(relay_settings)]
        )
        print(
            f"ScanBeam server on http://{settings.host}:{server.port} "
            "(signaling at /v1/signal). Ctrl-C to stop.",
            flush=True,
        )
        try:
            await server.serve_forever()
        finally:
            await server.close()

    try:
        _run(serve())
    except OSError as exc:
        raise BeamError(
            str(exc),
            user_message=f"Cannot listen on {settings.host}:{settings.port}: "
            f"{exc.strerror or exc}.",
        ) from None
    return 0


def _run(coro: Any) -> Any:
    import uvloop

    return uvloop.run(coro)


def _run_tui(args: argparse.Namespace, settings: Settings) -> int:
    from tui.app import ScanBeamApp, SessionService

    if not args.verbose:  # the app owns the terminal: no log lines across the screen
        logging.disable(logging.CRITICAL)
    app = ScanBeamApp(SessionService(settings), start=args.start or Path.cwd())
    app.run()
    return app.return_code or 0


_NOISY = ("aioice", "aiortc", "websockets", "asyncio", "pynetdicom", "pydicom")


def _quiet(record: logging.LogRecord) -> bool:
    """Without -v, the libraries' own log records below CRITICAL are not shown."""
    return record.levelno >= logging.CRITICAL or record.name.split(".")[0] not in _NOISY


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if not argv and sys.stdin.isatty() and sys.stdout.isatty():
        argv = ["tui"]  # plain `scanbeam` in a terminal opens the app
    args = _build_parser().parse_args(argv)
    env = dict(os.environ)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        for noisy in _NOISY:
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
        # pydicom and pynetdicom reset their loggers' level when imported, which happens
        # later (`peer.warm`): the handler drops their records too
        for handler in logging.getLogger().handlers:
            handler.addFilter(_quiet)
        # the signaling library logger is pinned at INFO (never DEBUG: frames hold bodies)
        logging.getLogger("scanbeam.signaling.websockets").setLevel(logging.WARNING)
    out = _Out(getattr(args, "json", False))
    started = time.monotonic()
    try:
        if args.command == "serve":
            return _run_serve(args, env)
        if args.command == "log":
            return _run_log(args, Settings.load(env, {}))
        if args.command == "drops":
            return _run_drops(args, Settings.load(env, {}), out)
        if args.command == "deidentify":
            return deid_cli.run_deidentify(args, Settings.load(env, {}), out)
        if args.command in ("listen", "push"):
            return pacs_cli.run(args, out)
        settings = _settings(args, env)
        if args.command == "tui":
            return _run_tui(args, settings)
        runner: Callable[[argparse.Namespace, Settings, _Out], int] = (
            _run_send if args.command == "send" else _run_receive
        )
        return runner(args, settings, out)
    except BeamError as exc:
        out.error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        if args.command == "serve":
            return 0
        exc2 = CancelledByUser("interrupted")
        out.error(exc2)
        return exc2.exit_code
    except Exception as exc:  # last resort: never a traceback for the user
        if args.verbose:
            logging.getLogger("scanbeam").exception("internal error")
        err = BeamError(
            repr(exc),
            user_message=f"Internal error ({type(exc).__name__}); run with -v for details.",
        )
        out.error(err)
        return err.exit_code
    finally:
        logging.getLogger("scanbeam").debug("finished in %.2f s", time.monotonic() - started)


def run() -> None:
    """The ``scanbeam`` command: `main`, then exit without the interpreter's teardown.

    Freeing aiortc, aiohttp and pydicom at exit takes about 0.2 s and does nothing for us:
    by the time `main` returns its event loop is closed, every file is closed and every
    worker thread has finished, so only the output streams and the log are left to flush.
    Under a profiler or a coverage tracer it exits normally, so they can save their data.
    """
    code = main()
    if sys.gettrace() is not None or sys.getprofile() is not None:
        sys.exit(code)  # a profiler or a coverage tracer writes its data at exit
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
