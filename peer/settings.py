"""Client settings, built once in ``peer.cli`` and passed down (nothing else reads the
environment)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_AET", "DEFAULT_SERVER", "Settings"]

DEFAULT_SERVER = "http://127.0.0.1:8000"
DEFAULT_AET = "SCANBEAM"  # our DICOM AE title towards a PACS unless --aet says otherwise


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    server: str = DEFAULT_SERVER
    stun: tuple[str, ...] = ()
    turn: tuple[str, ...] = ()
    turn_user: str | None = None
    turn_password: str | None = None
    turn_only: bool = False  # ICE uses only TURN candidates: hides our addresses from the peer
    open_timeout: float = 10.0  # reaching the signaling server
    wait_timeout: float = 600.0  # sender waiting for a receiver to join
    pair_timeout: float = 30.0  # PAKE + SDP exchange once both are present
    connect_timeout: float = 30.0  # ICE + DTLS + SCTP until the data channel opens
    handoff_timeout: float = 4 * 3600.0  # receiver waiting for the sender's relay upload
    idle_timeout: float = 60.0  # no record from the peer for this long: give up
    buffered_high: int = 1 << 20  # data-channel high-water mark, bytes
    window: int = 128  # receive window, chunks (credit granted ahead of writes)
    compress: bool = True
    previews: bool = True  # series thumbnails in the manifest (peer/dicom/preview.py)
    preview_seconds: float = 5.0  # time box for making them
    # protocol v2 paths and reconnection (docs/protocol.md §10)
    tcp_lane: bool = True  # direct TCP lane between CLI peers (off with turn_only)
    pipe: bool = True  # the relay's live pipe through the server
    reconnect_timeout: float = 300.0  # after a drop, try to reconnect this long (0 = never)
    # local state (drops, disclosure log); see load()
    home: Path = dataclasses.field(
        default_factory=lambda: Path.home() / ".local" / "share" / "scanbeam"
    )

    @classmethod
    def load(cls, env: Mapping[str, str], overrides: Mapping[str, object]) -> Settings:
        """Defaults, then SCANBEAM_* environment variables, then non-None overrides."""
        values: dict[str, object] = {}
        if env.get("SCANBEAM_SERVER"):
            values["server"] = env["SCANBEAM_SERVER"]
        if env.get("SCANBEAM_STUN"):
            values["stun"] = tuple(u for u in env["SCANBEAM_STUN"].split(",") if u)
        if env.get("SCANBEAM_TURN"):
            values["turn"] = tuple(u for u in env["SCANBEAM_TURN"].split(",") if u)
        if env.get("SCANBEAM_TURN_USER"):
            values["turn_user"] = env["SCANBEAM_TURN_USER"]
        if env.get("SCANBEAM_TURN_PASSWORD"):
            values["turn_password"] = env["SCANBEAM_TURN_PASSWORD"]
        for name in (
            "open_timeout",
            "wait_timeout",
            "connect_timeout",
            "idle_timeout",
            "reconnect_timeout",
        ):
            raw = env.get(f"SCANBEAM_{name.upper()}")
            if raw:
                try:
                    values[name] = float(raw)
                except ValueError:
                    pass  # a malformed override keeps the default
        if env.get("SCANBEAM_HOME"):
            values["home"] = Path(env["SCANBEAM_HOME"])
        elif env.get("XDG_DATA_HOME"):
            values["home"] = Path(env["XDG_DATA_HOME"]) / "scanbeam"
        elif env.get("HOME"):
            values["home"] = Path(env["HOME"]) / ".local" / "share" / "scanbeam"
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in overrides.items():
            if value is not None and key in names:
                values[key] = value
        return cls(**values)  # type: ignore[arg-type]
