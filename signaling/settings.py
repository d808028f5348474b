"""Server-side settings for ``scanbeam serve``: the origin (host, port) and signaling.

The relay mounted on the same origin has its own :class:`relay.settings.RelaySettings`.

Built once by the command (``ServerSettings.load(os.environ, cli_options)``) and passed down;
nothing else reads the environment.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["ENV_PREFIX", "ServerSettings"]

ENV_PREFIX: Final = "SCANBEAM_"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    """Settings of the server side. Every field can be set by ``SCANBEAM_<FIELD>``.

    Attributes:
        host: Interface to bind.
        port: TCP port; 0 picks a free ephemeral port.
        data_dir: Where the relay keeps its data (unused by signaling).
        nameplate_ttl: Seconds an allocated room waits for its second member.
        room_ttl: Seconds a room lives once both members are present.
        max_rooms: Global cap on open rooms; more allocations get ``busy``.
        max_msgs_per_room: ``msg`` frames a room may carry in total.
        join_failures_per_minute: Failed joins per client IP per minute before ``rate-limited``.
        prune_interval: Seconds between two expiry sweeps; smaller than both TTLs.
        stun_url: STUN URLs handed to clients (comma-separated in the environment).
        turn_url: TURN URLs handed to clients with a per-room credential (TURN REST API).
        turn_secret_file: File holding the secret shared with the TURN server (coturn
            ``static-auth-secret``); never on the command line.
        turn_ttl: Seconds a minted TURN credential stays valid after its room was allocated
            plus the nameplate TTL.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path | None = None
    nameplate_ttl: float = 600.0
    room_ttl: float = 3600.0
    max_rooms: int = 10_000
    max_msgs_per_room: int = 200
    join_failures_per_minute: int = 20
    prune_interval: float = 5.0
    stun_url: tuple[str, ...] = ()
    turn_url: tuple[str, ...] = ()
    turn_secret_file: Path | None = None
    turn_ttl: float = 3600.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}")
        for name in ("nameplate_ttl", "room_ttl", "prune_interval"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive, finite number of seconds")
        for name in ("max_rooms", "max_msgs_per_room", "join_failures_per_minute"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.turn_url and self.turn_secret_file is None:
            raise ValueError("turn_url needs turn_secret_file (the secret shared with coturn)")
        if not 60 <= self.turn_ttl <= 7 * 86400:
            raise ValueError("turn_ttl must be between 60 s and 7 days")
        if self.prune_interval >= min(self.nameplate_ttl, self.room_ttl):
            raise ValueError("prune_interval must be smaller than nameplate_ttl and room_ttl")

    @classmethod
    def load(cls, env: Mapping[str, str], overrides: Mapping[str, object]) -> ServerSettings:
        """Build settings from defaults, then ``SCANBEAM_*`` variables, then ``overrides``.

        Empty variables and ``None`` overrides are ignored.

        Args:
            env: Usually ``os.environ``.
            overrides: Field name to value, usually from command-line options. A string value
                is converted like an environment variable.

        Raises:
            ValueError: an unknown override name, a value that does not convert, or settings
                that break a rule (see ``__post_init__``). The message names the source.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown server setting(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name in sorted(names):
            var = ENV_PREFIX + name.upper()
            raw = env.get(var, "")
            if raw.strip():
                values[name] = _convert(name, raw.strip(), source=var)
            override = overrides.get(name)
            if override is not None:
                values[name] = _convert(name, override, source=name)
        return cls(**values)


def _to_int(value: object) -> int:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value, 10)
    raise TypeError


def _to_float(value: object) -> float:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return float(value)
    raise TypeError


def _to_str(value: object) -> str:
    if isinstance(value, str):
        return value
    raise TypeError


def _to_path(value: object) -> Path:
    if isinstance(value, str | Path):
        return Path(value).expanduser()
    raise TypeError


def _to_urls(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise TypeError


_CONVERTERS: Final[dict[str, tuple[Callable[[object], object], str]]] = {
    "host": (_to_str, "a host name or address"),
    "port": (_to_int, "an integer"),
    "data_dir": (_to_path, "a directory path"),
    "nameplate_ttl": (_to_float, "a number of seconds"),
    "room_ttl": (_to_float, "a number of seconds"),
    "max_rooms": (_to_int, "an integer"),
    "max_msgs_per_room": (_to_int, "an integer"),
    "join_failures_per_minute": (_to_int, "an integer"),
    "prune_interval": (_to_float, "a number of seconds"),
    "stun_url": (_to_urls, "comma-separated stun: URLs"),
    "turn_url": (_to_urls, "comma-separated turn: URLs"),
    "turn_secret_file": (_to_path, "a file path"),
    "turn_ttl": (_to_float, "a number of seconds"),
}


def _convert(name: str, value: object, *, source: str) -> object:
    convert, expected = _CONVERTERS[name]
    try:
        return convert(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: expected {expected}, got {value!r}") from None
