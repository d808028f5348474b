"""Settings of the relay (store-and-forward) server.

Built once by ``scanbeam serve`` (``RelaySettings.load(os.environ, {"data_dir": ...})``) and
passed to :func:`relay.app.mount`; nothing else reads the environment.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["ENV_PREFIX", "RelaySettings"]

ENV_PREFIX: Final = "SCANBEAM_RELAY_"

DAY: Final = 86_400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RelaySettings:
    """Settings of the relay. Every field can be set by ``SCANBEAM_RELAY_<FIELD>``.

    Attributes:
        data_dir: Folder of the relay's data: ``relay.sqlite3`` and ``blobs/``. Required.
        default_expiry: Seconds a drop lives when the sender does not say.
        max_expiry: Longest life of a drop, in seconds; longer requests are clamped.
        max_drop_size: Largest drop, in bytes.
        min_free_bytes: Creates and uploads that would leave less free disk space than this
            are refused (``413 too-large``).
        max_failures: Wrong download keys after which a drop is locked for good.
        claim_ttl: Seconds a download claim lives after its last use.
        tombstone_ttl: Seconds an expired drop's tombstone (its id and expiry time only)
            answers ``410 expired`` before it is purged too (then ``404 unknown``).
        sweep_interval: Seconds between two sweeps of expired drops.
        creates_per_minute: Drop creations per client address per 60 s (IPv6: per /64).
    """

    data_dir: Path
    default_expiry: float = 7 * DAY
    max_expiry: float = 60 * DAY
    max_drop_size: int = 1 << 40
    min_free_bytes: int = 1 << 30
    max_failures: int = 10
    claim_ttl: float = 1800.0
    tombstone_ttl: float = 30 * DAY
    sweep_interval: float = 15.0
    creates_per_minute: int = 30

    def __post_init__(self) -> None:
        if not isinstance(self.data_dir, Path):
            raise ValueError("data_dir must be a path")
        for name in ("default_expiry", "max_expiry", "claim_ttl", "sweep_interval"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive, finite number of seconds")
        if self.default_expiry > self.max_expiry:
            raise ValueError("default_expiry must not be larger than max_expiry")
        for name in ("max_drop_size", "max_failures", "creates_per_minute"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.min_free_bytes < 0:
            raise ValueError("min_free_bytes must not be negative")
        if not (math.isfinite(self.tombstone_ttl) and self.tombstone_ttl >= 0):
            raise ValueError("tombstone_ttl must be a finite, non-negative number of seconds")

    @classmethod
    def load(cls, env: Mapping[str, str], overrides: Mapping[str, object]) -> RelaySettings:
        """Build settings from defaults, then ``SCANBEAM_RELAY_*`` variables, then ``overrides``.

        Empty variables and ``None`` overrides are ignored.

        Args:
            env: Usually ``os.environ``.
            overrides: Field name to value, usually from command-line options. A string value
                is converted like an environment variable.

        Raises:
            ValueError: an unknown override name, a value that does not convert, a missing
                ``data_dir``, or settings that break a rule (see ``__post_init__``). The
                message names the source.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown relay setting(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name in sorted(names):
            var = ENV_PREFIX + name.upper()
            raw = env.get(var, "")
            if raw.strip():
                values[name] = _convert(name, raw.strip(), source=var)
            override = overrides.get(name)
            if override is not None:
                values[name] = _convert(name, override, source=name)
        if "data_dir" not in values:
            raise ValueError(f"data_dir is required (set {ENV_PREFIX}DATA_DIR or pass data_dir)")
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


def _to_path(value: object) -> Path:
    if isinstance(value, str | Path):
        if not str(value):
            raise ValueError
        return Path(value).expanduser()
    raise TypeError


_CONVERTERS: Final[dict[str, tuple[Callable[[object], object], str]]] = {
    "data_dir": (_to_path, "a directory path"),
    "default_expiry": (_to_float, "a number of seconds"),
    "max_expiry": (_to_float, "a number of seconds"),
    "max_drop_size": (_to_int, "an integer (bytes)"),
    "min_free_bytes": (_to_int, "an integer (bytes)"),
    "max_failures": (_to_int, "an integer"),
    "claim_ttl": (_to_float, "a number of seconds"),
    "tombstone_ttl": (_to_float, "a number of seconds"),
    "sweep_interval": (_to_float, "a number of seconds"),
    "creates_per_minute": (_to_int, "an integer"),
}


def _convert(name: str, value: object, *, source: str) -> object:
    convert, expected = _CONVERTERS[name]
    try:
        return convert(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: expected {expected}, got {value!r}") from None
